//! Replay (docs/design.md §11): a projection is rebuilt from 0, replayed from a position P, or
//! built as of P, into its own copy of the read model; rebuilds and replays swap in
//! atomically while the live read model keeps serving; a bumped version rebuilds on start.

use crate::common;

use async_trait::async_trait;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_example_bank::projections::{fold, AccountBalances};
use tidemark_projections::{
    ApplyContext, BuildKind, BuildRequest, BuildStatus, EngineError, EventSelector, Projection,
    ProjectionError, ProjectionState, RecordedEvent, Registry,
};
use tidemark_store::{AppendRequest, ExpectedVersion, Position};
use tidemark_testkit::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_while_appends_continue_swaps_in_the_fold_and_the_live_model_answers_throughout()
{
    let seed = seed(0x0b0b_0001);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_backlog(
        &store,
        Backlog {
            events: 8_000,
            per_append: 100,
            accounts: 100,
            audit_every: 10,
            seed,
        },
    )
    .await;
    let engine = engine(&store, Registry::new().projection(AccountBalances));
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "account_balances", BACKLOG_DEADLINE).await;

    // A reader queries the live read model in a loop, on a connection of its own, and
    // checks each answer: never an error, and the number of events reflected never falls.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let client = connect(&db).await;
        let (stop, reads) = (stop.clone(), reads.clone());
        tokio::spawn(async move {
            let mut last = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(events), 0)::bigint FROM rm_account_balances.balances",
                        &[],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("the live read model must answer: {e:?}"));
                let events: i64 = row.get(0);
                assert!(
                    events >= last,
                    "the live read model went back from {last} to {events} events"
                );
                last = events;
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // A writer keeps appending small batches, with short pauses, until told to stop.
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let mut appended = 0;
            while !stop.load(Ordering::SeqCst) {
                let stream = format!("account-{}", appended % 150);
                let events = bank_events(&mut rng, &stream, 10, false);
                store
                    .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
                    .await
                    .expect("appending during the rebuild");
                appended += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            appended
        })
    };

    let reads_before = reads.load(Ordering::SeqCst);
    let report = engine
        .rebuild("account_balances", None)
        .await
        .expect("the rebuild");
    let reads_during = reads.load(Ordering::SeqCst) - reads_before;
    wait_until("appends go on after the swap", DEADLINE, || async {
        store.head_position().await.unwrap() > report.position
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let appended = writer.await.expect("the writer");
    reader
        .await
        .expect("the reader saw no error and no regression");
    println!(
        "rebuilt {} events in {:?}; {appended} appends and {reads_during} reads meanwhile",
        report.events_applied, report.took
    );
    assert!(appended > 0, "appends continued during the rebuild");
    assert!(reads_during > 0, "the reader read during the rebuild");
    assert_eq!(report.schema, "rm_account_balances");

    caught_up(&engine, "account_balances", DEADLINE).await;
    let log = read_all(&store).await;
    assert_same_rows(
        "account balances after a rebuild",
        &read_balances(&connect(&db).await, "rm_account_balances").await,
        &fold::balances(&log),
    );
    let status = engine.projection_status("account_balances").await.unwrap();
    let rebuild = status.last_rebuild.expect("the rebuild is recorded");
    assert_eq!(
        (rebuild.kind, rebuild.status),
        (BuildKind::Rebuild, BuildStatus::Done)
    );
    assert!(rebuild.events_done > 0);
    engine.shutdown().await;
    store.shutdown().await;
}

/// The log of a fresh database with a seeded backlog, and the engine (caught up) over it.
async fn caught_up_bank(
    db: &TestDatabase,
    seed: u64,
) -> (
    tidemark_store::EventStore,
    tidemark_projections::ProjectionEngine,
    Vec<RecordedEvent>,
) {
    let store = open_store(db).await;
    append_backlog(
        &store,
        Backlog {
            events: 6_000,
            per_append: 50,
            accounts: 60,
            audit_every: 7,
            seed,
        },
    )
    .await;
    let engine = engine(&store, Registry::new().projection(AccountBalances));
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "account_balances", BACKLOG_DEADLINE).await;
    let log = read_all(&store).await;
    (store, engine, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_from_the_events_after_a_position_equals_their_fold_alone() {
    let db = TestDatabase::create().await;
    let (store, engine, log) = caught_up_bank(&db, seed(0x0b0b_0002)).await;
    // Mid-append, so the cut falls between events of one append.
    let from: Position = 2_525;
    let report = engine
        .rebuild_from_events_after("account_balances", from, None)
        .await
        .expect("the build from the events after 2525");
    assert_eq!(report.position, log.last().unwrap().position);
    let after = |log: &[RecordedEvent]| {
        fold::balances(log.iter().filter(|e| e.position > from).collect::<Vec<_>>())
    };
    let client = connect(&db).await;
    assert_same_rows(
        "balances replayed from 2525",
        &read_balances(&client, "rm_account_balances").await,
        &after(&log),
    );

    // The live lanes go on from the swap.
    append_backlog(
        &store,
        Backlog {
            events: 500,
            per_append: 10,
            accounts: 80,
            audit_every: 0,
            seed: 9,
        },
    )
    .await;
    caught_up(&engine, "account_balances", DEADLINE).await;
    assert_same_rows(
        "balances replayed from 2525, then live",
        &read_balances(&client, "rm_account_balances").await,
        &after(&read_all(&store).await),
    );
    engine.shutdown().await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_as_of_build_equals_the_fold_of_the_events_up_to_its_position() {
    let db = TestDatabase::create().await;
    let (store, engine, log) = caught_up_bank(&db, seed(0x0b0b_0003)).await;
    let client = connect(&db).await;
    // One cut mid-append; one on an event the projection skips (an audit event), so the
    // build must stop at the position rather than at the last event it applies.
    let audit = log
        .iter()
        .find(|e| e.category() == "audit" && e.position > 4_000)
        .expect("an audit event")
        .position;
    for (label, position) in [("mid", 3_333), ("audit", audit)] {
        let report = engine
            .build_as_of("account_balances", position, label, None)
            .await
            .expect("the as-of build");
        let schema = format!("rm_account_balances__asof_{label}");
        assert_eq!(report.schema, schema);
        assert_eq!(report.position, position);
        assert_same_rows(
            &format!("balances as of {position}"),
            &read_balances(&client, &schema).await,
            &fold::balances(log.iter().filter(|e| e.position <= position)),
        );
    }
    assert_same_rows(
        "the live balances, untouched",
        &read_balances(&client, "rm_account_balances").await,
        &fold::balances(&log),
    );
    engine.shutdown().await;
    store.shutdown().await;
}

/// `AccountBalances` under its own name at a chosen version; its read model also records
/// the version that built it.
struct Versioned(i32);

#[async_trait]
impl Projection for Versioned {
    fn name(&self) -> &str {
        "versioned_balances"
    }

    fn version(&self) -> i32 {
        self.0
    }

    fn selector(&self) -> EventSelector {
        AccountBalances.selector()
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        AccountBalances.setup(ctx).await?;
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {0} (version integer NOT NULL); INSERT INTO {0} VALUES ({1})",
                ctx.table("built_by"),
                self.0
            ))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        AccountBalances.apply(ctx, events).await
    }
}

async fn built_by(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT version FROM rm_versioned_balances.built_by", &[])
        .await
        .expect("reading built_by")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bumping_a_projections_version_rebuilds_its_read_model_on_start() {
    let seed = seed(0x0b0b_0004);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let backlog = |events, seed| Backlog {
        events,
        per_append: 50,
        accounts: 40,
        audit_every: 5,
        seed,
    };
    append_backlog(&store, backlog(3_000, seed)).await;
    let client = connect(&db).await;

    let v1 = engine(&store, Registry::new().projection(Versioned(1)));
    v1.start().await.expect("version 1 starts");
    caught_up(&v1, "versioned_balances", DEADLINE).await;
    v1.shutdown().await;
    assert_eq!(built_by(&client).await, 1);

    // More events while nothing runs, then version 2.
    append_backlog(&store, backlog(1_000, seed + 1)).await;
    let v2 = engine(&store, Registry::new().projection(Versioned(2)));
    let status = v2.projection_status("versioned_balances").await.unwrap();
    assert_eq!((status.version, status.live_version), (2, Some(1)));
    v2.start().await.expect("version 2 starts");
    wait_until("version 2 is live", DEADLINE, || async {
        v2.projection_status("versioned_balances")
            .await
            .unwrap()
            .live_version
            == Some(2)
    })
    .await;
    caught_up(&v2, "versioned_balances", DEADLINE).await;

    assert_eq!(
        built_by(&client).await,
        2,
        "the read model was rebuilt by v2"
    );
    let status = v2.projection_status("versioned_balances").await.unwrap();
    assert_eq!(status.status, ProjectionState::Running);
    let rebuild = status.last_rebuild.expect("the rebuild is recorded");
    assert_eq!(
        (rebuild.kind, rebuild.status),
        (BuildKind::Rebuild, BuildStatus::Done)
    );
    // And it keeps running live after the swap.
    append_backlog(&store, backlog(500, seed + 2)).await;
    caught_up(&v2, "versioned_balances", DEADLINE).await;
    assert_same_rows(
        "balances rebuilt by version 2",
        &read_balances(&client, "rm_versioned_balances").await,
        &fold::balances(&read_all(&store).await),
    );
    v2.shutdown().await;
    store.shutdown().await;
}

/// The build lock is taken before a build starts, in any process: while one rebuild holds
/// it, a second is refused with `BuildRunning` at once (not after a racy status check), a
/// build of another target (an as-of label) is not, and the lock frees when the build ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_build_of_the_same_target_is_refused_while_the_first_holds_its_lock() {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_backlog(
        &store,
        Backlog {
            events: 200,
            per_append: 10,
            accounts: 10,
            audit_every: 0,
            seed: 3,
        },
    )
    .await;
    let first_engine = engine(&store, Registry::new().projection(AccountBalances));
    first_engine.start().await.expect("the engine starts");
    // A second process's engine over the same database.
    let other_store = open_store(&db).await;
    let other_engine = engine(&other_store, Registry::new().projection(AccountBalances));

    let first = first_engine
        .prepare_build("account_balances", BuildRequest::Rebuild)
        .await
        .expect("the first build takes the lock");
    for request in [BuildRequest::Rebuild, BuildRequest::FromEventsAfter(50)] {
        match other_engine
            .prepare_build("account_balances", request.clone())
            .await
        {
            Err(EngineError::BuildRunning { projection, .. }) => {
                assert_eq!(projection, "account_balances")
            }
            Err(other) => panic!("{request:?}: expected BuildRunning, got {other}"),
            Ok(_) => panic!("{request:?}: a second shadow build started beside the first"),
        }
    }
    let as_of = other_engine
        .prepare_build(
            "account_balances",
            BuildRequest::AsOf {
                position: 100,
                label: "audit".into(),
            },
        )
        .await
        .expect("an as-of build has a target of its own");
    drop(as_of);

    let report = first.run(None).await.expect("the first build");
    assert_eq!(report.schema, "rm_account_balances");
    other_engine
        .prepare_build("account_balances", BuildRequest::Rebuild)
        .await
        .expect("the lock is free once the first build ended");
    first_engine.shutdown().await;
    store.shutdown().await;
    other_store.shutdown().await;
}
