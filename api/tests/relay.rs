//! `tidemark relay` as an operator runs it, with real processes: the relay process is killed
//! with SIGKILL while it publishes (events keep being appended), a new one is started, and a
//! consumer of the JetStream stream reads every event of the log exactly once and in log
//! order — the events the dead process published but had not checkpointed are published
//! again and dropped by JetStream's duplicate window. Against a real `nats-server -js` the
//! test starts on a free port (`tidemark_testkit::nats`; skipped when none is installed).
//! `tidemark relay --status` then shows it caught up, and the process that relays.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreConfig};
use tidemark_testkit::nats::{read_stream, NatsServer};
use tidemark_testkit::{connect, read_all, wait_until, TestDatabase};

const TIDEMARK: &str = env!("CARGO_BIN_EXE_tidemark");

/// Generous: a debug build on a busy two-core machine.
const DEADLINE: Duration = Duration::from_secs(90);

const STREAM: &str = "RELAYED";

/// A `tidemark relay` (or `serve --relay-nats-url`) process, killed when dropped; its output
/// is kept for a failure.
struct RelayProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl RelayProcess {
    fn start(db: &TestDatabase, nats: &NatsServer) -> RelayProcess {
        Self::spawn(
            &[
                "relay",
                "--database-url",
                &db.url(),
                "--nats-url",
                &nats.url(),
                "--stream",
                STREAM,
                "--subject-prefix",
                "bank",
                "--batch-size",
                "50",
                "--lease-ttl-ms",
                "1500",
            ],
            tidemark_api::cli::relay::RELAYING_LOG,
        )
    }

    /// `tidemark serve --relay-nats-url`: a server that also relays.
    fn serve(db: &TestDatabase, nats: &NatsServer) -> RelayProcess {
        Self::spawn(
            &[
                "serve",
                "--database-url",
                &db.url(),
                "--listen",
                "127.0.0.1:0",
                "--insecure-dev",
                "--lease-ttl-ms",
                "1500",
                "--relay-nats-url",
                &nats.url(),
                "--relay-stream",
                STREAM,
                "--relay-subject-prefix",
                "bank",
            ],
            "Tidemark is listening",
        )
    }

    /// Starts `tidemark <args>` and waits until it prints a line starting with `ready`.
    fn spawn(args: &[&str], ready_line: &'static str) -> RelayProcess {
        let mut child = Command::new(TIDEMARK)
            .args(args)
            .env("TIDEMARK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tidemark relay starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, started) = mpsc::sync_channel(1);
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with(ready_line) {
                    let _ = ready.try_send(());
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let process = RelayProcess { child, log };
        if started.recv_timeout(DEADLINE).is_err() {
            panic!(
                "tidemark {} did not start within {DEADLINE:?}; its output:\n{}",
                args[0],
                process.output()
            );
        }
        process
    }

    fn output(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no batch is finished, no lease given back.
    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("the relay exits");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends to many streams until told to stop; returns how many events it wrote.
async fn keep_appending(store: EventStore, stop: Arc<AtomicBool>) -> usize {
    let mut written = 0;
    while !stop.load(Ordering::SeqCst) {
        let stream = format!("account-{}", written % 29);
        let events = (0..5)
            .map(|k| NewEvent::new("MoneyDeposited", json!({ "n": written + k })))
            .collect();
        store
            .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
            .await
            .expect("append");
        written += 5;
    }
    written
}

/// The relay's checkpoint, read over SQL as an operator would.
async fn relay_checkpoint(db: &TestDatabase) -> i64 {
    connect(db)
        .await
        .query_opt(
            "SELECT max(position) FROM projection_checkpoints WHERE projection = 'relay'",
            &[],
        )
        .await
        .expect("the checkpoint query")
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_mid_stream_a_restarted_relay_leaves_every_event_once_in_order() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: tidemark_api::all_migrations(),
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens");
    let stop = Arc::new(AtomicBool::new(false));
    let appender = tokio::spawn(keep_appending(store.clone(), stop.clone()));

    let first = RelayProcess::start(&db, &nats);
    // Mid-stream: it has published a good part of the log and events keep coming.
    wait_until(
        "the first relay checkpoints past 500 events",
        DEADLINE,
        || async { relay_checkpoint(&db).await >= 500 },
    )
    .await;
    first.kill_9();
    let at_kill = relay_checkpoint(&db).await;

    let second = RelayProcess::start(&db, &nats);
    wait_until(
        "the second relay moves the checkpoint on",
        DEADLINE,
        || async { relay_checkpoint(&db).await > at_kill + 200 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    appender.await.expect("the appender");
    let head = store.head_position().await.expect("head");
    wait_until("the second relay reaches the head", DEADLINE, || async {
        relay_checkpoint(&db).await >= head
    })
    .await;

    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    let relayed: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            let header = |name: &str| m.headers.get(name).cloned().unwrap_or_default();
            (header("Nats-Msg-Id"), header("Tidemark-Position"))
        })
        .collect();
    let expected: Vec<(String, String)> = log
        .iter()
        .map(|e| (e.event_id.to_string(), e.position.to_string()))
        .collect();
    assert_eq!(
        relayed.len(),
        expected.len(),
        "the stream holds {} messages for {} events; the second relay's output:\n{}",
        relayed.len(),
        expected.len(),
        second.output()
    );
    assert_eq!(relayed, expected, "the stream is not the log in order");

    // An operator's view: caught up, and one live process relaying.
    let status = Command::new(TIDEMARK)
        .args(["relay", "--status", "--database-url", &db.url()])
        .env("TIDEMARK_LOG", "warn")
        .output()
        .expect("tidemark relay --status runs");
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{printed}");
    assert!(
        printed.contains(&format!("checkpoint {head}, lag 0 events")),
        "{printed}"
    );
    assert!(printed.contains("(relaying)"), "{printed}");
    drop(second);
    store.shutdown().await;
}

/// `tidemark relay --status`'s output.
fn relay_status(db: &TestDatabase) -> String {
    let status = Command::new(TIDEMARK)
        .args(["relay", "--status", "--database-url", &db.url()])
        .env("TIDEMARK_LOG", "warn")
        .output()
        .expect("tidemark relay --status runs");
    let printed = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{printed}");
    printed
}

/// Appends `count` events over a few streams.
async fn append(store: &EventStore, count: usize) {
    for i in 0..count / 5 {
        let events = (0..5)
            .map(|k| NewEvent::new("MoneyDeposited", json!({ "n": i * 5 + k })))
            .collect();
        store
            .append(AppendRequest::new(
                format!("account-{}", i % 7),
                ExpectedVersion::Any,
                events,
            ))
            .await
            .expect("append");
    }
}

/// `tidemark serve --relay-nats-url` relays under the relay's lease: beside a `tidemark
/// relay` process, one of the two publishes and the other waits; when the one publishing is
/// killed, the other takes over, and the stream is still the log, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_relay_nats_url_shares_the_relay_lease_with_relay_processes() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let db = TestDatabase::create().await;
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: tidemark_api::all_migrations(),
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens");
    append(&store, 300).await;

    let server = RelayProcess::serve(&db, &nats);
    let relay = RelayProcess::start(&db, &nats);
    let head = store.head_position().await.expect("head");
    wait_until("the log is relayed", DEADLINE, || async {
        relay_checkpoint(&db).await >= head
    })
    .await;
    let status = relay_status(&db);
    assert_eq!(
        (
            status.matches("(relaying)").count(),
            status.matches("(standby)").count()
        ),
        (1, 1),
        "one process relays, the other waits: {status}"
    );

    // The one relaying dies; the other takes over.
    let (relaying, other) = if status.contains(&format!(":{} (relaying)", server.pid())) {
        (server, relay)
    } else {
        (relay, server)
    };
    relaying.kill_9();
    append(&store, 200).await;
    let head = store.head_position().await.expect("head");
    wait_until("the other process relays the rest", DEADLINE, || async {
        relay_checkpoint(&db).await >= head
    })
    .await;
    let status = relay_status(&db);
    assert!(
        status.contains(&format!(":{} (relaying)", other.pid())),
        "{status}"
    );

    let log = read_all(&store).await;
    let messages = read_stream(&nats.url(), STREAM, log.len() as u64, DEADLINE).await;
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").cloned().unwrap_or_default())
        .collect();
    let expected: Vec<String> = log.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(
        ids, expected,
        "the stream is not the log, once and in order"
    );
    drop(other);
    store.shutdown().await;
}
