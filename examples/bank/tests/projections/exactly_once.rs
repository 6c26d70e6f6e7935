//! Exactly-once for Postgres read models (docs/design.md §8, §9): a batch's read-model
//! writes and its checkpoint commit together, so a crash anywhere re-runs the batch from the
//! last checkpoint and the read model still equals the fold of the log — row for row.
//!
//! Crashes are injected three ways in-process (an error after the batch's writes, the
//! connection dropped under the batch, the whole worker killed mid-flight), and once more
//! with a real `projector` process killed with SIGKILL (which also runs the bank's windowed
//! read models: they too equal a fresh fold of the log after the restart).

use crate::common;

use async_trait::async_trait;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_example_bank::projections::{fold, AccountBalances, BankWindows, CategoryTotals};
use tidemark_projections::{
    ApplyContext, EngineConfig, EventSelector, Projection, ProjectionEngine, ProjectionError,
    RecordedEvent, Registry,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use tidemark_testkit::TestDatabase;

/// Failures injected into [`Chaos`], shared by every incarnation of the worker.
struct ChaosState {
    rng: Mutex<StdRng>,
    /// Chance per batch of failing with a transient error after the batch's writes.
    abort_rate: f64,
    /// Chance per batch of the batch's backend terminating itself after the writes.
    terminate_rate: f64,
    aborts: AtomicUsize,
    terminations: AtomicUsize,
}

/// `AccountBalances` (same name, same read model) with failures injected after its writes,
/// so those writes must be rolled back with the uncommitted checkpoint.
struct Chaos(Arc<ChaosState>);

#[async_trait]
impl Projection for Chaos {
    fn name(&self) -> &str {
        AccountBalances.name()
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
        AccountBalances.apply(ctx, events).await?;
        let roll: f64 = self.0.rng.lock().unwrap().random();
        if roll < self.0.abort_rate {
            self.0.aborts.fetch_add(1, Ordering::SeqCst);
            return Err(ProjectionError::transient(
                "injected: aborted between apply and commit",
            ));
        }
        if roll < self.0.abort_rate + self.0.terminate_rate {
            self.0.terminations.fetch_add(1, Ordering::SeqCst);
            ctx.tx
                .execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                .await?;
            return Err(ProjectionError::failed(
                "the backend survived pg_terminate_backend",
            ));
        }
        Ok(())
    }
}

/// Small batches, so that 50,000 events make hundreds of transactions to fail in; one
/// attempt, so that a crash mistaken for a poison event (a failure rather than a transient
/// error) would be parked at once, and be missing from the read model.
fn chaos_config() -> EngineConfig {
    EngineConfig {
        batch_size: 100,
        max_attempts: 1,
        ..crash_engine_config()
    }
}

/// One life of a worker process: its own runtime on its own thread, with its own store
/// and engine. Killing it drops every task of the runtime wherever it is — between
/// batches, mid-apply, waiting for COMMIT — without any graceful shutdown.
struct Incarnation {
    kill: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Incarnation {
    fn start(db: &TestDatabase, chaos: Arc<ChaosState>) -> Incarnation {
        let pg_config = db.pg_config();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the worker");
            runtime.block_on(async move {
                let store = EventStore::open(pg_config, store_config())
                    .await
                    .expect("the worker opens the store");
                let engine = ProjectionEngine::new(
                    store,
                    Registry::new().projection(Chaos(chaos)),
                    chaos_config(),
                );
                engine.start().await.expect("the worker starts its engine");
                let _ = killed.await;
            });
            // The crash: drop every task (lanes, fetchers, connections) where it stands.
            runtime.shutdown_background();
        });
        Incarnation { kill, thread }
    }

    async fn kill(self) {
        let _ = self.kill.send(());
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .expect("joining the worker thread")
            .expect("the worker thread must not panic");
    }
}

/// Account events applied so far: the sum of the per-account event counters (0 before the
/// read model exists).
async fn applied_account_events(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(events), 0)::bigint FROM rm_account_balances.balances",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_read_model_equals_the_fold_after_aborted_batches_dropped_connections_and_killed_workers(
) {
    let seed = seed(0x7e57_0001);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let head = append_backlog(
        &store,
        Backlog {
            events: 50_000,
            per_append: 100,
            accounts: 300,
            audit_every: 20,
            seed,
        },
    )
    .await;
    let log = read_all(&store).await;
    assert_eq!(log.len() as i64, head);
    let expected = fold::balances(&log);
    let account_events: i64 = expected.values().map(|(_, _, events)| events).sum();

    let chaos = Arc::new(ChaosState {
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
        abort_rate: 0.04,
        terminate_rate: 0.04,
        aborts: AtomicUsize::new(0),
        terminations: AtomicUsize::new(0),
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let observer = connect(&db).await;

    // Kill the worker at rising, random points of its progress, so each kill lands
    // mid-run, then a little later still (0-20 ms) to land anywhere inside a batch.
    let mut targets: Vec<f64> = (0..6).map(|_| rng.random_range(0.03..0.85)).collect();
    targets.sort_by(f64::total_cmp);
    for (kill, target) in targets.iter().enumerate() {
        let target = (target * account_events as f64) as i64;
        let worker = Incarnation::start(&db, chaos.clone());
        wait_until(
            &format!("kill {kill}: the worker applied {target} events"),
            BACKLOG_DEADLINE,
            || async { applied_account_events(&observer).await >= target },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        worker.kill().await;
        let applied = applied_account_events(&observer).await;
        println!("kill {kill}: {applied} of {account_events} account events applied");
        assert!(
            applied < account_events,
            "kill {kill} must land mid-run ({applied} of {account_events} applied)"
        );
    }

    // The last incarnation runs to the end (still failing now and then), then stops.
    let engine = ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(Chaos(chaos.clone())),
        chaos_config(),
    );
    engine.start().await.expect("the engine starts");
    caught_up(&engine, "account_balances", BACKLOG_DEADLINE).await;
    engine.shutdown().await;

    let aborts = chaos.aborts.load(Ordering::SeqCst);
    let terminations = chaos.terminations.load(Ordering::SeqCst);
    println!("{aborts} aborted batches, {terminations} dropped connections, 6 killed workers");
    assert!(aborts > 0, "some batches must have been aborted");
    assert!(terminations > 0, "some connections must have been dropped");
    let parked = engine
        .dead_letters(None, true)
        .await
        .expect("listing dead letters");
    assert!(
        parked.is_empty(),
        "crashes are not poison events, yet these were parked: {parked:?}"
    );
    assert_same_rows(
        "account balances after crashes",
        &read_balances(&observer, "rm_account_balances").await,
        &expected,
    );
    store.shutdown().await;
}

/// The `projector`'s lease lifetime and heartbeat timeout here: longer than [`LEASE_TTL`]
/// because it runs 80 lanes (five projections, 16 partitions) beside the 20 other tests of
/// this binary on two cores. A restart does not wait for it: a process restarted after
/// `kill -9` takes its previous life's partitions back at once.
const PROJECTOR_LEASE_TTL: Duration = Duration::from_secs(5);

/// A `projector` child process on `db`, its logs appended to `log`.
fn spawn_projector(db: &TestDatabase, log: &std::fs::File) -> Child {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "info")
        .env(
            "TIDEMARK_LEASE_TTL_MS",
            PROJECTOR_LEASE_TTL.as_millis().to_string(),
        )
        .env(
            "TIDEMARK_WORKER_TIMEOUT_MS",
            PROJECTOR_LEASE_TTL.as_millis().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("sharing the log file"))
        .spawn()
        .expect("starting the projector binary")
}

/// Events applied so far by `projection`, from its checkpoints: matching events at or
/// before each partition's checkpoint.
async fn applied_from_checkpoints(
    client: &tokio_postgres::Client,
    projection: &str,
    category: Option<&str>,
) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM events e
               JOIN projection_checkpoints c
                 ON c.projection = $1 AND c.target = $3 AND c.partition = e.partition
              WHERE e.position <= c.position AND ($2::text IS NULL OR e.category = $2)",
            &[&projection, &category, &tidemark_projections::Target::Live],
        )
        .await
        .expect("reading checkpoints")
        .get(0)
}

/// Customers registering and placing orders (the events that name a customer, read by the
/// `customer_sessions` windows): `customers` customers, each registered, then orders placed
/// by random customers, appended one by one so they interleave.
async fn append_customer_activity(store: &EventStore, rng: &mut StdRng, customers: usize) {
    for c in 0..customers {
        let customer_id = format!("c{c}");
        let registered = NewEvent::new(
            "CustomerRegistered",
            json!({
                "customer_id": customer_id,
                "name": format!("Customer {c}"),
                "email": format!("c{c}@example.com"),
            }),
        );
        store
            .append(AppendRequest::new(
                format!("customer-{customer_id}"),
                ExpectedVersion::NoStream,
                vec![registered],
            ))
            .await
            .expect("registering a customer");
    }
    for order in 0..customers * 4 {
        let customer = rng.random_range(0..customers);
        let placed = NewEvent::new(
            "OrderPlaced",
            json!({
                "order_id": format!("o{order}"),
                "customer_id": format!("c{customer}"),
                "account_id": format!("{}", customer % 200),
                "amount": rng.random_range(1..=20_000),
            }),
        );
        store
            .append(AppendRequest::new(
                format!("order-o{order}"),
                ExpectedVersion::NoStream,
                vec![placed],
            ))
            .await
            .expect("placing an order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_process_killed_with_sigkill_mid_run_resumes_to_the_fold_on_restart() {
    let seed = seed(0x7e57_0002);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    append_backlog(
        &store,
        Backlog {
            events: 40_000,
            per_append: 100,
            accounts: 200,
            audit_every: 10,
            seed,
        },
    )
    .await;
    let mut rng = StdRng::seed_from_u64(seed);
    append_customer_activity(&store, &mut rng, 50).await;
    let log = read_all(&store).await;
    let expected_balances = fold::balances(&log);
    let expected_totals = fold::totals(&log);
    let account_events: i64 = expected_balances.values().map(|(_, _, n)| n).sum();
    let observer = connect(&db).await;
    let log_file = tempfile::NamedTempFile::new().expect("a log file for the projector");
    let show_log = || std::fs::read_to_string(log_file.path()).unwrap_or_default();

    let mut targets: Vec<f64> = (0..2).map(|_| rng.random_range(0.05..0.7)).collect();
    targets.sort_by(f64::total_cmp);
    for (kill, target) in targets.iter().enumerate() {
        let target = (target * account_events as f64) as i64;
        let mut child = spawn_projector(&db, log_file.as_file());
        let give_up = tokio::time::Instant::now() + BACKLOG_DEADLINE;
        while applied_from_checkpoints(&observer, "account_balances", Some("account")).await
            < target
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the projector exited early ({status}):\n{}", show_log());
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "kill {kill}: the projector did not apply {target} events in time:\n{}",
                show_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        child.kill().expect("SIGKILL to the projector");
        let status = child.wait().expect("reaping the projector");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the projector must have died of SIGKILL, not {status}"
        );
        let applied =
            applied_from_checkpoints(&observer, "account_balances", Some("account")).await;
        println!("kill {kill}: {applied} of {account_events} account events applied");
        assert!(
            applied < account_events,
            "kill {kill} must land mid-run ({applied} of {account_events} applied)"
        );
    }

    let mut child = spawn_projector(&db, log_file.as_file());
    // An engine in this process with no lanes started: it only reads checkpoints.
    let watcher = engine(
        &store,
        BankWindows::all().iter().fold(
            Registry::new()
                .projection(AccountBalances)
                .projection(CategoryTotals),
            |registry, windows| registry.projection(windows.projection()),
        ),
    );
    for name in ["account_balances", "category_totals"]
        .into_iter()
        .chain(BankWindows::all().map(|windows| windows.name))
    {
        caught_up(&watcher, name, BACKLOG_DEADLINE).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to the projector");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiting for the projector")
        .expect("reaping the projector");
    assert!(
        status.success(),
        "the projector must stop cleanly on SIGTERM, not {status}:\n{}",
        show_log()
    );

    assert_same_rows(
        "account balances after SIGKILLs",
        &read_balances(&observer, "rm_account_balances").await,
        &expected_balances,
    );
    assert_same_rows(
        "category totals after SIGKILLs",
        &read_totals(&observer, "rm_category_totals").await,
        &expected_totals,
    );
    for windows in BankWindows::all() {
        let by = WindowedBy {
            selector: &windows.selector,
            key: &windows.key,
            time: &windows.time,
        };
        let (expected, unwindowed) = fold_windows(
            &log,
            by,
            &windows.config,
            windows.aggregate.clone(),
            store.partitions(),
        );
        assert_eq!(
            unwindowed, 0,
            "{}: every bank event has a key",
            windows.name
        );
        assert!(
            !expected.is_empty(),
            "{}: the fold has windows",
            windows.name
        );
        assert_same_rows(
            &format!("{} after SIGKILLs", windows.name),
            &read_windows(&observer, &format!("rm_{}", windows.name)).await,
            &expected,
        );
    }
    store.shutdown().await;
}
