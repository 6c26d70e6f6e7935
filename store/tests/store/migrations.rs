//! Migrations: runners started at once (as several processes starting together) apply each
//! migration exactly once; the lists of several crates are applied as one history in version
//! order, and a version listed twice is refused; a database whose recorded history differs
//! from this build (a tampered checksum, an unknown migration, or none at all when not
//! migrating) is refused with `StoreError::Migration`.

use crate::common;

use common::{append_ok, connect, event, open_default, wait_until, within_deadline, DEADLINE};
use std::collections::BTreeMap;
use tidemark_store::migrate::{
    self, Migration, MigrationReport, MigrationSet, MIGRATIONS, MIGRATION_LOCK_KEY,
};
use tidemark_store::{EventStore, ExpectedVersion, StoreConfig, StoreError};
use tidemark_testkit::TestDatabase;

/// The migrations of a crate built on the store, numbered around another crate's (as the
/// projection engine's are around the API's).
const ENGINE_LIKE: &[Migration] = &[
    Migration {
        version: 2,
        name: "engine_registry",
        sql: "CREATE TABLE engine_registry (name text PRIMARY KEY)",
        earlier_checksums: &[],
    },
    Migration {
        version: 4,
        name: "engine_registry_owner",
        // Needs version 3's table: applied out of order, it would fail.
        sql: "ALTER TABLE engine_registry ADD COLUMN owner text REFERENCES api_like_keys (key)",
        earlier_checksums: &[],
    },
];

/// Another crate's migration, between the first crate's two.
const API_LIKE: &[Migration] = &[Migration {
    version: 3,
    name: "api_like_keys",
    sql: "CREATE TABLE api_like_keys (key text PRIMARY KEY)",
    earlier_checksums: &[],
}];

/// The store's migrations and two other crates', as a server's database has them.
fn several_crates() -> MigrationSet {
    MigrationSet::store().with(ENGINE_LIKE).with(API_LIKE)
}

fn versions_of(set: &MigrationSet) -> Vec<i32> {
    set.ordered()
        .expect("no duplicate versions")
        .iter()
        .map(|m| m.version)
        .collect()
}

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

fn shipped_migrations(set: &MigrationSet) -> Vec<(i32, String, Vec<u8>)> {
    set.ordered()
        .expect("no duplicate versions")
        .iter()
        .map(|m| (m.version, m.name.to_string(), m.checksum()))
        .collect()
}

/// Sessions of this database waiting for the migration lock, seen from `observer`.
async fn migration_lock_waiters(observer: &tokio_postgres::Client) -> i64 {
    // An advisory lock on a bigint key shows up as classid = high half, objid = low half.
    let key = MIGRATION_LOCK_KEY;
    observer
        .query_one(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND NOT granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid::bigint = ($1::bigint >> 32) AND objid::bigint = ($1::bigint & 4294967295)",
            &[&key],
        )
        .await
        .expect("reading pg_locks")
        .get(0)
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("looking the table up")
        .get(0)
}

/// The race the runners used to lose: both start on a fresh database at the same instant.
/// A third session holds the migration lock until both runners wait for it, so they are
/// released together every time instead of by luck of timing. While they wait, nothing may
/// have touched the catalog yet: every statement of a run happens under the lock. The
/// runners apply the migrations of several crates, so they take turns over several steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_migration_runners_at_once_apply_each_migration_exactly_once() {
    let db = TestDatabase::create().await;
    let gate = connect(&db).await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("holding the migration lock from a third session");
    let observer = connect(&db).await;

    let mut first = connect(&db).await;
    let mut second = connect(&db).await;
    let set = several_crates();
    let runners = tokio::spawn({
        let set = set.clone();
        async move {
            futures::future::join(
                migrate::run(&mut first, &set),
                migrate::run(&mut second, &set),
            )
            .await
        }
    });

    wait_until(
        "both migration runners wait for the lock",
        DEADLINE,
        || async { migration_lock_waiters(&observer).await == 2 },
    )
    .await;
    assert!(
        !table_exists(&observer, "tidemark_migrations").await,
        "a runner touched the catalog before taking the migration lock"
    );
    gate.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("releasing the migration lock");

    let (a, b) = within_deadline("both migration runners finish", runners)
        .await
        .expect("the runners' task does not panic");
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
    for migration in set.ordered().expect("no duplicate versions") {
        assert_eq!(
            applied_by.get(&migration.version),
            Some(&1),
            "migration {} is applied by exactly one runner: {reports:?}",
            migration.version
        );
        let seen_by_both = reports.iter().all(|r| {
            r.applied.contains(&migration.version) || r.already_applied.contains(&migration.version)
        });
        assert!(
            seen_by_both,
            "each runner accounts for every migration: {reports:?}"
        );
    }
    assert_eq!(recorded_migrations(&db).await, shipped_migrations(&set));

    // The schema works.
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: set,
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens on the database it migrated");
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0)],
    )
    .await;
    store.shutdown().await;
}

/// A run that is abandoned while it waits (a cancelled start-up) leaves no lock behind on
/// its connection: the next run on the same connection and a run elsewhere both proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_run_leaves_no_lock_behind() {
    let db = TestDatabase::create().await;
    let gate = connect(&db).await;
    gate.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("holding the migration lock from a third session");
    let observer = connect(&db).await;

    let mut pooled = connect(&db).await;
    let store_only = MigrationSet::store();
    {
        let waiting = migrate::run(&mut pooled, &store_only);
        tokio::pin!(waiting);
        tokio::select! {
            _ = &mut waiting => panic!("the run cannot finish while the lock is held elsewhere"),
            _ = wait_until("the run waits for the lock", DEADLINE, || async {
                migration_lock_waiters(&observer).await == 1
            }) => {}
        }
        // Dropped here: the run is cancelled mid-wait.
    }
    gate.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("releasing the migration lock");

    // The abandoned statement may still complete on the server; whatever it did ends with
    // its transaction. A run from another session is not blocked by it.
    let mut elsewhere = connect(&db).await;
    let report = within_deadline(
        "a run on another connection",
        migrate::run(&mut elsewhere, &store_only),
    )
    .await
    .expect("migrating from another connection");
    assert_eq!(
        report.applied.len() + report.already_applied.len(),
        MIGRATIONS.len()
    );
    let held: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .expect("reading pg_locks")
        .get(0);
    assert_eq!(held, 0, "no advisory lock outlives a migration run");
}

#[tokio::test]
async fn running_the_migrations_again_applies_nothing() {
    let db = TestDatabase::create().await;
    let mut client = connect(&db).await;
    let store_only = MigrationSet::store();
    let first = migrate::run(&mut client, &store_only)
        .await
        .expect("first run");
    assert_eq!(
        first.applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    let second = migrate::run(&mut client, &store_only)
        .await
        .expect("second run");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, first.applied);
    assert!(migrate::is_up_to_date(&client, &store_only)
        .await
        .expect("checking"));
    assert_eq!(
        recorded_migrations(&db).await,
        shipped_migrations(&store_only)
    );
}

/// Lists registered by several crates make one history: applied in version order whatever
/// the order of the lists (version 4 needs version 3's table), recorded as one list would
/// be, checked as a whole.
#[tokio::test]
async fn the_migrations_of_several_crates_are_applied_in_one_version_order() {
    let db = TestDatabase::create().await;
    let mut client = connect(&db).await;
    let set = MigrationSet::new([API_LIKE, ENGINE_LIKE, MIGRATIONS]);
    assert_eq!(versions_of(&set), [1, 2, 3, 4, 50]);
    let report = migrate::run(&mut client, &set).await.expect("migrating");
    assert_eq!(report.applied, [1, 2, 3, 4, 50]);
    assert_eq!(recorded_migrations(&db).await, shipped_migrations(&set));
    assert!(migrate::is_up_to_date(&client, &several_crates())
        .await
        .expect("checking"));
    // Without the crates that own versions 2 to 4, the database is not this build's.
    assert!(!migrate::is_up_to_date(&client, &MigrationSet::store())
        .await
        .expect("checking"));
}

/// A database that has the store's migrations gets another crate's on top, pending ones only;
/// a process that leaves that crate's list out is then refused, naming what it lacks.
#[tokio::test]
async fn a_crates_migrations_are_added_on_top_and_then_required() {
    let db = TestDatabase::create().await;
    open_default(&db).await.shutdown().await;
    let report = migrate::run(&mut connect(&db).await, &several_crates())
        .await
        .expect("adding the other crates' migrations");
    assert_eq!(report.applied, [2, 3, 4]);
    assert_eq!(report.already_applied, [1, 50]);
    assert_eq!(
        recorded_migrations(&db).await,
        shipped_migrations(&several_crates())
    );

    let message = open_fails_with_migration_error(&db, StoreConfig::default()).await;
    assert!(
        message.contains("migration 2 (engine_registry)"),
        "the message names it: {message}"
    );
}

/// Two crates that claim one number are a bug in the build: refused before any statement.
#[tokio::test]
async fn a_migration_number_listed_twice_is_refused_before_touching_the_database() {
    const CLASHING: &[Migration] = &[Migration {
        version: 3,
        name: "clashing",
        sql: "CREATE TABLE clashing (v int)",
        earlier_checksums: &[],
    }];
    let db = TestDatabase::create().await;
    let mut client = connect(&db).await;
    let clash = several_crates().with(CLASHING);
    match migrate::run(&mut client, &clash).await {
        Err(StoreError::Migration(message)) => assert!(
            message.contains("migration 3")
                && message.contains("api_like_keys")
                && message.contains("clashing"),
            "the message names both: {message}"
        ),
        other => panic!("expected StoreError::Migration, got {other:?}"),
    }
    assert!(
        !table_exists(&client, "tidemark_migrations").await,
        "nothing was run"
    );
    let config = StoreConfig {
        migrations: clash,
        ..StoreConfig::default()
    };
    let message = open_fails_with_migration_error(&db, config).await;
    assert!(message.contains("listed twice"), "{message}");
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
    migrate::run(&mut connect(&db).await, &MigrationSet::store())
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

/// PostgreSQL's own words reach the user: opening a database that does not exist says so,
/// instead of the client library's bare "db error".
#[tokio::test]
async fn opening_a_missing_database_reports_postgres_own_message() {
    let db = TestDatabase::create().await;
    let mut config = db.pg_config();
    config.dbname(format!("{}_missing", db.name()));
    let error = match EventStore::open(config, StoreConfig::default()).await {
        Err(error) => error,
        Ok(_) => panic!("a database that does not exist cannot be opened"),
    };
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "nothing can be written: {error:?}"
    );
    assert!(
        message.contains("does not exist") && message.contains("3D000"),
        "the message carries PostgreSQL's reason and SQLSTATE: {message}"
    );
}

/// A migration whose file only had a comment edited since a database applied it (recorded
/// with the earlier text's checksum, listed in `earlier_checksums`) is still accepted; any
/// other checksum is still refused.
#[tokio::test]
async fn a_database_migrated_with_an_earlier_comment_only_text_still_opens() {
    let db = TestDatabase::create().await;
    open_default(&db).await.shutdown().await;
    let first = MIGRATIONS
        .iter()
        .find(|m| !m.earlier_checksums.is_empty())
        .expect("a migration with an earlier text");
    let earlier = blake3::Hash::from_hex(first.earlier_checksums[0])
        .expect("a hex checksum")
        .as_bytes()
        .to_vec();
    assert!(first.matches(&earlier));
    connect(&db)
        .await
        .execute(
            "UPDATE tidemark_migrations SET checksum = $2 WHERE version = $1",
            &[&first.version, &earlier],
        )
        .await
        .expect("recording the earlier checksum");
    let store = EventStore::open(db.pg_config(), StoreConfig::default())
        .await
        .expect("a database migrated with the earlier text opens");
    store.shutdown().await;
    assert!(!first.matches(&[0u8; 32]), "other checksums are refused");
}
