//! The lane's commit primitive, [`LockedCheckpoint`]: a transaction that holds a lane's
//! checkpoint lock. It is the only way events reach a read model and the only way a lane's
//! checkpoint moves: lock the checkpoint row (and check the lease), check it holds the
//! position the caller started from, apply, advance, check the lease again, commit. A
//! lane's batches, a parked event, the swap's last events and a replayed parked event all
//! go through it.

use crate::checkpoint::{self, Locked};
use crate::error::{EngineError, ProjectionError, Result};
use crate::fence::Fence;
use crate::projection::{ApplyContext, Grouping};
use crate::spec::LaneSpec;
use std::sync::LazyLock;
use tidemark_store::{Position, RecordedEvent};

/// Outcome of one attempt to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    Done,
    /// The lane lost its lease; nothing was committed.
    Fenced,
}

/// A transaction holding the checkpoint lock of one lane.
pub(crate) struct LockedCheckpoint<'c, 's> {
    tx: deadpool_postgres::Transaction<'c>,
    spec: &'s LaneSpec,
    fence: &'s Fence,
    /// The checkpoint as locked, then as advanced; `None` when the lane has no row yet.
    position: Option<Position>,
}

impl<'c, 's> LockedCheckpoint<'c, 's> {
    /// Locks the checkpoint of `spec` in `tx` (after whatever `tx` locked already: a swap
    /// pauses the live lanes first). With `expected`, a checkpoint anywhere else is
    /// [`EngineError::CheckpointMoved`], which restarts the lane from where it now is.
    /// `None` when the lane lost its lease.
    pub async fn lock(
        tx: deadpool_postgres::Transaction<'c>,
        spec: &'s LaneSpec,
        fence: &'s Fence,
        expected: Option<Position>,
    ) -> Result<Option<Self>> {
        let position = match checkpoint::lock(&tx, spec, fence).await? {
            Locked::LeaseLost => return Ok(None),
            Locked::Row(position) => position,
        };
        if let Some(expected) = expected {
            if position != Some(expected) {
                return Err(EngineError::CheckpointMoved {
                    projection: spec.projection.name().to_string(),
                    expected,
                    actual: position,
                });
            }
        }
        Ok(Some(LockedCheckpoint {
            tx,
            spec,
            fence,
            position,
        }))
    }

    /// [`LockedCheckpoint::lock`] for work that holds no lease (a swap's last events, a
    /// replayed parked event): ordered with the lanes by the checkpoint lock alone.
    pub async fn lock_unleased(
        tx: deadpool_postgres::Transaction<'c>,
        spec: &'s LaneSpec,
        expected: Option<Position>,
    ) -> Result<Self> {
        static UNLEASED: LazyLock<Fence> = LazyLock::new(Fence::default);
        Self::lock(tx, spec, &UNLEASED, expected)
            .await?
            .ok_or_else(|| {
                EngineError::Unavailable("an unleased lane reported a lost lease".into())
            })
    }

    /// The transaction, for the statements that commit with the batch (parking an event,
    /// marking dead letters, renaming schemas in a swap).
    pub fn tx(&self) -> &deadpool_postgres::Transaction<'c> {
        &self.tx
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// Applies `events` to the lane's read model. `phase` names the work in the error.
    /// An event of a keyed projection without a usable key fails here, and is parked like any
    /// event that cannot be applied.
    pub async fn apply(&self, events: &[RecordedEvent], phase: &'static str) -> Result<()> {
        let failed = |source| EngineError::Projection {
            projection: self.spec.projection.name().to_string(),
            phase,
            position: self.position.unwrap_or(0),
            source,
        };
        if let Grouping::ByKey(keys) = &self.spec.grouping {
            for event in events {
                keys.key_of(event)
                    .map_err(|error| failed(ProjectionError::failed(error)))?;
            }
        }
        let ctx = ApplyContext {
            tx: &self.tx,
            schema: &self.spec.schema,
            partitions: self.spec.partitions,
        };
        self.spec
            .projection
            .apply(&ctx, events)
            .await
            .map_err(failed)
    }

    /// Moves the checkpoint to `to`, recording the lane's recent rate when given.
    pub async fn advance(&mut self, to: Position, events_per_second: Option<f64>) -> Result<()> {
        checkpoint::advance(&self.tx, self.spec, to, events_per_second).await?;
        self.position = Some(to);
        Ok(())
    }

    /// Commits, unless the lane lost its lease meanwhile (then nothing is written).
    pub async fn commit(self, context: &'static str) -> Result<Commit> {
        if !checkpoint::lease_still_held(&self.tx, self.spec, self.fence).await? {
            return Ok(Commit::Fenced);
        }
        self.tx.commit().await.map_err(EngineError::db(context))?;
        Ok(Commit::Done)
    }
}
