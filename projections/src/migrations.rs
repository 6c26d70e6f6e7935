//! The projection engine's migrations (bookkeeping, worker registry, leases), registered
//! with the store's one runner; the SQL lives in the workspace's `migrations/` folder.

use tidemark_store::migrate::{Migration, MigrationSet};

/// The engine's own migrations. Their numbers interleave with other crates' (the API's
/// `0004_api_keys.sql`); the runner applies every crate's in one version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2,
        name: "projections",
        sql: include_str!("../../migrations/0002_projections.sql"),
        // Its comment listed a 'rebuilding' status that is never stored.
        earlier_checksums: &["80d64b6558306ea876bfabb5a4098343c18865a801aef86b6986f715f61ec115"],
    },
    Migration {
        version: 3,
        name: "scale_out",
        sql: include_str!("../../migrations/0003_scale_out.sql"),
        // Its comment pointed at a design document outside the repository.
        earlier_checksums: &["0d213f5e88011eee4c92296fb249765e7c5cd2393abd62861601aed1312ee076"],
    },
    Migration {
        version: 5,
        name: "worker_scaling",
        sql: include_str!("../../migrations/0005_worker_scaling.sql"),
        earlier_checksums: &[],
    },
    Migration {
        version: 6,
        name: "worker_projections",
        sql: include_str!("../../migrations/0006_worker_projections.sql"),
        earlier_checksums: &[],
    },
];

/// Everything a database needs to run projections: the store's migrations and the engine's.
/// Pass it as `StoreConfig::migrations` (or to `tidemark_store::migrate::run`).
pub fn migrations() -> MigrationSet {
    MigrationSet::store().with(MIGRATIONS)
}
