//! The worker registry: every engine registers its process, heartbeats, and deregisters on
//! graceful shutdown. Entries that miss heartbeats are dead; their leases expire and are
//! claimed by live workers. Each entry also lists the projections the worker runs (shares
//! are computed per projection among the workers that run it) and identifies its process
//! well enough that a worker on the same machine can see it has died without waiting for
//! its heartbeat to age (a process restarted after `kill -9` takes over its previous life's
//! partitions at once). This module writes the `workers` table only; what happens to a dead
//! worker's leases is the lease coordinator's (`lease.rs`).

use crate::error::{EngineError, Result};
use crate::scaling::ScalingSignal;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::time::Duration;
use tidemark_pg_embedded::process::still_running;
use tidemark_store::EventStore;
use uuid::Uuid;

/// Where a pid means something, and which process had it (the one implementation, in the
/// launcher crate's `process` module, re-exported here for the worker registry's users).
pub use tidemark_pg_embedded::process::ProcessIdentity;

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
    /// The projections whose live lanes it runs, as of its last heartbeat.
    pub projections: Vec<String>,
}

/// A live worker as the lease coordinator sees it at a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveWorker {
    pub id: Uuid,
    pub pool: String,
    pub projections: Vec<String>,
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
    let rows = live_workers_query(
        &client,
        "pool, count(*), max(desired_workers), max(lag_events)",
        "GROUP BY pool ORDER BY pool",
        timeout,
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

/// `SELECT columns FROM workers` of the live workers (not stopped, heartbeat within
/// `timeout`): the one definition of "live" every reader of the registry uses.
async fn live_workers_query(
    client: &deadpool_postgres::Client,
    columns: &str,
    then: &str,
    timeout: Duration,
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    client
        .query(
            &format!(
                "SELECT {columns} FROM workers
                  WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
                  {then}"
            ),
            &[&timeout.as_secs_f64()],
        )
        .await
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
    /// Enough to tell from the same machine whether the process still runs; `None` where
    /// the platform does not say.
    pub process: Option<ProcessIdentity>,
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
            process: ProcessIdentity::this_process(),
        }
    }
}

pub(crate) async fn register(
    pool: &Pool,
    me: &WorkerIdentity,
    projections: &[String],
) -> Result<()> {
    let client = pool.get().await?;
    let (scope, started) = match &me.process {
        Some(p) => (Some(p.scope.as_str()), Some(p.started)),
        None => (None, None),
    };
    client
        .execute(
            "INSERT INTO workers (id, host, pid, address, pool, version, projections, process_scope, process_started)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL, projections = $7",
            &[
                &me.id,
                &me.host,
                &me.pid,
                &me.address,
                &me.pool,
                &me.version,
                &projections,
                &scope,
                &started,
            ],
        )
        .await
        .map_err(EngineError::db("registering the worker"))?;
    Ok(())
}

/// Heartbeats (publishing the projections this worker runs now) and returns the live
/// workers of every pool, sorted by id.
pub(crate) async fn heartbeat(
    pool: &Pool,
    me: &WorkerIdentity,
    timeout: Duration,
    signal: &ScalingSignal,
    projections: &[String],
) -> Result<Vec<LiveWorker>> {
    let client = pool.get().await?;
    let updated = client
        .execute(
            "UPDATE workers SET heartbeat_at = now(), stopped_at = NULL, concurrency = $2,
                    desired_workers = $3, lag_events = $4, projections = $5
              WHERE id = $1",
            &[
                &me.id,
                &(signal.concurrency as i32),
                &(signal.desired_workers.max(1) as i32),
                &signal.lag_events,
                &projections,
            ],
        )
        .await
        .map_err(EngineError::db("heartbeating"))?;
    if updated == 0 {
        // Our entry is gone (cleaned up by an operator): register again.
        register(pool, me, projections).await?;
    }
    let rows = live_workers_query(&client, "id, pool, projections", "ORDER BY id", timeout)
        .await
        .map_err(EngineError::db("listing live workers"))?;
    Ok(rows
        .iter()
        .map(|r| LiveWorker {
            id: r.get(0),
            pool: r.get(1),
            projections: r.get(2),
        })
        .collect())
}

/// The workers registered from this machine whose process has died (a previous life of
/// this process killed with SIGKILL, a sibling the OOM killer took), with their pids.
///
/// Only entries with this process's scope (boot id and pid namespace) are judged, so their
/// pids are ones we can look up; entries of another machine, another pid namespace or a
/// platform without `/proc` are never found dead here, they age out by heartbeat.
pub(crate) async fn dead_on_this_host(
    client: &deadpool_postgres::Client,
    me: &WorkerIdentity,
) -> Result<Vec<(Uuid, i32)>> {
    let Some(process) = &me.process else {
        return Ok(Vec::new());
    };
    let candidates = client
        .query(
            "SELECT id, pid, process_started FROM workers
              WHERE host = $1 AND process_scope = $2 AND id <> $3 AND stopped_at IS NULL",
            &[&me.host, &process.scope, &me.id],
        )
        .await
        .map_err(EngineError::db("looking for dead workers on this host"))?;
    Ok(candidates
        .iter()
        .map(|r| (r.get::<_, Uuid>(0), r.get::<_, i32>(1), r.get(2)))
        .filter(|(_, pid, started)| !still_running(*pid, *started))
        .map(|(id, pid, _)| (id, pid))
        .collect())
}

/// Marks a dead worker stopped, in the caller's transaction; `false` when it already was
/// (another worker of this machine retired it first).
pub(crate) async fn mark_dead(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> Result<bool> {
    let stopped = tx
        .execute(
            "UPDATE workers SET stopped_at = now() WHERE id = $1 AND stopped_at IS NULL",
            &[&id],
        )
        .await
        .map_err(EngineError::db("retiring a dead worker"))?;
    Ok(stopped > 0)
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
                    w.concurrency, w.desired_workers, w.lag_events, w.projections,
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
            projections: r.get(13),
            leases: r.get(14),
        })
        .collect())
}
