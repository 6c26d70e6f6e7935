//! The [`Sink`] trait: where the relay publishes. A sink sends a batch of events in log
//! order and hands back their acknowledgements, so the relay sends the next batch while
//! they are pending; the relay's checkpoint moves past a batch only once every one of its
//! events (and of the batches before it) is acknowledged. JetStream is the one built
//! ([`crate::JetStreamSink`]); Kafka or others implement the same trait.

use async_trait::async_trait;
use futures::future::BoxFuture;
use tidemark_projections::{BoxError, ProjectionError};
use tidemark_store::{Position, RecordedEvent};

/// The acknowledgements of a batch sent with [`Sink::send_batch`]: resolves `Ok` once the
/// destination has acknowledged every event of the batch as stored.
pub type Acknowledgements = BoxFuture<'static, Result<(), SinkError>>;

/// A destination of the relay.
///
/// Contract: `send_batch` sends `events` (in log order, consecutive in the log after the
/// relay's filter) and returns their acknowledgements without waiting for them; the relay
/// sends the next batch meanwhile, naming the last event of this one as its `previous`.
/// The destination must keep the events in log order *across batches too*: an event must
/// be stored only right after the event before it (`previous` for a batch's first), so
/// that when some of a batch are lost (a connection dropped), none after them — in this
/// batch or a later one already sent — is stored after the gap. JetStream does this with
/// `Nats-Expected-Last-Msg-Id`.
///
/// Events are sent again after a failure or a crash (the relay resumes from its checkpoint,
/// a batch's first then has no `previous`): the destination must drop those repeats by event
/// id (JetStream: `Nats-Msg-Id` in the stream's duplicate window) or the consumer must.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// What the destination is, for logs and metric labels (`nats`).
    fn kind(&self) -> &'static str;

    /// Sends `events`, which follow `previous` (the last event sent before them in this run
    /// of the relay; `None` after the checkpoint), and returns their acknowledgements. An
    /// error means the batch may be partly sent, and fails it.
    async fn send_batch(
        &self,
        events: &[RecordedEvent],
        previous: Option<&RecordedEvent>,
    ) -> Result<Acknowledgements, SinkError>;

    /// Sends `events` as the first batch after the checkpoint and waits for every
    /// acknowledgement: what the relay does when it handles one batch at a time.
    async fn publish_batch(&self, events: &[RecordedEvent]) -> Result<(), SinkError> {
        self.send_batch(events, None).await?.await
    }
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
