//! The event model: what callers append and what the log hands back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Global position in the log. Positions start at 1, are dense and follow commit order;
/// `0` means "before the first event" and is the natural starting checkpoint.
pub type Position = i64;

/// Version of an event inside its stream: 0 for the first event, dense.
pub type StreamVersion = i64;

/// What the caller believes about the stream it appends to (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// The version the first appended event will get if the expectation holds,
    /// when it can be known before looking at the stream. `None` for `Exact(i64::MAX)`,
    /// which no stream can satisfy.
    pub(crate) fn first_new_version(self) -> Option<StreamVersion> {
        match self {
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => v.checked_add(1),
            ExpectedVersion::Any | ExpectedVersion::StreamExists => None,
        }
    }

    /// Does a stream whose last version is `current` (`None`: no stream) satisfy this?
    pub fn is_satisfied_by(self, current: Option<StreamVersion>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Client-chosen id; when absent the store derives one (see docs/design.md §5).
    pub event_id: Option<Uuid>,
    pub event_type: String,
    pub schema_version: i32,
    /// Must be a JSON object.
    pub payload: Value,
    /// Must be a JSON object (correlation/causation ids, actor, ...). An optional string
    /// field `idempotency_key` takes part in the content hash.
    pub metadata: Value,
    /// How to store the payload: `None` as the store's payload codec decides for the event
    /// type (JSON without one). The payload is given as JSON either way, and reads return
    /// it as JSON; the content hash is over the JSON, so the encoding does not change dedup.
    #[serde(default)]
    pub encoding: Option<PayloadEncoding>,
}

/// How an event's payload is stored in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PayloadEncoding {
    /// As `jsonb` in `events.payload`.
    #[default]
    Json,
    /// As an Avro datum (no header) of the event's registered schema version, in
    /// `events.payload_avro`; the store's payload codec (the schema registry) writes and
    /// reads it.
    Avro,
}

impl PayloadEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadEncoding::Json => "JSON",
            PayloadEncoding::Avro => "AVRO",
        }
    }
}

impl std::fmt::Display for PayloadEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PayloadEncoding {
    type Err = String;

    fn from_str(text: &str) -> Result<PayloadEncoding, String> {
        match text.to_ascii_uppercase().as_str() {
            "JSON" => Ok(PayloadEncoding::Json),
            "AVRO" => Ok(PayloadEncoding::Avro),
            _ => Err(format!(
                "'{text}' is not a payload encoding; use JSON or AVRO"
            )),
        }
    }
}

impl NewEvent {
    /// An event of `event_type` with `payload`, schema version 1 and empty metadata.
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        NewEvent {
            event_id: None,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Value::Object(Default::default()),
            encoding: None,
        }
    }

    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = Some(event_id);
        self
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_schema_version(mut self, schema_version: i32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Stores the payload as `encoding` (the payload is still given and read as JSON).
    pub fn with_encoding(mut self, encoding: PayloadEncoding) -> Self {
        self.encoding = Some(encoding);
        self
    }
}

/// One append: events for one stream, written atomically or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Store an event identical (same content hash) to one already in the stream only once.
    pub content_dedup: bool,
}

impl AppendRequest {
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            stream_id: stream_id.into(),
            expected,
            events,
            content_dedup: false,
        }
    }

    pub fn with_content_dedup(mut self, on: bool) -> Self {
        self.content_dedup = on;
        self
    }
}

/// Where one appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    pub event_id: Uuid,
    pub position: Position,
    pub stream_version: StreamVersion,
    /// The event was already stored (idempotent retry or content dedup); the positions are
    /// those of the original.
    pub duplicate: bool,
}

/// The answer to a successful append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub stream_id: String,
    pub events: Vec<AppendedEvent>,
    /// The stream's last version after this append.
    pub stream_version: StreamVersion,
}

impl AppendOutcome {
    /// Position of the last event of the append (the one to wait for in read-your-writes).
    pub fn last_position(&self) -> Position {
        self.events.iter().map(|e| e.position).max().unwrap_or(0)
    }

    /// True when every event was already in the log.
    pub fn all_duplicates(&self) -> bool {
        self.events.iter().all(|e| e.duplicate)
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: String,
    pub stream_version: StreamVersion,
    pub partition: i16,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    /// Always JSON, whatever the encoding it is stored in.
    pub payload: Value,
    pub metadata: Value,
    pub content_hash: [u8; 32],
    pub recorded_at: DateTime<Utc>,
    /// How the payload is stored in the log.
    #[serde(default)]
    pub encoding: PayloadEncoding,
}

impl RecordedEvent {
    /// The stream's category: its id up to the first `-` (as in Message DB).
    pub fn category(&self) -> &str {
        category_of(&self.stream_id)
    }
}

/// Category of a stream id: the part before the first `-`, or the whole id.
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split('-').next().unwrap_or(stream_id)
}
