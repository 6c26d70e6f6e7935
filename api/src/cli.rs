//! The `tidemark` command line (`serve`, `migrate`, `projections`, `events`, `workers`,
//! `schemas`, `groups`, `keys`, `relay`). An application binary reuses all of it with its own
//! projections and GraphQL objects:
//!
//! ```ignore
//! fn main() -> anyhow::Result<()> {
//!     tidemark_api::cli::run(TidemarkApp::builder().projection(MyProjection).build())
//! }
//! ```
//!
//! Every flag has an environment fallback (`TIDEMARK_*`, `DATABASE_URL`). Without
//! `DATABASE_URL` each command uses the embedded PostgreSQL in `--data-dir`.

mod events;
mod groups;
mod keys;
mod projections;
pub mod relay;
mod schemas;
mod workers;

use crate::auth::ConfiguredKey;
use crate::config::{ApiLimits, DatabaseConfig, ServerConfig};
use crate::database::Database;
use crate::startup::{shutdown_signal, Application};
use crate::TidemarkApp;
use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tidemark_store::StoreConfig;
use tidemark_store::TlsOptions;

/// Tidemark: an event store on PostgreSQL with projections and a GraphQL API.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Export traces (GraphQL operations, append batches and commits, projection batches)
    /// over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (traces go to its
    /// /v1/traces). Falls back to OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "TIDEMARK_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the events live. Without a URL, an embedded PostgreSQL runs in `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string, e.g. postgresql://user:pass@host:5432/db. Without it,
    /// Tidemark starts its own PostgreSQL from the installed server binaries.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Data directory of the embedded PostgreSQL (used when no database URL is given).
    #[arg(
        long,
        env = "TIDEMARK_DATA_DIR",
        default_value = "./.tidemark/pg",
        global = true
    )]
    pub data_dir: PathBuf,

    /// PEM file of the CA that must have issued the PostgreSQL server's certificate, which
    /// must also name the host in the URL (libpq's verify-full). Without it, sslmode=require
    /// encrypts without checking the server, as libpq does.
    #[arg(long, env = "TIDEMARK_PG_CA_FILE", global = true)]
    pub pg_ca_file: Option<PathBuf>,
}

impl DatabaseArgs {
    pub fn config(&self) -> DatabaseConfig {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => DatabaseConfig::Url {
                url: url.clone(),
                tls: TlsOptions {
                    ca_file: self.pg_ca_file.clone(),
                },
            },
            _ => DatabaseConfig::Embedded {
                data_dir: self.data_dir.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: GraphQL API (GraphiQL at /), projections, /health, /ready, /metrics.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect and operate projections: status, rebuilds, replays, parked events.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// Read the event log.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// List the worker processes (alive and recently gone) with the partitions each holds,
    /// and the desired number of workers per pool.
    Workers {
        /// A worker whose last heartbeat is older than this (ms) is shown as dead.
        #[arg(long, env = "TIDEMARK_WORKER_TIMEOUT_MS", default_value_t = 10_000)]
        worker_timeout_ms: u64,
    },
    /// The schema registry: register, check ("would this break?"), list, set modes.
    Schemas {
        #[command(subcommand)]
        command: schemas::SchemasCommand,
    },
    /// Consumer groups: create, list, status, parked messages and their replay, delete.
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Manage API keys (stored hashed; a new key is shown once).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Publish every committed event, in log order, to a NATS JetStream stream (one
    /// process relays at a time; see docs/consuming-events.md).
    Relay(Box<relay::RelayArgs>),
}

/// `tidemark serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:8080 to accept connections from other machines.
    #[arg(long, env = "TIDEMARK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Run WITHOUT authentication (every caller is admin), for local development only.
    /// Refused unless --listen is a loopback address.
    #[arg(long, env = "TIDEMARK_INSECURE_DEV")]
    pub insecure_dev: bool,

    /// API keys besides those in the database: comma-separated `role:key` or
    /// `role:blake3:<hex hash>` (roles: read, append, admin; keys of 16+ characters).
    #[arg(long, env = "TIDEMARK_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A streaming replica (standby) of DATABASE_URL's server for event reads: GraphQL
    /// `events`, `stream` and the `events` subscription, and the events projections fetch.
    /// Appends, checkpoints, read models and waits stay on DATABASE_URL. A reader on a
    /// lagging replica is later, never missing events (see tidemark_replica_lag_* metrics).
    #[arg(long, env = "TIDEMARK_READ_DATABASE_URL", hide_env_values = true)]
    pub read_database_url: Option<String>,

    /// Projection worker pool this process runs; `default` runs every projection not
    /// pinned to another pool.
    #[arg(long, env = "TIDEMARK_POOL", default_value = "default")]
    pub pool: String,

    /// How long a partition lease lasts without renewal, in milliseconds. A killed worker's
    /// partitions are taken over after at most this plus a third of it.
    #[arg(long, env = "TIDEMARK_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,

    /// A worker whose heartbeat is older than this (ms) is dead; its share is redistributed.
    #[arg(long, env = "TIDEMARK_WORKER_TIMEOUT_MS", default_value_t = 10_000)]
    pub worker_timeout_ms: u64,

    /// Do not run projections in this process (an API-only node).
    #[arg(long, env = "TIDEMARK_NO_PROJECTIONS")]
    pub no_projections: bool,

    /// Database connections, shared by the API, the append writer and the projections.
    #[arg(long, env = "TIDEMARK_MAX_CONNECTIONS", default_value_t = 32)]
    pub max_connections: usize,

    /// Partitions of a new store (fixed once the store exists).
    #[arg(long, env = "TIDEMARK_PARTITIONS", default_value_t = 16)]
    pub partitions: u16,

    /// Largest HTTP request body, in bytes (larger: PAYLOAD_TOO_LARGE).
    #[arg(long, env = "TIDEMARK_MAX_BODY_BYTES", default_value_t = ApiLimits::default().max_body_bytes)]
    pub max_body_bytes: usize,

    /// Most events in one append.
    #[arg(long, env = "TIDEMARK_MAX_EVENTS_PER_APPEND", default_value_t = ApiLimits::default().max_events_per_append)]
    pub max_events_per_append: usize,

    /// Largest event (data + metadata as JSON), in bytes.
    #[arg(long, env = "TIDEMARK_MAX_EVENT_BYTES", default_value_t = ApiLimits::default().max_event_bytes)]
    pub max_event_bytes: usize,

    /// Deepest GraphQL query accepted.
    #[arg(long, env = "TIDEMARK_MAX_QUERY_DEPTH", default_value_t = ApiLimits::default().max_query_depth)]
    pub max_query_depth: usize,

    /// Most complex GraphQL query accepted (roughly: the number of fields selected).
    #[arg(long, env = "TIDEMARK_MAX_QUERY_COMPLEXITY", default_value_t = ApiLimits::default().max_query_complexity)]
    pub max_query_complexity: usize,

    /// Most events one page may return (`first`).
    #[arg(long, env = "TIDEMARK_MAX_PAGE_SIZE", default_value_t = ApiLimits::default().max_page_size)]
    pub max_page_size: usize,

    /// Open WebSocket (subscription) connections at once.
    #[arg(long, env = "TIDEMARK_MAX_WS_CONNECTIONS", default_value_t = ApiLimits::default().max_ws_connections)]
    pub max_ws_connections: usize,

    /// Longest a request may run, in milliseconds.
    #[arg(long, env = "TIDEMARK_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// GraphQL requests over HTTP executed at once; more wait for a turn.
    #[arg(long, env = "TIDEMARK_MAX_CONCURRENT_REQUESTS", default_value_t = ApiLimits::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,

    /// Longest a request is expected to wait (for a turn, or in the append queue) before it
    /// is refused with OVERLOADED and a Retry-After hint, in milliseconds; 0 turns it off.
    #[arg(long, env = "TIDEMARK_ADMISSION_BUDGET_MS", default_value_t = 1_000)]
    pub admission_budget_ms: u64,

    /// Refuse GraphQL introspection (`__schema`, `__type`): the schema is not discoverable,
    /// and GraphiQL cannot show it.
    #[arg(long, env = "TIDEMARK_DISABLE_INTROSPECTION")]
    pub disable_introspection: bool,

    /// An origin whose browser pages may call the API (CORS), e.g.
    /// `https://app.example.com`; repeat it or separate with commas; `*` allows any origin.
    /// Without it, only the server's own pages may (browsers' same-origin rule).
    #[arg(
        long = "cors-origin",
        env = "TIDEMARK_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// How long shutdown waits for in-flight requests, in milliseconds.
    #[arg(long, env = "TIDEMARK_SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,

    /// On shutdown, how long no request must have run before idle keep-alive connections
    /// are closed, in milliseconds (until then answers carry `Connection: close`).
    #[arg(long, env = "TIDEMARK_DRAIN_QUIET_MS", default_value_t = 300)]
    pub drain_quiet_ms: u64,

    #[command(flatten)]
    pub relay: relay::ServeRelayArgs,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn server_config(&self, database: DatabaseConfig) -> anyhow::Result<ServerConfig> {
        let api_keys = match &self.api_keys {
            Some(text) => ConfiguredKey::parse_list(text).map_err(|e| anyhow!(e))?,
            None => Vec::new(),
        };
        Ok(ServerConfig {
            listen: self.listen,
            database,
            read_database_url: self
                .read_database_url
                .clone()
                .filter(|url| !url.trim().is_empty()),
            max_connections: self.max_connections,
            partitions: self.partitions,
            worker_pool: self.pool.clone(),
            lease_ttl: Duration::from_millis(self.lease_ttl_ms.max(300)),
            worker_timeout: Duration::from_millis(self.worker_timeout_ms.max(300)),
            run_projections: !self.no_projections,
            insecure_dev: self.insecure_dev,
            api_keys,
            limits: ApiLimits {
                max_body_bytes: self.max_body_bytes,
                max_events_per_append: self.max_events_per_append,
                max_event_bytes: self.max_event_bytes,
                max_query_depth: self.max_query_depth,
                max_query_complexity: self.max_query_complexity,
                max_page_size: self.max_page_size,
                max_ws_connections: self.max_ws_connections,
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                max_concurrent_requests: self.max_concurrent_requests.max(1),
                admission_budget: Duration::from_millis(self.admission_budget_ms),
                introspection: !self.disable_introspection,
                cors_origins: self.cors_origins.clone(),
                ..ApiLimits::default()
            },
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            drain_quiet: Duration::from_millis(self.drain_quiet_ms),
            ..ServerConfig::default()
        })
    }
}

/// For `fn main() -> ExitCode`: runs [`run`] and prints an error as one line (`error: ...`)
/// on stderr, without a backtrace.
pub fn main(app: TidemarkApp) -> std::process::ExitCode {
    match run(app) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line and runs the command for `app`. Errors come back as one line.
pub fn run(app: TidemarkApp) -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_with(cli, app)
}

/// Runs an already parsed command line (for binaries that parse their own first).
pub fn run_with(cli: Cli, app: TidemarkApp) -> anyhow::Result<()> {
    let otlp_endpoint = cli
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|endpoint| !endpoint.trim().is_empty());
    // Before the runtime: the exporter's HTTP client must not be made on it.
    let telemetry = crate::telemetry::init_telemetry("info", otlp_endpoint.as_deref(), app.name())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime
        .block_on(dispatch(cli, app))
        // One sentence, not a chain of "Caused by".
        .map_err(|error| anyhow!("{error:#}"));
    drop(runtime);
    // Sends the spans still buffered.
    telemetry.shutdown();
    result
}

async fn dispatch(cli: Cli, app: TidemarkApp) -> anyhow::Result<()> {
    let database = cli.database.config();
    match cli.command {
        Command::Serve(args) => serve(*args, database, app).await,
        Command::Migrate => migrate(&database).await,
        Command::Projections { command } => {
            with_store(&database, |store| projections::run(command, store, app)).await
        }
        Command::Events { command } => {
            with_store(&database, |store| events::run(command, store)).await
        }
        Command::Keys { command } => with_store(&database, |store| keys::run(command, store)).await,
        Command::Groups { command } => {
            with_store(&database, |store| groups::run(command, store)).await
        }
        Command::Schemas { command } => {
            with_store(&database, |store| schemas::run(command, store)).await
        }
        Command::Workers { worker_timeout_ms } => {
            let timeout = Duration::from_millis(worker_timeout_ms);
            with_store(&database, |store| workers::run(store, timeout)).await
        }
        Command::Relay(args) => relay::run(*args, &database).await,
    }
}

async fn serve(args: ServeArgs, database: DatabaseConfig, app: TidemarkApp) -> anyhow::Result<()> {
    let config = args.server_config(database)?;
    let lease_ttl = config.lease_ttl;
    let application = Application::build(config, app).await?;
    let relay = args
        .relay
        .start(application.store().clone(), lease_ttl)
        .await?;
    // Before saying where it listens: whoever reads that may stop it right away.
    let signal = shutdown_signal();
    // The relay stops first: it uses the store the server shuts down last.
    let shutdown = async move {
        signal.await;
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
    };
    println!(
        "Tidemark is listening on http://{0}/ (GraphiQL: http://{0}/, dashboard: http://{0}/ui, GraphQL: http://{0}/graphql)",
        application.address()
    );
    application.run_until_stopped(shutdown).await
}

async fn migrate(database: &DatabaseConfig) -> anyhow::Result<()> {
    let db = Database::open(database).await?;
    let result = async {
        let tls = tidemark_store::PgTls::new(&db.tls)?;
        let (mut client, connection) = tidemark_store::tls::connect(&db.pg_config, &tls).await.map_err(|e| {
            anyhow!("cannot connect to the database ({}); check DATABASE_URL and that PostgreSQL is running", tidemark_store::error::describe_postgres_error(&e))
        })?;
        let driver = tokio::spawn(connection);
        let report = tidemark_store::migrate::run(&mut client, &crate::all_migrations()).await;
        drop(client);
        let _ = driver.await;
        let report = report?;
        println!(
            "migrations applied: {:?}; already there: {:?}",
            report.applied, report.already_applied
        );
        Ok(())
    }
    .await;
    db.stop().await;
    result
}

/// Opens the store (migrating), runs `work`, and always shuts down what it started.
pub(crate) async fn with_store<F, Fut>(database: &DatabaseConfig, work: F) -> anyhow::Result<()>
where
    F: FnOnce(tidemark_store::EventStore) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let db = Database::open(database).await?;
    let config = StoreConfig {
        migrations: crate::all_migrations(),
        ..StoreConfig::default()
    };
    let store = match db.open_store(8, config).await {
        Ok(store) => store,
        Err(error) => {
            db.stop().await;
            return Err(error);
        }
    };
    let result = work(store.clone()).await;
    store.shutdown().await;
    db.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_become_a_server_config() {
        let cli = Cli::try_parse_from([
            "tidemark",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-body-bytes",
            "1000",
            "--api-keys",
            "admin:0123456789abcdef",
            "--database-url",
            "postgresql://u:p@h/d",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let config = args.server_config(cli.database.config()).unwrap();
        assert_eq!(config.limits.max_body_bytes, 1000);
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.database, DatabaseConfig::url("postgresql://u:p@h/d"));
        assert!(!config.describe().contains(":p@"));
    }

    #[test]
    fn relay_flags_parse_and_the_nats_url_is_needed_unless_only_the_status_is_asked() {
        let cli = Cli::try_parse_from([
            "tidemark",
            "relay",
            "--nats-url",
            "nats://n:4222",
            "--stream",
            "BANK",
            "--subject-prefix",
            "bank.events",
            "--from",
            "end",
        ])
        .unwrap();
        let Command::Relay(args) = cli.command else {
            panic!("not relay")
        };
        assert_eq!(args.nats_url.as_deref(), Some("nats://n:4222"));
        assert_eq!(args.stream, "BANK");
        assert_eq!(args.subject_prefix, "bank.events");
        assert_eq!(args.from, tidemark_relay::StartFrom::End);
        assert!(Cli::try_parse_from(["tidemark", "relay"]).is_err());
        assert!(Cli::try_parse_from(["tidemark", "relay", "--from", "soon", "--status"]).is_err());
        assert!(Cli::try_parse_from(["tidemark", "relay", "--status"]).is_ok());

        let cli = Cli::try_parse_from([
            "tidemark",
            "serve",
            "--relay-nats-url",
            "nats://n:4222",
            "--relay-stream",
            "BANK",
            "--relay-from",
            "42",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.relay.nats_url.as_deref(), Some("nats://n:4222"));
        assert_eq!(args.relay.stream, "BANK");
        assert_eq!(args.relay.from, tidemark_relay::StartFrom::After(42));
        let Command::Serve(args) = Cli::try_parse_from(["tidemark", "serve"]).unwrap().command
        else {
            panic!("not serve")
        };
        assert_eq!(args.relay.nats_url, None, "a server relays only when asked");
    }

    #[test]
    fn a_pg_ca_file_goes_with_the_database_url() {
        let cli = Cli::try_parse_from([
            "tidemark",
            "migrate",
            "--database-url",
            "postgresql://u@h/d?sslmode=require",
            "--pg-ca-file",
            "/etc/ssl/pg-ca.pem",
        ])
        .unwrap();
        assert_eq!(
            cli.database.config(),
            DatabaseConfig::Url {
                url: "postgresql://u@h/d?sslmode=require".into(),
                tls: TlsOptions {
                    ca_file: Some(PathBuf::from("/etc/ssl/pg-ca.pem")),
                },
            }
        );
    }
}
