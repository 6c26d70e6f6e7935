//! # tidemark-projections
//!
//! Read models built from the log, exactly once. Read in this order:
//!
//! - [`projection`]: what an application writes: a [`Projection`] (a fold into Postgres
//!   tables, applied in the checkpoint's transaction) or a [`Handler`] (a side effect
//!   elsewhere, at-least-once with dedup by event id).
//! - [`registry`]: the set of projections an application runs.
//! - [`engine`]: [`ProjectionEngine`] runs one supervised lane per (projection, partition),
//!   and offers status, waiting for a position, dead letters and rebuilds.
//! - `lane`: the one loop that applies events — fetch ahead into a bounded channel, apply a
//!   batch and advance the checkpoint in one transaction, isolate and park poison events.
//!   Live partitions, rebuilds, replays and as-of builds are all lanes.
//! - `checkpoint` and `fence`: the checkpoint row locked and checked at the start of every
//!   batch; the lease check that fences a worker that lost its partition.
//! - [`rebuild`]: shadow builds swapped in atomically, replays from a position, as-of builds.
//! - [`dead_letter`], [`status`], `metrics`: parked events, lag, Prometheus gauges.
//!
//! Projections know nothing of HTTP or GraphQL.

mod checkpoint;
pub mod config;
pub mod dead_letter;
pub mod engine;
pub mod error;
mod fence;
mod lane;
mod metrics;
pub mod projection;
pub mod rebuild;
pub mod registry;
pub mod status;

pub use config::EngineConfig;
pub use dead_letter::DeadLetter;
pub use engine::ProjectionEngine;
pub use error::{EngineError, ProjectionError};
pub use fence::LeaseToken;
pub use lane::{LaneProgress, ALL_PARTITIONS, LIVE};
pub use projection::{
    quote_ident, ApplyContext, EventSelector, FailurePolicy, Handler, Projection,
};
pub use rebuild::{BuildReport, Progress, ProgressCallback};
pub use registry::Registry;
pub use status::{PartitionLag, ProjectionStatus, RebuildProgress};
pub use tidemark_store::{EventStore, Position, RecordedEvent};
