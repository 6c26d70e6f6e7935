//! Reads from a streaming replica (`--read-database-url`) end to end, on a real hot standby
//! the test starts from `pg_basebackup` of its own primary (`tidemark_testkit::replica`):
//! GraphQL reads, the `events` subscription and a projection's lanes (live and rebuild) read
//! the standby, while appends, checkpoints and the read model are written to the primary. While the standby's
//! replay is paused they are only later: nothing is skipped, nothing arrives out of order,
//! and everything arrives once replay resumes. The lag is on `/metrics`. The server binary
//! takes the flag too.

use crate::common::*;

use async_trait::async_trait;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tidemark_api::TidemarkApp;
use tidemark_projections::{ApplyContext, Grouping, Projection, ProjectionError, RecordedEvent};
use tidemark_testkit::replica::ReplicatedCluster;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Counts applications per stream: an event applied twice or skipped would show.
struct ReplicaCounts;

#[async_trait]
impl Projection for ReplicaCounts {
    fn name(&self) -> &str {
        "replica_counts"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "counts",
            "stream_id text PRIMARY KEY, applied bigint NOT NULL, last bigint NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let sql = format!(
            "INSERT INTO {} AS c VALUES ($1, 1, $2) ON CONFLICT (stream_id)
             DO UPDATE SET applied = c.applied + 1, last = $2",
            ctx.table("counts")
        );
        for event in events {
            ctx.tx
                .execute(&sql, &[&event.stream_id, &event.position])
                .await?;
        }
        Ok(())
    }
}

/// One row per event, its lanes sharing one read of the log (`Grouping::Shuffle`): an event
/// applied twice would break the primary key, one skipped would be missing.
struct ShuffledSeen;

#[async_trait]
impl Projection for ShuffledSeen {
    fn name(&self) -> &str {
        "shuffled_seen"
    }

    fn grouping(&self) -> Grouping {
        Grouping::Shuffle
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table("seen", "position bigint PRIMARY KEY")
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let sql = format!("INSERT INTO {} VALUES ($1)", ctx.table("seen"));
        for event in events {
            ctx.tx.execute(&sql, &[&event.position]).await?;
        }
        Ok(())
    }
}

/// The positions `shuffled_seen` applied, per its read model on the primary.
async fn seen(cluster: &ReplicatedCluster) -> Vec<i64> {
    cluster
        .primary_client()
        .await
        .query(
            "SELECT position FROM rm_shuffled_seen.seen ORDER BY position",
            &[],
        )
        .await
        .expect("reading the read model on the primary")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Events applied, per the read model on the primary.
async fn applied(cluster: &ReplicatedCluster) -> i64 {
    cluster
        .primary_client()
        .await
        .query_one(
            "SELECT coalesce(sum(applied), 0)::bigint FROM rm_replica_counts.counts",
            &[],
        )
        .await
        .expect("reading the read model on the primary")
        .get(0)
}

async fn wait_for(app: &TestApp, position: i64, timeout_ms: i64) -> bool {
    wait_for_projection(app, "replica_counts", position, timeout_ms).await
}

async fn wait_for_projection(app: &TestApp, name: &str, position: i64, timeout_ms: i64) -> bool {
    let data = app
        .graphql_data(
            "query($n: String!, $p: Int64!, $t: Int!) { waitFor(projection: $n, position: $p, timeoutMs: $t) { reached } }",
            json!({ "n": name, "p": position, "t": timeout_ms }),
            Some(READ_KEY),
        )
        .await;
    data["waitFor"]["reached"].as_bool().expect("reached")
}

async fn append_numbered(app: &TestApp, from: i64, count: i64) {
    for n in from..from + count {
        app.append(
            &format!("acct-{}", n % 3),
            json!([{ "type": "Numbered", "data": { "n": n } }]),
        )
        .await;
    }
}

/// The projection's last build (`status`, `eventsDone`).
async fn last_build(app: &TestApp) -> Value {
    app.graphql_data(
        "{ projection(name: \"replica_counts\") { lastBuild { status eventsDone } } }",
        json!({}),
        Some(READ_KEY),
    )
    .await["projection"]["lastBuild"]
        .clone()
}

/// Positions of the `events` query's first page (up to 100).
async fn listed_positions(app: &TestApp) -> Vec<i64> {
    let data = app
        .graphql_data(
            "{ events(first: 100) { events { position } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    positions(&data["events"]["events"])
}

fn positions(list: &Value) -> Vec<i64> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|e| e["position"].as_i64().expect("a position"))
        .collect()
}

/// The value of an unlabeled gauge on `/metrics`, if exported.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

#[tokio::test]
async fn graphql_reads_subscriptions_and_lanes_on_a_lagging_replica_are_later_never_missing() {
    let cluster = ReplicatedCluster::start().await;
    let app = spawn_app_replicated(
        &cluster,
        TidemarkApp::builder()
            .projection(ReplicaCounts)
            .projection(ShuffledSeen)
            .build(),
        |config| config.metrics_interval = Duration::from_millis(100),
    )
    .await;
    let (status, ready) = app.get("/ready").await;
    let ready: Value = serde_json::from_str(&ready).expect("a JSON body");
    assert_eq!(
        (status, &ready["checks"]["readReplica"]),
        (200, &json!(true)),
        "{ready}"
    );
    append_numbered(&app, 0, 10).await;
    assert!(wait_for(&app, 10, 10_000).await);
    assert!(wait_for_projection(&app, "shuffled_seen", 10, 10_000).await);
    let mut subscription = app
        .subscribe(
            "subscription { events { position } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    let mut delivered = Vec::new();
    for _ in 0..10 {
        delivered.push(
            subscription.next().await["events"]["position"]
                .as_i64()
                .expect("a position"),
        );
    }

    cluster.pause_replay().await;
    append_numbered(&app, 10, 10).await;
    // Appends went to the primary; the reads come from the standby, which stopped at 10.
    let head = app
        .graphql_data("{ head }", json!({}), Some(READ_KEY))
        .await;
    assert_eq!(head["head"], 20, "{head}");
    assert_eq!(listed_positions(&app).await, (1..=10).collect::<Vec<_>>());
    let stream = app
        .graphql_data(
            "{ stream(id: \"acct-1\") { version events { position } } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert!(
        positions(&stream["stream"]["events"])
            .iter()
            .all(|p| *p <= 10),
        "{stream}"
    );
    assert_eq!(
        stream["stream"]["version"], 2,
        "the version as the replica has it: {stream}"
    );
    // The lane reads the paused standby too: the read model (on the primary) stays at 10.
    assert!(
        !wait_for(&app, 20, 300).await,
        "the lane read past the replica"
    );
    assert_eq!(applied(&cluster).await, 10);
    // So do the lanes that share one read of the log.
    assert!(!wait_for_projection(&app, "shuffled_seen", 20, 300).await);
    assert_eq!(seen(&cluster).await, (1..=10).collect::<Vec<_>>());
    // A rebuild runs to the primary's head (20); its lane reads the standby, so it must not
    // take the standby's end (10) for that head.
    let started = app
        .graphql_data(
            "mutation { rebuildProjection(name: \"replica_counts\") { kind } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(started["rebuildProjection"]["kind"], "REBUILD");
    let lag = eventually("the replica's lag on /metrics", WAIT, || async {
        let (_, text) = app.get("/metrics").await;
        gauge(&text, "tidemark_replica_lag_events")
            .filter(|lag| *lag == 10.0)
            .map(|_| text)
    })
    .await;
    assert!(
        gauge(&lag, "tidemark_replica_lag_bytes").is_some_and(|bytes| bytes > 0.0),
        "{lag}"
    );
    assert!(
        gauge(&lag, "tidemark_replica_lag_seconds").is_some_and(|s| s >= 0.0),
        "{lag}"
    );
    assert_eq!(
        gauge(&lag, "tidemark_replica_position"),
        Some(10.0),
        "{lag}"
    );
    let build = eventually("the rebuild to be recorded", WAIT, || async {
        Some(last_build(&app).await).filter(|build| !build.is_null())
    })
    .await;
    assert_eq!(
        build["status"], "running",
        "the build waits for the standby: {build}"
    );

    cluster.resume_replay().await;
    for _ in 0..10 {
        delivered.push(
            subscription.next().await["events"]["position"]
                .as_i64()
                .expect("a position"),
        );
    }
    assert_eq!(
        delivered,
        (1..=20).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let build = eventually("the rebuild to finish", WAIT, || async {
        let build = last_build(&app).await;
        (build["status"] != "running").then_some(build)
    })
    .await;
    assert_eq!(build["status"], "done", "{build}");
    assert!(wait_for(&app, 20, 10_000).await);
    assert_eq!(applied(&cluster).await, 20, "each event applied once");
    assert!(wait_for_projection(&app, "shuffled_seen", 20, 10_000).await);
    assert_eq!(seen(&cluster).await, (1..=20).collect::<Vec<_>>());
    wait_until("the listing to show everything", WAIT, || async {
        listed_positions(&app).await == (1..=20).collect::<Vec<_>>()
    })
    .await;
    eventually("no replica lag on /metrics", WAIT, || async {
        let (_, text) = app.get("/metrics").await;
        (gauge(&text, "tidemark_replica_lag_events") == Some(0.0)).then_some(())
    })
    .await;
    subscription.close().await;
    let mut app = app;
    app.stop().await;
    cluster.stop().await;
}

/// `tidemark serve --read-database-url` as its own process (`--insecure-dev`).
async fn start_server_binary(cluster: &ReplicatedCluster) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark-e2e-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-dev",
            "--read-database-url",
        ])
        .arg(cluster.standby_url())
        .env("DATABASE_URL", cluster.primary_url())
        .env("RUST_LOG", "warn")
        .env_remove("TIDEMARK_LISTEN")
        .env_remove("TIDEMARK_API_KEYS")
        .env_remove("TIDEMARK_READ_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the server binary");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let address = tokio::time::timeout(WAIT * 3, async {
        while let Some(line) = lines.next_line().await.expect("reading stdout") {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split('/').next().unwrap_or_default().to_owned();
            }
        }
        panic!("the server exited before it listened");
    })
    .await
    .expect("the server listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{address}"))
}

#[tokio::test]
async fn the_server_binary_reads_from_the_replica_named_by_read_database_url() {
    let cluster = ReplicatedCluster::start().await;
    let (mut server, address) = start_server_binary(&cluster).await;
    let client = reqwest::Client::new();
    let graphql = |query: &'static str| {
        let (client, address) = (client.clone(), address.clone());
        async move {
            let body: Value = client
                .post(format!("{address}/graphql"))
                .json(&json!({ "query": query }))
                .send()
                .await
                .expect("the server answers")
                .json()
                .await
                .expect("a JSON body");
            assert_no_errors(&body);
            body["data"].clone()
        }
    };
    const APPEND: &str = "mutation { appendEvents(streamId: \"bin-1\", events: [{ type: \"E\", data: {} }]) { lastPosition } }";
    const LIST: &str = "{ events(first: 100) { events { position } } }";
    for _ in 0..5 {
        graphql(APPEND).await;
    }
    cluster.wait_for_replay().await;
    assert_eq!(
        positions(&graphql(LIST).await["events"]["events"]),
        [1, 2, 3, 4, 5]
    );

    cluster.pause_replay().await;
    for _ in 0..3 {
        graphql(APPEND).await;
    }
    assert_eq!(
        graphql("{ head }").await["head"],
        8,
        "appends go to the primary"
    );
    assert_eq!(
        positions(&graphql(LIST).await["events"]["events"]),
        [1, 2, 3, 4, 5],
        "reads come from the paused standby"
    );
    eventually("the replica's lag on /metrics", WAIT, || async {
        let text = client
            .get(format!("{address}/metrics"))
            .send()
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("a body");
        (gauge(&text, "tidemark_replica_lag_events") == Some(3.0)).then_some(())
    })
    .await;

    cluster.resume_replay().await;
    cluster.wait_for_replay().await;
    assert_eq!(
        positions(&graphql(LIST).await["events"]["events"]),
        (1..=8).collect::<Vec<_>>()
    );
    server.start_kill().expect("stopping the server");
    let _ = server.wait().await;
    cluster.stop().await;
}
