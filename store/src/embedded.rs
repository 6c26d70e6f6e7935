//! Embedded PostgreSQL: runs a private cluster from the server binaries installed on this
//! machine, so `tidemark serve` works without `DATABASE_URL` and tests need no server.
//!
//! [`EmbeddedPostgres::start`] creates the cluster with `initdb` on first use and reuses it
//! afterwards (data survives restarts), starts `postgres` as a child process listening on a
//! private unix socket (or a free loopback port), and waits until it accepts connections.
//! Run as root, it runs the cluster as the `postgres` OS user, since PostgreSQL refuses root.
//! The server never outlives this process: it is started with a parent-death signal.
//!
//! [`SupervisedPostgres`] (module `supervisor`) keeps a started cluster running: it restarts
//! the server when it dies (kill -9, the OOM killer) and reports whether it is worth keeping
//! the process that runs it.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{chown, Gid, Pid, Uid, User};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

mod supervisor;
pub use supervisor::{ClusterHealth, ClusterState, RestartPolicy, SupervisedPostgres};

/// Environment variable naming the directory that holds `initdb` and `postgres`.
pub const BIN_DIR_ENV: &str = "TIDEMARK_PG_BIN";

/// The superuser role created by `initdb`, and the OS user the cluster runs as under root.
pub const SUPERUSER: &str = "postgres";

/// Where distributions install versioned server binaries (`<root>/<major>/bin`).
const VERSIONED_INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// Subdirectory of the data directory holding the server's unix socket.
const SOCKET_DIR_NAME: &str = "socket";

/// The server's stdout and stderr go here, inside the data directory.
const LOG_FILE_NAME: &str = "postgres.log";

/// Longest socket path we use; the kernel limit (`sun_path`) is 108 bytes including the NUL.
const MAX_SOCKET_PATH_BYTES: usize = 100;

/// The socket file name is `.s.PGSQL.<port>`; the port has at most 5 digits.
const SOCKET_FILE_NAME_MAX_BYTES: usize = ".s.PGSQL.65535".len();

/// Port in the socket file name when the server listens on the socket only (no TCP).
const SOCKET_ONLY_PORT: u16 = 5432;

/// How much of the server log an error message quotes.
const LOG_TAIL_BYTES: u64 = 4000;

/// Fast shutdown writes a checkpoint; allow for it before escalating.
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Immediate shutdown (SIGQUIT) only tells the children to quit.
const IMMEDIATE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for a server left over from an earlier run to finish shutting down.
const LEFTOVER_SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the backends of a killed postmaster get to notice and exit on their own before a
/// restart kills them: they keep the old shared memory attached, and PostgreSQL refuses to
/// start while it is.
const ORPHANED_BACKENDS_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts to start when the port was picked for us and someone else took it meanwhile.
const FREE_PORT_ATTEMPTS: usize = 3;

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Everything that can go wrong running an embedded cluster. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found in {looked_in}: install the \
         PostgreSQL server package (e.g. `apt-get install postgresql`), set TIDEMARK_PG_BIN to the \
         directory holding them, or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound { looked_in: String },

    #[error(
        "data directory {} holds a PostgreSQL {cluster_version} cluster but the binaries in {} are \
         PostgreSQL {binaries_version}: point TIDEMARK_PG_BIN at PostgreSQL {cluster_version}'s bin \
         directory, or upgrade the cluster with pg_upgrade",
        .data_dir.display(),
        .bin_dir.display()
    )]
    VersionMismatch {
        data_dir: PathBuf,
        cluster_version: String,
        bin_dir: PathBuf,
        binaries_version: String,
    },

    #[error(
        "running as root needs an OS user named `postgres` to run the cluster (PostgreSQL refuses \
         to run as root), and there is none: create it (e.g. `useradd --system postgres`) or run \
         as a non-root user"
    )]
    PostgresUserMissing,

    #[error(
        "the `postgres` OS user cannot reach data directory {} because it may not enter {}: choose \
         a data directory it can reach (e.g. under /var/lib or /tmp) or allow it with `chmod o+x {}`",
        .data_dir.display(),
        .blocked_at.display(),
        .blocked_at.display()
    )]
    DataDirUnreachable {
        data_dir: PathBuf,
        blocked_at: PathBuf,
    },

    #[error(
        "data directory {} is not empty but holds no PostgreSQL cluster (no PG_VERSION file): \
         point the data directory at an empty or new directory",
        .data_dir.display()
    )]
    NotACluster { data_dir: PathBuf },

    #[error(
        "data directory {} belongs to uid {owner} but the server runs as uid {server_uid}: \
         `chown -R {server_uid}` it or use another data directory",
        .data_dir.display()
    )]
    WrongOwner {
        data_dir: PathBuf,
        owner: u32,
        server_uid: u32,
    },

    #[error(
        "a PostgreSQL server (pid {pid}) is already running on data directory {}: stop it (e.g. \
         `kill -INT {pid}`) or use another data directory",
        .data_dir.display()
    )]
    AlreadyRunning { pid: i32, data_dir: PathBuf },

    #[error(
        "processes of a PostgreSQL server that no longer runs (pids {pids:?}) still use data \
         directory {}: they keep its shared memory, so no new server can start; stop them \
         (e.g. `kill -QUIT <pid>`) or wait until they exit",
        .data_dir.display()
    )]
    LeftoverProcesses { pids: Vec<i32>, data_dir: PathBuf },

    #[error("initdb could not create a cluster in {} ({status}); its output:\n{output}", .data_dir.display())]
    InitdbFailed {
        data_dir: PathBuf,
        status: String,
        output: String,
    },

    #[error("PostgreSQL did not start ({reason}); the end of its log {}:\n{log_tail}", .log_file.display())]
    StartFailed {
        reason: String,
        log_file: PathBuf,
        log_tail: String,
    },

    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    #[error("could not {action} on the embedded cluster: {source}")]
    Database {
        action: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl EmbeddedError {
    fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
        let action = action.into();
        move |source| EmbeddedError::Io { action, source }
    }

    fn database(action: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> EmbeddedError {
        let action = action.into();
        move |source| EmbeddedError::Database { action, source }
    }
}

/// How to run the cluster. `EmbeddedOptions { data_dir, ..Default::default() }` is typical.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Where the cluster lives: created by `initdb` on first start, reused afterwards.
    pub data_dir: PathBuf,
    /// Directory holding `initdb` and `postgres`; `None` searches (see [`find_binaries`]).
    pub bin_dir: Option<PathBuf>,
    /// Also listen on `127.0.0.1:<port>`. `None`: a unix socket only, or a free loopback
    /// port when the socket path would be too long.
    pub port: Option<u16>,
    /// Flush to disk. Turn off only for throwaway clusters (tests): a crash can then
    /// corrupt the cluster.
    pub fsync: bool,
    /// How long to wait for the server to accept connections. Time in crash recovery (the
    /// server answers that it is starting up) does not count: replaying a large WAL may take
    /// longer, and killing the server then would only start the replay over.
    pub startup_timeout: Duration,
    /// Extra server settings (`-c name=value`), applied after the built-in ones.
    pub settings: Vec<(String, String)>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            data_dir: PathBuf::from("./.tidemark/pg"),
            bin_dir: None,
            port: None,
            fsync: true,
            startup_timeout: Duration::from_secs(30),
            settings: Vec::new(),
        }
    }
}

/// A running private PostgreSQL server. [`stop`](Self::stop) shuts it down and waits;
/// dropping it only asks it to shut down.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    /// Set when the server listens on a unix socket; connections prefer it.
    socket_dir: Option<PathBuf>,
    port: u16,
    log_file: PathBuf,
    /// `None` once stopped, or once it exited and was reaped (see [`Self::exited`]).
    server: Option<Child>,
    /// The pid of a server we saw exit: its lock file is stale even if the pid is in use
    /// again by then (by another postgres, even).
    exited_pid: Option<u32>,
    /// What a restart needs to launch the same server again: same binaries, user, socket
    /// and port, so connection settings handed out earlier stay valid.
    bin_dir: PathBuf,
    tcp: bool,
    run_as: Option<ServerUser>,
    options: EmbeddedOptions,
}

impl EmbeddedPostgres {
    /// Creates the cluster if `options.data_dir` holds none, starts the server, and waits
    /// until it accepts connections.
    pub async fn start(options: EmbeddedOptions) -> Result<EmbeddedPostgres, EmbeddedError> {
        let data_dir = std::path::absolute(&options.data_dir).map_err(EmbeddedError::io(
            format!("resolve data directory {}", options.data_dir.display()),
        ))?;
        let cluster_version = read_cluster_version(&data_dir)?;
        let bin_dir = find_binaries_for(options.bin_dir.as_deref(), cluster_version.as_deref())?;
        let run_as = ServerUser::for_current_process()?;
        if let Some(user) = &run_as {
            check_reachable_by(user, &data_dir)?;
        }

        match &cluster_version {
            Some(cluster_version) => {
                let binaries_version = binaries_major_version(&bin_dir).await?;
                if *cluster_version != binaries_version {
                    return Err(EmbeddedError::VersionMismatch {
                        data_dir,
                        cluster_version: cluster_version.clone(),
                        bin_dir,
                        binaries_version,
                    });
                }
                check_owner(&data_dir, run_as.as_ref())?;
                clear_stale_pid_file(&data_dir, None).await?;
            }
            None => init_cluster(&bin_dir, &data_dir, run_as.as_ref(), options.fsync).await?,
        }

        let socket_dir = data_dir.join(SOCKET_DIR_NAME);
        let socket_dir = if socket_dir.as_os_str().len() + 1 + SOCKET_FILE_NAME_MAX_BYTES
            < MAX_SOCKET_PATH_BYTES
        {
            create_private_dir(&socket_dir, run_as.as_ref())?;
            Some(socket_dir)
        } else {
            None
        };
        let log_file = data_dir.join(LOG_FILE_NAME);

        let mut attempt = 0;
        loop {
            attempt += 1;
            let (port, tcp) = match (options.port, &socket_dir) {
                (Some(port), _) => (port, true),
                (None, Some(_)) => (SOCKET_ONLY_PORT, false),
                (None, None) => (free_loopback_port()?, true),
            };
            let launch = Launch {
                bin_dir: &bin_dir,
                data_dir: &data_dir,
                socket_dir: socket_dir.as_deref(),
                port,
                tcp,
                log_file: &log_file,
                run_as: run_as.as_ref(),
                options: &options,
            };
            match launch.run().await {
                Ok(server) => {
                    return Ok(EmbeddedPostgres {
                        data_dir,
                        socket_dir,
                        port,
                        log_file,
                        server: Some(server),
                        exited_pid: None,
                        bin_dir,
                        tcp,
                        run_as,
                        options,
                    })
                }
                Err(EmbeddedError::StartFailed { log_tail, .. })
                    if options.port.is_none()
                        && tcp
                        && attempt < FREE_PORT_ATTEMPTS
                        && log_tail.contains("could not bind") =>
                {
                    tracing::debug!(
                        port,
                        "the free port was taken before PostgreSQL bound it; trying another"
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether the server has exited on its own (`Some` with its exit status), reaping it.
    /// After that, [`pid`](Self::pid) is `None` and [`restart`](Self::restart) starts it again.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, EmbeddedError> {
        let Some(server) = self.server.as_mut() else {
            return Ok(None);
        };
        let pid = server.id();
        // Called on every check of the supervisor: the message is built only on failure.
        let status = server.try_wait().map_err(|source| EmbeddedError::Io {
            action: format!("check on PostgreSQL (pid {pid})"),
            source,
        })?;
        if status.is_some() {
            self.server = None;
            self.exited_pid = Some(pid);
        }
        Ok(status)
    }

    /// Starts the server again after it exited (see [`exited`](Self::exited)), on the same
    /// socket and port, and waits until it accepts connections. PostgreSQL's crash recovery
    /// replays the WAL, so every committed transaction is there afterwards.
    ///
    /// Backends of a killed postmaster linger until they notice; they get a moment to exit,
    /// then are killed, since the old shared memory they hold keeps a new server from
    /// starting. Does nothing while the server runs.
    pub async fn restart(&mut self) -> Result<(), EmbeddedError> {
        if self.server.is_some() {
            return Ok(());
        }
        end_orphaned_backends(&self.data_dir).await?;
        clear_stale_pid_file(&self.data_dir, self.exited_pid).await?;
        let launch = Launch {
            bin_dir: &self.bin_dir,
            data_dir: &self.data_dir,
            socket_dir: self.socket_dir.as_deref(),
            port: self.port,
            tcp: self.tcp,
            log_file: &self.log_file,
            run_as: self.run_as.as_ref(),
            options: &self.options,
        };
        self.server = Some(launch.run().await?);
        self.exited_pid = None;
        Ok(())
    }

    /// Connection settings for database `dbname` as the superuser, over the unix socket when
    /// there is one, else over TCP on 127.0.0.1.
    pub fn connection_config(&self, dbname: &str) -> Config {
        connection_config(self.socket_dir.as_deref(), self.port, dbname)
    }

    /// A `postgresql://` URL for database `dbname`, usable as `DATABASE_URL` (a socket
    /// directory is percent-encoded into the host, which libpq and tokio-postgres accept).
    pub fn url(&self, dbname: &str) -> String {
        connection_url(&self.connection_config(dbname))
    }

    /// The cluster's data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the server's unix socket, if it listens on one.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.socket_dir.as_deref()
    }

    /// The TCP port, or with a socket only, the port number in the socket's file name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the server's output goes.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The postmaster's process id, until stopped.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Creates database `name` unless it exists (safe when several callers race).
    pub async fn ensure_database(&self, name: &str) -> Result<(), EmbeddedError> {
        let action = format!("create database {name}");
        let (client, connection) = self
            .connection_config(SUPERUSER)
            .connect(NoTls)
            .await
            .map_err(EmbeddedError::database(action.clone()))?;
        // Lives only for this call; it ends when `client` is dropped below.
        let connection = tokio::spawn(connection);
        let result = async {
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await?;
            if exists.is_none() {
                match client
                    .batch_execute(&format!("CREATE DATABASE {}", quote_identifier(name)))
                    .await
                {
                    // A concurrent creator won; it can also surface as a unique violation.
                    Err(error)
                        if error.code() == Some(&SqlState::DUPLICATE_DATABASE)
                            || error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                    other => other?,
                }
            }
            Ok(())
        }
        .await;
        drop(client);
        let _ = connection.await;
        result.map_err(EmbeddedError::database(action))
    }

    /// Shuts the server down (fast shutdown: running transactions are rolled back) and waits
    /// for it to exit, escalating to immediate shutdown and then SIGKILL if it hangs.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.stop_in_place().await
    }

    /// [`stop`](Self::stop) for an owner that keeps the handle (the supervisor).
    async fn stop_in_place(&mut self) -> Result<(), EmbeddedError> {
        match self.server.take() {
            Some(mut server) => {
                let status = shut_down(&mut server).await?;
                tracing::info!(data_dir = %self.data_dir.display(), %status, "embedded PostgreSQL stopped");
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedPostgres {
    /// Best effort: asks for a fast shutdown and reaps the process on a helper thread, so
    /// dropping never blocks.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = send_signal(&server, Signal::SIGINT);
            let reaper = std::thread::Builder::new()
                .name("tidemark-pg-reaper".into())
                .spawn(move || server.wait());
            if let Err(error) = reaper {
                tracing::warn!(%error, "could not start a thread to reap the embedded PostgreSQL server");
            }
        }
    }
}

fn connection_config(socket_dir: Option<&Path>, port: u16, dbname: &str) -> Config {
    let mut config = Config::new();
    config.user(SUPERUSER).dbname(dbname).port(port);
    match socket_dir {
        Some(socket_dir) => config.host_path(socket_dir),
        None => config.host("127.0.0.1"),
    };
    config
}

/// Finds the directory holding `initdb` and `postgres`: `explicit` if given, else
/// `$TIDEMARK_PG_BIN`, else the newest `/usr/lib/postgresql/<N>/bin`, else `PATH`.
/// A directory named explicitly or by the variable must hold both; there is no fallback.
pub fn find_binaries(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    find_binaries_for(explicit, None)
}

/// Like [`find_binaries`], but among versioned installs prefers `wanted_major` (the version
/// of an existing cluster), so an upgrade that installs a newer major keeps old clusters
/// working.
fn find_binaries_for(
    explicit: Option<&Path>,
    wanted_major: Option<&str>,
) -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = explicit {
        return require_binaries(dir, || format!("{}", dir.display()));
    }
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        return require_binaries(&dir, || format!("{BIN_DIR_ENV}={}", dir.display()));
    }

    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir(VERSIONED_INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((major, bin))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    let wanted = wanted_major.and_then(|wanted| {
        versioned
            .iter()
            .find(|(major, _)| major.to_string() == wanted)
    });
    if let Some((_, bin)) = wanted.or(versioned.first()) {
        return Ok(bin.clone());
    }

    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        // `initdb` finds `postgres` next to its real location, so follow a symlinked initdb.
        if let Ok(real_initdb) = fs::canonicalize(dir.join("initdb")) {
            if let Some(real_dir) = real_initdb
                .parent()
                .filter(|real_dir| has_server_binaries(real_dir))
            {
                return Ok(real_dir.to_path_buf());
            }
        }
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    Err(EmbeddedError::BinariesNotFound {
        looked_in: format!("{VERSIONED_INSTALL_ROOT}/<version>/bin or on PATH"),
    })
}

fn require_binaries(
    dir: &Path,
    describe: impl FnOnce() -> String,
) -> Result<PathBuf, EmbeddedError> {
    if has_server_binaries(dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(EmbeddedError::BinariesNotFound {
            looked_in: describe(),
        })
    }
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "postgres"]
        .iter()
        .all(|name| is_executable_file(&dir.join(name)))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A libpq-style `postgresql://` URL for `config`: user, password, hosts, ports and database
/// carry over; other parameters do not. Unix socket directories are percent-encoded.
pub fn connection_url(config: &Config) -> String {
    let mut url = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        url.push_str(&percent_encode(user.as_bytes()));
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&percent_encode(password));
        }
        url.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let host = match host {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                Host::Tcp(name) => percent_encode(name.as_bytes()),
                Host::Unix(path) => percent_encode(path.as_os_str().as_encoded_bytes()),
            };
            match ports.get(index).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    url.push_str(&hosts.join(","));
    url.push('/');
    if let Some(dbname) = config.get_dbname() {
        url.push_str(&percent_encode(dbname.as_bytes()));
    }
    url
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The OS user the server runs as when we are root (PostgreSQL refuses to run as root).
#[derive(Debug, Clone)]
struct ServerUser {
    uid: Uid,
    gid: Gid,
}

impl ServerUser {
    /// `None` when not root: the server then runs as the current user.
    fn for_current_process() -> Result<Option<ServerUser>, EmbeddedError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        match User::from_name(SUPERUSER) {
            Ok(Some(user)) => Ok(Some(ServerUser {
                uid: user.uid,
                gid: user.gid,
            })),
            Ok(None) => Err(EmbeddedError::PostgresUserMissing),
            Err(errno) => Err(EmbeddedError::Io {
                action: format!("look up the `{SUPERUSER}` OS user"),
                source: errno.into(),
            }),
        }
    }

    /// Runs `command` as this user. Without explicit groups, std also drops root's
    /// supplementary groups before switching uid.
    fn apply(&self, command: &mut Command) {
        command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }

    fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        chown(path, Some(self.uid), Some(self.gid)).map_err(|errno| EmbeddedError::Io {
            action: format!("give {} to the `{SUPERUSER}` OS user", path.display()),
            source: errno.into(),
        })
    }
}

/// Fails early, with advice, when the server user could not enter an ancestor of `data_dir`
/// (e.g. a data directory under /root). Ignores ACLs; std runs the server without
/// supplementary groups, so owner, primary group and others are what count.
fn check_reachable_by(user: &ServerUser, data_dir: &Path) -> Result<(), EmbeddedError> {
    for ancestor in data_dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let may_enter = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !may_enter {
            return Err(EmbeddedError::DataDirUnreachable {
                data_dir: data_dir.to_path_buf(),
                blocked_at: ancestor.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn check_owner(data_dir: &Path, run_as: Option<&ServerUser>) -> Result<(), EmbeddedError> {
    let meta = fs::metadata(data_dir)
        .map_err(EmbeddedError::io(format!("inspect {}", data_dir.display())))?;
    let server_uid = run_as.map_or_else(Uid::effective, |user| user.uid).as_raw();
    if meta.uid() != server_uid {
        return Err(EmbeddedError::WrongOwner {
            data_dir: data_dir.to_path_buf(),
            owner: meta.uid(),
            server_uid,
        });
    }
    Ok(())
}

/// The major version of the cluster in `data_dir` (its `PG_VERSION`), `None` if there is no
/// cluster yet. A non-empty directory without one is refused rather than overwritten.
fn read_cluster_version(data_dir: &Path) -> Result<Option<String>, EmbeddedError> {
    match fs::read_to_string(data_dir.join("PG_VERSION")) {
        Ok(version) => Ok(Some(version.trim().to_string())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let has_entries =
                fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
            if has_entries {
                Err(EmbeddedError::NotACluster {
                    data_dir: data_dir.to_path_buf(),
                })
            } else {
                Ok(None)
            }
        }
        Err(error) => Err(EmbeddedError::Io {
            action: format!("read {}", data_dir.join("PG_VERSION").display()),
            source: error,
        }),
    }
}

/// The major version of the binaries, from `postgres --version` ("postgres (PostgreSQL) 15.4 ...").
async fn binaries_major_version(bin_dir: &Path) -> Result<String, EmbeddedError> {
    let postgres = bin_dir.join("postgres");
    let action = format!("run {} --version", postgres.display());
    let mut command = Command::new(&postgres);
    command.arg("--version");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|join_error| io::Error::other(join_error.to_string()))
        .and_then(|output| output)
        .map_err(EmbeddedError::io(action.clone()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_once(") ")
        .map(|(_, version)| {
            version
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|major| !major.is_empty())
        .ok_or_else(|| EmbeddedError::Io {
            action,
            source: io::Error::other(format!("unexpected output {:?}", text.trim())),
        })
}

/// Runs initdb into a hidden sibling directory and renames it into place, so a run killed
/// halfway never leaves a half-made cluster that would later look reusable. A data directory
/// that already exists (empty) is initialized in place instead: it may be a mount point.
async fn init_cluster(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<&ServerUser>,
    fsync: bool,
) -> Result<(), EmbeddedError> {
    let parent = data_dir.parent().unwrap_or(Path::new("/"));
    create_parents(parent, run_as)?;
    let in_place = data_dir.exists();
    let target = if in_place {
        data_dir.to_path_buf()
    } else {
        let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
        let staging = parent.join(format!(".{name}.initdb"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(EmbeddedError::io(format!(
                "remove leftover {}",
                staging.display()
            )))?;
        }
        staging
    };
    // We create the directory ourselves so that, under root, it can sit in a directory the
    // server user may not write to.
    create_private_dir(&target, run_as)?;

    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(&target)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
        // The C locale exists everywhere (minimal containers often lack others) and sorts
        // by bytes, which is all an event store needs.
        .arg("--locale=C");
    if !fsync {
        command.arg("--no-sync");
    }
    command
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = run_as {
        user.apply(&mut command);
    }
    tracing::info!(data_dir = %data_dir.display(), bin_dir = %bin_dir.display(), "creating a PostgreSQL cluster");
    let initdb = spawn_bound_to_process(command)
        .await
        .map_err(EmbeddedError::io(format!(
            "run {}",
            bin_dir.join("initdb").display()
        )))?;
    let output = tokio::task::spawn_blocking(move || initdb.wait_with_output())
        .await
        .map_err(|join_error| io::Error::other(join_error.to_string()))
        .and_then(|output| output)
        .map_err(EmbeddedError::io("wait for initdb"))?;
    if !output.status.success() {
        let _ = if in_place {
            Ok(())
        } else {
            fs::remove_dir_all(&target)
        };
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(EmbeddedError::InitdbFailed {
            data_dir: data_dir.to_path_buf(),
            status: output.status.to_string(),
            output: text.trim_end().to_string(),
        });
    }
    if !in_place {
        fs::rename(&target, data_dir).map_err(EmbeddedError::io(format!(
            "move the new cluster from {} to {}",
            target.display(),
            data_dir.display()
        )))?;
    }
    Ok(())
}

/// Creates the missing ancestors of `dir`, giving each to the server user under root.
fn create_parents(dir: &Path, run_as: Option<&ServerUser>) -> Result<(), EmbeddedError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.exists())
        .collect();
    for ancestor in missing.into_iter().rev() {
        match fs::create_dir(ancestor) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            other => other.map_err(EmbeddedError::io(format!(
                "create directory {}",
                ancestor.display()
            )))?,
        }
        if let Some(user) = run_as {
            user.give(ancestor)?;
        }
    }
    Ok(())
}

/// Creates `dir` (if missing) with mode 0700, owned by the server user.
fn create_private_dir(dir: &Path, run_as: Option<&ServerUser>) -> Result<(), EmbeddedError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        other => other.map_err(EmbeddedError::io(format!(
            "create directory {}",
            dir.display()
        )))?,
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(EmbeddedError::io(
        format!("restrict {} to its owner", dir.display()),
    ))?;
    if let Some(user) = run_as {
        user.give(dir)?;
    }
    Ok(())
}

/// Removes `postmaster.pid` left by a server that was killed. PostgreSQL would do that
/// itself unless the pid has since been reused by a live process; then it refuses to start.
/// A live postgres on this directory gets a moment to finish shutting down (a restart right
/// after our own parent-death signal), and is otherwise reported. So are backends the dead
/// server left behind that do not exit in that time: the lock file is only removed once
/// nothing uses the old server's shared memory any more. `exited` names a server we reaped
/// ourselves, stale whatever now runs under its pid.
async fn clear_stale_pid_file(data_dir: &Path, exited: Option<u32>) -> Result<(), EmbeddedError> {
    let pid_file = data_dir.join("postmaster.pid");
    let deadline = Instant::now() + LEFTOVER_SERVER_TIMEOUT;
    loop {
        let contents = match fs::read_to_string(&pid_file) {
            Ok(contents) => contents,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(EmbeddedError::io(format!("read {}", pid_file.display()))(
                    error,
                ))
            }
        };
        let pid = contents
            .lines()
            .next()
            .and_then(|line| line.trim().parse::<i32>().ok());
        match pid {
            Some(pid)
                if pid > 0
                    && exited.is_none_or(|exited| i64::from(exited) != i64::from(pid))
                    && is_alive(pid)
                    && is_postgres(pid) =>
            {
                if Instant::now() >= deadline {
                    return Err(EmbeddedError::AlreadyRunning {
                        pid,
                        data_dir: data_dir.to_path_buf(),
                    });
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            _ => {
                let leftovers = wait_for_server_processes_to_exit(data_dir, deadline).await;
                if !leftovers.is_empty() {
                    return Err(EmbeddedError::LeftoverProcesses {
                        pids: leftovers,
                        data_dir: data_dir.to_path_buf(),
                    });
                }
                tracing::warn!(pid_file = %pid_file.display(), "removing the lock file of a PostgreSQL server that no longer runs");
                return match fs::remove_file(&pid_file) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => Err(
                        EmbeddedError::io(format!("remove {}", pid_file.display()))(error),
                    ),
                    _ => Ok(()),
                };
            }
        }
    }
}

/// After our postmaster died: gives the backends it left behind a moment to notice and exit,
/// then kills the rest (without a postmaster they can do nothing useful, and they hold the
/// shared memory that keeps a new server from starting) and waits until they are gone.
async fn end_orphaned_backends(data_dir: &Path) -> Result<(), EmbeddedError> {
    let deadline = Instant::now() + ORPHANED_BACKENDS_TIMEOUT;
    let lingering = wait_for_server_processes_to_exit(data_dir, deadline).await;
    if lingering.is_empty() {
        return Ok(());
    }
    tracing::warn!(pids = ?lingering, data_dir = %data_dir.display(), "backends of the dead PostgreSQL server did not exit; killing them");
    for pid in &lingering {
        match kill(Pid::from_raw(*pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => {
                return Err(EmbeddedError::Io {
                    action: format!("kill leftover PostgreSQL backend (pid {pid})"),
                    source: errno.into(),
                })
            }
        }
    }
    let deadline = Instant::now() + ORPHANED_BACKENDS_TIMEOUT;
    let lingering = wait_for_server_processes_to_exit(data_dir, deadline).await;
    if lingering.is_empty() {
        Ok(())
    } else {
        Err(EmbeddedError::LeftoverProcesses {
            pids: lingering,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

/// Polls until no postgres process works in `data_dir` or `deadline` passes; returns those
/// still there.
async fn wait_for_server_processes_to_exit(data_dir: &Path, deadline: Instant) -> Vec<i32> {
    loop {
        let found = server_processes_in(data_dir);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The postgres processes whose working directory is `data_dir`: every process of a server
/// changes into its data directory, and keeps it until it exits. A zombie has no working
/// directory, and has already let go of the shared memory. Empty without /proc (not Linux):
/// PostgreSQL's own check of the shared memory then has the last word.
fn server_processes_in(data_dir: &Path) -> Vec<i32> {
    let Ok(data_dir) = fs::canonicalize(data_dir) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            is_postgres(pid)
                && fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
        })
        .collect()
}

fn is_alive(pid: i32) -> bool {
    // EPERM: it exists but belongs to another user.
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}

/// Whether `pid` runs the postgres executable. Without /proc (not Linux), assume it does.
fn is_postgres(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(command_name) => command_name.trim() == "postgres",
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_loopback_port() -> Result<u16, EmbeddedError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(EmbeddedError::io("find a free port on 127.0.0.1"))
}

/// One attempt to start the server.
struct Launch<'a> {
    bin_dir: &'a Path,
    data_dir: &'a Path,
    socket_dir: Option<&'a Path>,
    port: u16,
    /// Listen on 127.0.0.1 as well as (or instead of) the socket.
    tcp: bool,
    log_file: &'a Path,
    run_as: Option<&'a ServerUser>,
    options: &'a EmbeddedOptions,
}

impl Launch<'_> {
    async fn run(&self) -> Result<Child, EmbeddedError> {
        let log_start = fs::metadata(self.log_file)
            .map(|meta| meta.len())
            .unwrap_or(0);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_file)
            .map_err(EmbeddedError::io(format!(
                "open {}",
                self.log_file.display()
            )))?;
        if let Some(user) = self.run_as {
            user.give(self.log_file)?;
        }
        let log_for_stderr = log.try_clone().map_err(EmbeddedError::io(format!(
            "open {}",
            self.log_file.display()
        )))?;

        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for (name, value) in self.settings() {
            let mut setting = OsString::from(name);
            setting.push("=");
            setting.push(value);
            command.arg("-c").arg(setting);
        }
        command
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        if let Some(user) = self.run_as {
            user.apply(&mut command);
        }
        let mut server = spawn_bound_to_process(command)
            .await
            .map_err(EmbeddedError::io(format!(
                "run {}",
                self.bin_dir.join("postgres").display()
            )))?;
        tracing::debug!(pid = server.id(), data_dir = %self.data_dir.display(), "started postgres; waiting until it accepts connections");

        match self.wait_until_ready(&mut server).await {
            Ok(()) => {
                tracing::info!(
                    pid = server.id(),
                    data_dir = %self.data_dir.display(),
                    url = %connection_url(&connection_config(self.socket_dir, self.port, SUPERUSER)),
                    "embedded PostgreSQL is ready"
                );
                Ok(server)
            }
            Err(reason) => {
                // After SIGKILL the wait returns at once; it reaps the process.
                let _ = send_signal(&server, Signal::SIGKILL);
                let _ = server.wait();
                Err(EmbeddedError::StartFailed {
                    reason,
                    log_file: self.log_file.to_path_buf(),
                    log_tail: read_log_tail(self.log_file, log_start),
                })
            }
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        let listen_addresses = if self.tcp { "127.0.0.1" } else { "" };
        let socket_directories = self
            .socket_dir
            .map(|dir| dir.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut settings: Vec<(String, String)> = [
            ("listen_addresses", listen_addresses),
            ("unix_socket_directories", &socket_directories),
            ("unix_socket_permissions", "0700"),
            ("max_connections", "200"),
            ("shared_buffers", "128MB"),
            // Output goes to our log file; no log rotation process.
            ("logging_collector", "off"),
            ("log_destination", "stderr"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        if !self.options.fsync {
            settings.push(("fsync".into(), "off".into()));
            settings.push(("full_page_writes".into(), "off".into()));
        }
        // Later `-c` settings win, so the caller's override ours.
        settings.extend(self.options.settings.iter().cloned());
        settings
    }

    /// Connects until the server accepts; `Err` holds why it never did.
    async fn wait_until_ready(&self, server: &mut Child) -> Result<(), String> {
        let mut config = connection_config(self.socket_dir, self.port, SUPERUSER);
        config.connect_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + self.options.startup_timeout;
        let mut recovering = false;
        loop {
            match server.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!("the server exited at startup with {status}"))
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(format!("could not check on the server process: {error}"))
                }
            }
            let last_error = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    // Let the connection say goodbye instead of dropping the socket.
                    drop(client);
                    let _ = connection.await;
                    return Ok(());
                }
                Err(error) => error,
            };
            // Crash recovery replays the WAL written since the last checkpoint, which can take
            // longer than any startup timeout; the server says so while it works.
            if last_error.code() == Some(&SqlState::CANNOT_CONNECT_NOW) {
                if !recovering {
                    recovering = true;
                    tracing::info!(data_dir = %self.data_dir.display(), "PostgreSQL is starting up (recovering); waiting without a deadline");
                }
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not accept connections within {} s; last attempt: {last_error}",
                    self.options.startup_timeout.as_secs()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The last few kilobytes written to the log since `start`, from a line boundary.
fn read_log_tail(log_file: &Path, start: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(log_file)?;
        let len = file.metadata()?.len();
        let from = start.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = match (from > start, text.find('\n')) {
            (true, Some(newline)) => text[newline + 1..].to_string(),
            _ => text,
        };
        Ok(text.trim_end().to_string())
    };
    read().unwrap_or_else(|error| format!("(could not read the log: {error})"))
}

fn send_signal(server: &Child, signal: Signal) -> Result<(), Errno> {
    let pid = Pid::from_raw(server.id() as i32);
    match kill(pid, signal) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Fast shutdown (SIGINT), then immediate shutdown (SIGQUIT), then SIGKILL.
async fn shut_down(server: &mut Child) -> Result<ExitStatus, EmbeddedError> {
    let stages = [
        (Signal::SIGINT, FAST_SHUTDOWN_TIMEOUT),
        (Signal::SIGQUIT, IMMEDIATE_SHUTDOWN_TIMEOUT),
        (Signal::SIGKILL, Duration::MAX),
    ];
    for (signal, timeout) in stages {
        send_signal(server, signal).map_err(|errno| EmbeddedError::Io {
            action: format!("send {signal} to PostgreSQL (pid {})", server.id()),
            source: errno.into(),
        })?;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let exited = server.try_wait().map_err(EmbeddedError::io(format!(
                "wait for PostgreSQL (pid {}) to exit",
                server.id()
            )))?;
            if let Some(status) = exited {
                return Ok(status);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                tracing::warn!(pid = server.id(), %signal, "PostgreSQL did not exit in time; escalating");
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    unreachable!("SIGKILL has no deadline")
}

/// Spawns `command` so that the process gets SIGINT (PostgreSQL's fast shutdown; initdb
/// cleans up) when this process dies, however it dies.
///
/// The parent-death signal fires when the *thread* that forked the child exits, not the
/// process. Tokio worker and blocking threads, and the threads cargo test runs tests on,
/// come and go, so every spawn happens on one dedicated thread that lives as long as the
/// process.
async fn spawn_bound_to_process(mut command: Command) -> io::Result<Child> {
    bind_to_process(&mut command);
    // Ctrl-C in a terminal signals the whole foreground process group; with its own group the
    // server stays up until we stop it, in order, after our own shutdown.
    command.process_group(0);
    let (reply, result) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = reply.send(command.spawn());
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    result
        .await
        .map_err(|_| io::Error::other("the process spawner thread dropped the request"))?
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The sender to the spawner thread, started on first use. The thread never exits: it
/// waits on the channel, and the sender is kept in a static.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, jobs) = mpsc::channel::<SpawnJob>();
    let mut started = Ok(());
    let sender = SPAWNER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("tidemark-pg-spawner".into())
            .spawn(move || jobs.into_iter().for_each(|job| job()));
        started = spawned.map(drop);
        sender
    });
    started.map(|()| sender)
}

/// Asks the kernel to send SIGINT to the child when its parent thread dies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn bind_to_process(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, after std has switched uid
    // (which matters: a credential change clears the parent-death signal). It only makes
    // the async-signal-safe system calls prctl and getppid, and does not allocate: errors
    // are built from raw OS error codes.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // If we died between fork and prctl, the signal was missed: give up.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// No parent-death signal outside Linux: the server outlives a crashed process there.
#[cfg(not(target_os = "linux"))]
fn bind_to_process(_command: &mut Command) {}
