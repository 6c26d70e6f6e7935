//! The worker registry: every engine registers its process, heartbeats, and deregisters on
//! graceful shutdown. Entries that miss heartbeats are dead; their leases expire and are
//! claimed by live workers.

use crate::error::{EngineError, Result};
use crate::scaling::ScalingSignal;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::time::Duration;
use tidemark_store::EventStore;
use uuid::Uuid;

/// A registered worker process, as listed by `tidemark workers` and the API.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub host: String,
    pub pid: i32,
    pub address: Option<String>,
    pub pool: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeat within the timeout and not stopped.
    pub alive: bool,
    pub concurrency: i32,
    /// The `desired_workers` it last computed for its pool.
    pub desired_workers: i32,
    /// Unprocessed events over its pool's projections, as it last measured.
    pub lag_events: i64,
    /// `projection#partition` of every lease it holds.
    pub leases: Vec<String>,
}

/// The scaling figures of one pool, from its live workers' latest heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolScaling {
    pub pool: String,
    pub live_workers: i64,
    /// The highest `desired_workers` reported by a live worker of the pool.
    pub desired_workers: i32,
    pub lag_events: i64,
}

/// `desired_workers` per pool, for autoscalers and operators.
pub async fn pool_scaling(store: &EventStore, timeout: Duration) -> Result<Vec<PoolScaling>> {
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT pool, count(*), max(desired_workers), max(lag_events) FROM workers
              WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
              GROUP BY pool ORDER BY pool",
            &[&timeout.as_secs_f64()],
        )
        .await
        .map_err(EngineError::db("reading pool scaling"))?;
    Ok(rows
        .iter()
        .map(|r| PoolScaling {
            pool: r.get(0),
            live_workers: r.get(1),
            desired_workers: r.get(2),
            lag_events: r.get(3),
        })
        .collect())
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub id: Uuid,
    pub host: String,
    pub pid: i32,
    /// Where its API listens, if it serves one.
    pub address: Option<String>,
    pub pool: String,
    pub version: String,
}

impl WorkerIdentity {
    /// This process, in `pool`.
    pub fn this_process(pool: &str, address: Option<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "unknown".to_string());
        WorkerIdentity {
            id: Uuid::now_v7(),
            host,
            pid: std::process::id() as i32,
            address,
            pool: pool.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

pub(crate) async fn register(pool: &Pool, me: &WorkerIdentity) -> Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO workers (id, host, pid, address, pool, version) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
            &[&me.id, &me.host, &me.pid, &me.address, &me.pool, &me.version],
        )
        .await
        .map_err(EngineError::db("registering the worker"))?;
    Ok(())
}

/// Heartbeats and returns the ids of the live workers of `pool`, sorted.
pub(crate) async fn heartbeat(
    pool: &Pool,
    me: &WorkerIdentity,
    timeout: Duration,
    signal: &ScalingSignal,
) -> Result<Vec<Uuid>> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE workers SET heartbeat_at = now(), stopped_at = NULL, concurrency = $2,
                    desired_workers = $3, lag_events = $4
              WHERE id = $1",
            &[
                &me.id,
                &(signal.concurrency as i32),
                &(signal.desired_workers.max(1) as i32),
                &signal.lag_events,
            ],
        )
        .await
        .map_err(EngineError::db("heartbeating"))?;
    if updated == 0 {
        // Our entry is gone (cleaned up by an operator): register again.
        register(pool, me).await?;
    }
    let rows = client
        .query(
            "SELECT id FROM workers
              WHERE pool = $1 AND stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $2)
              ORDER BY id",
            &[&me.pool, &timeout.as_secs_f64()],
        )
        .await
        .map_err(EngineError::db("listing live workers"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) async fn deregister(pool: &Pool, me: &WorkerIdentity) -> Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE workers SET stopped_at = now() WHERE id = $1",
            &[&me.id],
        )
        .await
        .map_err(EngineError::db("deregistering the worker"))?;
    Ok(())
}

/// Every registered worker (dead ones too, most recent first), with the leases it holds.
pub async fn list(store: &EventStore, timeout: Duration) -> Result<Vec<WorkerInfo>> {
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT w.id, w.host, w.pid, w.address, w.pool, w.version, w.started_at, w.heartbeat_at, w.stopped_at,
                    (w.stopped_at IS NULL AND w.heartbeat_at > now() - make_interval(secs => $1)),
                    w.concurrency, w.desired_workers, w.lag_events,
                    coalesce(array_agg(l.projection || '#' || l.partition ORDER BY l.projection, l.partition)
                             FILTER (WHERE l.projection IS NOT NULL), '{}')
               FROM workers w
               LEFT JOIN projection_leases l ON l.owner = w.id AND l.expires_at > now()
              GROUP BY w.id
              ORDER BY w.started_at DESC",
            &[&timeout.as_secs_f64()],
        )
        .await
        .map_err(EngineError::db("listing workers"))?;
    Ok(rows
        .iter()
        .map(|r| WorkerInfo {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            address: r.get(3),
            pool: r.get(4),
            version: r.get(5),
            started_at: r.get(6),
            heartbeat_at: r.get(7),
            stopped_at: r.get(8),
            alive: r.get(9),
            concurrency: r.get(10),
            desired_workers: r.get(11),
            lag_events: r.get(12),
            leases: r.get(13),
        })
        .collect())
}
