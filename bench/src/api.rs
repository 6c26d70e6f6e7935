//! The API path (issue #15): the real `tidemark serve` and `bank serve` binaries, started as
//! child processes on a database of their own, driven by an HTTP/1.1 load generator (one
//! keep-alive connection per client, each posting the single-event `appendEvents` of
//! `bench/http/append.lua` to random streams out of 100,000), the same append through the
//! library, GraphQL `events` paging, and the catch-up of the bank's real projections.
//!
//! The binaries are looked up next to the benchmark's own executable, so
//! `cargo build --release -p tidemark-bench -p tidemark-api -p tidemark-example-bank`
//! puts everything in place.

use crate::harness::{task_rng, Latencies, Progress, Window};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use tokio::net::TcpStream;

/// Which server binary to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `tidemark serve`: the built-in schema, no projections of its own.
    Tidemark,
    /// `bank serve`: the bank example, with its read models and handler.
    Bank,
}

impl Binary {
    fn file_name(self) -> &'static str {
        match self {
            Binary::Tidemark => "tidemark",
            Binary::Bank => "bank",
        }
    }

    /// The binary beside the benchmark's executable.
    pub fn path(self) -> Result<PathBuf> {
        let exe = std::env::current_exe().context("finding the benchmark's executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("the benchmark's executable has no directory"))?;
        let path = dir.join(self.file_name());
        if !path.is_file() {
            bail!(
                "{} is missing: build the servers beside the benchmark with `cargo build \
                 --release -p tidemark-bench -p tidemark-api -p tidemark-example-bank`",
                path.display()
            );
        }
        Ok(path)
    }
}

/// A server process serving one database.
pub struct Server {
    child: tokio::process::Child,
    pub port: u16,
    pid: u32,
    log: PathBuf,
    /// From spawning the process to `/ready` answering 200.
    pub ready_after: Duration,
}

impl Server {
    /// Starts `binary serve` on a free port against `url` (authentication off, as in the
    /// issue's measurement) and waits until `/ready` says so. Its output goes to a log file
    /// in `log_dir`, quoted when it fails.
    pub async fn start(
        binary: Binary,
        url: &str,
        projections: bool,
        log_dir: &Path,
    ) -> Result<Server> {
        let path = binary.path()?;
        let port = free_port()?;
        let log = log_dir.join(format!("{}-{port}.log", binary.file_name()));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let mut command = tokio::process::Command::new(&path);
        command
            .arg("serve")
            .arg("--insecure-dev")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(url)
            .env_remove("DATABASE_URL")
            .env_remove("TIDEMARK_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        if !projections {
            command.arg("--no-projections");
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the server exited at once"))?;
        let deadline = started + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready:\n{}",
                    binary.file_name(),
                    tail(&log)
                );
            }
            if let Ok((StatusCode::OK, _)) = get(port, "/ready").await {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within 2 minutes:\n{}",
                    binary.file_name(),
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            child,
            port,
            pid,
            log,
            ready_after: started.elapsed(),
        })
    }

    /// Stops the server gracefully (SIGTERM), killing it if it takes longer than 30 s.
    pub async fn stop(mut self) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the server exited with {status} on SIGTERM:\n{}",
                        tail(&self.log)
                    );
                }
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within 30 s of SIGTERM; killed it");
            }
        }
        Ok(())
    }

    /// One GraphQL request on a connection of its own: the `data` of the answer.
    pub async fn graphql(&self, query: &str, variables: Value) -> Result<Value> {
        let mut connection = Connection::open(self.port).await?;
        let body = json!({"query": query, "variables": variables}).to_string();
        let (status, body) = connection.post(Bytes::from(body)).await?;
        let answer: Value = serde_json::from_slice(&body)
            .with_context(|| format!("a GraphQL answer that is not JSON (HTTP {status})"))?;
        if status != StatusCode::OK || answer.get("errors").is_some() {
            bail!("GraphQL failed with HTTP {status}: {answer}");
        }
        Ok(answer["data"].clone())
    }
}

/// The last lines of a server's log.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A port nobody listens on now (the server binds it a moment later).
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// User + system CPU time of process `pid` (from `/proc/<pid>/stat`, in clock ticks of
/// 1/100 s, the value on Linux).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of the PostgreSQL server whose postmaster is `postmaster`: it and its children
/// (the backends, the WAL writer, ...). Other clusters on the machine are not counted.
pub fn postgres_cpu(postmaster: u32) -> Option<Duration> {
    let mut total = process_cpu(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(postmaster) {
            total += process_cpu(pid).unwrap_or_default();
        }
    }
    Some(total)
}

/// The writer's totals in a server's `/metrics`: (transactions, appends, seconds).
async fn batch_totals(port: u16) -> Option<(f64, f64, f64)> {
    let (status, body) = get(port, "/metrics").await.ok()?;
    if status != StatusCode::OK {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((
        value("tidemark_append_batch_requests_count")?,
        value("tidemark_append_batch_requests_sum")?,
        value("tidemark_append_batch_seconds_sum")?,
    ))
}

/// (appends per transaction, ms per transaction) between two [`batch_totals`].
fn batches_between(before: (f64, f64, f64), after: (f64, f64, f64)) -> Option<(f64, f64)> {
    let transactions = after.0 - before.0;
    (transactions > 0.0).then(|| {
        (
            (after.1 - before.1) / transactions,
            1000.0 * (after.2 - before.2) / transactions,
        )
    })
}

/// One HTTP/1.1 keep-alive connection to a server.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(port: u16) -> Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("the HTTP handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    async fn post(&mut self, body: Bytes) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("the connection closed")?;
        let request = Request::post("/graphql")
            .header(HOST, "127.0.0.1")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// A GET on a connection of its own.
async fn get(port: u16, path: &str) -> Result<(StatusCode, Bytes)> {
    let mut connection = Connection::open(port).await?;
    connection.sender.ready().await?;
    let request = Request::get(path)
        .header(HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let response = connection.sender.send_request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// Streams the appends go to: `acct-1` .. `acct-100000`, as in `bench/http/append.lua`.
const STREAMS: u32 = 100_000;

/// The note that brings the request to the size.
fn pad() -> &'static str {
    static PAD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAD.get_or_init(|| "x".repeat(120))
}

/// The mutation every HTTP client posts (the text of `bench/http/append.lua`).
pub const APPEND_MUTATION: &str = "mutation($s:String!,$d:JSON!){appendEvents(streamId:$s,events:[{type:\"Deposited\",data:$d}]){lastPosition}}";

/// The request body of one append: a `Deposited` event to a random stream.
fn append_body(rng: &mut rand::rngs::SmallRng) -> Bytes {
    let stream = rng.random_range(1..=STREAMS);
    Bytes::from(format!(
        "{{\"query\":{},\"variables\":{{\"s\":\"acct-{stream}\",\"d\":{{\"amount\":1,\"note\":\"{}\"}}}}}}",
        serde_json::to_string(APPEND_MUTATION).unwrap_or_default(),
        pad()
    ))
}

/// The same append through the library: the event the mutation makes.
fn append_request(rng: &mut rand::rngs::SmallRng) -> AppendRequest {
    let stream = rng.random_range(1..=STREAMS);
    AppendRequest::new(
        format!("acct-{stream}"),
        ExpectedVersion::Any,
        vec![NewEvent::new(
            "Deposited",
            json!({"amount": 1, "note": pad()}),
        )],
    )
}

/// Result of an HTTP or library append run.
pub struct ApiRun {
    pub per_sec: f64,
    pub latencies: Latencies,
    /// Answers refused with `OVERLOADED` (not counted in the rate).
    pub refused: u64,
    /// CPU time of the server process per append in the measured window.
    pub server_cpu_us: Option<f64>,
    /// CPU time of PostgreSQL (all its processes) per append in the measured window.
    pub postgres_cpu_us: Option<f64>,
    /// The writer's group commits in the measured window: (appends per transaction, ms per
    /// transaction); for a server, from its `/metrics`.
    pub batches: Option<(f64, f64)>,
}

impl ApiRun {
    /// The progress line's figures.
    pub fn describe(&self) -> String {
        let mut line = format!("{}/s", crate::harness::group(self.per_sec));
        if self.refused > 0 {
            line.push_str(&format!(" ({} refused)", self.refused));
        }
        if let Some(cpu) = self.server_cpu_us {
            line.push_str(&format!(", process CPU {cpu:.0} µs"));
        }
        if let Some(cpu) = self.postgres_cpu_us {
            line.push_str(&format!(", PostgreSQL CPU {cpu:.0} µs per append"));
        }
        if let Some((requests, millis)) = self.batches {
            line.push_str(&format!(
                "; {requests:.1} appends per transaction, {millis:.2} ms each"
            ));
        }
        line
    }
}

/// Samples CPU time over the measured part of a window: returns (process `pid`, the
/// PostgreSQL server of `postmaster`) CPU used between the end of the warm-up and the end
/// of the window.
fn cpu_sampler(
    pid: u32,
    postmaster: Option<u32>,
    warmup: Duration,
    measure: Duration,
) -> tokio::task::JoinHandle<(Option<Duration>, Option<Duration>)> {
    tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let process_before = process_cpu(pid);
        let postgres_before = postmaster.and_then(postgres_cpu);
        tokio::time::sleep(measure).await;
        let process = process_cpu(pid)
            .zip(process_before)
            .map(|(after, before)| after.saturating_sub(before));
        let postgres = postmaster
            .and_then(postgres_cpu)
            .zip(postgres_before)
            .map(|(after, before)| after.saturating_sub(before));
        (process, postgres)
    })
}

fn per_append_us(cpu: Option<Duration>, per_sec: f64, measure: Duration) -> Option<f64> {
    let appends = per_sec * measure.as_secs_f64();
    cpu.filter(|_| appends > 0.0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / appends)
}

/// `connections` clients, each on its own keep-alive connection, post single-event
/// appends to `server` as fast as it answers. An answer that is neither a success nor
/// `OVERLOADED` ends the run with an error.
pub async fn http_appends(
    server: &Server,
    postmaster: Option<u32>,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    progress: &Progress,
    label: &str,
) -> Result<ApiRun> {
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(server.port).await?);
    }
    let window = Window::starting_now(warmup, measure);
    let cpu = cpu_sampler(server.pid, postmaster, warmup, measure);
    let port = server.port;
    let batches = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        let before = batch_totals(port).await?;
        tokio::time::sleep(measure).await;
        batches_between(before, batch_totals(port).await?)
    });
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for mut connection in opened {
        let window = window.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut latencies = Latencies::default();
            while window.running() {
                let body = append_body(&mut rng);
                let started = Instant::now();
                let (status, answer) = match connection.post(body).await {
                    Ok(answer) => answer,
                    Err(error) => {
                        window.stop();
                        return Err(error.context("posting an append"));
                    }
                };
                let text = String::from_utf8_lossy(&answer);
                if text.contains("OVERLOADED") {
                    if window.record(started, 0).is_some() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                if status != StatusCode::OK || text.contains("\"errors\"") {
                    window.stop();
                    bail!("an append failed with HTTP {status}: {text}");
                }
                if let Some(latency) = window.record(started, 1) {
                    latencies.push(latency);
                }
            }
            Ok(latencies)
        }));
    }
    let samplers = Samplers { cpu, batches };
    let run = finish_run(progress, label, &window, tasks, samplers, measure).await?;
    Ok(ApiRun {
        refused: refused.load(Ordering::Relaxed),
        ..run
    })
}

/// The same appends through the library: `callers` tasks on `store`, in this process.
pub async fn library_appends(
    store: &EventStore,
    postmaster: Option<u32>,
    callers: usize,
    warmup: Duration,
    measure: Duration,
    progress: &Progress,
    label: &str,
) -> Result<ApiRun> {
    let window = Window::starting_now(warmup, measure);
    let cpu = cpu_sampler(std::process::id(), postmaster, warmup, measure);
    let batches = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        crate::probe::take();
        tokio::time::sleep(measure).await;
        let batches = crate::probe::take();
        (batches.mean_requests > 0.0).then_some((batches.mean_requests, batches.mean_millis))
    });
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let store = store.clone();
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            let mut latencies = Latencies::default();
            while window.running() {
                let request = append_request(&mut rng);
                let started = Instant::now();
                if let Err(error) = store.append(request).await {
                    window.stop();
                    return Err(anyhow!(error).context("appending"));
                }
                if let Some(latency) = window.record(started, 1) {
                    latencies.push(latency);
                }
            }
            Ok(latencies)
        }));
    }
    let samplers = Samplers { cpu, batches };
    finish_run(progress, label, &window, tasks, samplers, measure).await
}

/// What a run samples beside its clients: CPU (the process, PostgreSQL) and the writer's
/// batches, each over the measured part of the window.
struct Samplers {
    cpu: tokio::task::JoinHandle<(Option<Duration>, Option<Duration>)>,
    batches: tokio::task::JoinHandle<Option<(f64, f64)>>,
}

/// Shows the run's progress until its window ends, then gathers every client's latencies and
/// the samplers' figures (no refusals: the caller adds its own).
async fn finish_run(
    progress: &Progress,
    label: &str,
    window: &Window,
    tasks: Vec<tokio::task::JoinHandle<Result<Latencies>>>,
    samplers: Samplers,
    measure: Duration,
) -> Result<ApiRun> {
    progress.watch(label, window).await;
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await.context("a client task panicked")??);
    }
    let (process_cpu, postgres_cpu) = samplers.cpu.await.context("the CPU sampler panicked")?;
    let batches = samplers
        .batches
        .await
        .context("the batch sampler panicked")?;
    let per_sec = window.rate();
    Ok(ApiRun {
        per_sec,
        latencies,
        refused: 0,
        server_cpu_us: per_append_us(process_cpu, per_sec, measure),
        postgres_cpu_us: per_append_us(postgres_cpu, per_sec, measure),
        batches,
    })
}

/// Every field of an event: what `read_log` returns.
const EVENTS_QUERY: &str = "query($after:Int64!,$first:Int!){events(after:$after,first:$first){events{position streamId streamVersion category partition eventId type schemaVersion data encoding metadata contentHash recordedAt} pageInfo{endCursor hasNextPage}}}";

/// Pages through the whole log with the GraphQL `events` query, `page` events at a time,
/// on one connection. Returns (events, elapsed).
pub async fn graphql_paging(server: &Server, page: usize) -> Result<(u64, Duration)> {
    let mut connection = Connection::open(server.port).await?;
    let started = Instant::now();
    let (mut after, mut count) = (0i64, 0u64);
    loop {
        let body = json!({"query": EVENTS_QUERY, "variables": {"after": after, "first": page}});
        let (status, answer) = connection.post(Bytes::from(body.to_string())).await?;
        let answer: Value = serde_json::from_slice(&answer).context("a page that is not JSON")?;
        if status != StatusCode::OK || answer.get("errors").is_some() {
            bail!("reading a page failed with HTTP {status}: {answer}");
        }
        let page = &answer["data"]["events"];
        let events = page["events"]
            .as_array()
            .ok_or_else(|| anyhow!("a page without events: {answer}"))?;
        count += events.len() as u64;
        std::hint::black_box(events);
        match page["pageInfo"]["endCursor"].as_i64() {
            Some(cursor) if !events.is_empty() => after = cursor,
            _ => break,
        }
        if page["pageInfo"]["hasNextPage"] == Value::Bool(false) {
            break;
        }
    }
    Ok((count, started.elapsed()))
}

/// Waits until every projection of `server` has applied the log up to `head`, asking its
/// GraphQL `projections` every 250 ms (so a catch-up time is rounded up to that). Returns
/// the projections' names.
pub async fn wait_caught_up(server: &Server, head: i64, timeout: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        // The status is a few queries per partition: polled often, it would slow down the
        // catch-up it watches; under load it may time out, which is retried.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let data = match server
            .graphql("{projections{name status checkpoint}}", json!({}))
            .await
        {
            Ok(data) => data,
            Err(_) if Instant::now() < deadline => continue,
            Err(error) => return Err(error.context("reading the projections' status")),
        };
        let projections = data["projections"]
            .as_array()
            .ok_or_else(|| anyhow!("no projections in {data}"))?;
        let behind: Vec<&Value> = projections
            .iter()
            .filter(|p| p["checkpoint"].as_i64().unwrap_or(0) < head)
            .collect();
        if behind.is_empty() && !projections.is_empty() {
            return Ok(projections
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect());
        }
        if Instant::now() > deadline {
            bail!("the projections did not catch up to {head} in time: {data}");
        }
    }
}

/// Writes `total` events of the bank's own types through the library: per account an
/// `AccountOpened`, seven `MoneyDeposited` (v2) and two `MoneyWithdrawn`; every fifth
/// account also a customer's `CustomerRegistered` and an order's `OrderPlaced` and
/// `OrderPaid`. Eight writers, one append per stream.
pub async fn write_bank_log(store: &EventStore, total: u64, progress: &Progress) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, next, written) = (store.clone(), next.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = task_rng();
            loop {
                if written.load(Ordering::Relaxed) >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let mut events = vec![NewEvent::new(
                    "AccountOpened",
                    json!({"owner": format!("owner-{k}")}),
                )];
                for _ in 0..7 {
                    let mut deposit = NewEvent::new(
                        "MoneyDeposited",
                        json!({"amount": rng.random_range(100..50_000i64), "currency": "EUR"}),
                    );
                    deposit.schema_version = 2;
                    events.push(deposit);
                }
                for _ in 0..2 {
                    events.push(NewEvent::new(
                        "MoneyWithdrawn",
                        json!({"amount": rng.random_range(100..20_000i64)}),
                    ));
                }
                let mut appends = vec![AppendRequest::new(
                    format!("account-{k}"),
                    ExpectedVersion::Any,
                    events,
                )];
                if k % 5 == 0 {
                    let customer = format!("cus-{k}");
                    appends.push(AppendRequest::new(
                        format!("customer-{k}"),
                        ExpectedVersion::Any,
                        vec![NewEvent::new(
                            "CustomerRegistered",
                            json!({"customer_id": customer, "name": format!("Customer {k}")}),
                        )],
                    ));
                    appends.push(AppendRequest::new(
                        format!("order-{k}"),
                        ExpectedVersion::Any,
                        vec![
                            NewEvent::new(
                                "OrderPlaced",
                                json!({"customer_id": customer, "account_id": format!("account-{k}"),
                                       "amount": rng.random_range(100..20_000i64)}),
                            ),
                            NewEvent::new("OrderPaid", json!({})),
                        ],
                    ));
                }
                for append in appends {
                    let n = append.events.len() as u64;
                    store.append(append).await.context("writing the bank's log")?;
                    written.fetch_add(n, Ordering::Relaxed);
                }
            }
        }));
    }
    progress
        .await_writers(tasks, &written, total, "writing the bank's log")
        .await
}
