//! # tidemark-projections
//!
//! Read models built from the log, exactly once. Read in this order:
//!
//! - [`projection`]: what an application writes: a [`Projection`] (a fold into Postgres
//!   tables, applied in the checkpoint's transaction) or a [`Handler`] (a side effect
//!   elsewhere, at-least-once with dedup by event id, by the engine or by its destination:
//!   [`HandlerDedup`]; handed whole pages through `handle_batch`, or, when its destination
//!   acknowledges asynchronously, sent page after page through a [`Pipeline`] with several
//!   pages in flight), and [`Grouping`]: by stream, by key, shuffled, or the whole log in
//!   order on one lane (`LogOrder`, the relay's).
//! - [`registry`]: the set of projections an application runs.
//! - [`engine`]: [`ProjectionEngine`], the facade: runs one supervised lane per (projection,
//!   partition), and offers status, waiting for a position, dead letters and rebuilds. Its
//!   parts: `registration` (the worker and the projections at start), `supervisor`
//!   (spawns, restarts and bounds the live lanes), `waits` (read-your-writes).
//! - `lane`: the one loop that applies events — fetch ahead into a bounded channel (from the
//!   store's read replica, when it has one; see `tidemark_store::replica`), apply a
//!   batch and advance the checkpoint in one transaction, isolate and park poison events,
//!   restart after failures with the one retry policy; for a pipelined handler, several
//!   pages in flight with the checkpoint committed page by page as they are acknowledged
//!   (`lane::pipelined`). The live lanes of a keyed or shuffled projection share one read of
//!   the log per process (`lane::feed`) instead of each reading it all. Live partitions,
//!   rebuilds, replays,
//!   as-of builds and a hand-driven [`Lane::step`] are all lanes. Its commit primitive
//!   (`lane::commit`, lock–check–apply–advance–lease check–commit) is the only way events
//!   reach a read model: the swap's last events and replayed parked events use it too.
//! - `spec`, `checkpoint` and `fence`: what names a lane; every write to the checkpoint
//!   table; the lease check that fences a worker that lost its partition.
//! - [`rebuild`]: shadow builds swapped in atomically (of the whole log, or of the events
//!   after a position), as-of builds; each takes its build lock first ([`PendingBuild`]).
//! - `lease` and [`workers`]: the worker registry and the coordinator that heartbeats,
//!   claims a fair share of partition leases, renews them, and rebalances when workers come
//!   and go. Every live lane runs under a lease. Lag queries (the scaling figures, the
//!   unowned-partition report) run beside the coordinator's loop, never on it, so nothing
//!   slow delays a renewal. The coordinator knows the engine only
//!   through a handle (projections to run, scaling figures) and the `LaneHost` trait the
//!   supervisor implements.
//! - [`scaling`]: adaptive concurrency inside a process and the `desired_workers` signal:
//!   pure arithmetic on the figures the coordinator collects.
//! - [`dead_letter`], [`status`], `metrics`: parked events, lag, Prometheus gauges.
//! - `kinds`: [`Target`], [`BuildKind`], [`BuildStatus`], [`ProjectionState`], each with its
//!   SQL spelling in one place.
//! - [`windowing`]: pure core of event-time windowed projections (`docs/windowing.md`);
//!   [`windowed`]: [`WindowedProjection`], that core as the fold of an ordinary projection.
//! - `migrations`: the engine's tables ([`MIGRATIONS`]), registered with the store's runner;
//!   [`migrations()`] is the whole set a database with projections needs.
//!
//! Projections know nothing of HTTP or GraphQL.

mod checkpoint;
pub mod config;
pub mod dead_letter;
pub mod engine;
pub mod error;
mod fence;
mod kinds;
mod lane;
mod lease;
mod metrics;
mod migrations;
pub mod projection;
pub mod rebuild;
mod registration;
pub mod registry;
pub mod scaling;
mod spec;
pub mod status;
mod supervisor;
mod waits;
pub mod windowed;
pub mod windowing;
pub mod workers;

pub use config::EngineConfig;
pub use dead_letter::DeadLetter;
pub use engine::ProjectionEngine;
pub use error::{BoxError, EngineError, ProjectionError};
pub use fence::LeaseToken;
pub use kinds::{BuildKind, BuildStatus, ProjectionKind, ProjectionState, Target};
pub use lane::{Lane, LaneProgress, Step};
pub use migrations::{migrations, MIGRATIONS};
pub use projection::{
    quote_ident, Acknowledgement, ApplyContext, EventSelector, FailurePolicy, Grouping, Handler,
    HandlerDedup, Pipeline, Projection,
};
pub use rebuild::{BuildReport, BuildRequest, PendingBuild, Progress, ProgressCallback};
pub use registry::Registry;
pub use scaling::ScalingSignal;
pub use spec::ALL_PARTITIONS;
pub use status::{
    PartitionLag, ProjectionStatus, RebuildProgress, UnownedPartition, WindowProgress,
};
pub use tidemark_store::{EventStore, Position, RecordedEvent};
pub use windowed::WindowedProjection;
pub use workers::{PoolScaling, ProcessIdentity, WorkerIdentity, WorkerInfo};
