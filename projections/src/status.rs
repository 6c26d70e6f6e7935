//! Status and lag of projections, computed from the database so any process (the CLI, the
//! API of another node) sees the same figures.

use crate::error::{EngineError, Result};
use crate::kinds::{BuildKind, BuildStatus, ProjectionKind, ProjectionState, Target};
use crate::projection::{quote_ident, Grouping, Projection};
use crate::windowing::RowStatus;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use tidemark_store::{EventStore, PartitionBacklog, Position};

/// Lag of one partition of a projection.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub partition: i16,
    pub checkpoint: Position,
    /// Matching events after the checkpoint (capped at 1,000,000).
    pub lag_events: i64,
    /// Age of the oldest unprocessed matching event; 0 when caught up.
    pub lag_seconds: f64,
    pub events_per_second: f64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A partition of a projection that no live worker has owned for longer than a lease
/// period: nobody applies its events (no worker running the projection is alive, or none
/// could claim it). Lag on such a partition only grows.
#[derive(Debug, Clone, PartialEq)]
pub struct UnownedPartition {
    pub partition: i16,
    /// Since its lease expired or was given back; `None` when that time is unknown (never
    /// claimed, or released before this was recorded).
    pub unowned_seconds: Option<f64>,
}

/// A rebuild, replay or as-of build, running or finished.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    pub id: i64,
    pub kind: BuildKind,
    pub target: Target,
    pub from_position: Position,
    pub to_position: Option<Position>,
    pub events_done: i64,
    pub events_total: i64,
    pub position: Position,
    pub rate: f64,
    /// Seconds left at the current rate, when running.
    pub eta_seconds: Option<f64>,
    pub status: BuildStatus,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RebuildProgress {
    /// Done / total, from 0 to 1 (1 for a finished build of nothing).
    pub fn fraction(&self) -> f64 {
        if self.events_total <= 0 {
            if self.status == BuildStatus::Done {
                1.0
            } else {
                0.0
            }
        } else {
            (self.events_done as f64 / self.events_total as f64).min(1.0)
        }
    }
}

/// Everything an operator wants to know about one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: i32,
    /// Version of the live read model in the database (differs while a bump rebuilds).
    pub live_version: Option<i32>,
    pub status: ProjectionState,
    pub schema: String,
    pub head: Position,
    pub partitions: Vec<PartitionLag>,
    pub parked: i64,
    pub last_rebuild: Option<RebuildProgress>,
    /// Partitions no live worker has owned for longer than a lease period.
    pub unowned_partitions: Vec<UnownedPartition>,
    /// Watermark and lateness, for a windowed projection.
    pub window: Option<WindowProgress>,
}

/// Watermark and lateness of a windowed projection's live read model (its `window_meta` and
/// `windows` tables, see `docs/windowing.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowProgress {
    /// The lowest watermark of its shards: windows ending at or before it (plus the allowed
    /// lateness) are final. `None` until a shard has one.
    pub watermark: Option<DateTime<Utc>>,
    /// Shards (partitions its keys hash to) holding state.
    pub shards: i64,
    /// Events too late to update one of their windows (dropped, or past a revise retention).
    pub late_dropped: i64,
    /// Events too late, parked (`LatePolicy::Park`).
    pub late_parked: i64,
    /// Windows whose result may still change (`open` or `complete`).
    pub open_windows: i64,
}

async fn window_progress(
    client: &deadpool_postgres::Client,
    schema: &str,
) -> Result<WindowProgress> {
    let meta = format!("{}.{}", quote_ident(schema), quote_ident("window_meta"));
    let windows = format!("{}.{}", quote_ident(schema), quote_ident("windows"));
    let row = client
        .query_one(
            &format!(
                "SELECT min(watermark), count(*), coalesce(sum(late_dropped), 0)::bigint,
                        coalesce(sum(late_parked), 0)::bigint,
                        (SELECT count(*) FROM {windows} WHERE status = ANY($1))
                   FROM {meta}"
            ),
            &[&&[RowStatus::Open.as_str(), RowStatus::Complete.as_str()][..]],
        )
        .await
        .map_err(EngineError::db("reading a windowed projection's watermark"))?;
    Ok(WindowProgress {
        watermark: row.get(0),
        shards: row.get(1),
        late_dropped: row.get(2),
        late_parked: row.get(3),
        open_windows: row.get(4),
    })
}

impl ProjectionStatus {
    pub fn lag_events(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag_events).sum()
    }

    pub fn lag_seconds(&self) -> f64 {
        self.partitions
            .iter()
            .map(|p| p.lag_seconds)
            .fold(0.0, f64::max)
    }

    pub fn events_per_second(&self) -> f64 {
        self.partitions.iter().map(|p| p.events_per_second).sum()
    }

    /// The read model reflects every matching event up to this position: the lowest
    /// checkpoint over partitions that still have events to apply, or the head when none
    /// has (a partition without matching events has nothing to wait for).
    pub fn caught_up_to(&self) -> Position {
        self.partitions
            .iter()
            .map(|p| {
                if p.lag_events > 0 {
                    p.checkpoint
                } else {
                    self.head
                }
            })
            .min()
            .unwrap_or(self.head)
    }
}

/// Matching events after a checkpoint are counted up to this many (a status read costs no
/// more on a huge backlog).
const LAG_COUNT_CAP: i64 = 1_000_000;

/// Per-partition lag of `projection`'s live read model, counting events up to `upto`.
pub(crate) async fn partition_lag(
    store: &EventStore,
    projection: &dyn Projection,
    upto: Position,
) -> Result<Vec<PartitionLag>> {
    let checkpoints = crate::checkpoint::live(store, projection).await?;
    let filter = projection.selector().log_filter(None);
    let backlog = match projection.grouping() {
        Grouping::ByStream => {
            let positions: Vec<(i16, Position)> = checkpoints
                .iter()
                .map(|c| (c.partition, c.position))
                .collect();
            store
                .backlog(&positions, upto, &filter, LAG_COUNT_CAP)
                .await?
        }
        // A keyed lane reads every partition: its backlog is what follows its checkpoint
        // anywhere in the log (an upper bound: some of it is other lanes' keys).
        // Lanes at one position (all of them, once caught up: they move past the events
        // of the others together) share one count.
        Grouping::ByKey(_) | Grouping::Shuffle | Grouping::LogOrder => {
            let mut counted: HashMap<Position, (i64, Option<f64>)> = HashMap::new();
            let mut backlogs = Vec::with_capacity(checkpoints.len());
            for checkpoint in &checkpoints {
                let (events, oldest_age_seconds) = match counted.get(&checkpoint.position) {
                    Some(known) => *known,
                    None => {
                        let everywhere: Vec<(i16, Position)> = (0..store.partitions() as i16)
                            .map(|p| (p, checkpoint.position))
                            .collect();
                        let parts = store
                            .backlog(&everywhere, upto, &filter, LAG_COUNT_CAP)
                            .await?;
                        let backlog = (
                            parts.iter().map(|b| b.events).sum(),
                            parts
                                .iter()
                                .filter_map(|b| b.oldest_age_seconds)
                                .reduce(f64::max),
                        );
                        counted.insert(checkpoint.position, backlog);
                        backlog
                    }
                };
                backlogs.push(PartitionBacklog {
                    partition: checkpoint.partition,
                    events,
                    oldest_age_seconds,
                });
            }
            backlogs
        }
    };
    Ok(checkpoints
        .into_iter()
        .zip(backlog)
        .map(|(checkpoint, backlog)| PartitionLag {
            partition: checkpoint.partition,
            checkpoint: checkpoint.position,
            events_per_second: checkpoint.events_per_second,
            updated_at: checkpoint.updated_at,
            lag_events: backlog.events,
            lag_seconds: backlog.oldest_age_seconds.unwrap_or(0.0).max(0.0),
        })
        .collect())
}

/// Partitions of each of `projections` that no live worker has owned for longer than
/// `lease_ttl`, by projection. A lease is owned while unexpired (its owner renews it every
/// third of the TTL, and a dead or retired owner's lease expires or is expired at once), so
/// an expiry older than a lease period means nobody has claimed the partition since.
pub(crate) async fn unowned_partitions(
    pool: &deadpool_postgres::Pool,
    projections: &[&str],
    lease_ttl: std::time::Duration,
) -> Result<Vec<(String, UnownedPartition)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT projection, partition,
                    CASE WHEN isfinite(expires_at) THEN extract(epoch FROM now() - expires_at)::float8 END
               FROM projection_leases
              WHERE projection = ANY($1) AND expires_at < now() - make_interval(secs => $2)
              ORDER BY projection, partition",
            &[&projections, &lease_ttl.as_secs_f64()],
        )
        .await
        .map_err(EngineError::db("looking for unowned partitions"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                UnownedPartition {
                    partition: r.get(1),
                    unowned_seconds: r.get(2),
                },
            )
        })
        .collect())
}

pub(crate) async fn projection_status(
    store: &EventStore,
    projection: &Arc<dyn Projection>,
    lease_ttl: std::time::Duration,
) -> Result<ProjectionStatus> {
    let head = store.head_position().await?;
    let partitions = partition_lag(store, projection.as_ref(), head).await?;
    let client = store.pool().get().await?;
    let row = client
        .query_opt(
            "SELECT version, status FROM projections WHERE name = $1",
            &[&projection.name()],
        )
        .await
        .map_err(EngineError::db("reading a projection"))?;
    let parked: i64 = client
        .query_one(
            "SELECT count(*) FROM projection_dead_letters WHERE projection = $1 AND replayed_at IS NULL",
            &[&projection.name()],
        )
        .await
        .map_err(EngineError::db("counting parked events"))?
        .get(0);
    let unowned_partitions = unowned_partitions(store.pool(), &[projection.name()], lease_ttl)
        .await?
        .into_iter()
        .map(|(_, unowned)| unowned)
        .collect();
    let last_rebuild = rebuilds(store, projection.name(), 1)
        .await?
        .into_iter()
        .next();
    let (live_version, status) = match row {
        Some(r) => (
            Some(r.get::<_, i32>(0)),
            r.try_get::<_, ProjectionState>(1)
                .map_err(EngineError::db("reading a projection's state"))?,
        ),
        None => (None, ProjectionState::NotStarted),
    };
    let window = match (projection.kind(), live_version) {
        (ProjectionKind::Windowed, Some(_)) => {
            Some(window_progress(&client, &projection.schema()).await?)
        }
        _ => None,
    };
    let status = match &last_rebuild {
        Some(r) if r.status == BuildStatus::Running && r.target == Target::Shadow => {
            ProjectionState::Rebuilding
        }
        _ => status,
    };
    Ok(ProjectionStatus {
        name: projection.name().to_string(),
        version: projection.version(),
        live_version,
        status,
        schema: projection.schema(),
        head,
        partitions,
        parked,
        last_rebuild,
        unowned_partitions,
        window,
    })
}

/// The latest `limit` rebuilds of `projection`, newest first.
pub async fn rebuilds(
    store: &EventStore,
    projection: &str,
    limit: i64,
) -> Result<Vec<RebuildProgress>> {
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT id, kind, target, from_position, to_position, events_done, events_total, position, rate,
                    status, error, started_at, finished_at
               FROM projection_rebuilds WHERE projection = $1 ORDER BY id DESC LIMIT $2",
            &[&projection, &limit],
        )
        .await
        .map_err(EngineError::db("reading rebuild progress"))?;
    rows.iter()
        .map(|r| {
            let done: i64 = r.get(5);
            let total: i64 = r.get(6);
            let rate: f64 = r.get(8);
            let status: BuildStatus = r.try_get(9)?;
            Ok(RebuildProgress {
                id: r.get(0),
                kind: r.try_get(1)?,
                target: r.try_get(2)?,
                from_position: r.get(3),
                to_position: r.get(4),
                events_done: done,
                events_total: total,
                position: r.get(7),
                rate,
                eta_seconds: (status == BuildStatus::Running && rate > 0.0)
                    .then(|| (total - done).max(0) as f64 / rate),
                status,
                error: r.get(10),
                started_at: r.get(11),
                finished_at: r.get(12),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(EngineError::db("reading rebuild progress"))
}

/// Number of partitions of `projection`'s live read model that have not yet applied every
/// matching event up to `position`. 0 means a reader of the read model sees `position`.
pub(crate) async fn partitions_behind(
    store: &EventStore,
    projection: &dyn Projection,
    position: Position,
) -> Result<usize> {
    let checkpoints = crate::checkpoint::live(store, projection).await?;
    let positions: Vec<(i16, Position)> = match projection.grouping() {
        Grouping::ByStream => checkpoints
            .iter()
            .map(|c| (c.partition, c.position))
            .collect(),
        // Keyed lanes read every partition: the log is applied everywhere up to the lowest
        // of their checkpoints (a wait past it waits for every keyed lane; never too short).
        Grouping::ByKey(_) | Grouping::Shuffle | Grouping::LogOrder => {
            let lowest = checkpoints.iter().map(|c| c.position).min().unwrap_or(0);
            (0..store.partitions() as i16)
                .map(|p| (p, lowest))
                .collect()
        }
    };
    Ok(store
        .partitions_behind(
            &positions,
            position,
            &projection.selector().log_filter(None),
        )
        .await?
        .len())
}
