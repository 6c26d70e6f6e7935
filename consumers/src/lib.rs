//! # tidemark-consumers
//!
//! Consumer groups (persistent subscriptions): a named, durable cursor over the log that
//! many consumers, in any process and any language, pull from with acknowledgements. The
//! group's state (how far it has read, what is in flight to whom, what is parked) lives in
//! PostgreSQL, so any Tidemark process serves any consumer and a restart loses nothing.
//! See `docs/consumer-groups.md` for when to use one and what it guarantees. Read in this
//! order:
//!
//! - [`model`]: a group's definition ([`GroupSpec`]: selector, start, [`Strategy`],
//!   [`GroupSettings`]), a delivered [`Message`], [`NackAction`], [`AckOutcome`],
//!   [`GroupStatus`], [`ParkedMessage`].
//! - [`groups`]: [`ConsumerGroups`], the handle: create, list, status, delete; `fetch`
//!   (long poll), `ack`, `nack`; parked messages and their replay; the metrics reporter.
//!   Every change locks the group's row, so processes take turns per group.
//! - `select`: which outstanding messages a fetch may hand out, per strategy (pure rules).
//! - `metrics`: the per-group gauges.
//! - [`migrations`]: the crate's migration (`migrations/0200_consumer_groups.sql`).
//! - [`error`]: what can fail, [`ConsumerError`].
//!
//! The crate depends on the store only; the API serves it over GraphQL and the CLI.

pub mod error;
pub mod groups;
mod metrics;
pub mod migrations;
pub mod model;
mod select;

pub use error::{ConsumerError, Result};
pub use groups::{ConsumerGroups, MAX_BATCH};
pub use migrations::MIGRATIONS;
pub use model::{
    AckOutcome, GroupSettings, GroupSpec, GroupStatus, Message, NackAction, ParkedMessage,
    Selector, StartFrom, Strategy,
};
