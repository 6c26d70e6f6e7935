//! Applies `migrations/*.sql` in order, once, safely from several processes at once.
//!
//! Each migration runs in its own transaction and is recorded with its checksum; a database
//! whose recorded checksum differs from the file is refused (someone edited history).

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

/// Every migration, in order. The SQL lives in the workspace's `migrations/` folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sql: include_str!("../../migrations/0001_event_log.sql"),
        // Its comment pointed at a design document outside the repository.
        earlier_checksums: &["2b9628c8a9fe2175e97e71984f89fc516e0d96b276dce08ff3745a6f070108f6"],
    },
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
        version: 4,
        name: "api_keys",
        sql: include_str!("../../migrations/0004_api_keys.sql"),
        earlier_checksums: &[],
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

/// Applies every pending migration. Safe to call from many processes at once.
///
/// Each step is one transaction that first takes a transaction-scoped advisory lock, and only
/// then creates the bookkeeping table, reads what is applied and applies the next migration.
/// Nothing touches the catalog before the lock, so concurrent runners cannot race on
/// `CREATE TABLE` (which fails with 23505, 42P07 or 42710 depending on timing), and a run
/// that is cancelled or loses its connection leaves no lock behind: the lock ends with the
/// transaction, never outliving it on a pooled connection.
pub async fn run(client: &mut Client) -> Result<MigrationReport> {
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
        let applied = applied_versions(&tx).await?;
        let Some(migration) = MIGRATIONS.iter().find(|m| !applied.contains(&m.version)) else {
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
async fn applied_versions(client: &impl GenericClient) -> Result<Vec<i32>> {
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
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(StoreError::Migration(format!(
                "the database has migration {version} ({name}) which this build does not know; \
                 run a newer Tidemark against it"
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

/// Checks, without changing anything, that the database has exactly this build's
/// migrations with matching checksums (for processes started with migrations disabled).
pub async fn verify(client: &Client) -> Result<()> {
    let applied = match applied_versions(client).await {
        Err(StoreError::Database { source, .. })
            if source.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            Vec::new()
        }
        other => other?,
    };
    let pending: Vec<String> = MIGRATIONS
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

/// True when the database has exactly this build's migrations (for readiness checks).
pub async fn is_up_to_date(client: &Client) -> Result<bool> {
    match verify(client).await {
        Ok(()) => Ok(true),
        Err(StoreError::Migration(_)) => Ok(false),
        Err(other) => Err(other),
    }
}
