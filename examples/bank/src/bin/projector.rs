//! `projector`: runs the bank's read models (account balances, category totals and the
//! windowed ones, `BankWindows`) until SIGTERM or Ctrl-C, then stops after the batches in hand commit.
//!
//! ```text
//! DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bank projector
//! ```
//!
//! Migrates the database on start. Logs go to stderr (`RUST_LOG` filters them; `info` by
//! default). Killing it at any moment is safe: each batch commits with its checkpoint, so a
//! restart resumes where the last commit left off.
//!
//! Run several to share the work (docs/scaling-out.md). Scale-out settings, all optional
//! (unset means the engine's default):
//!
//! ```text
//! TIDEMARK_POOL=critical                          run only projections pinned to this pool
//! TIDEMARK_PINNED_PROJECTION=category_totals=critical[,name=pool...]
//!                                                 pin projections to pools (give every
//!                                                 process the same pins)
//! TIDEMARK_PROJECTIONS=account_balances,category_totals
//!                                                 run only these read models (all by default)
//! TIDEMARK_LEASE_TTL_MS=10000                     partition lease lifetime
//! TIDEMARK_WORKER_TIMEOUT_MS=10000                heartbeat age after which a worker is dead
//! ```

use anyhow::Context;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tidemark_example_bank::projections::{AccountBalances, BankWindows, CategoryTotals};
use tidemark_projections::{
    ApplyContext, EngineConfig, EventSelector, FailurePolicy, Grouping, Projection,
    ProjectionEngine, ProjectionError, ProjectionKind, RecordedEvent, Registry,
};
use tidemark_store::{EventStore, StoreConfig};
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static ALLOCATOR: tidemark_api::Allocator = tidemark_api::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let url = std::env::var("DATABASE_URL")
        .context("set DATABASE_URL to the PostgreSQL database of the bank")?;
    let pg_config: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("DATABASE_URL is not a valid connection string: {url}"))?;
    // Listen before starting work, so a SIGTERM sent right after start is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;

    let store = EventStore::open(
        pg_config,
        StoreConfig {
            migrate: true,
            // The bank's database is a server's: the store's, the engine's and the API's.
            migrations: tidemark_api::all_migrations(),
            ..StoreConfig::default()
        },
    )
    .await
    .context("opening the event store")?;
    let config = engine_config()?;
    let registry = registry(&pins()?, selected()?)?;
    tracing::info!(
        pool = %config.pool,
        lease_ttl = ?config.lease_ttl,
        worker_timeout = ?config.worker_timeout,
        pools = ?registry.iter().map(|p| format!("{}={}", p.name(), p.pool())).collect::<Vec<_>>(),
        "scale-out settings"
    );
    // The projections read through the registry's upcasting, as in the bank's server.
    let evolution = tidemark_api::evolution::Evolution::install(
        &store,
        &tidemark_example_bank::app(Arc::new(tidemark_example_bank::LogAlerts)),
    )
    .await
    .context("opening the schema registry")?;
    let engine = ProjectionEngine::new(evolution.upcasting, registry, config);
    engine
        .start()
        .await
        .context("starting the projection engine")?;
    tracing::info!(projections = ?engine.registry().names(), "projector running");

    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        result = tokio::signal::ctrl_c() => {
            result.context("listening for Ctrl-C")?;
            "Ctrl-C"
        }
    };
    tracing::info!(signal, "stopping after the batches in hand commit");
    engine.shutdown().await;
    store.shutdown().await;
    tracing::info!("projector stopped");
    Ok(())
}

/// The engine's defaults with the scale-out settings of the environment.
fn engine_config() -> anyhow::Result<EngineConfig> {
    let mut config = EngineConfig::default();
    if let Some(pool) = env("TIDEMARK_POOL") {
        config.pool = pool;
    }
    if let Some(ttl) = env_millis("TIDEMARK_LEASE_TTL_MS")? {
        config.lease_ttl = ttl;
    }
    if let Some(timeout) = env_millis("TIDEMARK_WORKER_TIMEOUT_MS")? {
        config.worker_timeout = timeout;
    }
    Ok(config)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_millis(name: &str) -> anyhow::Result<Option<Duration>> {
    env(name)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .with_context(|| {
                    format!("{name} must be a positive number of milliseconds, not {v:?}")
                })
        })
        .transpose()
}

/// `TIDEMARK_PINNED_PROJECTION`: `projection=pool` pairs, comma-separated.
fn pins() -> anyhow::Result<Vec<(String, String)>> {
    let Some(spec) = env("TIDEMARK_PINNED_PROJECTION") else {
        return Ok(Vec::new());
    };
    spec.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, pool)) if !name.trim().is_empty() && !pool.trim().is_empty() => {
                Ok((name.trim().to_string(), pool.trim().to_string()))
            }
            _ => anyhow::bail!(
                "TIDEMARK_PINNED_PROJECTION takes projection=pool pairs separated by commas, not {pair:?}"
            ),
        })
        .collect()
}

/// `TIDEMARK_PROJECTIONS`: the names of the read models to run, comma-separated; `None`
/// (unset) runs them all.
fn selected() -> anyhow::Result<Option<Vec<String>>> {
    let Some(spec) = env("TIDEMARK_PROJECTIONS") else {
        return Ok(None);
    };
    let names: Vec<String> = spec
        .split(',')
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect();
    anyhow::ensure!(
        !names.is_empty(),
        "TIDEMARK_PROJECTIONS names no projection: {spec:?}"
    );
    Ok(Some(names))
}

/// The bank's read models (those `selected`, all when `None`), each in the pool it is
/// pinned to (`default` otherwise).
fn registry(pins: &[(String, String)], selected: Option<Vec<String>>) -> anyhow::Result<Registry> {
    let mut projections: Vec<Arc<dyn Projection>> =
        vec![Arc::new(AccountBalances), Arc::new(CategoryTotals)];
    projections.extend(
        BankWindows::all()
            .iter()
            .map(|windows| Arc::new(windows.projection()) as Arc<dyn Projection>),
    );
    if let Some(names) = selected {
        if let Some(unknown) = names
            .iter()
            .find(|name| !projections.iter().any(|p| p.name() == name.as_str()))
        {
            anyhow::bail!(
                "TIDEMARK_PROJECTIONS names {unknown:?}, which is not one of {:?}",
                projections.iter().map(|p| p.name()).collect::<Vec<_>>()
            );
        }
        projections.retain(|p| names.iter().any(|name| name == p.name()));
    }
    if let Some((unknown, _)) = pins
        .iter()
        .find(|(name, _)| !projections.iter().any(|p| p.name() == name))
    {
        anyhow::bail!(
            "TIDEMARK_PINNED_PROJECTION names {unknown:?}, which is not one of {:?}",
            projections.iter().map(|p| p.name()).collect::<Vec<_>>()
        );
    }
    let mut registry = Registry::new();
    for projection in projections {
        match pins.iter().find(|(name, _)| name == projection.name()) {
            Some((_, pool)) => registry.add(Arc::new(Pinned {
                inner: projection,
                pool: pool.clone(),
            })),
            None => registry.add(projection),
        }
    }
    Ok(registry)
}

/// A projection run in a named pool: the same read model, only `pool()` differs.
struct Pinned {
    inner: Arc<dyn Projection>,
    pool: String,
}

#[async_trait]
impl Projection for Pinned {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> i32 {
        self.inner.version()
    }

    fn selector(&self) -> EventSelector {
        self.inner.selector()
    }

    fn schema(&self) -> String {
        self.inner.schema()
    }

    fn pool(&self) -> &str {
        &self.pool
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.inner.failure_policy()
    }

    // A windowed projection's lanes depend on these: its events grouped by key, its status
    // reporting the watermark.
    fn grouping(&self) -> Grouping {
        self.inner.grouping()
    }

    fn kind(&self) -> ProjectionKind {
        self.inner.kind()
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        self.inner.setup(ctx).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        self.inner.apply(ctx, events).await
    }

    async fn reset(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        self.inner.reset(ctx).await
    }
}
