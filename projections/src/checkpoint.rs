//! Checkpoints per (projection, target, partition) in `projection_checkpoints`: every
//! statement that writes that table is here (a tidy test checks it). Lanes move their own
//! checkpoint only through the lane's commit primitive (`lane::commit`); builds reset a
//! target's checkpoints and the swap moves the live ones.

use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::kinds::Target;
use crate::spec::{LaneSpec, ALL_PARTITIONS};
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

/// What locking a lane's checkpoint found.
pub(crate) enum Locked {
    /// The lane lost its lease (the fence is marked lost); nothing may be written.
    LeaseLost,
    /// The checkpoint row is locked; its position (`None`: the lane has no row yet).
    Row(Option<Position>),
}

/// First statement of every transaction that applies events: locks the checkpoint row and,
/// for leased lanes, checks the lease is still ours. Locking the checkpoint before touching
/// the read model also orders us behind a read-model swap.
pub(crate) async fn lock(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    fence: &Fence,
) -> Result<Locked> {
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
            return Ok(Locked::LeaseLost);
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
    Ok(Locked::Row(row.map(|r| r.get(0))))
}

/// Locks the live checkpoints of every partition of `projection`: live lanes lock their
/// checkpoint first in every batch, so holding these waits for the batches in flight and
/// keeps new ones out until the transaction ends (the swap pauses the live lanes so).
pub(crate) async fn lock_live(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
) -> Result<()> {
    tx.execute(
        "SELECT 1 FROM projection_checkpoints WHERE projection = $1 AND target = $2
          ORDER BY partition FOR UPDATE",
        &[&projection, &Target::Live],
    )
    .await
    .map_err(EngineError::db("pausing the live lanes"))?;
    Ok(())
}

/// A build starts over: the checkpoints of `target` are replaced by one all-partitions
/// checkpoint at `from`.
pub(crate) async fn restart_target(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
    target: &Target,
    from: Position,
) -> Result<()> {
    remove_target(tx, projection, target).await?;
    tx.execute(
        "INSERT INTO projection_checkpoints (projection, target, partition, position) VALUES ($1, $2, $3, $4)",
        &[&projection, target, &ALL_PARTITIONS, &from],
    )
    .await
    .map_err(EngineError::db("starting build checkpoints"))?;
    Ok(())
}

/// After a swap: every live lane of `projection` (`lanes` of them) reflects the log up to
/// `position`.
pub(crate) async fn move_live(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
    lanes: u16,
    position: Position,
) -> Result<()> {
    tx.execute(
        "INSERT INTO projection_checkpoints (projection, target, partition, position)
         SELECT $1, $4, p, $3 FROM generate_series(0, $2 - 1) AS p
         ON CONFLICT (projection, target, partition) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        &[&projection, &i32::from(lanes), &position, &Target::Live],
    )
    .await
    .map_err(EngineError::db("moving the live checkpoints"))?;
    Ok(())
}

/// Places the live checkpoint of every lane of `projection` at `position`, unless it has
/// live checkpoints already (then nothing changes): a projection that starts at the head, or
/// at a given position, instead of at the beginning of the log. Returns whether it placed
/// them.
pub(crate) async fn start_live_at(
    store: &EventStore,
    projection: &dyn crate::projection::Projection,
    position: Position,
) -> Result<bool> {
    let lanes = projection.grouping().lanes(store.partitions());
    let mut client = store.pool().get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(EngineError::db("placing the first checkpoints"))?;
    // Serialises with another process placing them at the same time.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tidemark.start_live_at:' || $1))",
        &[&projection.name()],
    )
    .await
    .map_err(EngineError::db("placing the first checkpoints"))?;
    let existing = tx
        .query_one(
            "SELECT count(*) FROM projection_checkpoints WHERE projection = $1 AND target = $2",
            &[&projection.name(), &Target::Live],
        )
        .await
        .map_err(EngineError::db("placing the first checkpoints"))?
        .get::<_, i64>(0);
    if existing == 0 {
        tx.execute(
            "INSERT INTO projection_checkpoints (projection, target, partition, position)
             SELECT $1, $4, p, $3 FROM generate_series(0, $2 - 1) AS p",
            &[
                &projection.name(),
                &i32::from(lanes),
                &position,
                &Target::Live,
            ],
        )
        .await
        .map_err(EngineError::db("placing the first checkpoints"))?;
    }
    tx.commit()
        .await
        .map_err(EngineError::db("placing the first checkpoints"))?;
    Ok(existing == 0)
}

/// Drops the checkpoints of `target` (a finished or restarted build's).
pub(crate) async fn remove_target(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
    target: &Target,
) -> Result<()> {
    tx.execute(
        "DELETE FROM projection_checkpoints WHERE projection = $1 AND target = $2",
        &[&projection, target],
    )
    .await
    .map_err(EngineError::db("removing build checkpoints"))?;
    Ok(())
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
/// (status shows it while the checkpoint is fresh; see `status`). Called by the lane's commit
/// primitive only.
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

/// The live checkpoint of every lane of `projection` (position 0 where none exists yet).
pub(crate) async fn live(
    store: &EventStore,
    projection: &dyn crate::projection::Projection,
) -> Result<Vec<LiveCheckpoint>> {
    let lanes = projection.grouping().lanes(store.partitions());
    let projection = projection.name();
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
        .query(&statement, &[&projection, &i32::from(lanes), &Target::Live])
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
