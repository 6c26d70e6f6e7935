//! The [`Sink`] trait: where the relay publishes. A sink takes a batch of events in log
//! order and returns only once the destination has acknowledged every one of them; the
//! relay's checkpoint moves past a batch only then. JetStream is the one built
//! ([`crate::JetStreamSink`]); Kafka or others implement the same trait.

use async_trait::async_trait;
use tidemark_projections::{BoxError, ProjectionError};
use tidemark_store::{Position, RecordedEvent};

/// A destination of the relay.
///
/// Contract: `publish_batch` publishes `events` (in log order, consecutive in the log
/// after the relay's filter) so that the destination keeps them in that order, and returns
/// `Ok` only when every one is acknowledged as stored. It may be called again with events
/// it already published (after a crash, or when an earlier attempt failed part-way): the
/// destination must drop those repeats by event id (JetStream: `Nats-Msg-Id` in the
/// stream's duplicate window) or the consumer must.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// What the destination is, for logs and metric labels (`nats`).
    fn kind(&self) -> &'static str;

    async fn publish_batch(&self, events: &[RecordedEvent]) -> Result<(), SinkError>;
}

/// Why a batch was not (all) acknowledged. Every kind is retried: the relay never skips an
/// event, so one the destination cannot take holds the relay (logged at WARN with the
/// reason, retried with backoff up to the engine's `retry_max`, its lag growing) until the
/// cause is fixed, and it then goes on by itself.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination is unreachable, did not acknowledge in time, or refused a publish for
    /// a reason that can pass (its stream missing, the order check after a gap).
    #[error("the destination did not acknowledge every event of the batch (retried from the checkpoint): {0}")]
    Unavailable(#[source] BoxError),
    /// One event cannot be published as it is (larger than the destination accepts) until
    /// the destination's limit is raised.
    #[error("the event at position {position} cannot be published until the destination accepts it: {reason}")]
    Unpublishable { position: Position, reason: String },
    /// The destination is set up in a way the relay cannot work with.
    #[error("the destination is misconfigured: {0}")]
    Config(String),
}

impl SinkError {
    pub fn unavailable(cause: impl Into<BoxError>) -> Self {
        SinkError::Unavailable(cause.into())
    }
}

/// Every sink error is transient to the engine: the lane restarts from its checkpoint after
/// a pause, never counting towards parking (a parked event would be a hole in the stream).
impl From<SinkError> for ProjectionError {
    fn from(error: SinkError) -> Self {
        ProjectionError::transient(error)
    }
}
