//! # tidemark-relay
//!
//! Relays the log to a message broker, for consumers that outgrow polling one database:
//! every committed event, in log order, to one NATS JetStream stream. Read in this order:
//!
//! - [`sink`]: the [`Sink`] trait (send a batch, chained to the one before it, and hand
//!   back its acknowledgements) and its errors; Kafka or others implement it next to
//!   JetStream.
//! - [`jetstream`]: [`JetStreamSink`], publishes pipelined with `Nats-Msg-Id` = event id,
//!   `Nats-Expected-Last-Msg-Id` = the previous event's id (across batches), and the
//!   event's position, stream, version and type in headers.
//! - [`subject`]: subjects `<prefix>.<category>.<type>` with escaped tokens.
//! - [`handler`]: [`RelayHandler`], the relay as a side-effect handler of the projection
//!   engine (one lane over the whole log, lease, retries, restart after a crash) with a
//!   pipeline: several batches in flight, the checkpoint committed batch by batch after
//!   their acknowledgements, in order.
//! - [`Relay`] (here): starts the engine with the relay alone, where it starts the first
//!   time (`--from`), and its lag metric; [`status`] reads a relay's status without it.
//!
//! Delivery: at-least-once publishing (a batch is re-published after a crash or a failed
//! acknowledgement), made exactly-once in the stream by JetStream's duplicate window;
//! order: the whole log's, in one stream. See `docs/consuming-events.md`.

pub mod handler;
pub mod jetstream;
pub mod sink;
pub mod subject;

pub use handler::{RelayHandler, DEFAULT_RELAY_NAME, RELAY_POOL};
pub use jetstream::{JetStreamConfig, JetStreamSink};
pub use sink::{Acknowledgements, Sink, SinkError};

use std::sync::Arc;
use std::time::Duration;
use tidemark_projections::{EngineConfig, EngineError, ProjectionEngine, Registry};
use tidemark_store::{EventStore, Position};

/// Where a relay that has never run starts (one that has resumes from its checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The first event of the log.
    #[default]
    Start,
    /// After the last event committed when the relay first starts.
    End,
    /// After this position.
    After(Position),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "start" => Ok(StartFrom::Start),
            "end" => Ok(StartFrom::End),
            number => number
                .parse::<Position>()
                .ok()
                .filter(|p| *p >= 0)
                .map(StartFrom::After)
                .ok_or_else(|| {
                    format!("'{text}' is not a start: use start, end, or a position (a number)")
                }),
        }
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Its projection name (checkpoint, lease, status); two relays of one database to two
    /// destinations need two names.
    pub name: String,
    pub from: StartFrom,
    /// The engine's settings (batch size = events per batch, pages in flight = batches
    /// sent before the oldest is acknowledged and checkpointed, lease, retries);
    /// its pool is set to [`RELAY_POOL`].
    pub engine: EngineConfig,
    /// How often the lag gauge is refreshed.
    pub metrics_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            name: DEFAULT_RELAY_NAME.into(),
            from: StartFrom::Start,
            engine: EngineConfig::default(),
            metrics_every: Duration::from_secs(5),
        }
    }
}

/// A running relay: the projection engine with the relay handler alone.
pub struct Relay {
    engine: ProjectionEngine,
    name: String,
}

impl Relay {
    /// Starts relaying `store`'s log to `sink`. Returns once the engine runs; whichever
    /// process holds the relay's lease publishes, the others wait to take over.
    pub async fn start(
        store: EventStore,
        sink: Arc<dyn Sink>,
        config: RelayConfig,
    ) -> Result<Relay, EngineError> {
        let registry = Registry::new().handler(RelayHandler::new(config.name.clone(), sink));
        let engine_config = EngineConfig {
            pool: RELAY_POOL.into(),
            ..config.engine
        };
        let engine = ProjectionEngine::new(store.clone(), registry, engine_config);
        let first = match config.from {
            StartFrom::Start => 0,
            StartFrom::End => store.head_position().await?,
            StartFrom::After(position) => position,
        };
        if engine.start_from(&config.name, first).await? {
            tracing::info!(relay = %config.name, after = first, "first run: relaying the events after this position");
        } else {
            tracing::info!(relay = %config.name, "resuming from the relay's checkpoint");
        }
        engine.start().await?;
        engine.spawn_metrics_reporter(config.metrics_every);
        spawn_lag_reporter(engine.clone(), config.name.clone(), config.metrics_every);
        Ok(Relay {
            engine,
            name: config.name,
        })
    }

    pub fn engine(&self) -> &ProjectionEngine {
        &self.engine
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events committed to the log that the destination has not acknowledged yet.
    pub async fn lag_events(&self) -> Result<i64, EngineError> {
        Ok(self
            .engine
            .projection_status(&self.name)
            .await?
            .lag_events())
    }

    /// Stops publishing, and gives the lease back so another relay takes over at once. The
    /// batches in flight and not yet checkpointed are abandoned: the next relay publishes
    /// them again from the checkpoint, and JetStream drops them as duplicates.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }
}

/// The status of the relay called `name` (checkpoint, lag, rate, parked events), read from
/// the database without running it or connecting to the destination: what
/// `tidemark relay --status` prints.
pub async fn status(
    store: &EventStore,
    name: &str,
) -> Result<tidemark_projections::ProjectionStatus, EngineError> {
    let registry = Registry::new().handler(RelayHandler::new(name, Arc::new(Detached)));
    let engine = ProjectionEngine::new(
        store.clone(),
        registry,
        EngineConfig {
            pool: RELAY_POOL.into(),
            ..EngineConfig::default()
        },
    );
    engine.projection_status(name).await
}

/// The sink of a relay handle that only reads status: never started, so never called.
struct Detached;

#[async_trait::async_trait]
impl Sink for Detached {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn send_batch(
        &self,
        _events: &[tidemark_store::RecordedEvent],
        _previous: Option<&tidemark_store::RecordedEvent>,
    ) -> Result<Acknowledgements, SinkError> {
        Err(SinkError::Config(
            "this relay handle only reads status; it publishes nothing".into(),
        ))
    }
}

/// Publishes `tidemark_relay_lag_events` until the engine shuts down. A failed status read
/// is skipped (the next tick tries again); nothing here can panic.
fn spawn_lag_reporter(engine: ProjectionEngine, name: String, every: Duration) {
    let shutdown = engine.shutdown_token();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match engine.projection_status(&name).await {
                Ok(status) => {
                    metrics::gauge!("tidemark_relay_lag_events").set(status.lag_events() as f64)
                }
                Err(error) => tracing::debug!(%error, "could not read the relay's lag"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_parse() {
        assert_eq!("start".parse(), Ok(StartFrom::Start));
        assert_eq!("end".parse(), Ok(StartFrom::End));
        assert_eq!("42".parse(), Ok(StartFrom::After(42)));
        assert!("-1".parse::<StartFrom>().is_err());
        assert!("later".parse::<StartFrom>().is_err());
    }
}
