//! The relay's figure (issue #13): how fast `tidemark relay` publishes a log it is behind
//! on to NATS JetStream (pipelined batches, checkpoint after every acknowledgement), over
//! the same log the counting projection catches up over, so the two rates compare.
//!
//! `TIDEMARK_BENCH_RELAY_BATCH` sets the relay's batch size (events per batch; the engine's
//! default, 1,000, otherwise) and `TIDEMARK_BENCH_RELAY_IN_FLIGHT` the batches in flight
//! (sent before the oldest is acknowledged and checkpointed; the engine's default
//! otherwise, 1 handles one batch at a time).
//!
//! NATS: `--nats-url` names a server with JetStream; without it the testkit's runner starts
//! the installed `nats-server -js` on a free port. When there is none, the row is skipped
//! with a note.

use crate::env::Schema;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_projections::EngineConfig;
use tidemark_relay::{JetStreamConfig, JetStreamSink, Relay, RelayConfig};
use tidemark_store::{EventStore, StoreConfig};
use tidemark_testkit::nats::{nats_server_path, NatsServer};

/// Where the relay publishes: a server the user named, or one started for the run.
pub enum Nats {
    External(String),
    Started(NatsServer),
}

impl Nats {
    /// The named server, or a started one; `Err` says why there is none (the row is skipped).
    pub async fn get(url: Option<&str>) -> Result<Nats, String> {
        if let Some(url) = url {
            return Ok(Nats::External(url.to_string()));
        }
        nats_server_path()?;
        NatsServer::start()
            .await
            .map(Nats::Started)
            .ok_or_else(|| "nats-server did not start".to_string())
    }

    fn url(&self) -> String {
        match self {
            Nats::External(url) => url.clone(),
            Nats::Started(server) => server.url(),
        }
    }
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Relays the whole log of `schema` (`total` events) from position 0 with the relay's
/// defaults (batches of 1000, 3 in flight) to a fresh JetStream stream, and returns how long it took
/// until the relay's checkpoint covered the log. Checks the stream holds every event, then
/// deletes it.
pub async fn catch_up(schema: &Schema, total: u64, nats: &Nats) -> Result<Duration> {
    let store = EventStore::open(
        schema.config.clone(),
        StoreConfig {
            migrations: tidemark_projections::migrations(),
            ..StoreConfig::default()
        },
    )
    .await?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let config = JetStreamConfig {
        url: nats.url(),
        stream: format!("TIDEMARK_BENCH_{}", &suffix[..12]),
        subject_prefix: format!("tidemark_bench_{}", &suffix[..12]),
        ..JetStreamConfig::default()
    };
    let sink = JetStreamSink::connect(config.clone())
        .await
        .with_context(|| format!("connecting to NATS at {}", config.url))?;
    let client = sink.client().clone();
    let relay_config = RelayConfig {
        name: format!("bench_relay_{}", &suffix[..12]),
        engine: EngineConfig {
            batch_size: env_number("TIDEMARK_BENCH_RELAY_BATCH")
                .unwrap_or(EngineConfig::default().batch_size),
            pages_in_flight: env_number("TIDEMARK_BENCH_RELAY_IN_FLIGHT")
                .unwrap_or(EngineConfig::default().pages_in_flight),
            ..EngineConfig::default()
        },
        ..RelayConfig::default()
    };
    let started = Instant::now();
    let relay = Relay::start(store.clone(), Arc::new(sink), relay_config).await?;
    anyhow::ensure!(
        relay
            .engine()
            .run_until_caught_up(relay.name(), Duration::from_secs(1800))
            .await?,
        "the relay did not catch up within 30 minutes"
    );
    let took = started.elapsed();
    relay.shutdown().await;
    store.shutdown().await;

    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(&config.stream).await?;
    let messages = stream.info().await?.state.messages;
    anyhow::ensure!(
        messages == total,
        "the stream holds {messages} messages for {total} events"
    );
    jetstream.delete_stream(&config.stream).await?;
    Ok(took)
}
