//! Migrations: runners started at once (as several processes starting together) apply each
//! migration exactly once; a database whose recorded history differs from this build (a
//! tampered checksum, an unknown migration, or none at all when not migrating) is refused
//! with `StoreError::Migration`.

mod common;

use common::{append_ok, connect, event, open_default, within_deadline};
use std::collections::BTreeMap;
use tidemark_store::migrate::{self, MigrationReport, MIGRATIONS};
use tidemark_store::{EventStore, ExpectedVersion, StoreConfig, StoreError};
use tidemark_testkit::TestDatabase;

/// `(version, name, checksum)` rows of `tidemark_migrations`.
async fn recorded_migrations(db: &TestDatabase) -> Vec<(i32, String, Vec<u8>)> {
    connect(db)
        .await
        .query(
            "SELECT version, name, checksum FROM tidemark_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("reading tidemark_migrations")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

fn shipped_migrations() -> Vec<(i32, String, Vec<u8>)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string(), m.checksum()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_migration_runners_at_once_apply_each_migration_exactly_once() {
    // A few fresh databases: the race is on the very first statements.
    for _ in 0..3 {
        let db = TestDatabase::create().await;
        let mut first = connect(&db).await;
        let mut second = connect(&db).await;
        let (a, b) = within_deadline(
            "both migration runners finish",
            futures::future::join(migrate::run(&mut first), migrate::run(&mut second)),
        )
        .await;
        let reports: [MigrationReport; 2] = [
            a.expect("the first runner succeeds"),
            b.expect("the second runner succeeds"),
        ];

        let mut applied_by: BTreeMap<i32, usize> = BTreeMap::new();
        for report in &reports {
            for version in &report.applied {
                *applied_by.entry(*version).or_default() += 1;
            }
        }
        for migration in MIGRATIONS {
            assert_eq!(
                applied_by.get(&migration.version),
                Some(&1),
                "migration {} is applied by exactly one runner: {reports:?}",
                migration.version
            );
            let seen_by_both = reports.iter().all(|r| {
                r.applied.contains(&migration.version)
                    || r.already_applied.contains(&migration.version)
            });
            assert!(
                seen_by_both,
                "each runner accounts for every migration: {reports:?}"
            );
        }
        assert_eq!(recorded_migrations(&db).await, shipped_migrations());

        // The schema works.
        let store = open_default(&db).await;
        append_ok(
            &store,
            "acct-1",
            ExpectedVersion::NoStream,
            vec![event("Opened", 0)],
        )
        .await;
        store.shutdown().await;
    }
}

#[tokio::test]
async fn running_the_migrations_again_applies_nothing() {
    let db = TestDatabase::create().await;
    let mut client = connect(&db).await;
    let first = migrate::run(&mut client).await.expect("first run");
    assert_eq!(
        first.applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    let second = migrate::run(&mut client).await.expect("second run");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, first.applied);
    assert!(migrate::is_up_to_date(&client).await.expect("checking"));
    assert_eq!(recorded_migrations(&db).await, shipped_migrations());
}

/// Opens a store on `db`, expecting a migration error; returns its message.
async fn open_fails_with_migration_error(db: &TestDatabase, config: StoreConfig) -> String {
    match EventStore::open(db.pg_config(), config).await {
        Err(StoreError::Migration(message)) => message,
        Err(other) => panic!("expected StoreError::Migration, got {other:?}"),
        Ok(_) => panic!("the store must refuse this database"),
    }
}

#[tokio::test]
async fn a_tampered_migration_checksum_makes_open_fail_with_a_migration_error() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0)],
    )
    .await;
    store.shutdown().await;
    drop(store);

    let tampered = connect(&db)
        .await
        .execute(
            "UPDATE tidemark_migrations SET checksum = sha256(checksum) WHERE version = 1",
            &[],
        )
        .await
        .expect("tampering with the recorded checksum");
    assert_eq!(tampered, 1);

    let message = open_fails_with_migration_error(&db, StoreConfig::default()).await;
    assert!(
        message.contains("migration 1"),
        "the message names the migration: {message}"
    );
    // A process that does not migrate (e.g. a worker started after `tidemark migrate`)
    // checks the recorded history just the same.
    let without_migrating = StoreConfig {
        migrate: false,
        ..StoreConfig::default()
    };
    let message = open_fails_with_migration_error(&db, without_migrating).await;
    assert!(
        message.contains("migration 1"),
        "the message names the migration: {message}"
    );
}

#[tokio::test]
async fn a_database_with_a_migration_unknown_to_this_build_is_refused() {
    let db = TestDatabase::create().await;
    open_default(&db).await.shutdown().await;
    connect(&db)
        .await
        .execute(
            "INSERT INTO tidemark_migrations (version, name, checksum) VALUES (9999, 'future', '\\x00')",
            &[],
        )
        .await
        .expect("recording a migration from the future");

    let message = open_fails_with_migration_error(&db, StoreConfig::default()).await;
    assert!(message.contains("9999"), "the message names it: {message}");
}

#[tokio::test]
async fn opening_an_unmigrated_database_without_migrating_fails_with_a_migration_error() {
    let db = TestDatabase::create().await;
    let config = StoreConfig {
        migrate: false,
        ..StoreConfig::default()
    };
    open_fails_with_migration_error(&db, config.clone()).await;

    // Once migrated (by someone else), the same configuration opens.
    migrate::run(&mut connect(&db).await)
        .await
        .expect("migrating");
    let store = EventStore::open(db.pg_config(), config)
        .await
        .expect("a migrated database opens without migrating");
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0)],
    )
    .await;
}
