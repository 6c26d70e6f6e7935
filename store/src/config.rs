//! Store configuration with measured defaults (see BENCHMARKS.md).

use std::time::Duration;

/// Limits on what one append may contain.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_stream_id_bytes: usize,
    pub max_event_type_bytes: usize,
    /// Serialized size of payload + metadata of one event.
    pub max_event_bytes: usize,
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stream_id_bytes: 200,
            max_event_type_bytes: 200,
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 1000,
        }
    }
}

/// The group-commit append pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Most append requests written in one transaction.
    pub max_batch_requests: usize,
    /// Most events written in one transaction (a large append still goes alone).
    pub max_batch_events: usize,
    /// How long the writer waits for more requests once it has taken what is queued. The
    /// default, 0, measured best (BENCHMARKS.md): requests that arrive while a batch commits
    /// form the next batch anyway, and tokio timers round a wait up to a millisecond.
    pub max_batch_wait: Duration,
    /// Requests that may wait in the queue.
    pub queue_depth: usize,
    /// How long a caller waits for room in a full queue before `Overloaded`.
    pub enqueue_deadline: Duration,
    /// Longest an append is expected to wait in the queue: a caller whose expected wait
    /// (requests ahead of it over the writer's measured drain rate) is longer is refused at
    /// once with `Overloaded` and a retry hint, instead of waiting towards its timeout.
    /// Zero turns this off.
    pub admission_budget: Duration,
    /// Fault injection for tests of the writer's supervision: the writer panics after
    /// committing a batch that holds an append to this stream, before answering it.
    #[cfg(feature = "fault-injection")]
    pub panic_after_commit_on_stream: Option<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_requests: 512,
            max_batch_events: 5000,
            max_batch_wait: Duration::ZERO,
            queue_depth: 4096,
            enqueue_deadline: Duration::from_secs(2),
            admission_budget: Duration::from_secs(1),
            #[cfg(feature = "fault-injection")]
            panic_after_commit_on_stream: None,
        }
    }
}

/// Everything [`crate::EventStore::open`] needs besides the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Partitions of a new store (ignored when the store exists; its own count wins).
    pub partitions: u16,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    /// How often subscriptions re-read the log when no notification arrives.
    pub poll_interval: Duration,
    /// Run pending migrations when opening.
    pub migrate: bool,
    /// The migrations applied when opening (or, with `migrate` off, checked): the store's own
    /// by default. A database shared with other crates needs all of theirs too (e.g.
    /// `tidemark_projections::migrations()`), since one it does not know is refused.
    pub migrations: crate::migrate::MigrationSet,
    /// How TLS connections check the server (`sslmode` itself is in the connection string).
    pub tls: crate::tls::TlsOptions,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            partitions: 16,
            limits: Limits::default(),
            pipeline: PipelineConfig::default(),
            poll_interval: Duration::from_millis(500),
            migrate: true,
            migrations: crate::migrate::MigrationSet::store(),
            tls: crate::tls::TlsOptions::default(),
        }
    }
}
