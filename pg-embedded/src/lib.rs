//! # tidemark-pg-embedded
//!
//! A private PostgreSQL cluster run from the server binaries installed on this machine, so
//! `tidemark serve` works without `DATABASE_URL` and tests need no server. Depends on nothing
//! of Tidemark. Read in this order:
//!
//! - `cluster`: [`EmbeddedPostgres`] and its [`EmbeddedOptions`]. `start` creates the cluster
//!   on first use and reuses it afterwards (data survives restarts), starts `postgres` as a
//!   child process on a private unix socket (or a free loopback port) and waits until it
//!   accepts connections; `restart` brings a dead server back in place; `stop` shuts it down
//!   in order.
//! - `standby`: a hot standby of a running cluster ([`EmbeddedPostgres::start_standby`]),
//!   copied with `pg_basebackup -R` and streaming from it: a read replica on one machine.
//! - `running`: the record a running cluster leaves in its data directory (socket, port,
//!   pid), and [`RunningCluster::find`], with which another process (a command line next to
//!   a server) connects to that cluster instead of starting a second one.
//! - `supervisor`: [`SupervisedPostgres`] restarts the server when it dies (kill -9, the OOM
//!   killer) with bounded backoff ([`RestartPolicy`]) and reports [`ClusterHealth`]: is the
//!   database up, and is the process that runs it worth keeping.
//! - `discover`: where the binaries are ([`find_binaries`], [`BIN_DIR_ENV`]) and their major
//!   version, checked against an existing cluster's.
//! - `initdb`: creating a cluster atomically (a killed `initdb` leaves nothing reusable).
//! - `root`: run as root, the server runs as the `postgres` OS user, which must own and reach
//!   its directories.
//! - `pidfile`: the lock file and the backends a killed server left behind.
//! - `launch`: one start of the server: command line, settings, readiness, log tail.
//! - `child`: child processes spawned with a parent-death signal (the server never outlives
//!   this process) and shut down in stages.
//! - [`process`]: questions about a process by pid (alive, program, working directory, start
//!   time, the scope a pid is valid in), public for every crate that needs them.
//! - `url`: connection settings and `postgresql://` URLs ([`connection_url`]).
//! - `error`: [`EmbeddedError`], each message saying what to do.

mod child;
mod cluster;
mod discover;
mod error;
mod initdb;
mod launch;
mod pidfile;
pub mod process;
mod root;
mod running;
mod standby;
mod supervisor;
mod url;

use std::time::Duration;

pub use cluster::{EmbeddedOptions, EmbeddedPostgres};
pub use discover::find_binaries;
pub use error::EmbeddedError;
pub use running::RunningCluster;
pub use supervisor::{ClusterHealth, ClusterState, RestartPolicy, SupervisedPostgres};
pub use url::connection_url;

/// Environment variable naming the directory that holds `initdb` and `postgres`.
pub const BIN_DIR_ENV: &str = "TIDEMARK_PG_BIN";

/// The superuser role created by `initdb`, and the OS user the cluster runs as under root.
pub const SUPERUSER: &str = "postgres";

/// How often the launcher looks again at something it waits for.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
