//! Every error of the schema crate, each with a stable code (`SchemaError::code`) for APIs.

use std::sync::Arc;

use crate::compat::Finding;
use crate::mode::CompatibilityMode;
use crate::upcast::UpcastError;
use crate::validate::Violation;

pub type Result<T, E = SchemaError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    #[error("{what} '{value}' is not known; use one of {}", allowed.join(", "))]
    InvalidSetting {
        what: &'static str,
        value: String,
        allowed: Vec<&'static str>,
    },

    /// The schema text itself is unusable (not JSON, not a JSON Schema, not an Avro schema).
    #[error("the schema of '{event_type}' is not valid: {reason}")]
    InvalidSchema { event_type: String, reason: String },

    #[error(
        "the schema is not {mode}-compatible with the registered versions of '{event_type}': {}; \
         change the schema, register it under a new event type, or relax the mode",
        describe_all(incompatibilities)
    )]
    Incompatible {
        event_type: String,
        mode: CompatibilityMode,
        incompatibilities: Vec<Finding>,
    },

    #[error(
        "the payload does not match version {version} of '{event_type}': {}",
        describe_violations(violations)
    )]
    Violation {
        event_type: String,
        version: i32,
        violations: Vec<Violation>,
    },

    #[error("{}", not_found_message(event_type, *version))]
    NotFound {
        event_type: String,
        version: Option<i32>,
    },

    /// The server refuses event types without a schema (`UnregisteredPolicy::Refuse`).
    #[error(
        "event type '{event_type}' has no registered schema and this server refuses such events; \
         register a schema for it first"
    )]
    Unregistered { event_type: String },

    #[error(
        "version {version} of '{event_type}' is used by {events} stored event(s) and cannot be \
         deleted; the log keeps every event as it was written"
    )]
    InUse {
        event_type: String,
        version: i32,
        events: i64,
    },

    #[error(transparent)]
    Upcast(#[from] UpcastError),

    /// Version `version` of `event_type` has no Avro schema, so binary payloads cannot use it.
    #[error(
        "version {version} of '{event_type}' has no Avro schema; register one with the version \
         to use binary payloads"
    )]
    NoAvroSchema { event_type: String, version: i32 },

    /// A JSON payload could not be written as Avro: it does not fit the Avro schema.
    #[error("the payload does not fit the Avro schema: {reason} (at {path})")]
    AvroEncode { path: String, reason: String },

    /// Avro bytes could not be read with the writer schema they claim.
    #[error("the binary payload could not be decoded: {reason}")]
    AvroDecode { reason: String },

    #[error("database error while {context}: {message}")]
    Database {
        context: &'static str,
        message: String,
        source: Option<Arc<tokio_postgres::Error>>,
    },
}

impl SchemaError {
    /// A stable, machine-readable code for the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            SchemaError::InvalidSetting { .. } => "BAD_INPUT",
            SchemaError::InvalidSchema { .. } => "SCHEMA_INVALID",
            SchemaError::Incompatible { .. } => "SCHEMA_INCOMPATIBLE",
            SchemaError::Violation { .. } | SchemaError::AvroEncode { .. } => "SCHEMA_VIOLATION",
            SchemaError::NotFound { .. } | SchemaError::NoAvroSchema { .. } => "SCHEMA_NOT_FOUND",
            SchemaError::Unregistered { .. } => "SCHEMA_REQUIRED",
            SchemaError::InUse { .. } => "SCHEMA_IN_USE",
            SchemaError::Upcast(_) => "UPCAST_FAILED",
            SchemaError::AvroDecode { .. } => "PAYLOAD_UNREADABLE",
            SchemaError::Database { .. } => "INTERNAL",
        }
    }

    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SchemaError {
        move |source| SchemaError::Database {
            context,
            message: tidemark_store::error::describe_postgres_error(&source),
            source: Some(Arc::new(source)),
        }
    }

    pub(crate) fn pool(
        context: &'static str,
    ) -> impl FnOnce(deadpool_postgres::PoolError) -> SchemaError {
        move |error| SchemaError::Database {
            context,
            message: error.to_string(),
            source: None,
        }
    }
}

fn describe_all(incompatibilities: &[Finding]) -> String {
    incompatibilities
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_violations(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn not_found_message(event_type: &str, version: Option<i32>) -> String {
    match version {
        Some(version) => format!("event type '{event_type}' has no schema version {version}"),
        None => format!("event type '{event_type}' has no registered schema"),
    }
}
