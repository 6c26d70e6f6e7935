//! TLS to PostgreSQL: a private cluster with `ssl=on`, a certificate no client trusts and a
//! `pg_hba.conf` that refuses unencrypted TCP. `sslmode=require` must then work for every
//! connection the store opens (pool and LISTEN), `sslmode=disable` must be refused, and a CA
//! file must make the client check the server.

use crate::common;

use std::time::Duration;

use common::DEADLINE;
use futures::StreamExt;
use tidemark_store::{
    Direction, EventStore, ExpectedVersion, StoreConfig, SubscribeOptions, TlsOptions,
};
use tidemark_testkit::tls::{TlsCluster, TLS_DATABASE as DATABASE};

#[tokio::test(flavor = "multi_thread")]
async fn require_encrypts_every_store_connection_and_accepts_an_untrusted_certificate() {
    let cluster = TlsCluster::start().await;

    // Plain TCP is refused by this server: what a client without TLS support would get.
    let refused = tidemark_store::tls::connect(
        &cluster.tcp_config("disable"),
        &tidemark_store::PgTls::new(&TlsOptions::default()).expect("connector"),
    )
    .await
    .err()
    .expect("sslmode=disable must be refused by a hostssl-only server");
    let message = tidemark_store::error::describe_postgres_error(&refused);
    assert!(
        message.contains("no encryption"),
        "the refusal says why: {message}"
    );

    // The polling fallback is pushed out of reach: a live event can only arrive through the
    // LISTEN connection.
    let config = StoreConfig {
        poll_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    };
    let store = EventStore::open(cluster.tcp_config("require"), config)
        .await
        .expect("the store opens with sslmode=require");

    let client = store.pool().get().await.expect("a pooled connection");
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(encrypted, "the pooled connection is encrypted");
    drop(client);

    store
        .append(common::request(
            "tls-1",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 1)],
        ))
        .await
        .expect("append over TLS");
    let read = store
        .read_stream("tls-1", None, Direction::Forward, 10)
        .await
        .expect("read over TLS");
    assert_eq!(read.len(), 1);

    // Another writer (as another process would be): its commit reaches this store only
    // through NOTIFY on the LISTEN connection, as polling is an hour away.
    let mut live = Box::pin(store.subscribe(SubscribeOptions {
        after: 1,
        ..SubscribeOptions::default()
    }));
    let other = EventStore::open(cluster.tcp_config("require"), StoreConfig::default())
        .await
        .expect("a second store opens with sslmode=require");
    other
        .append(common::request(
            "tls-2",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 2)],
        ))
        .await
        .expect("append over TLS");
    other.shutdown().await;
    let event = tokio::time::timeout(DEADLINE, live.next())
        .await
        .expect("the LISTEN connection wakes the subscription")
        .expect("the subscription goes on")
        .expect("a live event");
    assert_eq!(event.stream_id, "tls-2");

    // Every connection the store holds (pool and LISTEN) is encrypted.
    let observer = cluster.observer().await;
    let row = observer
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.backend_type = 'client backend' \
               AND a.pid <> pg_backend_pid()",
            &[&DATABASE],
        )
        .await
        .expect("pg_stat_activity");
    let (total, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        total >= 2,
        "the pooled and the LISTEN connection at least: {total}"
    );
    assert_eq!(
        encrypted, total,
        "every store connection is encrypted ({encrypted} of {total})"
    );

    store.shutdown().await;
    cluster.pg.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_makes_the_client_check_the_server_certificate() {
    let cluster = TlsCluster::start().await;

    let trusted = TlsOptions {
        ca_file: Some(cluster.ca_file.clone()),
    };
    let store = EventStore::open(
        cluster.tcp_config("require"),
        StoreConfig {
            tls: trusted,
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the server's certificate chains to the CA file");
    store
        .append(common::request(
            "ca-1",
            ExpectedVersion::NoStream,
            vec![common::event("Opened", 1)],
        ))
        .await
        .expect("append over a checked connection");
    store.shutdown().await;

    let untrusted = tidemark_store::PgTls::new(&TlsOptions {
        ca_file: Some(cluster.other_ca_file.clone()),
    })
    .expect("connector");
    let error = tidemark_store::tls::connect(&cluster.tcp_config("require"), &untrusted)
        .await
        .err()
        .expect("a certificate from another CA must be refused");
    let message = tidemark_store::error::describe_postgres_error(&error);
    assert!(
        message.contains("certificate"),
        "the refusal names the certificate: {message}"
    );

    let missing = tidemark_store::PgTls::new(&TlsOptions {
        ca_file: Some(cluster.ca_file.with_extension("missing")),
    })
    .expect_err("a missing CA file is a configuration error");
    assert!(missing.to_string().contains("CA file"), "{missing}");

    cluster.pg.stop().await.expect("stop");
}
