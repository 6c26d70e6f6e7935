//! The embedded PostgreSQL cluster used when no database URL is given: a throwaway cluster
//! in a temporary directory, started with the launcher of `tidemark-pg-embedded` and removed after the run.
//!
//! It runs with fsync on (commits are as durable as on a real server) and
//! `max_connections = 300`, so the raw baseline can open 256 client connections.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use tidemark_pg_embedded::{EmbeddedOptions, EmbeddedPostgres, SUPERUSER};
use tokio_postgres::Config;

/// A private cluster for one benchmark run.
pub struct Embedded {
    server: EmbeddedPostgres,
    /// Removed after the server has stopped.
    dir: tempfile::TempDir,
}

impl Embedded {
    pub async fn start() -> Result<Embedded> {
        // Reachable by the `postgres` OS user, which runs the server when we are root.
        let dir = tempfile::Builder::new()
            .prefix("tidemark-bench-")
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .context("creating a temporary directory for the embedded PostgreSQL")?;
        let options = EmbeddedOptions {
            data_dir: dir.path().join("data"),
            fsync: true,
            settings: vec![("max_connections".into(), "300".into())],
            ..EmbeddedOptions::default()
        };
        let server = EmbeddedPostgres::start(options)
            .await
            .context("starting the embedded PostgreSQL (or pass --database-url)")?;
        Ok(Embedded { server, dir })
    }

    /// Settings for the cluster's `postgres` database as the superuser.
    pub fn admin_config(&self) -> Config {
        self.server.connection_config(SUPERUSER)
    }

    /// The postmaster's pid (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn describe(&self) -> String {
        format!(
            "embedded cluster in {} (fsync on, max_connections 300)",
            self.server.data_dir().display()
        )
    }

    /// Stops the server, then removes its directory.
    pub async fn stop(self) -> Result<()> {
        self.server
            .stop()
            .await
            .context("stopping the embedded PostgreSQL")?;
        self.dir
            .close()
            .context("removing the embedded PostgreSQL's directory")
    }
}
