//! Consumer groups end to end (`docs/consumer-groups.md`): competing consumers across two
//! server processes (one consumer dies mid-batch), a server killed with SIGKILL, the Python
//! consumer of the docs, and the API's roles, errors, parked messages and metrics.
//!
//! The multi-process tests run the server binary (`tidemark-e2e-server`, the `tidemark`
//! entry point) as separate OS processes on one database.

use crate::common::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_testkit::TestDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A `tidemark serve` process on a test database (`--insecure-dev`: every caller is admin).
struct ServerProcess {
    child: tokio::process::Child,
    address: String,
    client: reqwest::Client,
}

impl ServerProcess {
    async fn start(db: &TestDatabase) -> ServerProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark-e2e-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure-dev"])
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .env_remove("TIDEMARK_LISTEN")
            .env_remove("TIDEMARK_API_KEYS")
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
                    let address = rest.split('/').next().unwrap_or_default().to_owned();
                    return address;
                }
            }
            panic!("the server exited before it listened");
        })
        .await
        .expect("the server listens in time");
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServerProcess {
            child,
            address: format!("http://{address}"),
            client: reqwest::Client::new(),
        }
    }

    async fn graphql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("the server answers");
        response.json().await.expect("a JSON body")
    }

    async fn data(&self, query: &str, variables: Value) -> Value {
        let body = self.graphql(query, variables).await;
        assert_no_errors(&body);
        body["data"].clone()
    }

    /// SIGKILL: the process dies at once, whatever it was doing.
    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// A delivered message as a consumer sees it.
#[derive(Debug, Clone)]
struct Delivery {
    position: i64,
    count: i64,
    deadline: DateTime<Utc>,
}

const FETCH: &str = "mutation($g: String!, $c: String!, $m: Int!, $w: Int64!) {
  fetch(group: $g, consumer: $c, max: $m, waitMs: $w) {
    position deliveryCount deadline } }";
const ACK: &str = "mutation($g: String!, $c: String!, $p: [Int64!]!) {
  ack(group: $g, consumer: $c, positions: $p) { done stale } }";
const STATUS: &str = "query($g: String!) { consumerGroup(name: $g) {
  lagEvents lagSeconds inFlight waiting parked ackedThrough frontier
  deliveredTotal redeliveredTotal ackedTotal skippedTotal parkedTotal activeConsumer } }";

async fn fetch(
    server: &ServerProcess,
    group: &str,
    consumer: &str,
    max: i64,
    wait_ms: i64,
) -> Vec<Delivery> {
    let data = server
        .data(
            FETCH,
            json!({ "g": group, "c": consumer, "m": max, "w": wait_ms }),
        )
        .await;
    data["fetch"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| Delivery {
            position: m["position"].as_i64().expect("position"),
            count: m["deliveryCount"].as_i64().expect("deliveryCount"),
            deadline: m["deadline"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .expect("deadline"),
        })
        .collect()
}

/// Acks; returns (done, stale).
async fn ack(
    server: &ServerProcess,
    group: &str,
    consumer: &str,
    positions: &[i64],
) -> (Vec<i64>, Vec<i64>) {
    let data = server
        .data(ACK, json!({ "g": group, "c": consumer, "p": positions }))
        .await;
    let list = |v: &Value| -> Vec<i64> {
        v.as_array()
            .expect("a list")
            .iter()
            .map(|p| p.as_i64().expect("a position"))
            .collect()
    };
    (list(&data["ack"]["done"]), list(&data["ack"]["stale"]))
}

async fn create_group(server: &ServerProcess, name: &str, ack_timeout_ms: i64, max_in_flight: i64) {
    server
        .data(
            "mutation($n: String!, $t: Int64!, $m: Int!) {
               createConsumerGroup(name: $n, categories: [\"order\"], ackTimeoutMs: $t,
                                   maxInFlight: $m, maxDeliveries: 10) { name } }",
            json!({ "n": name, "t": ack_timeout_ms, "m": max_in_flight }),
        )
        .await;
}

/// Appends `per_stream` events to each of `streams` streams of category `category`.
async fn append_events(server: &ServerProcess, category: &str, streams: usize, per_stream: usize) {
    for s in 0..streams {
        let events: Vec<Value> = (0..per_stream)
            .map(|n| json!({ "type": "OrderPlaced", "data": { "s": s, "n": n, "nonce": uuid::Uuid::new_v4().to_string() } }))
            .collect();
        server
            .data(
                "mutation($s: String!, $e: [EventInput!]!) { appendEvents(streamId: $s, events: $e) { lastPosition } }",
                json!({ "s": format!("{category}-{s}"), "e": events }),
            )
            .await;
    }
}

/// What the survivors of the first test saw: who holds which message until when, and who
/// acked what.
#[derive(Default)]
struct Ledger {
    held: HashMap<i64, (String, DateTime<Utc>)>,
    acked: BTreeMap<i64, String>,
    redelivered: BTreeMap<i64, i64>,
    acks_via: BTreeSet<usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_consumers_across_two_server_processes_and_a_dead_consumers_batch_goes_to_another(
) {
    let db = TestDatabase::create().await;
    let servers = Arc::new([
        ServerProcess::start(&db).await,
        ServerProcess::start(&db).await,
    ]);
    let ack_timeout = chrono::Duration::milliseconds(1_000);
    create_group(&servers[0], "work", ack_timeout.num_milliseconds(), 10).await;
    append_events(&servers[0], "order", 8, 12).await;
    append_events(&servers[0], "audit", 2, 5).await;
    let total = 8 * 12;

    // A consumer takes a batch and dies before settling it.
    let doomed = fetch(&servers[1], "work", "doomed", 10, 5_000).await;
    assert_eq!(doomed.len(), 10, "{doomed:?}");
    let doomed_positions: Vec<i64> = doomed.iter().map(|d| d.position).collect();

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..4 {
        let (servers, ledger) = (servers.clone(), ledger.clone());
        consumers.push(tokio::spawn(async move {
            let me = format!("survivor-{c}");
            let server = &servers[c % 2];
            let give_up = tokio::time::Instant::now() + WAIT * 3;
            while ledger.lock().unwrap().acked.len() < total {
                assert!(tokio::time::Instant::now() < give_up, "every event acked in time");
                let batch = fetch(server, "work", &me, 5, 500).await;
                {
                    let mut l = ledger.lock().unwrap();
                    for d in &batch {
                        // Never to two consumers at once: a message held by another may only
                        // come again after that delivery's deadline.
                        if let Some((holder, deadline)) = l.held.get(&d.position) {
                            assert!(
                                d.deadline - ack_timeout >= *deadline,
                                "position {} handed to {me} while {holder} held it until {deadline}",
                                d.position
                            );
                        }
                        l.held.insert(d.position, (me.clone(), d.deadline));
                        if d.count > 1 {
                            l.redelivered.insert(d.position, d.count);
                        }
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let positions: Vec<i64> = batch.iter().map(|d| d.position).collect();
                let (done, _stale) = ack(server, "work", &me, &positions).await;
                let mut l = ledger.lock().unwrap();
                l.acks_via.insert(c % 2);
                for p in done {
                    l.held.remove(&p);
                    assert!(l.acked.insert(p, me.clone()).is_none(), "position {p} acked twice");
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let order_positions: BTreeSet<i64> = servers[0]
        .data(
            "{ events(first: 200, category: \"order\") { events { position } } }",
            json!({}),
        )
        .await["events"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(order_positions.len(), total);
    {
        let l = ledger.lock().unwrap();
        let acked: BTreeSet<i64> = l.acked.keys().copied().collect();
        assert_eq!(
            acked, order_positions,
            "every selected event acked once, none skipped"
        );
        for p in &doomed_positions {
            assert!(
                l.redelivered.get(p).is_some_and(|count| *count >= 2),
                "the dead consumer's position {p} went to a survivor on a later delivery"
            );
        }
        assert_eq!(
            l.acks_via.len(),
            2,
            "both server processes served consumers"
        );
    }
    // The dead consumer's late ack loses nothing: its messages were settled by others.
    let (done, stale) = ack(&servers[0], "work", "doomed", &doomed_positions).await;
    assert!(done.is_empty());
    assert_eq!(stale, doomed_positions);
    let status = servers[1].data(STATUS, json!({ "g": "work" })).await["consumerGroup"].clone();
    assert_eq!(status["lagEvents"], 0, "{status}");
    assert_eq!(status["inFlight"], 0, "{status}");
    assert!(
        status["redeliveredTotal"].as_i64().unwrap() >= 10,
        "{status}"
    );
    assert_eq!(status["ackedTotal"], total as i64, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_sigkill_redelivers_only_its_in_flight_window_and_loses_nothing() {
    let db = TestDatabase::create().await;
    let first = ServerProcess::start(&db).await;
    // Long enough that a busy machine acks in time (a redelivery of a slow ack would look
    // like one the kill caused); the window comes back after it.
    create_group(&first, "g", 3_000, 100).await;
    append_events(&first, "order", 6, 10).await;

    let mut acked_before = BTreeSet::new();
    while acked_before.len() < 30 {
        let batch = fetch(&first, "g", "c", 10, 2_000).await;
        let positions: Vec<i64> = batch.iter().map(|d| d.position).collect();
        let (done, stale) = ack(&first, "g", "c", &positions).await;
        assert!(stale.is_empty());
        acked_before.extend(done);
    }
    // In flight when the server dies.
    let window: BTreeSet<i64> = fetch(&first, "g", "c", 10, 2_000)
        .await
        .iter()
        .map(|d| d.position)
        .collect();
    assert_eq!(window.len(), 10);
    first.kill9().await;

    let second = ServerProcess::start(&db).await;
    append_events(&second, "order", 2, 10).await;
    let mut after: BTreeMap<i64, i64> = BTreeMap::new();
    let give_up = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the rest consumed in time"
        );
        let batch = fetch(&second, "g", "c2", 20, 500).await;
        let positions: Vec<i64> = batch.iter().map(|d| d.position).collect();
        for d in &batch {
            // The first delivery after the restart is what the kill left behind.
            after.entry(d.position).or_insert(d.count);
        }
        if !positions.is_empty() {
            ack(&second, "g", "c2", &positions).await;
        }
        let status = second.data(STATUS, json!({ "g": "g" })).await["consumerGroup"].clone();
        if status["lagEvents"] == 0 {
            break;
        }
    }
    let delivered_after: BTreeSet<i64> = after.keys().copied().collect();
    assert!(
        delivered_after.is_disjoint(&acked_before),
        "nothing acked before the kill is delivered again"
    );
    let everything: BTreeSet<i64> = acked_before.union(&delivered_after).copied().collect();
    assert_eq!(everything, (1..=80).collect(), "nothing unacked is lost");
    let redelivered: BTreeSet<i64> = after
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(redelivered, window, "only the in-flight window comes again");
    assert!(
        window.iter().all(|p| after[p] == 2),
        "the window's messages come back on their second delivery: {after:?}"
    );
}

/// The fenced `python` block of `docs/consumer-groups.md`, as written there.
fn python_consumer_from_the_docs() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/consumer-groups.md");
    let doc = std::fs::read_to_string(path).expect("reading docs/consumer-groups.md");
    let blocks: Vec<&str> = doc
        .split("```python\n")
        .skip(1)
        .map(|rest| rest.split("\n```").next().expect("a closed block"))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "the doc has one Python block, the consumer"
    );
    blocks[0].to_owned()
}

#[tokio::test]
async fn the_python_consumer_in_the_docs_consumes_every_event_of_its_group() {
    let app = spawn_app().await;
    assert_no_errors(
        &app.graphql(
            "mutation { createConsumerGroup(name: \"mailer\", categories: [\"order\"],
                        strategy: PINNED_BY_STREAM) { name } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await,
    );
    for s in 0..3 {
        let events: Vec<Value> = (0..10)
            .map(|n| json!({ "type": "OrderPlaced", "data": { "order": s, "line": n } }))
            .collect();
        app.append(&format!("order-{s}"), json!(events)).await;
    }
    app.append("audit-1", json!([{ "type": "Audited", "data": {} }]))
        .await;

    let script = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(script.path(), python_consumer_from_the_docs()).expect("writing the script");
    let output = tokio::time::timeout(
        WAIT * 3,
        tokio::process::Command::new("python3")
            .arg(script.path())
            .env("TIDEMARK_URL", &app.address)
            .env("TIDEMARK_API_KEY", APPEND_KEY)
            .env("GROUP", "mailer")
            .env("CONSUMER", "py-1")
            .env("WAIT_MS", "300")
            .env("EXIT_WHEN_IDLE", "2")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the consumer finishes in time")
    .expect("running python3 (Debian's python3)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the consumer failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let processed: Vec<String> = stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            v["eventId"].as_str().expect("eventId").to_owned()
        })
        .collect();
    let expected: Vec<String> = app
        .all_events()
        .await
        .into_iter()
        .filter(|e| e.category() == "order")
        .map(|e| e.event_id.to_string())
        .collect();
    let got: BTreeSet<&String> = processed.iter().collect();
    assert_eq!(got.len(), processed.len(), "each event processed once");
    assert_eq!(
        got,
        expected.iter().collect(),
        "every event of the group, and only those"
    );
    let status = app
        .graphql_data(STATUS, json!({ "g": "mailer" }), Some(READ_KEY))
        .await;
    assert_eq!(status["consumerGroup"]["lagEvents"], 0, "{status}");
    assert_eq!(status["consumerGroup"]["ackedTotal"], 30, "{status}");
}

#[tokio::test]
async fn the_api_guards_groups_by_role_names_its_errors_and_parks_replays_and_reports_them() {
    let app = spawn_app_with(tidemark_api::TidemarkApp::builder().build(), |config| {
        config.metrics_interval = Duration::from_millis(100)
    })
    .await;
    let create = "mutation { createConsumerGroup(name: \"g\", ackTimeoutMs: 60000) {
                    name strategy maxInFlight ackTimeoutMs startAfter } }";
    assert_error(
        &app.graphql(create, json!({}), Some(APPEND_KEY)).await,
        "FORBIDDEN",
    );
    let created = app.graphql_data(create, json!({}), Some(ADMIN_KEY)).await;
    assert_eq!(created["createConsumerGroup"]["strategy"], "ROUND_ROBIN");
    assert_eq!(created["createConsumerGroup"]["ackTimeoutMs"], 60000);
    // The same again is fine; another definition is GROUP_EXISTS.
    app.graphql_data(create, json!({}), Some(ADMIN_KEY)).await;
    let other = "mutation { createConsumerGroup(name: \"g\", strategy: SINGLE_ACTIVE) { name } }";
    assert_error(
        &app.graphql(other, json!({}), Some(ADMIN_KEY)).await,
        "GROUP_EXISTS",
    );
    let bad = "mutation { createConsumerGroup(name: \"no spaces\") { name } }";
    let error = assert_error(
        &app.graphql(bad, json!({}), Some(ADMIN_KEY)).await,
        "BAD_INPUT",
    );
    assert_eq!(error["extensions"]["field"], "name");

    app.append(
        "order-1",
        json!([{ "type": "A", "data": {} }, { "type": "B", "data": {} }]),
    )
    .await;
    let fetch = "mutation($g: String!) { fetch(group: $g, consumer: \"c\", max: 10, waitMs: 2000) {
                   position deliveryCount event { type } } }";
    assert_error(
        &app.graphql(fetch, json!({ "g": "g" }), Some(READ_KEY))
            .await,
        "FORBIDDEN",
    );
    assert_error(
        &app.graphql(fetch, json!({ "g": "nope" }), Some(APPEND_KEY))
            .await,
        "GROUP_NOT_FOUND",
    );
    let got = app
        .graphql_data(fetch, json!({ "g": "g" }), Some(APPEND_KEY))
        .await;
    assert_eq!(got["fetch"].as_array().unwrap().len(), 2, "{got}");
    let nack = app
        .graphql_data(
            "mutation { nack(group: \"g\", consumer: \"c\", positions: [1], action: PARK,
                             reason: \"cannot parse\") { done stale parked } }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    assert_eq!(nack["nack"]["parked"], json!([1]));
    let acked = app
        .graphql_data(
            "mutation { ack(group: \"g\", consumer: \"c\", positions: [\"2\", 3]) { done stale } }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    assert_eq!(acked["ack"], json!({ "done": [2], "stale": [3] }));
    let parked = app
        .graphql_data(
            "{ parkedDeliveries(group: \"g\") { position deliveries reason consumer } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        parked["parkedDeliveries"],
        json!([{ "position": 1, "deliveries": 1, "reason": "cannot parse", "consumer": "c" }])
    );
    let status = app
        .graphql_data(STATUS, json!({ "g": "g" }), Some(READ_KEY))
        .await;
    assert_eq!(status["consumerGroup"]["parked"], 1, "{status}");
    assert_eq!(status["consumerGroup"]["lagEvents"], 0, "{status}");

    // Metrics carry the group's figures.
    eventually("the group's gauges in /metrics", WAIT, || async {
        let (_, text) = app.get("/metrics").await;
        text.lines()
            .any(|l| l.starts_with("tidemark_consumer_group_parked{group=\"g\"} 1"))
            .then_some(())
    })
    .await;

    let replay = "mutation { replayParkedDeliveries(group: \"g\") }";
    assert_error(
        &app.graphql(replay, json!({}), Some(APPEND_KEY)).await,
        "FORBIDDEN",
    );
    let replayed = app.graphql_data(replay, json!({}), Some(ADMIN_KEY)).await;
    assert_eq!(replayed["replayParkedDeliveries"], 1);
    let again = app
        .graphql_data(fetch, json!({ "g": "g" }), Some(APPEND_KEY))
        .await;
    assert_eq!(
        again["fetch"],
        json!([{ "position": 1, "deliveryCount": 1, "event": { "type": "A" } }])
    );
    let deleted = app
        .graphql_data(
            "mutation { deleteConsumerGroup(name: \"g\") }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(deleted["deleteConsumerGroup"], true);
    let listed = app
        .graphql_data("{ consumerGroups { name } }", json!({}), Some(READ_KEY))
        .await;
    assert_eq!(listed["consumerGroups"], json!([]));
}

#[tokio::test]
async fn the_push_form_sends_messages_over_the_websocket_up_to_max_in_flight() {
    let app = spawn_app().await;
    assert_no_errors(
        &app.graphql(
            "mutation { createConsumerGroup(name: \"push\", maxInFlight: 2) { name } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await,
    );
    app.append(
        "order-1",
        json!([{ "type": "A", "data": {} }, { "type": "B", "data": {} }, { "type": "C", "data": {} }]),
    )
    .await;
    let subscription = "subscription { consumerGroupMessages(group: \"push\", consumer: \"ws-1\") {
                          position deliveryCount event { type } } }";
    let mut refused = app.subscribe(subscription, json!({}), Some(READ_KEY)).await;
    let message = refused.next_message().await;
    assert_eq!(
        message["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{message}"
    );

    let mut messages = app
        .subscribe(subscription, json!({}), Some(APPEND_KEY))
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(messages.next().await["consumerGroupMessages"].clone());
    }
    assert_eq!(got[0]["position"], 1);
    assert_eq!(got[1]["position"], 2);
    // Two in flight: the third waits until one is acked.
    let status = app
        .graphql_data(STATUS, json!({ "g": "push" }), Some(READ_KEY))
        .await;
    assert_eq!(status["consumerGroup"]["inFlight"], 2, "{status}");
    assert_eq!(status["consumerGroup"]["waiting"], 1, "{status}");
    let acked = app
        .graphql_data(
            "mutation { ack(group: \"push\", consumer: \"ws-1\", positions: [1, 2]) { done } }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    assert_eq!(acked["ack"]["done"], json!([1, 2]));
    let third = messages.next().await["consumerGroupMessages"].clone();
    assert_eq!(
        third,
        json!({ "position": 3, "deliveryCount": 1, "event": { "type": "C" } })
    );
    messages.close().await;
}
