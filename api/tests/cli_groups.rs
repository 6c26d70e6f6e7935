//! `tidemark groups ...` as an operator meets it: the real binary on a test database
//! (`DATABASE_URL`), creating, listing, inspecting, replaying parked messages and deleting.

use serde_json::json;
use std::time::Duration;
use tidemark_consumers::{ConsumerGroups, NackAction};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreConfig};
use tidemark_testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

const TIDEMARK: &str = env!("CARGO_BIN_EXE_tidemark");

/// Runs `tidemark groups <args>` on `db`: (success, stdout, stderr).
async fn groups(db: &TestDatabase, args: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(TIDEMARK)
            .arg("groups")
            .args(args)
            .env("DATABASE_URL", db.url())
            .env("TIDEMARK_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the command finishes in time")
    .expect("the command runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn groups_are_created_listed_inspected_replayed_and_deleted_from_the_command_line() {
    let db = TestDatabase::create().await;
    let create = [
        "create",
        "mailer",
        "--category",
        "order",
        "--strategy",
        "pinned-by-stream",
        "--ack-timeout-ms",
        "5000",
    ];
    let (ok, out, err) = groups(&db, &create).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("created consumer group 'mailer' (pinned_by_stream)"),
        "{out}"
    );
    let (ok, out, _) = groups(&db, &create).await;
    assert!(
        ok && out.contains("already had consumer group 'mailer'"),
        "{out}"
    );
    let (ok, _, err) = groups(&db, &["create", "mailer", "--strategy", "single-active"]).await;
    assert!(
        !ok && err.contains("already exists with different settings"),
        "{err}"
    );

    // A message parked by a consumer, through the library on the same database.
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: tidemark_api::all_migrations(),
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens");
    store
        .append(AppendRequest::new(
            "order-7",
            ExpectedVersion::Any,
            vec![NewEvent::new("OrderPlaced", json!({ "n": 1 }))],
        ))
        .await
        .expect("append");
    let consumers = ConsumerGroups::new(store.clone(), CancellationToken::new());
    let got = consumers
        .fetch("mailer", "c1", 10, Duration::from_secs(5))
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1);
    consumers
        .nack(
            "mailer",
            "c1",
            &[1],
            NackAction::Park,
            Some("no such address"),
        )
        .await
        .expect("nack");

    let (ok, out, _) = groups(&db, &["list"]).await;
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("mailer"))
        .expect("a line for mailer");
    assert!(line.contains("pinned_by_stream"), "{line}");
    let (ok, out, _) = groups(&db, &["status", "mailer"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("categories:      order"), "{out}");
    assert!(out.contains("parked:          1"), "{out}");
    let (ok, out, _) = groups(&db, &["parked", "mailer"]).await;
    assert!(ok && out.contains("position 1 stream order-7"), "{out}");
    assert!(out.contains("no such address"), "{out}");
    let (ok, out, _) = groups(&db, &["parked", "mailer", "--replay"]).await;
    assert!(ok && out.contains("replayed 1 parked message(s)"), "{out}");
    let (ok, out, _) = groups(&db, &["delete", "mailer"]).await;
    assert!(
        ok && out.contains("deleted consumer group 'mailer'"),
        "{out}"
    );
    let (ok, _, err) = groups(&db, &["status", "mailer"]).await;
    assert!(
        !ok && err.contains("consumer group 'mailer' does not exist"),
        "{err}"
    );
    store.shutdown().await;
}
