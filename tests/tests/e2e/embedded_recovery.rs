//! The server on its own embedded PostgreSQL (no `DATABASE_URL`) survives the death of that
//! PostgreSQL: the postmaster is killed with SIGKILL under load, the server brings it back,
//! appends succeed again, and every acknowledged event is in the log exactly once. When the
//! cluster cannot be brought back, `/health` says so.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_pg_embedded::RestartPolicy;
use uuid::Uuid;

/// Far beyond a restart (crash recovery of a small cluster takes well under a second; a
/// backend busy when its postmaster died gets a few seconds to exit), so that only a server
/// that never recovers fails the test.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

const CLIENTS: usize = 4;

const APPEND: &str = "mutation($s: String!, $e: [EventInput!]!) {
    appendEvents(streamId: $s, events: $e) { events { eventId position duplicate } } }";

/// The postmaster's pid, from the first line of `postmaster.pid` in the data directory.
fn postmaster_pid(data_dir: &Path) -> i32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid on the first line of postmaster.pid")
}

fn kill_9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the postmaster");
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, text) = app.get(path).await;
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{path} answers JSON (status {status}): {text}"));
    (status, body)
}

/// What the load clients share.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    /// Acknowledged appends: event id and the position the server answered.
    acknowledged: Mutex<Vec<(Uuid, i64)>>,
    /// Acknowledgements per client.
    successes: [AtomicU64; CLIENTS],
    /// Answers that were not an acknowledgement (errors, refused connections).
    failures: AtomicU64,
}

/// One client appending to its own stream, one event at a time. A failed append is retried
/// with the same event id (the retry rule for an outcome that may be unknown), so an event
/// whose first attempt was in fact written comes back as a duplicate, not a second copy.
async fn append_until_stopped(
    app_address: String,
    client: reqwest::Client,
    index: usize,
    load: Arc<Load>,
) {
    let mut sequence = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let event_id = Uuid::new_v4();
        let variables = json!({
            "s": format!("load-{index}"),
            "e": [{ "eventId": event_id, "type": "Loaded", "data": { "client": index, "n": sequence } }],
        });
        loop {
            let answer = client
                .post(format!("{app_address}/graphql"))
                .header("authorization", format!("Bearer {APPEND_KEY}"))
                .json(&json!({ "query": APPEND, "variables": variables }))
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let body = match answer {
                Ok(response) => response.json::<Value>().await.ok(),
                Err(_) => None,
            };
            let position = body
                .as_ref()
                .and_then(|body| body["data"]["appendEvents"]["events"][0]["position"].as_i64());
            if let Some(position) = position {
                load.acknowledged
                    .lock()
                    .expect("not poisoned")
                    .push((event_id, position));
                load.successes[index].fetch_add(1, Ordering::Relaxed);
                break;
            }
            load.failures.fetch_add(1, Ordering::Relaxed);
            if load.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sequence += 1;
    }
}

fn successes(load: &Load) -> [u64; CLIENTS] {
    std::array::from_fn(|i| load.successes[i].load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_succeed_again_after_the_embedded_postmaster_is_killed_and_nothing_acknowledged_is_lost(
) {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("pg");
    let mut app = spawn_app_embedded(data_dir.clone(), |_| {}).await;
    let (status, body) = get_json(&app, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddedPostgres"]["state"], "running", "{body}");

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            tokio::spawn(append_until_stopped(
                app.address.clone(),
                app.client.clone(),
                index,
                load.clone(),
            ))
        })
        .collect();
    wait_until(
        "every client's first appends",
        RECOVERY_DEADLINE,
        || async { successes(&load).iter().all(|&n| n >= 5) },
    )
    .await;

    let killed = postmaster_pid(&data_dir);
    kill_9(killed);
    let at_kill = successes(&load);

    // Appends go through again, for every client.
    wait_until(
        "appends to succeed again after the kill",
        RECOVERY_DEADLINE,
        || async {
            successes(&load)
                .iter()
                .zip(at_kill)
                .all(|(&now, before)| now >= before + 10)
        },
    )
    .await;
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a load client does not panic");
    }
    println!(
        "acknowledged {}, failed answers {} (during the outage)",
        load.acknowledged.lock().expect("not poisoned").len(),
        load.failures.load(Ordering::Relaxed)
    );

    // A new postmaster serves, and the server says it restarted one.
    assert_ne!(postmaster_pid(&data_dir), killed);
    wait_until("/ready", RECOVERY_DEADLINE, || async {
        app.get("/ready").await.0 == 200
    })
    .await;
    let (status, body) = get_json(&app, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddedPostgres"]["state"], "running", "{body}");
    assert_eq!(body["embeddedPostgres"]["restarts"], 1, "{body}");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("tidemark_embedded_postgres_restarts_total"),
        "the restart is counted"
    );

    // Every acknowledged event is in the log exactly once, where the server said.
    let mut in_log: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for event in app.all_events().await {
        in_log
            .entry(event.event_id)
            .or_default()
            .push(event.position);
    }
    let acknowledged = load.acknowledged.lock().expect("not poisoned").clone();
    for (event_id, position) in &acknowledged {
        assert_eq!(
            in_log.get(event_id),
            Some(&vec![*position]),
            "acknowledged event {event_id} at {position}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_fails_while_the_embedded_postgres_cannot_be_restarted_and_recovers_after() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("pg");
    let mut app = spawn_app_embedded(data_dir.clone(), |config| {
        config.embedded_restart = RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            unhealthy_after_restarts: 3,
            ..RestartPolicy::default()
        };
    })
    .await;
    app.append("before", json!([{ "type": "E", "data": {} }]))
        .await;

    // Without its configuration file the cluster cannot start again.
    let conf = data_dir.join("postgresql.conf");
    let away = data_dir.join("postgresql.conf.away");
    std::fs::rename(&conf, &away).expect("hide the configuration");
    kill_9(postmaster_pid(&data_dir));

    wait_until("/health to fail", RECOVERY_DEADLINE, || async {
        app.get("/health").await.0 == 503
    })
    .await;
    let (_, health) = get_json(&app, "/health").await;
    assert_eq!(health["status"], "failing", "{health}");
    let reason = health["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("embedded PostgreSQL") && reason.contains("postgresql.conf"),
        "says what is down and why: {reason}"
    );
    let (status, ready) = get_json(&app, "/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"], false, "{ready}");

    std::fs::rename(&away, &conf).expect("restore the configuration");
    wait_until("/health to recover", RECOVERY_DEADLINE, || async {
        app.get("/health").await.0 == 200
    })
    .await;
    wait_until("/ready to recover", RECOVERY_DEADLINE, || async {
        app.get("/ready").await.0 == 200
    })
    .await;
    // Retried with the same id, so a retry cannot add a second copy.
    let after = Uuid::new_v4();
    wait_until("an append to succeed", RECOVERY_DEADLINE, || async {
        let body = app
            .graphql(
                APPEND,
                json!({ "s": "after", "e": [{ "eventId": after, "type": "E", "data": {} }] }),
                Some(APPEND_KEY),
            )
            .await;
        body["errors"].is_null()
    })
    .await;
    let streams: Vec<String> = app
        .all_events()
        .await
        .into_iter()
        .map(|event| event.stream_id)
        .collect();
    assert_eq!(streams, ["before", "after"]);
    app.stop().await;
}
