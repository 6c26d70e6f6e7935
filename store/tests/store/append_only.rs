//! The log is append-only (docs/design.md §2): the database itself refuses UPDATE, DELETE and
//! TRUNCATE on `events`, whoever sends them, and the log is unchanged afterwards.

use crate::common;

use common::{append_ok, connect, event, open_default, read_all};
use tidemark_store::ExpectedVersion;
use tidemark_testkit::TestDatabase;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn the_database_rejects_update_delete_and_truncate_on_events() {
    let db = TestDatabase::create().await;
    let store = open_default(&db).await;
    append_ok(
        &store,
        "acct-1",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0), event("Deposited", 1)],
    )
    .await;
    append_ok(
        &store,
        "acct-2",
        ExpectedVersion::NoStream,
        vec![event("Opened", 0)],
    )
    .await;
    let before = read_all(&store).await;

    // A raw connection as the database owner (a superuser here): the trigger applies anyway.
    let client = connect(&db).await;
    let statements = [
        "UPDATE events SET payload = '{\"n\": 42}'::jsonb WHERE stream_id = 'acct-1'",
        "UPDATE events SET position = position + 100",
        "DELETE FROM events WHERE stream_id = 'acct-2'",
        "DELETE FROM events",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ];
    for statement in statements {
        let error = client
            .batch_execute(statement)
            .await
            .expect_err(&format!("`{statement}` must be refused"));
        let db_error = error
            .as_db_error()
            .unwrap_or_else(|| panic!("`{statement}` failed without a database error: {error}"));
        assert_eq!(
            db_error.code(),
            &SqlState::RESTRICT_VIOLATION,
            "`{statement}` is refused by the append-only trigger: {db_error}"
        );
        assert!(
            db_error.message().contains("append-only"),
            "the message says why: {}",
            db_error.message()
        );
    }

    assert_eq!(read_all(&store).await, before, "the log is unchanged");
    // Appending still works.
    append_ok(
        &store,
        "acct-2",
        ExpectedVersion::Exact(0),
        vec![event("Deposited", 1)],
    )
    .await;
    assert_eq!(read_all(&store).await.len(), before.len() + 1);
}
