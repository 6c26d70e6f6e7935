//! The group-commit pipeline (docs/design.md §3 and §6, issue #3): a batch mixing failing
//! and succeeding requests fails only the failing ones and gives the others dense positions;
//! requests for one stream in one batch see each other; a full queue answers `Overloaded`
//! after the deadline without writing; shutdown drains the queue and then refuses appends.
//!
//! To shape batches, a raw connection holds the store head's row lock (which every append
//! transaction takes first): the writer stalls on its current batch while the test queues
//! requests in a known order, then the lock is released and the writer takes them together.
//! That they really shared one transaction is checked through `recorded_at`, which is the
//! transaction's start time.

use crate::common;

use common::{append_ok, open_store, read_all, wait_until, within_deadline, HeadLock, DEADLINE};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;
use tidemark_store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, NewEvent, OverloadReason,
    PipelineConfig, Position, RecordedEvent, StoreConfig, StoreError, StreamVersion,
};
use tidemark_testkit::TestDatabase;
use tokio::task::JoinHandle;
use uuid::Uuid;

type Pending = JoinHandle<Result<AppendOutcome, StoreError>>;

/// A pipeline that puts everything queued into one batch.
fn one_big_batch() -> StoreConfig {
    StoreConfig {
        pipeline: PipelineConfig {
            max_batch_requests: 10_000,
            max_batch_events: 100_000,
            ..PipelineConfig::default()
        },
        ..StoreConfig::default()
    }
}

/// The event request `index` appends: its payload names the request.
fn tagged(index: usize) -> NewEvent {
    NewEvent::new("Tagged", json!({ "request": index }))
}

fn spawn_append(store: &EventStore, request: AppendRequest) -> Pending {
    let store = store.clone();
    tokio::spawn(async move { store.append(request).await })
}

/// Stalls the writer: holds the head lock and submits a first append, which the writer
/// takes and then waits on. Returns the lock and that append.
async fn stall_writer(db: &TestDatabase, store: &EventStore) -> (HeadLock, Pending) {
    let lock = HeadLock::acquire(db).await;
    let plug = spawn_append(
        store,
        AppendRequest::new(
            "plug-1",
            ExpectedVersion::Any,
            vec![common::unique_event("Plug")],
        ),
    );
    lock.wait_for_waiters(1).await;
    wait_until(
        "the writer has taken the plug off the queue",
        DEADLINE,
        || async { store.queue_depth() == 0 },
    )
    .await;
    (lock, plug)
}

/// Submits `requests` one at a time, each only once the previous one is in the queue, so
/// the queue holds them in this order.
async fn queue_in_order(store: &EventStore, requests: Vec<AppendRequest>) -> Vec<Pending> {
    let mut pending = Vec::with_capacity(requests.len());
    for request in requests {
        let depth = store.queue_depth();
        pending.push(spawn_append(store, request));
        wait_until("the append is queued", DEADLINE, || async {
            store.queue_depth() > depth
        })
        .await;
    }
    pending
}

async fn results(pending: Vec<Pending>) -> Vec<Result<AppendOutcome, StoreError>> {
    let mut results = Vec::with_capacity(pending.len());
    for handle in pending {
        results.push(
            within_deadline("an append is answered", handle)
                .await
                .expect("an append task panicked"),
        );
    }
    results
}

/// What a request of the mixed batch must get.
#[derive(Debug)]
enum Expect {
    /// Written, with these stream versions.
    Written(Vec<StreamVersion>),
    /// The same content and id as the request with this index: reported as its duplicate.
    DuplicateOf(usize),
    WrongVersion(Option<StreamVersion>),
    IdConflict,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_one_batch_only_the_failing_requests_fail_and_the_others_get_dense_positions() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, one_big_batch()).await;
    let stored_id = Uuid::new_v4();
    let reused_id = Uuid::new_v4();
    append_ok(
        &store,
        "acct-a",
        ExpectedVersion::NoStream,
        vec![common::event("Opened", 0)],
    )
    .await;
    append_ok(
        &store,
        "acct-b",
        ExpectedVersion::NoStream,
        (0..3).map(|n| common::event("Opened", n)).collect(),
    )
    .await;
    append_ok(
        &store,
        "acct-c",
        ExpectedVersion::NoStream,
        vec![common::event("Opened", 0).with_id(stored_id)],
    )
    .await;

    use ExpectedVersion::{Any, Exact, NoStream, StreamExists};
    let plan: Vec<(&str, ExpectedVersion, Vec<NewEvent>, Expect)> = vec![
        /* 0 */
        (
            "acct-a",
            Exact(0),
            vec![tagged(0)],
            Expect::Written(vec![1]),
        ),
        /* 1 */
        (
            "acct-b",
            Exact(0),
            vec![tagged(1)],
            Expect::WrongVersion(Some(2)),
        ),
        /* 2 */
        (
            "acct-c",
            Any,
            vec![tagged(2).with_id(stored_id)],
            Expect::IdConflict,
        ),
        /* 3 */
        (
            "new-1",
            NoStream,
            vec![tagged(3), tagged(3)],
            Expect::Written(vec![0, 1]),
        ),
        // Sees request 0 of this same batch.
        /* 4 */
        (
            "acct-a",
            Exact(0),
            vec![tagged(4)],
            Expect::WrongVersion(Some(1)),
        ),
        /* 5 */
        (
            "acct-b",
            Exact(2),
            vec![tagged(5)],
            Expect::Written(vec![3]),
        ),
        /* 6 */
        (
            "new-2",
            StreamExists,
            vec![tagged(6)],
            Expect::WrongVersion(None),
        ),
        // Request 6 failed, so the stream is still missing.
        /* 7 */
        ("new-2", NoStream, vec![tagged(7)], Expect::Written(vec![0])),
        /* 8 */
        (
            "acct-d",
            Any,
            vec![tagged(8).with_id(reused_id)],
            Expect::Written(vec![0]),
        ),
        // The id request 8 just used, for other content.
        /* 9 */
        (
            "acct-d",
            Any,
            vec![tagged(9).with_id(reused_id)],
            Expect::IdConflict,
        ),
        // Request 8 again: an idempotent retry within the batch.
        /* 10 */
        (
            "acct-d",
            Any,
            vec![tagged(8).with_id(reused_id)],
            Expect::DuplicateOf(8),
        ),
        /* 11 */
        (
            "new-1",
            NoStream,
            vec![tagged(11)],
            Expect::WrongVersion(Some(1)),
        ),
        /* 12 */
        (
            "acct-c",
            Exact(0),
            vec![tagged(12)],
            Expect::Written(vec![1]),
        ),
        /* 13 */
        (
            "acct-d",
            Exact(0),
            vec![tagged(13), tagged(13)],
            Expect::Written(vec![1, 2]),
        ),
    ];

    let (lock, plug) = stall_writer(&db, &store).await;
    let requests = plan
        .iter()
        .map(|(stream, expected, events, _)| AppendRequest::new(*stream, *expected, events.clone()))
        .collect();
    let pending = queue_in_order(&store, requests).await;
    assert_eq!(
        store.queue_depth(),
        plan.len(),
        "every request waits in the queue"
    );
    lock.release().await;
    let plug = within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds");
    let results = results(pending).await;

    let mut written_positions: Vec<Position> = Vec::new();
    let mut failed_requests = BTreeSet::new();
    for (index, ((_, _, _, expect), result)) in plan.iter().zip(&results).enumerate() {
        match (expect, result) {
            (Expect::Written(versions), Ok(outcome)) => {
                assert!(
                    outcome.events.iter().all(|e| !e.duplicate),
                    "request {index}"
                );
                let got: Vec<_> = outcome.events.iter().map(|e| e.stream_version).collect();
                assert_eq!(&got, versions, "request {index}: stream versions");
                written_positions.extend(outcome.events.iter().map(|e| e.position));
            }
            (Expect::DuplicateOf(original), Ok(outcome)) => {
                assert!(outcome.all_duplicates(), "request {index} is a duplicate");
                let original = results[*original].as_ref().expect("the original succeeded");
                assert_eq!(outcome.events, {
                    let mut events = original.events.clone();
                    events.iter_mut().for_each(|e| e.duplicate = true);
                    events
                });
            }
            (
                Expect::WrongVersion(actual),
                Err(StoreError::WrongExpectedVersion { actual: got, .. }),
            ) => {
                assert_eq!(got, actual, "request {index}: the actual version");
                failed_requests.insert(index);
            }
            (Expect::IdConflict, Err(StoreError::EventIdConflict { .. })) => {
                failed_requests.insert(index);
            }
            (expect, result) => panic!("request {index}: expected {expect:?}, got {result:?}"),
        }
    }

    // Positions of the batch: right after the plug, dense, in queue order.
    let first = plug.last_position() + 1;
    assert_eq!(
        written_positions,
        (first..first + written_positions.len() as Position).collect::<Vec<_>>(),
        "the batch's events take the next positions, densely, in the order requests were queued"
    );

    let log = read_all(&store).await;
    common::assert_dense_from_one(&log);
    let batch_events: Vec<&RecordedEvent> = log.iter().filter(|e| e.position >= first).collect();
    assert_eq!(
        batch_events.len(),
        written_positions.len(),
        "nothing else was written"
    );
    let transaction_times: HashSet<_> = batch_events.iter().map(|e| e.recorded_at).collect();
    assert_eq!(
        transaction_times.len(),
        1,
        "all requests were written by one transaction (the test must build one batch)"
    );
    for event in &log {
        if let Some(request) = event.payload.get("request").and_then(|r| r.as_u64()) {
            assert!(
                !failed_requests.contains(&(request as usize)),
                "an event of failed request {request} was written: {event:?}"
            );
        }
    }
    let versions: BTreeMap<&str, Option<StreamVersion>> = {
        let mut versions = BTreeMap::new();
        for stream in ["acct-a", "acct-b", "acct-c", "acct-d", "new-1", "new-2"] {
            versions.insert(stream, store.stream_version(stream).await.expect("version"));
        }
        versions
    };
    assert_eq!(
        versions,
        BTreeMap::from([
            ("acct-a", Some(1)),
            ("acct-b", Some(3)),
            ("acct-c", Some(1)),
            ("acct-d", Some(2)),
            ("new-1", Some(1)),
            ("new-2", Some(0)),
        ])
    );
}

/// The stream versions a request writes, or the actual version its failure reports.
type VersionsOrActual = Result<Vec<StreamVersion>, Option<StreamVersion>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_the_same_stream_in_one_batch_see_each_others_versions() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, one_big_batch()).await;
    use ExpectedVersion::{Any, Exact, NoStream, StreamExists};
    let plan: Vec<(ExpectedVersion, usize, VersionsOrActual)> = vec![
        (NoStream, 1, Ok(vec![0])),
        (Exact(0), 1, Ok(vec![1])),
        (Any, 2, Ok(vec![2, 3])),
        (StreamExists, 1, Ok(vec![4])),
        (Exact(4), 1, Ok(vec![5])),
        (Exact(0), 1, Err(Some(5))),
        (NoStream, 1, Err(Some(5))),
        (Exact(5), 1, Ok(vec![6])),
    ];

    let (lock, plug) = stall_writer(&db, &store).await;
    let requests = plan
        .iter()
        .enumerate()
        .map(|(index, (expected, count, _))| {
            AppendRequest::new("order-1", *expected, vec![tagged(index); *count])
        })
        .collect();
    let pending = queue_in_order(&store, requests).await;
    lock.release().await;
    within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds");

    for (index, ((_, _, expect), result)) in plan.iter().zip(results(pending).await).enumerate() {
        match (expect, result) {
            (Ok(versions), Ok(outcome)) => assert_eq!(
                &outcome
                    .events
                    .iter()
                    .map(|e| e.stream_version)
                    .collect::<Vec<_>>(),
                versions,
                "request {index}"
            ),
            (Err(actual), Err(StoreError::WrongExpectedVersion { actual: got, .. })) => {
                assert_eq!(&got, actual, "request {index}")
            }
            (expect, result) => panic!("request {index}: expected {expect:?}, got {result:?}"),
        }
    }
    let stream = common::read_stream_fully(&store, "order-1").await;
    assert_eq!(
        stream
            .iter()
            .map(|e| (e.stream_version, e.payload["request"].as_u64()))
            .collect::<Vec<_>>(),
        vec![
            (0, Some(0)),
            (1, Some(1)),
            (2, Some(2)),
            (3, Some(2)),
            (4, Some(3)),
            (5, Some(4)),
            (6, Some(7)),
        ]
    );
    let times: HashSet<_> = stream.iter().map(|e| e.recorded_at).collect();
    assert_eq!(times.len(), 1, "one transaction wrote the whole batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_the_database_refuses_fails_alone_and_the_rest_of_its_batch_commits() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, one_big_batch()).await;
    append_ok(
        &store,
        "broken-1",
        ExpectedVersion::NoStream,
        vec![common::event("Opened", 0)],
    )
    .await;
    // Damage the store behind its back: an event at version 1 that `streams` does not
    // know about. The next append to broken-1 passes the checks in Rust and then violates
    // the unique (stream_id, stream_version) constraint, failing the whole transaction.
    common::connect(&db)
        .await
        .execute(
            "INSERT INTO events (position, stream_id, stream_version, partition, event_id, \
                                 event_type, payload, content_hash) \
             VALUES (1000000, 'broken-1', 1, 0, $1, 'Planted', '{}'::jsonb, $2)",
            &[&Uuid::new_v4(), &vec![0u8; 32]],
        )
        .await
        .expect("planting a conflicting row");

    let (lock, plug) = stall_writer(&db, &store).await;
    let requests = (0..6)
        .map(|index| {
            let stream = if index == 3 {
                "broken-1".to_string()
            } else {
                format!("fine-{index}")
            };
            AppendRequest::new(stream, ExpectedVersion::Any, vec![tagged(index)])
        })
        .collect();
    let pending = queue_in_order(&store, requests).await;
    lock.release().await;
    let plug = within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds");

    let mut positions = Vec::new();
    for (index, result) in results(pending).await.into_iter().enumerate() {
        if index == 3 {
            let error = result.expect_err("the request the database refuses fails");
            assert!(
                matches!(error, StoreError::Database { .. }),
                "a database error, got {error:?}"
            );
        } else {
            let outcome = result.unwrap_or_else(|e| panic!("request {index} must commit: {e}"));
            positions.push(outcome.last_position());
        }
    }
    let first = plug.last_position() + 1;
    assert_eq!(
        positions,
        (first..first + 5).collect::<Vec<_>>(),
        "the others commit with dense positions in queue order"
    );
    let head = store.head_position().await.expect("head");
    assert_eq!(head, first + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_beyond_a_full_queue_are_overloaded_after_the_deadline_and_write_nothing() {
    let db = TestDatabase::create().await;
    let deadline = Duration::from_millis(300);
    let config = StoreConfig {
        pipeline: PipelineConfig {
            queue_depth: 1,
            max_batch_requests: 1,
            enqueue_deadline: deadline,
            ..PipelineConfig::default()
        },
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;

    let (lock, plug) = stall_writer(&db, &store).await;
    let queued = queue_in_order(
        &store,
        vec![AppendRequest::new(
            "queued-1",
            ExpectedVersion::Any,
            vec![tagged(0)],
        )],
    )
    .await;
    assert_eq!(store.queue_depth(), 1, "the queue is full");
    let overflow: Vec<Pending> = (1..=6)
        .map(|index| {
            spawn_append(
                &store,
                AppendRequest::new(
                    format!("overflow-{index}"),
                    ExpectedVersion::Any,
                    vec![tagged(index)],
                ),
            )
        })
        .collect();
    // They give up on their own, the writer still stalled.
    for result in results(overflow).await {
        match result {
            Err(
                error @ StoreError::Overloaded {
                    reason: OverloadReason::QueueFull { waited_ms },
                    retry_after_ms,
                },
            ) => {
                assert_eq!(waited_ms, deadline.as_millis() as u64);
                assert!(retry_after_ms > 0, "a retry hint is given");
                assert!(error.is_retryable(), "Overloaded is retryable");
                assert_eq!(error.kind(), "overloaded");
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
    assert_eq!(lock.waiters().await, 1, "the writer was stalled all along");

    lock.release().await;
    within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds");
    for result in results(queued).await {
        result.expect("the queued append commits once the writer moves on");
    }
    append_ok(&store, "after-1", ExpectedVersion::Any, vec![tagged(99)]).await;

    let streams: Vec<String> = read_all(&store)
        .await
        .into_iter()
        .map(|e| e.stream_id)
        .collect();
    assert_eq!(
        streams,
        vec!["plug-1", "queued-1", "after-1"],
        "nothing an overloaded caller sent was written"
    );
}

/// Admission control: with requests already queued, a caller whose expected wait exceeds
/// the budget is refused at once (not after the enqueue deadline), with a retry hint, and
/// nothing of its append is written. A budget far below one transaction's cost makes the
/// verdict certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_expected_to_wait_past_the_budget_is_refused_at_once_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        pipeline: PipelineConfig {
            admission_budget: Duration::from_nanos(1),
            // Long enough that a caller waiting for room could never be confused with
            // one refused by admission.
            enqueue_deadline: Duration::from_secs(3600),
            ..PipelineConfig::default()
        },
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;
    // The writer measures what a transaction costs.
    append_ok(&store, "first-1", ExpectedVersion::Any, vec![tagged(0)]).await;

    let (lock, plug) = stall_writer(&db, &store).await;
    let queued = queue_in_order(
        &store,
        vec![AppendRequest::new(
            "queued-1",
            ExpectedVersion::Any,
            vec![tagged(1)],
        )],
    )
    .await;
    let refused = within_deadline(
        "the refusal comes at once, while the writer is still stalled",
        store.append(AppendRequest::new(
            "refused-1",
            ExpectedVersion::Any,
            vec![tagged(2)],
        )),
    )
    .await;
    match refused {
        Err(
            error @ StoreError::Overloaded {
                reason: OverloadReason::ExpectedWait { budget_ms: 0, .. },
                retry_after_ms,
            },
        ) => {
            assert!(error.is_retryable());
            assert!(retry_after_ms >= 100, "the hint is at least 100 ms");
        }
        other => panic!("expected Overloaded(ExpectedWait), got {other:?}"),
    }
    assert_eq!(lock.waiters().await, 1, "the writer was stalled all along");
    lock.release().await;
    within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds");
    for result in results(queued).await {
        result.expect("the admitted append commits");
    }
    let streams: Vec<String> = read_all(&store)
        .await
        .into_iter()
        .map(|e| e.stream_id)
        .collect();
    assert_eq!(
        streams,
        vec!["first-1", "plug-1", "queued-1"],
        "nothing of the refused append was written"
    );
}

#[tokio::test]
async fn a_configured_queue_depth_of_zero_works_as_a_queue_of_one() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        pipeline: PipelineConfig {
            queue_depth: 0,
            ..PipelineConfig::default()
        },
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;
    assert_eq!(store.queue_depth(), 0, "nothing is queued");
    append_ok(&store, "acct-1", ExpectedVersion::Any, vec![tagged(0)]).await;
    assert_eq!(store.queue_depth(), 0);
}

/// Checks, after a shutdown, that the log holds exactly the acknowledged events.
fn assert_log_is_exactly(log: &[RecordedEvent], acknowledged: &[AppendOutcome]) {
    common::assert_dense_from_one(log);
    let in_log: BTreeMap<Uuid, Position> = log.iter().map(|e| (e.event_id, e.position)).collect();
    let acked: BTreeMap<Uuid, Position> = acknowledged
        .iter()
        .flat_map(|o| o.events.iter().map(|e| (e.event_id, e.position)))
        .collect();
    assert_eq!(
        in_log, acked,
        "every acknowledged event is in the log, and every event in the log was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_refuses_new_appends_at_once_and_writes_and_answers_every_queued_one() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        pipeline: PipelineConfig {
            // Several batches to drain.
            max_batch_requests: 16,
            ..PipelineConfig::default()
        },
        ..StoreConfig::default()
    };
    let store = open_store(&db, config).await;
    let (lock, plug) = stall_writer(&db, &store).await;
    let queued: Vec<Pending> = (0..100)
        .map(|index| {
            spawn_append(
                &store,
                AppendRequest::new(
                    format!("drain-{}", index % 9),
                    ExpectedVersion::Any,
                    vec![tagged(index); 1 + index % 3],
                ),
            )
        })
        .collect();
    wait_until("all 100 appends are queued", DEADLINE, || async {
        store.queue_depth() == 100
    })
    .await;

    // Start the shutdown (its first poll stops intake) while the writer is still stalled.
    let shutdown = store.shutdown();
    futures::pin_mut!(shutdown);
    assert!(
        futures::poll!(&mut shutdown).is_pending(),
        "shutdown waits for the queue to drain"
    );
    let late = store.append(AppendRequest::new(
        "late-1",
        ExpectedVersion::Any,
        vec![tagged(1000)],
    ));
    let refused = within_deadline("an append after shutdown was called is answered", late)
        .await
        .expect_err("an append after shutdown was called is refused, even before the drain");
    assert!(
        matches!(refused, StoreError::ShuttingDown),
        "expected ShuttingDown, got {refused:?}"
    );
    assert_eq!(
        store.queue_depth(),
        100,
        "the refused append was not queued"
    );
    lock.release().await;
    within_deadline("shutdown completes", shutdown).await;

    let mut acknowledged = vec![within_deadline("the plug is answered", plug)
        .await
        .expect("the plug task panicked")
        .expect("the plug append succeeds")];
    for (index, result) in results(queued).await.into_iter().enumerate() {
        acknowledged.push(result.unwrap_or_else(|e| {
            panic!("append {index} was queued before shutdown and must be written: {e}")
        }));
    }
    for attempt in 0..3 {
        let error = store
            .append(AppendRequest::new(
                "late-1",
                ExpectedVersion::Any,
                vec![tagged(attempt)],
            ))
            .await
            .expect_err("appends after shutdown are refused");
        assert!(
            matches!(error, StoreError::ShuttingDown),
            "expected ShuttingDown, got {error:?}"
        );
    }
    assert_log_is_exactly(&read_all(&store).await, &acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_while_writers_append_loses_no_acknowledged_append_and_writes_no_other() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, StoreConfig::default()).await;
    let writers: Vec<JoinHandle<(Vec<AppendOutcome>, StoreError)>> = (0..8)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    let request = AppendRequest::new(
                        format!("busy-{}", (writer + n) % 5),
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Busy", json!({ "writer": writer, "n": n }))],
                    );
                    match store.append(request).await {
                        Ok(outcome) => acknowledged.push(outcome),
                        Err(error) => return (acknowledged, error),
                    }
                }
                unreachable!("the loop ends with an error")
            })
        })
        .collect();
    let head = store.head_watch();
    wait_until("the writers have appended 200 events", DEADLINE, || {
        let head = *head.borrow();
        async move { head >= 200 }
    })
    .await;
    within_deadline("shutdown completes", store.shutdown()).await;

    let mut acknowledged = Vec::new();
    for writer in writers {
        let (outcomes, error) = within_deadline("a writer stops", writer)
            .await
            .expect("a writer task panicked");
        assert!(
            matches!(error, StoreError::ShuttingDown),
            "writers stop because of the shutdown, got {error:?}"
        );
        acknowledged.extend(outcomes);
    }
    assert_log_is_exactly(&read_all(&store).await, &acknowledged);
}
