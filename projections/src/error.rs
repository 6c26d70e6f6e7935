//! Errors of the projection engine.

use tidemark_store::{Position, StoreError};

/// A boxed error: what a projection passes on as the cause of its failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a projection's `setup` or `apply` may return. The cause is kept as an error, not
/// flattened to a string: `Failed` and `Transient` are transparent over it (its message,
/// its `source()` chain), so logs and callers can walk the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event cannot be applied (bad data, a bug). Retried, then parked as a dead letter.
    #[error(transparent)]
    Failed(BoxError),
    /// A passing problem (a dropped connection, a timeout). Retried with backoff without
    /// counting towards parking.
    #[error(transparent)]
    Transient(BoxError),
    /// A database error from the projection's own SQL. Retried as a failure unless the
    /// connection was lost (then transient).
    #[error("database: {}", describe_db_error(.0))]
    Database(#[from] tokio_postgres::Error),
}

impl ProjectionError {
    /// A failure: a message (`&str`, `String`) or any error, kept as the source.
    pub fn failed(cause: impl Into<BoxError>) -> Self {
        ProjectionError::Failed(cause.into())
    }

    /// A passing problem: a message or any error, kept as the source.
    pub fn transient(cause: impl Into<BoxError>) -> Self {
        ProjectionError::Transient(cause.into())
    }

    /// Should the engine retry without counting an attempt?
    pub fn is_transient(&self) -> bool {
        match self {
            ProjectionError::Transient(_) => true,
            ProjectionError::Database(e) => is_transient_db_error(e),
            ProjectionError::Failed(_) => false,
        }
    }
}

/// Errors of the engine's own operations. Each names the projection and, where it
/// matters, the phase and last good position.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no projection named '{0}' is registered")]
    UnknownProjection(String),
    #[error(
        "projection '{projection}' failed while {phase} (last good position {position}): {source}"
    )]
    Projection {
        projection: String,
        phase: &'static str,
        position: Position,
        #[source]
        source: ProjectionError,
    },
    #[error("database error while {context}: {}", describe_db_error(.source))]
    Database {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    #[error("could not get a database connection: {0}")]
    Unavailable(String),
    /// Another writer moved this lane's checkpoint (a rebuild swapped the read model in);
    /// the lane restarts from the new checkpoint.
    #[error("the checkpoint of '{projection}' moved from {expected} to {actual:?} under this worker; resuming from the new one")]
    CheckpointMoved {
        projection: String,
        expected: Position,
        actual: Option<Position>,
    },
    /// An as-of build's label is not usable in a schema name.
    #[error("the as-of label '{label}' must be non-empty letters, digits or '_'")]
    InvalidLabel { label: String },
    /// A build of this projection into this target is already running (in any process).
    #[error("a build of '{projection}' into '{target}' is already running; wait for it to finish")]
    BuildRunning { projection: String, target: String },
    /// A build stopped on an event it could not apply (or lost its lease); the old read model
    /// keeps serving.
    #[error("the build of '{projection}' stopped on a poison event; see its dead letters, fix the projection and build again")]
    BuildStopped { projection: String },
    /// A windowed projection's operation on another kind of projection.
    #[error("'{projection}' is not a windowed projection: it has no window results")]
    NotWindowed { projection: String },
    /// A projection panicked while a build lane ran it (live lanes restart instead).
    #[error("lane {lane} panicked: {message}; the build stopped")]
    LanePanicked { lane: String, message: String },
    /// A parked event's position no longer holds it. The log is append-only, so this is a bug
    /// (or a database edited by hand).
    #[error("parked event {event_id} (position {position}) is no longer in the log")]
    ParkedEventMissing {
        event_id: uuid::Uuid,
        position: Position,
    },
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl From<deadpool_postgres::PoolError> for EngineError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match StoreError::from(e) {
            StoreError::Unavailable(reason) => EngineError::Unavailable(reason),
            other => EngineError::Store(other),
        }
    }
}

impl EngineError {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> EngineError {
        move |source| EngineError::Database { context, source }
    }

    /// Worth retrying after a pause (connection trouble), as opposed to a logic error.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Database { source, .. } => is_transient_db_error(source),
            EngineError::Unavailable(_) | EngineError::CheckpointMoved { .. } => true,
            EngineError::Store(e) => e.is_retryable(),
            EngineError::Projection { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

use tidemark_store::error::is_transient_postgres_error as is_transient_db_error;

/// The server's message and SQLSTATE when there is one: `tokio_postgres::Error` displays
/// only "db error", which says nothing in a log or a dead letter.
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    tidemark_store::error::describe_postgres_error(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("the alert service refused")]
    struct Refused(#[source] std::io::Error);

    #[test]
    fn a_projection_error_keeps_its_cause_and_the_cause_chain() {
        let error = ProjectionError::transient(Refused(std::io::Error::other("connection reset")));
        assert!(error.is_transient());
        assert_eq!(error.to_string(), "the alert service refused");
        let cause = error.source().expect("the cause's own source is kept");
        assert_eq!(cause.to_string(), "connection reset");

        let engine = EngineError::Projection {
            projection: "alerts".into(),
            phase: "applying events",
            position: 7,
            source: error,
        };
        let chain: Vec<String> = std::iter::successors(engine.source(), |e| (*e).source())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(chain, ["the alert service refused", "connection reset"]);
    }

    #[test]
    fn a_message_is_enough_to_fail() {
        let error = ProjectionError::failed(format!("bad amount {}", -3));
        assert!(!error.is_transient());
        assert_eq!(error.to_string(), "bad amount -3");
        assert!(error.source().is_none());
    }
}
