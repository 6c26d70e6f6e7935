//! The one migration runner: applies the migrations of every crate that uses a database, in
//! version order, once, safely from several processes at once.
//!
//! Each crate owns its migrations (the SQL files live in the workspace's `migrations/`
//! folder, numbered across all crates): the store registers the event log's ([`MIGRATIONS`]),
//! the projection engine and the API their own. A caller passes the lists of the crates it
//! uses as a [`MigrationSet`]; the runner merges them by version and refuses a number listed
//! twice. Each migration runs in its own transaction under an advisory lock and is recorded
//! with its checksum; a database whose recorded checksum differs from the file is refused
//! (someone edited history), and so is one holding a migration the set does not know (a
//! newer build, or a crate the caller left out).

use crate::error::{describe_postgres_error, Result, StoreError};
use tokio_postgres::{Client, GenericClient, Transaction};

/// A migration shipped with this build.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    /// Checksums (blake3, hex) of earlier texts of this file that differ from `sql` only in
    /// comments: databases migrated with them are accepted as they are. Only ever add a
    /// checksum here for an edit that does not change what the SQL does.
    pub earlier_checksums: &'static [&'static str],
}

impl Migration {
    pub fn checksum(&self) -> Vec<u8> {
        blake3::hash(self.sql.as_bytes()).as_bytes().to_vec()
    }

    /// Whether `recorded` is the checksum of this migration's text, now or in a comment-only
    /// earlier version.
    pub fn matches(&self, recorded: &[u8]) -> bool {
        recorded == self.checksum().as_slice()
            || self.earlier_checksums.iter().any(|hex| {
                blake3::Hash::from_hex(hex).is_ok_and(|earlier| earlier.as_bytes() == recorded)
            })
    }
}

/// The store's own migrations: the event log. The SQL lives in the workspace's
/// `migrations/` folder; other crates register the files they own there themselves.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sql: include_str!("../../migrations/0001_event_log.sql"),
        // Its comment pointed at a design document outside the repository.
        earlier_checksums: &["2b9628c8a9fe2175e97e71984f89fc516e0d96b276dce08ff3745a6f070108f6"],
    },
    Migration {
        version: 50,
        name: "binary_payloads",
        sql: include_str!("../../migrations/0050_binary_payloads.sql"),
        earlier_checksums: &[],
    },
];

/// The migrations of the crates that share one database: their lists, applied together in
/// version order. `MigrationSet::store().with(OTHER_CRATE_MIGRATIONS)` adds a crate's list;
/// crates that build on the store offer the whole set they need in one call (e.g.
/// `tidemark_projections::migrations()`, `tidemark_api::all_migrations()`).
#[derive(Debug, Clone)]
pub struct MigrationSet {
    lists: Vec<&'static [Migration]>,
}

impl MigrationSet {
    /// The set of exactly these lists.
    pub fn new(lists: impl IntoIterator<Item = &'static [Migration]>) -> MigrationSet {
        MigrationSet {
            lists: lists.into_iter().collect(),
        }
    }

    /// The store's own migrations ([`MIGRATIONS`]) and nothing else.
    pub fn store() -> MigrationSet {
        MigrationSet::new([MIGRATIONS])
    }

    /// This set and `list`.
    pub fn with(mut self, list: &'static [Migration]) -> MigrationSet {
        self.lists.push(list);
        self
    }

    /// Every migration of the set in version order. A version listed twice (in two lists or
    /// in one) is refused: every crate's migrations need numbers of their own.
    pub fn ordered(&self) -> Result<Vec<&'static Migration>> {
        let mut ordered: Vec<&'static Migration> =
            self.lists.iter().flat_map(|list| list.iter()).collect();
        ordered.sort_by_key(|m| m.version);
        if let Some(pair) = ordered.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(StoreError::Migration(format!(
                "migration {} is listed twice ({} and {}); every migration needs a number of its \
                 own across all crates",
                pair[0].version, pair[0].name, pair[1].name
            )));
        }
        Ok(ordered)
    }
}

impl Default for MigrationSet {
    /// [`MigrationSet::store`].
    fn default() -> Self {
        MigrationSet::store()
    }
}

/// Advisory lock key shared by every Tidemark process ("tidemark" in ASCII). Public so that
/// tests (and operators) can hold it to line several runners up.
pub const MIGRATION_LOCK_KEY: i64 = 0x7469_6465_6d61_726b;

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS tidemark_migrations (
     version    integer PRIMARY KEY,
     name       text    NOT NULL,
     checksum   bytea   NOT NULL,
     applied_at timestamptz NOT NULL DEFAULT now()
 )";

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<i32>,
    pub already_applied: Vec<i32>,
}

/// Applies every pending migration of `migrations`, lowest version first. Safe to call from
/// many processes at once.
///
/// Each step is one transaction that first takes a transaction-scoped advisory lock, and only
/// then creates the bookkeeping table, reads what is applied and applies the next migration.
/// Nothing touches the catalog before the lock, so concurrent runners cannot race on
/// `CREATE TABLE` (which fails with 23505, 42P07 or 42710 depending on timing), and a run
/// that is cancelled or loses its connection leaves no lock behind: the lock ends with the
/// transaction, never outliving it on a pooled connection.
pub async fn run(client: &mut Client, migrations: &MigrationSet) -> Result<MigrationReport> {
    let migrations = migrations.ordered()?;
    let mut applied_here = Vec::new();
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::db("starting a migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(StoreError::db("taking the migration lock"))?;
        tx.batch_execute(CREATE_MIGRATIONS_TABLE)
            .await
            .map_err(StoreError::db("creating the migrations table"))?;
        let applied = applied_versions(&tx, &migrations).await?;
        let Some(migration) = migrations.iter().find(|m| !applied.contains(&m.version)) else {
            tx.commit()
                .await
                .map_err(StoreError::db("committing the migration check"))?;
            // Another runner may have applied some migrations between our steps.
            let already_applied = applied
                .into_iter()
                .filter(|v| !applied_here.contains(v))
                .collect();
            return Ok(MigrationReport {
                applied: applied_here,
                already_applied,
            });
        };
        apply(&tx, migration).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing a migration"))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        applied_here.push(migration.version);
    }
}

async fn apply(tx: &Transaction<'_>, migration: &Migration) -> Result<()> {
    tx.batch_execute(migration.sql).await.map_err(|e| {
        StoreError::Migration(format!(
            "migration {} ({}) failed: {}",
            migration.version,
            migration.name,
            describe_postgres_error(&e)
        ))
    })?;
    tx.execute(
        "INSERT INTO tidemark_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&migration.version, &migration.name, &migration.checksum()],
    )
    .await
    .map_err(StoreError::db("recording a migration"))?;
    Ok(())
}

/// Versions recorded in the database, each checked against this build's file.
async fn applied_versions(
    client: &impl GenericClient,
    migrations: &[&'static Migration],
) -> Result<Vec<i32>> {
    let rows = client
        .query(
            "SELECT version, name, checksum FROM tidemark_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(StoreError::db("reading applied migrations"))?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        let checksum: Vec<u8> = row.get(2);
        let Some(known) = migrations.iter().find(|m| m.version == version) else {
            return Err(StoreError::Migration(format!(
                "the database has migration {version} ({name}) which this build does not know; \
                 run a newer Tidemark against it (or, in a program of your own, pass the \
                 migrations of every Tidemark crate that uses this database)"
            )));
        };
        if !known.matches(&checksum) {
            return Err(StoreError::Migration(format!(
                "migration {version} ({name}) was applied with different content than \
                 migrations/{version:04}_{}.sql in this build; refusing to start on a database \
                 whose history differs from the code",
                known.name
            )));
        }
        applied.push(version);
    }
    Ok(applied)
}

/// Checks, without changing anything, that the database has exactly the migrations of
/// `migrations` with matching checksums (for processes started with migrations disabled).
pub async fn verify(client: &Client, migrations: &MigrationSet) -> Result<()> {
    let migrations = migrations.ordered()?;
    let applied = match applied_versions(client, &migrations).await {
        Err(StoreError::Database { source, .. })
            if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            Vec::new()
        }
        other => other?,
    };
    let pending: Vec<String> = migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.name))
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Migration(format!(
            "the database lacks migrations {}; run `tidemark migrate`",
            pending.join(", ")
        )))
    }
}

/// True when the database has exactly the migrations of `migrations` (for readiness checks).
pub async fn is_up_to_date(client: &Client, migrations: &MigrationSet) -> Result<bool> {
    match verify(client, migrations).await {
        Ok(()) => Ok(true),
        Err(StoreError::Migration(_)) => Ok(false),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn migration(version: i32, name: &'static str) -> Migration {
        Migration {
            version,
            name,
            sql: "SELECT 1",
            earlier_checksums: &[],
        }
    }

    const EVENS: &[Migration] = &[migration(2, "two"), migration(4, "four")];
    const ODDS: &[Migration] = &[migration(5, "five"), migration(3, "three")];
    const ANOTHER_FOUR: &[Migration] = &[migration(4, "other_four")];

    fn versions(set: &MigrationSet) -> Vec<i32> {
        set.ordered()
            .expect("no duplicates")
            .iter()
            .map(|m| m.version)
            .collect()
    }

    #[test]
    fn the_lists_of_several_crates_are_merged_in_version_order() {
        let set = MigrationSet::store().with(ODDS).with(EVENS);
        assert_eq!(versions(&set), [1, 2, 3, 4, 5, 50]);
        assert_eq!(versions(&MigrationSet::new([EVENS, ODDS])), [2, 3, 4, 5]);
        assert_eq!(versions(&MigrationSet::default()), [1, 50]);
    }

    #[test]
    fn a_version_listed_twice_is_refused_naming_both() {
        for set in [
            MigrationSet::store().with(EVENS).with(ANOTHER_FOUR),
            MigrationSet::store().with(EVENS).with(EVENS),
            MigrationSet::new([MIGRATIONS, MIGRATIONS]),
        ] {
            match set.ordered() {
                Err(StoreError::Migration(message)) => {
                    assert!(message.contains("listed twice"), "{message}")
                }
                other => panic!("a duplicate version must be refused, got {other:?}"),
            }
        }
        let Err(StoreError::Migration(message)) =
            MigrationSet::new([EVENS, ANOTHER_FOUR]).ordered()
        else {
            panic!("a duplicate version must be refused");
        };
        assert!(
            message.contains("migration 4")
                && message.contains("four")
                && message.contains("other_four"),
            "{message}"
        );
    }
}
