//! Errors of the API: one [`ApiError`] type, the one place where store and engine errors
//! become stable GraphQL error codes, and the pass that gives every error in a response a
//! code ([`normalize`]).
//!
//! An application's resolvers return [`ApiResult`] and use `?` on a
//! [`CommandError`], a [`StoreError`], an [`EngineError`] or a [`SchemaError`]: each converts into
//! [`ApiError`] by the mapping here (a refused command is `REJECTED` with the aggregate's
//! sentence, a lasting conflict `WRONG_EXPECTED_VERSION`, ...). `async_graphql::Result`
//! works for store and engine errors too, because [`normalize`] finds them as the error's
//! source; but not for a [`CommandError`]: it is generic over the aggregate's error, so it
//! cannot be downcast, and `?` into an `async_graphql::Error` would compile and answer
//! `INTERNAL`. Errors without a code and without a source are async-graphql's own (parse,
//! validation, argument coercion, depth and complexity limits): they are the client's
//! input, `BAD_INPUT`. Errors with a source this module does not know are `INTERNAL`: their
//! text is logged, never shown.

use async_graphql::{ErrorExtensionValues, ServerError, Value};
use std::fmt;
use tidemark_consumers::ConsumerError;
use tidemark_projections::EngineError;
use tidemark_schema::SchemaError;
use tidemark_store::aggregate::CommandError;
use tidemark_store::{StoreError, ValidationError};

/// The stable codes clients program against (`extensions.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The stream was not at the expected version; `extensions.actualVersion` says where it
    /// is (`null`: no stream). Reload, decide again, retry.
    WrongExpectedVersion,
    /// An event id was reused for different content. Use a new id.
    EventIdConflict,
    /// The server is busy, shutting down, or lost its database for a moment; nothing was
    /// written. Retry after `extensions.retryAfterMs`.
    Overloaded,
    /// The database connection broke while an append was being committed: it may or may
    /// not have been written. Retry with the same event ids (a command: the same
    /// `commandId`); a retry of a written append answers with the originals.
    OutcomeUnknown,
    /// The request is malformed or a value is invalid; `extensions.field` names it when known.
    BadInput,
    /// The request body or an event is larger than allowed; `extensions.limitBytes`.
    PayloadTooLarge,
    /// No API key, or an unknown or revoked one.
    Unauthenticated,
    /// The API key's role does not allow this field.
    Forbidden,
    /// The named thing (a projection, ...) does not exist.
    NotFound,
    /// A command was refused by a business rule of the application. Nothing was written.
    Rejected,
    /// A wait (read-your-writes) did not complete in time; retry later.
    Timeout,
    /// A build (rebuild, replay, as-of) of this projection into the same target is already
    /// running; wait for it to finish.
    BuildRunning,
    /// A build stopped on an event it could not apply; see the projection's dead letters.
    BuildStopped,
    /// An event does not match the schema version it claims (validation `ENFORCE`);
    /// `extensions.violations` lists `{path, rule, message}`, `extensions.field` the event.
    /// Nothing of the append was written.
    SchemaViolation,
    /// A schema breaks its type's compatibility mode; `extensions.incompatibilities` lists
    /// `{version, direction, rule, path, message}`. Nothing was registered.
    SchemaIncompatible,
    /// The schema text is not a usable JSON Schema or Avro schema.
    SchemaInvalid,
    /// No such event type or schema version (or no Avro schema for it).
    SchemaNotFound,
    /// The event's type has no schema and this server refuses such events; register one.
    SchemaRequired,
    /// The schema version is claimed by stored events and cannot be deleted.
    SchemaInUse,
    /// A stored event could not be upcast to the latest version of its type (a missing or
    /// failing upcaster); register the missing step.
    UpcastFailed,
    /// No consumer group of that name; create it first (`createConsumerGroup`).
    GroupNotFound,
    /// A consumer group of that name exists with other settings; delete it first or choose
    /// another name.
    GroupExists,
    /// Something failed on the server; details are in its log, not in the response.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::WrongExpectedVersion => "WRONG_EXPECTED_VERSION",
            ErrorCode::EventIdConflict => "EVENT_ID_CONFLICT",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ErrorCode::BadInput => "BAD_INPUT",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Rejected => "REJECTED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::BuildRunning => "BUILD_RUNNING",
            ErrorCode::BuildStopped => "BUILD_STOPPED",
            ErrorCode::SchemaViolation => "SCHEMA_VIOLATION",
            ErrorCode::SchemaIncompatible => "SCHEMA_INCOMPATIBLE",
            ErrorCode::SchemaInvalid => "SCHEMA_INVALID",
            ErrorCode::SchemaNotFound => "SCHEMA_NOT_FOUND",
            ErrorCode::SchemaRequired => "SCHEMA_REQUIRED",
            ErrorCode::SchemaInUse => "SCHEMA_IN_USE",
            ErrorCode::UpcastFailed => "UPCAST_FAILED",
            ErrorCode::GroupNotFound => "GROUP_NOT_FOUND",
            ErrorCode::GroupExists => "GROUP_EXISTS",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What resolvers return: `?` maps command, store and engine errors to their codes (see
/// the module documentation).
pub type ApiResult<T> = Result<T, ApiError>;

/// Advice given with `OVERLOADED`.
pub const RETRY_AFTER_MS: u64 = 250;

/// An error as a client sees it: a code, a sentence, and extension fields. `internal` is
/// the detail kept for the log when the code is `INTERNAL`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub extensions: Vec<(&'static str, Value)>,
    internal: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            extensions: Vec::new(),
            internal: None,
        }
    }

    /// Adds an extension field.
    pub fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.extensions.push((name, value.into()));
        self
    }

    /// `BAD_INPUT` about `field` (a GraphQL argument or input field, e.g. `events.0.type`).
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadInput, message).with("field", field.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Rejected, message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Overloaded, message).with("retryAfterMs", RETRY_AFTER_MS)
    }

    /// `OUTCOME_UNKNOWN`: retryable with the same ids, so it carries `retryAfterMs` too.
    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::OutcomeUnknown, message).with("retryAfterMs", RETRY_AFTER_MS)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthenticated, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    /// `INTERNAL`: the client sees a generic sentence; `detail` goes to the log.
    pub fn internal(detail: impl fmt::Display) -> Self {
        ApiError {
            code: ErrorCode::Internal,
            message: "internal error; the server log has the details".into(),
            extensions: Vec::new(),
            internal: Some(detail.to_string()),
        }
    }

    /// The extension values of this error, `code` first.
    pub fn extension_values(&self) -> ErrorExtensionValues {
        let mut values = ErrorExtensionValues::default();
        values.set("code", self.code.as_str());
        for (name, value) in &self.extensions {
            values.set(name, value.clone());
        }
        values
    }

    /// This error as a GraphQL response error (for errors raised outside resolvers).
    pub fn into_server_error(self) -> ServerError {
        let mut error = ServerError::new(self.message.clone(), None);
        error.extensions = Some(self.extension_values());
        error.source = Some(std::sync::Arc::new(self));
        error
    }

    /// The one mapping from store errors to API errors.
    pub fn from_store(error: &StoreError) -> ApiError {
        match error {
            StoreError::Invalid(invalid) => from_validation(invalid),
            StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => ApiError::new(ErrorCode::WrongExpectedVersion, error.to_string())
                .with("streamId", stream_id.as_str())
                .with("expectedVersion", crate::schema::types::expected_to_string(*expected))
                .with("actualVersion", actual.map_or(Value::Null, Value::from)),
            StoreError::EventIdConflict {
                event_id,
                existing_position,
            } => ApiError::new(ErrorCode::EventIdConflict, error.to_string())
                .with("eventId", event_id.to_string())
                .with("existingPosition", *existing_position),
            StoreError::Overloaded { retry_after_ms, .. } => {
                ApiError::new(ErrorCode::Overloaded, error.to_string())
                    .with("retryAfterMs", *retry_after_ms)
            }
            StoreError::Refused(hook) => {
                let mapped = match hook.downcast_ref::<SchemaError>() {
                    Some(schema) => ApiError::from_schema(schema),
                    None => ApiError::new(ErrorCode::BadInput, hook.message.clone()),
                };
                let mapped = match hook.event_index {
                    Some(index) => mapped
                        .with("field", format!("events.{index}.data"))
                        .with("eventIndex", index as u64),
                    None => mapped,
                };
                // The sentence says which event and that nothing was written.
                ApiError {
                    message: error.to_string(),
                    ..mapped
                }
            }
            StoreError::Unreadable(hook) => match hook.downcast_ref::<SchemaError>() {
                Some(schema) => ApiError {
                    message: hook.message.clone(),
                    ..ApiError::from_schema(schema)
                },
                None => ApiError::internal(error),
            },
            StoreError::ShuttingDown => ApiError::overloaded(
                "the server is shutting down and accepts no more appends; retry on another node or after the restart",
            ),
            StoreError::Unavailable(_) => ApiError::overloaded(
                "the database is unavailable right now; retry shortly",
            )
            .with_internal(error),
            StoreError::OutcomeUnknown { .. } => ApiError::outcome_unknown(
                "the database connection broke while the append was being committed: it may \
                 or may not have been written; retry with the same event ids",
            )
            .with_internal(error),
            // A lost connection or a passing conflict before anything was committed: the
            // transaction rolled back, so this is "nothing written, retry", not a bug.
            StoreError::Database { .. } if error.is_retryable() => ApiError::overloaded(
                "the database failed the request for a moment and nothing was written; retry shortly",
            )
            .with_internal(error),
            // A bug, so INTERNAL; but the client must hear that the append may have been
            // written (the message holds no internals).
            StoreError::WriterFailed => ApiError::new(ErrorCode::Internal, error.to_string()),
            StoreError::Database { .. }
            | StoreError::Migration(_)
            | StoreError::Config(_) => ApiError::internal(error),
        }
    }

    /// The one mapping from projection-engine errors to API errors.
    pub fn from_engine(error: &EngineError) -> ApiError {
        match error {
            EngineError::UnknownProjection(name) => {
                ApiError::not_found(format!("no projection named '{name}' is registered"))
                    .with("projection", name.as_str())
            }
            EngineError::InvalidLabel { .. } => ApiError::bad_input("label", error.to_string()),
            EngineError::NotWindowed { .. } => ApiError::bad_input("projection", error.to_string()),
            EngineError::BuildRunning { projection, .. } => {
                ApiError::new(ErrorCode::BuildRunning, error.to_string())
                    .with("projection", projection.as_str())
            }
            EngineError::BuildStopped { projection } => {
                ApiError::new(ErrorCode::BuildStopped, error.to_string())
                    .with("projection", projection.as_str())
            }
            EngineError::ParkedEventMissing { .. } => ApiError::internal(error),
            EngineError::Store(store) => ApiError::from_store(store),
            EngineError::Unavailable(_) => {
                ApiError::overloaded("the database is unavailable right now; retry shortly")
                    .with_internal(error)
            }
            EngineError::ShuttingDown => ApiError::overloaded(
                "the projection engine is shutting down; retry after the restart",
            ),
            EngineError::Projection { .. }
            | EngineError::LanePanicked { .. }
            | EngineError::Database { .. }
            | EngineError::CheckpointMoved { .. } => ApiError::internal(error),
        }
    }

    /// The one mapping from schema registry errors to API errors: each `SchemaError` code is
    /// an [`ErrorCode`] of the same name, with the details as extensions.
    pub fn from_schema(error: &SchemaError) -> ApiError {
        let message = error.to_string();
        match error {
            SchemaError::Violation {
                event_type,
                version,
                violations,
            } => {
                let listed: Vec<serde_json::Value> = violations
                    .iter()
                    .map(|v| {
                        serde_json::json!({"path": v.path, "rule": v.keyword, "message": v.message})
                    })
                    .collect();
                ApiError::new(ErrorCode::SchemaViolation, message)
                    .with("eventType", event_type.as_str())
                    .with("schemaVersion", *version)
                    .with("violations", json_value(serde_json::Value::Array(listed)))
            }
            SchemaError::AvroEncode { path, reason } => {
                ApiError::new(ErrorCode::SchemaViolation, message).with(
                    "violations",
                    json_value(
                        serde_json::json!([{"path": path, "rule": "avro", "message": reason}]),
                    ),
                )
            }
            SchemaError::Incompatible {
                event_type,
                mode,
                incompatibilities,
            } => ApiError::new(ErrorCode::SchemaIncompatible, message)
                .with("eventType", event_type.as_str())
                .with("mode", mode.as_str())
                .with(
                    "incompatibilities",
                    json_value(serde_json::Value::Array(
                        incompatibilities.iter().map(finding_json).collect(),
                    )),
                ),
            SchemaError::InvalidSchema { event_type, .. } => {
                ApiError::new(ErrorCode::SchemaInvalid, message)
                    .with("eventType", event_type.as_str())
            }
            SchemaError::NotFound { event_type, .. }
            | SchemaError::NoAvroSchema { event_type, .. } => {
                ApiError::new(ErrorCode::SchemaNotFound, message)
                    .with("eventType", event_type.as_str())
            }
            SchemaError::Unregistered { event_type } => {
                ApiError::new(ErrorCode::SchemaRequired, message)
                    .with("eventType", event_type.as_str())
            }
            SchemaError::InUse {
                event_type, events, ..
            } => ApiError::new(ErrorCode::SchemaInUse, message)
                .with("eventType", event_type.as_str())
                .with("events", *events),
            SchemaError::Upcast(_) => ApiError::new(ErrorCode::UpcastFailed, message),
            SchemaError::AvroDecode { .. } => ApiError::internal(error),
            SchemaError::InvalidSetting { what, .. } => ApiError::bad_input(*what, message),
            SchemaError::Database { source, .. } => {
                if source
                    .as_deref()
                    .is_none_or(tidemark_store::error::is_transient_postgres_error)
                {
                    ApiError::overloaded("the database is unavailable right now; retry shortly")
                        .with_internal(error)
                } else {
                    ApiError::internal(error)
                }
            }
        }
    }

    /// The one mapping from consumer-group errors to API errors.
    pub fn from_consumers(error: &ConsumerError) -> ApiError {
        match error {
            ConsumerError::GroupNotFound(group) => {
                ApiError::new(ErrorCode::GroupNotFound, error.to_string())
                    .with("group", group.as_str())
            }
            ConsumerError::GroupExists(group) => {
                ApiError::new(ErrorCode::GroupExists, error.to_string())
                    .with("group", group.as_str())
            }
            ConsumerError::Invalid { field, message } => {
                ApiError::bad_input(*field, message.as_str())
            }
            ConsumerError::Store(store) => ApiError::from_store(store),
        }
    }

    /// Maps a command bus error: a refused command is `REJECTED` with the aggregate's
    /// message; store errors map as above.
    pub fn from_command<E: fmt::Display>(error: &CommandError<E>) -> ApiError {
        match error {
            CommandError::Rejected(reason) => ApiError::rejected(reason.to_string()),
            CommandError::Store(store @ StoreError::OutcomeUnknown { .. }) => {
                ApiError::outcome_unknown(
                    "the database connection broke while the command's events were being \
                     committed: they may or may not have been written; retry with the same \
                     commandId (a command sent without one cannot be retried safely)",
                )
                .with_internal(store)
            }
            CommandError::Store(store) => ApiError::from_store(store),
            CommandError::Decode { .. } | CommandError::Encode(_) => ApiError::internal(error),
        }
    }

    fn with_internal(mut self, detail: impl fmt::Display) -> Self {
        self.internal = Some(detail.to_string());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::from_store(&error)
    }
}

impl From<ConsumerError> for ApiError {
    fn from(error: ConsumerError) -> Self {
        ApiError::from_consumers(&error)
    }
}

impl From<SchemaError> for ApiError {
    fn from(error: SchemaError) -> Self {
        ApiError::from_schema(&error)
    }
}

/// A compatibility finding as clients read it: which version, which way, the rule and the
/// field's JSON path.
pub(crate) fn finding_json(finding: &tidemark_schema::Finding) -> serde_json::Value {
    serde_json::json!({
        "version": finding.version,
        "direction": direction_name(finding.direction),
        "rule": finding.incompatibility.rule(),
        "path": finding.incompatibility.path(),
        "message": finding.to_string(),
    })
}

/// A compatibility check's direction as clients read it.
pub(crate) fn direction_name(direction: tidemark_schema::Direction) -> &'static str {
    match direction {
        tidemark_schema::Direction::Backward => "BACKWARD",
        tidemark_schema::Direction::Forward => "FORWARD",
    }
}

fn json_value(value: serde_json::Value) -> Value {
    Value::from_json(value).unwrap_or(Value::Null)
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        ApiError::from_engine(&error)
    }
}

impl<E: fmt::Display> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        ApiError::from_command(&error)
    }
}

/// Store validation errors name their field in prose; clients get the GraphQL name.
fn from_validation(error: &ValidationError) -> ApiError {
    let message = error.to_string();
    let field = match error {
        ValidationError::Empty { field }
        | ValidationError::TooLong { field, .. }
        | ValidationError::ControlCharacter { field, .. } => match *field {
            "stream id" => "streamId".to_string(),
            "event type" => "events.type".to_string(),
            other => other.to_string(),
        },
        ValidationError::NotAnObject {
            field, event_index, ..
        }
        | ValidationError::NulInJson { field, event_index } => {
            let field = if *field == "payload" { "data" } else { field };
            format!("events.{event_index}.{field}")
        }
        ValidationError::PayloadTooLarge {
            event_index,
            size,
            max,
        } => {
            return ApiError::new(ErrorCode::PayloadTooLarge, message)
                .with("field", format!("events.{event_index}"))
                .with("sizeBytes", *size as u64)
                .with("limitBytes", *max as u64);
        }
        ValidationError::NoEvents => "events".to_string(),
        ValidationError::NoPayloadCodec { event_index } => format!("events.{event_index}.encoding"),
        ValidationError::TooManyEvents { count, max } => {
            return ApiError::bad_input("events", message)
                .with("count", *count as u64)
                .with("limit", *max as u64);
        }
        ValidationError::DuplicateIdInAppend { .. } => "events.eventId".to_string(),
        ValidationError::NegativeVersion(_) => "expectedVersion".to_string(),
    };
    ApiError::bad_input(field, message)
}

/// What [`normalize`] found out about an error, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Normalized {
    pub code: String,
    /// Set for `INTERNAL` errors: what to log.
    pub internal: Option<String>,
}

/// Gives `error` its code and client-facing message. Pure: the caller logs and counts.
pub fn normalize(error: &mut ServerError) -> Normalized {
    let mapped = if let Some(api) = error.source::<ApiError>() {
        Some(api.clone())
    } else if let Some(store) = error.source::<StoreError>() {
        Some(ApiError::from_store(store))
    } else if let Some(schema) = error.source::<SchemaError>() {
        Some(ApiError::from_schema(schema))
    } else if let Some(consumers) = error.source::<ConsumerError>() {
        Some(ApiError::from_consumers(consumers))
    } else {
        error.source::<EngineError>().map(ApiError::from_engine)
    };
    if let Some(api) = mapped {
        let mut values = error.extensions.take().unwrap_or_default();
        values.set("code", api.code.as_str());
        for (name, value) in &api.extensions {
            values.set(name, value.clone());
        }
        error.extensions = Some(values);
        error.message = api.message.clone();
        return Normalized {
            code: api.code.as_str().to_string(),
            internal: api.internal,
        };
    }
    if let Some(Value::String(code)) = error.extensions.as_ref().and_then(|e| e.get("code")) {
        return Normalized {
            code: code.clone(),
            internal: None,
        };
    }
    let (code, internal) = if error.source.is_some() {
        // An error type we do not know (e.g. an application resolver's `?` on a database
        // error): its text may hold internals.
        let detail = std::mem::replace(
            &mut error.message,
            "internal error; the server log has the details".into(),
        );
        (ErrorCode::Internal, Some(detail))
    } else {
        (ErrorCode::BadInput, None)
    };
    let mut values = error.extensions.take().unwrap_or_default();
    values.set("code", code.as_str());
    if code == ErrorCode::BadInput && values.get("field").is_none() {
        if let Some(field) = field_of(&error.message) {
            values.set("field", field);
        }
    }
    error.extensions = Some(values);
    Normalized {
        code: code.as_str().to_string(),
        internal,
    }
}

/// The argument or field an async-graphql message is about, e.g. `Invalid value for
/// argument "events.0.eventId"` or `Unknown field "nope" on type "Query"`.
fn field_of(message: &str) -> Option<String> {
    for marker in ["argument \"", "field \""] {
        if let Some(start) = message.find(marker) {
            let rest = &message[start + marker.len()..];
            if let Some(end) = rest.find('"') {
                return Some(rest[..end].to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: &ServerError) -> String {
        match error.extensions.as_ref().and_then(|e| e.get("code")) {
            Some(Value::String(code)) => code.clone(),
            other => panic!("no code: {other:?}"),
        }
    }

    #[test]
    fn store_errors_map_to_stable_codes() {
        let cases = [
            (
                StoreError::WrongExpectedVersion {
                    stream_id: "s".into(),
                    expected: tidemark_store::ExpectedVersion::Exact(1),
                    actual: Some(3),
                },
                "WRONG_EXPECTED_VERSION",
            ),
            (
                StoreError::Overloaded {
                    reason: tidemark_store::OverloadReason::QueueFull { waited_ms: 5 },
                    retry_after_ms: 100,
                },
                "OVERLOADED",
            ),
            (
                StoreError::Invalid(ValidationError::TooManyEvents { count: 3, max: 2 }),
                "BAD_INPUT",
            ),
            (
                StoreError::Invalid(ValidationError::PayloadTooLarge {
                    event_index: 0,
                    size: 10,
                    max: 5,
                }),
                "PAYLOAD_TOO_LARGE",
            ),
            (StoreError::Migration("secret detail".into()), "INTERNAL"),
        ];
        for (store, code) in cases {
            let mut error: ServerError =
                async_graphql::Error::from(store).into_server_error(Default::default());
            let normalized = normalize(&mut error);
            assert_eq!(code_of(&error), code);
            assert_eq!(normalized.code, code);
            assert!(!error.message.contains("secret"), "{}", error.message);
        }
    }

    /// A live connection to a port nobody listens on gives a real connection error
    /// (`tokio_postgres::Error` cannot be built otherwise).
    async fn connection_error() -> tokio_postgres::Error {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("nobody");
        config
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on the port")
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_outcome_unknown_and_a_lost_connection_before_commit_is_overloaded(
    ) {
        let unknown = StoreError::OutcomeUnknown {
            context: "committing appended events",
            source: std::sync::Arc::new(connection_error().await),
        };
        let api = ApiError::from_store(&unknown);
        assert_eq!(api.code, ErrorCode::OutcomeUnknown);
        assert!(
            api.message
                .contains("may or may not have been written; retry with the same event ids"),
            "{}",
            api.message
        );
        assert!(api
            .extensions
            .iter()
            .any(|(name, _)| *name == "retryAfterMs"));
        let command = ApiError::from_command(&CommandError::<std::io::Error>::Store(unknown));
        assert_eq!(command.code, ErrorCode::OutcomeUnknown);
        assert!(command.message.contains("commandId"), "{}", command.message);

        // Failed before COMMIT was sent: rolled back, nothing written.
        let before_commit = StoreError::Database {
            context: "inserting events",
            source: std::sync::Arc::new(connection_error().await),
        };
        assert!(before_commit.is_retryable());
        assert_eq!(
            ApiError::from_store(&before_commit).code,
            ErrorCode::Overloaded
        );
    }

    /// What an application resolver does: `?` on the command bus's answer, returning
    /// [`ApiResult`]; async-graphql then turns the `ApiError` into a response error.
    fn through_a_resolver(error: CommandError<std::io::Error>) -> ServerError {
        fn resolver(answer: Result<(), CommandError<std::io::Error>>) -> ApiResult<()> {
            answer?;
            Ok(())
        }
        let error = resolver(Err(error)).expect_err("the command failed");
        let mut error = async_graphql::Error::from(error).into_server_error(Default::default());
        normalize(&mut error);
        error
    }

    #[test]
    fn a_command_error_keeps_its_code_through_question_mark() {
        let refused = through_a_resolver(CommandError::Rejected(std::io::Error::other(
            "the balance is 3",
        )));
        assert_eq!(code_of(&refused), "REJECTED");
        assert_eq!(refused.message, "the balance is 3");

        let conflict = through_a_resolver(CommandError::Store(StoreError::WrongExpectedVersion {
            stream_id: "account-1".into(),
            expected: tidemark_store::ExpectedVersion::Exact(1),
            actual: Some(2),
        }));
        assert_eq!(code_of(&conflict), "WRONG_EXPECTED_VERSION");
        let extensions = conflict.extensions.expect("extensions");
        assert_eq!(extensions.get("streamId"), Some(&Value::from("account-1")));
        assert_eq!(extensions.get("actualVersion"), Some(&Value::from(2)));

        let undecodable = through_a_resolver(CommandError::Decode {
            stream_id: "account-1".into(),
            stream_version: 0,
            event_type: "Secret".into(),
            message: "unknown variant".into(),
        });
        assert_eq!(code_of(&undecodable), "INTERNAL");
        assert!(
            !undecodable.message.contains("Secret"),
            "{}",
            undecodable.message
        );
    }

    #[test]
    fn schema_errors_keep_the_registry_codes() {
        let cases = [
            SchemaError::InvalidSchema {
                event_type: "T".into(),
                reason: "not a schema".into(),
            },
            SchemaError::NotFound {
                event_type: "T".into(),
                version: Some(2),
            },
            SchemaError::Unregistered {
                event_type: "T".into(),
            },
            SchemaError::InUse {
                event_type: "T".into(),
                version: 1,
                events: 3,
            },
            SchemaError::Violation {
                event_type: "T".into(),
                version: 1,
                violations: Vec::new(),
            },
            SchemaError::Incompatible {
                event_type: "T".into(),
                mode: tidemark_schema::CompatibilityMode::Backward,
                incompatibilities: Vec::new(),
            },
        ];
        for schema in cases {
            let mut error: ServerError =
                async_graphql::Error::from(schema.clone()).into_server_error(Default::default());
            normalize(&mut error);
            assert_eq!(code_of(&error), schema.code());
        }
    }

    #[test]
    fn engine_errors_each_have_their_own_code() {
        let cases = [
            (
                EngineError::InvalidLabel {
                    label: "a b".into(),
                },
                "BAD_INPUT",
            ),
            (
                EngineError::BuildRunning {
                    projection: "p".into(),
                    target: "shadow".into(),
                },
                "BUILD_RUNNING",
            ),
            (
                EngineError::BuildStopped {
                    projection: "p".into(),
                },
                "BUILD_STOPPED",
            ),
            (
                EngineError::ParkedEventMissing {
                    event_id: uuid::Uuid::nil(),
                    position: 7,
                },
                "INTERNAL",
            ),
        ];
        for (engine, code) in cases {
            let mut error: ServerError =
                async_graphql::Error::from(engine).into_server_error(Default::default());
            normalize(&mut error);
            assert_eq!(code_of(&error), code);
        }
    }

    #[test]
    fn consumer_group_errors_have_their_codes() {
        let cases = [
            (ConsumerError::GroupNotFound("g".into()), "GROUP_NOT_FOUND"),
            (ConsumerError::GroupExists("g".into()), "GROUP_EXISTS"),
            (
                ConsumerError::Invalid {
                    field: "maxInFlight",
                    message: "must be between 1 and 100000".into(),
                },
                "BAD_INPUT",
            ),
        ];
        for (consumers, code) in cases {
            let mut error: ServerError =
                async_graphql::Error::from(consumers).into_server_error(Default::default());
            normalize(&mut error);
            assert_eq!(code_of(&error), code);
        }
    }

    #[test]
    fn errors_without_source_are_bad_input_with_the_field() {
        let mut error = ServerError::new(
            "Invalid value for argument \"streamId\", expected type \"String\"",
            None,
        );
        normalize(&mut error);
        assert_eq!(code_of(&error), "BAD_INPUT");
        assert_eq!(
            error.extensions.unwrap().get("field"),
            Some(&Value::from("streamId"))
        );
    }

    #[test]
    fn unknown_sources_are_internal_and_hidden() {
        let mut error = async_graphql::Error::from(std::io::Error::other("password=hunter2"))
            .into_server_error(Default::default());
        let normalized = normalize(&mut error);
        assert_eq!(code_of(&error), "INTERNAL");
        assert!(!error.message.contains("hunter2"));
        assert!(normalized.internal.unwrap().contains("hunter2"));
    }
}
