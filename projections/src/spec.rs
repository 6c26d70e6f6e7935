//! What names a lane: its projection, the read model it writes (target and schema), its
//! partition, and where it stops. The checkpoint and dead-letter modules key their rows by it.

use crate::kinds::Target;
use crate::projection::Projection;
use std::sync::Arc;
use tidemark_store::Position;

/// Checkpoint partition number of a lane that reads every partition.
pub const ALL_PARTITIONS: i16 = -1;

/// Identifies a lane.
#[derive(Clone)]
pub(crate) struct LaneSpec {
    pub projection: Arc<dyn Projection>,
    pub target: Target,
    /// Schema the lane writes to.
    pub schema: String,
    pub partition: Option<i16>,
    /// Stop once every event up to this position is applied (as-of builds, swaps).
    pub until: Option<Position>,
}

impl LaneSpec {
    /// The live lane of one partition (or of all, with `None`).
    pub fn live(projection: Arc<dyn Projection>, partition: Option<i16>) -> Self {
        LaneSpec {
            schema: projection.schema(),
            projection,
            target: Target::Live,
            partition,
            until: None,
        }
    }

    pub fn checkpoint_partition(&self) -> i16 {
        self.partition.unwrap_or(ALL_PARTITIONS)
    }

    /// `name/target#partition`, for logs.
    pub fn describe(&self) -> String {
        match self.partition {
            Some(p) => format!("{}/{}#{}", self.projection.name(), self.target, p),
            None => format!("{}/{}", self.projection.name(), self.target),
        }
    }
}
