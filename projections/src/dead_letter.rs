//! Parked events (dead letters) in `projection_dead_letters`: what a projection could not
//! apply after its retries. The statements on that table live here; parking and replaying
//! apply through the lane's commit primitive (`lane::park`, `lane::replay`).

use crate::error::{EngineError, Result};
use crate::kinds::{ProjectionState, Target};
use crate::spec::LaneSpec;
use chrono::{DateTime, Utc};
use tidemark_store::{EventStore, Position, RecordedEvent};
use uuid::Uuid;

/// A parked event as listed to operators.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub projection: String,
    pub partition: i16,
    pub position: Position,
    pub event_id: Uuid,
    pub error: String,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Records `event` as parked (or parked again, after a replay that failed), in the
/// transaction that also moves the lane past it (see `Lane::park`). Its partition is the
/// lane's (for a keyed projection, the lane of its key, not of its stream), so a replay
/// orders itself with the lane that parked it.
pub(crate) async fn record(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> Result<()> {
    tx.execute(
        "INSERT INTO projection_dead_letters (projection, partition, position, event_id, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (projection, event_id) DO UPDATE
            SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now(), replayed_at = NULL",
        &[&spec.projection.name(), &spec.partition.unwrap_or(event.partition), &event.position, &event.event_id, &error, &(attempts as i32)],
    )
    .await
    .map_err(EngineError::db("parking an event"))?;
    Ok(())
}

/// Marks `projection` stopped on a poison event (`ParkAndStop`): its lanes wait until an
/// operator replays the parked event.
pub(crate) async fn stop_projection(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE projections SET status = $2, updated_at = now() WHERE name = $1",
        &[&projection, &ProjectionState::Stopped],
    )
    .await
    .map_err(EngineError::db("stopping a projection"))?;
    Ok(())
}

/// Positions of this lane's parked, unreplayed events after `checkpoint`: a partition
/// stopped by `ParkAndStop` keeps its checkpoint before the event, so a lane that resumes
/// (after a fix and a restart) applies the event itself and must mark it resolved, or a
/// later replay would apply it a second time. Only live lanes: a shadow's apply counts
/// only if it is swapped in.
pub(crate) async fn parked_ahead(
    store: &EventStore,
    spec: &LaneSpec,
    checkpoint: Position,
) -> Result<Vec<Position>> {
    if spec.target != Target::Live {
        return Ok(Vec::new());
    }
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT position FROM projection_dead_letters
              WHERE projection = $1 AND replayed_at IS NULL AND position > $2
                AND ($3::smallint IS NULL OR partition = $3)
              ORDER BY position",
            &[&spec.projection.name(), &checkpoint, &spec.partition],
        )
        .await
        .map_err(EngineError::db("reading parked events ahead of a lane"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// In the lane's batch transaction: marks parked events at positions the batch applied
/// (after `from`, up to `through`) as resolved, so that a replay skips them.
pub(crate) async fn resolve_applied(
    tx: &deadpool_postgres::Transaction<'_>,
    spec: &LaneSpec,
    from: Position,
    through: Position,
) -> Result<u64> {
    let resolved = tx
        .execute(
            "UPDATE projection_dead_letters SET replayed_at = now()
              WHERE projection = $1 AND replayed_at IS NULL AND position > $2 AND position <= $3
                AND ($4::smallint IS NULL OR partition = $4)",
            &[&spec.projection.name(), &from, &through, &spec.partition],
        )
        .await
        .map_err(EngineError::db("resolving parked events the lane applied"))?;
    if resolved > 0 {
        tracing::info!(
            projection = spec.projection.name(),
            resolved,
            "parked events applied by the lane after a fix; marked resolved"
        );
    }
    Ok(resolved)
}

/// Parked events of `projection` (all projections when `None`), oldest first.
pub async fn list(
    store: &EventStore,
    projection: Option<&str>,
    include_replayed: bool,
) -> Result<Vec<DeadLetter>> {
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT id, projection, partition, position, event_id, error, attempts, parked_at, replayed_at
               FROM projection_dead_letters
              WHERE ($1::text IS NULL OR projection = $1) AND ($2 OR replayed_at IS NULL)
              ORDER BY id",
            &[&projection, &include_replayed],
        )
        .await
        .map_err(EngineError::db("listing parked events"))?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            projection: r.get(1),
            partition: r.get(2),
            position: r.get(3),
            event_id: r.get(4),
            error: r.get(5),
            attempts: r.get(6),
            parked_at: r.get(7),
            replayed_at: r.get(8),
        })
        .collect())
}

/// Locks the parked event `id` if it is still unreplayed (so two concurrent replays cannot
/// both apply it). `false`: someone replayed it meanwhile.
pub(crate) async fn lock_unreplayed(
    tx: &deadpool_postgres::Transaction<'_>,
    id: i64,
) -> Result<bool> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM projection_dead_letters WHERE id = $1 AND replayed_at IS NULL FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(EngineError::db("locking a parked event"))?
        .is_some())
}

/// Marks the parked event `id` replayed, in the transaction that applied it.
pub(crate) async fn mark_replayed(tx: &deadpool_postgres::Transaction<'_>, id: i64) -> Result<()> {
    tx.execute(
        "UPDATE projection_dead_letters SET replayed_at = now() WHERE id = $1",
        &[&id],
    )
    .await
    .map_err(EngineError::db("marking a parked event replayed"))?;
    Ok(())
}

/// A projection stopped on a poison event runs again once that event is replayed.
pub(crate) async fn resume_projection(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE projections SET status = $2, updated_at = now() WHERE name = $1 AND status = $3",
        &[
            &projection,
            &ProjectionState::Running,
            &ProjectionState::Stopped,
        ],
    )
    .await
    .map_err(EngineError::db("resuming a projection"))?;
    Ok(())
}
