//! The lease coordinator: each engine's loop that heartbeats its worker entry, renews its
//! partition leases, claims its fair share of partitions from free or expired leases, and
//! gives back its excess when workers join (so partitions rebalance with few moves).
//!
//! Share: the live workers that run a projection (as their registry entries list), sorted
//! by id, split its P partitions evenly — the first `P mod n` workers take one extra. A
//! worker that does not run a projection is not counted in its share, so workers with
//! different sets of projections on one database never leave each other's partitions
//! unowned.
//!
//! Each tick also retires workers of this machine whose process has died (so a process
//! restarted after a crash takes over its previous life's partitions at once).
//!
//! The slow half runs beside it, on a task of its own (the [`Observer`]): it reports
//! partitions that no live worker has owned for longer than a lease period (log at WARN,
//! `tidemark_projection_unowned_partitions` gauge) and collects the figures of the scaling
//! signal (head, events applied, backlogs; the arithmetic is in [`crate::scaling`]). Counting
//! a large backlog on a busy database can take longer than a lease lives; on the lease loop
//! it delayed renewals until every lease expired, so no lag query may run there.
//!
//! The coordinator does not know the engine: the engine activates projections and reads
//! the scaling signal through a [`CoordinatorHandle`], and the coordinator starts lanes and
//! sizes their concurrency through [`LaneHost`] (implemented by the supervisor).

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::fence::{Fence, LeaseToken};
use crate::projection::Projection;
use crate::scaling::{Backlog, Estimator, Observation, ScalingSettings, ScalingSignal};
use crate::workers::WorkerIdentity;
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_store::EventStore;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// What the coordinator needs of whoever runs the lanes (the engine's supervisor).
pub(crate) trait LaneHost: Clone + Send + Sync + 'static {
    /// Starts a live lane of `projection`'s `partition` under `fence`; it ends when `stop`
    /// is cancelled or it is fenced.
    fn start_lane(
        &self,
        projection: Arc<dyn Projection>,
        partition: i16,
        fence: Fence,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()>;

    /// Events the live lanes of this process have applied since it started.
    fn events_applied(&self) -> u64;

    /// Resizes how many partitions of `projection` apply at once, given how many of its
    /// partitions with a backlog this worker runs.
    fn adapt_concurrency(&self, projection: &str, lagging_local_partitions: usize);

    /// Partitions that may apply at once over all projections of this process.
    fn concurrency(&self) -> usize;
}

/// The engine's side of its coordinator: it activates projections through it (their lanes
/// may then run) and reads the scaling figures back. Exists before the coordinator starts.
#[derive(Clone)]
pub(crate) struct CoordinatorHandle {
    shared: Arc<Shared>,
}

struct Shared {
    /// Projections whose live lanes may run (registered, not rebuilding for a version bump).
    active: Mutex<Vec<Arc<dyn Projection>>>,
    /// Wakes the coordinator before its next tick (a projection became active).
    wake: Notify,
    scaling: watch::Sender<ScalingSignal>,
}

impl CoordinatorHandle {
    pub fn new(pool: &str) -> Self {
        let (scaling, _) = watch::channel(ScalingSignal {
            pool: pool.to_string(),
            ..ScalingSignal::default()
        });
        CoordinatorHandle {
            shared: Arc::new(Shared {
                active: Mutex::new(Vec::new()),
                wake: Notify::new(),
                scaling,
            }),
        }
    }

    /// Lets the coordinator claim partitions of `projection` and run its lanes, now.
    pub fn activate(&self, projection: Arc<dyn Projection>) {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(projection);
        self.shared.wake.notify_one();
    }

    /// The latest scaling figures of this worker's pool.
    pub fn scaling_signal(&self) -> ScalingSignal {
        self.shared.scaling.borrow().clone()
    }

    fn active(&self) -> Vec<Arc<dyn Projection>> {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a coordinator works with, fixed for its life.
pub(crate) struct Setup<L> {
    pub store: EventStore,
    pub config: EngineConfig,
    pub identity: WorkerIdentity,
    /// Every projection of the application, of any pool: the unowned-partition report
    /// covers them all.
    pub projections: Vec<String>,
    pub handle: CoordinatorHandle,
    pub lanes: L,
    /// Background work the engine's shutdown waits for (leases given back after their lane
    /// ends).
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

struct OwnedLane {
    token: LeaseToken,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

pub(crate) struct Coordinator<L> {
    setup: Setup<L>,
    /// The coordinator's own connections: lanes blocked on locks can exhaust the shared
    /// pool, and heartbeats and renewals must not wait behind them.
    pool: Pool,
    owned: BTreeMap<(String, i16), OwnedLane>,
    /// What the observer needs to know of this loop's state, updated every tick.
    observed: Arc<Mutex<Observed>>,
}

/// How often a partition that stays unowned is reported again at WARN.
const UNOWNED_REPEAT: Duration = Duration::from_secs(60);

impl<L: LaneHost> Coordinator<L> {
    /// The coordinator renews leases on connections of its own, so that lanes holding every
    /// pooled connection cannot delay a renewal past the lease's expiry. Without them it
    /// cannot keep that promise, so it refuses to start rather than share the pool.
    pub fn new(setup: Setup<L>) -> Result<Self> {
        let pool =
            tidemark_store::build_pool(setup.store.pg_config().clone(), setup.store.tls(), 2)?;
        Ok(Coordinator {
            setup,
            pool,
            owned: BTreeMap::new(),
            observed: Arc::default(),
        })
    }

    /// Runs until the engine shuts down, then stops its lanes (each commits the batch in
    /// hand) and releases its leases so other workers take over at once.
    pub async fn run(mut self) {
        let shutdown = self.setup.shutdown.clone();
        let handle = self.setup.handle.clone();
        let every = self.setup.config.lease_ttl / 3;
        let observer = Observer {
            store: self.setup.store.clone(),
            config: self.setup.config.clone(),
            projections: self.setup.projections.clone(),
            handle: handle.clone(),
            lanes: self.setup.lanes.clone(),
            observed: self.observed.clone(),
            estimator: Estimator::default(),
            unowned_reported: BTreeMap::new(),
        };
        self.setup
            .tasks
            .spawn(observer.run(every, shutdown.clone()));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = handle.shared.wake.notified() => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "lease coordinator tick failed; retrying");
            }
        }
        let owned: Vec<_> = std::mem::take(&mut self.owned).into_iter().collect();
        for ((projection, partition), lane) in owned {
            lane.stop.cancel();
            let _ = lane.handle.await;
            let _ = self.release(&projection, partition, lane.token).await;
        }
        let _ = crate::workers::deregister(&self.pool, &self.setup.identity).await;
    }

    async fn tick(&mut self) -> Result<()> {
        let config = self.setup.config.clone();
        let me = self.setup.identity.id;
        let signal = self.setup.handle.scaling_signal();
        // Before listing the live workers: a dead previous life of this process must be
        // neither counted in any share nor left holding leases until they expire.
        if let Err(error) = retire_dead_on_this_host(&self.pool, &self.setup.identity).await {
            tracing::warn!(%error, "could not check this host's workers for dead processes");
        }
        let active = self.setup.handle.active();
        let running: Vec<String> = active.iter().map(|p| p.name().to_string()).collect();
        let live = crate::workers::heartbeat(
            &self.pool,
            &self.setup.identity,
            config.worker_timeout,
            &signal,
            &running,
        )
        .await?;
        let pool_workers = live
            .iter()
            .filter(|w| w.pool == config.pool && w.id != me)
            .count()
            + 1;

        // Renew; anything not renewed is lost (expired and maybe claimed): stop its lane.
        let renewed = self.renew(me, config.lease_ttl).await?;
        let lost: Vec<_> = self
            .owned
            .iter()
            .filter(|(key, lane)| renewed.get(*key) != Some(&lane.token.epoch))
            .map(|(key, _)| key.clone())
            .collect();
        for key in lost {
            if let Some(lane) = self.owned.remove(&key) {
                tracing::warn!(projection = %key.0, partition = key.1, "lease lost; stopping the partition");
                lane.stop.cancel();
            }
        }
        // Lanes that ended on their own (fenced) give their lease back.
        let finished: Vec<_> = self
            .owned
            .iter()
            .filter(|(_, l)| l.handle.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            if let Some(lane) = self.owned.remove(&key) {
                let _ = self.release(&key.0, key.1, lane.token).await;
            }
        }

        for projection in active {
            let name = projection.name().to_string();
            let partitions = projection.grouping().lanes(self.setup.store.partitions()) as usize;
            let mut members: Vec<Uuid> = live
                .iter()
                .filter(|w| w.id != me && w.projections.contains(&name))
                .map(|w| w.id)
                .chain(std::iter::once(me))
                .collect();
            members.sort_unstable();
            let share = fair_share(partitions, &members, me);
            let mine: Vec<i16> = self
                .owned
                .keys()
                .filter(|(p, _)| *p == name)
                .map(|(_, part)| *part)
                .collect();
            if mine.len() > share {
                // Give back the highest-numbered excess partitions, each after its lane
                // has committed the batch in hand. That wait happens off this loop: a lane
                // may be inside a long batch or waiting on a lock, and heartbeats and
                // renewals must not wait for it (the lease stays renewed until released).
                for partition in mine.iter().rev().take(mine.len() - share) {
                    if let Some(lane) = self.owned.remove(&(name.clone(), *partition)) {
                        lane.stop.cancel();
                        let pool = self.pool.clone();
                        let (name, partition) = (name.clone(), *partition);
                        self.setup.tasks.spawn(async move {
                            let _ = lane.handle.await;
                            if let Err(error) = release(&pool, &name, partition, lane.token).await {
                                tracing::warn!(projection = %name, partition, %error, "could not release a lease; it will expire");
                            }
                        });
                    }
                }
            } else if mine.len() < share {
                for (partition, epoch) in self
                    .claim(&name, me, share - mine.len(), config.lease_ttl)
                    .await?
                {
                    let token = LeaseToken { owner: me, epoch };
                    let stop = self.setup.shutdown.child_token();
                    let handle = self.setup.lanes.start_lane(
                        projection.clone(),
                        partition,
                        Fence::with_lease(token, config.lease_ttl),
                        stop.clone(),
                    );
                    self.owned.insert(
                        (name.clone(), partition),
                        OwnedLane {
                            token,
                            stop,
                            handle,
                        },
                    );
                }
            }
        }
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = Observed {
            owned: self.owned.keys().cloned().collect(),
            pool_workers,
        };
        Ok(())
    }

    async fn renew(&self, me: Uuid, ttl: Duration) -> Result<HashMap<(String, i16), i64>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "UPDATE projection_leases SET expires_at = now() + make_interval(secs => $2)
                  WHERE owner = $1 AND expires_at > now()
                 RETURNING projection, partition, epoch",
                &[&me, &ttl.as_secs_f64()],
            )
            .await
            .map_err(EngineError::db("renewing leases"))?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }

    async fn claim(
        &self,
        projection: &str,
        me: Uuid,
        count: usize,
        ttl: Duration,
    ) -> Result<Vec<(i16, i64)>> {
        let client = self.pool.get().await?;
        // SKIP LOCKED: two workers claiming at once take different partitions. NO KEY UPDATE,
        // not UPDATE: an open batch transaction of the previous owner holds KEY SHARE on the
        // row (its lease check); FOR UPDATE would conflict with it and skip the partition
        // until that transaction ends (for a paused owner: until the server ends its
        // session), whereas this claims it at expiry and the old owner's check before
        // COMMIT then sees the new epoch and refuses.
        let rows = client
            .query(
                "UPDATE projection_leases l
                    SET owner = $2, epoch = l.epoch + 1, expires_at = now() + make_interval(secs => $4)
                  WHERE (l.projection, l.partition) IN (
                        SELECT projection, partition FROM projection_leases
                         WHERE projection = $1 AND (owner IS NULL OR expires_at <= now())
                         ORDER BY partition LIMIT $3 FOR NO KEY UPDATE SKIP LOCKED)
                 RETURNING l.partition, l.epoch",
                &[&projection, &me, &(count as i64), &ttl.as_secs_f64()],
            )
            .await
            .map_err(EngineError::db("claiming leases"))?;
        let claimed: Vec<(i16, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if !claimed.is_empty() {
            tracing::info!(projection, partitions = ?claimed.iter().map(|c| c.0).collect::<Vec<_>>(), "claimed partitions");
        }
        Ok(claimed)
    }

    async fn release(&self, projection: &str, partition: i16, token: LeaseToken) -> Result<()> {
        release(&self.pool, projection, partition, token).await
    }
}

/// What the lease loop tells the observer after each tick.
#[derive(Debug, Clone, Default)]
struct Observed {
    /// The partitions this worker owns.
    owned: BTreeSet<(String, i16)>,
    /// Live workers of this worker's pool, this one included.
    pool_workers: usize,
}

/// The coordinator's slow half, on a task of its own so that nothing it waits for (a pool
/// connection, a large backlog to count) can delay a lease renewal: reports unowned
/// partitions and publishes the scaling signal, on the lease loop's cadence.
struct Observer<L> {
    store: EventStore,
    config: EngineConfig,
    projections: Vec<String>,
    handle: CoordinatorHandle,
    lanes: L,
    observed: Arc<Mutex<Observed>>,
    estimator: Estimator,
    /// Unowned partitions last reported at WARN, by projection, and when.
    unowned_reported: BTreeMap<String, (Vec<i16>, Instant)>,
}

impl<L: LaneHost> Observer<L> {
    async fn run(mut self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let observed = self
                .observed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if observed.pool_workers == 0 {
                // The lease loop has not finished its first tick yet.
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async {
                    self.update_scaling(&observed).await;
                    self.report_unowned().await;
                } => {}
            }
        }
    }

    /// Logs (at WARN, again every [`UNOWNED_REPEAT`] while it lasts) and publishes the
    /// partitions of this application's projections that no live worker has owned for
    /// longer than a lease period. Covers projections of every pool the registry knows, so
    /// any process notices a projection whose workers are all gone.
    async fn report_unowned(&mut self) {
        let lease_ttl = self.config.lease_ttl;
        let names: Vec<&str> = self.projections.iter().map(String::as_str).collect();
        let found =
            match crate::status::unowned_partitions(self.store.pool(), &names, lease_ttl).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "could not look for unowned partitions");
                    return;
                }
            };
        let mut unowned: BTreeMap<&str, Vec<i16>> = names.iter().map(|n| (*n, vec![])).collect();
        for (projection, partition) in &found {
            if let Some(list) = unowned.get_mut(projection.as_str()) {
                list.push(partition.partition);
            }
        }
        let now = Instant::now();
        for (projection, partitions) in unowned {
            metrics::gauge!("tidemark_projection_unowned_partitions", "projection" => projection.to_string())
                .set(partitions.len() as f64);
            let previous = self.unowned_reported.get(projection);
            if partitions.is_empty() {
                if previous.is_some() {
                    tracing::info!(
                        projection,
                        "every partition is owned by a live worker again"
                    );
                    self.unowned_reported.remove(projection);
                }
                continue;
            }
            let repeat = previous.is_none_or(|(reported, at)| {
                *reported != partitions || now.duration_since(*at) >= UNOWNED_REPEAT
            });
            if repeat {
                tracing::warn!(
                    projection,
                    partitions = ?partitions,
                    lease_ttl = ?lease_ttl,
                    "partitions have had no live owner for longer than a lease period, so their \
                     events are not applied: start a worker that runs this projection (in its pool)"
                );
                self.unowned_reported
                    .insert(projection.to_string(), (partitions, now));
            }
        }
    }

    /// Collects this round's figures (head, events applied, each active projection's
    /// backlog), adapts each projection's concurrency and publishes the `desired_workers`
    /// signal (the arithmetic is in [`crate::scaling`]).
    async fn update_scaling(&mut self, observed: &Observed) {
        let workers = observed.pool_workers;
        let store = &self.store;
        let config = &self.config;
        let now = Instant::now();
        let Ok(head) = store.head_position().await else {
            return;
        };
        let applied = self.lanes.events_applied();
        let mut backlogs = Vec::new();
        for projection in self.handle.active() {
            let name = projection.name().to_string();
            let Ok(lags) = crate::status::partition_lag(store, projection.as_ref(), head).await
            else {
                continue;
            };
            let backlog = Backlog::of(lags.iter().map(|lag| {
                let local = observed.owned.contains(&(name.clone(), lag.partition));
                (lag.lag_events, local)
            }));
            self.lanes.adapt_concurrency(&name, backlog.lagging_local);
            backlogs.push(backlog);
        }
        let estimate = self.estimator.observe(
            Observation {
                at: now,
                head,
                applied,
                backlogs: &backlogs,
            },
            ScalingSettings {
                batch_size: config.batch_size,
                assumed_worker_rate: config.assumed_worker_rate,
                drain_target_secs: config.drain_target.as_secs_f64(),
                max_workers: store.partitions() as usize,
            },
        );
        let concurrency = self.lanes.concurrency();
        let signal = ScalingSignal {
            pool: config.pool.clone(),
            live_workers: workers,
            lag_events: estimate.lag_events,
            head_rate: estimate.head_rate,
            processing_rate: estimate.processing_rate,
            capacity_per_worker: estimate.capacity_per_worker,
            desired_workers: estimate.desired_workers,
            concurrency,
        };
        metrics::gauge!("tidemark_desired_workers", "pool" => config.pool.clone())
            .set(estimate.desired_workers as f64);
        metrics::gauge!("tidemark_live_workers", "pool" => config.pool.clone()).set(workers as f64);
        metrics::gauge!("tidemark_worker_concurrency", "pool" => config.pool.clone())
            .set(concurrency as f64);
        metrics::gauge!("tidemark_pool_lag_events", "pool" => config.pool.clone())
            .set(estimate.lag_events as f64);
        self.handle.shared.scaling.send_replace(signal);
    }
}

/// Gives leases back so another worker can claim them at once. They expire now, not at
/// '-infinity': the unowned-partition report measures from the moment a partition lost its
/// owner.
const GIVE_BACK: &str =
    "UPDATE projection_leases SET owner = NULL, expires_at = least(expires_at, now())";

/// Gives a lease back if it is still ours under `token`.
async fn release(pool: &Pool, projection: &str, partition: i16, token: LeaseToken) -> Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            &format!(
                "{GIVE_BACK} WHERE projection = $1 AND partition = $2 AND owner = $3 AND epoch = $4"
            ),
            &[&projection, &partition, &token.owner, &token.epoch],
        )
        .await
        .map_err(EngineError::db("releasing a lease"))?;
    Ok(())
}

/// Retires the workers of this machine whose process has died
/// ([`crate::workers::dead_on_this_host`]): each is marked stopped and gives its leases back,
/// in one transaction, so their partitions are claimed now rather than after the lease and
/// heartbeat timeouts (a process restarted after `kill -9` takes its previous life's
/// partitions back at once). Returns their ids.
///
/// Safe if ever wrong: a claim bumps the lease epoch, and a worker that was in fact alive
/// finds its lease gone at its next renewal or commit and stops (fencing).
async fn retire_dead_on_this_host(pool: &Pool, me: &WorkerIdentity) -> Result<Vec<Uuid>> {
    let mut client = pool.get().await?;
    let dead = crate::workers::dead_on_this_host(&client, me).await?;
    let mut retired = Vec::new();
    for (id, pid) in dead {
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("retiring a dead worker"))?;
        let stopped = crate::workers::mark_dead(&tx, id).await?;
        let leases = tx
            .execute(&format!("{GIVE_BACK} WHERE owner = $1"), &[&id])
            .await
            .map_err(EngineError::db("releasing a dead worker's leases"))?;
        tx.commit()
            .await
            .map_err(EngineError::db("retiring a dead worker"))?;
        if stopped {
            tracing::info!(worker = %id, pid, leases, "a worker of this host is no longer running; taking over its partitions now");
            retired.push(id);
        }
    }
    Ok(retired)
}

/// This worker's share of a projection's `partitions`: `members` (the live workers that run
/// the projection, this one included, sorted by id) split them evenly, and the first
/// `partitions mod n` take one more. Every member computes the same split, so the shares
/// add up to the partition count and partitions move only when membership changes.
fn fair_share(partitions: usize, members: &[Uuid], me: Uuid) -> usize {
    let workers = members.len().max(1);
    let rank = members.iter().position(|id| *id == me).unwrap_or(0);
    partitions / workers + usize::from(rank < partitions % workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[test]
    fn shares_split_every_partition_the_first_ones_taking_the_remainder() {
        let members = ids(3);
        let shares: Vec<usize> = members
            .iter()
            .map(|me| fair_share(16, &members, *me))
            .collect();
        assert_eq!(shares, [6, 5, 5]);
        assert_eq!(fair_share(16, &ids(1), Uuid::from_u128(1)), 16);
        let many = ids(20);
        let shares: Vec<usize> = many.iter().map(|me| fair_share(16, &many, *me)).collect();
        assert_eq!(shares.iter().sum::<usize>(), 16);
        assert_eq!(
            shares.iter().filter(|s| **s == 0).count(),
            4,
            "more workers than partitions"
        );
    }
}
