//! Exponential backoff for reconnect and retry loops, shared by the store and the engine.

use std::time::Duration;

/// Delays that double from `base` up to `max`, and start over at `base` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            next: base,
            max: max.max(base),
        }
    }

    /// The delay before the next attempt; each call doubles the one after (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        current
    }

    /// After a success: the next failure waits `base` again, not what an old outage reached.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u64> = (0..5)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
