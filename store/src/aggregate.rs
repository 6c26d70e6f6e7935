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
//! Each event written gets a fresh id, so identical commands from two clients are two
//! commands, never one deduplicated append. A client that retries a command after a timeout
//! may therefore apply it twice; commands that must be idempotent carry their own id and
//! the aggregate refuses one it has seen.
//!
//! ```ignore
//! let bus = CommandBus::new(store.clone());
//! let outcome = bus.execute::<Account>("42", &AccountCommand::Deposit { amount: 100 }).await?;
//! ```

use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest, ExpectedVersion, NewEvent, StreamVersion};
use crate::read::Direction;
use crate::store::EventStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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
    /// does not know). Nothing was written; the stream needs an upcaster or a code fix.
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
        let stream_id = A::stream_id(id);
        let mut state = A::default();
        let mut version = None;
        loop {
            let from = version.map_or(0, |v: StreamVersion| v + 1);
            let events = self
                .store
                .read_stream(&stream_id, Some(from), Direction::Forward, self.page_size)
                .await?;
            let short = events.len() < self.page_size;
            for recorded in events {
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
                return Ok((state, version));
            }
        }
    }

    /// Runs `command` on the aggregate `id` with empty event metadata.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.execute_with_metadata::<A>(id, command, Value::Object(Default::default()))
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
        let stream_id = A::stream_id(id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (state, version) = self.load::<A>(id).await?;
            let events = state.handle(command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(CommandOutcome {
                    stream_id,
                    stream_version: version,
                    append: None,
                    attempts: attempt,
                });
            }
            // Fresh ids: ids derived from content would make two clients' identical
            // commands look like one retried append, and the second would "succeed" as a
            // duplicate without taking effect.
            let new_events = events
                .iter()
                .map(|event| {
                    encode(event).map(|(event_type, payload)| {
                        NewEvent::new(event_type, payload)
                            .with_id(uuid::Uuid::now_v7())
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
