//! `tidemark serve` on a PostgreSQL that accepts TCP only over TLS: a `DATABASE_URL` with
//! `sslmode=require` and a CA file (`--pg-ca-file`) serves the API, and every connection
//! the server opens (pool, LISTEN, projection coordinator) is encrypted.

use crate::common;

use common::*;
use serde_json::json;
use tidemark_api::DatabaseConfig;
use tidemark_store::TlsOptions;
use tidemark_testkit::tls::{TlsCluster, TLS_DATABASE};

#[tokio::test(flavor = "multi_thread")]
async fn the_server_runs_on_a_tls_only_database() {
    let cluster = TlsCluster::start().await;
    let mut app = spawn_app_at(DatabaseConfig::Url {
        url: cluster.tcp_url("require"),
        tls: TlsOptions {
            ca_file: Some(cluster.ca_file.clone()),
        },
    })
    .await;

    app.append("tls-1", json!([{ "type": "Opened", "data": { "n": 1 } }]))
        .await;
    let body = app
        .graphql(
            r#"{ stream(id: "tls-1") { version events { type data } } }"#,
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["stream"]["events"][0]["type"], "Opened");

    let observer = cluster.observer().await;
    let row = observer
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.backend_type = 'client backend' \
               AND a.pid <> pg_backend_pid()",
            &[&TLS_DATABASE],
        )
        .await
        .expect("pg_stat_activity");
    let (total, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(total >= 2, "the server holds connections: {total}");
    assert_eq!(encrypted, total, "{encrypted} of {total} encrypted");

    app.stop().await;
    cluster.pg.stop().await.expect("stop");
}
