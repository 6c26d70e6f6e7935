//! Connecting to the database named by the configuration: an existing server
//! (`DATABASE_URL`) or an embedded cluster started here, restarted by a supervisor if it
//! dies, and stopped on exit.

use crate::config::DatabaseConfig;
use anyhow::anyhow;
use tidemark_pg_embedded::{
    ClusterHealth, EmbeddedOptions, EmbeddedPostgres, RestartPolicy, SupervisedPostgres,
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
}

impl Database {
    /// Parses the URL, or starts the embedded cluster (creating it on first use) and
    /// supervises it with the default [`RestartPolicy`].
    pub async fn open(config: &DatabaseConfig) -> anyhow::Result<Database> {
        Database::open_with(config, RestartPolicy::default()).await
    }

    /// [`Database::open`], restarting a dead embedded cluster as `restart` says.
    pub async fn open_with(
        config: &DatabaseConfig,
        restart: RestartPolicy,
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
                })
            }
            DatabaseConfig::Embedded { data_dir } => {
                tracing::info!(
                    data_dir = %data_dir.display(),
                    "no DATABASE_URL: starting an embedded PostgreSQL"
                );
                // The launcher's errors are single sentences saying what to do.
                let server = EmbeddedPostgres::start(EmbeddedOptions {
                    data_dir: data_dir.clone(),
                    ..EmbeddedOptions::default()
                })
                .await
                .map_err(|error| anyhow!("{error}"))?;
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
                })
            }
        }
    }

    /// Opens the event store on this database (applying `config.migrations` when
    /// `config.migrate`; a server's database needs [`crate::all_migrations`]), with this
    /// database's TLS options.
    pub async fn open_store(
        &self,
        max_connections: usize,
        mut config: StoreConfig,
    ) -> anyhow::Result<EventStore> {
        config.tls = self.tls.clone();
        let tls = PgTls::new(&config.tls)?;
        let pool = build_pool(self.pg_config.clone(), &tls, max_connections.max(2))?;
        EventStore::open_with_pool(pool, self.pg_config.clone(), config)
            .await
            .map_err(|error| anyhow!("{error}"))
    }

    /// The embedded cluster's supervisor reports; `None` with `DATABASE_URL`.
    pub fn embedded_health(&self) -> Option<tokio::sync::watch::Receiver<ClusterHealth>> {
        self.embedded.as_ref().map(SupervisedPostgres::subscribe)
    }

    /// Stops the embedded server, if this started one.
    pub async fn stop(self) {
        if let Some(server) = self.embedded {
            if let Err(error) = server.stop().await {
                tracing::warn!(%error, "the embedded PostgreSQL did not stop cleanly");
            }
        }
    }
}
