//! The store on an embedded PostgreSQL: what it committed is there after the cluster stops
//! and starts again on the same data directory.

use serde_json::json;
use tidemark_pg_embedded::{EmbeddedOptions, EmbeddedPostgres};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, LogFilter, NewEvent, StoreConfig,
};

#[tokio::test(flavor = "multi_thread")]
async fn events_appended_through_the_store_are_there_after_the_cluster_restarts() {
    let temp = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedOptions {
        data_dir: temp.path().join("pg"),
        fsync: false,
        ..Default::default()
    };
    let pg = EmbeddedPostgres::start(options.clone())
        .await
        .expect("first start");
    pg.ensure_database("tidemark").await.expect("database");
    let store = EventStore::open(pg.connection_config("tidemark"), StoreConfig::default())
        .await
        .expect("open the store");
    let appended = store
        .append(AppendRequest::new(
            "account-1",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("Opened", json!({"owner": "ann"})),
                NewEvent::new("Deposited", json!({"amount": 5})),
            ],
        ))
        .await
        .expect("append");
    store.shutdown().await;
    drop(store);
    pg.stop().await.expect("stop");

    let pg = EmbeddedPostgres::start(options)
        .await
        .expect("restart on the same data dir");
    let store = EventStore::open(pg.connection_config("tidemark"), StoreConfig::default())
        .await
        .expect("reopen the store");
    let events = store
        .read_log(0, &LogFilter::all(), 10)
        .await
        .expect("read");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.position, e.event_id))
            .collect::<Vec<_>>(),
        appended
            .events
            .iter()
            .map(|e| (e.position, e.event_id))
            .collect::<Vec<_>>()
    );
    store.shutdown().await;
    drop(store);
    pg.stop().await.expect("stop again");
}
