//! Catch-up-then-live subscriptions (docs/design.md §7): started while appends are running, a
//! subscriber gets every event exactly once and in order across the switch from history to
//! live delivery; a filtered subscription gets exactly the matching events; a subscription
//! from a middle position starts right after it.
//!
//! The stores here poll only once a minute, longer than any test waits, so live delivery
//! must come from the wake-ups (the in-process head watch, or NOTIFY across instances).

use crate::common;

use common::{append_ok, open_store, read_all, within_deadline};
use futures::StreamExt;
use std::time::Duration;
use tidemark_store::{
    EventStore, ExpectedVersion, LogFilter, NewEvent, Position, RecordedEvent, StoreConfig,
    SubscribeOptions,
};
use tidemark_testkit::TestDatabase;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A configuration whose polling fallback never fires during a test.
fn no_polling() -> StoreConfig {
    StoreConfig {
        poll_interval: Duration::from_secs(60),
        ..StoreConfig::default()
    }
}

/// Starts `writers` tasks, each making `appends` appends of `per_append` events to the
/// stream `stream(writer, n)`. Returns their handles.
fn spawn_writers(
    store: &EventStore,
    writers: usize,
    appends: usize,
    per_append: usize,
    stream: fn(usize, usize) -> String,
) -> Vec<JoinHandle<()>> {
    (0..writers)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..appends {
                    let events = (0..per_append)
                        .map(|k| {
                            NewEvent::new(
                                "Live",
                                serde_json::json!({ "writer": writer, "n": n, "k": k }),
                            )
                        })
                        .collect();
                    append_ok(&store, &stream(writer, n), ExpectedVersion::Any, events).await;
                }
            })
        })
        .collect()
}

/// Appends `count` single-event appends spread over a few streams, before subscribing.
async fn append_history(store: &EventStore, count: usize) {
    for n in 0..count {
        append_ok(
            store,
            &format!("history-{}", n % 5),
            ExpectedVersion::Any,
            vec![common::event("Old", n as u64)],
        )
        .await;
    }
}

/// Takes `count` events from a subscription (bounded by the test deadline).
async fn take_events(
    store: &EventStore,
    options: SubscribeOptions,
    count: usize,
) -> Vec<RecordedEvent> {
    let subscription = store.subscribe(options);
    let items: Vec<_> = within_deadline(
        &format!("the subscription delivers {count} events"),
        subscription.take(count).collect(),
    )
    .await;
    items
        .into_iter()
        .map(|item| item.expect("the subscription yields events, not errors"))
        .collect()
}

async fn join_all(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        handle.await.expect("a writer task panicked");
    }
}

/// Asserts `delivered` is exactly the log's events after `after`, in order.
fn assert_same_events(delivered: &[RecordedEvent], log: &[RecordedEvent], after: Position) {
    let expected: Vec<&RecordedEvent> = log.iter().filter(|e| e.position > after).collect();
    assert_eq!(
        delivered.len(),
        expected.len(),
        "the subscriber gets as many events as the log holds after {after}"
    );
    for (index, (got, want)) in delivered.iter().zip(expected).enumerate() {
        assert_eq!(
            got.position,
            after + 1 + index as Position,
            "delivery {index} is the next position: no gap, no duplicate, no reordering"
        );
        assert_eq!(got, want, "delivery {index} is the stored event");
    }
}

const HISTORY: usize = 300;
const WRITERS: usize = 4;
const LIVE_APPENDS: usize = 100;
const PER_APPEND: usize = 2;
const TOTAL: usize = HISTORY + WRITERS * LIVE_APPENDS * PER_APPEND;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_from_zero_while_appends_run_gets_every_event_once_in_order() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, no_polling()).await;
    append_history(&store, HISTORY).await;

    let writers = spawn_writers(&store, WRITERS, LIVE_APPENDS, PER_APPEND, |w, n| {
        format!("live-{}", (w + n) % 7)
    });
    // Small pages: catching up takes several reads, racing the writers.
    let options = SubscribeOptions {
        page_size: 32,
        ..SubscribeOptions::default()
    };
    let delivered = take_events(&store, options, TOTAL).await;
    join_all(writers).await;

    let log = read_all(&store).await;
    assert_eq!(log.len(), TOTAL);
    assert_same_events(&delivered, &log, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_on_another_store_instance_is_woken_by_notify() {
    let db = TestDatabase::create().await;
    let writer_store = open_store(&db, no_polling()).await;
    // Another instance, as another process: it appends nothing itself, so it learns of new
    // events only through NOTIFY.
    let reader_store = open_store(&db, no_polling()).await;
    append_history(&writer_store, HISTORY).await;

    let writers = spawn_writers(&writer_store, WRITERS, LIVE_APPENDS, PER_APPEND, |w, _| {
        format!("remote-{w}")
    });
    let options = SubscribeOptions {
        page_size: 64,
        ..SubscribeOptions::default()
    };
    let delivered = take_events(&reader_store, options, TOTAL).await;
    join_all(writers).await;

    let log = read_all(&writer_store).await;
    assert_same_events(&delivered, &log, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_from_a_middle_position_starts_right_after_it() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, no_polling()).await;
    append_history(&store, HISTORY).await;
    let middle: Position = (HISTORY / 2) as Position + 1;

    let writers = spawn_writers(&store, WRITERS, LIVE_APPENDS, PER_APPEND, |w, n| {
        format!("live-{}", (w * n) % 5)
    });
    let options = SubscribeOptions {
        after: middle,
        page_size: 50,
        ..SubscribeOptions::default()
    };
    let delivered = take_events(&store, options, TOTAL - middle as usize).await;
    join_all(writers).await;

    assert_eq!(delivered[0].position, middle + 1);
    assert_same_events(&delivered, &read_all(&store).await, middle);
}

/// Category of the live appends of writer `w`, append `n`: "orderline" shares a prefix
/// with "order" but is another category.
fn mixed_stream(w: usize, n: usize) -> String {
    let category = ["order", "invoice", "orderline"][(w + n) % 3];
    format!("{category}-{}", n % 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_category_subscription_gets_exactly_the_events_of_that_category() {
    let db = TestDatabase::create().await;
    let store = open_store(&db, no_polling()).await;
    for n in 0..30 {
        append_ok(
            &store,
            &mixed_stream(1, n),
            ExpectedVersion::Any,
            vec![common::event("Old", n as u64)],
        )
        .await;
    }
    let order_streams_before = (0..30).filter(|&n| (1 + n) % 3 == 0).count();
    let order_live = (0..WRITERS)
        .flat_map(|w| (0..LIVE_APPENDS).map(move |n| (w, n)))
        .filter(|&(w, n)| (w + n) % 3 == 0)
        .count();
    let expected = order_streams_before + order_live * PER_APPEND;

    let writers = spawn_writers(&store, WRITERS, LIVE_APPENDS, PER_APPEND, mixed_stream);
    let filter = LogFilter::category("order");
    let options = SubscribeOptions {
        filter: filter.clone(),
        page_size: 7,
        ..SubscribeOptions::default()
    };
    let delivered = take_events(&store, options, expected).await;
    join_all(writers).await;

    let log = read_all(&store).await;
    let matching: Vec<RecordedEvent> = log.into_iter().filter(|e| filter.matches(e)).collect();
    assert_eq!(matching.len(), expected);
    assert!(
        delivered.iter().all(|e| e.stream_id.starts_with("order-")),
        "only streams of category \"order\" are delivered (not \"orderline\")"
    );
    assert_eq!(
        delivered, matching,
        "the subscriber gets exactly the matching events, in order"
    );
}

/// Follows a subscription from 0 in a task, checking density as it goes, and publishes the
/// last position delivered.
fn follow(store: &EventStore) -> (watch::Receiver<Position>, JoinHandle<()>) {
    let (delivered_tx, delivered) = watch::channel(0);
    let mut subscription = Box::pin(store.subscribe(SubscribeOptions::default()));
    let task = tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            let event = event.expect("the subscription yields events, not errors");
            let previous = *delivered_tx.borrow();
            assert_eq!(
                event.position,
                previous + 1,
                "deliveries are dense and in order"
            );
            delivered_tx.send_replace(event.position);
        }
    });
    (delivered, task)
}

const BURSTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_subscriber_is_woken_for_an_append_that_commits_while_it_reads() {
    // Each burst is a heavy append (about 1 MB of JSON, slow for the subscriber to read and
    // decode) and right after it a tiny one, which therefore commits while the subscriber
    // is still reading the heavy page. Then silence: the subscriber must get the tiny event
    // from its wake-up alone (the polling fallback is a minute away). A subscriber that
    // marked the head as seen only after reading would sleep through it.
    let db = TestDatabase::create().await;
    let store = open_store(&db, no_polling()).await;
    let other_instance = open_store(&db, no_polling()).await;
    let (local, local_task) = follow(&store);
    let (remote, remote_task) = follow(&other_instance);
    let bulk = "x".repeat(50_000);

    for burst in 0..BURSTS {
        let heavy = (0..20)
            .map(|n| NewEvent::new("Heavy", serde_json::json!({ "n": n, "bulk": bulk })))
            .collect();
        append_ok(
            &store,
            &format!("heavy-{burst}"),
            ExpectedVersion::Any,
            heavy,
        )
        .await;
        let tiny = append_ok(
            &store,
            &format!("tiny-{burst}"),
            ExpectedVersion::Any,
            vec![common::event("Tiny", burst as u64)],
        )
        .await;
        let head = tiny.last_position();
        for (name, delivered) in [("in-process", &local), ("other instance", &remote)] {
            common::wait_until(
                &format!("the {name} subscriber delivers position {head} (burst {burst})"),
                common::DEADLINE,
                || async move { *delivered.borrow() >= head },
            )
            .await;
        }
    }
    local_task.abort();
    remote_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_subscriptions_are_woken_for_their_partition_in_process_and_by_notify() {
    let db = TestDatabase::create().await;
    let writer_store = open_store(&db, no_polling()).await;
    let reader_store = open_store(&db, no_polling()).await;
    let partition = writer_store.partition_of("target-0");
    // Subscribe before anything is written, so every delivery needs a wake-up: polling is
    // a minute away, far past the test's deadline.
    let subscribe = |store: &EventStore| {
        let options = SubscribeOptions {
            filter: LogFilter::partition(partition),
            page_size: 8,
            ..SubscribeOptions::default()
        };
        let store = store.clone();
        tokio::spawn(async move { take_events(&store, options, 20).await })
    };
    let in_process = subscribe(&writer_store);
    let remote = subscribe(&reader_store);
    for n in 0..20u64 {
        // An event of another partition first, then one of ours, in separate commits.
        let other = (0..)
            .map(|i| format!("other-{n}-{i}"))
            .find(|s| writer_store.partition_of(s) != partition)
            .expect("some stream lands elsewhere");
        append_ok(
            &writer_store,
            &other,
            ExpectedVersion::Any,
            vec![common::event("Other", n)],
        )
        .await;
        append_ok(
            &writer_store,
            "target-0",
            ExpectedVersion::Any,
            vec![common::event("Ours", n)],
        )
        .await;
    }
    let log = read_all(&writer_store).await;
    let expected: Vec<RecordedEvent> = log
        .into_iter()
        .filter(|e| e.partition == partition)
        .collect();
    for delivered in [in_process, remote] {
        let delivered = delivered.await.expect("the subscriber task");
        assert_eq!(
            delivered, expected,
            "exactly the partition's events, in order"
        );
    }
}
