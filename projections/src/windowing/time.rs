//! Event time: where it is read from ([`EventTimeSource`]), what happens when it is missing
//! ([`MissingTimePolicy`]), and [`event_time`], which reads it from a recorded event.

use super::field::FieldPath;
use super::{TimeMs, MAX_TIME, MIN_TIME};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use tidemark_store::RecordedEvent;

/// Where an event's time is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", content = "path", rename_all = "snake_case")]
pub enum EventTimeSource {
    /// A payload field: an RFC 3339 string or an integer of epoch milliseconds.
    Payload(FieldPath),
    /// A metadata field, in the same formats.
    Metadata(FieldPath),
    /// The time the store committed the event. Always present, never late by more than the
    /// commit order allows; turns event time into ingestion time.
    RecordedAt,
}

impl fmt::Display for EventTimeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventTimeSource::Payload(path) => write!(f, "payload field '{path}'"),
            EventTimeSource::Metadata(path) => write!(f, "metadata field '{path}'"),
            EventTimeSource::RecordedAt => f.write_str("recorded_at"),
        }
    }
}

/// What to do with an event whose time field is absent or `null`. A present but unparseable
/// value is always an error: substituting another time would hide a producer's bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingTimePolicy {
    /// Return [`TimeError::Missing`]; the lane parks the event.
    #[default]
    Park,
    /// Use the event's `recorded_at`.
    UseRecordedAt,
}

/// Why an event has no usable time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("the event has no {from} (absent or null)")]
    Missing { from: EventTimeSource },
    #[error("the {from} is {value}, which is not a time: {reason}")]
    Unparseable {
        from: EventTimeSource,
        value: String,
        reason: String,
    },
    #[error("the {from} is {value}, outside 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z")]
    OutOfRange {
        from: EventTimeSource,
        value: String,
    },
}

/// The event time of `event`, in milliseconds since the epoch.
pub fn event_time(
    event: &RecordedEvent,
    source: &EventTimeSource,
    missing: MissingTimePolicy,
) -> Result<TimeMs, TimeError> {
    let (document, path) = match source {
        EventTimeSource::Payload(path) => (&event.payload, path),
        EventTimeSource::Metadata(path) => (&event.metadata, path),
        EventTimeSource::RecordedAt => return recorded_at(event),
    };
    match path.lookup(document) {
        None | Some(Value::Null) => match missing {
            MissingTimePolicy::Park => Err(TimeError::Missing {
                from: source.clone(),
            }),
            MissingTimePolicy::UseRecordedAt => recorded_at(event),
        },
        Some(value) => parse_time_value(value).map_err(|problem| problem.into_error(source, value)),
    }
}

fn recorded_at(event: &RecordedEvent) -> Result<TimeMs, TimeError> {
    let t = event.recorded_at.timestamp_millis();
    if (MIN_TIME..=MAX_TIME).contains(&t) {
        Ok(t)
    } else {
        Err(TimeError::OutOfRange {
            from: EventTimeSource::RecordedAt,
            value: event.recorded_at.to_rfc3339(),
        })
    }
}

/// What is wrong with a time value, before it is attached to its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeValueProblem {
    #[error("{0}")]
    Unparseable(String),
    #[error("outside 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z")]
    OutOfRange,
}

impl TimeValueProblem {
    fn into_error(self, from: &EventTimeSource, value: &Value) -> TimeError {
        let from = from.clone();
        let value = value.to_string();
        match self {
            TimeValueProblem::Unparseable(reason) => TimeError::Unparseable {
                from,
                value,
                reason,
            },
            TimeValueProblem::OutOfRange => TimeError::OutOfRange { from, value },
        }
    }
}

/// Reads a JSON time: an RFC 3339 string (any offset; sub-milliseconds floored) or an
/// integral number of epoch milliseconds. Numeric strings and fractional numbers are refused
/// (a fraction would make the unit ambiguous: seconds or milliseconds?).
pub fn parse_time_value(value: &Value) -> Result<TimeMs, TimeValueProblem> {
    let t = match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| TimeValueProblem::Unparseable(format!("not RFC 3339 ({e})")))?
            .timestamp_millis(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i
            } else if n.is_u64() {
                return Err(TimeValueProblem::OutOfRange);
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 {
                    return Err(TimeValueProblem::Unparseable(
                        "epoch milliseconds must be an integer".into(),
                    ));
                }
                if !(MIN_TIME as f64..=MAX_TIME as f64).contains(&f) {
                    return Err(TimeValueProblem::OutOfRange);
                }
                f as i64
            }
        }
        other => {
            return Err(TimeValueProblem::Unparseable(format!(
                "a JSON {} is neither an RFC 3339 string nor epoch milliseconds",
                json_kind(other)
            )))
        }
    };
    if (MIN_TIME..=MAX_TIME).contains(&t) {
        Ok(t)
    } else {
        Err(TimeValueProblem::OutOfRange)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
pub(crate) fn recorded_event(payload: Value, metadata: Value) -> RecordedEvent {
    RecordedEvent {
        position: 1,
        stream_id: "order-1".into(),
        stream_version: 0,
        partition: 3,
        event_id: uuid::Uuid::from_u128(1),
        event_type: "Placed".into(),
        schema_version: 1,
        payload,
        metadata,
        content_hash: [0; 32],
        recorded_at: DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .to_utc(),
        encoding: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RECORDED: TimeMs = 1_714_564_800_000;

    fn payload(path: &str) -> EventTimeSource {
        EventTimeSource::Payload(FieldPath::parse(path).unwrap())
    }

    #[test]
    fn rfc3339_strings_with_offsets_and_epoch_millis() {
        let e = recorded_event(
            json!({"at": "2024-05-01T14:00:00.123456+02:00", "ms": 1_714_564_800_123_i64, "f": 5.0}),
            json!({"ts": "1970-01-01T00:00:00Z"}),
        );
        let park = MissingTimePolicy::Park;
        assert_eq!(event_time(&e, &payload("/at"), park), Ok(RECORDED + 123));
        assert_eq!(event_time(&e, &payload("/ms"), park), Ok(RECORDED + 123));
        assert_eq!(event_time(&e, &payload("/f"), park), Ok(5));
        let meta = EventTimeSource::Metadata(FieldPath::field("ts"));
        assert_eq!(event_time(&e, &meta, park), Ok(0));
        assert_eq!(
            event_time(&e, &EventTimeSource::RecordedAt, park),
            Ok(RECORDED)
        );
    }

    #[test]
    fn times_before_the_epoch_floor() {
        let e = recorded_event(json!({"at": "1969-12-31T23:59:59.9995Z"}), json!({}));
        assert_eq!(
            event_time(&e, &payload("/at"), MissingTimePolicy::Park),
            Ok(-1)
        );
    }

    #[test]
    fn missing_times_park_or_fall_back() {
        let e = recorded_event(json!({"at": null}), json!({}));
        for path in ["/at", "/absent"] {
            assert_eq!(
                event_time(&e, &payload(path), MissingTimePolicy::Park),
                Err(TimeError::Missing {
                    from: payload(path)
                })
            );
            assert_eq!(
                event_time(&e, &payload(path), MissingTimePolicy::UseRecordedAt),
                Ok(RECORDED)
            );
        }
    }

    #[test]
    fn bad_values_are_errors_even_with_a_fallback() {
        let e = recorded_event(
            json!({"s": "yesterday", "digits": "1714564800000", "frac": 1.5, "b": true,
                   "far": 253_402_300_800_000_i64, "huge": u64::MAX, "y": "+10000-01-01T00:00:00Z"}),
            json!({}),
        );
        let fallback = MissingTimePolicy::UseRecordedAt;
        for path in ["/s", "/digits", "/frac", "/b", "/y"] {
            let got = event_time(&e, &payload(path), fallback);
            assert!(
                matches!(got, Err(TimeError::Unparseable { .. })),
                "{path}: {got:?}"
            );
        }
        for path in ["/far", "/huge"] {
            let got = event_time(&e, &payload(path), fallback);
            assert!(
                matches!(got, Err(TimeError::OutOfRange { .. })),
                "{path}: {got:?}"
            );
        }
        let message = event_time(&e, &payload("/s"), fallback)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("payload field '/s'") && message.contains("\"yesterday\""),
            "{message}"
        );
    }

    #[test]
    fn sources_round_trip_through_serde() {
        for source in [
            payload("/at"),
            EventTimeSource::Metadata(FieldPath::field("ts")),
            EventTimeSource::RecordedAt,
        ] {
            let text = serde_json::to_string(&source).unwrap();
            assert_eq!(
                serde_json::from_str::<EventTimeSource>(&text).unwrap(),
                source
            );
        }
    }
}
