//! Failures (docs/design.md §12): an event that keeps failing is retried, then parked in the
//! dead-letter table with its error; the partition goes on (or stops, per policy); a parked
//! event replays once. And a side-effect handler delivers at least once and records once.

use crate::common;

use async_trait::async_trait;
use common::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_example_bank::projections::{AlertSink, LargeWithdrawalAlerts};
use tidemark_projections::{
    EngineConfig, EventSelector, FailurePolicy, Handler, ProjectionEngine, ProjectionError,
    ProjectionState, RecordedEvent, Registry,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, Position};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

/// Three attempts, 10 ms apart at first.
fn poison_config() -> EngineConfig {
    EngineConfig {
        max_attempts: 3,
        retry_base: Duration::from_millis(10),
        ..engine_config()
    }
}

/// Appends `n` deposits to `stream`, one per append; returns the appended events' ids and
/// positions.
async fn deposits(store: &EventStore, stream: &str, n: usize) -> Vec<(Uuid, Position)> {
    let mut out = Vec::new();
    for i in 0..n {
        let outcome = store
            .append(AppendRequest::new(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("MoneyDeposited", json!({ "amount": i + 1 }))],
            ))
            .await
            .expect("appending");
        out.extend(outcome.events.iter().map(|e| (e.event_id, e.position)));
    }
    out
}

/// A stream in a partition other than `partition`.
fn stream_outside(store: &EventStore, partition: i16) -> String {
    (0..)
        .map(|n| format!("account-elsewhere{n}"))
        .find(|s| store.partition_of(s) != partition)
        .expect("some stream lands in another partition")
}

/// A stream in `partition`, other than `not`.
fn stream_inside(store: &EventStore, partition: i16, not: &str) -> String {
    (0..)
        .map(|n| format!("account-neighbour{n}"))
        .find(|s| store.partition_of(s) == partition && s != not)
        .expect("some stream lands in the partition")
}

/// Rows of `applied` for the event at `position`.
fn times_applied(applied: &[Applied], position: Position) -> usize {
    applied.iter().filter(|a| a.position == position).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_parked_after_its_attempts_the_partition_goes_on_and_it_replays_once() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let poisoned_stream = "account-poisoned";
    let partition = store.partition_of(poisoned_stream);
    let neighbour = stream_inside(&store, partition, poisoned_stream);
    let elsewhere = stream_outside(&store, partition);
    deposits(&store, &elsewhere, 20).await;
    let poisoned = deposits(&store, poisoned_stream, 5).await;
    deposits(&store, &neighbour, 5).await;
    deposits(&store, &elsewhere, 20).await;
    let (poison, poison_position) = poisoned[2];

    let mut recorder = Recorder::new("poison_continue");
    recorder.poison = Some(poison);
    recorder.broken.store(true, Ordering::SeqCst);
    let broken = recorder.broken.clone();
    let stats = recorder.stats.clone();
    let engine = ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(recorder),
        poison_config(),
    );
    engine.start().await.expect("the engine starts");
    // Parked, the poison event no longer holds the partition: it catches up.
    caught_up(&engine, "poison_continue", DEADLINE).await;

    let parked = engine
        .dead_letters(Some("poison_continue"), false)
        .await
        .expect("listing dead letters");
    assert_eq!(
        parked.len(),
        1,
        "exactly the poison event is parked: {parked:?}"
    );
    let letter = &parked[0];
    assert_eq!(letter.event_id, poison);
    assert_eq!(letter.position, poison_position);
    assert_eq!(letter.partition, partition);
    assert_eq!(letter.attempts, 3, "parked after max_attempts attempts");
    assert!(
        letter
            .error
            .contains("poisoned: refusing event 2 of account-poisoned"),
        "the dead letter carries the error: {}",
        letter.error
    );
    assert!(stats.poison_attempts.load(Ordering::SeqCst) >= 3);
    let status = engine.projection_status("poison_continue").await.unwrap();
    assert_eq!(status.parked, 1);
    assert_eq!(status.status, ProjectionState::Running);

    let client = connect(&db).await;
    let log = read_all(&store).await;
    let applied = read_applied(&client, "rm_poison_continue").await;
    assert_eq!(times_applied(&applied, poison_position), 0);
    let without_poison: Vec<RecordedEvent> = log
        .iter()
        .filter(|e| e.event_id != poison)
        .cloned()
        .collect();
    assert_each_once_in_stream_order(&applied, &without_poison);
    assert!(
        applied
            .iter()
            .any(|a| a.partition == partition && a.position > poison_position),
        "later events of the poisoned partition are applied"
    );

    // Fixed, the parked event replays once; a second replay has nothing to do.
    broken.store(false, Ordering::SeqCst);
    let replayed = engine
        .replay_parked("poison_continue", None)
        .await
        .expect("replaying the parked event");
    assert_eq!(replayed, 1);
    let applied = read_applied(&client, "rm_poison_continue").await;
    assert_eq!(times_applied(&applied, poison_position), 1);
    assert_eq!(applied.len(), log.len());
    assert!(engine
        .dead_letters(Some("poison_continue"), false)
        .await
        .unwrap()
        .is_empty());
    let history = engine
        .dead_letters(Some("poison_continue"), true)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert!(
        history[0].replayed_at.is_some(),
        "the letter is marked replayed"
    );

    let again = engine
        .replay_parked("poison_continue", None)
        .await
        .expect("replaying again");
    assert_eq!(again, 0, "a second replay applies nothing");
    assert_eq!(read_applied(&client, "rm_poison_continue").await, applied);
    assert_eq!(
        engine
            .projection_status("poison_continue")
            .await
            .unwrap()
            .parked,
        0
    );
    engine.shutdown().await;
    store.shutdown().await;
}

/// A projection's SQL that fails in the client, without a server answer (a parameter of the
/// wrong type), is the projection's bug, not a passing problem: it counts as an attempt and
/// is parked like any failure, instead of being retried forever while the partition stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projection_sql_error_without_a_server_answer_is_parked_not_retried_forever() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let poisoned = deposits(&store, "account-typo", 3).await;
    let (poison, poison_position) = poisoned[1];

    let mut recorder = Recorder::new("wrong_type");
    recorder.poison = Some(poison);
    recorder.poison_kind = PoisonKind::WrongParameterType;
    recorder.broken.store(true, Ordering::SeqCst);
    let engine = ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(recorder),
        poison_config(),
    );
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "wrong_type", DEADLINE).await;
    let parked = engine
        .dead_letters(Some("wrong_type"), false)
        .await
        .expect("listing dead letters");
    assert_eq!(parked.len(), 1, "the event is parked: {parked:?}");
    assert_eq!(parked[0].position, poison_position);
    assert_eq!(parked[0].attempts, 3, "parked after max_attempts attempts");
    assert!(
        parked[0].error.contains("type"),
        "the dead letter says what was wrong: {}",
        parked[0].error
    );
    engine.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn park_and_stop_halts_the_partition_until_the_parked_event_is_replayed() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let poisoned_stream = "account-poisoned";
    let partition = store.partition_of(poisoned_stream);
    let neighbour = stream_inside(&store, partition, poisoned_stream);
    let elsewhere = stream_outside(&store, partition);
    deposits(&store, &elsewhere, 10).await;
    let poisoned = deposits(&store, poisoned_stream, 5).await;
    deposits(&store, &neighbour, 5).await;
    deposits(&store, &elsewhere, 10).await;
    let (poison, poison_position) = poisoned[2];

    let mut recorder = Recorder::new("poison_stop");
    recorder.policy = FailurePolicy::ParkAndStop;
    recorder.poison = Some(poison);
    recorder.broken.store(true, Ordering::SeqCst);
    let broken = recorder.broken.clone();
    let engine = ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(recorder),
        poison_config(),
    );
    engine.start().await.expect("the engine starts");
    wait_until("the poison event is parked", DEADLINE, || async {
        engine
            .dead_letters(Some("poison_stop"), false)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    assert_eq!(
        engine
            .projection_status("poison_stop")
            .await
            .unwrap()
            .status,
        ProjectionState::Stopped
    );

    // While stopped, new events reach the other partitions but not this one.
    let late_here = deposits(&store, poisoned_stream, 1).await[0].1;
    let late_elsewhere = deposits(&store, &elsewhere, 1).await[0].1;
    let client = connect(&db).await;
    wait_until(
        "the other partitions apply a new event",
        DEADLINE,
        || async {
            times_applied(
                &read_applied(&client, "rm_poison_stop").await,
                late_elsewhere,
            ) == 1
        },
    )
    .await;
    let applied = read_applied(&client, "rm_poison_stop").await;
    let log = read_all(&store).await;
    for event in &log {
        let expected =
            usize::from(event.partition != partition || event.position < poison_position);
        assert_eq!(
            times_applied(&applied, event.position),
            expected,
            "event {} of {} (partition {}, poison at {poison_position} in partition {partition})",
            event.stream_version,
            event.stream_id,
            event.partition
        );
    }
    assert_eq!(times_applied(&applied, late_here), 0);

    // Fixed and replayed: the poison event applies once, then the partition resumes after
    // it, and every event is applied exactly once, each stream in order.
    broken.store(false, Ordering::SeqCst);
    assert_eq!(engine.replay_parked("poison_stop", None).await.unwrap(), 1);
    caught_up(&engine, "poison_stop", DEADLINE).await;
    let applied = read_applied(&client, "rm_poison_stop").await;
    assert_each_once_in_stream_order(&applied, &log);
    assert_eq!(engine.replay_parked("poison_stop", None).await.unwrap(), 0);
    let status = engine.projection_status("poison_stop").await.unwrap();
    assert_eq!(status.status, ProjectionState::Running);
    assert_eq!(status.parked, 0);
    engine.shutdown().await;
    assert_eq!(read_applied(&client, "rm_poison_stop").await, applied);
    store.shutdown().await;
}

/// `ParkAndStop`, then a fix and a restart: the resumed lane applies the parked event itself
/// (its checkpoint was still before it) and marks it resolved in the same transaction, so a
/// later replay applies nothing: the event is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_event_the_lane_applies_after_a_restart_is_not_replayed_again() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let poisoned = deposits(&store, "account-poisoned", 3).await;
    let (poison, poison_position) = poisoned[1];

    let start = |broken: bool| {
        let mut recorder = Recorder::new("stop_then_fix");
        recorder.policy = FailurePolicy::ParkAndStop;
        recorder.poison = Some(poison);
        recorder.broken.store(broken, Ordering::SeqCst);
        ProjectionEngine::new(
            store.clone(),
            Registry::new().projection(recorder),
            poison_config(),
        )
    };
    let engine = start(true);
    engine.start().await.expect("the engine starts");
    wait_until("the poison event is parked", DEADLINE, || async {
        engine
            .dead_letters(Some("stop_then_fix"), false)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    engine.shutdown().await;

    // The fixed build starts; the stopped partition resumes at the parked event.
    let engine = start(false);
    engine.start().await.expect("the fixed engine starts");
    let client = connect(&db).await;
    wait_until(
        "the resumed lane applies the parked event",
        DEADLINE,
        || async {
            times_applied(
                &read_applied(&client, "rm_stop_then_fix").await,
                poison_position,
            ) == 1
        },
    )
    .await;
    caught_up(&engine, "stop_then_fix", DEADLINE).await;
    assert!(
        engine
            .dead_letters(Some("stop_then_fix"), false)
            .await
            .unwrap()
            .is_empty(),
        "the letter the lane applied is no longer pending"
    );
    assert_eq!(
        engine.replay_parked("stop_then_fix", None).await.unwrap(),
        0,
        "a replay has nothing left to apply"
    );
    let applied = read_applied(&client, "rm_stop_then_fix").await;
    assert_each_once_in_stream_order(&applied, &read_all(&store).await);
    engine.shutdown().await;
    store.shutdown().await;
}

/// Records every alert it is sent, duplicates included.
#[derive(Default)]
struct RecordingSink {
    alerts: Mutex<Vec<String>>,
}

impl RecordingSink {
    fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for id in self.alerts.lock().unwrap().iter() {
            *out.entry(id.clone()).or_default() += 1;
        }
        out
    }
}

#[async_trait]
impl AlertSink for RecordingSink {
    async fn send(&self, alert_id: String, _account: &str, _amount: i64) -> Result<(), String> {
        self.alerts.lock().unwrap().push(alert_id);
        Ok(())
    }
}

/// `LargeWithdrawalAlerts` that crashes once on each of `crash_on`: after the alert is
/// sent, before the handler's transaction commits.
struct CrashingAlerts {
    inner: LargeWithdrawalAlerts,
    crash_on: HashSet<Uuid>,
    crashed: Mutex<HashSet<Uuid>>,
}

#[async_trait]
impl Handler for CrashingAlerts {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn selector(&self) -> EventSelector {
        self.inner.selector()
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        self.inner.handle(event).await?;
        if self.crash_on.contains(&event.event_id)
            && self.crashed.lock().unwrap().insert(event.event_id)
        {
            return Err(ProjectionError::transient(
                "injected: crashed after sending the alert, before the commit",
            ));
        }
        Ok(())
    }
}

const THRESHOLD: i64 = 40_000;

fn is_large_withdrawal(event: &RecordedEvent) -> bool {
    event.event_type == "MoneyWithdrawn"
        && event.payload["amount"].as_i64().unwrap_or(0) >= THRESHOLD
}

async fn dedup_rows(client: &tokio_postgres::Client) -> Vec<Uuid> {
    client
        .query(
            "SELECT event_id FROM handler_dedup WHERE handler = 'large_withdrawal_alerts'",
            &[],
        )
        .await
        .expect("reading handler_dedup")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_withdrawals_are_alerted_at_least_once_and_recorded_once_across_crashes() {
    let seed = seed(0x0e0e_0004);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_backlog(
        &store,
        Backlog {
            events: 3_000,
            per_append: 10,
            accounts: 40,
            audit_every: 0,
            seed,
        },
    )
    .await;
    let log = read_all(&store).await;
    let large: Vec<&RecordedEvent> = log.iter().filter(|e| is_large_withdrawal(e)).collect();
    let crash_on: HashSet<Uuid> = large.iter().step_by(5).map(|e| e.event_id).collect();
    assert!(large.len() > 50 && crash_on.len() > 10);

    let sink = Arc::new(RecordingSink::default());
    let alerts = |sink: &Arc<RecordingSink>| LargeWithdrawalAlerts {
        threshold: THRESHOLD,
        sink: sink.clone(),
    };
    let engine = engine(
        &store,
        Registry::new().handler(CrashingAlerts {
            inner: alerts(&sink),
            crash_on: crash_on.clone(),
            crashed: Mutex::default(),
        }),
    );
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "large_withdrawal_alerts", DEADLINE).await;
    engine.shutdown().await;

    let delivered = sink.deliveries();
    for event in &large {
        let id = event.event_id.to_string();
        let times = delivered.get(&id).copied().unwrap_or(0);
        assert!(times >= 1, "large withdrawal {id} must be alerted");
        if crash_on.contains(&event.event_id) {
            assert!(
                times >= 2,
                "{id} crashed before its commit, so it must be alerted again"
            );
        }
    }
    let large_ids: BTreeSet<String> = large.iter().map(|e| e.event_id.to_string()).collect();
    let extra: Vec<_> = delivered
        .keys()
        .filter(|id| !large_ids.contains(*id))
        .collect();
    assert!(
        extra.is_empty(),
        "only large withdrawals are alerted: {extra:?}"
    );

    // The handler records every withdrawal it has handled, exactly once.
    let client = connect(&db).await;
    let recorded = dedup_rows(&client).await;
    let withdrawals: BTreeSet<Uuid> = log
        .iter()
        .filter(|e| e.event_type == "MoneyWithdrawn")
        .map(|e| e.event_id)
        .collect();
    assert_eq!(recorded.len(), withdrawals.len());
    assert_eq!(recorded.into_iter().collect::<BTreeSet<_>>(), withdrawals);

    // After a restart, only new withdrawals are alerted, each once.
    let before = sink.alerts.lock().unwrap().len();
    let engine = tidemark_projections::ProjectionEngine::new(
        store.clone(),
        Registry::new().handler(alerts(&sink)),
        engine_config(),
    );
    let mut new_large = BTreeSet::new();
    for amount in [THRESHOLD, 100, THRESHOLD + 5, 7, THRESHOLD * 2] {
        let outcome = store
            .append(AppendRequest::new(
                "account-after-restart",
                ExpectedVersion::Any,
                vec![NewEvent::new("MoneyWithdrawn", json!({ "amount": amount }))],
            ))
            .await
            .expect("appending");
        if amount >= THRESHOLD {
            new_large.insert(outcome.events[0].event_id.to_string());
        }
    }
    engine.start().await.expect("the engine restarts");
    caught_up(&engine, "large_withdrawal_alerts", DEADLINE).await;
    let after_restart: Vec<String> = sink.alerts.lock().unwrap()[before..].to_vec();
    assert_eq!(
        after_restart.iter().cloned().collect::<BTreeSet<_>>(),
        new_large
    );
    assert_eq!(after_restart.len(), new_large.len(), "each once");

    // Even reprocessing the whole log (a rebuild) alerts nothing already recorded.
    let before = sink.alerts.lock().unwrap().len();
    engine
        .rebuild("large_withdrawal_alerts", None)
        .await
        .expect("replaying the handler from 0");
    assert_eq!(
        sink.alerts.lock().unwrap()[before..].to_vec(),
        Vec::<String>::new(),
        "a recorded event is never alerted again"
    );
    assert_eq!(dedup_rows(&client).await.len(), withdrawals.len() + 5);
    engine.shutdown().await;
    store.shutdown().await;
}
