//! Fencing: the right of a lane to commit. A lane without a lease (single-process engine,
//! rebuilds) is fenced only by its checkpoint check; a lane holding a partition lease also
//! proves, in every commit, that its lease epoch is still current.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// A lease this lane commits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseToken {
    pub owner: Uuid,
    pub epoch: i64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Fence {
    pub lease: Option<LeaseToken>,
    /// How long a batch transaction under this lease may sit idle before the server ends
    /// it: the lease's time to live, after which someone else may own the partition.
    pub idle_limit: std::time::Duration,
    lost: Arc<AtomicBool>,
}

impl Fence {
    pub fn with_lease(lease: LeaseToken, idle_limit: std::time::Duration) -> Self {
        Fence {
            lease: Some(lease),
            idle_limit,
            lost: Arc::default(),
        }
    }

    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}
