//! Reads from a streaming replica (`store::replica`), on a real hot standby this test starts
//! from `pg_basebackup` of its own primary (`tidemark_testkit::replica`): replica handles
//! read there and the rest stays on the primary; while the standby's replay is paused, a
//! subscription on it claims to have seen only what the standby has, delivers nothing out
//! of order, and after replay resumes delivers the rest with no gap; the lag is measured;
//! a read database that is not a replica of the store is refused.
//!
//! The stores poll only once a minute, longer than any test waits: live delivery must come
//! from the wake-ups and the retries while the replica is behind.

use crate::common;

use common::{append_ok, assert_dense_from_one, within_deadline, DEADLINE};
use futures::StreamExt;
use std::time::Duration;
use tidemark_store::{
    build_pool, EventStore, ExpectedVersion, LogFilter, NewEvent, Page, PgTls, Position,
    RecordedEvent, StoreConfig, StoreError, SubscribeOptions, TlsOptions,
};
use tidemark_testkit::replica::ReplicatedCluster;
use tidemark_testkit::{wait_until, TestDatabase};

fn config() -> StoreConfig {
    StoreConfig {
        poll_interval: Duration::from_secs(60),
        partitions: 4,
        ..StoreConfig::default()
    }
}

/// A store on the cluster's primary that reads replica handles' events on its standby.
async fn open_replicated(cluster: &ReplicatedCluster) -> EventStore {
    let tls = PgTls::new(&TlsOptions::default()).expect("no TLS options");
    let pool = build_pool(cluster.primary_config(), &tls, 8).expect("a pool");
    EventStore::open_with_pools(
        pool,
        Some(cluster.standby_pool(8)),
        cluster.primary_config(),
        config(),
    )
    .await
    .expect("the store opens with its standby as read replica")
}

async fn append_n(store: &EventStore, from: u64, count: u64) {
    for n in from..from + count {
        append_ok(
            store,
            &format!("item-{}", n % 7),
            ExpectedVersion::Any,
            vec![NewEvent::new("Numbered", serde_json::json!({ "n": n }))],
        )
        .await;
    }
}

/// Takes events from `stream` until it has `count`.
async fn take_events(
    stream: &mut (impl futures::Stream<Item = tidemark_store::Result<RecordedEvent>> + Unpin),
    count: usize,
) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let event = within_deadline("the next event of the subscription", stream.next())
            .await
            .expect("the subscription goes on")
            .expect("the subscription reads");
        events.push(event);
    }
    events
}

/// Takes pages from `pages` until one reports being caught up; returns the events and that
/// position.
async fn until_caught_up(
    pages: &mut (impl futures::Stream<Item = tidemark_store::Result<Page>> + Unpin),
) -> (Vec<RecordedEvent>, Position) {
    let mut events = Vec::new();
    loop {
        let page = within_deadline("the next page of the subscription", pages.next())
            .await
            .expect("the subscription goes on")
            .expect("the subscription reads");
        events.extend(page.events);
        if let Some(caught_up_to) = page.caught_up_to {
            return (events, caught_up_to);
        }
    }
}

#[tokio::test]
async fn a_subscription_on_a_lagging_replica_skips_nothing_and_claims_only_what_it_has() {
    let cluster = ReplicatedCluster::start().await;
    let store = open_replicated(&cluster).await;
    let reader = store.on_replica();
    append_n(&store, 0, 30).await;
    let mut live = Box::pin(reader.subscribe(SubscribeOptions {
        page_size: 8,
        ..SubscribeOptions::default()
    }));
    let before_pause = take_events(&mut live, 30).await;

    cluster.pause_replay().await;
    append_n(&store, 30, 20).await;
    assert_eq!(store.head_position().await.expect("the head"), 50);

    // Replica handles read the standby, which stopped at 30; the primary has 50.
    let on_replica = reader
        .read_log(0, &LogFilter::all(), 100)
        .await
        .expect("reading the replica");
    assert_eq!(on_replica.len(), 30, "replica handles read the standby");
    assert_eq!(
        store
            .read_log(0, &LogFilter::all(), 100)
            .await
            .expect("reading the primary")
            .len(),
        50,
        "other handles read the primary"
    );
    assert!(reader
        .read_stream("item-3", None, Default::default(), 100)
        .await
        .expect("a stream on the replica")
        .iter()
        .all(|e| e.position <= 30));
    assert!(
        reader.stream_version("item-3").await.expect("a version")
            < store.stream_version("item-3").await.expect("a version"),
        "the replica's stream version lags the primary's"
    );

    // A new subscription on the replica reads what the standby has and says it is caught
    // up to the standby's head, never to the primary's head that was announced.
    let partition = store.partition_of("item-3");
    let mut pages = Box::pin(reader.subscribe_pages(SubscribeOptions {
        filter: LogFilter::partition(partition),
        page_size: 5,
        ..SubscribeOptions::default()
    }));
    let (seen_lagging, caught_up_to) = until_caught_up(&mut pages).await;
    assert_eq!(
        caught_up_to, 30,
        "caught up only as far as the replica has replayed"
    );
    assert!(seen_lagging.iter().all(|e| e.position <= 30));

    let lag = store
        .replica_lag()
        .await
        .expect("measuring the lag")
        .expect("the store has a replica");
    assert!(lag.standby, "{lag:?}");
    assert_eq!(
        (lag.primary_head, lag.replica_head, lag.events),
        (50, 30, 20)
    );
    assert!(lag.bytes.is_some_and(|bytes| bytes > 0), "{lag:?}");
    assert!(lag.seconds >= 0.0, "{lag:?}");

    cluster.resume_replay().await;
    // Nothing announces anything now: the subscriptions find the rest by retrying while the
    // replica was behind what was announced.
    let after_resume = take_events(&mut live, 20).await;
    let all: Vec<RecordedEvent> = before_pause.into_iter().chain(after_resume).collect();
    assert_dense_from_one(&all);
    let payloads: Vec<u64> = all
        .iter()
        .map(|e| e.payload["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(payloads, (0..50).collect::<Vec<u64>>());

    let expected: Vec<Position> = all
        .iter()
        .filter(|e| e.partition == partition)
        .map(|e| e.position)
        .collect();
    let last = *expected.last().expect("the partition has events");
    assert!(
        last > 30,
        "the partition has events the replica lagged behind on"
    );
    let mut partition_events = seen_lagging;
    loop {
        let (events, caught_up_to) = until_caught_up(&mut pages).await;
        partition_events.extend(events);
        if caught_up_to >= last {
            break;
        }
    }
    assert_eq!(
        partition_events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        expected,
        "the partition's events, each once, in order"
    );
    wait_until("the replica to have no lag", DEADLINE, || async {
        store
            .replica_lag()
            .await
            .expect("measuring the lag")
            .is_some_and(|lag| lag.events == 0 && lag.seconds == 0.0)
    })
    .await;
    store.shutdown().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_read_database_that_does_not_hold_the_store_is_refused() {
    let cluster = ReplicatedCluster::start().await;
    let other = TestDatabase::create().await;
    // Another store, on another server: not a replica of this one.
    EventStore::open(other.pg_config(), config())
        .await
        .expect("another store")
        .shutdown()
        .await;
    let tls = PgTls::new(&TlsOptions::default()).expect("no TLS options");
    let pool = build_pool(cluster.primary_config(), &tls, 4).expect("a pool");
    let refused = EventStore::open_with_pools(
        pool,
        Some(other.pool(2)),
        cluster.primary_config(),
        config(),
    )
    .await
    .expect_err("a read database that is not a replica of the store");
    assert!(matches!(refused, StoreError::Config(_)), "{refused}");
    assert!(
        refused.to_string().contains("does not hold this store"),
        "{refused}"
    );
    cluster.stop().await;
}

/// Not a check: prints how fast a catch-up subscription reads 20,000 events from the primary
/// and from the standby (best of three each; on a replica every page also reads the
/// replica's head). Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_catch_up_on_the_primary_and_on_the_replica() {
    const EVENTS: usize = 20_000;
    let cluster = ReplicatedCluster::start().await;
    let store = open_replicated(&cluster).await;
    for batch in 0..EVENTS / 100 {
        let events = (0..100)
            .map(|k| {
                NewEvent::new(
                    "Numbered",
                    serde_json::json!({ "n": batch * 100 + k, "pad": "x".repeat(150) }),
                )
            })
            .collect();
        append_ok(
            &store,
            &format!("item-{}", batch % 50),
            ExpectedVersion::Any,
            events,
        )
        .await;
    }
    cluster.wait_for_replay().await;
    for (label, handle) in [("primary", store.clone()), ("replica", store.on_replica())] {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let mut events = Box::pin(handle.subscribe(SubscribeOptions {
                page_size: 1000,
                ..SubscribeOptions::default()
            }));
            take_events(&mut events, EVENTS).await;
            best = best.min(started.elapsed().as_secs_f64());
        }
        println!(
            "catch-up subscribe on the {label}: {:.0} events/s (best of 3, {EVENTS} events)",
            EVENTS as f64 / best
        );
    }
    // Live delivery: one append at a time, the time until a subscriber has it.
    const SAMPLES: usize = 200;
    let mut on_primary = Box::pin(store.subscribe(SubscribeOptions {
        after: EVENTS as Position,
        ..SubscribeOptions::default()
    }));
    let mut on_replica = Box::pin(store.on_replica().subscribe(SubscribeOptions {
        after: EVENTS as Position,
        ..SubscribeOptions::default()
    }));
    let (mut primary_ms, mut replica_ms) = (Vec::new(), Vec::new());
    for n in 0..SAMPLES {
        let started = std::time::Instant::now();
        append_ok(
            &store,
            "live-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Live", serde_json::json!({ "n": n }))],
        )
        .await;
        take_events(&mut on_primary, 1).await;
        primary_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        take_events(&mut on_replica, 1).await;
        replica_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    for (label, mut ms) in [("primary", primary_ms), ("replica", replica_ms)] {
        ms.sort_by(f64::total_cmp);
        println!(
            "append -> subscriber on the {label}: p50 {:.2} ms, p99 {:.2} ms ({SAMPLES} appends, one at a time)",
            ms[SAMPLES / 2],
            ms[SAMPLES * 99 / 100]
        );
    }
    store.shutdown().await;
    cluster.stop().await;
}
