//! [`RelayHandler`]: the relay as a side-effect [`Handler`] of the projection engine. The
//! engine's lane reads the log in order, hands each page to `handle_batch`, and advances the
//! relay's checkpoint in Postgres only after it returned `Ok` — that is, after the sink
//! acknowledged every event of the page. The lane also gives the relay its lease (one
//! process relays), its retries with backoff, its restart from the checkpoint after a crash,
//! and its place in `tidemark projections status`.

use crate::sink::Sink;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;
use tidemark_projections::{
    EventSelector, FailurePolicy, Grouping, Handler, HandlerDedup, ProjectionError,
};
use tidemark_store::RecordedEvent;

/// The projection name the relay runs under, unless configured otherwise (its checkpoint,
/// lease and status row are keyed by it).
pub const DEFAULT_RELAY_NAME: &str = "relay";

/// The worker pool relays run in: `serve` processes (pool `default`) never run them.
pub const RELAY_POOL: &str = "relay";

/// Publishes the whole log, in order, to a [`Sink`].
pub struct RelayHandler {
    name: String,
    sink: Arc<dyn Sink>,
}

impl RelayHandler {
    pub fn new(name: impl Into<String>, sink: Arc<dyn Sink>) -> Self {
        RelayHandler {
            name: name.into(),
            sink,
        }
    }
}

#[async_trait]
impl Handler for RelayHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn selector(&self) -> EventSelector {
        EventSelector::all()
    }

    fn pool(&self) -> &str {
        RELAY_POOL
    }

    /// One lane reads the whole log in order: a consumer sees the log's order.
    fn grouping(&self) -> Grouping {
        Grouping::LogOrder
    }

    /// Sink errors are all retried (see [`crate::SinkError`]); should anything else ever
    /// fail an event, the relay stops on it (parked, visible in status) rather than skipping
    /// it under the consumers' feet.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::ParkAndStop
    }

    /// The destination drops re-publishes by event id: no row per event in Postgres.
    fn dedup(&self) -> HandlerDedup {
        HandlerDedup::AtDestination
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    async fn handle_batch(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let started = Instant::now();
        match self.sink.publish_batch(events).await {
            Ok(()) => {
                metrics::histogram!("tidemark_relay_publish_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("tidemark_relay_events_published_total")
                    .increment(events.len() as u64);
                Ok(())
            }
            Err(error) => {
                metrics::counter!("tidemark_relay_batch_failures_total").increment(1);
                tracing::warn!(
                    sink = self.sink.kind(),
                    first = events.first().map(|e| e.position),
                    events = events.len(),
                    %error,
                    "a relay batch was not acknowledged; the checkpoint stays before it"
                );
                Err(error.into())
            }
        }
    }
}
