//! Helpers of the consumer-group tests: stores with the crate's migration, appending
//! numbered events, and a consumer loop.

use serde_json::json;
use std::time::Duration;
use tidemark_consumers::{ConsumerGroups, GroupSettings, Message};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, MigrationSet, NewEvent, StoreConfig,
};
use tidemark_testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A store on `db` with the consumer groups' tables, and its groups handle: one "process".
pub async fn process(db: &TestDatabase) -> ConsumerGroups {
    let config = StoreConfig {
        migrations: MigrationSet::store().with(tidemark_consumers::MIGRATIONS),
        ..StoreConfig::default()
    };
    let store = EventStore::open(db.pg_config(), config)
        .await
        .expect("the store opens on a fresh test database");
    ConsumerGroups::new(store, CancellationToken::new())
}

/// Appends `count` events (`{"stream": .., "n": i}`) to `stream`, one append each so
/// several streams interleave in the log when called concurrently.
pub async fn append(store: &EventStore, stream: &str, event_type: &str, count: usize) {
    for n in 0..count {
        store
            .append(AppendRequest::new(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    event_type,
                    json!({ "stream": stream, "n": n }),
                )],
            ))
            .await
            .expect("append");
    }
}

/// Settings with a short ack timeout and no retry wait, for tests that watch timeouts.
pub fn quick(ack_timeout_ms: u64, max_deliveries: u32) -> GroupSettings {
    GroupSettings {
        max_in_flight: 100,
        ack_timeout: Duration::from_millis(ack_timeout_ms),
        max_deliveries,
        retry_backoff: Duration::ZERO,
        retry_backoff_max: Duration::ZERO,
    }
}

/// Fetches until `want` messages arrived in total (panics at the deadline).
pub async fn fetch_n(
    groups: &ConsumerGroups,
    group: &str,
    consumer: &str,
    want: usize,
) -> Vec<Message> {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{consumer} got {} of {want} messages of {group} in time",
            got.len()
        );
        let batch = groups
            .fetch(
                group,
                consumer,
                (want - got.len()) as u32,
                Duration::from_millis(500),
            )
            .await
            .expect("fetch");
        got.extend(batch);
    }
    got
}
