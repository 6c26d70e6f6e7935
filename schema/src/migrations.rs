//! The registry's DDL, for the store's migration runner. Numbered from 100 so that the
//! store's own migrations keep the low numbers; applied after them (it reads `events`).

use tidemark_store::migrate::Migration;

/// The schema registry's migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 100,
        name: "schema_registry",
        sql: include_str!("../../migrations/0100_schema_registry.sql"),
        earlier_checksums: &[],
    },
    Migration {
        version: 101,
        name: "schema_encoding",
        sql: include_str!("../../migrations/0101_schema_encoding.sql"),
        earlier_checksums: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_store_and_match_the_file_names() {
        let store_last = tidemark_store::migrate::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap();
        for migration in MIGRATIONS {
            assert!(migration.version > store_last);
            assert!(!migration.sql.is_empty());
        }
        assert!(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../migrations/0100_schema_registry.sql"
        ))
        .exists());
    }
}
