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
//! restarted after a crash takes over its previous life's partitions at once), and reports
//! partitions that no live worker has owned for longer than a lease period (log at WARN,
//! `tidemark_projection_unowned_partitions` gauge).

use crate::engine::ProjectionEngine;
use crate::error::{EngineError, Result};
use crate::fence::{Fence, LeaseToken};
use crate::scaling::{desired_workers, Demand, ScalingSignal};
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tidemark_store::Position;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct OwnedLane {
    token: LeaseToken,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

pub(crate) struct Coordinator {
    engine: ProjectionEngine,
    /// The coordinator's own connections: lanes blocked on locks can exhaust the shared
    /// pool, and heartbeats and renewals must not wait behind them.
    pool: Pool,
    owned: BTreeMap<(String, i16), OwnedLane>,
    last_head: Option<(Position, Instant)>,
    last_processed: Option<(u64, Instant)>,
    head_rate: f64,
    processing_rate: f64,
    capacity_per_worker: Option<f64>,
    /// Unowned partitions last reported at WARN, by projection, and when.
    unowned_reported: BTreeMap<String, (Vec<i16>, Instant)>,
}

/// How often a partition that stays unowned is reported again at WARN.
const UNOWNED_REPEAT: Duration = Duration::from_secs(60);

impl Coordinator {
    /// The coordinator renews leases on connections of its own, so that lanes holding every
    /// pooled connection cannot delay a renewal past the lease's expiry. Without them it
    /// cannot keep that promise, so it refuses to start rather than share the pool.
    pub fn new(engine: ProjectionEngine) -> Result<Self> {
        let pool = tidemark_store::build_pool(
            engine.store().pg_config().clone(),
            engine.store().tls(),
            2,
        )?;
        Ok(Coordinator {
            engine,
            pool,
            owned: BTreeMap::new(),
            last_head: None,
            last_processed: None,
            head_rate: 0.0,
            processing_rate: 0.0,
            capacity_per_worker: None,
            unowned_reported: BTreeMap::new(),
        })
    }

    /// Runs until the engine shuts down, then stops its lanes (each commits the batch in
    /// hand) and releases its leases so other workers take over at once.
    pub async fn run(mut self) {
        let shutdown = self.engine.shutdown_token();
        let every = self.engine.config().lease_ttl / 3;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.engine.inner.rebalance.notified() => {}
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
        let _ = crate::workers::deregister(&self.pool, &self.engine.inner.identity).await;
    }

    async fn tick(&mut self) -> Result<()> {
        let engine = self.engine.clone();
        let store = engine.store();
        let config = engine.config().clone();
        let me = engine.inner.identity.id;
        let signal = engine.scaling_signal();
        // Before listing the live workers: a dead previous life of this process must be
        // neither counted in any share nor left holding leases until they expire.
        if let Err(error) =
            crate::workers::reap_dead_on_this_host(&self.pool, &engine.inner.identity).await
        {
            tracing::warn!(%error, "could not check this host's workers for dead processes");
        }
        let active = engine.active_projections();
        let running: Vec<String> = active.iter().map(|p| p.name().to_string()).collect();
        let live = crate::workers::heartbeat(
            &self.pool,
            &engine.inner.identity,
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

        let partitions = store.partitions() as usize;
        for projection in active {
            let name = projection.name().to_string();
            let mut members: Vec<Uuid> = live
                .iter()
                .filter(|w| w.id != me && w.projections.contains(&name))
                .map(|w| w.id)
                .chain(std::iter::once(me))
                .collect();
            members.sort_unstable();
            let rank = members.iter().position(|id| *id == me).unwrap_or(0);
            let workers = members.len();
            let share = partitions / workers + usize::from(rank < partitions % workers);
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
                        engine.inner.tasks.spawn(async move {
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
                    let stop = engine.shutdown_token().child_token();
                    let handle = engine.spawn_lane(
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
        self.update_scaling(pool_workers).await;
        self.report_unowned().await;
        Ok(())
    }

    /// Logs (at WARN, again every [`UNOWNED_REPEAT`] while it lasts) and publishes the
    /// partitions of this application's projections that no live worker has owned for
    /// longer than a lease period. Covers projections of every pool the registry knows, so
    /// any process notices a projection whose workers are all gone.
    async fn report_unowned(&mut self) {
        let engine = self.engine.clone();
        let names: Vec<&str> = engine.registry().iter().map(|p| p.name()).collect();
        // On the coordinator's own connections, like heartbeats: lanes may hold the shared
        // pool.
        let found =
            match crate::status::unowned_partitions(&self.pool, &names, engine.config().lease_ttl)
                .await
            {
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
                    lease_ttl = ?engine.config().lease_ttl,
                    "partitions have had no live owner for longer than a lease period, so their \
                     events are not applied: start a worker that runs this projection (in its pool)"
                );
                self.unowned_reported
                    .insert(projection.to_string(), (partitions, now));
            }
        }
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

    /// Recomputes the adaptive concurrency and the `desired_workers` signal.
    async fn update_scaling(&mut self, workers: usize) {
        let engine = self.engine.clone();
        let config = engine.config();
        let now = Instant::now();
        let Ok(head) = engine.store().head_position().await else {
            return;
        };
        if let Some((previous, at)) = self.last_head {
            let instant =
                (head - previous).max(0) as f64 / now.duration_since(at).as_secs_f64().max(1e-3);
            self.head_rate = ewma(self.head_rate, instant);
        }
        self.last_head = Some((head, now));
        let processed = engine
            .inner
            .processed
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some((previous, at)) = self.last_processed {
            let instant = processed.saturating_sub(previous) as f64
                / now.duration_since(at).as_secs_f64().max(1e-3);
            self.processing_rate = ewma(self.processing_rate, instant);
        }
        self.last_processed = Some((processed, now));

        let mut lag_events = 0i64;
        for projection in engine.active_projections() {
            let name = projection.name().to_string();
            let Ok(lags) =
                crate::status::partition_lag(engine.store(), projection.as_ref(), head).await
            else {
                continue;
            };
            let mut lagging_local = 0usize;
            for lag in &lags {
                lag_events += lag.lag_events;
                if lag.lag_events > 0 && self.owned.contains_key(&(name.clone(), lag.partition)) {
                    lagging_local += 1;
                }
            }
            engine.limit_of(&name).adapt(lagging_local);
        }
        // Throughput measured while there was a backlog is this worker's capacity.
        if lag_events > config.batch_size as i64 && self.processing_rate > 0.0 {
            self.capacity_per_worker = Some(ewma(
                self.capacity_per_worker.unwrap_or(self.processing_rate),
                self.processing_rate,
            ));
        }
        let capacity_per_worker = self
            .capacity_per_worker
            .unwrap_or(config.assumed_worker_rate);
        let concurrency = engine.total_concurrency();
        let desired = desired_workers(Demand {
            lag_events,
            head_rate: self.head_rate,
            capacity_per_worker,
            drain_target_secs: config.drain_target.as_secs_f64(),
            max_workers: engine.store().partitions() as usize,
        });
        let signal = ScalingSignal {
            pool: config.pool.clone(),
            live_workers: workers,
            lag_events,
            head_rate: self.head_rate,
            processing_rate: self.processing_rate,
            capacity_per_worker,
            desired_workers: desired,
            concurrency,
        };
        metrics::gauge!("tidemark_desired_workers", "pool" => config.pool.clone())
            .set(desired as f64);
        metrics::gauge!("tidemark_live_workers", "pool" => config.pool.clone()).set(workers as f64);
        metrics::gauge!("tidemark_worker_concurrency", "pool" => config.pool.clone())
            .set(concurrency as f64);
        metrics::gauge!("tidemark_pool_lag_events", "pool" => config.pool.clone())
            .set(lag_events as f64);
        engine.inner.scaling.send_replace(signal);
    }
}

/// Gives a lease back (if it is still ours under `token`) so another worker can claim it at
/// once. It expires now (not at '-infinity'): the unowned-partition report measures from it.
async fn release(pool: &Pool, projection: &str, partition: i16, token: LeaseToken) -> Result<()> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE projection_leases SET owner = NULL, expires_at = least(expires_at, now())
              WHERE projection = $1 AND partition = $2 AND owner = $3 AND epoch = $4",
            &[&projection, &partition, &token.owner, &token.epoch],
        )
        .await
        .map_err(EngineError::db("releasing a lease"))?;
    Ok(())
}

fn ewma(previous: f64, instant: f64) -> f64 {
    if previous == 0.0 {
        instant
    } else {
        0.7 * previous + 0.3 * instant
    }
}
