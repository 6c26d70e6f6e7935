//! Bad input (docs/design.md §2 "Limits", §6 and §13): every kind of invalid append is
//! refused with a typed `StoreError::Invalid(ValidationError::..)`, and the log is unchanged.
//! Values at each limit are accepted, one past it refused.

use crate::common;

use common::{append_ok, event, open_store, read_all};
use serde_json::{json, Value};
use tidemark_store::{
    AppendRequest, Direction, ExpectedVersion, Limits, NewEvent, StoreConfig, StoreError,
    ValidationError,
};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

const MAX_STREAM_ID: usize = 40;
const MAX_EVENT_TYPE: usize = 30;
const MAX_EVENT_BYTES: usize = 256;
const MAX_EVENTS: usize = 5;

fn limits() -> Limits {
    Limits {
        max_stream_id_bytes: MAX_STREAM_ID,
        max_event_type_bytes: MAX_EVENT_TYPE,
        max_event_bytes: MAX_EVENT_BYTES,
        max_events_per_append: MAX_EVENTS,
    }
}

fn any(stream: &str, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(stream, ExpectedVersion::Any, events)
}

fn ok_event() -> NewEvent {
    event("Ok", 1)
}

/// An event whose payload `{"s":"xx…"}` plus metadata `{}` is exactly `bytes` of JSON.
fn event_of_size(bytes: usize) -> NewEvent {
    // `{"s":""}` is 8 bytes, `{}` is 2.
    NewEvent::new("Sized", json!({ "s": "x".repeat(bytes - 10) }))
}

type Check = fn(&ValidationError) -> bool;

/// Every bad input, with the error it must produce.
fn bad_inputs() -> Vec<(&'static str, AppendRequest, Check)> {
    let id = Uuid::new_v4();
    vec![
        ("empty stream id", any("", vec![ok_event()]), |e| {
            matches!(e, ValidationError::Empty { field: "stream id" })
        }),
        (
            "stream id one byte over the limit",
            any(&"s".repeat(MAX_STREAM_ID + 1), vec![ok_event()]),
            |e| {
                matches!(e, ValidationError::TooLong { field: "stream id", len, max }
                    if *len == MAX_STREAM_ID + 1 && *max == MAX_STREAM_ID)
            },
        ),
        (
            "stream id over the limit in bytes, not characters",
            // 20 characters, 40 + 2 bytes.
            any(&format!("{}ab", "é".repeat(20)), vec![ok_event()]),
            |e| {
                matches!(
                    e,
                    ValidationError::TooLong {
                        field: "stream id",
                        len: 42,
                        ..
                    }
                )
            },
        ),
        (
            "newline in stream id",
            any("acct\n1", vec![ok_event()]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "stream id",
                        index: 4
                    }
                )
            },
        ),
        (
            "NUL in stream id",
            any("acct\u{0}1", vec![ok_event()]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "stream id",
                        ..
                    }
                )
            },
        ),
        (
            "DEL in stream id",
            any("acct\u{7f}", vec![ok_event()]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "stream id",
                        ..
                    }
                )
            },
        ),
        (
            "C1 control in stream id",
            any("acct\u{85}", vec![ok_event()]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "stream id",
                        ..
                    }
                )
            },
        ),
        ("empty event type", any("s-1", vec![event("", 1)]), |e| {
            matches!(
                e,
                ValidationError::Empty {
                    field: "event type"
                }
            )
        }),
        (
            "event type one byte over the limit",
            any("s-1", vec![event(&"T".repeat(MAX_EVENT_TYPE + 1), 1)]),
            |e| {
                matches!(
                    e,
                    ValidationError::TooLong {
                        field: "event type",
                        ..
                    }
                )
            },
        ),
        (
            "tab in event type",
            any("s-1", vec![event("Deposit\ted", 1)]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "event type",
                        index: 7
                    }
                )
            },
        ),
        (
            "control character in the second event's type",
            any("s-1", vec![ok_event(), event("Bad\u{1b}", 1)]),
            |e| {
                matches!(
                    e,
                    ValidationError::ControlCharacter {
                        field: "event type",
                        ..
                    }
                )
            },
        ),
        (
            "array payload",
            any("s-1", vec![NewEvent::new("T", json!([1]))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "payload",
                        event_index: 0,
                        found: "an array"
                    }
                )
            },
        ),
        (
            "string payload",
            any("s-1", vec![NewEvent::new("T", json!("x"))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "payload",
                        found: "a string",
                        ..
                    }
                )
            },
        ),
        (
            "null payload",
            any("s-1", vec![NewEvent::new("T", Value::Null)]),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "payload",
                        found: "null",
                        ..
                    }
                )
            },
        ),
        (
            "number payload",
            any("s-1", vec![NewEvent::new("T", json!(3))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "payload",
                        found: "a number",
                        ..
                    }
                )
            },
        ),
        (
            "array metadata on the third event",
            any(
                "s-1",
                vec![ok_event(), ok_event(), ok_event().with_metadata(json!([]))],
            ),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "metadata",
                        event_index: 2,
                        ..
                    }
                )
            },
        ),
        (
            "boolean metadata",
            any("s-1", vec![ok_event().with_metadata(json!(true))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NotAnObject {
                        field: "metadata",
                        found: "a boolean",
                        ..
                    }
                )
            },
        ),
        (
            "NUL in a payload string",
            any("s-1", vec![NewEvent::new("T", json!({ "a": "x\u{0}y" }))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NulInJson {
                        field: "payload",
                        event_index: 0
                    }
                )
            },
        ),
        (
            "NUL in a payload key",
            any("s-1", vec![NewEvent::new("T", json!({ "a\u{0}": 1 }))]),
            |e| {
                matches!(
                    e,
                    ValidationError::NulInJson {
                        field: "payload",
                        ..
                    }
                )
            },
        ),
        (
            "NUL deep in a payload array",
            any(
                "s-1",
                vec![NewEvent::new("T", json!({ "a": [{ "b": ["\u{0}"] }] }))],
            ),
            |e| {
                matches!(
                    e,
                    ValidationError::NulInJson {
                        field: "payload",
                        ..
                    }
                )
            },
        ),
        (
            "NUL in metadata of the second event",
            any(
                "s-1",
                vec![
                    ok_event(),
                    ok_event().with_metadata(json!({ "actor": "\u{0}" })),
                ],
            ),
            |e| {
                matches!(
                    e,
                    ValidationError::NulInJson {
                        field: "metadata",
                        event_index: 1
                    }
                )
            },
        ),
        (
            "event one byte over the size limit",
            any("s-1", vec![event_of_size(MAX_EVENT_BYTES + 1)]),
            |e| {
                matches!(e, ValidationError::PayloadTooLarge { event_index: 0, size, max }
                    if *size == MAX_EVENT_BYTES + 1 && *max == MAX_EVENT_BYTES)
            },
        ),
        (
            "metadata pushing an event over the size limit",
            any(
                "s-1",
                vec![event_of_size(MAX_EVENT_BYTES).with_metadata(json!({ "a": 1 }))],
            ),
            |e| matches!(e, ValidationError::PayloadTooLarge { .. }),
        ),
        ("zero events", any("s-1", vec![]), |e| {
            matches!(e, ValidationError::NoEvents)
        }),
        (
            "one event over the per-append limit",
            any(
                "s-1",
                (0..=MAX_EVENTS as u64).map(|n| event("T", n)).collect(),
            ),
            |e| {
                matches!(e, ValidationError::TooManyEvents { count, max }
                    if *count == MAX_EVENTS + 1 && *max == MAX_EVENTS)
            },
        ),
        (
            "negative exact version",
            AppendRequest::new("s-1", ExpectedVersion::Exact(-1), vec![ok_event()]),
            |e| matches!(e, ValidationError::NegativeVersion(-1)),
        ),
        (
            "most negative exact version",
            AppendRequest::new("s-1", ExpectedVersion::Exact(i64::MIN), vec![ok_event()]),
            |e| matches!(e, ValidationError::NegativeVersion(i64::MIN)),
        ),
        (
            "the same id twice in one append",
            any(
                "s-1",
                vec![event("T", 1).with_id(id), event("T", 2).with_id(id)],
            ),
            |e| matches!(e, ValidationError::DuplicateIdInAppend { .. }),
        ),
    ]
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_with_a_typed_error_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        limits: limits(),
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;
    append_ok(&store, "s-1", ExpectedVersion::Any, vec![ok_event()]).await;
    let before = read_all(&store).await;

    for (case, request, check) in bad_inputs() {
        let error = store
            .append(request)
            .await
            .expect_err(&format!("{case}: must be refused"));
        match &error {
            StoreError::Invalid(validation) => {
                assert!(check(validation), "{case}: unexpected {validation:?}");
                let kind = match validation {
                    ValidationError::PayloadTooLarge { .. } => "payload_too_large",
                    _ => "bad_input",
                };
                assert_eq!(error.kind(), kind, "{case}: the stable error kind");
                assert!(!error.is_retryable(), "{case}: bad input is not retryable");
            }
            other => panic!("{case}: expected StoreError::Invalid, got {other:?}"),
        }
        assert_eq!(
            read_all(&store).await,
            before,
            "{case}: the log is unchanged"
        );
        assert_eq!(
            store.stream_version("s-1").await.expect("version"),
            Some(0),
            "{case}: the stream is unchanged"
        );
    }
}

#[tokio::test]
async fn inputs_exactly_at_each_limit_are_accepted() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        limits: limits(),
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;

    let longest_stream = "s".repeat(MAX_STREAM_ID);
    append_ok(
        &store,
        &longest_stream,
        ExpectedVersion::NoStream,
        vec![ok_event()],
    )
    .await;
    append_ok(
        &store,
        "s-1",
        ExpectedVersion::Any,
        vec![event(&"T".repeat(MAX_EVENT_TYPE), 1)],
    )
    .await;
    append_ok(
        &store,
        "s-1",
        ExpectedVersion::Any,
        vec![event_of_size(MAX_EVENT_BYTES)],
    )
    .await;
    append_ok(
        &store,
        "s-1",
        ExpectedVersion::Any,
        (0..MAX_EVENTS as u64).map(|n| event("T", n)).collect(),
    )
    .await;
    // Unicode that is not control characters, and an empty object.
    append_ok(
        &store,
        "ß-κατηγορία-😀",
        ExpectedVersion::Any,
        vec![NewEvent::new("Événement", json!({}))],
    )
    .await;

    let log = read_all(&store).await;
    assert_eq!(log.len(), 1 + 1 + 1 + MAX_EVENTS + 1);
    assert_eq!(log[0].stream_id, longest_stream);
    let sized = &log[2];
    assert_eq!(
        serde_json::to_vec(&sized.payload)
            .expect("serializes")
            .len()
            + serde_json::to_vec(&sized.metadata)
                .expect("serializes")
                .len(),
        MAX_EVENT_BYTES
    );
    assert_eq!(log.last().map(|e| e.category()), Some("ß"));
}

#[tokio::test]
async fn reading_a_stream_with_an_invalid_id_is_refused() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        limits: limits(),
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;
    for bad in ["", "a\nb", &"s".repeat(MAX_STREAM_ID + 1)] {
        let error = store
            .read_stream(bad, None, Direction::Forward, 10)
            .await
            .expect_err("an invalid stream id cannot be read");
        assert!(
            matches!(error, StoreError::Invalid(_)),
            "expected Invalid for {bad:?}, got {error:?}"
        );
    }
}
