//! Support for `tests/scale_out.rs`: a [`Cluster`] of `projector` worker processes on one
//! test database (killed when the test ends, even on a panic), a paced load generator,
//! snapshots of leases, the worker registry and checkpoints read over SQL — as an operator
//! would see them — and the final check of every read model against a fresh fold of the log.
//!
//! Timings: workers run with short leases ([`LEASE_TTL`]) so takeovers happen within a
//! couple of seconds. Waits poll with a deadline; nothing sleeps to wait for state.
#![allow(dead_code)]

use futures::future::join_all;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_example_bank::projections::fold;
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StoreConfig,
};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

/// Lease lifetime of the test workers; they renew every third of it.
pub const LEASE_TTL: Duration = Duration::from_millis(1500);
/// One renewal period (the coordinator ticks every `LEASE_TTL / 3`).
pub const RENEWAL: Duration = Duration::from_millis(500);
/// Allowance on top of a timing rule for a busy two-core machine (process wake-ups, a
/// database round trip or two, the test's 25 ms polling), in lease periods: deadlines of
/// timing rules are the rule's bound plus this.
pub const SCHEDULING: Duration = Duration::from_millis(LEASE_TTL.as_millis() as u64 * 2);
/// Heartbeat age after which a test worker counts as dead.
pub const WORKER_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a test waits for something that should happen within a few lease periods. A
/// liveness bound only: tests that check a timing rule measure it and assert it separately.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Partitions of the store (the default), so of every projection.
pub const PARTITIONS: usize = 16;
/// The projections the `projector` binary runs.
pub const BALANCES: &str = "account_balances";
pub const TOTALS: &str = "category_totals";
pub const BOTH: [&str; 2] = [BALANCES, TOTALS];
/// `account-<n>` streams the load spreads over.
const ACCOUNTS: usize = 64;

/// What a worker logs at WARN about partitions nobody owns (lease.rs).
pub const UNOWNED_LOG: &str = "partitions have had no live owner for longer than a lease period";

/// The message a worker logs when its batch commit finds the lease taken (checkpoint.rs).
pub const FENCED_LOG: &str = "lease lost; refusing to commit";

/// These tests start several processes and measure takeovers in lease periods; on a
/// two-core machine they are only meaningful one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Polls something until it holds, panicking with what was last seen at the deadline.
pub struct Deadline {
    what: String,
    started: Instant,
    within: Duration,
}

impl Deadline {
    pub fn new(what: impl Into<String>, within: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            started: Instant::now(),
            within,
        }
    }

    /// Waits a polling interval; panics, with `seen`, once the deadline has passed.
    pub async fn wait(&self, seen: impl std::fmt::Debug) {
        if self.started.elapsed() > self.within {
            panic!(
                "waited {:?} for {}; last seen: {seen:#?}",
                self.within, self.what
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The binaries a test starts.
#[derive(Debug, Clone, Copy)]
enum Program {
    /// `projector`: projections only.
    Projector,
    /// `bank serve`: the API and the projections.
    Server,
}

/// What `serve` prints once it listens, before the address (api/src/cli.rs).
const LISTENING_LOG: &str = "Tidemark is listening on http://";

/// Collects the lines of a child's output.
fn read_lines(
    from: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    })
}

/// One `projector` or server process and what it wrote to stderr and stdout.
pub struct Worker {
    pub name: String,
    pub id: Uuid,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Killed or stopped: not expected to own anything.
    pub running: bool,
}

impl Worker {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal)
            .unwrap_or_else(|e| panic!("sending {signal} to worker {}: {e}", self.name));
    }
}

/// The worker processes of a test. Dropping it kills them all (also while a failed test
/// unwinds) and, if the test failed, prints the end of each one's log.
#[derive(Default)]
pub struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            for reader in worker.readers.drain(..) {
                let _ = reader.join();
            }
            if std::thread::panicking() {
                let log = worker.log();
                eprintln!(
                    "---- last lines of worker {} (pid {}, id {}) ----",
                    worker.name,
                    worker.child.id(),
                    worker.id
                );
                for line in log.iter().skip(log.len().saturating_sub(80)) {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// One lease row as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub partition: i16,
    pub owner: Option<Uuid>,
    pub epoch: i64,
    /// `expires_at > now()` in the database.
    pub unexpired: bool,
    /// The owner's heartbeat is within the worker timeout and it has not deregistered.
    pub owner_alive: bool,
}

/// A test database, a store on it, and the worker processes running the bank's projections.
/// Fields drop in order: the workers die before the database is dropped.
pub struct Cluster {
    pub workers: Workers,
    pub store: EventStore,
    pub sql: tokio_postgres::Client,
    db: TestDatabase,
}

impl Cluster {
    /// A fresh, migrated database with [`ACCOUNTS`] opened accounts and no workers yet.
    pub async fn new() -> Cluster {
        let db = TestDatabase::create().await;
        let store = EventStore::open(
            db.pg_config(),
            StoreConfig {
                poll_interval: Duration::from_millis(50),
                // Shared with the projector processes, which migrate as a server does.
                migrations: tidemark_api::all_migrations(),
                ..StoreConfig::default()
            },
        )
        .await
        .expect("the store opens on a fresh test database");
        let sql = tidemark_testkit::connect(&db).await;
        let opens = (0..ACCOUNTS).map(|n| {
            store.append(AppendRequest::new(
                format!("account-{n}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "AccountOpened",
                    json!({ "owner": format!("owner {n}") }),
                )],
            ))
        });
        for outcome in join_all(opens).await {
            outcome.expect("opening an account");
        }
        Cluster {
            workers: Workers::default(),
            store,
            sql,
            db,
        }
    }

    /// Starts a `projector` with the test lease timings and `env`, and waits until it has
    /// registered. Returns its worker id.
    pub async fn start_worker(&mut self, name: &str, env: &[(&str, &str)]) -> Uuid {
        self.start(name, Program::Projector, env).await
    }

    /// Starts the bank's server (`bank serve`, API and projections in one process) on a
    /// free loopback port with the test lease timings and `env`, and waits until it has
    /// registered and listens. Returns its worker id and `http://address`.
    pub async fn start_server(&mut self, name: &str, env: &[(&str, &str)]) -> (Uuid, String) {
        let id = self.start(name, Program::Server, env).await;
        let worker = self.worker(id);
        let deadline = Deadline::new(format!("server {name} to say where it listens"), DEADLINE);
        let address = loop {
            let log = worker.log();
            let said = log.iter().find_map(|line| {
                let rest = line.split_once(LISTENING_LOG)?.1;
                Some(rest.split('/').next()?.to_string())
            });
            if let Some(address) = said {
                break format!("http://{address}");
            }
            deadline.wait(log).await;
        };
        (id, address)
    }

    async fn start(&mut self, name: &str, program: Program, env: &[(&str, &str)]) -> Uuid {
        let mut command = match program {
            Program::Projector => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_projector"));
                // The two read models these tests watch: the windowed ones would triple the
                // lanes on two shared cores, and the lease timings here are tight.
                command.env("TIDEMARK_PROJECTIONS", "account_balances,category_totals");
                command
            }
            Program::Server => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_bank"));
                command.args(["serve", "--listen", "127.0.0.1:0", "--insecure-dev"]);
                command
            }
        };
        command
            .env("DATABASE_URL", self.db.url())
            .env("RUST_LOG", "info")
            .env("TIDEMARK_LEASE_TTL_MS", LEASE_TTL.as_millis().to_string())
            .env(
                "TIDEMARK_WORKER_TIMEOUT_MS",
                WORKER_TIMEOUT.as_millis().to_string(),
            )
            .env_remove("TIDEMARK_POOL")
            .env_remove("TIDEMARK_PINNED_PROJECTION")
            .env_remove("TIDEMARK_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {program:?} binary: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            read_lines(child.stderr.take().expect("stderr is piped"), log.clone()),
            read_lines(child.stdout.take().expect("stdout is piped"), log.clone()),
        ];
        let pid = child.id() as i32;
        // Keep the child in the guard before anything can panic.
        self.workers.0.push(Worker {
            name: name.to_string(),
            id: Uuid::nil(),
            child,
            log,
            readers: readers.into(),
            running: true,
        });
        let deadline = Deadline::new(format!("worker {name} (pid {pid}) to register"), DEADLINE);
        let id = loop {
            let row = self
                .sql
                .query_opt(
                    "SELECT id FROM workers WHERE pid = $1 AND stopped_at IS NULL",
                    &[&pid],
                )
                .await
                .expect("reading the worker registry");
            if let Some(row) = row {
                break row.get::<_, Uuid>(0);
            }
            let worker = self.workers.0.last_mut().expect("just pushed");
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!(
                    "worker {name} exited with {status} before registering:\n{}",
                    worker.log().join("\n")
                );
            }
            deadline.wait(worker.log()).await;
        };
        self.workers.0.last_mut().expect("just pushed").id = id;
        id
    }

    pub fn worker(&self, id: Uuid) -> &Worker {
        self.workers
            .0
            .iter()
            .find(|w| w.id == id)
            .expect("a worker of this cluster")
    }

    fn worker_mut(&mut self, id: Uuid) -> &mut Worker {
        self.workers
            .0
            .iter_mut()
            .find(|w| w.id == id)
            .expect("a worker of this cluster")
    }

    /// SIGKILL: the process dies at once, mid-batch or not, without releasing anything.
    pub fn kill(&mut self, id: Uuid) {
        let worker = self.worker_mut(id);
        worker.signal(Signal::SIGKILL);
        let _ = worker.child.wait();
        worker.running = false;
    }

    /// SIGSTOP: the process freezes wherever it is (possibly inside a batch transaction).
    pub fn pause(&mut self, id: Uuid) {
        let worker = self.worker_mut(id);
        worker.signal(Signal::SIGSTOP);
        worker.running = false;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, id: Uuid) {
        let worker = self.worker_mut(id);
        worker.signal(Signal::SIGCONT);
        worker.running = true;
    }

    /// Ids of the workers that are neither killed nor paused.
    pub fn running(&self) -> BTreeSet<Uuid> {
        self.workers
            .0
            .iter()
            .filter(|w| w.running)
            .map(|w| w.id)
            .collect()
    }

    /// The lease rows of `projection`, by partition.
    pub async fn leases(&self, projection: &str) -> Vec<Lease> {
        self.sql
            .query(
                "SELECT l.partition, l.owner, l.epoch, l.expires_at > now(),
                        coalesce(w.stopped_at IS NULL AND w.heartbeat_at > now() - make_interval(secs => $2), false)
                   FROM projection_leases l LEFT JOIN workers w ON w.id = l.owner
                  WHERE l.projection = $1 ORDER BY l.partition",
                &[&projection, &WORKER_TIMEOUT.as_secs_f64()],
            )
            .await
            .expect("reading leases")
            .iter()
            .map(|r| Lease {
                partition: r.get(0),
                owner: r.get(1),
                epoch: r.get(2),
                unexpired: r.get(3),
                owner_alive: r.get(4),
            })
            .collect()
    }

    /// Who holds each partition of `projection`, counting only unexpired leases of workers
    /// that are alive in the registry and running; `None` for a partition nobody holds.
    pub async fn holders(&self, projection: &str) -> BTreeMap<i16, Option<Uuid>> {
        let running = self.running();
        let leases = self.leases(projection).await;
        let mut holders: BTreeMap<i16, Option<Uuid>> =
            (0..PARTITIONS as i16).map(|p| (p, None)).collect();
        for lease in leases {
            let held = lease.unexpired
                && lease.owner_alive
                && lease.owner.is_some_and(|o| running.contains(&o));
            if held {
                holders.insert(lease.partition, lease.owner);
            }
        }
        holders
    }

    /// Partitions of `projection` held by each running worker (zero included).
    pub async fn split(&self, projection: &str) -> BTreeMap<Uuid, Vec<i16>> {
        let mut split: BTreeMap<Uuid, Vec<i16>> =
            self.running().into_iter().map(|id| (id, vec![])).collect();
        for (partition, holder) in self.holders(projection).await {
            if let Some(holder) = holder {
                split.entry(holder).or_default().push(partition);
            }
        }
        split
    }

    /// Waits until every partition of each of `projections` is held by a running worker,
    /// in the shares `expected` (largest first, one per running worker). Returns how long
    /// it took.
    pub async fn wait_for_split(&self, projections: &[&str], expected: &[usize]) -> Duration {
        let deadline = Deadline::new(
            format!("{projections:?} to split {expected:?} over the running workers"),
            DEADLINE,
        );
        loop {
            let mut seen = Vec::new();
            for projection in projections {
                let split = self.split(projection).await;
                let mut shares: Vec<usize> = split.values().map(Vec::len).collect();
                shares.sort_unstable_by(|a, b| b.cmp(a));
                seen.push((projection.to_string(), shares, split));
            }
            if seen.iter().all(|(_, shares, _)| shares == expected) {
                return deadline.elapsed();
            }
            deadline.wait(seen).await;
        }
    }

    /// Live checkpoint of each partition of `projection` (0 where none).
    pub async fn checkpoints(&self, projection: &str) -> BTreeMap<i16, i64> {
        let mut checkpoints: BTreeMap<i16, i64> = (0..PARTITIONS as i16).map(|p| (p, 0)).collect();
        for row in self
            .sql
            .query(
                "SELECT partition, position FROM projection_checkpoints
                  WHERE projection = $1 AND target = $2",
                &[&projection, &tidemark_projections::Target::Live],
            )
            .await
            .expect("reading checkpoints")
        {
            checkpoints.insert(row.get(0), row.get(1));
        }
        checkpoints
    }

    /// Position of the last event of each partition (0 where none). Every event of these
    /// tests is an account event, so both projections read all of them.
    pub async fn partition_heads(&self) -> BTreeMap<i16, i64> {
        let mut heads: BTreeMap<i16, i64> = (0..PARTITIONS as i16).map(|p| (p, 0)).collect();
        for row in self
            .sql
            .query(
                "SELECT partition, max(position) FROM events GROUP BY partition",
                &[],
            )
            .await
            .expect("reading partition heads")
        {
            heads.insert(row.get(0), row.get(1));
        }
        heads
    }

    /// Waits until every partition of each of `projections` has applied the whole log.
    pub async fn wait_caught_up(&self, projections: &[&str]) {
        let deadline = Deadline::new(format!("{projections:?} to catch up"), DEADLINE * 2);
        loop {
            let heads = self.partition_heads().await;
            let mut behind = Vec::new();
            for projection in projections {
                let checkpoints = self.checkpoints(projection).await;
                for (partition, head) in &heads {
                    if checkpoints[partition] < *head {
                        behind.push((
                            projection.to_string(),
                            *partition,
                            checkpoints[partition],
                            *head,
                        ));
                    }
                }
            }
            if behind.is_empty() {
                return;
            }
            deadline.wait(behind).await;
        }
    }

    /// The whole log.
    pub async fn read_all(&self) -> Vec<RecordedEvent> {
        tidemark_testkit::read_all(&self.store).await
    }

    /// Asserts that each of `projections`' read model equals a fresh fold of the whole
    /// log: no event lost, none applied twice (the fold counts events per account and per
    /// type). Call after [`Cluster::wait_caught_up`] with the load stopped.
    pub async fn assert_read_models_equal_fold(&self, projections: &[&str]) {
        let events = self.read_all().await;
        assert!(!events.is_empty(), "the test appended events");
        for projection in projections {
            match *projection {
                BALANCES => {
                    let stored: BTreeMap<String, (i64, i64, i64)> = self
                        .sql
                        .query(
                            "SELECT account_id, balance, version, events FROM rm_account_balances.balances",
                            &[],
                        )
                        .await
                        .expect("reading balances")
                        .iter()
                        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                        .collect();
                    assert_eq!(
                        stored,
                        fold::balances(&events),
                        "account balances (balance, version, events) equal a fresh fold of {} events",
                        events.len()
                    );
                }
                TOTALS => {
                    let stored: BTreeMap<(String, String), (i64, i64)> = self
                        .sql
                        .query(
                            "SELECT category, event_type, events, amount FROM rm_category_totals.totals",
                            &[],
                        )
                        .await
                        .expect("reading totals")
                        .iter()
                        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
                        .collect();
                    assert_eq!(
                        stored,
                        fold::totals(&events),
                        "category totals (events, amount) equal a fresh fold of {} events",
                        events.len()
                    );
                }
                other => panic!("no fold for {other}"),
            }
        }
    }

    /// Makes every write statement to `table` (`schema.table`) take `delay` more: a slow
    /// read model, so batches spend time inside their transaction. Waits for the table.
    pub async fn slow_down(&self, table: &str, delay: Duration) {
        let deadline = Deadline::new(format!("{table} to exist"), DEADLINE);
        loop {
            let exists: bool = self
                .sql
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .expect("looking up a table")
                .get(0);
            if exists {
                break;
            }
            deadline.wait(table).await;
        }
        self.sql
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION public.test_slow_statement() RETURNS trigger
                 LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$;
                 CREATE TRIGGER test_slow BEFORE INSERT OR UPDATE ON {table}
                   FOR EACH STATEMENT EXECUTE FUNCTION public.test_slow_statement();",
                delay.as_secs_f64()
            ))
            .await
            .expect("installing the slow trigger");
    }

    /// Undoes [`Cluster::slow_down`].
    pub async fn speed_up(&self, table: &str) {
        self.sql
            .batch_execute(&format!("DROP TRIGGER test_slow ON {table}"))
            .await
            .expect("dropping the slow trigger");
    }

    /// Starts appending deposits and withdrawals to random accounts, `per_round` appends
    /// at once then a `pause`, until [`Load::finish`].
    pub fn start_load(&self, per_round: usize, pause: Duration, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let appended = Arc::new(AtomicU64::new(0));
        let store = self.store.clone();
        let (stop_flag, counter) = (stop.clone(), appended.clone());
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            while !stop_flag.load(Ordering::SeqCst) {
                let requests: Vec<AppendRequest> = (0..per_round)
                    .map(|_| {
                        let account = rng.random_range(0..ACCOUNTS);
                        let amount: i64 = rng.random_range(1..=10_000);
                        let kind = if rng.random_bool(0.4) {
                            "MoneyWithdrawn"
                        } else {
                            "MoneyDeposited"
                        };
                        AppendRequest::new(
                            format!("account-{account}"),
                            ExpectedVersion::Any,
                            vec![NewEvent::new(kind, json!({ "amount": amount }))],
                        )
                    })
                    .collect();
                let outcomes = join_all(requests.into_iter().map(|r| store.append(r))).await;
                for outcome in outcomes {
                    outcome.expect("the load generator's append");
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                // Pacing the load, not waiting for state.
                tokio::time::sleep(pause).await;
            }
        });
        Load {
            stop,
            appended,
            task,
        }
    }
}

/// A running load generator.
pub struct Load {
    stop: Arc<AtomicBool>,
    appended: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::SeqCst)
    }

    /// Waits until `more` events beyond now have been appended.
    pub async fn wait_for_more(&self, more: u64) {
        let target = self.appended() + more;
        let deadline = Deadline::new(format!("{more} more appends"), DEADLINE);
        while self.appended() < target {
            deadline.wait(self.appended()).await;
        }
    }

    /// Stops the load; returns how many events it appended.
    pub async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        (&mut self.task)
            .await
            .expect("the load generator ran without failing");
        self.appended()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Watches partitions over time: the longest stretch any partition of the watched
/// projections went without a running, live holder, and the longest it went with events
/// waiting and a checkpoint that did not move.
#[derive(Default)]
pub struct Watch {
    unheld_since: HashMap<(String, i16), Instant>,
    /// Longest unheld stretch and where.
    pub longest_unheld: (Duration, Option<(String, i16)>),
    stalled: HashMap<(String, i16), (i64, Instant)>,
    /// Longest stall (events waiting, checkpoint unchanged) and where.
    pub longest_stall: (Duration, Option<(String, i16)>),
    /// Owners seen, per (projection, partition), in order (consecutive duplicates removed).
    pub owners: BTreeMap<(String, i16), Vec<Uuid>>,
    pub samples: usize,
}

impl Watch {
    pub async fn sample(&mut self, cluster: &Cluster, projections: &[&str]) {
        let now = Instant::now();
        let heads = cluster.partition_heads().await;
        for projection in projections {
            let holders = cluster.holders(projection).await;
            let checkpoints = cluster.checkpoints(projection).await;
            for (partition, holder) in holders {
                let key = (projection.to_string(), partition);
                match holder {
                    Some(owner) => {
                        self.unheld_since.remove(&key);
                        let seen = self.owners.entry(key.clone()).or_default();
                        if seen.last() != Some(&owner) {
                            seen.push(owner);
                        }
                    }
                    None => {
                        let since = *self.unheld_since.entry(key.clone()).or_insert(now);
                        if now - since > self.longest_unheld.0 {
                            self.longest_unheld = (now - since, Some(key.clone()));
                        }
                    }
                }
                let checkpoint = checkpoints[&partition];
                let behind = checkpoint < heads[&partition];
                match self.stalled.get(&key) {
                    Some((at, since)) if *at == checkpoint && behind => {
                        if now - *since > self.longest_stall.0 {
                            self.longest_stall = (now - *since, Some(key.clone()));
                        }
                    }
                    _ if behind => {
                        self.stalled.insert(key, (checkpoint, now));
                    }
                    _ => {
                        self.stalled.remove(&key);
                    }
                }
            }
        }
        self.samples += 1;
    }
}

/// The HTTP status of `GET path` on a server at `http://address`, or `None` when it does not
/// answer (not listening yet, connection refused). A bare HTTP/1.1 request: the bank's tests
/// have no HTTP client, and a status line is all this needs.
pub async fn http_status(address: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.strip_prefix("http://").unwrap_or(address);
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until the server at `address` answers `/ready` with 200.
pub async fn wait_ready(address: &str, within: Duration) {
    let deadline = Deadline::new(format!("{address}/ready to answer 200"), within);
    loop {
        let status = http_status(address, "/ready").await;
        if status == Some(200) {
            return;
        }
        deadline.wait(status).await;
    }
}
