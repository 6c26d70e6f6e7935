//! [`EmbeddedError`]: everything that can go wrong running an embedded cluster.

use std::io;
use std::path::PathBuf;

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
        "a PostgreSQL server (pid {pid}) already runs on data directory {} and has not recorded \
         how to reach it (it was not started by Tidemark, or is still starting): wait until it \
         is up and try again, or point DATABASE_URL at it",
        .data_dir.display()
    )]
    AlreadyRunning { pid: i32, data_dir: PathBuf },

    #[error(
        "the PostgreSQL server (pid {pid}) running on data directory {} did not accept \
         connections within {} s ({last_error}): it may be starting or recovering; see \
         postgres.log in that directory and try again",
        .data_dir.display(),
        .waited.as_secs()
    )]
    NotAnswering {
        pid: u32,
        data_dir: PathBuf,
        waited: std::time::Duration,
        last_error: String,
    },

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

    #[error(
        "pg_basebackup could not copy the primary into {} for a standby ({status}): the \
         primary needs wal_level=replica (the default) and a `replication` line in pg_hba.conf \
         that lets the superuser in (initdb's default); its output:\n{output}",
        .data_dir.display()
    )]
    BaseBackupFailed {
        data_dir: PathBuf,
        status: String,
        output: String,
    },

    #[error(
        "data directory {} for a standby already exists and is not empty: a standby is copied \
         from its primary into a new directory",
        .data_dir.display()
    )]
    StandbyDirNotEmpty { data_dir: PathBuf },

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
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
        let action = action.into();
        move |source| EmbeddedError::Io { action, source }
    }

    pub(crate) fn database(
        action: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> EmbeddedError {
        let action = action.into();
        move |source| EmbeddedError::Database { action, source }
    }
}
