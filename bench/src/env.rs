//! The database under test: a server (given by URL, or the embedded cluster), a scratch
//! database created for this run and dropped after it, one fresh schema per phase so every
//! measurement starts from an empty log, and the facts about the machine and server that
//! the report quotes.

use anyhow::{bail, Context, Result};
use rand::Rng;
use tokio_postgres::{Client, Config, NoTls};

/// Connects and drives the connection on a background task.
pub async fn connect(config: &Config) -> Result<Client> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("tidemark-bench: a PostgreSQL connection failed: {error}");
        }
    });
    Ok(client)
}

/// Server settings quoted in the report.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Where the server came from (URL without password, or "embedded").
    pub origin: String,
    pub version: String,
    pub shared_buffers: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub wal_level: String,
    pub max_connections: i64,
    pub superuser_reserved_connections: i64,
}

/// The machine the run happened on.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    pub cores: usize,
    pub memory: String,
    pub cpu: String,
}

impl MachineInfo {
    pub fn detect() -> MachineInfo {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                let line = c.lines().find(|l| l.starts_with("model name"))?;
                Some(line.split_once(':')?.1.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        MachineInfo { cores, memory, cpu }
    }
}

/// The server and the scratch database of this run.
pub struct Database {
    admin: Config,
    scratch: Config,
    scratch_name: String,
    pub info: ServerInfo,
    next_schema: std::sync::atomic::AtomicUsize,
    /// Extra `options` for every connection to the scratch database (`-c name=value ...`).
    pg_options: String,
    /// Keeps an embedded cluster (and its directory) alive for the run.
    embedded: Option<crate::embedded::Embedded>,
}

/// A schema created for one phase; its tables are dropped with it.
pub struct Schema {
    pub name: String,
    /// Connection settings with `search_path` set to this schema.
    pub config: Config,
}

impl Database {
    /// Uses the server at `url`: creates a scratch database there.
    pub async fn from_url(url: &str, pg_options: &str) -> Result<Database> {
        let admin: Config = url
            .parse()
            .with_context(|| format!("parsing the database URL {}", redact(url)))?;
        Database::create(admin, redact(url), None, pg_options).await
    }

    /// Starts a private cluster from the installed PostgreSQL binaries.
    pub async fn embedded(pg_options: &str) -> Result<Database> {
        let embedded = crate::embedded::Embedded::start().await?;
        let admin = embedded.admin_config();
        let origin = embedded.describe();
        Database::create(admin, origin, Some(embedded), pg_options).await
    }

    async fn create(
        admin: Config,
        origin: String,
        embedded: Option<crate::embedded::Embedded>,
        pg_options: &str,
    ) -> Result<Database> {
        let client = connect(&admin)
            .await
            .with_context(|| format!("connecting to {origin}"))?;
        let scratch_name = format!("tidemark_bench_{:08x}", rand::rng().random::<u32>());
        client
            .batch_execute(&format!("CREATE DATABASE {scratch_name}"))
            .await
            .with_context(|| format!("creating the scratch database {scratch_name}"))?;
        let mut scratch = admin.clone();
        scratch.dbname(&scratch_name);
        let info = server_info(&client, origin).await?;
        Ok(Database {
            admin,
            scratch,
            scratch_name,
            info,
            next_schema: std::sync::atomic::AtomicUsize::new(1),
            pg_options: pg_options.to_string(),
            embedded,
        })
    }

    /// The embedded cluster's postmaster pid (for its CPU time); `None` with a URL.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.embedded.as_ref().and_then(|e| e.pid())
    }

    pub fn scratch_name(&self) -> &str {
        &self.scratch_name
    }

    /// Drops the scratch database (and stops the embedded cluster, if any).
    pub async fn drop_scratch(self) -> Result<()> {
        let client = connect(&self.admin).await?;
        // Databases of phases that failed before dropping theirs.
        let left: Vec<String> = client
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
                &[&format!("{}_", self.scratch_name)],
            )
            .await
            .context("listing the run's databases")?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for name in left {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .with_context(|| format!("dropping the database {name}"))?;
        }
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.scratch_name
            ))
            .await
            .with_context(|| format!("dropping the scratch database {}", self.scratch_name))?;
        drop(client);
        if let Some(embedded) = self.embedded {
            embedded.stop().await?;
        }
        Ok(())
    }

    /// A new empty schema in the scratch database, named after `label`.
    pub async fn fresh_schema(&self, label: &str) -> Result<Schema> {
        let n = self
            .next_schema
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("p{n:02}_{label}");
        let client = connect(&self.scratch).await?;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .with_context(|| format!("creating schema {name}"))?;
        let mut config = self.scratch.clone();
        config.options(format!("-c search_path={name} {}", self.pg_options));
        Ok(Schema { name, config })
    }

    /// A new empty database on the server, for a phase that runs a server process (its
    /// read models live in schemas of their own, so it cannot share the scratch database).
    /// Its `public` schema is the returned [`Schema`]; drop it with [`Database::drop_database`].
    pub async fn fresh_database(&self, label: &str) -> Result<Schema> {
        let n = self
            .next_schema
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}_{n:02}_{label}", self.scratch_name);
        let client = connect(&self.admin).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let mut config = self.admin.clone();
        config.dbname(&name);
        Ok(Schema { name, config })
    }

    /// Drops a database made by [`Database::fresh_database`].
    pub async fn drop_database(&self, database: Schema) -> Result<()> {
        let client = connect(&self.admin).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                database.name
            ))
            .await
            .with_context(|| format!("dropping the database {}", database.name))?;
        Ok(())
    }

    /// Drops a phase's schema and everything in it.
    pub async fn drop_schema(&self, schema: Schema) -> Result<()> {
        let client = connect(&self.scratch).await?;
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", schema.name))
            .await
            .with_context(|| format!("dropping schema {}", schema.name))?;
        Ok(())
    }

    /// Connections this run may still open, keeping a few for the server and other users.
    pub async fn free_connections(&self) -> Result<i64> {
        let client = connect(&self.scratch).await?;
        let in_use: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_activity", &[])
            .await
            .context("counting connections in use")?
            .get(0);
        Ok(self.info.max_connections - self.info.superuser_reserved_connections - in_use - 8)
    }
}

async fn server_info(client: &Client, origin: String) -> Result<ServerInfo> {
    let setting = |name: &'static str| async move {
        let row = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .with_context(|| format!("reading the server setting {name}"))?;
        Ok::<String, anyhow::Error>(row.get(0))
    };
    let version: String = client
        .query_one("SELECT version()", &[])
        .await
        .context("reading the server version")?
        .get(0);
    let max_connections: i64 = setting("max_connections")
        .await?
        .parse()
        .context("parsing max_connections")?;
    let superuser_reserved_connections: i64 = setting("superuser_reserved_connections")
        .await?
        .parse()
        .context("parsing superuser_reserved_connections")?;
    if max_connections < 20 {
        bail!(
            "the server allows only {max_connections} connections; the benchmark needs at least 20"
        );
    }
    Ok(ServerInfo {
        origin,
        version: version
            .split(" on ")
            .next()
            .unwrap_or(version.as_str())
            .to_string(),
        shared_buffers: setting("shared_buffers").await?,
        synchronous_commit: setting("synchronous_commit").await?,
        fsync: setting("fsync").await?,
        wal_level: setting("wal_level").await?,
        max_connections,
        superuser_reserved_connections,
    })
}

/// `postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgresql://app:s3cret@db:5432/tidemark"),
            "postgresql://app:***@db:5432/tidemark"
        );
        assert_eq!(
            redact("postgresql://postgres@127.0.0.1:5432/postgres"),
            "postgresql://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(redact("host=/tmp user=x"), "host=/tmp user=x");
    }
}
