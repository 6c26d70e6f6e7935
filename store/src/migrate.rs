//! Applies `migrations/*.sql` in order, once, safely from several processes at once.
//!
//! Each migration runs in its own transaction and is recorded with its checksum; a database
//! whose recorded checksum differs from the file is refused (someone edited history).

use crate::error::{Result, StoreError};
use tokio_postgres::Client;

/// A migration shipped with this build.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> Vec<u8> {
        blake3::hash(self.sql.as_bytes()).as_bytes().to_vec()
    }
}

/// Every migration, in order. The SQL lives in the workspace's `migrations/` folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sql: include_str!("../../migrations/0001_event_log.sql"),
    },
    Migration {
        version: 2,
        name: "projections",
        sql: include_str!("../../migrations/0002_projections.sql"),
    },
    Migration {
        version: 3,
        name: "scale_out",
        sql: include_str!("../../migrations/0003_scale_out.sql"),
    },
    Migration {
        version: 4,
        name: "api_keys",
        sql: include_str!("../../migrations/0004_api_keys.sql"),
    },
    Migration {
        version: 5,
        name: "worker_scaling",
        sql: include_str!("../../migrations/0005_worker_scaling.sql"),
    },
    Migration {
        version: 6,
        name: "worker_projections",
        sql: include_str!("../../migrations/0006_worker_projections.sql"),
    },
];

/// Advisory lock key shared by every Tidemark process ("tidemark" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7469_6465_6d61_726b;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<i32>,
    pub already_applied: Vec<i32>,
}

/// Applies every pending migration. Safe to call from many processes at once: an advisory
/// lock serialises them and each migration is applied exactly once.
pub async fn run(client: &mut Client) -> Result<MigrationReport> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tidemark_migrations (
                 version    integer PRIMARY KEY,
                 name       text    NOT NULL,
                 checksum   bytea   NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .or_else(|e| {
            // Two processes creating the table at the same instant: one loses the race on
            // the catalog's unique index, which is harmless.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(StoreError::db("creating the migrations table")(e))
            }
        })?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(StoreError::db("taking the migration lock"))?;
    let result = apply_pending(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(StoreError::db("releasing the migration lock"));
    let report = result?;
    unlock?;
    Ok(report)
}

/// Versions recorded in the database, each checked against this build's file.
async fn applied_versions(client: &Client) -> Result<Vec<i32>> {
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
        if known.checksum() != checksum {
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

async fn apply_pending(client: &mut Client) -> Result<MigrationReport> {
    let mut report = MigrationReport {
        already_applied: applied_versions(client).await?,
        ..MigrationReport::default()
    };
    for migration in MIGRATIONS {
        if report.already_applied.contains(&migration.version) {
            continue;
        }
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::db("starting a migration"))?;
        tx.batch_execute(migration.sql).await.map_err(|e| {
            StoreError::Migration(format!(
                "migration {} ({}) failed: {}",
                migration.version,
                migration.name,
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ))
        })?;
        tx.execute(
            "INSERT INTO tidemark_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .await
        .map_err(StoreError::db("recording a migration"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing a migration"))?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

/// True when the database has exactly this build's migrations (for readiness checks).
pub async fn is_up_to_date(client: &Client) -> Result<bool> {
    match verify(client).await {
        Ok(()) => Ok(true),
        Err(StoreError::Migration(_)) => Ok(false),
        Err(other) => Err(other),
    }
}
