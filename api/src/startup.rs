//! [`Application`]: builds everything a server needs (listener, database, store, schema
//! registry, engine, GraphQL schema, router), then runs until a shutdown future completes. `main` and the end-to-end
//! tests start the server the same way:
//!
//! ```ignore
//! let app = Application::build(config, TidemarkApp::builder().build()).await?;
//! let port = app.port(); // with `listen` on port 0, the port picked
//! app.run_until_stopped(shutdown_signal()).await?;
//! ```
//!
//! Shutdown, in order: end subscriptions and drain (every response closes its connection,
//! `/ready` says 503) until no request has run for a moment; stop accepting connections and
//! close idle ones; let in-flight requests finish (up to `shutdown_timeout`); stop the projection engine (each lane commits
//! the batch in hand and its checkpoint); wait for background builds; drain the store's
//! append queue; stop the embedded PostgreSQL.

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::database::Database;
use crate::evolution::Evolution;
use crate::http::{self, AppState};
use crate::schema::SchemaSettings;
use crate::{Tidemark, TidemarkApp};
use anyhow::{anyhow, Context as _};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_projections::{EngineConfig, ProjectionEngine};
use tidemark_store::{EventStore, Limits, PipelineConfig, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A server ready to run: bound, connected, projections started.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    router: axum::Router,
    tidemark: Tidemark,
    database: Database,
    shutdown_timeout: Duration,
    drain_quiet: Duration,
    drain: crate::drain::Drain,
}

impl Application {
    /// Binds `config.listen`, opens the database (embedded or `DATABASE_URL`), applies
    /// migrations, starts the projections of `app` and builds the router. Fails with one
    /// clear sentence when any of that is impossible.
    pub async fn build(config: ServerConfig, app: TidemarkApp) -> anyhow::Result<Application> {
        config.validate().map_err(|message| anyhow!(message))?;
        // Before anything is started or migrated: a clash is a mistake in the code.
        app.check_graphql()?;
        crate::telemetry::prometheus();
        tracing::info!(app = app.name(), config = %config.describe(), "starting");
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;

        let database =
            Database::open_with(&config.database, config.embedded_restart.clone()).await?;
        let limits = config.limits.clone();
        let store_config = StoreConfig {
            partitions: config.partitions,
            limits: Limits {
                max_event_bytes: limits.max_event_bytes,
                max_events_per_append: limits.max_events_per_append,
                ..Limits::default()
            },
            pipeline: PipelineConfig {
                admission_budget: limits.admission_budget,
                ..PipelineConfig::default()
            },
            migrations: crate::all_migrations(),
            ..StoreConfig::default()
        };
        let store = match database
            .open_store_with_replica(
                config.max_connections,
                store_config,
                config.read_database_url.as_deref(),
            )
            .await
        {
            Ok(store) => store,
            Err(error) => {
                database.stop().await;
                return Err(error);
            }
        };
        if !config.insecure_dev && config.api_keys.is_empty() {
            warn_when_no_key_exists(&store).await;
        }
        let evolution = match Evolution::install(&store, &app).await {
            Ok(evolution) => evolution,
            Err(error) => {
                store.shutdown().await;
                database.stop().await;
                return Err(anyhow!("cannot open the schema registry: {error}"));
            }
        };
        // Projections read through the upcasting handle: they see every event as the
        // latest version of its type.
        let engine = ProjectionEngine::new(
            evolution.upcasting.clone(),
            app.registry().clone(),
            EngineConfig {
                pool: config.worker_pool.clone(),
                address: Some(address.to_string()),
                lease_ttl: config.lease_ttl,
                worker_timeout: config.worker_timeout,
                ..EngineConfig::default()
            },
        );
        if config.run_projections {
            if let Err(error) = engine.start().await {
                store.shutdown().await;
                database.stop().await;
                return Err(anyhow!("cannot start the projections: {error}"));
            }
            engine.spawn_metrics_reporter(config.metrics_interval);
        }

        let tidemark = Tidemark::new(store.clone(), evolution, engine, limits.clone());
        tidemark
            .groups()
            .spawn_metrics_reporter(config.metrics_interval);
        if store.has_replica() {
            tidemark.spawn_replica_lag_reporter(config.metrics_interval);
        }
        let schema = app.schema(SchemaSettings {
            limits: limits.clone(),
            tidemark: Some(tidemark.clone()),
            ..SchemaSettings::default()
        })?;
        let auth = Authenticator::new(
            config.insecure_dev,
            &config.api_keys,
            Some(store.pool().clone()),
        );
        if config.insecure_dev {
            tracing::warn!("--insecure-dev: authentication is OFF; every caller is admin");
        }
        let drain = crate::drain::Drain::default();
        let router = http::router(AppState {
            schema,
            auth,
            tidemark: tidemark.clone(),
            ws_permits: Arc::new(Semaphore::new(limits.max_ws_connections)),
            request_permits: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            limits,
            engine_running: config.run_projections,
            drain: drain.clone(),
            embedded: database.embedded_health(),
        });
        Ok(Application {
            listener,
            address,
            router,
            tidemark,
            database,
            shutdown_timeout: config.shutdown_timeout,
            drain_quiet: config.drain_quiet,
            drain,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The runtime handles (store, engine, command bus).
    pub fn tidemark(&self) -> &Tidemark {
        &self.tidemark
    }

    pub fn store(&self) -> &EventStore {
        self.tidemark.store()
    }

    /// Serves until `shutdown` completes, then shuts down in order (see the module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            address,
            router,
            tidemark,
            database,
            shutdown_timeout,
            drain_quiet,
            drain,
        } = self;
        tracing::info!(%address, "listening; GraphiQL at http://{address}/");
        let stopping = tokio_util::sync::CancellationToken::new();
        let signal = {
            let stopping = stopping.clone();
            let tidemark = tidemark.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: answering what arrives with Connection: close until requests stop");
                // Subscriptions and WebSockets would otherwise keep the drain waiting.
                tidemark.stop_subscriptions();
                drain.start();
                drain
                    .wait_until_quiet(drain_quiet, shutdown_timeout / 2)
                    .await;
                tracing::info!("shutting down: no new connections; closing idle ones");
                stopping.cancel();
            }
        };
        let server = axum::serve(listener, router).with_graceful_shutdown(signal);
        let mut server = tokio::spawn(async move { server.await });
        let served = tokio::select! {
            result = &mut server => Some(result),
            _ = stopping.cancelled() => None,
        };
        let served = match served {
            Some(result) => result,
            None => match tokio::time::timeout(shutdown_timeout, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        ?shutdown_timeout,
                        "in-flight requests did not finish in time; closing them"
                    );
                    server.abort();
                    Ok(Ok(()))
                }
            },
        };
        tidemark.stop_subscriptions();
        tracing::info!("stopping projections (committing checkpoints)");
        tidemark.engine().shutdown().await;
        tidemark.wait_background(shutdown_timeout).await;
        tracing::info!("draining the append queue");
        tidemark.store().shutdown().await;
        // Close idle connections before the embedded server goes, so none dies mid-way.
        tidemark.store().pool().close();
        if let Some(replica) = tidemark.store().replica_pool() {
            replica.close();
        }
        database.stop().await;
        tracing::info!("stopped");
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(anyhow!("the server failed: {error}")),
            Err(join) => Err(anyhow!("the server task failed: {join}")),
        }
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a signal sent as soon as the server says it listens
/// then stops it gracefully instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |installed: std::io::Result<tokio::signal::unix::Signal>| async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {}
                _ = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// With authentication on, no configured key and no active key stored, every request is
/// refused: say so at start, with how to make the first key, instead of leaving a new
/// operator to find out from `UNAUTHENTICATED` answers.
async fn warn_when_no_key_exists(store: &tidemark_store::EventStore) {
    match crate::auth::list_keys(store.pool()).await {
        Ok(keys) if keys.iter().all(|key| key.revoked_at.is_some()) => tracing::warn!(
            "authentication is on and there is no API key, so every request will be refused: \
             create the first one with `tidemark keys create --role admin` (same database \
             settings as this server; it prints the key once), or pass keys with \
             --api-keys / TIDEMARK_API_KEYS (`role:key`); for local development only, \
             --insecure-dev turns authentication off"
        ),
        Ok(_) => tracing::info!(
            "authentication is on: requests need an API key (`Authorization: Bearer <key>`)"
        ),
        Err(error) => tracing::warn!(%error, "could not count the stored API keys"),
    }
}
