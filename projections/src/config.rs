//! Engine configuration with defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// Pages a lane's fetcher may read ahead of its applier.
    pub fetch_ahead_pages: usize,
    /// Pages a lane of a pipelined handler ([`crate::Pipeline`]) may have sent and not yet
    /// committed: the next page is sent while the previous ones' acknowledgements and
    /// checkpoint commits are pending. 1 handles one page at a time, as other lanes do.
    pub pages_in_flight: usize,
    /// Attempts before an event is parked.
    pub max_attempts: u32,
    /// First retry delay; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Only projections pinned to this pool run here (`default` runs unpinned ones).
    pub pool: String,
    /// How long a partition lease lasts without renewal; renewed every third of it.
    pub lease_ttl: Duration,
    /// A worker whose heartbeat is older than this is dead.
    pub worker_timeout: Duration,
    /// Partitions of one projection applied at once in this process: at least
    /// `min_concurrency`, one more per lagging partition, at most `max_concurrency`.
    pub min_concurrency: usize,
    pub max_concurrency: usize,
    /// The scaling signal asks for enough workers to clear the backlog within this time.
    pub drain_target: Duration,
    /// Events/s one worker is assumed to process until it has measured itself.
    pub assumed_worker_rate: f64,
    /// Address of this process's API, recorded in the worker registry.
    pub address: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 1000,
            fetch_ahead_pages: 4,
            pages_in_flight: 3,
            max_attempts: 5,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            pool: "default".into(),
            lease_ttl: Duration::from_secs(10),
            worker_timeout: Duration::from_secs(10),
            min_concurrency: 4,
            max_concurrency: 8,
            drain_target: Duration::from_secs(60),
            assumed_worker_rate: 1000.0,
            address: None,
        }
    }
}
