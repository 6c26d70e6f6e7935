//! Identity and dedup (docs/design.md §5): retries with the same ids are idempotent and report the
//! originals; a reused id with other content is `EventIdConflict`; blind retries of
//! `Exact`/`NoStream` appends without ids are idempotent; content dedup stores identical
//! events once; and without ids or dedup, equal events are simply both stored.

use crate::common;

use common::{append_ok, event, open_default, read_all, request};
use serde_json::json;
use tidemark_store::{AppendRequest, Direction, ExpectedVersion, NewEvent, StoreError};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

#[tokio::test]
async fn retrying_an_append_with_the_same_client_ids_stores_one_copy_and_reports_the_originals() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    append_ok(&store, "other-1", ExpectedVersion::Any, vec![event("X", 0)]).await;
    let events: Vec<NewEvent> = (0..3)
        .map(|n| event("Deposited", n).with_id(Uuid::new_v4()))
        .collect();

    let original = append_ok(&store, "acct-1", ExpectedVersion::NoStream, events.clone()).await;
    assert!(original.events.iter().all(|e| !e.duplicate));

    // The same append again, then again after the stream moved on: the expectation
    // (NoStream) no longer holds, but the events are already stored, so it is a success.
    let retry = append_ok(&store, "acct-1", ExpectedVersion::NoStream, events.clone()).await;
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::Any,
        vec![event("Deposited", 9)],
    )
    .await;
    let late_retry = append_ok(&store, "acct-1", ExpectedVersion::NoStream, events.clone()).await;

    for outcome in [&retry, &late_retry] {
        assert!(
            outcome.all_duplicates(),
            "a retry reports duplicates: {outcome:?}"
        );
        assert_eq!(outcome.events.len(), original.events.len());
        for (again, first) in outcome.events.iter().zip(&original.events) {
            assert_eq!(again.event_id, first.event_id);
            assert_eq!(again.position, first.position, "the original position");
            assert_eq!(
                again.stream_version, first.stream_version,
                "the original version"
            );
        }
    }
    let log = read_all(&store).await;
    assert_eq!(log.len(), 1 + 3 + 1, "the retries stored nothing");
    for new_event in &events {
        let id = new_event.event_id.expect("the test gave ids");
        assert_eq!(
            log.iter().filter(|e| e.event_id == id).count(),
            1,
            "event {id} is stored exactly once"
        );
    }
}

#[tokio::test]
async fn reusing_an_event_id_for_different_content_is_an_event_id_conflict_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let id = Uuid::new_v4();
    let first = append_ok(
        &store,
        "acct-1",
        ExpectedVersion::Any,
        vec![event("Deposited", 1).with_id(id)],
    )
    .await;
    let before = read_all(&store).await;

    let cases = [
        // Other payload, same stream.
        ("acct-1", NewEvent::new("Deposited", json!({ "n": 2 }))),
        // Other type.
        ("acct-1", NewEvent::new("Withdrawn", json!({ "n": 1 }))),
        // Same event, other stream.
        ("acct-2", NewEvent::new("Deposited", json!({ "n": 1 }))),
        // Other idempotency key in the metadata.
        (
            "acct-1",
            event("Deposited", 1).with_metadata(json!({ "idempotency_key": "k" })),
        ),
    ];
    for (stream, reused) in cases {
        let error = store
            .append(request(
                stream,
                ExpectedVersion::Any,
                vec![reused.with_id(id)],
            ))
            .await
            .expect_err("a reused id with other content must be refused");
        match error {
            StoreError::EventIdConflict {
                event_id,
                existing_position,
            } => {
                assert_eq!(event_id, id);
                assert_eq!(existing_position, first.events[0].position);
            }
            other => panic!("expected EventIdConflict, got {other:?}"),
        }
    }
    assert_eq!(read_all(&store).await, before, "conflicts write nothing");
}

#[tokio::test]
async fn an_append_mixing_a_stored_id_with_new_events_is_a_conflict_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let stored = event("Deposited", 1).with_id(Uuid::new_v4());
    append_ok(&store, "acct-1", ExpectedVersion::Any, vec![stored.clone()]).await;
    let before = read_all(&store).await;

    // The stored event (same content) next to a new one: the id was reused by another
    // append, so neither is written.
    let error = store
        .append(request(
            "acct-1",
            ExpectedVersion::Any,
            vec![event("Deposited", 2).with_id(Uuid::new_v4()), stored],
        ))
        .await
        .expect_err("an append that partly repeats another must be refused");
    assert!(
        matches!(error, StoreError::EventIdConflict { .. }),
        "expected EventIdConflict, got {error:?}"
    );
    assert_eq!(read_all(&store).await, before);
}

#[tokio::test]
async fn a_blind_retry_of_an_exact_append_without_ids_is_idempotent() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0)],
    )
    .await;
    let attempt = || {
        request(
            "acct-1",
            ExpectedVersion::Exact(0),
            vec![event("Deposited", 1), event("Deposited", 2)],
        )
    };

    let first = store.append(attempt()).await.expect("the first attempt");
    assert!(first.events.iter().all(|e| !e.duplicate));
    // The client timed out and sends the very same request again.
    let retry = store
        .append(attempt())
        .await
        .expect("the blind retry succeeds");
    assert!(retry.all_duplicates(), "the retry is recognised: {retry:?}");
    assert_eq!(
        retry
            .events
            .iter()
            .map(|e| (e.event_id, e.position, e.stream_version))
            .collect::<Vec<_>>(),
        first
            .events
            .iter()
            .map(|e| (e.event_id, e.position, e.stream_version))
            .collect::<Vec<_>>(),
        "the retry reports the original ids, positions and versions"
    );
    assert_eq!(retry.stream_version, 2);
    assert_eq!(read_all(&store).await.len(), 3, "one copy of each event");

    // Other content at the same expected version is a real conflict, not a duplicate.
    let error = store
        .append(request(
            "acct-1",
            ExpectedVersion::Exact(0),
            vec![event("Deposited", 7)],
        ))
        .await
        .expect_err("other content at a stale version");
    assert!(
        matches!(
            error,
            StoreError::WrongExpectedVersion {
                actual: Some(2),
                ..
            }
        ),
        "expected WrongExpectedVersion at 2, got {error:?}"
    );
}

#[tokio::test]
async fn a_blind_retry_of_a_no_stream_append_without_ids_is_idempotent() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let attempt = || {
        request(
            "acct-1",
            ExpectedVersion::NoStream,
            vec![event("Opened", 0)],
        )
    };
    let first = store.append(attempt()).await.expect("the first attempt");
    let retry = store
        .append(attempt())
        .await
        .expect("the blind retry succeeds");
    assert!(retry.all_duplicates());
    assert_eq!(retry.events[0].position, first.events[0].position);
    assert_eq!(read_all(&store).await.len(), 1);
}

#[tokio::test]
async fn concurrent_retries_with_the_same_ids_store_one_copy() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let events: Vec<NewEvent> = (0..2)
        .map(|n| event("Deposited", n).with_id(Uuid::new_v4()))
        .collect();
    let attempts: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            let events = events.clone();
            tokio::spawn(async move {
                store
                    .append(request("acct-1", ExpectedVersion::Any, events))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for attempt in attempts {
        outcomes.push(
            attempt
                .await
                .expect("an append task panicked")
                .expect("every attempt succeeds"),
        );
    }
    let writers: Vec<_> = outcomes.iter().filter(|o| !o.all_duplicates()).collect();
    assert_eq!(writers.len(), 1, "exactly one attempt writes: {outcomes:?}");
    for outcome in &outcomes {
        assert_eq!(outcome.events, {
            let mut original = writers[0].events.clone();
            for e in &mut original {
                e.duplicate = outcome.all_duplicates();
            }
            original
        });
    }
    assert_eq!(read_all(&store).await.len(), 2, "one copy of each event");
}

#[tokio::test]
async fn content_dedup_stores_an_identical_event_once() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    let dedup = |stream: &str, events: Vec<NewEvent>| {
        AppendRequest::new(stream, ExpectedVersion::Any, events).with_content_dedup(true)
    };
    let first = store
        .append(dedup(
            "acct-1",
            vec![NewEvent::new(
                "Deposited",
                json!({ "amount": 5, "currency": "EUR" }),
            )],
        ))
        .await
        .expect("the first copy");
    assert!(!first.all_duplicates());

    // The same content (keys in another order, other non-key metadata): a duplicate that
    // points at the original.
    let again = store
        .append(dedup(
            "acct-1",
            vec![
                NewEvent::new("Deposited", json!({ "currency": "EUR", "amount": 5 }))
                    .with_metadata(json!({ "actor": "someone else" })),
            ],
        ))
        .await
        .expect("the identical event");
    assert!(
        again.all_duplicates(),
        "identical content is a duplicate: {again:?}"
    );
    assert_eq!(again.events[0].position, first.events[0].position);
    assert_eq!(again.events[0].event_id, first.events[0].event_id);
    assert_eq!(again.events[0].stream_version, 0);

    // Identical copies inside one append, next to a new event, are stored once too.
    let mixed = store
        .append(dedup(
            "acct-1",
            vec![
                event("Deposited", 6),
                event("Deposited", 6),
                NewEvent::new("Deposited", json!({ "amount": 5, "currency": "EUR" })),
            ],
        ))
        .await
        .expect("a mixed append");
    assert_eq!(
        mixed
            .events
            .iter()
            .map(|e| (e.duplicate, e.stream_version))
            .collect::<Vec<_>>(),
        vec![(false, 1), (true, 1), (true, 0)]
    );
    assert_eq!(mixed.events[0].position, mixed.events[1].position);

    // Dedup is per stream and respects the idempotency key.
    store
        .append(dedup(
            "acct-2",
            vec![NewEvent::new(
                "Deposited",
                json!({ "amount": 5, "currency": "EUR" }),
            )],
        ))
        .await
        .expect("the same content in another stream");
    let keyed = store
        .append(dedup(
            "acct-1",
            vec![
                NewEvent::new("Deposited", json!({ "amount": 5, "currency": "EUR" }))
                    .with_metadata(json!({ "idempotency_key": "second deposit" })),
            ],
        ))
        .await
        .expect("same payload under another idempotency key");
    assert!(
        !keyed.all_duplicates(),
        "another idempotency key is another event"
    );

    let acct1 = store
        .read_stream("acct-1", None, Direction::Forward, 100)
        .await
        .expect("reading acct-1");
    assert_eq!(acct1.len(), 3, "EUR 5, 6, and the keyed EUR 5: {acct1:?}");
    assert_eq!(read_all(&store).await.len(), 4);
}

#[tokio::test]
async fn equal_events_appended_with_any_and_no_ids_are_all_stored() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    // Two deposits of the same amount are two deposits: without ids and without content
    // dedup, nothing may be merged.
    let a = append_ok(
        &store,
        "acct-1",
        ExpectedVersion::Any,
        vec![event("Deposited", 5)],
    )
    .await;
    let b = append_ok(
        &store,
        "acct-1",
        ExpectedVersion::Any,
        vec![event("Deposited", 5)],
    )
    .await;
    let c = append_ok(
        &store,
        "acct-1",
        ExpectedVersion::Any,
        vec![event("Deposited", 5), event("Deposited", 5)],
    )
    .await;
    for outcome in [&a, &b, &c] {
        assert!(outcome.events.iter().all(|e| !e.duplicate));
    }
    let stored = read_all(&store).await;
    assert_eq!(stored.len(), 4);
    let ids: std::collections::HashSet<_> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 4, "each copy got its own id");
    assert!(
        stored
            .windows(2)
            .all(|w| w[0].content_hash == w[1].content_hash),
        "they are identical in content"
    );
}
