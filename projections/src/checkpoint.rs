//! Checkpoints per (projection, target, partition) in `projection_checkpoints`.

use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::kinds::Target;
use crate::lane::LaneSpec;
use chrono::{DateTime, Utc};
use tidemark_store::{EventStore, Position};

/// The lane's checkpoint, creating it at 0 if missing.
pub(crate) async fn load(store: &EventStore, spec: &LaneSpec) -> Result<Position> {
    let client = store.pool().get().await?;
    let row = client
        .query_one(
            "INSERT INTO projection_checkpoints (projection, target, partition, position)
             VALUES ($1, $2, $3, 0)
             ON CONFLICT (projection, target, partition) DO UPDATE SET projection = EXCLUDED.projection
             RETURNING position",
            &[&spec.projection.name(), &spec.target, &spec.checkpoint_partition()],
        )
        .await
        .map_err(EngineError::db("loading a checkpoint"))?;
    Ok(row.get(0))
}

/// First statement of every batch transaction: locks the checkpoint row and checks that it
/// still holds `expected` and, for leased lanes, that the lease is still ours. Locking the
/// checkpoint before touching the read model also orders us behind a read-model swap.
///
/// Returns `false` when the lane lost its lease (the fence is marked lost). A checkpoint
/// moved by someone else (a swap after a rebuild) is an error that restarts the lane from
/// the new checkpoint.
pub(crate) async fn lock_and_check(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    fence: &Fence,
    expected: Position,
) -> Result<bool> {
    if fence.lease.is_some() {
        // A worker paused inside this transaction (SIGSTOP, a stall) must not keep its locks
        // forever: the server ends the session once it has idled past the limit.
        tx.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            fence.idle_limit.as_millis().max(1)
        ))
        .await
        .map_err(EngineError::db("limiting idle time"))?;
        if !lease_still_held(tx, spec, fence).await? {
            return Ok(false);
        }
    }
    let statement = tx
        .prepare_cached(
            "SELECT position FROM projection_checkpoints
              WHERE projection = $1 AND target = $2 AND partition = $3
              FOR UPDATE",
        )
        .await
        .map_err(EngineError::db("preparing the checkpoint lock"))?;
    let row = tx
        .query_opt(
            &statement,
            &[
                &spec.projection.name(),
                &spec.target,
                &spec.checkpoint_partition(),
            ],
        )
        .await
        .map_err(EngineError::db("locking a checkpoint"))?;
    let actual: Option<Position> = row.map(|r| r.get(0));
    if actual != Some(expected) {
        return Err(EngineError::CheckpointMoved {
            projection: spec.projection.name().to_string(),
            expected,
            actual,
        });
    }
    Ok(true)
}

/// Does this lane still hold its lease (owner, epoch, not expired by the clock now)? Checked
/// first and again just before COMMIT, so a lane that lost its lease while paused cannot
/// commit. Marks the fence lost when not. Lanes without a lease always pass.
pub(crate) async fn lease_still_held(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    fence: &Fence,
) -> Result<bool> {
    let Some(lease) = fence.lease else {
        return Ok(true);
    };
    let statement = tx
        .prepare_cached(
            "SELECT 1 FROM projection_leases
              WHERE projection = $1 AND partition = $2 AND owner = $3 AND epoch = $4
                AND expires_at > clock_timestamp()
              FOR KEY SHARE",
        )
        .await
        .map_err(EngineError::db("preparing the lease check"))?;
    let held = tx
        .query_opt(
            &statement,
            &[
                &spec.projection.name(),
                &spec.checkpoint_partition(),
                &lease.owner,
                &lease.epoch,
            ],
        )
        .await
        .map_err(EngineError::db("checking the lease"))?
        .is_some();
    if !held {
        fence.mark_lost();
        metrics::counter!("tidemark_projection_fenced_total", "projection" => spec.projection.name().to_string()).increment(1);
        tracing::warn!(
            projection = spec.projection.name(),
            partition = spec.checkpoint_partition(),
            epoch = lease.epoch,
            "lease lost; refusing to commit"
        );
    }
    Ok(held)
}

/// Moves the (locked) checkpoint to `position`, recording the lane's recent rate when given
/// (status shows it while the checkpoint is fresh; see `status`).
pub(crate) async fn advance(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    position: Position,
    events_per_second: Option<f64>,
) -> Result<()> {
    let statement = tx
        .prepare_cached(
            "UPDATE projection_checkpoints
                SET position = $4, updated_at = now(),
                    events_per_second = coalesce($5, events_per_second)
              WHERE projection = $1 AND target = $2 AND partition = $3",
        )
        .await
        .map_err(EngineError::db("preparing the checkpoint update"))?;
    tx.execute(
        &statement,
        &[
            &spec.projection.name(),
            &spec.target,
            &spec.checkpoint_partition(),
            &position,
            &events_per_second,
        ],
    )
    .await
    .map_err(EngineError::db("advancing a checkpoint"))?;
    Ok(())
}

/// A live checkpoint as status reports it.
pub(crate) struct LiveCheckpoint {
    pub partition: i16,
    pub position: Position,
    /// The rate of the lane's last batches while they are recent (10 s); 0 for an idle lane.
    pub events_per_second: f64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The live checkpoint of every partition of `projection` (position 0 where none exists yet).
pub(crate) async fn live(store: &EventStore, projection: &str) -> Result<Vec<LiveCheckpoint>> {
    let client = store.pool().get().await?;
    let statement = client
        .prepare_cached(
            "SELECT p.partition::smallint, coalesce(c.position, 0),
                    CASE WHEN c.updated_at > now() - interval '10 seconds'
                         THEN coalesce(c.events_per_second, 0) ELSE 0 END,
                    c.updated_at
               FROM generate_series(0, $2 - 1) AS p(partition)
               LEFT JOIN projection_checkpoints c
                      ON c.projection = $1 AND c.target = $3 AND c.partition = p.partition
              ORDER BY p.partition",
        )
        .await
        .map_err(EngineError::db("preparing the live checkpoints query"))?;
    let rows = client
        .query(
            &statement,
            &[&projection, &i32::from(store.partitions()), &Target::Live],
        )
        .await
        .map_err(EngineError::db("reading live checkpoints"))?;
    Ok(rows
        .iter()
        .map(|r| LiveCheckpoint {
            partition: r.get(0),
            position: r.get(1),
            events_per_second: r.get(2),
            updated_at: r.get(3),
        })
        .collect())
}
