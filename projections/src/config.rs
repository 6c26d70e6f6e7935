//! Engine configuration with defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// Pages a lane's fetcher may read ahead of its applier.
    pub fetch_ahead_pages: usize,
    /// Attempts before an event is parked.
    pub max_attempts: u32,
    /// First retry delay; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Only projections pinned to this pool run here (`default` runs unpinned ones).
    pub pool: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 500,
            fetch_ahead_pages: 4,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            pool: "default".into(),
        }
    }
}
