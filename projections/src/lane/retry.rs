//! The engine's one retry policy: exponential backoff between attempts that starts over
//! once the lane made progress since its previous failure (that is a new incident, not a
//! repeat), and a pause that ends early on shutdown. Used for a failing event's attempts
//! and for restarting a failed lane.

use crate::config::EngineConfig;
use tidemark_store::backoff::Backoff;
use tidemark_store::Position;
use tokio_util::sync::CancellationToken;

pub(crate) struct Retry {
    backoff: Backoff,
    progress_at_last_failure: Option<Position>,
}

impl Retry {
    pub fn new(config: &EngineConfig) -> Self {
        Retry {
            backoff: Backoff::new(config.retry_base, config.retry_max),
            progress_at_last_failure: None,
        }
    }

    /// Records a failure with the lane's checkpoint at `progress` and waits before the next
    /// attempt. Returns `false` when `stop` was cancelled first (do not try again).
    pub async fn pause(&mut self, progress: Position, stop: &CancellationToken) -> bool {
        if self
            .progress_at_last_failure
            .is_some_and(|at| progress > at)
        {
            self.backoff.reset();
        }
        self.progress_at_last_failure = Some(progress);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> EngineConfig {
        EngineConfig {
            retry_base: Duration::from_millis(1),
            retry_max: Duration::from_millis(64),
            ..EngineConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_while_stuck_and_start_over_after_progress() {
        let stop = CancellationToken::new();
        let mut retry = Retry::new(&config());
        let mut pauses = Vec::new();
        for progress in [5, 5, 5, 9, 9] {
            let started = tokio::time::Instant::now();
            assert!(retry.pause(progress, &stop).await);
            pauses.push(started.elapsed());
        }
        assert!(pauses[1] > pauses[0] && pauses[2] > pauses[1], "{pauses:?}");
        assert!(
            pauses[3] < pauses[2],
            "progress resets the backoff: {pauses:?}"
        );
        assert!(pauses[4] > pauses[3], "{pauses:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_pause_says_stop() {
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!Retry::new(&config()).pause(0, &stop).await);
    }
}
