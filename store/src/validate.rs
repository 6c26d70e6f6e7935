//! Input validation: everything the store refuses before it touches the database.

use crate::config::Limits;
use crate::error::ValidationError;
use crate::model::{AppendRequest, ExpectedVersion};
use serde_json::Value;
use std::collections::HashSet;

/// Checks a stream id: non-empty, within the limit, no control characters.
pub fn stream_id(id: &str, limits: &Limits) -> Result<(), ValidationError> {
    text("stream id", id, limits.max_stream_id_bytes)
}

/// Checks an event type: non-empty, within the limit, no control characters.
pub fn event_type(name: &str, limits: &Limits) -> Result<(), ValidationError> {
    text("event type", name, limits.max_event_type_bytes)
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if value.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some((index, _)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ValidationError::ControlCharacter { field, index });
    }
    Ok(())
}

/// A JSON value's kind as refusals name it ("an array"). Public so that other crates'
/// refusals about JSON (the schema registry's Avro encoding) name kinds the same way.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn json_object(field: &'static str, event_index: usize, v: &Value) -> Result<(), ValidationError> {
    if !v.is_object() {
        return Err(ValidationError::NotAnObject {
            field,
            event_index,
            found: json_kind(v),
        });
    }
    if contains_nul(v) {
        return Err(ValidationError::NulInJson { field, event_index });
    }
    Ok(())
}

/// Checks a whole append request. Returns the serialized size of each event
/// (payload + metadata) so callers need not serialize twice.
pub fn append(request: &AppendRequest, limits: &Limits) -> Result<(), ValidationError> {
    stream_id(&request.stream_id, limits)?;
    if let ExpectedVersion::Exact(v) = request.expected {
        if v < 0 {
            return Err(ValidationError::NegativeVersion(v));
        }
    }
    if request.events.is_empty() {
        return Err(ValidationError::NoEvents);
    }
    if request.events.len() > limits.max_events_per_append {
        return Err(ValidationError::TooManyEvents {
            count: request.events.len(),
            max: limits.max_events_per_append,
        });
    }
    let mut ids = HashSet::new();
    for (index, event) in request.events.iter().enumerate() {
        event_type(&event.event_type, limits)?;
        json_object("payload", index, &event.payload)?;
        json_object("metadata", index, &event.metadata)?;
        let size = json_size(&event.payload) + json_size(&event.metadata);
        if size > limits.max_event_bytes {
            return Err(ValidationError::PayloadTooLarge {
                event_index: index,
                size,
                max: limits.max_event_bytes,
            });
        }
        if let Some(id) = event.event_id {
            if !ids.insert(id) {
                return Err(ValidationError::DuplicateIdInAppend { event_id: id });
            }
        }
    }
    Ok(())
}

/// Serialized JSON size without allocating the string.
fn json_size(v: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewEvent;
    use serde_json::json;

    fn req(stream: &str, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest::new(stream, ExpectedVersion::Any, events)
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let limits = Limits {
            max_event_bytes: 64,
            max_events_per_append: 3,
            ..Limits::default()
        };
        let ok = || NewEvent::new("T", json!({"a": 1}));
        assert!(append(&req("s-1", vec![ok()]), &limits).is_ok());
        type Check = fn(&ValidationError) -> bool;
        let cases: Vec<(AppendRequest, Check)> = vec![
            (req("", vec![ok()]), |e| {
                matches!(e, ValidationError::Empty { field: "stream id" })
            }),
            (req(&"x".repeat(201), vec![ok()]), |e| {
                matches!(e, ValidationError::TooLong { .. })
            }),
            (req("a\nb", vec![ok()]), |e| {
                matches!(e, ValidationError::ControlCharacter { index: 1, .. })
            }),
            (req("s", vec![]), |e| matches!(e, ValidationError::NoEvents)),
            (req("s", vec![ok(), ok(), ok(), ok()]), |e| {
                matches!(e, ValidationError::TooManyEvents { count: 4, max: 3 })
            }),
            (req("s", vec![NewEvent::new("", json!({}))]), |e| {
                matches!(
                    e,
                    ValidationError::Empty {
                        field: "event type"
                    }
                )
            }),
            (req("s", vec![NewEvent::new("T", json!([1]))]), |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        found: "an array",
                        ..
                    }
                )
            }),
            (
                req("s", vec![NewEvent::new("T", json!({"a": "\u{0}"}))]),
                |e| matches!(e, ValidationError::NulInJson { .. }),
            ),
            (
                req("s", vec![NewEvent::new("T", json!({"a": "x".repeat(100)}))]),
                |e| matches!(e, ValidationError::PayloadTooLarge { .. }),
            ),
            (req("s", vec![ok().with_metadata(json!("m"))]), |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "metadata",
                        ..
                    }
                )
            }),
        ];
        for (request, expected) in cases {
            let err = append(&request, &limits).expect_err("must be rejected");
            assert!(expected(&err), "unexpected error {err:?} for {request:?}");
        }
    }
}
