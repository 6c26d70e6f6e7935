//! The consumer groups' migration, registered with the store's one runner; the SQL lives in
//! the workspace's `migrations/` folder.

use tidemark_store::migrate::Migration;

/// `consumer_groups`, `consumer_deliveries`, `consumer_parked`.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 200,
    name: "consumer_groups",
    sql: include_str!("../../migrations/0200_consumer_groups.sql"),
    earlier_checksums: &[],
}];
