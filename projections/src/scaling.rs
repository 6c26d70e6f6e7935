//! Scaling: how many partitions this process works at once (adaptive, within limits), and
//! the `desired_workers` signal per pool for an external autoscaler.
//!
//! ```text
//! demand            = head_rate + lag_events / drain_target_secs      (events/s)
//! capacity/worker   = this worker's processing rate measured while it had a backlog
//!                     (EWMA; `assumed_worker_rate` until first measured)
//! desired_workers   = clamp(ceil(demand / capacity_per_worker), 1, max_partitions)
//! concurrency       = clamp(min + lagging local partitions, min, max)   (per projection)
//! ```
//! With no backlog and no appends, demand is 0 and the signal falls to 1; when appends
//! outpace processing the backlog grows and so does the signal. See docs/scaling-out.md.
//!
//! Everything here is arithmetic on figures the lease coordinator collects at each tick
//! (head position, events applied, backlog per projection): no I/O, so the formulas are
//! tested directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tidemark_store::Position;
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

/// Partitions of one projection a worker applies at once: one at a time plus one per
/// partition of it with a backlog that this worker runs, within `[min, max]`.
pub fn concurrency_target(min: usize, max: usize, lagging_local_partitions: usize) -> usize {
    (min + lagging_local_partitions).clamp(min, max)
}

/// Exponentially weighted moving average; the first figure is taken as it is.
fn ewma(previous: f64, instant: f64) -> f64 {
    if previous == 0.0 {
        instant
    } else {
        0.7 * previous + 0.3 * instant
    }
}

/// One projection's backlog as a coordinator sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// Unprocessed matching events over all its partitions, whoever runs them.
    pub lag_events: i64,
    /// Its partitions with a backlog that this worker runs.
    pub lagging_local: usize,
}

impl Backlog {
    /// From each partition's unprocessed events and whether this worker runs it.
    pub fn of(partitions: impl IntoIterator<Item = (i64, bool)>) -> Backlog {
        partitions
            .into_iter()
            .fold(Backlog::default(), |mut backlog, (lag, local)| {
                backlog.lag_events += lag;
                if lag > 0 && local {
                    backlog.lagging_local += 1;
                }
                backlog
            })
    }
}

/// What one coordinator tick measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation<'a> {
    pub at: Instant,
    /// The position of the last event in the log.
    pub head: Position,
    /// Events applied by this worker's live lanes since it started (a running total).
    pub applied: u64,
    /// The backlog of each projection this worker runs.
    pub backlogs: &'a [Backlog],
}

/// The fixed inputs of the estimate (from the engine's configuration and the store).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScalingSettings {
    /// A backlog larger than one batch keeps a worker busy: only then is its processing
    /// rate its capacity.
    pub batch_size: usize,
    pub assumed_worker_rate: f64,
    pub drain_target_secs: f64,
    /// The partition count: more workers than partitions would idle.
    pub max_workers: usize,
}

/// This worker's estimate after an observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    pub lag_events: i64,
    pub head_rate: f64,
    pub processing_rate: f64,
    pub capacity_per_worker: f64,
    pub desired_workers: usize,
}

/// Rates smoothed across a coordinator's ticks, and the capacity it measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Estimator {
    last_head: Option<(Position, Instant)>,
    last_applied: Option<(u64, Instant)>,
    head_rate: f64,
    processing_rate: f64,
    capacity_per_worker: Option<f64>,
}

impl Estimator {
    /// Folds in one tick's figures and returns the resulting estimate.
    pub fn observe(&mut self, seen: Observation<'_>, settings: ScalingSettings) -> Estimate {
        if let Some((previous, at)) = self.last_head {
            let instant = (seen.head - previous).max(0) as f64 / seconds_since(at, seen.at);
            self.head_rate = ewma(self.head_rate, instant);
        }
        self.last_head = Some((seen.head, seen.at));
        if let Some((previous, at)) = self.last_applied {
            let instant = seen.applied.saturating_sub(previous) as f64 / seconds_since(at, seen.at);
            self.processing_rate = ewma(self.processing_rate, instant);
        }
        self.last_applied = Some((seen.applied, seen.at));

        let lag_events: i64 = seen.backlogs.iter().map(|b| b.lag_events).sum();
        // Throughput measured while there was a backlog is this worker's capacity.
        if lag_events > settings.batch_size as i64 && self.processing_rate > 0.0 {
            self.capacity_per_worker = Some(ewma(
                self.capacity_per_worker.unwrap_or(self.processing_rate),
                self.processing_rate,
            ));
        }
        let capacity_per_worker = self
            .capacity_per_worker
            .unwrap_or(settings.assumed_worker_rate);
        Estimate {
            lag_events,
            head_rate: self.head_rate,
            processing_rate: self.processing_rate,
            capacity_per_worker,
            desired_workers: desired_workers(Demand {
                lag_events,
                head_rate: self.head_rate,
                capacity_per_worker,
                drain_target_secs: settings.drain_target_secs,
                max_workers: settings.max_workers,
            }),
        }
    }
}

/// Seconds between two ticks, never zero (two ticks in the same instant).
fn seconds_since(earlier: Instant, now: Instant) -> f64 {
    now.duration_since(earlier).as_secs_f64().max(1e-3)
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

    /// Resizes to [`concurrency_target`] (shrinking only as permits come free).
    pub fn adapt(&self, lagging_partitions: usize) -> usize {
        let target = concurrency_target(self.min, self.max, lagging_partitions);
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
    use std::time::Duration;

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

    const SETTINGS: ScalingSettings = ScalingSettings {
        batch_size: 1000,
        assumed_worker_rate: 1000.0,
        drain_target_secs: 60.0,
        max_workers: 16,
    };

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() < 1e-9
    }

    #[test]
    fn backlog_counts_only_local_partitions_with_events_as_lagging() {
        // Partitions: (unprocessed events, run by this worker).
        let backlog = Backlog::of([(5, true), (0, true), (7, false), (3, true), (0, false)]);
        assert_eq!(
            backlog,
            Backlog {
                lag_events: 15,
                lagging_local: 2
            }
        );
        assert_eq!(Backlog::of([]), Backlog::default());
    }

    #[test]
    fn concurrency_is_one_per_lagging_partition_above_the_minimum() {
        assert_eq!(concurrency_target(4, 8, 0), 4);
        assert_eq!(concurrency_target(4, 8, 3), 7);
        assert_eq!(concurrency_target(4, 8, 4), 8);
        assert_eq!(concurrency_target(4, 8, 30), 8);
    }

    #[test]
    fn a_pool_of_idle_projections_wants_one_worker() {
        let t0 = Instant::now();
        let idle = [
            Backlog::of([(0, true), (0, true), (0, false)]),
            Backlog::of([(0, true), (0, false)]),
            Backlog::of([(0, false)]),
        ];
        let mut estimator = Estimator::default();
        for tick in 0..4u64 {
            let estimate = estimator.observe(
                Observation {
                    at: t0 + Duration::from_secs(3 * tick),
                    head: 5_000,
                    applied: 5_000,
                    backlogs: &idle,
                },
                SETTINGS,
            );
            assert_eq!(
                estimate,
                Estimate {
                    lag_events: 0,
                    head_rate: 0.0,
                    processing_rate: 0.0,
                    capacity_per_worker: SETTINGS.assumed_worker_rate,
                    desired_workers: 1,
                }
            );
        }
    }

    #[test]
    fn the_signal_follows_a_growing_backlog_over_several_projections() {
        let t0 = Instant::now();
        let mut estimator = Estimator::default();
        let first = estimator.observe(
            Observation {
                at: t0,
                head: 0,
                applied: 0,
                backlogs: &[Backlog::default(), Backlog::default()],
            },
            SETTINGS,
        );
        assert_eq!(first.desired_workers, 1, "nothing measured yet");

        // 10 s later: 20,000 appended, 5,000 applied, 15,000 behind over two projections.
        let second = estimator.observe(
            Observation {
                at: t0 + Duration::from_secs(10),
                head: 20_000,
                applied: 5_000,
                backlogs: &[
                    Backlog::of([(6_000, true), (3_000, false)]),
                    Backlog::of([(6_000, true), (0, true)]),
                ],
            },
            SETTINGS,
        );
        assert_eq!(second.lag_events, 15_000);
        assert!(close(second.head_rate, 2_000.0), "{second:?}");
        assert!(close(second.processing_rate, 500.0), "{second:?}");
        assert!(close(second.capacity_per_worker, 500.0), "{second:?}");
        // (2,000 + 15,000 / 60) / 500 = 4.5
        assert_eq!(second.desired_workers, 5);

        // 10 s later: 30,000 more appended, 10,000 more applied, 35,000 behind.
        let third = estimator.observe(
            Observation {
                at: t0 + Duration::from_secs(20),
                head: 50_000,
                applied: 15_000,
                backlogs: &[
                    Backlog::of([(20_000, true), (5_000, false)]),
                    Backlog::of([(10_000, true)]),
                ],
            },
            SETTINGS,
        );
        assert_eq!(third.lag_events, 35_000);
        // Smoothed: 0.7 × previous + 0.3 × this interval's rate.
        assert!(
            close(third.head_rate, 0.7 * 2_000.0 + 0.3 * 3_000.0),
            "{third:?}"
        );
        assert!(
            close(third.processing_rate, 0.7 * 500.0 + 0.3 * 1_000.0),
            "{third:?}"
        );
        assert!(
            close(third.capacity_per_worker, 0.7 * 500.0 + 0.3 * 650.0),
            "{third:?}"
        );
        // (2,300 + 35,000 / 60) / 545 = 5.29…
        assert_eq!(third.desired_workers, 6);

        // A backlog far beyond what the partitions could absorb is capped at their count.
        let flood = estimator.observe(
            Observation {
                at: t0 + Duration::from_secs(30),
                head: 10_050_000,
                applied: 20_000,
                backlogs: &[Backlog::of([(10_030_000, true)])],
            },
            SETTINGS,
        );
        assert_eq!(flood.desired_workers, SETTINGS.max_workers);
    }

    #[test]
    fn capacity_is_measured_only_while_there_is_a_backlog() {
        let t0 = Instant::now();
        let mut estimator = Estimator::default();
        let small = [Backlog::of([(SETTINGS.batch_size as i64, true)])];
        for (tick, (head, applied)) in [(0, 0), (3_000, 3_000)].into_iter().enumerate() {
            let estimate = estimator.observe(
                Observation {
                    at: t0 + Duration::from_secs(3 * tick as u64),
                    head,
                    applied,
                    backlogs: &small,
                },
                SETTINGS,
            );
            // A worker that keeps up with a trickle shows its load, not its capacity.
            assert!(close(
                estimate.capacity_per_worker,
                SETTINGS.assumed_worker_rate
            ));
        }
        // The head going back (a store replaced under the worker) is no negative rate.
        let estimate = estimator.observe(
            Observation {
                at: t0 + Duration::from_secs(9),
                head: 10,
                applied: 3_000,
                backlogs: &small,
            },
            SETTINGS,
        );
        assert!(close(estimate.head_rate, 0.7 * 1_000.0), "{estimate:?}");
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
