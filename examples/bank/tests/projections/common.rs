//! Helpers shared by the bank's projection tests: a store and an engine on a fresh test
//! database, a seeded bank backlog, read-model snapshots in the shape of the `fold`
//! functions, a fresh fold of windowed read models, and a projection that records what it
//! applies. Raw connections, whole-log
//! reads and polling come from `tidemark_testkit`.

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tidemark_projections::windowing::{
    event_time, key_partition, row_ops, EventTimeSource, KeySource, MissingTimePolicy, RowOp,
    WindowConfig, WindowFold, WindowInput, WindowOperator,
};
use tidemark_projections::{EngineConfig, EventSelector, ProjectionEngine, Registry};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreConfig,
};
use tidemark_testkit::TestDatabase;
pub use tidemark_testkit::{connect, read_all, wait_until};

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a test waits for a projection to work through a large backlog (debug build,
/// two cores, other tests running beside it).
pub const BACKLOG_DEADLINE: Duration = Duration::from_secs(120);

/// The seed of the randomness of a test: `TIDEMARK_TEST_SEED` when set (to reproduce a
/// failure), else `default`. Printed so a failing run names it.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("TIDEMARK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed} (set TIDEMARK_TEST_SEED to change it)");
    seed
}

/// Store settings for tests: a server's migrations, and a short polling fallback so waits that
/// depend on it (a stopped lane noticing it was resumed) stay short.
pub fn store_config() -> StoreConfig {
    StoreConfig {
        // The bank's database is a server's (the bank and projector binaries share it).
        migrations: tidemark_api::all_migrations(),
        poll_interval: Duration::from_millis(50),
        ..StoreConfig::default()
    }
}

/// Opens an [`EventStore`] (migrating the database) on `db`.
pub async fn open_store(db: &TestDatabase) -> EventStore {
    EventStore::open(db.pg_config(), store_config())
        .await
        .expect("the store opens on a fresh test database")
}

/// Engine settings for tests: fast retries, every partition applying at once, the
/// defaults otherwise.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(100),
        min_concurrency: 16,
        max_concurrency: 16,
        ..EngineConfig::default()
    }
}

/// [`engine_config`] for tests that kill workers: short leases and heartbeat timeouts, so a
/// restarted worker takes over a dead one's partitions within about a second.
pub fn crash_engine_config() -> EngineConfig {
    EngineConfig {
        lease_ttl: LEASE_TTL,
        worker_timeout: LEASE_TTL,
        ..engine_config()
    }
}

/// Lease lifetime and worker heartbeat timeout in tests that kill workers.
pub const LEASE_TTL: Duration = Duration::from_millis(1000);

/// An engine over `registry` with [`engine_config`], not started.
pub fn engine(store: &EventStore, registry: Registry) -> ProjectionEngine {
    ProjectionEngine::new(store.clone(), registry, engine_config())
}

/// The shape of a seeded bank backlog.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// Events in all.
    pub events: usize,
    /// Events per append (one stream per append).
    pub per_append: usize,
    /// Number of `account-<n>` streams.
    pub accounts: usize,
    /// Every this many appends goes to an `audit-<n>` stream instead (0: never), so
    /// projections reading only accounts have events to skip.
    pub audit_every: usize,
    pub seed: u64,
}

/// Bank events for one append to `stream`: `AccountOpened` first for a new account, then
/// deposits and withdrawals of 1..=50,000 cents.
pub fn bank_events(rng: &mut StdRng, stream: &str, count: usize, opens: bool) -> Vec<NewEvent> {
    (0..count)
        .map(|i| {
            if opens && i == 0 {
                NewEvent::new(
                    "AccountOpened",
                    json!({ "owner": format!("owner of {stream}") }),
                )
            } else {
                let amount: i64 = rng.random_range(1..=50_000);
                let kind = if rng.random_bool(0.4) {
                    "MoneyWithdrawn"
                } else {
                    "MoneyDeposited"
                };
                NewEvent::new(kind, json!({ "amount": amount }))
            }
        })
        .collect()
}

/// The append requests of `backlog`, deterministic for its seed.
pub fn backlog_requests(backlog: Backlog) -> Vec<AppendRequest> {
    let mut rng = StdRng::seed_from_u64(backlog.seed);
    let appends = backlog.events.div_ceil(backlog.per_append);
    let mut opened = vec![false; backlog.accounts];
    (0..appends)
        .map(|i| {
            let count = backlog
                .per_append
                .min(backlog.events - i * backlog.per_append);
            if backlog.audit_every > 0 && i % backlog.audit_every == backlog.audit_every - 1 {
                let stream = format!("audit-{}", i % 7);
                let events = (0..count)
                    .map(|n| NewEvent::new("AuditNoted", json!({ "n": n, "amount": 1 })))
                    .collect();
                return AppendRequest::new(stream, ExpectedVersion::Any, events);
            }
            let account = i % backlog.accounts;
            let stream = format!("account-{account}");
            let events = bank_events(&mut rng, &stream, count, !opened[account]);
            opened[account] = true;
            AppendRequest::new(stream, ExpectedVersion::Any, events)
        })
        .collect()
}

/// Appends `requests`, a few at a time.
pub async fn append_all(store: &EventStore, requests: Vec<AppendRequest>) {
    let mut appends = futures::stream::iter(requests.into_iter().map(|request| {
        let store = store.clone();
        async move { store.append(request).await }
    }))
    .buffer_unordered(8);
    while let Some(outcome) = appends.next().await {
        outcome.expect("appending the backlog");
    }
}

/// Appends the seeded `backlog`; returns the head position after it.
pub async fn append_backlog(store: &EventStore, backlog: Backlog) -> Position {
    append_all(store, backlog_requests(backlog)).await;
    store.head_position().await.expect("reading the head")
}

/// `<schema>.balances` in the shape of `fold::balances`: account -> (balance, version, events).
pub async fn read_balances(
    client: &tokio_postgres::Client,
    schema: &str,
) -> BTreeMap<String, (i64, i64, i64)> {
    client
        .query(
            &format!("SELECT account_id, balance, version, events FROM {schema}.balances"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {schema}.balances: {e}"))
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

/// `<schema>.totals` in the shape of `fold::totals`: (category, type) -> (events, amount).
pub async fn read_totals(
    client: &tokio_postgres::Client,
    schema: &str,
) -> BTreeMap<(String, String), (i64, i64)> {
    client
        .query(
            &format!("SELECT category, event_type, events, amount FROM {schema}.totals"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {schema}.totals: {e}"))
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect()
}

/// What a windows table holds: (key, start ms, end ms) -> (status, aggregate, events, revision).
pub type Rows = BTreeMap<(String, i64, i64), (String, Value, i64, i32)>;

/// `<schema>.windows`, the rows of a windowed projection, in the shape of [`fold_windows`].
pub async fn read_windows(client: &tokio_postgres::Client, schema: &str) -> Rows {
    client
        .query(
            &format!(
                "SELECT key, (extract(epoch FROM window_start) * 1000)::bigint,
                        (extract(epoch FROM window_end) * 1000)::bigint,
                        status, aggregate, events, revision
                   FROM {schema}.windows"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {schema}.windows: {e}"))
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2)),
                (r.get(3), r.get(4), r.get(5), r.get(6)),
            )
        })
        .collect()
}

/// Which events a windowed projection reads and how it keys and times them.
#[derive(Clone, Copy)]
pub struct WindowedBy<'a> {
    pub selector: &'a EventSelector,
    pub key: &'a KeySource,
    pub time: &'a EventTimeSource,
}

/// A fresh fold of the log for a windowed projection: per shard (the partition its key
/// hashes to), one operator fed that shard's selected events in log order, its changes
/// netted into rows as the engine does. Also returns how many selected events have no usable
/// key or time (the projection parks them).
pub fn fold_windows<F: WindowFold + Clone>(
    log: &[RecordedEvent],
    by: WindowedBy<'_>,
    config: &WindowConfig,
    fold: F,
    partitions: u16,
) -> (Rows, usize) {
    let selected = |event: &RecordedEvent| {
        (by.selector.categories.is_empty()
            || by.selector.categories.iter().any(|c| c == event.category()))
            && (by.selector.event_types.is_empty()
                || by.selector.event_types.contains(&event.event_type))
    };
    let mut operators: BTreeMap<i16, WindowOperator<F>> = BTreeMap::new();
    let mut rows = Rows::new();
    let mut unwindowed = 0;
    for event in log.iter().filter(|e| selected(e)) {
        let (Ok(key), Ok(time)) = (
            by.key.key_of(event),
            event_time(event, by.time, MissingTimePolicy::Park),
        ) else {
            unwindowed += 1;
            continue;
        };
        let operator = operators
            .entry(key_partition(&key, partitions))
            .or_insert_with(|| WindowOperator::new(config.clone(), fold.clone()).unwrap());
        let changes = operator.apply(
            WindowInput {
                partition: event.partition,
                key: &key,
                time,
                value: &event.payload,
            },
            event.recorded_at.timestamp_millis(),
        );
        for op in row_ops(&changes) {
            match op {
                RowOp::Upsert { status, result } => {
                    rows.insert(
                        (result.key, result.window.start, result.window.end),
                        (
                            status.as_str().to_string(),
                            result.aggregate,
                            result.events as i64,
                            result.revision as i32,
                        ),
                    );
                }
                RowOp::Delete { key, window } => {
                    rows.remove(&(key, window.start, window.end));
                }
            }
        }
    }
    (rows, unwindowed)
}

/// Asserts two read-model snapshots are equal, naming the first differing keys rather than
/// printing thousands of rows.
pub fn assert_same_rows<K, V>(what: &str, actual: &BTreeMap<K, V>, expected: &BTreeMap<K, V>)
where
    K: Ord + std::fmt::Debug,
    V: PartialEq + std::fmt::Debug,
{
    let mut differences = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            Some(got) if got == want => {}
            got => differences.push(format!("{key:?}: read model {got:?}, fold {want:?}")),
        }
    }
    for (key, got) in actual {
        if !expected.contains_key(key) {
            differences.push(format!("{key:?}: read model {got:?}, not in the fold"));
        }
    }
    assert!(
        differences.is_empty(),
        "{what}: {} of {} rows differ from the fold, e.g.\n{}",
        differences.len(),
        expected.len(),
        differences
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits until projection `name` has applied everything committed now.
pub async fn caught_up(engine: &ProjectionEngine, name: &str, deadline: Duration) {
    let done = engine
        .run_until_caught_up(name, deadline)
        .await
        .unwrap_or_else(|e| panic!("waiting for '{name}' to catch up: {e}"));
    assert!(done, "'{name}' did not catch up within {deadline:?}");
}

/// A projection that records every event it applies, in apply order: a row per event in
/// `<schema>.applied` with a serial number, so tests can check order and exactly-once.
/// It can fail on one event while `broken` is set (a poison event), fail transiently after
/// its writes at random, and it counts how many of its batches run at once.
pub struct Recorder {
    pub name: String,
    pub policy: tidemark_projections::FailurePolicy,
    pub selector: tidemark_projections::EventSelector,
    /// Fails on this event while `broken` is set, as `poison_kind` says.
    pub poison: Option<uuid::Uuid>,
    pub poison_kind: PoisonKind,
    pub broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Chance per batch of a transient failure after the batch's writes.
    pub transient_rate: f64,
    pub rng: std::sync::Mutex<StdRng>,
    pub stats: std::sync::Arc<RecorderStats>,
}

/// How a [`Recorder`] fails on its poison event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoisonKind {
    /// `ProjectionError::failed`, the projection's own verdict.
    #[default]
    Failed,
    /// Its SQL binds a parameter of the wrong type: a database error the server never
    /// sees, which no retry can fix.
    WrongParameterType,
}

/// What a [`Recorder`] saw.
#[derive(Default)]
pub struct RecorderStats {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Most batches applying at once.
    pub max_in_flight: std::sync::atomic::AtomicUsize,
    /// Times the poison event was attempted while broken.
    pub poison_attempts: std::sync::atomic::AtomicUsize,
    pub transient_failures: std::sync::atomic::AtomicUsize,
}

impl Recorder {
    pub fn new(name: &str) -> Recorder {
        Recorder {
            name: name.to_string(),
            policy: Default::default(),
            selector: tidemark_projections::EventSelector::all(),
            poison: None,
            poison_kind: PoisonKind::Failed,
            broken: Default::default(),
            transient_rate: 0.0,
            rng: std::sync::Mutex::new(StdRng::seed_from_u64(0)),
            stats: Default::default(),
        }
    }
}

struct InFlight<'a>(&'a RecorderStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl tidemark_projections::Projection for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn selector(&self) -> tidemark_projections::EventSelector {
        self.selector.clone()
    }

    fn failure_policy(&self) -> tidemark_projections::FailurePolicy {
        self.policy
    }

    async fn setup(
        &self,
        ctx: &tidemark_projections::ApplyContext<'_>,
    ) -> Result<(), tidemark_projections::ProjectionError> {
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {} (serial bigserial PRIMARY KEY, stream_id text NOT NULL,
                                  stream_version bigint NOT NULL, position bigint NOT NULL,
                                  partition smallint NOT NULL)",
                ctx.table("applied")
            ))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &tidemark_projections::ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), tidemark_projections::ProjectionError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.stats.in_flight.fetch_add(1, SeqCst) + 1;
        self.stats.max_in_flight.fetch_max(now, SeqCst);
        let _in_flight = InFlight(&self.stats);
        let insert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} (stream_id, stream_version, position, partition)
                 VALUES ($1, $2, $3, $4)",
                ctx.table("applied")
            ))
            .await?;
        for event in events {
            if self.poison == Some(event.event_id) && self.broken.load(SeqCst) {
                self.stats.poison_attempts.fetch_add(1, SeqCst);
                if self.poison_kind == PoisonKind::WrongParameterType {
                    // `stream_version` is a bigint; a text parameter fails in the client.
                    ctx.tx
                        .execute(
                            &insert,
                            &[&event.stream_id, &"one", &event.position, &event.partition],
                        )
                        .await?;
                }
                return Err(tidemark_projections::ProjectionError::failed(format!(
                    "poisoned: refusing event {} of {}",
                    event.stream_version, event.stream_id
                )));
            }
            ctx.tx
                .execute(
                    &insert,
                    &[
                        &event.stream_id,
                        &event.stream_version,
                        &event.position,
                        &event.partition,
                    ],
                )
                .await?;
        }
        if self.transient_rate > 0.0 && self.rng.lock().unwrap().random_bool(self.transient_rate) {
            self.stats.transient_failures.fetch_add(1, SeqCst);
            return Err(tidemark_projections::ProjectionError::transient(
                "injected: failed after writing, before the commit",
            ));
        }
        Ok(())
    }
}

/// One row of a [`Recorder`]'s `applied` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub stream_id: String,
    pub stream_version: i64,
    pub position: i64,
    pub partition: i16,
}

/// A [`Recorder`]'s rows in apply order.
pub async fn read_applied(client: &tokio_postgres::Client, schema: &str) -> Vec<Applied> {
    client
        .query(
            &format!(
                "SELECT stream_id, stream_version, position, partition FROM {schema}.applied
                  ORDER BY serial"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {schema}.applied: {e}"))
        .iter()
        .map(|r| Applied {
            stream_id: r.get(0),
            stream_version: r.get(1),
            position: r.get(2),
            partition: r.get(3),
        })
        .collect()
}

/// Asserts `applied` holds every event of `log` exactly once and each stream's events in
/// version order.
pub fn assert_each_once_in_stream_order(applied: &[Applied], log: &[RecordedEvent]) {
    let mut by_stream: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for row in applied {
        by_stream
            .entry(row.stream_id.as_str())
            .or_default()
            .push(row.stream_version);
    }
    let mut expected: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for event in log {
        expected
            .entry(event.stream_id.as_str())
            .or_default()
            .push(event.stream_version);
    }
    for (stream, versions) in &expected {
        let got = by_stream.get(stream).cloned().unwrap_or_default();
        assert_eq!(
            &got, versions,
            "stream {stream}: versions in apply order must be each version once, in order"
        );
    }
    assert_eq!(
        by_stream.len(),
        expected.len(),
        "no stream outside the log may be applied"
    );
}
