//! Parked events: what a projection could not apply after its retries, and replaying them.

use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::kinds::{ProjectionState, Target};
use crate::lane::{Commit, LaneSpec};
use crate::projection::{ApplyContext, Projection};
use chrono::{DateTime, Utc};
use std::sync::Arc;
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

/// Parks `event` and moves the checkpoint past it, in one transaction (so the event is
/// either parked and skipped, or neither). With `stop`, also marks the projection stopped.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn park(
    store: &EventStore,
    spec: &LaneSpec,
    fence: &Fence,
    checkpoint: Position,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
    stop: bool,
) -> Result<Commit> {
    let mut client = store.pool().get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(EngineError::db("starting to park an event"))?;
    if !crate::checkpoint::lock_and_check(&tx, spec, fence, checkpoint).await? {
        return Ok(Commit::Fenced);
    }
    tx.execute(
        "INSERT INTO projection_dead_letters (projection, partition, position, event_id, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (projection, event_id) DO UPDATE
            SET error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now(), replayed_at = NULL",
        &[&spec.projection.name(), &event.partition, &event.position, &event.event_id, &error, &(attempts as i32)],
    )
    .await
    .map_err(EngineError::db("parking an event"))?;
    if !stop {
        crate::checkpoint::advance(&tx, spec, event.position, None).await?;
    } else {
        tx.execute(
            "UPDATE projections SET status = $2, updated_at = now() WHERE name = $1",
            &[&spec.projection.name(), &ProjectionState::Stopped],
        )
        .await
        .map_err(EngineError::db("stopping a projection"))?;
    }
    tx.commit()
        .await
        .map_err(EngineError::db("committing a parked event"))?;
    metrics::counter!("tidemark_projection_parked_total", "projection" => spec.projection.name().to_string()).increment(1);
    tracing::error!(
        projection = spec.projection.name(),
        position = event.position,
        event_id = %event.event_id,
        attempts,
        error,
        stopped = stop,
        "event parked as a dead letter"
    );
    Ok(Commit::Done)
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

/// Applies each parked event of `projection` (or only `ids`) to its live read model, once:
/// the apply and the `replayed_at` mark commit together, so a second replay skips it.
/// Returns how many were applied; stops at the first that still fails.
pub(crate) async fn replay(
    store: &EventStore,
    projection: &Arc<dyn Projection>,
    schema: &str,
    ids: Option<&[i64]>,
) -> Result<usize> {
    let parked = list(store, Some(projection.name()), false).await?;
    let mut applied = 0;
    for letter in parked
        .iter()
        .filter(|l| ids.is_none_or(|ids| ids.contains(&l.id)))
    {
        let events = store
            .read_log(letter.position - 1, &Default::default(), 1)
            .await?;
        let Some(event) = events
            .into_iter()
            .next()
            .filter(|e| e.event_id == letter.event_id)
        else {
            return Err(EngineError::ParkedEventMissing {
                event_id: letter.event_id,
                position: letter.position,
            });
        };
        let mut client = store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting a replay"))?;
        // Lock the row so two concurrent replays cannot both apply it.
        let still_parked = tx
            .query_opt(
                "SELECT 1 FROM projection_dead_letters WHERE id = $1 AND replayed_at IS NULL FOR UPDATE",
                &[&letter.id],
            )
            .await
            .map_err(EngineError::db("locking a parked event"))?
            .is_some();
        if !still_parked {
            continue;
        }
        // A partition stopped on this event (`ParkAndStop`) still has its checkpoint just
        // before it and would apply it again on resuming: move that checkpoint past the event
        // in this transaction. Locking it also orders the replay with the partition's batches.
        let checkpoint: Option<Position> = tx
            .query_opt(
                "SELECT position FROM projection_checkpoints
                  WHERE projection = $1 AND target = $2 AND partition = $3
                  FOR UPDATE",
                &[&projection.name(), &Target::Live, &letter.partition],
            )
            .await
            .map_err(EngineError::db("locking a checkpoint for a replay"))?
            .map(|r| r.get(0));
        let stopped_here = match checkpoint {
            Some(checkpoint) if checkpoint < letter.position => store
                .read_log(
                    checkpoint,
                    &projection.selector().log_filter(Some(letter.partition)),
                    1,
                )
                .await?
                .first()
                .is_some_and(|next| next.event_id == letter.event_id),
            _ => false,
        };
        let ctx = ApplyContext { tx: &tx, schema };
        projection
            .apply(&ctx, std::slice::from_ref(&event))
            .await
            .map_err(|source| EngineError::Projection {
                projection: projection.name().to_string(),
                phase: "replaying a parked event",
                position: letter.position,
                source,
            })?;
        tx.execute(
            "UPDATE projection_dead_letters SET replayed_at = now() WHERE id = $1",
            &[&letter.id],
        )
        .await
        .map_err(EngineError::db("marking a parked event replayed"))?;
        if stopped_here {
            tx.execute(
                "UPDATE projection_checkpoints SET position = $4, updated_at = now()
                  WHERE projection = $1 AND target = $2 AND partition = $3",
                &[
                    &projection.name(),
                    &Target::Live,
                    &letter.partition,
                    &letter.position,
                ],
            )
            .await
            .map_err(EngineError::db(
                "moving a stopped checkpoint past a replayed event",
            ))?;
        }
        tx.execute(
            "UPDATE projections SET status = $2, updated_at = now() WHERE name = $1 AND status = $3",
            &[&projection.name(), &ProjectionState::Running, &ProjectionState::Stopped],
        )
        .await
        .map_err(EngineError::db("resuming a projection"))?;
        tx.commit()
            .await
            .map_err(EngineError::db("committing a replay"))?;
        applied += 1;
    }
    Ok(applied)
}
