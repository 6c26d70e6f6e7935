//! Admission control for the append queue: refuse at once what would wait too long.
//!
//! A bounded queue alone bounds memory but not latency: with thousands of callers the queue
//! fills, every caller waits its full turn, and the tail latency grows to the request
//! timeout before anyone hears "overloaded". Instead the writer measures how fast it drains
//! the queue, and a caller whose expected wait (requests ahead of it divided by that rate)
//! exceeds the budget is refused with `Overloaded` before anything is queued, together with
//! a hint of when the queue will have drained.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Smoothing of the measured costs: each batch moves an estimate this far.
const SMOOTHING: f64 = 0.2;
/// Batches of at most this many requests measure the fixed cost of a transaction.
const SMALL_BATCH: usize = 4;
/// Batches of at least this many requests measure the cost of one more request.
const LARGE_BATCH: usize = 16;
/// Bounds of the retry hint given to refused callers.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(100);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The writer's measured costs, shared by the writer (which measures) and the callers (who
/// decide whether to queue). A batch of `n` requests costs about `fixed + n * per_request`
/// (group commit amortises the round trips and the WAL flush), so a backlog drains in full
/// batches much faster than a rate measured on small batches would suggest. Until large
/// batches have been seen the per-request cost counts as zero: admission errs on admitting.
#[derive(Debug)]
pub(crate) struct DrainRate {
    max_batch_requests: usize,
    fixed_seconds_bits: AtomicU64,
    per_request_seconds_bits: AtomicU64,
}

fn load(cell: &AtomicU64) -> f64 {
    f64::from_bits(cell.load(Ordering::Relaxed))
}

fn fold(cell: &AtomicU64, observed: f64) {
    let previous = load(cell);
    let next = if previous == 0.0 {
        observed
    } else {
        previous + SMOOTHING * (observed - previous)
    };
    cell.store(next.to_bits(), Ordering::Relaxed);
}

impl DrainRate {
    pub fn new(max_batch_requests: usize) -> DrainRate {
        DrainRate {
            max_batch_requests: max_batch_requests.max(1),
            fixed_seconds_bits: AtomicU64::new(0f64.to_bits()),
            per_request_seconds_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Folds in one batch of `requests` that took `elapsed` to write and answer.
    pub fn record_batch(&self, requests: usize, elapsed: Duration) {
        if requests == 0 || elapsed.is_zero() {
            return;
        }
        let seconds = elapsed.as_secs_f64();
        if requests <= SMALL_BATCH {
            fold(&self.fixed_seconds_bits, seconds);
        } else if requests >= LARGE_BATCH {
            let fixed = load(&self.fixed_seconds_bits);
            fold(
                &self.per_request_seconds_bits,
                (seconds - fixed).max(0.0) / requests as f64,
            );
        }
    }

    /// How long a request queued behind `ahead` others is expected to wait until it is
    /// answered (its own batch included), or `None` while nothing has been measured yet
    /// (a fresh writer admits everything).
    pub fn expected_wait(&self, ahead: usize) -> Option<Duration> {
        let fixed = load(&self.fixed_seconds_bits);
        let per_request = load(&self.per_request_seconds_bits);
        if fixed == 0.0 && per_request == 0.0 {
            return None;
        }
        let requests = ahead + 1;
        let batches = requests.div_ceil(self.max_batch_requests);
        Some(Duration::from_secs_f64(
            batches as f64 * fixed + requests as f64 * per_request,
        ))
    }
}

/// The verdict for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Admit,
    Refuse {
        expected_wait: Duration,
        retry_after: Duration,
    },
}

/// Admits a caller with `ahead` requests in front of it unless its expected wait exceeds
/// `budget`. A zero budget turns admission control off. A caller facing an empty queue is
/// always admitted: refusing it would shed nothing, and the writer only re-measures its
/// costs on batches it writes (one slow batch must not refuse everyone forever).
pub(crate) fn admit(rate: &DrainRate, ahead: usize, budget: Duration) -> Admission {
    if budget.is_zero() || ahead == 0 {
        return Admission::Admit;
    }
    match rate.expected_wait(ahead) {
        Some(expected_wait) if expected_wait > budget => Admission::Refuse {
            expected_wait,
            // By then the queue in front of the caller has drained.
            retry_after: expected_wait.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER),
        },
        _ => Admission::Admit,
    }
}

/// A retry hint for a caller that found the queue full after waiting `waited`.
pub(crate) fn retry_after_full_queue(waited: Duration) -> Duration {
    waited.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_writer_admits_everyone() {
        let rate = DrainRate::new(512);
        assert_eq!(
            admit(&rate, 10_000, Duration::from_millis(1)),
            Admission::Admit
        );
    }

    #[test]
    fn callers_whose_expected_wait_exceeds_the_budget_are_refused() {
        let rate = DrainRate::new(100);
        // A transaction costs 10 ms, each request in it 1 ms more.
        rate.record_batch(1, Duration::from_millis(10));
        rate.record_batch(100, Duration::from_millis(110));
        let budget = Duration::from_secs(1);
        // 899 ahead: 9 batches of 100 = 90 ms fixed + 900 ms.
        assert_eq!(rate.expected_wait(899), Some(Duration::from_millis(990)));
        assert_eq!(admit(&rate, 899, budget), Admission::Admit);
        match admit(&rate, 1_999, budget) {
            Admission::Refuse {
                expected_wait,
                retry_after,
            } => {
                assert_eq!(expected_wait, Duration::from_millis(2_200));
                assert_eq!(retry_after, Duration::from_millis(2_200));
            }
            Admission::Admit => panic!("2.2 s of queue ahead exceeds a 1 s budget"),
        }
        assert_eq!(
            admit(&rate, 1_999, Duration::ZERO),
            Admission::Admit,
            "a zero budget turns admission control off"
        );
    }

    #[test]
    fn small_batches_alone_do_not_make_a_backlog_look_slow() {
        // 5 ms per single-request transaction must not read as "200 requests per second":
        // a backlog of 4,000 drains in 8 full batches.
        let rate = DrainRate::new(512);
        rate.record_batch(1, Duration::from_millis(5));
        assert_eq!(
            admit(&rate, 4_000, Duration::from_secs(1)),
            Admission::Admit
        );
    }

    #[test]
    fn the_estimates_follow_recent_batches() {
        let rate = DrainRate::new(1_000);
        rate.record_batch(1, Duration::from_millis(1));
        rate.record_batch(1_000, Duration::from_millis(101));
        for _ in 0..50 {
            rate.record_batch(1_000, Duration::from_millis(201));
        }
        let wait = rate.expected_wait(999).expect("measured").as_secs_f64();
        assert!(
            (0.195..=0.202).contains(&wait),
            "a full batch now takes about 201 ms: {wait}"
        );
    }

    #[test]
    fn an_empty_queue_admits_even_after_a_slow_batch() {
        let rate = DrainRate::new(512);
        rate.record_batch(1, Duration::from_secs(30));
        assert_eq!(admit(&rate, 0, Duration::from_secs(1)), Admission::Admit);
        assert!(matches!(
            admit(&rate, 1, Duration::from_secs(1)),
            Admission::Refuse { .. }
        ));
    }

    #[test]
    fn retry_hints_are_bounded() {
        let rate = DrainRate::new(1);
        rate.record_batch(1, Duration::from_secs(1));
        match admit(&rate, 3_600, Duration::from_secs(1)) {
            Admission::Refuse { retry_after, .. } => assert_eq!(retry_after, MAX_RETRY_AFTER),
            Admission::Admit => panic!("an hour of queue is refused"),
        }
        assert_eq!(retry_after_full_queue(Duration::ZERO), MIN_RETRY_AFTER);
    }
}
