//! Replaying parked events into the live read model, through the lane's commit primitive:
//! each parked event is applied in a transaction that holds its partition's live checkpoint
//! lock (so it is ordered with that partition's batches), marks it replayed, and moves a
//! checkpoint stopped on it past it, all or nothing.

use super::commit::LockedCheckpoint;
use crate::dead_letter;
use crate::error::{EngineError, Result};
use crate::projection::Projection;
use crate::spec::LaneSpec;
use std::sync::Arc;
use tidemark_store::{EventStore, Position, RecordedEvent};

/// Applies each parked event of `projection` (or only `ids`) to its live read model, once:
/// the apply and the `replayed_at` mark commit together, so a second replay skips it.
/// Returns how many were applied; stops at the first that still fails.
pub(crate) async fn replay_parked(
    store: &EventStore,
    projection: &Arc<dyn Projection>,
    ids: Option<&[i64]>,
) -> Result<usize> {
    let parked = dead_letter::list(store, Some(projection.name()), false).await?;
    let mut applied = 0;
    for letter in parked
        .iter()
        .filter(|l| ids.is_none_or(|ids| ids.contains(&l.id)))
    {
        let event = store
            .read_log(letter.position - 1, &Default::default(), 1)
            .await?
            .into_iter()
            .next()
            .filter(|e| e.event_id == letter.event_id)
            .ok_or(EngineError::ParkedEventMissing {
                event_id: letter.event_id,
                position: letter.position,
            })?;
        let spec = LaneSpec::live(
            projection.clone(),
            Some(letter.partition),
            store.partitions(),
        );
        let mut client = store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting a replay"))?;
        if !dead_letter::lock_unreplayed(&tx, letter.id).await? {
            continue;
        }
        // Replays hold no lease: they are ordered with the lanes by the checkpoint lock.
        let mut locked = LockedCheckpoint::lock_unleased(tx, &spec, None).await?;
        // A partition stopped on this event (`ParkAndStop`) still has its checkpoint just
        // before it and would apply it again on resuming: move that checkpoint past the
        // event in this transaction.
        let stopped_here = match locked.position() {
            Some(checkpoint) if checkpoint < letter.position => {
                next_event_of_lane(store, &spec, checkpoint, letter.position)
                    .await?
                    .is_some_and(|next| next.event_id == letter.event_id)
            }
            _ => false,
        };
        locked
            .apply(std::slice::from_ref(&event), "replaying a parked event")
            .await?;
        dead_letter::mark_replayed(locked.tx(), letter.id).await?;
        if stopped_here {
            locked.advance(letter.position, None).await?;
        }
        dead_letter::resume_projection(locked.tx(), projection.name()).await?;
        locked.commit("committing a replay").await?;
        applied += 1;
    }
    Ok(applied)
}

/// The first event after `after` (up to `upto`) that the lane of `spec` applies: for a lane
/// grouped by stream the next event it reads; a keyed lane skips the other lanes' events.
async fn next_event_of_lane(
    store: &EventStore,
    spec: &LaneSpec,
    mut after: Position,
    upto: Position,
) -> Result<Option<RecordedEvent>> {
    const PAGE: usize = 500;
    let filter = spec.read_filter();
    loop {
        let page = store.read_log(after, &filter, PAGE).await?;
        let short = page.len() < PAGE;
        for event in page {
            if event.position > upto {
                return Ok(None);
            }
            if spec.applies(&event) {
                return Ok(Some(event));
            }
            after = event.position;
        }
        if short {
            return Ok(None);
        }
    }
}
