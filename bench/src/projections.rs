//! Projection figures (issue #4): the catch-up rate of a simple counting projection over the
//! log beside the raw scan of the same rows, and append→read-model latency at a fixed rate
//! (an event counts as delivered when the checkpoint covering it has committed).

use crate::env::Schema;
use crate::harness::Latencies;
use anyhow::{Context, Result};
use async_trait::async_trait;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tidemark_projections::{
    ApplyContext, EngineConfig, Projection, ProjectionEngine, ProjectionError, RecordedEvent,
    Registry,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreConfig};

/// The store's and the engine's migrations: the seeded schema has only the store's.
fn store_config() -> StoreConfig {
    StoreConfig {
        migrations: tidemark_projections::migrations(),
        ..StoreConfig::default()
    }
}

/// Counts events per partition: about the cheapest read model there is, so the figure is
/// the engine's own cost (fetch, decode, transaction, checkpoint).
struct Counting {
    name: &'static str,
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

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "counts",
            "partition smallint PRIMARY KEY, events bigint NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut per_partition: BTreeMap<i16, i64> = BTreeMap::new();
        for event in events {
            *per_partition.entry(event.partition).or_default() += 1;
        }
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS c VALUES ($1, $2)
                 ON CONFLICT (partition) DO UPDATE SET events = c.events + EXCLUDED.events",
                ctx.table("counts")
            ))
            .await?;
        for (partition, count) in per_partition {
            ctx.tx.execute(&upsert, &[&partition, &count]).await?;
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

fn engine_for(store: &EventStore, projection: Counting) -> ProjectionEngine {
    ProjectionEngine::new(
        store.clone(),
        Registry::new().projection(projection),
        EngineConfig::default(),
    )
}

async fn counted(store: &EventStore, schema: &str) -> Result<i64> {
    let client = store.pool().get().await?;
    let row = client
        .query_one(
            &format!("SELECT coalesce(sum(events), 0)::bigint FROM {schema}.counts"),
            &[],
        )
        .await
        .context("reading the counting read model")?;
    Ok(row.get(0))
}

/// Runs the counting projection from position 0 over the whole log of `schema` (which
/// holds `total` events) and returns how long it took to catch up.
pub async fn catch_up(schema: &Schema, total: u64) -> Result<Duration> {
    let store = EventStore::open(schema.config.clone(), store_config()).await?;
    let name = "bench_catch_up";
    let engine = engine_for(
        &store,
        Counting {
            name,
            applied: None,
        },
    );
    let started = Instant::now();
    engine.start().await?;
    anyhow::ensure!(
        engine
            .run_until_caught_up(name, Duration::from_secs(1800))
            .await?,
        "the counting projection did not catch up within 30 minutes"
    );
    let took = started.elapsed();
    let count = counted(&store, "rm_bench_catch_up").await?;
    anyhow::ensure!(
        count == total as i64,
        "the projection counted {count} events of {total}"
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
