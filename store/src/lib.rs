//! # tidemark-store
//!
//! An append-only event log on PostgreSQL. Read in this order:
//!
//! - [`model`]: what you append ([`NewEvent`], [`AppendRequest`], [`ExpectedVersion`]) and
//!   what you read back ([`RecordedEvent`]).
//! - [`store`]: [`EventStore`], the handle: `append`, `read_stream`, `read_log`, `subscribe`,
//!   `head_position`, and counts over the log for consumers that keep positions
//!   (`count_events`, `backlog`, `partitions_behind`).
//! - `append`: validation and hashing in the caller's task, then a bounded queue and one
//!   writer task that commits many appends per transaction (group commit). Positions come
//!   from a single head row locked by each append transaction, so they are dense and in
//!   commit order.
//! - [`read`] and [`subscribe`]: paged reads by stream or position, and catch-up-then-live
//!   subscriptions woken by LISTEN/NOTIFY with a polling fallback; `heads` holds the head
//!   and per-partition heads they wake on (a partition subscription wakes only for its own).
//!   A subscription is handed the pool and the heads, not the store.
//! - [`replica`]: event reads from a streaming replica ([`EventStore::on_replica`] handles):
//!   which reads may go there, why nothing is skipped, and the replica's lag.
//! - [`browse`]: what an operator browses: categories, streams of a category, the append
//!   rate (the dashboard's stream browser and log figures).
//! - [`hashing`]: canonical JSON, content hashes, derived event ids, partitions: the parts
//!   of the on-disk contract that must never change.
//! - [`validate`], [`error`]: what is refused, and why.
//! - [`hooks`]: what another crate may install without the store knowing it: an append
//!   validator (refuses an append before it is queued), a payload codec (stores payloads in
//!   a binary encoding, every read decodes them back to JSON) and a read hook (rewrites
//!   events as a handle reads them); the schema registry implements all three.
//! - [`migrate`]: the one migration runner. The store registers the event log's migration;
//!   a [`migrate::MigrationSet`] merges it with those of other crates (projections, API),
//!   applied once each in version order, under an advisory lock, checksummed.
//! - [`config`]: limits and pipeline settings with their defaults.
//! - [`tls`]: the one TLS connector of every connection, honouring `sslmode`.
//! - [`backoff`]: the one exponential backoff of every reconnect and retry loop.
//! - [`aggregate`]: the write side: an [`aggregate::Aggregate`] folds and decides; the
//!   [`aggregate::CommandBus`] loads, decides and appends with `Exact(version)`, retrying on conflict.
//!
//! The store knows nothing of projections or GraphQL.

pub mod aggregate;
mod append;
pub mod backoff;
pub mod browse;
pub mod config;
pub mod error;
pub mod hashing;
mod heads;
pub mod hooks;
pub mod migrate;
pub mod model;
pub mod read;
pub mod replica;
pub mod store;
pub mod subscribe;
pub mod tls;
pub mod validate;

pub use browse::{AppendRate, StreamSummary};
pub use config::{Limits, PipelineConfig, StoreConfig};
pub use error::{OverloadReason, Result, StoreError, ValidationError};
pub use hooks::{AppendValidator, HookError, PayloadCodec, ReadHook};
pub use migrate::MigrationSet;
pub use model::{
    category_of, AppendOutcome, AppendRequest, AppendedEvent, ExpectedVersion, NewEvent,
    PayloadEncoding, Position, RecordedEvent, StreamVersion,
};
pub use read::{Direction, LogFilter, PartitionBacklog};
pub use replica::ReplicaLag;
pub use store::{build_pool, EventStore};
pub use subscribe::{Page, SubscribeOptions};
pub use tls::{PgTls, TlsOptions};
