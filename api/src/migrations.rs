//! The API's own migration (API keys), and the whole set a server's database needs.

use tidemark_store::migrate::{Migration, MigrationSet};

/// The API's migrations, registered with the store's one runner; the SQL lives in the
/// workspace's `migrations/` folder.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 4,
    name: "api_keys",
    sql: include_str!("../../migrations/0004_api_keys.sql"),
    earlier_checksums: &[],
}];

/// Every migration of a Tidemark server's database: the store's, the projection engine's,
/// the API's, the schema registry's and the consumer groups'. What `serve`, `migrate` and
/// the other commands apply and check.
pub fn all_migrations() -> MigrationSet {
    tidemark_projections::migrations()
        .with(MIGRATIONS)
        .with(tidemark_schema::MIGRATIONS)
        .with(tidemark_consumers::MIGRATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database migrated before each crate owned its files holds exactly these rows: the
    /// same versions, names and texts keep it valid without any change.
    #[test]
    fn the_whole_set_is_the_history_every_existing_database_has() {
        let all = all_migrations().ordered().expect("no duplicate versions");
        let rows: Vec<(i32, &str)> = all.iter().map(|m| (m.version, m.name)).collect();
        assert_eq!(
            rows,
            [
                (1, "event_log"),
                (2, "projections"),
                (3, "scale_out"),
                (4, "api_keys"),
                (5, "worker_scaling"),
                (6, "worker_projections"),
                (50, "binary_payloads"),
                (100, "schema_registry"),
                (101, "schema_encoding"),
                (200, "consumer_groups"),
            ]
        );
        for migration in all {
            let file = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
                .expect("the migrations folder")
                .flatten()
                .find(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{:04}_", migration.version))
                })
                .unwrap_or_else(|| panic!("a file for migration {}", migration.version));
            assert_eq!(
                file.file_name().to_string_lossy(),
                format!("{:04}_{}.sql", migration.version, migration.name)
            );
            assert_eq!(
                std::fs::read_to_string(file.path()).expect("reading the file"),
                migration.sql,
                "migration {} is registered with its file's text",
                migration.version
            );
        }
    }
}
