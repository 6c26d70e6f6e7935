//! [`ProjectionEngine`]: runs every registered projection of this process's pool, one
//! supervised lane per partition, and offers the operations around them (status, waiting
//! for a position, rebuilds, dead letters).

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::kinds::{ProjectionState, Target};
use crate::lane::{Lane, LaneExit, LaneProgress, LaneSpec};
use crate::projection::{quote_ident, ApplyContext, Projection};
use crate::registry::Registry;
use crate::scaling::{AdaptiveLimit, ScalingSignal};
use crate::status::{self, ProjectionStatus};
use crate::workers::{WorkerIdentity, WorkerInfo};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_store::backoff::Backoff;
use tidemark_store::{EventStore, Position};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs projections. Cheap to clone.
#[derive(Clone)]
pub struct ProjectionEngine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub store: EventStore,
    pub registry: Registry,
    pub config: EngineConfig,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Progress of the live lanes running in this process, by (projection, partition).
    pub lanes: Mutex<HashMap<(String, i16), watch::Receiver<LaneProgress>>>,
    /// This process in the worker registry.
    pub identity: WorkerIdentity,
    /// Projections whose live lanes may run (registered, not rebuilding for a version bump).
    pub active: Mutex<Vec<Arc<dyn Projection>>>,
    /// Bounds the partitions of each projection applying at once, so a slow projection
    /// limits only itself.
    pub limits: Mutex<HashMap<String, Arc<AdaptiveLimit>>>,
    /// Events applied by live lanes of this process (for the processing rate).
    pub processed: Arc<AtomicU64>,
    pub scaling: watch::Sender<ScalingSignal>,
    /// Wakes the lease coordinator (a projection became active).
    pub rebalance: Notify,
}

impl ProjectionEngine {
    pub fn new(store: EventStore, registry: Registry, config: EngineConfig) -> Self {
        let identity = WorkerIdentity::this_process(&config.pool, config.address.clone());
        let (scaling, _) = watch::channel(ScalingSignal {
            pool: config.pool.clone(),
            ..ScalingSignal::default()
        });
        ProjectionEngine {
            inner: Arc::new(EngineInner {
                store,
                registry,
                config,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                lanes: Mutex::new(HashMap::new()),
                identity,
                active: Mutex::new(Vec::new()),
                limits: Mutex::new(HashMap::new()),
                processed: Arc::new(AtomicU64::new(0)),
                scaling,
                rebalance: Notify::new(),
            }),
        }
    }

    /// This process's id in the worker registry.
    pub fn worker_id(&self) -> uuid::Uuid {
        self.inner.identity.id
    }

    /// The latest scaling figures of this engine's pool.
    pub fn scaling_signal(&self) -> ScalingSignal {
        self.inner.scaling.borrow().clone()
    }

    /// Every registered worker with the leases it holds.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        crate::workers::list(&self.inner.store, self.inner.config.worker_timeout).await
    }

    /// The concurrency limit of one projection's lanes in this process.
    pub(crate) fn limit_of(&self, projection: &str) -> Arc<AdaptiveLimit> {
        let mut limits = self.inner.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .entry(projection.to_string())
            .or_insert_with(|| {
                Arc::new(AdaptiveLimit::new(
                    self.inner.config.min_concurrency,
                    self.inner.config.max_concurrency,
                ))
            })
            .clone()
    }

    /// Partitions applying at once over all projections of this process (current limits).
    pub(crate) fn total_concurrency(&self) -> usize {
        let limits = self.inner.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.values().map(|l| l.current()).sum()
    }

    /// `desired_workers` per pool, from the live workers' latest heartbeats.
    pub async fn pool_scaling(&self) -> Result<Vec<crate::workers::PoolScaling>> {
        crate::workers::pool_scaling(&self.inner.store, self.inner.config.worker_timeout).await
    }

    pub(crate) fn active_projections(&self) -> Vec<Arc<dyn Projection>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Creates the lease rows of `projection` (one per partition) if missing. A new
    /// partition counts as unowned from now, not from ever.
    async fn create_leases(&self, projection: &dyn Projection) -> Result<()> {
        let client = self.inner.store.pool().get().await?;
        client
            .execute(
                "INSERT INTO projection_leases (projection, partition, expires_at)
                 SELECT $1, p, now() FROM generate_series(0, $2 - 1) AS p ON CONFLICT DO NOTHING",
                &[
                    &projection.name(),
                    &i32::from(self.inner.store.partitions()),
                ],
            )
            .await
            .map_err(EngineError::db("creating partition leases"))?;
        Ok(())
    }

    /// Lets the coordinator run lanes of `projection` (after creating its lease rows).
    async fn activate(&self, projection: &Arc<dyn Projection>) -> Result<()> {
        self.create_leases(projection.as_ref()).await?;
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(projection.clone());
        self.inner.rebalance.notify_one();
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
        // The projections it runs are published with the first heartbeat, once activated.
        crate::workers::register(self.inner.store.pool(), &self.inner.identity, &[]).await?;
        // Lease rows for the projections of other pools too: a projection of this
        // application that no process runs then shows up as unowned partitions (status,
        // metric, WARN) instead of silently staying behind.
        for projection in self.inner.registry.iter() {
            self.create_leases(projection.as_ref()).await?;
        }
        for projection in self.local_projections() {
            match self.register(&projection).await? {
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
                        let rebuilt = engine.rebuild_into_shadow(&projection, 0, crate::kinds::BuildKind::Rebuild, None).await;
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
        let coordinator = crate::lease::Coordinator::new(self.clone())?;
        self.inner.tasks.spawn(coordinator.run());
        Ok(())
    }

    /// Records the projection and creates its read model on first run.
    async fn register(&self, projection: &Arc<dyn Projection>) -> Result<Registration> {
        let mut client = self.inner.store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("registering a projection"))?;
        let schema = projection.schema();
        let inserted = tx
            .execute(
                "INSERT INTO projections (name, version, schema_name) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
                &[&projection.name(), &projection.version(), &schema],
            )
            .await
            .map_err(EngineError::db("registering a projection"))?;
        let live: i32 = tx
            .query_one(
                "SELECT version FROM projections WHERE name = $1 FOR UPDATE",
                &[&projection.name()],
            )
            .await
            .map_err(EngineError::db("reading a projection"))?
            .get(0);
        if inserted == 1 {
            create_schema(&tx, projection.as_ref(), &schema).await?;
        }
        tx.commit()
            .await
            .map_err(EngineError::db("registering a projection"))?;
        Ok(if live == projection.version() {
            Registration::Current
        } else {
            Registration::VersionChanged { live }
        })
    }

    /// Spawns a supervised live lane; it ends when `stop` is cancelled or it is fenced.
    pub(crate) fn spawn_lane(
        &self,
        projection: Arc<dyn Projection>,
        partition: i16,
        fence: Fence,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (progress, progress_rx) = watch::channel(LaneProgress::default());
        let name = projection.name().to_string();
        let own_progress = progress_rx.clone();
        self.lanes_mut()
            .insert((name.clone(), partition), progress_rx);
        let processed = self.inner.processed.clone();
        let lane = Lane {
            spec: LaneSpec {
                schema: projection.schema(),
                projection,
                target: Target::Live,
                partition: Some(partition),
                until: None,
            },
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            fence,
            progress,
            on_commit: Some(Arc::new(move |applied, _| {
                processed.fetch_add(applied as u64, Ordering::Relaxed);
            })),
            permits: Some(self.limit_of(&name).semaphore()),
        };
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            engine.supervise(lane, stop).await;
            // A newer lane of the same partition (re-claimed while this one was ending)
            // keeps its entry.
            let mut lanes = engine.lanes_mut();
            if lanes
                .get(&(name.clone(), partition))
                .is_some_and(|current| current.same_channel(&own_progress))
            {
                lanes.remove(&(name, partition));
            }
        })
    }

    /// Keeps a lane running: restarts it after errors and panics, pauses it while its
    /// projection is stopped on a poison event.
    async fn supervise(&self, lane: Lane, stop: CancellationToken) {
        let lane = Arc::new(lane);
        let mut backoff = Backoff::new(self.inner.config.retry_base, self.inner.config.retry_max);
        loop {
            let checkpoint_before = lane.progress.borrow().checkpoint;
            let running = lane.clone();
            let token = stop.clone();
            let outcome = tokio::spawn(async move { running.run(token).await }).await;
            if lane.progress.borrow().checkpoint > checkpoint_before {
                // It made progress before failing: a new incident, not a repeat.
                backoff.reset();
            }
            match outcome {
                Ok(Ok(LaneExit::Shutdown | LaneExit::ReachedEnd | LaneExit::Fenced)) => return,
                Ok(Ok(LaneExit::Stopped)) => {
                    if !self
                        .wait_until_resumed(lane.spec.projection.name(), &stop)
                        .await
                    {
                        return;
                    }
                }
                Ok(Err(EngineError::ShuttingDown)) => return,
                Ok(Err(error)) => {
                    tracing::error!(projection = lane.spec.projection.name(), partition = ?lane.spec.partition, %error, "lane failed; restarting");
                }
                Err(join_error) => {
                    tracing::error!(projection = lane.spec.projection.name(), partition = ?lane.spec.partition, %join_error, "lane panicked; restarting from its checkpoint");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Waits until an operator resumes a stopped projection (by replaying its parked events).
    async fn wait_until_resumed(&self, name: &str, stop: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.inner.store.config().poll_interval) => {}
            }
            let Ok(client) = self.inner.store.pool().get().await else {
                continue;
            };
            if let Ok(row) = client
                .query_one("SELECT status FROM projections WHERE name = $1", &[&name])
                .await
            {
                if row.try_get::<_, ProjectionState>(0).ok() != Some(ProjectionState::Stopped) {
                    return true;
                }
            }
        }
    }

    fn lanes_mut(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, i16), watch::Receiver<LaneProgress>>> {
        self.inner
            .lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Progress of the live lanes of `name` running in this process.
    pub fn local_progress(&self, name: &str) -> Vec<(i16, LaneProgress)> {
        let mut lanes: Vec<_> = self
            .lanes_mut()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, p), rx)| (*p, *rx.borrow()))
            .collect();
        lanes.sort_by_key(|(p, _)| *p);
        lanes
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
        let projection = self.projection(name)?.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        // A position past the head is not reached until the log gets there: wait for the
        // head first (the watch may lag the database, so ask the database before waiting).
        let mut head = self.inner.store.head_watch();
        while *head.borrow_and_update() < position {
            if self.inner.store.head_position().await? >= position {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
                _ = head.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let mut pause = Duration::from_millis(2);
        loop {
            if status::partitions_behind(&self.inner.store, projection.as_ref(), position).await?
                == 0
            {
                return Ok(true);
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits until `name` has applied everything committed when this is called.
    pub async fn run_until_caught_up(&self, name: &str, timeout: Duration) -> Result<bool> {
        let head = self.inner.store.head_position().await?;
        self.wait_for_position(name, head, timeout).await
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
        crate::dead_letter::replay(&self.inner.store, &projection, &projection.schema(), ids).await
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

enum Registration {
    Current,
    VersionChanged { live: i32 },
}

/// Creates `schema` (empty) and the projection's tables in it.
pub(crate) async fn create_schema(
    tx: &deadpool_postgres::Transaction<'_>,
    projection: &dyn Projection,
    schema: &str,
) -> Result<()> {
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
        quote_ident(schema)
    ))
    .await
    .map_err(EngineError::db("creating a read-model schema"))?;
    let ctx = ApplyContext { tx, schema };
    projection
        .setup(&ctx)
        .await
        .map_err(|source| EngineError::Projection {
            projection: projection.name().to_string(),
            phase: "setting up its read model",
            position: 0,
            source,
        })?;
    projection
        .reset(&ctx)
        .await
        .map_err(|source| EngineError::Projection {
            projection: projection.name().to_string(),
            phase: "resetting",
            position: 0,
            source,
        })?;
    Ok(())
}
