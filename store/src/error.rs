//! Errors of the store. Each variant says what the caller can do about it.

use crate::model::{ExpectedVersion, Position, StreamVersion};
use std::sync::Arc;
use uuid::Uuid;

/// Input that the store refuses before touching the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("the {field} is empty; give a non-empty value")]
    Empty { field: &'static str },
    #[error("the {field} is {len} bytes long; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the {field} contains a control character at byte {index}; use printable text")]
    ControlCharacter { field: &'static str, index: usize },
    #[error("the {field} of event {event_index} must be a JSON object, not {found}")]
    NotAnObject {
        field: &'static str,
        event_index: usize,
        found: &'static str,
    },
    #[error("the {field} of event {event_index} contains a NUL character (\\u0000), which PostgreSQL cannot store in JSON")]
    NulInJson {
        field: &'static str,
        event_index: usize,
    },
    #[error("event {event_index} is {size} bytes of JSON; the limit is {max} bytes")]
    PayloadTooLarge {
        event_index: usize,
        size: usize,
        max: usize,
    },
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("this append has {count} events; the limit is {max} per append")]
    TooManyEvents { count: usize, max: usize },
    #[error("the event id {event_id} appears twice in this append; each event needs its own id")]
    DuplicateIdInAppend { event_id: Uuid },
    #[error("expected version {0} is negative; versions start at 0")]
    NegativeVersion(StreamVersion),
    #[error(
        "event {event_index} asks for encoding AVRO, but this store has no payload codec (schema \
         registry) to encode it; send it as JSON or install the registry"
    )]
    NoPayloadCodec { event_index: usize },
}

/// A payload codec answered for another number of events than the append has (a bug in
/// the codec); nothing of the append was written.
#[derive(Debug, thiserror::Error)]
#[error("the payload codec answered for {answers} event(s) of an append of {events}")]
pub struct CodecMismatch {
    pub events: usize,
    pub answers: usize,
}

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The input was rejected; fix it and send again. Nothing was written.
    #[error("invalid input: {0}")]
    Invalid(#[from] ValidationError),

    /// The stream was not at the expected version; reload it, decide again, retry.
    /// Nothing of the append was written.
    #[error("stream '{stream_id}' was expected at {expected} but is at {}", describe_version(*.actual))]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        /// The stream's last version, `None` when the stream does not exist.
        actual: Option<StreamVersion>,
    },

    /// An event id was reused for different content. Use a new id for a new event.
    #[error("event id {event_id} is already stored with different content (at position {existing_position})")]
    EventIdConflict {
        event_id: Uuid,
        existing_position: Position,
    },

    /// The store refused the append to keep latency bounded. Nothing of it was written;
    /// retry after `retry_after_ms`.
    #[error("the store is overloaded: {reason}; nothing was written, retry in about {retry_after_ms} ms")]
    Overloaded {
        reason: OverloadReason,
        retry_after_ms: u64,
    },

    /// The installed append validator (the schema registry) refused the append: an event
    /// does not match its schema, or its type needs one. Nothing of the append was written;
    /// fix the event and send again.
    #[error("the append was refused: {0}; nothing of it was written")]
    Refused(crate::hooks::HookError),

    /// The read hook (the schema registry's upcasting) could not bring an event read from
    /// the log to the shape readers expect; the log is unchanged. Register the missing
    /// upcaster or schema, then read again.
    #[error("an event read from the log could not be upcast: {0}")]
    Unreadable(crate::hooks::HookError),

    /// The store is shutting down and accepts no new appends.
    #[error("the store is shutting down and no longer accepts appends")]
    ShuttingDown,

    /// The database refused or failed; the message says which operation and carries
    /// PostgreSQL's own words (a bare "db error" tells nobody anything). For an append,
    /// nothing was written: the transaction ended without a COMMIT, or the COMMIT itself
    /// answered with an error (which rolls the transaction back). [`StoreError::is_retryable`]
    /// tells a passing failure (a lost connection, a serialization failure) from a lasting one.
    #[error("database error while {context}: {}", describe_postgres_error(source))]
    Database {
        context: &'static str,
        source: Arc<tokio_postgres::Error>,
    },

    /// The connection broke after an append's COMMIT was sent and before its answer arrived:
    /// the append may or may not have been written. Retry it with the same event ids: if it
    /// was written, the retry is recognised as a duplicate and answers with the originals.
    #[error(
        "the database connection failed while {context}: the append may or may not have been \
         written; retry with the same event ids ({})",
        describe_postgres_error(source)
    )]
    OutcomeUnknown {
        context: &'static str,
        #[source]
        source: Arc<tokio_postgres::Error>,
    },

    /// The append writer failed unexpectedly (a bug: it panicked) while this append was in
    /// its batch. The writer was restarted; the append may or may not have been written.
    #[error(
        "the append writer failed unexpectedly (a bug; the server log has the details); the \
         append may or may not have been written; retry with the same event ids"
    )]
    WriterFailed,

    /// No connection could be taken from the pool; the database may be down. Retry later.
    #[error("could not get a database connection: {0}")]
    Unavailable(String),

    /// A migration problem (see the message); the store cannot start.
    #[error("migration error: {0}")]
    Migration(String),

    /// The store's configuration does not fit the database (see the message).
    #[error("configuration error: {0}")]
    Config(String),
}

/// The one classifier of PostgreSQL errors: `true` for a lost connection or a passing
/// conflict (worth retrying as is), `false` for a problem with the SQL or the data.
///
/// Transient: the connection closed or failed at the I/O level; the server ending the
/// session (terminated by an administrator, shutting down, idle in a transaction too long,
/// connection exceptions: a terminated backend answers with a FATAL error before closing, so
/// `is_closed()` alone misses it); a serialization failure or deadlock. Not transient: every
/// other server error, and client-side errors without a server answer that are not about
/// the connection (a parameter of the wrong type, a row that does not decode): retrying
/// those forever would only repeat them.
pub fn is_transient_postgres_error(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    let Some(db) = error.as_db_error() else {
        return error.is_closed() || caused_by_io(error);
    };
    let code = db.code();
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(code)
}

/// Whether an I/O error (a reset, a refused or timed-out connection) is among the causes.
fn caused_by_io(error: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if inner.is::<std::io::Error>() {
            return true;
        }
        cause = inner.source();
    }
    // Connecting failures without an I/O source ("error connecting to server", timeouts).
    let text = error.to_string();
    text.starts_with("error connecting to server") || text.starts_with("timeout waiting for server")
}

/// PostgreSQL's message, SQLSTATE, detail and hint when the server answered; otherwise the
/// client error with its causes (e.g. "error connecting to server: Connection refused").
pub fn describe_postgres_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str("; ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; hint: ");
            text.push_str(hint);
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Why an append was refused as overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverloadReason {
    /// The queue stayed full for the whole enqueue deadline.
    #[error("the append queue stayed full for {waited_ms} ms")]
    QueueFull { waited_ms: u64 },
    /// The requests already queued would take longer than the admission budget to write.
    #[error(
        "an append queued now would wait about {expected_ms} ms, over the budget of {budget_ms} ms"
    )]
    ExpectedWait { expected_ms: u64, budget_ms: u64 },
}

fn describe_version(v: Option<StreamVersion>) -> String {
    match v {
        None => "no stream".to_string(),
        Some(v) => format!("version {v}"),
    }
}

impl StoreError {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        move |source| StoreError::Database {
            context,
            source: Arc::new(source),
        }
    }

    /// Classifies a failed COMMIT of an append. A server error answering the COMMIT
    /// (a serialization failure, a deferred constraint) means it rolled back: nothing was
    /// written. Anything else (the connection closed, an I/O error, a FATAL error that ends
    /// the session, which PostgreSQL also sends when it is terminated after the commit
    /// record was written) leaves the outcome unknown.
    pub(crate) fn commit_failed(
        context: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        move |source| {
            use tokio_postgres::error::Severity;
            let rolled_back = source.as_db_error().is_some_and(|db| {
                !matches!(
                    db.parsed_severity(),
                    Some(Severity::Fatal | Severity::Panic)
                )
            });
            let source = Arc::new(source);
            if rolled_back {
                StoreError::Database { context, source }
            } else {
                StoreError::OutcomeUnknown { context, source }
            }
        }
    }

    /// A stable, machine-readable name for the kind of error (used in metrics and APIs).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Invalid(ValidationError::PayloadTooLarge { .. }) => "payload_too_large",
            StoreError::Invalid(_) => "bad_input",
            StoreError::WrongExpectedVersion { .. } => "wrong_expected_version",
            StoreError::EventIdConflict { .. } => "event_id_conflict",
            StoreError::Overloaded { .. } => "overloaded",
            StoreError::Refused(_) => "refused",
            StoreError::Unreadable(_) => "unreadable",
            StoreError::ShuttingDown => "shutting_down",
            StoreError::Database { .. } => "database",
            StoreError::OutcomeUnknown { .. } => "outcome_unknown",
            StoreError::WriterFailed => "writer_failed",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Migration(_) => "migration",
            StoreError::Config(_) => "config",
        }
    }

    /// Whether the same request may succeed if simply sent again later. For
    /// [`StoreError::OutcomeUnknown`] "the same" means with the same event ids.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Overloaded { .. }
            | StoreError::Unavailable(_)
            | StoreError::OutcomeUnknown { .. }
            | StoreError::WriterFailed => true,
            StoreError::Database { source, .. } => is_transient_postgres_error(source),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(source) => {
                StoreError::Unavailable(describe_postgres_error(&source))
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}
