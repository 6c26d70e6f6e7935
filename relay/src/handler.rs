//! [`RelayHandler`]: the relay as a side-effect [`Handler`] of the projection engine. The
//! engine's lane reads the log in order and sends each page through the relay's
//! [`Pipeline`] ([`RelayPipeline`]): the page is published to the sink, chained to the page
//! before it, and the next pages are published while its acknowledgements are pending (up
//! to the engine's `pages_in_flight`). The lane advances the relay's checkpoint in Postgres
//! past a page only once the sink acknowledged every event of it and of the pages before
//! it. The lane also gives the relay its lease (one process relays), its retries with
//! backoff, its restart from the checkpoint after a crash (a new pipeline, from the
//! checkpoint), and its place in `tidemark projections status`.

use crate::sink::Sink;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;
use tidemark_projections::{
    Acknowledgement, EventSelector, FailurePolicy, Grouping, Handler, HandlerDedup, Pipeline,
    ProjectionError,
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

    /// One batch at a time, acknowledged before returning ([`tidemark_projections::Lane::step`],
    /// and a lane with one page in flight).
    async fn handle_batch(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let mut pipeline = self.relay_pipeline();
        pipeline.send_batch(events).await?.await
    }

    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        Some(Box::new(self.relay_pipeline()))
    }
}

impl RelayHandler {
    fn relay_pipeline(&self) -> RelayPipeline {
        RelayPipeline {
            sink: self.sink.clone(),
            previous: None,
        }
    }
}

/// One run of the relay's lane: publishes page after page, each chained to the last event
/// of the page before (the sink refuses an event whose predecessor is missing, so a page
/// that fails part-way can never be overtaken by the next one), and counts what was
/// acknowledged.
struct RelayPipeline {
    sink: Arc<dyn Sink>,
    /// The last event sent through this pipeline.
    previous: Option<RecordedEvent>,
}

impl RelayPipeline {
    async fn send_batch(
        &mut self,
        events: &[RecordedEvent],
    ) -> Result<Acknowledgement, ProjectionError> {
        let started = Instant::now();
        let kind = self.sink.kind();
        let first = events.first().map(|e| e.position);
        let count = events.len();
        let failed = move |error: crate::SinkError| {
            metrics::counter!("tidemark_relay_batch_failures_total").increment(1);
            tracing::warn!(
                sink = kind,
                first,
                events = count,
                %error,
                "a relay batch was not acknowledged; the checkpoint stays before it"
            );
            ProjectionError::from(error)
        };
        let acks = self
            .sink
            .send_batch(events, self.previous.as_ref())
            .await
            .map_err(failed)?;
        self.previous = events.last().cloned();
        Ok(Box::pin(async move {
            acks.await.map_err(failed)?;
            metrics::histogram!("tidemark_relay_publish_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("tidemark_relay_events_published_total").increment(count as u64);
            Ok(())
        }))
    }
}

#[async_trait]
impl Pipeline for RelayPipeline {
    async fn send(&mut self, events: &[RecordedEvent]) -> Result<Acknowledgement, ProjectionError> {
        self.send_batch(events).await
    }
}
