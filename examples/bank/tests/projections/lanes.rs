//! How lanes run (docs/design.md §8, Parallelism and Lag): partitions of one projection run
//! concurrently, each in stream order; projections run independently, so a slow one holds
//! back no other; and status reports lag in events and seconds.

use crate::common;

use async_trait::async_trait;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tidemark_example_bank::projections::{AccountBalances, CategoryTotals};
use tidemark_projections::{
    ApplyContext, EngineConfig, EventSelector, Projection, ProjectionError, ProjectionState,
    RecordedEvent, Registry,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use tidemark_testkit::TestDatabase;

/// Four writers, each appending 150 times 1-5 events to random streams of 96.
async fn interleaved_appends(store: &EventStore, seed: u64, round: u64) {
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (round << 8) ^ writer);
                for _ in 0..150 {
                    let stream = format!("account-{}", rng.random_range(0..96));
                    let count = rng.random_range(1..=5);
                    let events = bank_events(&mut rng, &stream, count, false);
                    store
                        .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
                        .await
                        .expect("appending");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_stream_is_applied_in_version_order_while_sixteen_partitions_run_concurrently() {
    let seed = seed(0x0e0e_0001);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    assert_eq!(store.partitions(), 16);

    // Small interleaved appends to many streams from several writers: half before the
    // engine starts (a backlog), half while it runs (live).
    interleaved_appends(&store, seed, 0).await;

    let mut recorder = Recorder::new("order_recorder");
    recorder.transient_rate = 0.05;
    recorder.rng = std::sync::Mutex::new(StdRng::seed_from_u64(seed));
    let stats = recorder.stats.clone();
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(recorder),
        EngineConfig {
            batch_size: 20,
            ..engine_config()
        },
    );
    engine.start().await.expect("the engine starts");
    interleaved_appends(&store, seed, 1).await;
    caught_up(&engine, "order_recorder", DEADLINE).await;
    // The lanes record the rate they apply at with their checkpoints (it used to read 0).
    let status = engine
        .projection_status("order_recorder")
        .await
        .expect("status");
    assert!(
        status.events_per_second() > 0.0,
        "a projection that just applied a backlog reports a rate: {status:?}"
    );
    engine.shutdown().await;

    let log = read_all(&store).await;
    let applied = read_applied(&connect(&db).await, "rm_order_recorder").await;
    let partitions: BTreeSet<i16> = log.iter().map(|e| e.partition).collect();
    assert_eq!(
        partitions.len(),
        16,
        "the streams must cover all 16 partitions"
    );
    assert_each_once_in_stream_order(&applied, &log);
    let max_in_flight = stats.max_in_flight.load(Ordering::SeqCst);
    let retried = stats.transient_failures.load(Ordering::SeqCst);
    println!(
        "{} events; up to {max_in_flight} batches at once; {retried} batches failed and were retried",
        log.len()
    );
    assert!(
        max_in_flight > 1,
        "partitions must apply concurrently, yet at most one batch ran at a time"
    );
    assert!(
        retried > 0,
        "some batches must have failed and been retried"
    );
    store.shutdown().await;
}

/// `AccountBalances` under another name, whose batches wait at a gate (closed until the
/// test opens it) and then take 200 ms: a projection stuck far behind.
struct Slow {
    gate: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl Projection for Slow {
    fn name(&self) -> &str {
        "slow_balances"
    }

    fn selector(&self) -> EventSelector {
        AccountBalances.selector()
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        AccountBalances.setup(ctx).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut gate = self.gate.clone();
        gate.wait_for(|open| *open)
            .await
            .map_err(|_| ProjectionError::transient("the gate is gone"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        AccountBalances.apply(ctx, events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_projection_does_not_hold_back_the_checkpoints_of_another() {
    let seed = seed(0x0e0e_0002);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_backlog(
        &store,
        Backlog {
            events: 4_000,
            per_append: 20,
            accounts: 64,
            audit_every: 10,
            seed,
        },
    )
    .await;
    let log = read_all(&store).await;
    let account_events = log.iter().filter(|e| e.category() == "account").count() as i64;

    let (open_gate, gate) = tokio::sync::watch::channel(false);
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new()
            .projection(Slow { gate })
            .projection(CategoryTotals),
        EngineConfig {
            batch_size: 100,
            ..engine_config()
        },
    );
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "category_totals", DEADLINE).await;

    // The fast projection is done while every batch of the slow one is still waiting.
    let slow = engine
        .projection_status("slow_balances")
        .await
        .expect("status of the slow projection");
    assert_eq!(
        slow.lag_events(),
        account_events,
        "the slow projection has committed nothing yet"
    );
    assert_same_rows(
        "category totals",
        &read_totals(&connect(&db).await, "rm_category_totals").await,
        &tidemark_example_bank::projections::fold::totals(&log),
    );

    // And the slow one was only slow: opened, it catches up too.
    open_gate.send_replace(true);
    caught_up(&engine, "slow_balances", DEADLINE).await;
    engine.shutdown().await;
    assert_same_rows(
        "slow balances",
        &read_balances(&connect(&db).await, "rm_slow_balances").await,
        &tidemark_example_bank::projections::fold::balances(&log),
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_lag_in_events_and_seconds_until_the_projection_catches_up() {
    let seed = seed(0x0e0e_0003);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let head = append_backlog(
        &store,
        Backlog {
            events: 2_000,
            per_append: 20,
            accounts: 32,
            audit_every: 5,
            seed,
        },
    )
    .await;
    let log = read_all(&store).await;
    let account_events = log.iter().filter(|e| e.category() == "account").count() as i64;
    assert!(
        account_events < head,
        "the log also holds events the projection skips"
    );

    let engine = engine(&store, Registry::new().projection(AccountBalances));
    let before = engine
        .projection_status("account_balances")
        .await
        .expect("status before start");
    assert_eq!(before.head, head);
    assert_eq!(before.partitions.len(), 16);
    assert_eq!(
        before.lag_events(),
        account_events,
        "before starting, every matching event is lag"
    );
    assert!(
        before.lag_seconds() > 0.0,
        "lag in seconds is the age of the oldest unprocessed event"
    );
    assert_eq!(before.live_version, None);

    engine.start().await.expect("the engine starts");
    caught_up(&engine, "account_balances", DEADLINE).await;
    let after = engine
        .projection_status("account_balances")
        .await
        .expect("status after catching up");
    assert_eq!(after.lag_events(), 0);
    assert_eq!(after.lag_seconds(), 0.0);
    assert_eq!(after.status, ProjectionState::Running);
    assert_eq!(after.live_version, Some(1));
    engine.shutdown().await;

    // Stopped, it falls behind again by exactly what is appended.
    for n in 0..10 {
        store
            .append(AppendRequest::new(
                "account-lagging",
                ExpectedVersion::Any,
                vec![NewEvent::new("MoneyDeposited", json!({ "amount": n }))],
            ))
            .await
            .expect("appending");
    }
    let behind = engine
        .projection_status("account_balances")
        .await
        .expect("status while stopped");
    assert_eq!(behind.lag_events(), 10);
    assert!(behind.lag_seconds() > 0.0);
    let lagging = store.partition_of("account-lagging");
    for partition in &behind.partitions {
        let expected = if partition.partition == lagging {
            10
        } else {
            0
        };
        assert_eq!(
            partition.lag_events, expected,
            "lag of partition {}",
            partition.partition
        );
    }
    store.shutdown().await;
}

/// `Lane::step` applies exactly one page per call, through the same commit as a running
/// lane: driven by hand over every partition, the read model equals the fold, each step
/// moves the checkpoint by at most a batch, and a step after catching up applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_lanes_by_hand_applies_one_batch_per_step_and_reaches_the_fold() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let head = append_backlog(
        &store,
        Backlog {
            events: 600,
            per_append: 6,
            accounts: 40,
            audit_every: 5,
            seed: seed(0x0e0e_0005),
        },
    )
    .await;
    let batch_size = 7;
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(AccountBalances),
        EngineConfig {
            batch_size,
            ..engine_config()
        },
    );
    engine.create_read_models().await.expect("the read models");
    let client = connect(&db).await;
    assert!(
        read_balances(&client, "rm_account_balances")
            .await
            .is_empty(),
        "nothing applies until a lane is stepped"
    );

    let mut steps = 0;
    for partition in 0..store.partitions() as i16 {
        let lane = engine
            .lane("account_balances", partition)
            .expect("the projection is registered");
        let mut checkpoint = 0;
        loop {
            match lane.step().await.expect("a step") {
                tidemark_projections::Step::Applied {
                    events,
                    checkpoint: now,
                } => {
                    assert!(
                        (1..=batch_size).contains(&events),
                        "{events} events in one step"
                    );
                    assert!(now > checkpoint, "the checkpoint moves forward");
                    checkpoint = now;
                    steps += 1;
                }
                tidemark_projections::Step::CaughtUp { through } => {
                    assert_eq!(through, head, "caught up to the head");
                    break;
                }
                tidemark_projections::Step::Stopped => panic!("no poison event here"),
            }
        }
        assert_eq!(
            lane.step().await.expect("a step after catching up"),
            tidemark_projections::Step::CaughtUp { through: head },
            "a step after catching up applies nothing"
        );
    }
    let log = read_all(&store).await;
    let accounts = log
        .iter()
        .filter(|e| e.stream_id.starts_with("account-"))
        .count();
    assert!(
        steps >= accounts.div_ceil(batch_size),
        "{steps} steps for {accounts} events"
    );
    assert_same_rows(
        "balances after stepping every partition",
        &read_balances(&client, "rm_account_balances").await,
        &tidemark_example_bank::projections::fold::balances(&log),
    );
    assert!(
        engine
            .run_until_caught_up("account_balances", DEADLINE)
            .await
            .expect("status"),
        "the checkpoints the steps wrote say the projection is caught up"
    );
    store.shutdown().await;
}

/// Totals per customer over orders from many streams, grouped by the `customer` field: each
/// event is recorded with the order it was applied in, and a customer's running total row
/// is shared by all of that customer's streams.
#[derive(Default)]
struct CustomerTotals {
    /// When set, every fifth batch fails transiently after its writes (counted here): the
    /// lane rolls back and restarts from its checkpoint, rejoining its group's shared read
    /// behind the other lanes.
    flaky: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    batches: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Projection for CustomerTotals {
    fn name(&self) -> &str {
        "customer_totals"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["order"])
    }

    fn grouping(&self) -> tidemark_projections::Grouping {
        tidemark_projections::Grouping::ByKey(tidemark_projections::windowing::KeySource::Payload(
            tidemark_projections::windowing::FieldPath::field("customer"),
        ))
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {} (seq bigserial PRIMARY KEY, customer text NOT NULL, position bigint NOT NULL UNIQUE);
                 CREATE TABLE {} (customer text PRIMARY KEY, total bigint NOT NULL, last_position bigint NOT NULL);",
                ctx.table("applied"),
                ctx.table("totals")
            ))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            let customer = event.payload["customer"].as_str().unwrap_or_default();
            let amount = event.payload["amount"].as_i64().unwrap_or_default();
            ctx.tx
                .execute(
                    &format!(
                        "INSERT INTO {} (customer, position) VALUES ($1, $2)",
                        ctx.table("applied")
                    ),
                    &[&customer, &event.position],
                )
                .await?;
            ctx.tx
                .execute(
                    &format!(
                        "INSERT INTO {} AS t (customer, total, last_position) VALUES ($1, $2, $3)
                         ON CONFLICT (customer) DO UPDATE SET total = t.total + $2, last_position = $3",
                        ctx.table("totals")
                    ),
                    &[&customer, &amount, &event.position],
                )
                .await?;
        }
        if let Some(failures) = &self.flaky {
            if self.batches.fetch_add(1, Ordering::SeqCst) % 5 == 4 {
                failures.fetch_add(1, Ordering::SeqCst);
                return Err(ProjectionError::transient("a deliberate transient failure"));
            }
        }
        Ok(())
    }
}

/// Grouping by key: every event of one customer, whatever order stream it is in, is applied
/// by one lane in log order (so the shared total row is never updated by two partitions at
/// once, the pattern that deadlocks when grouped by stream); each event once; an event
/// without a customer is parked; waits and lag account for lanes that read every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_grouped_by_key_are_applied_by_one_lane_in_log_order_across_streams() {
    customer_totals_apply_each_keyed_event_once_in_log_order(CustomerTotals::default()).await;
}

/// The lanes of a keyed projection share one read per process; a lane that fails and
/// restarts from its checkpoint rejoins that read behind the others, which then receive
/// events they already applied. Each event is still applied once, in log order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_lanes_restarting_behind_their_shared_read_apply_each_event_once_in_order() {
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    customer_totals_apply_each_keyed_event_once_in_log_order(CustomerTotals {
        flaky: Some(failures.clone()),
        ..CustomerTotals::default()
    })
    .await;
    assert!(
        failures.load(Ordering::SeqCst) >= 3,
        "lanes must have restarted behind the shared read"
    );
}

async fn customer_totals_apply_each_keyed_event_once_in_log_order(projection: CustomerTotals) {
    let seed = seed(0x0e0e_0006);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(projection),
        EngineConfig {
            batch_size: 16,
            max_attempts: 2,
            ..engine_config()
        },
    );
    engine.start().await.expect("the engine starts");
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ writer);
                for i in 0..120 {
                    let stream = format!("order-{}", rng.random_range(0..200));
                    let payload = if writer == 0 && i % 40 == 7 {
                        json!({ "amount": 1 })
                    } else {
                        json!({
                            "customer": format!("c-{}", rng.random_range(0..6)),
                            "amount": rng.random_range(1..100),
                        })
                    };
                    store
                        .append(AppendRequest::new(
                            stream,
                            ExpectedVersion::Any,
                            vec![NewEvent::new("OrderPlaced", payload)],
                        ))
                        .await
                        .expect("appending");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
    caught_up(&engine, "customer_totals", DEADLINE).await;
    let status = engine
        .projection_status("customer_totals")
        .await
        .expect("status");
    assert_eq!(status.lag_events(), 0, "{status:?}");
    engine.shutdown().await;

    let log = read_all(&store).await;
    let client = connect(&db).await;
    let applied: Vec<(String, i64)> = client
        .query(
            "SELECT customer, position FROM rm_customer_totals.applied ORDER BY seq",
            &[],
        )
        .await
        .expect("reading what was applied")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let keyed: Vec<&RecordedEvent> = log
        .iter()
        .filter(|e| e.payload.get("customer").is_some())
        .collect();
    assert_eq!(applied.len(), keyed.len(), "each keyed event applied once");
    let streams_per_customer = |c: &str| {
        keyed
            .iter()
            .filter(|e| e.payload["customer"] == c)
            .map(|e| e.stream_id.clone())
            .collect::<BTreeSet<_>>()
            .len()
    };
    for customer in (0..6).map(|c| format!("c-{c}")) {
        let positions: Vec<i64> = applied
            .iter()
            .filter(|(c, _)| *c == customer)
            .map(|(_, p)| *p)
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{customer}'s events were applied out of log order: {positions:?}"
        );
        assert!(
            streams_per_customer(&customer) > 1,
            "{customer} spans streams"
        );
    }
    let totals: i64 = client
        .query_one(
            "SELECT sum(total)::bigint FROM rm_customer_totals.totals",
            &[],
        )
        .await
        .expect("totals")
        .get(0);
    let expected: i64 = keyed
        .iter()
        .map(|e| e.payload["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(totals, expected);
    let parked = engine
        .dead_letters(Some("customer_totals"), false)
        .await
        .expect("dead letters");
    assert_eq!(
        parked.len(),
        log.len() - keyed.len(),
        "each event without a customer is parked: {parked:?}"
    );
    assert!(
        parked.iter().all(|p| p.error.contains("no key")),
        "{parked:?}"
    );
    store.shutdown().await;
}

/// A handler of one busy stream that takes a while per event; it counts calls in flight.
struct SlowMailer {
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    handled: std::sync::Arc<std::sync::Mutex<Vec<uuid::Uuid>>>,
}

#[async_trait]
impl tidemark_projections::Handler for SlowMailer {
    fn name(&self) -> &str {
        "slow_mailer"
    }

    fn grouping(&self) -> tidemark_projections::Grouping {
        tidemark_projections::Grouping::Shuffle
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.handled.lock().unwrap().push(event.event_id);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Shuffle grouping: the events of one stream (one partition, one lane if grouped by stream)
/// are spread over the lanes by event id, so several are handled at once, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shuffled_handler_spreads_one_streams_events_over_its_lanes() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let events: Vec<NewEvent> = (0..120)
        .map(|i| NewEvent::new("MailRequested", json!({ "n": i })))
        .collect();
    store
        .append(AppendRequest::new(
            "mailbox-1",
            ExpectedVersion::Any,
            events,
        ))
        .await
        .expect("appending one stream");
    let mailer = SlowMailer {
        in_flight: Default::default(),
        max_in_flight: Default::default(),
        handled: Default::default(),
    };
    let (max_in_flight, handled) = (mailer.max_in_flight.clone(), mailer.handled.clone());
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().handler(mailer),
        engine_config(),
    );
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "slow_mailer", DEADLINE).await;
    engine.shutdown().await;

    let handled = handled.lock().unwrap().clone();
    let distinct: BTreeSet<_> = handled.iter().collect();
    assert_eq!(distinct.len(), 120, "every event handled");
    assert_eq!(handled.len(), 120, "each once (no failures were injected)");
    assert!(
        max_in_flight.load(Ordering::SeqCst) > 1,
        "one stream's events were handled one at a time: not spread over lanes"
    );
    store.shutdown().await;
}

/// The lease loop renews on connections of its own and runs no lag query: with every
/// connection of the store's pool held (as lanes blocked on locks, or a database too busy
/// to count a backlog quickly, would hold them) for several lease periods, every lease
/// stays renewed and no lane is fenced. Before the scaling figures moved off the lease loop
/// onto their own task, this lost every lease: the loop waited for a pooled connection to
/// count backlogs and renewed nothing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_stay_renewed_while_every_pooled_connection_is_held() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(AccountBalances),
        crash_engine_config(),
    );
    engine.start().await.expect("the engine starts");
    let observer = connect(&db).await;
    let me = engine.worker_id();
    let held_by_me = || async {
        observer
            .query_one(
                "SELECT count(*) FILTER (WHERE owner = $1 AND expires_at > now()), count(*),
                        coalesce(sum(epoch), 0)::bigint
                   FROM projection_leases WHERE projection = 'account_balances'",
                &[&me],
            )
            .await
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)))
            .expect("reading the leases")
    };
    let epochs =
        tidemark_testkit::eventually("the engine holds every partition", DEADLINE, || async {
            let (mine, all, epochs) = held_by_me().await;
            (all > 0 && mine == all).then_some(epochs)
        })
        .await;

    let pool = store.pool();
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        held.push(pool.get().await.expect("a pooled connection"));
    }
    assert_eq!(
        pool.status().available,
        0,
        "every pooled connection is held"
    );
    let hold_until = tokio::time::Instant::now() + LEASE_TTL * 4;
    let mut checks = 0;
    while tokio::time::Instant::now() < hold_until {
        let (mine, all, _) = held_by_me().await;
        assert_eq!(
            mine,
            all,
            "with the pool exhausted, {} of {all} leases expired after {checks} checks",
            all - mine
        );
        checks += 1;
        tokio::time::sleep(LEASE_TTL / 10).await;
    }
    drop(held);
    let (mine, all, epochs_after) = held_by_me().await;
    assert_eq!(mine, all);
    assert_eq!(
        epochs_after, epochs,
        "no partition changed owner while the pool was exhausted"
    );
    engine.shutdown().await;
    store.shutdown().await;
}
