//! [`ProjectionEngine`]: runs every registered projection of this process's pool, one
//! supervised lane per partition, and offers the operations around them (status, waiting
//! for a position, rebuilds, dead letters).
//!
//! The engine is a facade over parts with narrow interfaces: `registration` (the worker and
//! the projections at start), `supervisor` (the live lanes), `lease` (the coordinator that
//! claims partitions and starts their lanes through the supervisor, driven by the engine
//! through its handle), `waits` (read-your-writes) and `scaling` (the arithmetic of the
//! scaling signal).

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::lane::{Lane, LaneProgress};
use crate::lease::{Coordinator, CoordinatorHandle, Setup};
use crate::projection::Projection;
use crate::registration::{self, Registration};
use crate::registry::Registry;
use crate::scaling::ScalingSignal;
use crate::spec::LaneSpec;
use crate::status::{self, ProjectionStatus};
use crate::supervisor::Supervisor;
use crate::workers::{WorkerIdentity, WorkerInfo};
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::{EventStore, Position};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs projections. Cheap to clone.
#[derive(Clone)]
pub struct ProjectionEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    store: EventStore,
    registry: Registry,
    config: EngineConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// This process in the worker registry.
    identity: WorkerIdentity,
    supervisor: Supervisor,
    coordinator: CoordinatorHandle,
}

impl ProjectionEngine {
    pub fn new(store: EventStore, registry: Registry, config: EngineConfig) -> Self {
        // Everything the engine reads is on the primary except the events its lanes fetch,
        // which go to the store's replica when it has one (see `lane`).
        let store = store.on_primary();
        let identity = WorkerIdentity::this_process(&config.pool, config.address.clone());
        let tasks = TaskTracker::new();
        let supervisor = Supervisor::new(store.clone(), config.clone(), tasks.clone());
        let coordinator = CoordinatorHandle::new(&config.pool);
        ProjectionEngine {
            inner: Arc::new(EngineInner {
                store,
                registry,
                config,
                shutdown: CancellationToken::new(),
                tasks,
                identity,
                supervisor,
                coordinator,
            }),
        }
    }

    /// This process's id in the worker registry.
    pub fn worker_id(&self) -> uuid::Uuid {
        self.inner.identity.id
    }

    /// The latest scaling figures of this engine's pool.
    pub fn scaling_signal(&self) -> ScalingSignal {
        self.inner.coordinator.scaling_signal()
    }

    /// Every registered worker with the leases it holds.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        crate::workers::list(&self.inner.store, self.inner.config.worker_timeout).await
    }

    /// `desired_workers` per pool, from the live workers' latest heartbeats.
    pub async fn pool_scaling(&self) -> Result<Vec<crate::workers::PoolScaling>> {
        crate::workers::pool_scaling(&self.inner.store, self.inner.config.worker_timeout).await
    }

    /// Lets the coordinator run lanes of `projection` (after creating its lease rows).
    async fn activate(&self, projection: &Arc<dyn Projection>) -> Result<()> {
        registration::create_leases(&self.inner.store, projection.as_ref()).await?;
        self.inner.coordinator.activate(projection.clone());
        Ok(())
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The projection called `name`.
    pub fn projection(&self, name: &str) -> Result<&Arc<dyn Projection>> {
        self.inner
            .registry
            .get(name)
            .ok_or_else(|| EngineError::UnknownProjection(name.to_string()))
    }

    /// Projections that run in this engine's pool.
    pub fn local_projections(&self) -> Vec<Arc<dyn Projection>> {
        self.inner
            .registry
            .iter()
            .filter(|p| p.pool() == self.inner.config.pool)
            .cloned()
            .collect()
    }

    /// Prepares every projection of this pool (creating read models on first run; a bumped
    /// version is rebuilt in the background while the old read model keeps serving) and starts
    /// one lane per partition. Returns once the lanes are started.
    pub async fn start(&self) -> Result<()> {
        registration::register_worker(&self.inner.store, &self.inner.identity).await?;
        // Lease rows for the projections of other pools too: a projection of this
        // application that no process runs then shows up as unowned partitions (status,
        // metric, WARN) instead of silently staying behind.
        for projection in self.inner.registry.iter() {
            registration::create_leases(&self.inner.store, projection.as_ref()).await?;
        }
        for projection in self.local_projections() {
            crate::metrics::register_counters(projection.name());
            let registered =
                registration::register_projection(&self.inner.store, projection.as_ref()).await?;
            match registered {
                Registration::Current => self.activate(&projection).await?,
                Registration::VersionChanged { live } => {
                    tracing::info!(
                        projection = projection.name(),
                        from = live,
                        to = projection.version(),
                        "version bumped; rebuilding"
                    );
                    let engine = self.clone();
                    self.inner.tasks.spawn(async move {
                        let rebuilt = engine.rebuild(projection.name(), None).await;
                        match rebuilt.and(Ok(())) {
                            Ok(()) => {
                                if let Err(error) = engine.activate(&projection).await {
                                    tracing::error!(projection = projection.name(), %error, "could not start the rebuilt projection");
                                }
                            }
                            Err(EngineError::ShuttingDown) => {}
                            Err(error) => tracing::error!(projection = projection.name(), %error, "version rebuild failed; the old read model keeps serving"),
                        }
                    });
                }
            }
        }
        let coordinator = Coordinator::new(Setup {
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            identity: self.inner.identity.clone(),
            projections: self.inner.registry.names(),
            handle: self.inner.coordinator.clone(),
            lanes: self.inner.supervisor.clone(),
            tasks: self.inner.tasks.clone(),
            shutdown: self.inner.shutdown.clone(),
        })?;
        self.inner.tasks.spawn(coordinator.run());
        Ok(())
    }

    /// Makes `name` start at `position` instead of at the beginning of the log, if it has
    /// never run (no live checkpoint yet); call before [`ProjectionEngine::start`]. Returns
    /// whether it did: `false` means the projection resumes from its own checkpoints.
    pub async fn start_from(&self, name: &str, position: Position) -> Result<bool> {
        let projection = self.projection(name)?;
        crate::checkpoint::start_live_at(&self.inner.store, projection.as_ref(), position).await
    }

    /// Progress of the live lanes of `name` running in this process.
    pub fn local_progress(&self, name: &str) -> Vec<(i16, LaneProgress)> {
        self.inner.supervisor.local_progress(name)
    }

    /// Waits until the live read model of `name` reflects every event up to `position`
    /// (whichever process runs it). Returns `false` on timeout, including when the log has
    /// not reached `position` yet.
    pub async fn wait_for_position(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> Result<bool> {
        let projection = self.projection(name)?;
        let local_lanes = self.inner.supervisor.progress_watches(name);
        crate::waits::wait_for_position(
            &self.inner.store,
            projection.as_ref(),
            position,
            timeout,
            local_lanes,
        )
        .await
    }

    /// Waits until `name` has applied everything committed when this is called.
    pub async fn run_until_caught_up(&self, name: &str, timeout: Duration) -> Result<bool> {
        let projection = self.projection(name)?;
        let local_lanes = self.inner.supervisor.progress_watches(name);
        crate::waits::wait_until_caught_up(
            &self.inner.store,
            projection.as_ref(),
            timeout,
            local_lanes,
        )
        .await
    }

    /// Status and lag of every registered projection.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>> {
        let mut all = Vec::new();
        for projection in self.inner.registry.iter() {
            all.push(
                status::projection_status(
                    &self.inner.store,
                    projection,
                    self.inner.config.lease_ttl,
                )
                .await?,
            );
        }
        Ok(all)
    }

    /// Status and lag of one projection.
    pub async fn projection_status(&self, name: &str) -> Result<ProjectionStatus> {
        status::projection_status(
            &self.inner.store,
            self.projection(name)?,
            self.inner.config.lease_ttl,
        )
        .await
    }

    /// Publishes lag figures as Prometheus metrics every `every` until shutdown.
    pub fn spawn_metrics_reporter(&self, every: Duration) {
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = engine.inner.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                crate::metrics::publish_pool(&engine.inner.store);
                if let Ok(statuses) = engine.status().await {
                    crate::metrics::publish(&statuses);
                }
            }
        });
    }

    /// Parked events of one projection, or all.
    pub async fn dead_letters(
        &self,
        projection: Option<&str>,
        include_replayed: bool,
    ) -> Result<Vec<crate::DeadLetter>> {
        crate::dead_letter::list(&self.inner.store, projection, include_replayed).await
    }

    /// Replays parked events of `name` (all, or only `ids`) into its live read model.
    pub async fn replay_parked(&self, name: &str, ids: Option<&[i64]>) -> Result<usize> {
        let projection = self.projection(name)?.clone();
        crate::lane::replay_parked(&self.inner.store, &projection, ids).await
    }

    /// Creates the read models of this pool's projections (on first run) and records them,
    /// without starting any lane: for driving lanes by hand with [`ProjectionEngine::lane`].
    pub async fn create_read_models(&self) -> Result<()> {
        for projection in self.local_projections() {
            registration::register_projection(&self.inner.store, projection.as_ref()).await?;
        }
        Ok(())
    }

    /// The live lane of `name` for one partition, to drive by hand with [`Lane::step`]:
    /// tests and tools that want each batch applied when they say so. It holds no lease; do
    /// not step a lane the engine runs.
    pub fn lane(&self, name: &str, partition: i16) -> Result<Lane> {
        let projection = self.projection(name)?.clone();
        Ok(Lane::new(
            LaneSpec::live(projection, Some(partition), self.inner.store.partitions()),
            self.inner.store.clone(),
            self.inner.config.clone(),
        ))
    }

    /// Result rows of the windowed projection `name` (see [`crate::windowed::WindowQuery`]).
    pub async fn windows(
        &self,
        name: &str,
        query: &crate::windowed::WindowQuery,
    ) -> Result<Vec<crate::windowed::WindowRow>> {
        let projection = self.projection(name)?;
        if projection.kind() != crate::kinds::ProjectionKind::Windowed {
            return Err(EngineError::NotWindowed {
                projection: name.to_string(),
            });
        }
        let client = self.inner.store.pool().get().await?;
        crate::windowed::read_rows(&client, &projection.schema(), query)
            .await
            .map_err(EngineError::db("reading window results"))
    }

    /// The lowest live checkpoint of `name`: any change its lanes commit from now on comes
    /// from events past it (a reader of changes reads up to here).
    pub async fn lowest_checkpoint(&self, name: &str) -> Result<Position> {
        let projection = self.projection(name)?;
        Ok(
            crate::checkpoint::live(&self.inner.store, projection.as_ref())
                .await?
                .iter()
                .map(|c| c.position)
                .min()
                .unwrap_or(0),
        )
    }

    /// Stops every lane after the batch in hand commits, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }
}
