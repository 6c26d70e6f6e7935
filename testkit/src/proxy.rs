//! A TCP proxy in front of PostgreSQL that breaks append transactions on purpose, to test
//! what clients are told when a connection dies around COMMIT.
//!
//! The proxy reads the client's side of the PostgreSQL wire protocol just enough to follow
//! transactions: a simple-query `BEGIN` or `START TRANSACTION` starts one, and a transaction whose messages carry
//! the append's NOTIFY channel name (`tidemark_events`, a parameter of every writing append
//! transaction) is an append. While armed, each append transaction gets the next [`Cut`] of
//! a cyclic plan:
//!
//! - [`Cut::BeforeWrites`]: the connection is closed instead of forwarding the writes; the
//!   server rolls the transaction back, and the client sees the loss before sending COMMIT.
//! - [`Cut::BeforeCommit`]: the writes go through, the `COMMIT` is swallowed and the
//!   connection closed: rolled back, but the client loses it during COMMIT.
//! - [`Cut::AfterCommit`]: the `COMMIT` goes through, the server's answer is swallowed and
//!   the connection closed: committed, but the client never hears so.
//!
//! Other connections and transactions (migrations, reads, LISTEN, projections) pass through
//! untouched, so a test can tell exactly which appends were hit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// How tokio-postgres starts a transaction: `Query("BEGIN")` (`Client::transaction`) or
/// `Query("START TRANSACTION...")` (`Client::build_transaction`, which the store uses).
const BEGIN: &[u8] = b"Q\0\0\0\x0aBEGIN\0";
const START_TRANSACTION: &[u8] = b"START TRANSACTION";
/// `Query("COMMIT")` and `Query("ROLLBACK")`, as tokio-postgres ends one.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
const ROLLBACK: &[u8] = b"Q\0\0\0\x0dROLLBACK\0";
/// Present in the messages of every append transaction that writes (the NOTIFY channel).
const APPEND_MARKER: &[u8] = b"tidemark_events";

/// What happens to one append transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Passes through.
    None,
    /// Closed before the writes reach the server: nothing written, known before COMMIT.
    BeforeWrites,
    /// Closed instead of forwarding COMMIT: nothing written, lost during COMMIT.
    BeforeCommit,
    /// Closed after forwarding COMMIT, before its answer: written, lost during COMMIT.
    AfterCommit,
}

/// How many append transactions met each kind of cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutCounts {
    pub passed: u64,
    pub before_writes: u64,
    pub before_commit: u64,
    pub after_commit: u64,
}

#[derive(Default)]
struct Shared {
    armed: AtomicBool,
    plan: Mutex<Vec<Cut>>,
    next: AtomicU64,
    passed: AtomicU64,
    before_writes: AtomicU64,
    before_commit: AtomicU64,
    after_commit: AtomicU64,
}

impl Shared {
    fn next_cut(&self) -> Cut {
        if !self.armed.load(Ordering::SeqCst) {
            return Cut::None;
        }
        let plan = self.plan.lock().expect("the plan lock is never poisoned");
        if plan.is_empty() {
            return Cut::None;
        }
        let index = self.next.fetch_add(1, Ordering::SeqCst) as usize % plan.len();
        plan[index]
    }

    fn count(&self, cut: Cut) {
        let counter = match cut {
            Cut::None => &self.passed,
            Cut::BeforeWrites => &self.before_writes,
            Cut::BeforeCommit => &self.before_commit,
            Cut::AfterCommit => &self.after_commit,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Where the proxy connects to: the database's first host.
#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    Unix(PathBuf),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Target {
    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Target::Tcp(host, port) => Box::new(TcpStream::connect((host.as_str(), *port)).await?),
            Target::Unix(path) => Box::new(UnixStream::connect(path).await?),
        })
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    port: u16,
    target_config: Config,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Starts a disarmed proxy on a free loopback port in front of the database `target`.
    pub async fn start(target: &Config) -> FaultProxy {
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let destination = match target.get_hosts().first() {
            Some(Host::Tcp(host)) => Target::Tcp(host.clone(), port),
            Some(Host::Unix(dir)) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Target::Tcp("127.0.0.1".into(), port),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds a loopback port");
        let proxy_port = listener.local_addr().expect("a bound address").port();
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, destination, shared.clone()));
        FaultProxy {
            port: proxy_port,
            target_config: target.clone(),
            shared,
            accept,
        }
    }

    /// Connection settings for the database through this proxy.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config.host("127.0.0.1").port(self.port);
        if let Some(user) = self.target_config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.target_config.get_password() {
            config.password(password);
        }
        if let Some(dbname) = self.target_config.get_dbname() {
            config.dbname(dbname);
        }
        // The proxy reads the protocol to find append transactions: it must see plaintext,
        // even when the server behind it offers TLS (the default `prefer` would take it).
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        config
    }

    /// A `postgresql://` URL for the database through this proxy.
    pub fn url(&self) -> String {
        tidemark_pg_embedded::connection_url(&self.config())
    }

    /// From now on, append transactions get the cuts of `plan` in turn, from its start.
    pub fn arm(&self, plan: &[Cut]) {
        *self
            .shared
            .plan
            .lock()
            .expect("the plan lock is never poisoned") = plan.to_vec();
        self.shared.next.store(0, Ordering::SeqCst);
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    /// Lets every transaction through again.
    pub fn disarm(&self) {
        self.shared.armed.store(false, Ordering::SeqCst);
    }

    /// How many append transactions met each cut so far.
    pub fn counts(&self) -> CutCounts {
        CutCounts {
            passed: self.shared.passed.load(Ordering::SeqCst),
            before_writes: self.shared.before_writes.load(Ordering::SeqCst),
            before_commit: self.shared.before_commit.load(Ordering::SeqCst),
            after_commit: self.shared.after_commit.load(Ordering::SeqCst),
        }
    }
}

async fn accept_loop(listener: TcpListener, destination: Target, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let destination = destination.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            // A failed connect closes the client's socket: it sees a refused connection.
            if let Ok(server) = destination.connect().await {
                relay(client, server, &shared).await;
            }
        });
    }
}

/// Whether `pattern` occurs in `scan` ending past `old` bytes (the part of `scan` that is
/// new; the rest is the tail of earlier reads, kept for matches split across reads).
fn occurs_new(scan: &[u8], pattern: &[u8], old: usize) -> bool {
    scan.windows(pattern.len())
        .enumerate()
        .any(|(start, window)| window == pattern && start + pattern.len() > old)
}

/// Forwards both ways until either side closes, or a cut closes both.
async fn relay(client: TcpStream, server: Box<dyn Io>, shared: &Shared) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    let mut in_transaction = false;
    // The cut decided for the append transaction in progress, if one is.
    let mut append: Option<Cut> = None;
    let mut swallow_answer = false;
    loop {
        tokio::select! {
            read = client_read.read(&mut from_client) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &from_client[..n];
                let old = tail.len();
                let mut scan = std::mem::take(&mut tail);
                scan.extend_from_slice(chunk);
                if occurs_new(&scan, BEGIN, old) || occurs_new(&scan, START_TRANSACTION, old) {
                    in_transaction = true;
                    append = None;
                }
                if occurs_new(&scan, ROLLBACK, old) {
                    in_transaction = false;
                    append = None;
                }
                if in_transaction && append.is_none() && occurs_new(&scan, APPEND_MARKER, old) {
                    let cut = shared.next_cut();
                    append = Some(cut);
                    if cut == Cut::BeforeWrites {
                        shared.count(cut);
                        return;
                    }
                }
                if occurs_new(&scan, COMMIT, old) {
                    in_transaction = false;
                    if let Some(cut) = append.take() {
                        shared.count(cut);
                        match cut {
                            Cut::BeforeCommit => return,
                            Cut::AfterCommit => swallow_answer = true,
                            Cut::None | Cut::BeforeWrites => {}
                        }
                    }
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
                let keep = scan.len().saturating_sub(START_TRANSACTION.len());
                tail = scan.split_off(keep);
            }
            read = server_read.read(&mut from_server) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if swallow_answer {
                    // The COMMIT's answer: the server has committed; the client never learns.
                    return;
                }
                if client_write.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_split_across_reads_count_once() {
        let mut stream = b"xxQ\0\0\0\x0bCOM".to_vec();
        assert!(!occurs_new(&stream, COMMIT, 0));
        stream.extend_from_slice(b"MIT\0");
        assert!(occurs_new(&stream, COMMIT, 12));
        // Already seen: a later read that keeps it in the tail does not match it again.
        assert!(!occurs_new(&stream, COMMIT, stream.len()));
    }
}
