//! The `tidemark` command line as an operator meets it, with real processes:
//!
//! - next to a running server: `tidemark serve` runs the embedded PostgreSQL of a data
//!   directory, and `tidemark keys ...` on the same directory connects to that cluster while
//!   the server runs (no wait, no second cluster, no advice to kill anything), leaves it
//!   running, and starts the cluster itself once the server is gone;
//! - `events tail | head` ends quietly when its reader goes away; `events tail --until-head`
//!   dumps up to the head and ends, filtered by `--stream` or `--category`;
//! - a missing database is named in one sentence, without a backtrace;
//! - `projections parked <unknown>` says the projection is unknown;
//! - a server with authentication on and no key says at start how to create the first one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const TIDEMARK: &str = env!("CARGO_BIN_EXE_tidemark");

/// Generous: the first start of a cluster runs initdb, on a busy two-core machine.
const STARTUP: Duration = Duration::from_secs(120);

/// `tidemark serve`, killed when dropped (a failing test leaves no server behind; its
/// PostgreSQL follows it by its parent-death signal).
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(data_dir: &Path, log: &Path) -> Server {
        Server::start_with(data_dir, log, &[])
    }

    fn start_with(data_dir: &Path, log: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(TIDEMARK)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("TIDEMARK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .expect("tidemark serve starts");
        let stdout = child.stdout.take().expect("piped");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            address: String::new(),
        };
        loop {
            let line = received.recv_timeout(STARTUP).unwrap_or_else(|_| {
                panic!(
                    "the server did not say where it listens within {STARTUP:?}; its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
            if let Some(rest) = line.strip_prefix("Tidemark is listening on http://") {
                server.address = rest[..rest.find('/').expect("a URL")].to_string();
                return server;
            }
        }
    }

    /// POSTs a GraphQL query with `key`; the JSON answer.
    fn graphql(&self, query: &str, key: &str) -> Value {
        self.graphql_with(query, serde_json::json!({}), key)
    }

    fn graphql_with(&self, query: &str, variables: Value, key: &str) -> Value {
        let body = serde_json::json!({ "query": query, "variables": variables }).to_string();
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        let text = self.exchange(&request);
        let json = &text[text.find("\r\n\r\n").expect("headers end") + 4..];
        serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// `/health`'s JSON.
    fn health(&self) -> Value {
        let text = self.exchange(&format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        ));
        serde_json::from_str(&text[text.find("\r\n\r\n").expect("headers end") + 4..])
            .unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    fn exchange(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(&self.address).expect("the server accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a timeout");
        stream.write_all(request.as_bytes()).expect("sent");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("an answer");
        text
    }

    /// Ctrl-C, and the exit it leads to.
    fn stop(mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        kill(pid, Signal::SIGINT).expect("signalled");
        let status = self.child.wait().expect("the server exits");
        assert!(status.success(), "the server exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command on `data_dir`, with a bound on how long it may take.
fn tidemark(data_dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(TIDEMARK)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env("TIDEMARK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    finished
        .recv_timeout(STARTUP)
        .unwrap_or_else(|_| {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!(
                "`tidemark {}` did not finish within {STARTUP:?}",
                args.join(" ")
            )
        })
        .expect("the command ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_command_uses_the_running_servers_cluster_and_starts_its_own_only_when_none_runs() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let data_dir = temp.path().join("pg");
    let server = Server::start(&data_dir, &temp.path().join("server.log"));
    let postgres_before = server.health()["embeddedPostgres"]["pid"].clone();
    assert!(postgres_before.is_u64(), "{}", server.health());

    // While the server runs: the key is created in the server's own database.
    let created = tidemark(
        &data_dir,
        &["keys", "create", "--role", "admin", "--name", "ops"],
    );
    let stderr = text(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(
        stderr.contains("using the embedded PostgreSQL of the running server"),
        "{stderr}"
    );
    assert!(!stderr.contains("kill"), "{stderr}");
    let key = text(&created.stdout).trim().to_string();
    let answer = server.graphql("{ head }", &key);
    assert!(answer["errors"].is_null(), "{answer}");
    assert_eq!(answer["data"]["head"], 0, "{answer}");

    // The command left the server's cluster as it was.
    let health = server.health();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["embeddedPostgres"]["pid"], postgres_before,
        "{health}"
    );
    assert_eq!(health["embeddedPostgres"]["restarts"], 0, "{health}");

    // A second server on the same directory is refused with what to do instead.
    let second = Command::new(TIDEMARK)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = text(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("another --data-dir"), "{stderr}");
    assert!(!stderr.contains("kill"), "{stderr}");
    assert_eq!(server.health()["embeddedPostgres"]["pid"], postgres_before);

    // Once the server is gone, a command starts the cluster itself (and stops it again).
    server.stop();
    let listed = tidemark(&data_dir, &["keys", "list"]);
    let stderr = text(&listed.stderr);
    assert!(listed.status.success(), "{stderr}");
    assert!(
        stderr.contains("no DATABASE_URL: starting an embedded PostgreSQL"),
        "{stderr}"
    );
    assert!(
        text(&listed.stdout).contains("ops"),
        "{}",
        text(&listed.stdout)
    );
    assert!(
        !data_dir.join("tidemark.running").exists(),
        "the command removed the record of the cluster it stopped"
    );
}

/// An admin key made with the command line on the server's data directory.
fn create_admin_key(data_dir: &Path) -> String {
    let created = tidemark(data_dir, &["keys", "create", "--role", "admin"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    text(&created.stdout).trim().to_string()
}

fn append(server: &Server, key: &str, stream: &str) {
    let answer = server.graphql_with(
        "mutation($s: String!) { appendEvents(streamId: $s, events: [{type: \"Seen\", data: {}}]) { lastPosition } }",
        serde_json::json!({ "s": stream }),
        key,
    );
    assert!(answer["errors"].is_null(), "{answer}");
}

#[test]
fn events_tail_into_a_pipe_whose_reader_left_ends_quietly() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let data_dir = temp.path().join("pg");
    let server = Server::start(&data_dir, &temp.path().join("server.log"));
    let key = create_admin_key(&data_dir);
    append(&server, &key, "pipe-1");

    // `events tail --after 0 | head -1`: read one line, then close the pipe.
    let mut tail = Command::new(TIDEMARK)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["events", "tail", "--after", "0"])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut first = String::new();
    BufReader::new(tail.stdout.take().expect("piped"))
        .read_line(&mut first)
        .expect("a line");
    let first: Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(first["streamId"], "pipe-1");

    // The next event is written into the closed pipe.
    append(&server, &key, "pipe-2");
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(tail.wait_with_output());
    });
    let output = finished
        .recv_timeout(STARTUP)
        .expect("the tail ends once its reader is gone")
        .expect("it ran");
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `--until-head` prints up to the head as it was at start, then ends; `--stream` keeps
    // one stream, `--category` one category.
    append(&server, &key, "pipe-1");
    append(&server, &key, "other-1");
    let stream_lines = |args: &[&str]| -> Vec<(String, i64)> {
        let mut full = vec!["events", "tail", "--until-head"];
        full.extend_from_slice(args);
        let output = tidemark(&data_dir, &full);
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
            .lines()
            .map(|line| {
                let event: Value = serde_json::from_str(line).expect("a JSON line");
                (
                    event["streamId"].as_str().expect("a stream id").to_string(),
                    event["position"].as_i64().expect("a position"),
                )
            })
            .collect()
    };
    let streams = |lines: Vec<(String, i64)>| -> Vec<String> {
        lines.into_iter().map(|(stream, _)| stream).collect()
    };
    assert_eq!(
        streams(stream_lines(&[])),
        ["pipe-1", "pipe-2", "pipe-1", "other-1"]
    );
    let pipe_one = stream_lines(&["--stream", "pipe-1"]);
    assert_eq!(streams(pipe_one.clone()), ["pipe-1", "pipe-1"]);
    assert_eq!(streams(stream_lines(&["--category", "other"])), ["other-1"]);
    let after_first = pipe_one[0].1.to_string();
    assert_eq!(
        streams(stream_lines(&[
            "--stream",
            "pipe-1",
            "--after",
            &after_first
        ])),
        ["pipe-1"]
    );
    server.stop();
}

/// A command whose database does not exist says so in one sentence with PostgreSQL's own
/// words, and prints no backtrace even when `RUST_BACKTRACE` asks for one.
#[test]
fn a_missing_database_is_named_in_one_sentence_without_a_backtrace() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let db = runtime.block_on(tidemark_testkit::TestDatabase::create());
    let missing = db.url().replace(db.name(), "tidemark_no_such_database");
    let output = Command::new(TIDEMARK)
        .args(["--database-url", &missing, "projections", "status"])
        .env("RUST_BACKTRACE", "full")
        .stdin(Stdio::null())
        .output()
        .expect("the command runs");
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("database \"tidemark_no_such_database\" does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn parked_events_of_an_unknown_projection_are_an_error_saying_so() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let data_dir = temp.path().join("pg");
    let parked = tidemark(&data_dir, &["projections", "parked", "nope"]);
    let stderr = text(&parked.stderr);
    assert!(!parked.status.success(), "{stderr}");
    assert!(
        stderr.contains("error: no projection named 'nope'"),
        "{stderr}"
    );
    // Without a name, an empty list is the honest answer.
    let all = tidemark(&data_dir, &["projections", "parked"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert_eq!(text(&all.stdout).trim(), "no parked events");
}

#[test]
fn a_server_with_authentication_and_no_key_says_how_to_create_the_first_one() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let log = temp.path().join("server.log");
    let server = Server::start(&temp.path().join("pg"), &log);
    let logged = std::fs::read_to_string(&log).expect("the log");
    let warning = logged
        .lines()
        .find(|line| line.contains("there is no API key"))
        .unwrap_or_else(|| panic!("no warning about keys in:\n{logged}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("tidemark keys create --role admin"),
        "{warning}"
    );
    server.stop();

    // With a key configured there is nothing to warn about.
    let log = temp.path().join("keyed.log");
    let server = Server::start_with(
        &temp.path().join("pg"),
        &log,
        &["--api-keys", "admin:0123456789abcdef0123"],
    );
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert!(!logged.contains("there is no API key"), "{logged}");
    server.stop();
}

/// What a collector received: one HTTP request.
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A collector on a free port: answers every POST with 200 and keeps what came.
fn collector() -> (String, mpsc::Receiver<Received>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("an address").to_string();
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if let Some(value) =
                            line.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer).is_err() {
                        return;
                    }
                    if sender.send(Received { head, body }).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{address}"), received)
}

/// With `--otlp-endpoint`, the spans of a GraphQL request (its operation name and
/// correlation id) and of the append batch that wrote it reach the collector over
/// OTLP/HTTP (protobuf) by the time the server has stopped.
#[test]
fn traces_of_requests_and_append_batches_reach_an_otlp_collector() {
    let (endpoint, received) = collector();
    let temp = tempfile::tempdir().expect("a temporary directory");
    let server = Server::start_with(
        &temp.path().join("pg"),
        &temp.path().join("server.log"),
        &["--insecure-dev", "--otlp-endpoint", &endpoint],
    );
    let body = serde_json::json!({
        "query": "mutation AppendOne { appendEvents(streamId: \"traced-1\", events: [{type: \"Seen\", data: {}}]) { lastPosition } }",
        "operationName": "AppendOne",
    })
    .to_string();
    let answer = server.exchange(&format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         X-Correlation-Id: trace-me-42\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.address,
        body.len()
    ));
    assert!(answer.contains("lastPosition"), "{answer}");
    server.stop();

    let mut exported = Vec::new();
    while let Ok(request) = received.recv_timeout(Duration::from_secs(5)) {
        let head = request.head.to_ascii_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{}", request.head);
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{}",
            request.head
        );
        exported.extend_from_slice(&request.body);
    }
    // Protobuf keeps strings as they are: the span names and attributes can be found.
    let has = |text: &str| exported.windows(text.len()).any(|w| w == text.as_bytes());
    for expected in [
        "graphql",
        "AppendOne",
        "trace-me-42",
        "append_batch",
        "tidemark",
    ] {
        assert!(has(expected), "no {expected:?} in the exported spans");
    }
}
