//! Scaling: how many partitions this process works at once (adaptive, within limits), and
//! the `desired_workers` signal per pool for an external autoscaler.
//!
//! ```text
//! demand            = head_rate + lag_events / drain_target_secs      (events/s)
//! capacity/worker   = this worker's processing rate measured while it had a backlog
//!                     (EWMA; `assumed_worker_rate` until first measured)
//! desired_workers   = clamp(ceil(demand / capacity_per_worker), 1, max_partitions)
//! ```
//! With no backlog and no appends, demand is 0 and the signal falls to 1; when appends
//! outpace processing the backlog grows and so does the signal. See docs/scaling-out.md.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The scaling figures of one pool, as seen by this worker at its last tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalingSignal {
    pub pool: String,
    pub live_workers: usize,
    /// Unprocessed matching events over the pool's projections.
    pub lag_events: i64,
    /// Appends per second (head growth).
    pub head_rate: f64,
    /// Events per second this worker processed over the last interval.
    pub processing_rate: f64,
    /// Estimated capacity of one worker (events/s).
    pub capacity_per_worker: f64,
    pub desired_workers: usize,
    /// Partitions this worker may apply at once right now.
    pub concurrency: usize,
}

/// Inputs of [`desired_workers`].
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub lag_events: i64,
    pub head_rate: f64,
    pub capacity_per_worker: f64,
    pub drain_target_secs: f64,
    pub max_workers: usize,
}

/// The formula in the module documentation.
pub fn desired_workers(d: Demand) -> usize {
    let demand = d.head_rate.max(0.0) + d.lag_events.max(0) as f64 / d.drain_target_secs.max(1.0);
    if demand <= 0.0 {
        return 1;
    }
    let workers = (demand / d.capacity_per_worker.max(1.0)).ceil() as usize;
    workers.clamp(1, d.max_workers.max(1))
}

/// A semaphore whose size follows a target: lanes take a permit for each batch, so the
/// number of partitions applying at once stays within the limit.
pub(crate) struct AdaptiveLimit {
    semaphore: Arc<Semaphore>,
    current: AtomicUsize,
    min: usize,
    max: usize,
}

impl AdaptiveLimit {
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        AdaptiveLimit {
            semaphore: Arc::new(Semaphore::new(min)),
            current: AtomicUsize::new(min),
            min,
            max,
        }
    }

    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.semaphore.clone()
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// One partition at a time plus one per lagging partition, within [min, max].
    pub fn adapt(&self, lagging_partitions: usize) -> usize {
        let target = (self.min + lagging_partitions).clamp(self.min, self.max);
        let current = self.current();
        if target > current {
            self.semaphore.add_permits(target - current);
            self.current.store(target, Ordering::SeqCst);
        } else if target < current {
            // Shrink only by permits that are free now; the rest go on the next tick.
            let free = self.semaphore.available_permits().min(current - target);
            if free > 0 {
                if let Ok(permits) = self.semaphore.try_acquire_many(free as u32) {
                    permits.forget();
                    self.current.store(current - free, Ordering::SeqCst);
                }
            }
        }
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(lag_events: i64, head_rate: f64) -> Demand {
        Demand {
            lag_events,
            head_rate,
            capacity_per_worker: 1000.0,
            drain_target_secs: 60.0,
            max_workers: 16,
        }
    }

    #[test]
    fn idle_pool_wants_one_worker() {
        assert_eq!(desired_workers(demand(0, 0.0)), 1);
    }

    #[test]
    fn signal_grows_with_backlog_and_append_rate() {
        assert_eq!(desired_workers(demand(0, 900.0)), 1);
        assert_eq!(desired_workers(demand(0, 2500.0)), 3);
        assert_eq!(desired_workers(demand(120_000, 0.0)), 2);
        assert_eq!(
            desired_workers(demand(10_000_000, 0.0)),
            16,
            "capped at the partition count"
        );
    }

    #[test]
    fn adaptive_limit_moves_within_bounds() {
        let limit = AdaptiveLimit::new(2, 6);
        assert_eq!(limit.adapt(0), 2);
        assert_eq!(limit.adapt(3), 5);
        assert_eq!(limit.adapt(100), 6);
        assert_eq!(limit.semaphore().available_permits(), 6);
        assert_eq!(limit.adapt(0), 2);
        assert_eq!(limit.semaphore().available_permits(), 2);
    }
}
