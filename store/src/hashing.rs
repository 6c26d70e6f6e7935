//! Content hashes, derived event ids (of blind retries and of identified commands) and
//! partition assignment.
//!
//! All of them are part of the stored data's meaning and must never change for an existing
//! store: the canonical encoding below is the contract.

use crate::model::{NewEvent, StreamVersion};
use serde_json::Value;
use uuid::Uuid;

/// Writes `value` as JSON with object keys sorted (bytewise), no whitespace.
/// Numbers and strings use serde_json's own encoding.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            write_list(out, b'{', b'}', keys, |key, out| {
                write_json_string(key, out);
                out.push(b':');
                canonical_json(&map[key.as_str()], out);
            });
        }
        Value::Array(items) => write_list(out, b'[', b']', items, canonical_json),
        Value::String(s) => write_json_string(s, out),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Writes `items` comma-separated between `open` and `close`: objects and arrays share
/// the one separator rule, so the encoding cannot drift between them.
fn write_list<T>(
    out: &mut Vec<u8>,
    open: u8,
    close: u8,
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(T, &mut Vec<u8>),
) {
    out.push(open);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(item, out);
    }
    out.push(close);
}

fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; reuse it.
    out.extend_from_slice(Value::String(s.to_owned()).to_string().as_bytes());
}

/// Appends a length-prefixed field so that field boundaries are unambiguous.
fn field(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// blake3 over (stream id, event type, canonical payload, metadata `idempotency_key`).
pub fn content_hash(stream_id: &str, event: &NewEvent) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tidemark.content.v1");
    field(&mut hasher, stream_id.as_bytes());
    field(&mut hasher, event.event_type.as_bytes());
    let mut payload = Vec::with_capacity(256);
    canonical_json(&event.payload, &mut payload);
    field(&mut hasher, &payload);
    match event.metadata.get("idempotency_key") {
        Some(key) => {
            let mut buf = Vec::new();
            canonical_json(key, &mut buf);
            field(&mut hasher, &buf);
        }
        None => field(&mut hasher, b""),
    }
    *hasher.finalize().as_bytes()
}

/// The id of an event appended without one under an `Exact`/`NoStream` expectation:
/// the same append retried blindly derives the same id and is recognised as a duplicate.
pub fn derived_event_id(stream_id: &str, version: StreamVersion, content_hash: &[u8; 32]) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tidemark.event-id.v1");
    field(&mut hasher, stream_id.as_bytes());
    hasher.update(&version.to_le_bytes());
    hasher.update(content_hash);
    derived_uuid(&hasher)
}

/// The id of event `index` that a command identified by `command_id` writes to `stream_id`:
/// a retried command derives the same ids, so its append is recognised as a duplicate
/// instead of being written a second time. The stream is part of the key so that one
/// command id may name a command spanning several aggregates.
pub fn command_event_id(command_id: Uuid, stream_id: &str, index: usize) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tidemark.command-event-id.v1");
    hasher.update(command_id.as_bytes());
    field(&mut hasher, stream_id.as_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    derived_uuid(&hasher)
}

/// The first 16 bytes of `hasher`'s digest, marked as a version-8 (custom) RFC 9562 UUID.
fn derived_uuid(hasher: &blake3::Hasher) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// `partition = first 8 bytes of blake3(stream_id) as little-endian u64, mod partitions`.
pub fn partition_of(stream_id: &str, partitions: u16) -> i16 {
    let hash = blake3::hash(stream_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(partitions.max(1))) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let mut a = Vec::new();
        canonical_json(
            &json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}}),
            &mut a,
        );
        assert_eq!(
            String::from_utf8(a).unwrap(),
            r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#
        );
    }

    #[test]
    fn content_hash_ignores_key_order_but_not_values() {
        let e1 = NewEvent::new("Deposited", json!({"amount": 5, "currency": "EUR"}));
        let e2 = NewEvent::new("Deposited", json!({"currency": "EUR", "amount": 5}));
        let e3 = NewEvent::new("Deposited", json!({"currency": "EUR", "amount": 6}));
        assert_eq!(content_hash("acct-1", &e1), content_hash("acct-1", &e2));
        assert_ne!(content_hash("acct-1", &e1), content_hash("acct-1", &e3));
        assert_ne!(content_hash("acct-1", &e1), content_hash("acct-2", &e1));
    }

    #[test]
    fn idempotency_key_in_metadata_changes_the_hash() {
        let e1 = NewEvent::new("Deposited", json!({"amount": 5}));
        let e2 = e1
            .clone()
            .with_metadata(json!({"idempotency_key": "k1", "actor": "x"}));
        let e3 = e1.clone().with_metadata(json!({"actor": "y"}));
        assert_ne!(content_hash("a", &e1), content_hash("a", &e2));
        assert_eq!(content_hash("a", &e1), content_hash("a", &e3));
    }

    #[test]
    fn command_event_ids_depend_on_command_stream_and_index_only() {
        let command = Uuid::from_u128(7);
        let id = command_event_id(command, "account-1", 0);
        assert_eq!(id, command_event_id(command, "account-1", 0));
        assert_ne!(id, command_event_id(command, "account-1", 1));
        assert_ne!(id, command_event_id(command, "account-2", 0));
        assert_ne!(id, command_event_id(Uuid::from_u128(8), "account-1", 0));
        // Part of the stored data's meaning: a retry after an upgrade must derive the same id.
        assert_eq!(id.to_string(), "66a04ca5-608b-8c90-9635-ae6913494cfc");
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        // These values are part of the on-disk contract: changing them would move streams.
        assert_eq!(partition_of("account-1", 16), partition_of("account-1", 16));
        for i in 0..1000 {
            let p = partition_of(&format!("s-{i}"), 16);
            assert!((0..16).contains(&p));
        }
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn derived_ids_depend_on_version() {
        let h = [7u8; 32];
        assert_eq!(derived_event_id("s", 3, &h), derived_event_id("s", 3, &h));
        assert_ne!(derived_event_id("s", 3, &h), derived_event_id("s", 4, &h));
    }
}
