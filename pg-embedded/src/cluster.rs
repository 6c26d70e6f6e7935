//! [`EmbeddedPostgres`]: a private cluster created on first use, started as a child process
//! on a private unix socket (or a free loopback port), restarted in place after it died, and
//! stopped in order.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

use crate::child::{send_signal, shut_down};
use crate::discover::{binaries_major_version, find_binaries_for};
use crate::error::EmbeddedError;
use crate::initdb::{init_cluster, read_cluster_version};
use crate::launch::Launch;
use crate::pidfile::{clear_stale_pid_file, end_orphaned_backends};
use crate::root::{check_owner, check_reachable_by, create_private_dir, ServerUser};
use crate::running::{remove_record, write_record, Record};
use crate::url::{connection_url, superuser_config};
use crate::SUPERUSER;

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

/// Attempts to start when the port was picked for us and someone else took it meanwhile.
const FREE_PORT_ATTEMPTS: usize = 3;

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
                    let cluster = EmbeddedPostgres {
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
                    };
                    cluster.record();
                    return Ok(cluster);
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

    /// Starts a hot standby of this running cluster in `options.data_dir`, which must be new
    /// (or empty): the data is copied with `pg_basebackup -R`, then the standby starts like
    /// any cluster, streams the primary's WAL over its socket (or 127.0.0.1) and answers
    /// read-only queries. The same binaries run it. See `standby`.
    pub async fn start_standby(
        &self,
        options: EmbeddedOptions,
    ) -> Result<EmbeddedPostgres, EmbeddedError> {
        let data_dir = std::path::absolute(&options.data_dir).map_err(EmbeddedError::io(
            format!("resolve data directory {}", options.data_dir.display()),
        ))?;
        let host = match &self.socket_dir {
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => "127.0.0.1".to_string(),
        };
        crate::standby::base_backup(
            &self.bin_dir,
            &host,
            self.port,
            &data_dir,
            self.run_as.as_ref(),
            options.fsync,
        )
        .await?;
        EmbeddedPostgres::start(EmbeddedOptions {
            data_dir,
            bin_dir: Some(self.bin_dir.clone()),
            ..options
        })
        .await
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
        self.record();
        Ok(())
    }

    /// Connection settings for database `dbname` as the superuser, over the unix socket when
    /// there is one, else over TCP on 127.0.0.1.
    pub fn connection_config(&self, dbname: &str) -> Config {
        superuser_config(self.socket_dir.as_deref(), self.port, dbname)
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
        ensure_database(self.connection_config(SUPERUSER), name).await
    }

    /// Records in the data directory how to reach the running server, for other processes
    /// (see `running`). A server that cannot be recorded still works; only attaching to it
    /// from another process does not.
    fn record(&self) {
        let Some(postmaster_pid) = self.pid() else {
            return;
        };
        let record = Record {
            postmaster_pid,
            owner_pid: std::process::id(),
            port: self.port,
            socket_dir: self.socket_dir.clone(),
        };
        if let Err(error) = write_record(&self.data_dir, &record) {
            tracing::warn!(%error, "other processes will not find this embedded PostgreSQL");
        }
        // Like every file in the data directory, readable by the server: a base backup
        // (`start_standby`) copies them all, as the server user.
        if let Some(user) = &self.run_as {
            let _ = user.give(&self.data_dir.join(crate::running::RECORD_FILE_NAME));
        }
    }

    /// Shuts the server down (fast shutdown: running transactions are rolled back) and waits
    /// for it to exit, escalating to immediate shutdown and then SIGKILL if it hangs.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.stop_in_place().await
    }

    /// [`stop`](Self::stop) for an owner that keeps the handle (the supervisor).
    pub(crate) async fn stop_in_place(&mut self) -> Result<(), EmbeddedError> {
        match self.server.take() {
            Some(mut server) => {
                // First, so no other process attaches to a server that is going away.
                remove_record(&self.data_dir, server.id());
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
            remove_record(&self.data_dir, server.id());
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

/// Creates database `name` unless it exists, connected as `admin` (safe when several callers
/// race).
pub(crate) async fn ensure_database(admin: Config, name: &str) -> Result<(), EmbeddedError> {
    let action = format!("create database {name}");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .map_err(EmbeddedError::database(action.clone()))?;
    // Lives only for this call; it ends when `client` is dropped below.
    let connection = tokio::spawn(connection);
    let result = async {
        // The server quotes the name (`%I`), so no second copy of its quoting rules
        // lives here.
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1::text),
                        format('CREATE DATABASE %I', $1::text)",
                &[&name],
            )
            .await?;
        let (exists, create): (bool, String) = (row.get(0), row.get(1));
        if !exists {
            match client.batch_execute(&create).await {
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

/// A port on 127.0.0.1 that was free a moment ago.
fn free_loopback_port() -> Result<u16, EmbeddedError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(EmbeddedError::io("find a free port on 127.0.0.1"))
}
