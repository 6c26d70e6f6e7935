//! The write side: an [`Aggregate`] folds its stream's events into state and decides which
//! new events a command produces; the [`CommandBus`] loads the stream, folds, decides, and
//! appends with the version it read (`Exact(v)`, or `NoStream` for a new stream), retrying
//! a bounded number of times when another writer got there first.
//!
//! Events are a serde enum in serde's default (externally tagged) representation: each
//! variant is one event type, its fields the JSON payload. For example
//! `enum AccountEvent { Opened { owner: String }, Deposited { amount: i64 } }` is stored as
//! events of type `Opened` with payload `{"owner": ...}` and `Deposited` with
//! `{"amount": ...}`. Use struct variants (or newtype variants around structs): a payload
//! must be a JSON object. A unit variant is stored with an empty object.
//!
//! Without a command id, each event written gets a fresh id, so identical commands from two
//! clients are two commands, never one deduplicated append. A client that retries such a
//! command after a timeout or an `OutcomeUnknown` may therefore apply it twice.
//!
//! A command that carries a client-chosen command id ([`CommandOptions::command_id`]) is
//! safe to retry: its event ids are derived from the command id
//! ([`crate::hashing::command_event_id`]), so a retry of a command that already took effect
//! finds its events in the stream (or the store recognises them as duplicates) and answers
//! with the original outcome, marked [`CommandOutcome::duplicate`], instead of deciding and
//! writing again. A command id names one command: reused for another command on the same
//! aggregate, it answers with the first command's outcome.
//!
//! ```ignore
//! let bus = CommandBus::new(store.clone());
//! let outcome = bus.execute::<Account>("42", &AccountCommand::Deposit { amount: 100 }).await?;
//! let options = CommandOptions::new().command_id(Some(client_command_id));
//! let outcome = bus.execute_with::<Account>("42", &AccountCommand::Deposit { amount: 100 }, options).await?;
//! ```

use crate::error::StoreError;
use crate::hashing::command_event_id;
use crate::model::{
    AppendOutcome, AppendRequest, AppendedEvent, ExpectedVersion, NewEvent, StreamVersion,
};
use crate::read::Direction;
use crate::store::EventStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A consistency boundary: one stream, folded into state, deciding on commands.
///
/// `Default` is the state before the first event. `apply` must be a pure fold (it is run
/// again on every load); `handle` decides without side effects and returns the events to
/// append (none: the command changes nothing and nothing is written).
pub trait Aggregate: Default + Send + Sync + 'static {
    /// What callers ask for.
    type Command: Send + Sync;
    /// What happened; see the module documentation for the representation.
    type Event: Serialize + DeserializeOwned + Send + Sync;
    /// Why a command is refused (a broken business rule).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stream category; streams are named `<CATEGORY>-<id>`.
    const CATEGORY: &'static str;

    /// The stream holding the aggregate with this id.
    fn stream_id(id: &str) -> String {
        format!("{}-{id}", Self::CATEGORY)
    }

    /// The schema version the events of `event_type` this aggregate writes claim (1 unless
    /// the type evolved). Loads may see older versions upcast to the latest when the store
    /// handle has a read hook (the schema registry's); see docs/schema-evolution.md.
    fn schema_version(event_type: &str) -> i32 {
        let _ = event_type;
        1
    }

    /// Folds one event into the state.
    fn apply(&mut self, event: Self::Event);

    /// Decides which events `command` produces in the current state, or refuses it.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// Why a command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule). Nothing was written; sending the
    /// same command again gives the same answer unless the state changes.
    #[error("{0}")]
    Rejected(E),
    /// The store failed or refused the append. After the retries, a lasting conflict is a
    /// `StoreError::WrongExpectedVersion`: other writers kept changing the stream.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event in the stream could not be read as `Self::Event` (a type or field this code
    /// does not know). Nothing was written; the event type needs a schema version with an
    /// upcaster to the shape this code reads (docs/schema-evolution.md), or a code fix.
    #[error("event {stream_version} ({event_type}) of stream '{stream_id}' could not be decoded: {message}")]
    Decode {
        stream_id: String,
        stream_version: StreamVersion,
        event_type: String,
        message: String,
    },
    /// An event produced by `handle` could not be encoded (not a struct-like variant).
    #[error("an event produced by the command could not be encoded: {0}")]
    Encode(String),
}

/// The result of a command that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub stream_id: String,
    /// The stream's version after the command (`None`: the stream still does not exist,
    /// because the command produced no events on a new aggregate).
    pub stream_version: Option<StreamVersion>,
    /// The append, when the command produced events.
    pub append: Option<AppendOutcome>,
    /// How many times the command was decided (1 unless a conflict forced a retry).
    pub attempts: u32,
    /// The command (identified by its command id) had already taken effect: nothing new was
    /// written, and `append` and `stream_version` describe what the first execution wrote.
    pub duplicate: bool,
}

/// How a command is run: its client-chosen id and the metadata its events carry.
///
/// Every event a command writes carries, in its metadata, `correlationId` (the id shared by
/// everything one request or workflow caused: the one given here, else the command id, else
/// the request's own id, else a fresh one per command; the command id comes before the
/// request's id so that a command sent again in another request writes the same content) and, when known, `causationId` (what caused this command: the one
/// given here, else the command id). Values already in the given metadata are kept.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    command_id: Option<Uuid>,
    metadata: Option<Value>,
    correlation_id: Option<String>,
    request_correlation_id: Option<String>,
    causation_id: Option<String>,
}

/// The metadata key of the correlation id.
pub const CORRELATION_ID: &str = "correlationId";
/// The metadata key of the causation id.
pub const CAUSATION_ID: &str = "causationId";

impl CommandOptions {
    /// No command id, empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client's id for this command: with one, sending the command again (after a
    /// timeout or an unknown outcome) never applies it twice.
    pub fn command_id(mut self, command_id: Option<Uuid>) -> Self {
        self.command_id = command_id;
        self
    }

    /// Metadata every event written carries (a JSON object: correlation and causation ids,
    /// the actor...).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The id shared by everything one request or workflow caused (e.g. a request's
    /// `X-Correlation-Id`, or the correlation id of the event a process manager reacts to).
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The id the server made for the request running the command (when the client sent
    /// none): the correlation id of a command without a command id.
    pub fn request_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.request_correlation_id = Some(correlation_id.into());
        self
    }

    /// What caused this command (e.g. the id of the event a process manager reacts to).
    pub fn causation_id(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// The metadata the command's events carry: the given metadata with the correlation and
    /// causation ids added where it has none. Metadata that is not an object is left as it
    /// is (the append refuses it with a clear error).
    fn event_metadata(&self) -> Value {
        let mut metadata = self
            .metadata
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Value::Object(fields) = &mut metadata {
            let command_id = self.command_id.map(|id| id.to_string());
            if !fields.contains_key(CORRELATION_ID) {
                let correlation_id = self
                    .correlation_id
                    .clone()
                    .or_else(|| command_id.clone())
                    .or_else(|| self.request_correlation_id.clone())
                    .unwrap_or_else(|| Uuid::now_v7().to_string());
                fields.insert(CORRELATION_ID.into(), Value::String(correlation_id));
            }
            if !fields.contains_key(CAUSATION_ID) {
                if let Some(causation_id) = self.causation_id.clone().or(command_id) {
                    fields.insert(CAUSATION_ID.into(), Value::String(causation_id));
                }
            }
        }
        metadata
    }
}

impl CommandOutcome {
    /// Position of the last event written, to wait for in read-your-writes; 0 when nothing
    /// was written.
    pub fn position(&self) -> crate::model::Position {
        self.append.as_ref().map_or(0, AppendOutcome::last_position)
    }
}

/// Runs commands against aggregates: load, fold, decide, append, retry on conflict.
#[derive(Debug, Clone)]
pub struct CommandBus {
    store: EventStore,
    max_attempts: u32,
    page_size: usize,
}

impl CommandBus {
    /// A bus that tries each command up to 5 times when the stream moves under it.
    pub fn new(store: EventStore) -> Self {
        CommandBus {
            store,
            max_attempts: 5,
            page_size: 1000,
        }
    }

    /// How many times a command is decided before a conflict is returned (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Loads the aggregate `id`: its state and its stream's last version.
    pub async fn load<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<(A, Option<StreamVersion>), CommandError<A::Error>> {
        let (state, version, _) = self.load_checking::<A>(id, None).await?;
        Ok((state, version))
    }

    /// [`CommandBus::load`], also picking out the events the command `command_id` wrote to
    /// the stream, if it already took effect.
    async fn load_checking<A: Aggregate>(
        &self,
        id: &str,
        command_id: Option<Uuid>,
    ) -> Result<(A, Option<StreamVersion>, Vec<AppendedEvent>), CommandError<A::Error>> {
        let stream_id = A::stream_id(id);
        let mut state = A::default();
        let mut version = None;
        // A command's events are written by one append, so they are consecutive: event i
        // of the command directly follows event i - 1.
        let mut written: Vec<AppendedEvent> = Vec::new();
        let next_id = |written: usize| command_id.map(|c| command_event_id(c, &stream_id, written));
        let mut looking_for = next_id(0);
        loop {
            let from = version.map_or(0, |v: StreamVersion| v + 1);
            let events = self
                .store
                .read_stream(&stream_id, Some(from), Direction::Forward, self.page_size)
                .await?;
            let short = events.len() < self.page_size;
            for recorded in events {
                if looking_for == Some(recorded.event_id) {
                    written.push(AppendedEvent {
                        event_id: recorded.event_id,
                        position: recorded.position,
                        stream_version: recorded.stream_version,
                        duplicate: true,
                    });
                    looking_for = next_id(written.len());
                } else if !written.is_empty() {
                    looking_for = None;
                }
                let event = decode::<A::Event>(&recorded.event_type, recorded.payload).map_err(
                    |message| CommandError::Decode {
                        stream_id: stream_id.clone(),
                        stream_version: recorded.stream_version,
                        event_type: recorded.event_type.clone(),
                        message,
                    },
                )?;
                state.apply(event);
                version = Some(recorded.stream_version);
            }
            if short {
                return Ok((state, version, written));
            }
        }
    }

    /// Runs `command` on the aggregate `id` with empty event metadata.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.execute_with::<A>(id, command, CommandOptions::new())
            .await
    }

    /// Runs `command` on the aggregate `id`; every event written carries `metadata`
    /// (a JSON object: correlation and causation ids, the actor...).
    pub async fn execute_with_metadata<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Value,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.execute_with::<A>(id, command, CommandOptions::new().metadata(metadata))
            .await
    }

    /// Runs `command` on the aggregate `id` with `options` (a command id, metadata).
    pub async fn execute_with<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        options: CommandOptions,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let stream_id = A::stream_id(id);
        let metadata = options.event_metadata();
        let command_id = options.command_id;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (state, version, written) = self.load_checking::<A>(id, command_id).await?;
            if let Some(last) = written.last() {
                // A retry of a command that took effect (its answer was lost): answer as the
                // first execution did, without deciding again on the state it changed.
                metrics::counter!("tidemark_command_duplicates_total").increment(1);
                let stream_version = last.stream_version;
                return Ok(CommandOutcome {
                    stream_id: stream_id.clone(),
                    stream_version: Some(stream_version),
                    append: Some(AppendOutcome {
                        stream_id,
                        events: written,
                        stream_version,
                    }),
                    attempts: attempt,
                    duplicate: true,
                });
            }
            let events = state.handle(command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(CommandOutcome {
                    stream_id,
                    stream_version: version,
                    append: None,
                    attempts: attempt,
                    duplicate: false,
                });
            }
            // Without a command id, fresh ids: ids derived from content would make two
            // clients' identical commands look like one retried append, and the second
            // would "succeed" as a duplicate without taking effect.
            let new_events = events
                .iter()
                .enumerate()
                .map(|(index, event)| {
                    let event_id = match command_id {
                        Some(command_id) => command_event_id(command_id, &stream_id, index),
                        None => Uuid::now_v7(),
                    };
                    encode(event).map(|(event_type, payload)| {
                        let schema_version = A::schema_version(&event_type);
                        NewEvent::new(event_type, payload)
                            .with_schema_version(schema_version)
                            .with_id(event_id)
                            .with_metadata(metadata.clone())
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(CommandError::Encode)?;
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let request = AppendRequest::new(stream_id.clone(), expected, new_events);
            match self.store.append(request).await {
                Ok(outcome) => {
                    return Ok(CommandOutcome {
                        stream_id,
                        stream_version: Some(outcome.stream_version),
                        duplicate: outcome.all_duplicates(),
                        append: Some(outcome),
                        attempts: attempt,
                    })
                }
                Err(StoreError::WrongExpectedVersion { .. }) if attempt < self.max_attempts => {
                    tracing::debug!(stream_id, attempt, "stream moved under a command; retrying");
                    metrics::counter!("tidemark_command_retries_total").increment(1);
                    // Writers that collided would collide again in lockstep: spread them.
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
                // The first execution of this command committed after this one loaded the
                // stream and decided differently: the next load finds its events.
                Err(StoreError::EventIdConflict { .. })
                    if command_id.is_some() && attempt < self.max_attempts =>
                {
                    tracing::debug!(
                        stream_id,
                        attempt,
                        "a command's earlier execution committed meanwhile; reloading"
                    );
                }
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
    }
}

/// A random pause in `[0, 2^attempt ms]` (full jitter), at most 64 ms.
fn retry_pause(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling_ms = 1u64 << attempt.min(6);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    std::time::Duration::from_micros(random % (ceiling_ms * 1000 + 1))
}

/// Splits an externally tagged enum value into (event type, payload object).
pub fn encode<E: Serialize>(event: &E) -> Result<(String, Value), String> {
    match serde_json::to_value(event).map_err(|e| e.to_string())? {
        Value::String(event_type) => Ok((event_type, Value::Object(Default::default()))),
        Value::Object(map) if map.len() == 1 => {
            let Some((event_type, payload)) = map.into_iter().next() else {
                return Err("an event serialized to an empty object".into());
            };
            match payload {
                Value::Object(_) => Ok((event_type, payload)),
                other => Err(format!(
                    "event {event_type} serialized to {other}, not an object; use a struct variant"
                )),
            }
        }
        other => Err(format!(
            "an event serialized to {other}; events must be an enum in serde's default representation"
        )),
    }
}

/// Rebuilds an externally tagged enum value from (event type, payload).
pub fn decode<E: DeserializeOwned>(event_type: &str, payload: Value) -> Result<E, String> {
    let empty = payload.as_object().is_some_and(|m| m.is_empty());
    let mut tagged = serde_json::Map::new();
    tagged.insert(event_type.to_string(), payload);
    match serde_json::from_value(Value::Object(tagged)) {
        Ok(event) => Ok(event),
        // A unit variant is stored as an empty object but deserializes from a bare string.
        Err(_) if empty => {
            serde_json::from_value(Value::String(event_type.to_string())).map_err(|e| e.to_string())
        }
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Opened { owner: String },
        Closed,
    }

    #[test]
    fn a_commands_events_carry_correlation_and_causation_ids() {
        let command_id = Uuid::now_v7();
        // Given ids win; the command id stands in for missing ones.
        let given = CommandOptions::new()
            .command_id(Some(command_id))
            .correlation_id("request-7")
            .causation_id("event-3")
            .event_metadata();
        assert_eq!(
            given,
            json!({ "correlationId": "request-7", "causationId": "event-3" })
        );
        let from_command = CommandOptions::new()
            .command_id(Some(command_id))
            .event_metadata();
        assert_eq!(
            from_command,
            json!({ "correlationId": command_id.to_string(), "causationId": command_id.to_string() })
        );
        // The request's own id stands in only without a command id.
        let request = CommandOptions::new().request_correlation_id("req-1");
        assert_eq!(request.clone().event_metadata()[CORRELATION_ID], "req-1");
        assert_eq!(
            request.command_id(Some(command_id)).event_metadata()[CORRELATION_ID],
            command_id.to_string()
        );
        // Without any: a fresh correlation id per command, no causation id.
        let fresh = CommandOptions::new().event_metadata();
        let first = fresh[CORRELATION_ID].as_str().expect("a correlation id");
        assert!(Uuid::parse_str(first).is_ok(), "{fresh}");
        assert!(fresh.get(CAUSATION_ID).is_none(), "{fresh}");
        assert_ne!(
            CommandOptions::new().event_metadata()[CORRELATION_ID],
            fresh[CORRELATION_ID]
        );
        // Ids already in the metadata are kept, other fields too.
        let kept = CommandOptions::new()
            .metadata(json!({ "actor": "ann", "correlationId": "upstream" }))
            .correlation_id("request-7")
            .event_metadata();
        assert_eq!(kept, json!({ "actor": "ann", "correlationId": "upstream" }));
    }

    #[test]
    fn events_round_trip_through_type_and_payload() {
        let opened = Ev::Opened {
            owner: "ann".into(),
        };
        let (t, p) = encode(&opened).unwrap();
        assert_eq!((t.as_str(), &p), ("Opened", &json!({"owner": "ann"})));
        assert_eq!(decode::<Ev>(&t, p).unwrap(), opened);
        let (t, p) = encode(&Ev::Closed).unwrap();
        assert_eq!((t.as_str(), &p), ("Closed", &json!({})));
        assert_eq!(decode::<Ev>(&t, p).unwrap(), Ev::Closed);
        assert!(decode::<Ev>("Unknown", json!({})).is_err());
    }
}
