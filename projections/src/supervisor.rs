//! The supervisor of this process's live lanes: spawns a lane per claimed partition, keeps
//! it running (restarts after errors and panics, pauses it while its projection is stopped
//! on a poison event), bounds how many partitions of each projection apply at once, and
//! tracks each lane's progress and the events they applied. Lanes stop through the
//! cancellation token they were spawned with.

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::fence::Fence;
use crate::kinds::ProjectionState;
use crate::lane::{Feeds, Lane, LaneExit, LaneProgress, Restart};
use crate::lease::LaneHost;
use crate::projection::Projection;
use crate::scaling::AdaptiveLimit;
use crate::spec::LaneSpec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tidemark_store::EventStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type LaneMap = HashMap<(String, i16), watch::Receiver<LaneProgress>>;

/// Runs live lanes. Cheap to clone; clones share the lanes.
#[derive(Clone)]
pub(crate) struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    config: EngineConfig,
    /// Every lane task; the engine's shutdown waits for them.
    tasks: TaskTracker,
    /// Progress of the live lanes running in this process, by (projection, partition).
    lanes: Mutex<LaneMap>,
    /// Bounds the partitions of each projection applying at once, so a slow projection
    /// limits only itself.
    limits: Mutex<HashMap<String, Arc<AdaptiveLimit>>>,
    /// Events applied by live lanes of this process (for the processing rate).
    processed: Arc<AtomicU64>,
    /// One read per keyed (or shuffled) projection for its lanes in this process.
    feeds: Feeds,
}

impl Supervisor {
    pub fn new(store: EventStore, config: EngineConfig, tasks: TaskTracker) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                store,
                config,
                tasks,
                lanes: Mutex::new(HashMap::new()),
                limits: Mutex::new(HashMap::new()),
                processed: Arc::new(AtomicU64::new(0)),
                feeds: Feeds::default(),
            }),
        }
    }

    /// Keeps a lane running: it restarts itself after errors and panics (`Restart::Always`);
    /// here it only pauses while its projection is stopped on a poison event.
    async fn supervise(&self, lane: Lane, stop: CancellationToken) {
        let lane = Arc::new(lane);
        loop {
            match lane.run(&stop, Restart::Always).await {
                Ok(LaneExit::Stopped) => {
                    if !self
                        .wait_until_resumed(lane.spec.projection.name(), &stop)
                        .await
                    {
                        return;
                    }
                }
                Ok(LaneExit::Shutdown | LaneExit::ReachedEnd | LaneExit::Fenced) => return,
                Err(EngineError::ShuttingDown) => return,
                Err(error) => {
                    // `Restart::Always` retries every failure itself; nothing else ends it.
                    tracing::error!(lane = %lane.spec.describe(), %error, "lane ended with an error");
                    return;
                }
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

    fn lanes_mut(&self) -> MutexGuard<'_, LaneMap> {
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

    /// Watches of the progress of the live lanes of `name` running in this process (waits
    /// wake on them).
    pub fn progress_watches(&self, name: &str) -> Vec<watch::Receiver<LaneProgress>> {
        self.lanes_mut()
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, rx)| rx.clone())
            .collect()
    }

    /// The concurrency limit of one projection's lanes in this process.
    fn limit_of(&self, projection: &str) -> Arc<AdaptiveLimit> {
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
}

impl LaneHost for Supervisor {
    /// Spawns a supervised live lane; it ends when `stop` is cancelled or it is fenced.
    fn start_lane(
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
            spec: LaneSpec::live(projection, Some(partition), self.inner.store.partitions()),
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            fence,
            progress,
            on_commit: Some(Arc::new(move |applied, _| {
                processed.fetch_add(applied as u64, Ordering::Relaxed);
            })),
            permits: Some(self.limit_of(&name).semaphore()),
            feeds: Some(self.inner.feeds.clone()),
        };
        let supervisor = self.clone();
        self.inner.tasks.spawn(async move {
            supervisor.supervise(lane, stop).await;
            // A newer lane of the same partition (re-claimed while this one was ending)
            // keeps its entry.
            let mut lanes = supervisor.lanes_mut();
            if lanes
                .get(&(name.clone(), partition))
                .is_some_and(|current| current.same_channel(&own_progress))
            {
                lanes.remove(&(name, partition));
            }
        })
    }

    fn events_applied(&self) -> u64 {
        self.inner.processed.load(Ordering::Relaxed)
    }

    fn adapt_concurrency(&self, projection: &str, lagging_local_partitions: usize) {
        self.limit_of(projection).adapt(lagging_local_partitions);
    }

    /// Partitions applying at once over all projections of this process (current limits).
    fn concurrency(&self) -> usize {
        let limits = self.inner.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.values().map(|l| l.current()).sum()
    }
}
