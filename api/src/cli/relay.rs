//! `tidemark relay`: publishes every committed event, in log order, to a NATS JetStream
//! stream (the `tidemark-relay` crate), until stopped with Ctrl-C or SIGTERM. Any number of
//! relay processes may run against one database: one holds the relay's lease and publishes,
//! the others take over when it dies. Optional `/metrics` for Prometheus. `tidemark serve
//! --relay-nats-url` runs the same relay inside a server ([`ServeRelayArgs`]).

use crate::config::DatabaseConfig;
use crate::startup::shutdown_signal;
use anyhow::{anyhow, Context};
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_projections::EngineConfig;
use tidemark_relay::{JetStreamConfig, JetStreamSink, Relay, RelayConfig, StartFrom};

/// What `relay` prints once it publishes (tests and scripts wait for it).
pub const RELAYING_LOG: &str = "Tidemark relay is publishing";

/// `tidemark relay`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// NATS server URL(s), comma-separated for a cluster, e.g. nats://127.0.0.1:4222.
    #[arg(
        long,
        env = "TIDEMARK_RELAY_NATS_URL",
        required_unless_present = "status"
    )]
    pub nats_url: Option<String>,

    /// Print the relay's status (checkpoint, lag, rate, parked events, who holds its
    /// lease) and exit, without connecting to NATS.
    #[arg(long)]
    pub status: bool,

    /// The JetStream stream to publish to; created (subjects `<prefix>.>`) if missing.
    #[arg(long, env = "TIDEMARK_RELAY_STREAM", default_value = "TIDEMARK")]
    pub stream: String,

    /// Subjects are `<prefix>.<category>.<type>` (tokens escaped, see docs/consuming-events.md).
    #[arg(
        long,
        env = "TIDEMARK_RELAY_SUBJECT_PREFIX",
        default_value = "tidemark"
    )]
    pub subject_prefix: String,

    /// Where a relay that has never run starts: `start` (the whole log), `end` (only new
    /// events), or a position (the events after it). A relay that has run resumes from its
    /// checkpoint whatever this says.
    #[arg(long, env = "TIDEMARK_RELAY_FROM", default_value = "start")]
    pub from: StartFrom,

    /// The relay's name (its checkpoint and lease); give each relay of one database to a
    /// different destination its own.
    #[arg(long, env = "TIDEMARK_RELAY_NAME", default_value = tidemark_relay::DEFAULT_RELAY_NAME)]
    pub name: String,

    /// Duplicate window of a stream the relay creates, in seconds: a re-publish within it
    /// (after a crash) is dropped by JetStream.
    #[arg(
        long,
        env = "TIDEMARK_RELAY_DUPLICATE_WINDOW_SECS",
        default_value_t = 120
    )]
    pub duplicate_window_secs: u64,

    /// Replicas of a stream the relay creates (3 or 5 on a JetStream cluster).
    #[arg(long, env = "TIDEMARK_RELAY_REPLICAS", default_value_t = 1)]
    pub replicas: usize,

    /// Events published per batch (all pipelined; the checkpoint moves past a batch once
    /// JetStream acknowledged it and every batch before it).
    #[arg(long, env = "TIDEMARK_RELAY_BATCH_SIZE", default_value_t = 1000)]
    pub batch_size: usize,

    /// Batches published before the oldest is acknowledged and checkpointed (the next ones
    /// are sent while its acknowledgement and checkpoint are pending); 1 relays one batch at
    /// a time.
    #[arg(long, env = "TIDEMARK_RELAY_BATCHES_IN_FLIGHT", default_value_t = 3)]
    pub batches_in_flight: usize,

    /// How long a publish waits for its acknowledgement before the batch is retried (ms).
    #[arg(long, env = "TIDEMARK_RELAY_ACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub ack_timeout_ms: u64,

    /// How long the relay's lease lasts without renewal (ms): a killed relay is replaced by
    /// a waiting one after at most this plus a third of it.
    #[arg(long, env = "TIDEMARK_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,

    /// Serve Prometheus metrics at http://<address>/metrics (relay lag, events published,
    /// batch latency).
    #[arg(long, env = "TIDEMARK_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The relay's flags of `tidemark serve`: with `--relay-nats-url`, the server also relays
/// (the other settings are `tidemark relay`'s defaults).
#[derive(Debug, Clone, Args)]
pub struct ServeRelayArgs {
    /// Also relay the log to NATS JetStream from this server, as `tidemark relay` does and
    /// under the same lease: of all the processes relaying one database under one relay name
    /// (servers and `tidemark relay` alike), one publishes. NATS server URL(s).
    #[arg(long = "relay-nats-url", env = "TIDEMARK_SERVE_RELAY_NATS_URL")]
    pub nats_url: Option<String>,

    /// With --relay-nats-url: the JetStream stream (as `tidemark relay --stream`).
    #[arg(
        long = "relay-stream",
        env = "TIDEMARK_RELAY_STREAM",
        default_value = "TIDEMARK"
    )]
    pub stream: String,

    /// With --relay-nats-url: the subject prefix (as `tidemark relay --subject-prefix`).
    #[arg(
        long = "relay-subject-prefix",
        env = "TIDEMARK_RELAY_SUBJECT_PREFIX",
        default_value = "tidemark"
    )]
    pub subject_prefix: String,

    /// With --relay-nats-url: the relay's name (as `tidemark relay --name`).
    #[arg(long = "relay-name", env = "TIDEMARK_RELAY_NAME", default_value = tidemark_relay::DEFAULT_RELAY_NAME)]
    pub name: String,

    /// With --relay-nats-url: where a relay that never ran starts (as `tidemark relay --from`).
    #[arg(
        long = "relay-from",
        env = "TIDEMARK_RELAY_FROM",
        default_value = "start"
    )]
    pub from: StartFrom,
}

impl ServeRelayArgs {
    /// Starts the relay over the server's `store` when `--relay-nats-url` is given, with the
    /// server's lease time to live.
    pub async fn start(
        &self,
        store: tidemark_store::EventStore,
        lease_ttl: Duration,
    ) -> anyhow::Result<Option<Relay>> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        let sink_config = JetStreamConfig {
            url: url.clone(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            ..JetStreamConfig::default()
        };
        let sink = JetStreamSink::connect(sink_config.clone())
            .await
            .map_err(|e| anyhow!(e))?;
        let config = RelayConfig {
            name: self.name.clone(),
            from: self.from,
            engine: EngineConfig {
                lease_ttl,
                worker_timeout: lease_ttl,
                ..EngineConfig::default()
            },
            ..RelayConfig::default()
        };
        let relay = Relay::start(store, Arc::new(sink), config)
            .await
            .context("starting the relay")?;
        tracing::info!(
            url = %sink_config.url,
            stream = %sink_config.stream,
            subjects = %sink_config.stream_subjects(),
            relay = relay.name(),
            "this server also relays the log to NATS JetStream"
        );
        Ok(Some(relay))
    }
}

impl RelayArgs {
    fn sink_config(&self) -> JetStreamConfig {
        JetStreamConfig {
            url: self.nats_url.clone().unwrap_or_default(),
            stream: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs.max(1)),
            replicas: self.replicas.max(1),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms.max(1)),
        }
    }

    fn relay_config(&self) -> RelayConfig {
        let lease_ttl = Duration::from_millis(self.lease_ttl_ms.max(300));
        RelayConfig {
            name: self.name.clone(),
            from: self.from,
            engine: EngineConfig {
                batch_size: self.batch_size.max(1),
                pages_in_flight: self.batches_in_flight.max(1),
                lease_ttl,
                worker_timeout: lease_ttl,
                ..EngineConfig::default()
            },
            ..RelayConfig::default()
        }
    }
}

pub async fn run(args: RelayArgs, database: &DatabaseConfig) -> anyhow::Result<()> {
    // Installed first: metrics reported before the recorder exists are lost.
    crate::telemetry::prometheus();
    super::with_store(database, |store| async move {
        if args.status {
            print_status(&args.name, &store).await
        } else {
            relay(&args, store).await
        }
    })
    .await
}

async fn relay(args: &RelayArgs, store: tidemark_store::EventStore) -> anyhow::Result<()> {
    let sink_config = args.sink_config();
    let sink = JetStreamSink::connect(sink_config.clone())
        .await
        .map_err(|e| anyhow!(e))?;
    let metrics = match args.metrics_listen {
        Some(address) => Some(serve_metrics(address).await?),
        None => None,
    };
    let relay = Relay::start(store, Arc::new(sink), args.relay_config())
        .await
        .context("starting the relay")?;
    let shutdown = shutdown_signal();
    println!(
        "{RELAYING_LOG} to {} (JetStream stream {}, subjects {}) as '{}'",
        sink_config.url,
        sink_config.stream,
        sink_config.stream_subjects(),
        relay.name()
    );
    shutdown.await;
    tracing::info!("stopping the relay (batches not yet checkpointed are published again by the next relay, and dropped as duplicates)");
    relay.shutdown().await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    Ok(())
}

/// `tidemark relay --status`.
async fn print_status(name: &str, store: &tidemark_store::EventStore) -> anyhow::Result<()> {
    let status = tidemark_relay::status(store, name).await?;
    println!(
        "relay '{}' ({}): head {}, checkpoint {}, lag {} events / {:.1} s, {:.0} events/s, {} parked",
        status.name,
        status.status,
        status.head,
        status.caught_up_to(),
        status.lag_events(),
        status.lag_seconds(),
        status.events_per_second(),
        status.parked
    );
    let timeout = Duration::from_secs(10);
    let holders: Vec<String> = tidemark_projections::workers::list(store, timeout)
        .await?
        .into_iter()
        .filter(|w| w.alive && w.projections.iter().any(|p| p == name))
        .map(|w| {
            let relaying = if w.leases.is_empty() {
                "standby"
            } else {
                "relaying"
            };
            format!("{}:{} ({relaying})", w.host, w.pid)
        })
        .collect();
    if holders.is_empty() {
        println!("no relay process is running");
    } else {
        println!("relay processes: {}", holders.join(", "));
    }
    Ok(())
}

/// Serves `/metrics` on `address` until aborted.
async fn serve_metrics(address: SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening for /metrics on {address}"))?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            match crate::telemetry::prometheus() {
                Some(handle) => {
                    handle.run_upkeep();
                    handle.render()
                }
                None => "# another metrics recorder is installed in this process\n".to_string(),
            }
        }),
    );
    println!("relay metrics at http://{}/metrics", listener.local_addr()?);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    }))
}
