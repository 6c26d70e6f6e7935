//! Keyed grouping: [`KeySource`] says what an event's group key is, and [`key_partition`]
//! maps a key to a partition with the store's own hash so an engine can send every event of
//! a key to the same lane.

use super::field::FieldPath;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use tidemark_store::RecordedEvent;

/// A key computed by application code; `None` means the event has no key.
pub type KeyFn = Arc<dyn Fn(&RecordedEvent) -> Option<String> + Send + Sync>;

/// Where an event's group key comes from. Each key has its own windows.
#[derive(Clone)]
pub enum KeySource {
    /// No grouping: every event has the key `""`.
    Global,
    /// A payload field. Strings are used as they are; numbers and booleans by their JSON text
    /// (so `"42"` and `42` are the same key).
    Payload(FieldPath),
    /// A metadata field, read like a payload field.
    Metadata(FieldPath),
    /// The event's stream id: one group per stream (per aggregate).
    StreamId,
    /// Application code.
    Custom(KeyFn),
}

impl KeySource {
    /// A key from a function of the event.
    pub fn custom(f: impl Fn(&RecordedEvent) -> Option<String> + Send + Sync + 'static) -> Self {
        KeySource::Custom(Arc::new(f))
    }

    /// The group key of `event`.
    pub fn key_of(&self, event: &RecordedEvent) -> Result<String, KeyError> {
        match self {
            KeySource::Global => Ok(String::new()),
            KeySource::StreamId => Ok(event.stream_id.clone()),
            KeySource::Payload(path) => key_from_value(path.lookup(&event.payload), self),
            KeySource::Metadata(path) => key_from_value(path.lookup(&event.metadata), self),
            KeySource::Custom(f) => f(event).ok_or_else(|| KeyError::Missing {
                from: self.to_string(),
            }),
        }
    }
}

fn key_from_value(value: Option<&Value>, source: &KeySource) -> Result<String, KeyError> {
    match value {
        None | Some(Value::Null) => Err(KeyError::Missing {
            from: source.to_string(),
        }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(v) => Err(KeyError::Unusable {
            from: source.to_string(),
            value: v.to_string(),
        }),
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Global => f.write_str("no key"),
            KeySource::Payload(path) => write!(f, "payload field '{path}'"),
            KeySource::Metadata(path) => write!(f, "metadata field '{path}'"),
            KeySource::StreamId => f.write_str("stream id"),
            KeySource::Custom(_) => f.write_str("custom key function"),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySource({self})")
    }
}

/// Why an event has no usable key. The lane parks such events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the event has no key: its {from} is absent or null")]
    Missing { from: String },
    #[error("the event's {from} is {value}; a key must be a string, number or boolean")]
    Unusable { from: String, value: String },
}

/// The partition (of `partitions`) that owns `key`: the store's stream hash
/// (`tidemark_store::hashing::partition_of`) applied to the key, so with
/// [`KeySource::StreamId`] a key's partition is its stream's partition.
pub fn key_partition(key: &str, partitions: u16) -> i16 {
    tidemark_store::hashing::partition_of(key, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windowing::time::recorded_event;
    use serde_json::json;

    #[test]
    fn keys_from_every_source() {
        let e = recorded_event(
            json!({"customer": "c-7", "n": 42, "flag": true, "obj": {"a": 1}, "nil": null}),
            json!({"tenant": "acme"}),
        );
        let key = |s: KeySource| s.key_of(&e);
        assert_eq!(key(KeySource::Global), Ok(String::new()));
        assert_eq!(key(KeySource::StreamId), Ok("order-1".into()));
        assert_eq!(
            key(KeySource::Payload(FieldPath::field("customer"))),
            Ok("c-7".into())
        );
        assert_eq!(
            key(KeySource::Payload(FieldPath::field("n"))),
            Ok("42".into())
        );
        assert_eq!(
            key(KeySource::Payload(FieldPath::field("flag"))),
            Ok("true".into())
        );
        assert_eq!(
            key(KeySource::Metadata(FieldPath::field("tenant"))),
            Ok("acme".into())
        );
        assert_eq!(
            key(KeySource::custom(|e| Some(e.event_type.to_lowercase()))),
            Ok("placed".into())
        );
        assert!(matches!(
            key(KeySource::Payload(FieldPath::field("nil"))),
            Err(KeyError::Missing { .. })
        ));
        assert!(matches!(
            key(KeySource::Payload(FieldPath::field("obj"))),
            Err(KeyError::Unusable { .. })
        ));
        assert!(matches!(
            key(KeySource::custom(|_| None)),
            Err(KeyError::Missing { .. })
        ));
    }

    #[test]
    fn key_partitions_are_stable() {
        // Part of the stored data's meaning: a key must stay on its lane across releases.
        assert_eq!(key_partition("customer-7", 16), 0);
        assert_eq!(key_partition("account-1", 16), 8);
        assert_eq!(key_partition("account-1", 7), 2);
        assert_eq!(key_partition("", 16), 15);
        assert_eq!(key_partition("anything", 1), 0);
        // With the stream id as key, a key's partition is its stream's.
        let mut event = recorded_event(json!({}), json!({}));
        for i in 0..200 {
            event.stream_id = format!("account-{i}");
            event.partition = tidemark_store::hashing::partition_of(&event.stream_id, 16);
            let key = KeySource::StreamId.key_of(&event).unwrap();
            assert_eq!(key_partition(&key, 16), event.partition);
            assert!((0..7).contains(&key_partition(&key, 7)));
        }
    }
}
