//! A real NATS server with JetStream for tests: [`NatsServer::start`] runs the installed
//! `nats-server -js` on a free port of 127.0.0.1 with a store directory of its own, and kills
//! it when dropped. [`NatsServer::stop`] and [`NatsServer::restart`] take it down and bring
//! it back on the same port and store (the messages it stored survive), for tests of what a
//! client does while the broker is away.
//!
//! The binary is `TIDEMARK_NATS_SERVER` if set, else Debian's (`/usr/sbin/nats-server`,
//! package `nats-server`, which `.ci/run` installs), else `nats-server` on `PATH`. When there
//! is none, [`NatsServer::start`] prints why and returns `None`, and the test skips.
//!
//! ```ignore
//! let Some(nats) = NatsServer::start().await else { return };
//! let client = async_nats::connect(nats.url()).await?;
//! ```

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names the `nats-server` executable to use instead of the default.
pub const NATS_SERVER_ENV: &str = "TIDEMARK_NATS_SERVER";

/// Where Debian's `nats-server` package puts it.
const DEFAULT_NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long the server may take to say it is ready (JetStream recovers its store first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `nats-server` logs once it accepts clients.
const READY_LOG: &str = "Server is ready";

/// How many lines of its log are kept to explain a failure.
const LOG_LINES: usize = 60;

/// The `nats-server` executable, or why there is none.
pub fn nats_server_path() -> Result<PathBuf, String> {
    if let Some(configured) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(configured);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{NATS_SERVER_ENV} names {}, which is not a file",
                path.display()
            ))
        };
    }
    if Path::new(DEFAULT_NATS_SERVER).is_file() {
        return Ok(PathBuf::from(DEFAULT_NATS_SERVER));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "nats-server is not installed (install Debian's nats-server package, as .ci/run does, or set {NATS_SERVER_ENV})"
            )
        })
}

/// A running `nats-server -js`, killed when dropped.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl NatsServer {
    /// Starts a server on a free port, or prints why it cannot and returns `None` (the
    /// test then returns early: skipped). Panics if an installed server fails to start.
    pub async fn start() -> Option<NatsServer> {
        let binary = match nats_server_path() {
            Ok(binary) => binary,
            Err(why) => {
                eprintln!("SKIPPED: this test needs a NATS server with JetStream: {why}");
                return None;
            }
        };
        let port = free_port();
        let store = tempfile::Builder::new()
            .prefix("tidemark-nats-")
            .tempdir()
            .expect("a temporary directory for the JetStream store");
        let mut server = NatsServer {
            binary,
            port,
            store,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        server.launch().await;
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far (the last lines), to explain a failure.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the server (SIGKILL: clients see the connection drop) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    async fn launch(&mut self) {
        let mut child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        let stderr = child.stderr.take().expect("piped");
        self.child = Some(child);
        // A log per life of the server: its readiness is this life's.
        self.log = Arc::new(Mutex::new(Vec::new()));
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.push(line);
                if log.len() > LOG_LINES {
                    log.remove(0);
                }
            }
        });
        let started = Instant::now();
        loop {
            if self.is_ready() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nats-server exited ({status}) before it was ready; its log:\n{}",
                        self.log().join("\n")
                    );
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "nats-server was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_ready(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|line| line.contains(READY_LOG))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// One message of a JetStream stream, as a consumer receives it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its sequence in the stream.
    pub sequence: u64,
    pub subject: String,
    /// Each header's first value.
    pub headers: std::collections::BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

/// Every message of `stream` on the server at `url`, in stream order, read with an ordered
/// consumer (as a consumer of the relay would). Waits until the stream holds at least
/// `at_least` messages (panicking after `within`), then reads all it holds.
pub async fn read_stream(
    url: &str,
    stream: &str,
    at_least: u64,
    within: Duration,
) -> Vec<StoredMessage> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;

    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let context = async_nats::jetstream::new(client);
    let started = Instant::now();
    let (handle, count) = loop {
        let mut handle = context
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
        let count = handle
            .info()
            .await
            .unwrap_or_else(|e| panic!("stream {stream} info: {e}"))
            .state
            .messages;
        if count >= at_least {
            break (handle, count);
        }
        if started.elapsed() > within {
            panic!("stream {stream} held {count} messages after {within:?}, not {at_least}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let consumer = handle
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap_or_else(|e| panic!("an ordered consumer of {stream}: {e}"));
    let mut messages = consumer
        .messages()
        .await
        .unwrap_or_else(|e| panic!("reading {stream}: {e}"));
    let mut read = Vec::with_capacity(count as usize);
    while (read.len() as u64) < count {
        let message = tokio::time::timeout(within, messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "stream {stream}: only {} of {count} messages read within {within:?}",
                    read.len()
                )
            })
            .unwrap_or_else(|| panic!("stream {stream} ended after {} messages", read.len()))
            .unwrap_or_else(|e| panic!("reading {stream}: {e}"));
        let sequence = message
            .info()
            .map(|info| info.stream_sequence)
            .unwrap_or_else(|e| panic!("a message of {stream} without its metadata: {e}"));
        let headers = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .filter_map(|(name, values)| {
                values
                    .first()
                    .map(|value| (name.to_string(), value.as_str().to_string()))
            })
            .collect();
        read.push(StoredMessage {
            sequence,
            subject: message.subject.to_string(),
            headers,
            payload: message.payload.to_vec(),
        });
    }
    read
}
