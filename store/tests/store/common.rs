//! Helpers shared by the store's integration tests: opening stores on a test database, event
//! builders, whole-log reads that check their paging, a deadline for waits, and a lock on
//! the store head that stalls the append writer so tests can shape its batches. Raw
//! connections and polling come from `tidemark_testkit`.

use serde_json::json;
use std::future::Future;
use std::time::Duration;
use tidemark_store::{
    AppendOutcome, AppendRequest, Direction, EventStore, ExpectedVersion, LogFilter, NewEvent,
    Position, RecordedEvent, StoreConfig,
};
use tidemark_testkit::TestDatabase;
pub use tidemark_testkit::{connect, wait_until};

/// How long any test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Opens an [`EventStore`] (migrating the database) on `db`.
pub async fn open_store(db: &TestDatabase, config: StoreConfig) -> EventStore {
    EventStore::open(db.pg_config(), config)
        .await
        .expect("the store opens on a fresh test database")
}

/// Opens an [`EventStore`] with the default configuration.
pub async fn open_default(db: &TestDatabase) -> EventStore {
    open_store(db, StoreConfig::default()).await
}

/// An event of type `event_type` whose payload is `{"n": n}`.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, json!({ "n": n }))
}

/// An event with a payload unique to this process run (so its derived id is unique too).
pub fn unique_event(event_type: &str) -> NewEvent {
    NewEvent::new(
        event_type,
        json!({ "nonce": uuid::Uuid::new_v4().to_string() }),
    )
}

/// An append request of `events` to `stream` with `expected`.
pub fn request(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(stream, expected, events)
}

/// Appends and insists it succeeds.
pub async fn append_ok(
    store: &EventStore,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendOutcome {
    store
        .append(request(stream, expected, events))
        .await
        .unwrap_or_else(|e| panic!("appending to {stream} with {expected} must succeed: {e}"))
}

/// The whole log, read in pages of 500.
pub async fn read_all(store: &EventStore) -> Vec<RecordedEvent> {
    read_all_filtered(store, &LogFilter::all(), 500).await
}

/// Every event passing `filter`, read in pages of `page`.
pub async fn read_all_filtered(
    store: &EventStore,
    filter: &LogFilter,
    page: usize,
) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after: Position = 0;
    loop {
        let batch = store
            .read_log(after, filter, page)
            .await
            .expect("reading the log");
        assert!(
            batch.len() <= page,
            "a page holds at most its limit of events"
        );
        let Some(last) = batch.last() else { break };
        after = last.position;
        let short = batch.len() < page;
        all.extend(batch);
        if short {
            break;
        }
    }
    all
}

/// A whole stream, read forwards in pages of 500.
pub async fn read_stream_fully(store: &EventStore, stream: &str) -> Vec<RecordedEvent> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = all.last().map_or(0, |e| e.stream_version + 1);
        let page = store
            .read_stream(stream, Some(from), Direction::Forward, 500)
            .await
            .expect("reading a stream");
        let short = page.len() < 500;
        all.extend(page);
        if short {
            return all;
        }
    }
}

/// Asserts `events` are exactly positions `1..=events.len()`, in order.
pub fn assert_dense_from_one(events: &[RecordedEvent]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event.position,
            index as Position + 1,
            "positions must be dense from 1 and in order (event {index} is {event:?})"
        );
    }
}

/// Awaits `future` for at most [`DEADLINE`], panicking with `what` otherwise.
pub async fn within_deadline<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?}: {what}"))
}

/// A transaction on a raw connection holding the store head's row lock, which every append
/// transaction needs first. While it is held the append writer stalls in its current batch
/// and new appends pile up in the queue; releasing it lets the writer take them all at once.
pub struct HeadLock {
    holder: tokio_postgres::Client,
    observer: tokio_postgres::Client,
}

impl HeadLock {
    pub async fn acquire(db: &TestDatabase) -> HeadLock {
        let holder = connect(db).await;
        holder
            .batch_execute("BEGIN; SELECT position FROM store_head FOR UPDATE;")
            .await
            .expect("taking the store head lock from a raw connection");
        // pg_stat_activity is snapshotted per transaction, so observe from another session.
        let observer = connect(db).await;
        HeadLock { holder, observer }
    }

    /// Sessions of this database currently waiting for a lock (our writers, while we hold it).
    pub async fn waiters(&self) -> i64 {
        self.observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("reading pg_stat_activity")
            .get(0)
    }

    /// Waits until `n` sessions wait for a lock: the writers are stalled inside a batch.
    pub async fn wait_for_waiters(&self, n: i64) {
        wait_until(
            &format!("{n} append writer(s) wait for the head lock"),
            DEADLINE,
            || async { self.waiters().await >= n },
        )
        .await;
    }

    /// Ends the blocking transaction (it changed nothing), letting the writers proceed.
    pub async fn release(self) {
        self.holder
            .batch_execute("ROLLBACK")
            .await
            .expect("releasing the store head lock");
    }
}
