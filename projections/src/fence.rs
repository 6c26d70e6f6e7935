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
    lost: Arc<AtomicBool>,
}

impl Fence {
    pub fn with_lease(lease: LeaseToken) -> Self {
        Fence {
            lease: Some(lease),
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
