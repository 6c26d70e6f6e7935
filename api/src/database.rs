//! Connecting to the database named by the configuration: an existing server
//! (`DATABASE_URL`) or an embedded cluster started here, restarted by a supervisor if it
//! dies, and stopped on exit.
//!
//! A command (`projections status`, `events tail`, ...) run next to a server that runs the
//! embedded cluster of the same data directory connects to that cluster (the launcher
//! records how to reach it there) and leaves it running; it starts the cluster only when
//! none runs. A second server refuses to share another process's cluster: it would lose its
//! database when that process exits.

use crate::config::DatabaseConfig;
use anyhow::anyhow;
use std::path::Path;
use tidemark_pg_embedded::{
    ClusterHealth, EmbeddedError, EmbeddedOptions, EmbeddedPostgres, RestartPolicy, RunningCluster,
    SupervisedPostgres,
};
use tidemark_store::{build_pool, EventStore, PgTls, StoreConfig, TlsOptions};

/// The database the embedded cluster serves.
pub const EMBEDDED_DATABASE: &str = "tidemark";

/// A database to use, and the supervised embedded server behind it, if any.
#[derive(Debug)]
pub struct Database {
    pub pg_config: tokio_postgres::Config,
    /// How TLS checks the server (the embedded cluster's unix socket never uses TLS).
    pub tls: TlsOptions,
    pub embedded: Option<SupervisedPostgres>,
    /// The embedded cluster another process runs, when this one attached to it.
    pub attached: Option<RunningCluster>,
}

/// Whether this process may use an embedded cluster another process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// A command: use the running cluster, start one only when none runs.
    Attach,
    /// A server: run its own cluster, supervised; refuse one another process runs.
    Own,
}

impl Database {
    /// For a command: parses the URL, or connects to the embedded cluster a running server
    /// runs on the data directory, or else starts it (creating it on first use) for the
    /// time of the command.
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Database> {
        Database::open_as(config, RestartPolicy::default(), Sharing::Attach).await
    }

    /// For a server: parses the URL, or starts the embedded cluster and supervises it,
    /// restarting it as `restart` says when it dies. Refuses a data directory whose cluster
    /// another process runs.
    pub async fn open_with(
        config: &DatabaseConfig,
        restart: RestartPolicy,
    ) -> anyhow::Result<Database> {
        Database::open_as(config, restart, Sharing::Own).await
    }

    async fn open_as(
        config: &DatabaseConfig,
        restart: RestartPolicy,
        sharing: Sharing,
    ) -> anyhow::Result<Database> {
        match config {
            DatabaseConfig::Url { url, tls } => {
                let pg_config = url.parse::<tokio_postgres::Config>().map_err(|error| {
                    anyhow!("DATABASE_URL is not a valid PostgreSQL connection string ({error})")
                })?;
                // A bad CA file is reported now, not at the first connection.
                PgTls::new(tls).map_err(|error| anyhow!("{error}"))?;
                Ok(Database {
                    pg_config,
                    tls: tls.clone(),
                    embedded: None,
                    attached: None,
                })
            }
            DatabaseConfig::Embedded { data_dir } => {
                if let Some(running) = find_running(data_dir).await? {
                    return Database::attach(running, sharing).await;
                }
                tracing::info!(
                    data_dir = %data_dir.display(),
                    "no DATABASE_URL: starting an embedded PostgreSQL"
                );
                let started = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir: data_dir.clone(),
                    ..EmbeddedOptions::default()
                })
                .await;
                let server = match started {
                    Ok(server) => server,
                    // Another process started it meanwhile: once it is up, it is recorded.
                    Err(error @ EmbeddedError::AlreadyRunning { .. }) => {
                        return match find_running(data_dir).await? {
                            Some(running) => Database::attach(running, sharing).await,
                            None => Err(anyhow!("{error}")),
                        };
                    }
                    // The launcher's errors are single sentences saying what to do.
                    Err(error) => return Err(anyhow!("{error}")),
                };
                server
                    .ensure_database(EMBEDDED_DATABASE)
                    .await
                    .map_err(|error| anyhow!("{error}"))?;
                tracing::info!(
                    data_dir = %server.data_dir().display(),
                    url = %server.url(EMBEDDED_DATABASE),
                    "embedded PostgreSQL is running"
                );
                let server = SupervisedPostgres::spawn(server, restart);
                Ok(Database {
                    pg_config: server.connection_config(EMBEDDED_DATABASE),
                    tls: TlsOptions::default(),
                    embedded: Some(server),
                    attached: None,
                })
            }
        }
    }

    async fn attach(running: RunningCluster, sharing: Sharing) -> anyhow::Result<Database> {
        if sharing == Sharing::Own {
            return Err(anyhow!(
                "the embedded PostgreSQL in {} is run by another Tidemark process (pid {}), and \
                 a server cannot share it (it would lose its database when that process \
                 exits): give this server another --data-dir, or run both on one PostgreSQL \
                 with DATABASE_URL (if that process is a command, it stops the cluster when it \
                 finishes: then start the server again)",
                running.data_dir().display(),
                running.owner_pid()
            ));
        }
        running
            .ensure_database(EMBEDDED_DATABASE)
            .await
            .map_err(|error| anyhow!("{error}"))?;
        tracing::info!(
            data_dir = %running.data_dir().display(),
            server_pid = running.owner_pid(),
            postgres_pid = running.pid(),
            "using the embedded PostgreSQL of the running server"
        );
        Ok(Database {
            pg_config: running.connection_config(EMBEDDED_DATABASE),
            tls: TlsOptions::default(),
            embedded: None,
            attached: Some(running),
        })
    }

    /// Opens the event store on this database (applying `config.migrations` when
    /// `config.migrate`; a server's database needs [`crate::all_migrations`]), with this
    /// database's TLS options.
    pub async fn open_store(
        &self,
        max_connections: usize,
        config: StoreConfig,
    ) -> anyhow::Result<EventStore> {
        self.open_store_with_replica(max_connections, config, None)
            .await
    }

    /// [`Database::open_store`] with a streaming replica at `read_url` (same TLS options)
    /// for the store's replica reads, in a pool of its own of `max_connections`.
    pub async fn open_store_with_replica(
        &self,
        max_connections: usize,
        mut config: StoreConfig,
        read_url: Option<&str>,
    ) -> anyhow::Result<EventStore> {
        config.tls = self.tls.clone();
        let tls = PgTls::new(&config.tls)?;
        let pool = build_pool(self.pg_config.clone(), &tls, max_connections.max(2))?;
        let replica = match read_url {
            Some(url) => {
                let read_config = url.parse::<tokio_postgres::Config>().map_err(|error| {
                    anyhow!("the read database URL is not a valid PostgreSQL connection string ({error})")
                })?;
                Some(build_pool(read_config, &tls, max_connections.max(2))?)
            }
            None => None,
        };
        EventStore::open_with_pools(pool, replica, self.pg_config.clone(), config)
            .await
            .map_err(|error| anyhow!("{error}"))
    }

    /// The embedded cluster's supervisor reports; `None` with `DATABASE_URL`.
    pub fn embedded_health(&self) -> Option<tokio::sync::watch::Receiver<ClusterHealth>> {
        self.embedded.as_ref().map(SupervisedPostgres::subscribe)
    }

    /// Stops the embedded server, if this started one (never one it attached to).
    pub async fn stop(self) {
        if let Some(server) = self.embedded {
            if let Err(error) = server.stop().await {
                tracing::warn!(%error, "the embedded PostgreSQL did not stop cleanly");
            }
        }
    }
}

/// The embedded cluster another process runs on `data_dir`, once it accepts connections.
async fn find_running(data_dir: &Path) -> anyhow::Result<Option<RunningCluster>> {
    RunningCluster::find(data_dir, EmbeddedOptions::default().startup_timeout)
        .await
        .map_err(|error| anyhow!("{error}"))
}
