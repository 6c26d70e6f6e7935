//! What the server needs to start: where to listen, which database, limits and auth.
//! Plain structs with defaults; the CLI fills them from flags and `TIDEMARK_*` variables,
//! tests fill them directly.

use crate::auth::ConfiguredKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tidemark_pg_embedded::RestartPolicy;
use tidemark_store::TlsOptions;

/// Where the events live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// An existing PostgreSQL server (`DATABASE_URL`; its `sslmode` says whether to
    /// encrypt), and how TLS checks the server (`--pg-ca-file`).
    Url { url: String, tls: TlsOptions },
    /// A private cluster started from the installed PostgreSQL binaries, kept in `data_dir`
    /// (database `tidemark`).
    Embedded { data_dir: PathBuf },
}

impl DatabaseConfig {
    /// An existing server at `url`, TLS (if its `sslmode` asks for it) checking nothing.
    pub fn url(url: impl Into<String>) -> DatabaseConfig {
        DatabaseConfig::Url {
            url: url.into(),
            tls: TlsOptions::default(),
        }
    }

    /// For logs: the URL without its password, or the data directory.
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Url { url, tls } => match &tls.ca_file {
                Some(ca_file) => format!("{} (CA file {})", redact_url(url), ca_file.display()),
                None => redact_url(url),
            },
            DatabaseConfig::Embedded { data_dir } => {
                format!("embedded PostgreSQL in {}", data_dir.display())
            }
        }
    }
}

/// `postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; key=value strings
/// lose their `password=` value.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|part| {
            if part.to_ascii_lowercase().starts_with("password=") {
                "password=***".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `origin` can be a CORS origin: `*`, or `scheme://host[:port]` with nothing after
/// (browsers send the `Origin` header in exactly that form, so anything else never matches).
pub fn check_cors_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let well_formed = origin.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !host.is_empty()
            && !host.contains(['/', '?', '#', ' '])
    });
    if well_formed && origin.is_ascii() {
        Ok(())
    } else {
        Err(format!(
            "{origin:?} is not an origin: write it as a browser sends it, \
             scheme://host[:port] without a path (e.g. https://app.example.com), or * for any"
        ))
    }
}

/// Limits on what one request may ask for. Every field has a command-line flag.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Most events in one `appendEvents`.
    pub max_events_per_append: usize,
    /// Largest event (data + metadata as JSON).
    pub max_event_bytes: usize,
    /// Deepest query (introspection, as GraphiQL sends it, needs about 13).
    pub max_query_depth: usize,
    /// Most complex query (each field counts 1, plus its children).
    pub max_query_complexity: usize,
    /// Most events one query page may return (`first`).
    pub max_page_size: usize,
    /// Open WebSocket connections at once.
    pub max_ws_connections: usize,
    /// Longest a request may run.
    pub request_timeout: Duration,
    /// GraphQL requests over HTTP executed at once; more wait for a turn (see
    /// `admission_budget`). Bounds the memory and CPU one burst of clients can take.
    pub max_concurrent_requests: usize,
    /// Longest a request is expected to wait before its work starts: for a turn among
    /// `max_concurrent_requests`, or in the append queue. Past it the request is refused with
    /// `OVERLOADED` and a retry hint (`Retry-After`), so a burst is answered quickly instead
    /// of queueing towards the request timeout. Zero turns admission control off.
    pub admission_budget: Duration,
    /// Longest read-your-writes wait a client may ask for.
    pub max_wait: Duration,
    /// Whether clients may read the schema by introspection (GraphiQL and schema-aware
    /// clients need it). Turn it off where the schema should not be discoverable.
    pub introspection: bool,
    /// Origins whose browser pages may call the API (CORS): exact origins such as
    /// `https://app.example.com`, or `*` for any. Empty (the default): only pages served by
    /// the server itself (GraphiQL, the dashboard) may, as browsers enforce by default.
    pub cors_origins: Vec<String>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 4 * 1024 * 1024,
            max_events_per_append: 1000,
            max_event_bytes: 1024 * 1024,
            max_query_depth: 16,
            max_query_complexity: 2000,
            max_page_size: 1000,
            max_ws_connections: 1000,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            admission_budget: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
            introspection: true,
            cors_origins: Vec::new(),
        }
    }
}

/// Everything [`crate::Application::build`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind; port 0 picks a free port (see `Application::port`).
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    /// A streaming replica (standby) of `database` for event reads: GraphQL `events`,
    /// `stream` and the `events` subscription, and the events projection lanes fetch.
    /// Appends, checkpoints, read models, read-your-writes waits, leases and consumer groups
    /// stay on `database` (see ARCHITECTURE.md). TLS as for `database`. Needs
    /// `DATABASE_URL` (a replica of an embedded cluster is not supported).
    pub read_database_url: Option<String>,
    /// Database connections (shared by the API, the append writer and projections); the
    /// read replica gets a pool of the same size.
    pub max_connections: usize,
    /// Partitions of a new store (ignored for an existing one).
    pub partitions: u16,
    /// Projection worker pool this process runs (`default` runs unpinned projections).
    pub worker_pool: String,
    /// Partition lease time to live and worker heartbeat timeout (see docs/scaling-out.md).
    pub lease_ttl: Duration,
    pub worker_timeout: Duration,
    /// Run projections in this process.
    pub run_projections: bool,
    /// Run without authentication. Only allowed when `listen` is a loopback address.
    pub insecure_dev: bool,
    /// Keys from configuration, besides those in the database.
    pub api_keys: Vec<ConfiguredKey>,
    pub limits: ApiLimits,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_timeout: Duration,
    /// On shutdown, how long no request must have run before idle keep-alive connections
    /// are closed (until then every response says `Connection: close`). Bounded by half of
    /// `shutdown_timeout`.
    pub drain_quiet: Duration,
    /// How a dead embedded cluster is restarted, and when `/health` gives up on it.
    pub embedded_restart: RestartPolicy,
    /// How often projection lag, windowed figures and pool gauges are computed for
    /// `/metrics`.
    pub metrics_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseConfig::Embedded {
                data_dir: PathBuf::from("./.tidemark/pg"),
            },
            read_database_url: None,
            max_connections: 32,
            partitions: 16,
            worker_pool: "default".into(),
            lease_ttl: Duration::from_secs(10),
            worker_timeout: Duration::from_secs(10),
            run_projections: true,
            insecure_dev: false,
            api_keys: Vec::new(),
            limits: ApiLimits::default(),
            shutdown_timeout: Duration::from_secs(30),
            drain_quiet: Duration::from_millis(300),
            embedded_restart: RestartPolicy::default(),
            metrics_interval: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    /// The effective configuration as one log line, without secrets.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        format!(
            "listen={} database={} read_database={} max_connections={} partitions={} worker_pool={} projections={} \
             auth={} configured_keys={} max_body_bytes={} max_events_per_append={} \
             max_event_bytes={} max_query_depth={} max_query_complexity={} max_page_size={} \
             max_ws_connections={} request_timeout={:?} shutdown_timeout={:?} introspection={}",
            self.listen,
            self.database.describe(),
            self.read_database_url
                .as_deref()
                .map_or_else(|| "none".to_string(), redact_url),
            self.max_connections,
            self.partitions,
            self.worker_pool,
            if self.run_projections { "on" } else { "off" },
            if self.insecure_dev {
                "OFF (insecure-dev)"
            } else {
                "api-keys"
            },
            self.api_keys.len(),
            l.max_body_bytes,
            l.max_events_per_append,
            l.max_event_bytes,
            l.max_query_depth,
            l.max_query_complexity,
            l.max_page_size,
            l.max_ws_connections,
            l.request_timeout,
            self.shutdown_timeout,
            if l.introspection { "on" } else { "off" },
        )
    }

    /// Refuses combinations that must not run, with a sentence saying why.
    pub fn validate(&self) -> Result<(), String> {
        if self.insecure_dev && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--insecure-dev turns authentication off, so it is only allowed on a loopback \
                 address (127.0.0.1 or [::1]); {} is not one. Listen on 127.0.0.1, or create an \
                 API key with `tidemark keys create --role admin` and drop --insecure-dev",
                self.listen
            ));
        }
        if self.limits.max_events_per_append == 0 || self.limits.max_page_size == 0 {
            return Err("the limits on events per append and page size must be at least 1".into());
        }
        if let Some(url) = &self.read_database_url {
            if matches!(self.database, DatabaseConfig::Embedded { .. }) {
                return Err(
                    "--read-database-url needs DATABASE_URL: the read replica is a \
                     standby of the primary server DATABASE_URL names, and the embedded \
                     PostgreSQL has none"
                        .into(),
                );
            }
            if let Err(error) = url.parse::<tokio_postgres::Config>() {
                return Err(format!(
                    "--read-database-url is not a valid PostgreSQL connection string ({error})"
                ));
            }
        }
        for origin in &self.limits.cors_origins {
            check_cors_origin(origin).map_err(|problem| format!("--cors-origin: {problem}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgresql://bob:s3cret@db:5432/x"),
            "postgresql://bob:***@db:5432/x"
        );
        assert_eq!(
            redact_url("host=db password=s3cret user=bob"),
            "host=db password=*** user=bob"
        );
    }

    #[test]
    fn insecure_dev_is_refused_off_loopback() {
        let mut config = ServerConfig {
            insecure_dev: true,
            ..ServerConfig::default()
        };
        assert!(config.validate().is_ok());
        config.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(config.validate().unwrap_err().contains("loopback"));
    }

    #[test]
    fn a_read_replica_needs_a_database_url_and_a_valid_url() {
        let mut config = ServerConfig {
            read_database_url: Some("postgresql://reader:s3cret@standby/db".into()),
            ..ServerConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("needs DATABASE_URL"));
        config.database = DatabaseConfig::url("postgresql://primary/db");
        assert_eq!(config.validate(), Ok(()));
        assert!(config
            .describe()
            .contains("read_database=postgresql://reader:***@standby/db"));
        config.read_database_url = Some("postgresql://standby:notaport/db".into());
        assert!(config.validate().unwrap_err().contains("not a valid"));
    }

    #[test]
    fn cors_origins_are_written_as_browsers_send_them() {
        for good in ["*", "https://app.example.com", "http://127.0.0.1:3000"] {
            assert_eq!(check_cors_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://",
            "http://a b",
        ] {
            let problem = check_cors_origin(bad).unwrap_err();
            assert!(problem.contains("scheme://host[:port]"), "{bad}: {problem}");
        }
        let mut config = ServerConfig::default();
        config.limits.cors_origins = vec!["https://x.example/path".into()];
        assert!(config.validate().unwrap_err().starts_with("--cors-origin"));
    }
}
