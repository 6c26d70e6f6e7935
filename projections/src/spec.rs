//! What names a lane: its projection, the read model it writes (target and schema), its
//! partition, and where it stops. The checkpoint and dead-letter modules key their rows by it.

use crate::kinds::Target;
use crate::projection::{Grouping, Projection};
use crate::windowing::key_partition;
use std::sync::Arc;
use tidemark_store::{LogFilter, Position, RecordedEvent};

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
    /// The projection's grouping, asked once.
    pub grouping: Grouping,
    /// The store's partition count (keys are hashed onto it).
    pub partitions: u16,
}

impl LaneSpec {
    /// The live lane of one partition (or of all, with `None`). A log-order projection has
    /// one live lane, partition 0.
    pub fn live(projection: Arc<dyn Projection>, partition: Option<i16>, partitions: u16) -> Self {
        LaneSpec::new(projection, Target::Live, partition, None, partitions)
    }

    /// A lane of `projection` into `target`'s schema.
    pub fn new(
        projection: Arc<dyn Projection>,
        target: Target,
        partition: Option<i16>,
        until: Option<Position>,
        partitions: u16,
    ) -> Self {
        LaneSpec {
            partitions,
            schema: target.schema(&projection.schema()),
            grouping: projection.grouping(),
            projection,
            target,
            partition,
            until,
        }
    }

    /// What the lane reads: the selector's events of its partition, or of every partition
    /// when it reads all of them or groups by key or shuffles (it then keeps its share, see
    /// [`LaneSpec::applies`]).
    pub fn read_filter(&self) -> LogFilter {
        let partition = if self.grouping.reads_every_partition() {
            None
        } else {
            self.partition
        };
        self.projection.selector().log_filter(partition)
    }

    /// Does this lane apply `event` (one it read)? A lane of every partition applies all;
    /// a partition's lane applies the events [`LaneSpec::lane_of`] gives it.
    pub fn applies(&self, event: &RecordedEvent) -> bool {
        self.partition
            .is_none_or(|partition| self.lane_of(event) == partition)
    }

    /// The partition whose lane applies `event`: its stream's; for a keyed projection its
    /// key's (and its stream's when it has no usable key, where it is parked); for a
    /// shuffled one its event id's; for a log-order projection the one lane, 0.
    pub fn lane_of(&self, event: &RecordedEvent) -> i16 {
        match &self.grouping {
            Grouping::ByStream => event.partition,
            Grouping::ByKey(source) => match source.key_of(event) {
                Ok(key) => key_partition(&key, self.partitions),
                Err(_) => event.partition,
            },
            Grouping::Shuffle => key_partition(&event.event_id.to_string(), self.partitions),
            Grouping::LogOrder => 0,
        }
    }

    /// Is this a live partition's lane that reads every partition beside the other lanes of
    /// its projection (keyed or shuffled)? Those share one read per process (`lane::Feeds`).
    pub fn reads_with_its_group(&self) -> bool {
        self.partition.is_some()
            && self.grouping.reads_every_partition()
            && self.grouping.lanes(self.partitions) > 1
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
