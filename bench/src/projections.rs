//! Projection figures (issues #4 and #12): the catch-up rate of a simple counting projection
//! over the log beside the raw scan of the same rows, the same count grouped by a payload key
//! and a windowed count over that key beside it, and append→read-model latency at a fixed
//! rate (an event counts as delivered when the checkpoint covering it has committed).

use crate::env::Schema;
use crate::harness::Latencies;
use anyhow::{Context, Result};
use async_trait::async_trait;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidemark_projections::windowing::{
    Aggregate, FieldPath, KeySource, LatePolicy, WatermarkConfig, WindowConfig, WindowSpec,
};
use tidemark_projections::{
    ApplyContext, EngineConfig, Grouping, Projection, ProjectionEngine, ProjectionError,
    RecordedEvent, Registry, WindowedProjection,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreConfig};
use tokio_postgres::types::ToSql;

/// The store's and the engine's migrations: the seeded schema has only the store's.
fn store_config() -> StoreConfig {
    StoreConfig {
        migrations: tidemark_projections::migrations(),
        ..StoreConfig::default()
    }
}

/// The payload field the keyed and windowed projections group by. The seed gives every
/// event `"currency": "EUR"`, so it is one key: a total per category, the case grouping by
/// key exists for (one lane applies every event; the others read the log and skip it).
pub const KEY_FIELD: &str = "currency";

/// Counts events per partition: about the cheapest read model there is, so the figure is
/// the engine's own cost (fetch, decode, transaction, checkpoint). With `by_key` the same
/// fold counts per key instead, grouped by that key.
struct Counting {
    name: &'static str,
    /// Counted per this key (per partition when `None`).
    by_key: Option<KeySource>,
    /// Grouped by `by_key` (else by stream, whatever the count is per).
    grouped_by_key: bool,
    /// Send times (µs since the epoch) of applied events by partition and position, for the
    /// latency phase; `None` when not measuring latency.
    applied: Option<Arc<Mutex<Pending>>>,
}

type Pending = HashMap<i16, BTreeMap<i64, u64>>;

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &str {
        self.name
    }

    fn grouping(&self) -> Grouping {
        match &self.by_key {
            Some(key) if self.grouped_by_key => Grouping::ByKey(key.clone()),
            _ => Grouping::ByStream,
        }
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        let columns = if self.by_key.is_some() {
            "key text PRIMARY KEY, events bigint NOT NULL"
        } else {
            "partition smallint PRIMARY KEY, events bigint NOT NULL"
        };
        ctx.create_table("counts", columns).await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        match &self.by_key {
            None => add_counts(ctx, "partition", events, |e| Ok(e.partition)).await?,
            Some(keys) => {
                let key = |e: &RecordedEvent| keys.key_of(e).map_err(ProjectionError::failed);
                add_counts(ctx, "key", events, key).await?
            }
        }
        if let Some(applied) = &self.applied {
            let mut applied = applied.lock().unwrap_or_else(|e| e.into_inner());
            for event in events {
                if let Some(sent) = event.payload.get("sent_at_us").and_then(|v| v.as_u64()) {
                    applied
                        .entry(event.partition)
                        .or_default()
                        .insert(event.position, sent);
                }
            }
        }
        Ok(())
    }
}

/// Adds each group's number of `events` to its row of `counts` (one upsert per group).
async fn add_counts<G: Ord + ToSql + Sync>(
    ctx: &ApplyContext<'_>,
    column: &str,
    events: &[RecordedEvent],
    group_of: impl Fn(&RecordedEvent) -> Result<G, ProjectionError>,
) -> Result<(), ProjectionError> {
    let mut per_group: BTreeMap<G, i64> = BTreeMap::new();
    for event in events {
        *per_group.entry(group_of(event)?).or_default() += 1;
    }
    let upsert = ctx
        .tx
        .prepare_cached(&format!(
            "INSERT INTO {} AS c VALUES ($1, $2)
             ON CONFLICT ({column}) DO UPDATE SET events = c.events + EXCLUDED.events",
            ctx.table("counts")
        ))
        .await?;
    for (group, count) in per_group {
        ctx.tx.execute(&upsert, &[&group, &count]).await?;
    }
    Ok(())
}

/// The projections whose catch-up is measured over one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Counts per partition, grouped by stream: the baseline.
    Counting,
    /// The same count per [`KEY_FIELD`], grouped by it.
    Keyed,
    /// Tumbling one-minute windows of `recorded_at`, counted per [`KEY_FIELD`].
    Windowed,
    /// Counts per stream id, grouped by stream: the baseline of the many-keys rows (the
    /// same fold work: an upsert per key and batch).
    CountingPerStream,
    /// The same count per stream id, grouped by it as a key: many keys, spread over every
    /// lane.
    KeyedPerStream,
    /// The windowed count per stream id: many keys, each with its own window.
    WindowedPerStream,
}

impl CatchUp {
    pub fn label(self) -> &'static str {
        match self {
            CatchUp::Counting => "Counting projection",
            CatchUp::Keyed => "Keyed counting projection (per `currency`)",
            CatchUp::Windowed => "Windowed projection (count per `currency`, 1-minute tumbling)",
            CatchUp::CountingPerStream => "Counting projection per stream id (grouped by stream)",
            CatchUp::KeyedPerStream => "Keyed counting projection (per stream id: many keys)",
            CatchUp::WindowedPerStream => {
                "Windowed projection (count per stream id, 1-minute tumbling: many keys)"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            CatchUp::Counting => "bench_catch_up",
            CatchUp::Keyed => "bench_keyed",
            CatchUp::Windowed => "bench_windowed",
            CatchUp::CountingPerStream => "bench_counting_streams",
            CatchUp::KeyedPerStream => "bench_keyed_streams",
            CatchUp::WindowedPerStream => "bench_windowed_streams",
        }
    }

    /// Every catch-up, each after its baseline.
    pub const ALL: [CatchUp; 6] = [
        CatchUp::Counting,
        CatchUp::Keyed,
        CatchUp::Windowed,
        CatchUp::CountingPerStream,
        CatchUp::KeyedPerStream,
        CatchUp::WindowedPerStream,
    ];

    /// The catch-up of the same fold work grouped by stream, that this one is compared with
    /// (`None` for the baselines themselves).
    pub fn baseline(self) -> Option<CatchUp> {
        match self {
            CatchUp::Counting | CatchUp::CountingPerStream => None,
            CatchUp::Keyed | CatchUp::Windowed => Some(CatchUp::Counting),
            CatchUp::KeyedPerStream | CatchUp::WindowedPerStream => {
                Some(CatchUp::CountingPerStream)
            }
        }
    }

    fn key(self) -> KeySource {
        match self {
            CatchUp::CountingPerStream | CatchUp::KeyedPerStream | CatchUp::WindowedPerStream => {
                KeySource::StreamId
            }
            _ => KeySource::Payload(FieldPath::field(KEY_FIELD)),
        }
    }

    /// The registry holding this projection, and its table whose `events` column sums to
    /// the events applied.
    fn registry(self) -> Result<(Registry, &'static str)> {
        let counting = |by_key, grouped_by_key| Counting {
            name: self.name(),
            by_key,
            grouped_by_key,
            applied: None,
        };
        Ok(match self {
            CatchUp::Counting => (Registry::new().projection(counting(None, false)), "counts"),
            CatchUp::CountingPerStream => (
                Registry::new().projection(counting(Some(self.key()), false)),
                "counts",
            ),
            CatchUp::Keyed | CatchUp::KeyedPerStream => (
                Registry::new().projection(counting(Some(self.key()), true)),
                "counts",
            ),
            CatchUp::Windowed | CatchUp::WindowedPerStream => {
                let config = WindowConfig {
                    spec: WindowSpec::Tumbling { size: 60_000 },
                    allowed_lateness: 0,
                    late_policy: LatePolicy::Drop,
                    watermark: WatermarkConfig {
                        out_of_orderness: 1_000,
                        idle_timeout: Some(10_000),
                    },
                };
                let windowed = WindowedProjection::new(self.name(), config, Aggregate::Count)?
                    .with_key(self.key());
                (Registry::new().projection(windowed), "windows")
            }
        })
    }
}

fn engine_for(store: &EventStore, projection: Counting) -> ProjectionEngine {
    ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(projection),
        EngineConfig::default(),
    )
}

async fn counted(store: &EventStore, table: &str) -> Result<i64> {
    let client = store.pool().get().await?;
    let row = client
        .query_one(
            &format!("SELECT coalesce(sum(events), 0)::bigint FROM {table}"),
            &[],
        )
        .await
        .with_context(|| format!("reading the read model {table}"))?;
    Ok(row.get(0))
}

/// Runs `projection` from position 0 over the whole log of `schema` (which holds `total`
/// events) with the engine's defaults and returns how long it took to catch up.
pub async fn catch_up(schema: &Schema, total: u64, projection: CatchUp) -> Result<Duration> {
    let store = EventStore::open(schema.config.clone(), store_config()).await?;
    let name = projection.name();
    let (registry, table) = projection.registry()?;
    let engine = ProjectionEngine::new(store.clone(), registry, EngineConfig::default());
    let started = Instant::now();
    engine.start().await?;
    anyhow::ensure!(
        engine
            .run_until_caught_up(name, Duration::from_secs(1800))
            .await?,
        "the projection {name} did not catch up within 30 minutes"
    );
    let took = started.elapsed();
    let count = counted(&store, &format!("rm_{name}.{table}")).await?;
    anyhow::ensure!(
        count == total as i64,
        "the projection {name} counted {count} events of {total}"
    );
    engine.shutdown().await;
    store.shutdown().await;
    Ok(took)
}

/// Appends `events` single events at `rate` per second while the counting projection runs,
/// and measures, for each, the time from the append call to the commit of the checkpoint
/// that covers it (seen by polling the engine's lane progress every millisecond).
pub async fn read_model_latency(schema: &Schema, rate: u32, events: u64) -> Result<Latencies> {
    let store = EventStore::open(schema.config.clone(), store_config()).await?;
    let name = "bench_latency";
    let applied: Arc<Mutex<Pending>> = Arc::default();
    let engine = engine_for(
        &store,
        Counting {
            name,
            by_key: None,
            grouped_by_key: false,
            applied: Some(applied.clone()),
        },
    );
    engine.start().await?;
    engine
        .run_until_caught_up(name, Duration::from_secs(600))
        .await?;
    // Let the lease coordinator claim every partition before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.local_progress(name).len() < usize::from(store.partitions()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the engine did not start every partition"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start_position = store.head_position().await?;

    let monitor = {
        let engine = engine.clone();
        let applied = applied.clone();
        tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut seen = 0u64;
            while seen < events {
                for (partition, progress) in engine.local_progress(name) {
                    let now_us = now_micros();
                    let mut applied = applied.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(pending) = applied.get_mut(&partition) {
                        let later = pending.split_off(&(progress.checkpoint + 1));
                        for (position, sent) in std::mem::replace(pending, later) {
                            if position > start_position {
                                latencies.push(Duration::from_micros(now_us.saturating_sub(sent)));
                                seen += 1;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            latencies
        })
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = Vec::with_capacity(events as usize);
    for i in 0..events {
        tick.tick().await;
        let store = store.clone();
        appends.push(tokio::spawn(async move {
            let event = NewEvent::new("Measured", json!({"sent_at_us": now_micros(), "n": i}));
            store
                .append(AppendRequest::new(
                    format!("latency-{}", i % 1000),
                    ExpectedVersion::Any,
                    vec![event],
                ))
                .await
        }));
    }
    for append in appends {
        append.await.context("an appender task failed")??;
    }
    let latencies = tokio::time::timeout(Duration::from_secs(120), monitor)
        .await
        .context("the read model did not reflect every event within 2 minutes")?
        .context("the latency monitor failed")?;
    engine.shutdown().await;
    store.shutdown().await;
    Ok(latencies)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
