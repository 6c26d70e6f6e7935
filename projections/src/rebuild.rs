//! Rebuilds and as-of builds ([`BuildRequest`]). A build first takes its build lock
//! ([`ProjectionEngine::prepare_build`], so a second build of the same target is refused
//! at once, in any process), then builds a separate copy of the read model with a
//! lane that reads every partition in log order:
//!
//! - a rebuild (the whole log) and a build from the events after P (discarding what the
//!   earlier events built) go into `<schema>__shadow` while the live read model keeps
//!   serving; once the shadow is near the head, one transaction locks the live checkpoints
//!   (pausing live lanes between batches), applies the last events through the lane's commit
//!   primitive, swaps the schemas by renaming, moves the live checkpoints to the swap
//!   position, and drops the old read model;
//! - as-of P builds `<schema>__asof_<label>` from the log up to P and leaves it there.

use crate::engine::ProjectionEngine;
use crate::error::{EngineError, Result};
use crate::kinds::{BuildKind, BuildStatus, ProjectionState, Target};
use crate::lane::{Lane, LaneExit, LockedCheckpoint, Restart};
use crate::projection::{quote_ident, Projection};
use crate::registration::create_schema;
use crate::spec::LaneSpec;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidemark_store::{EventStore, Position};

/// A progress update for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
    pub position: Position,
    /// Events per second since the start.
    pub rate: f64,
}

impl Progress {
    pub fn eta(&self) -> Option<Duration> {
        (self.rate > 0.0)
            .then(|| Duration::from_secs_f64((self.total - self.done).max(0) as f64 / self.rate))
    }
}

/// Called about twice a second while a build runs.
pub type ProgressCallback = Arc<dyn Fn(Progress) + Send + Sync>;

/// What a finished build did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    pub projection: String,
    /// Schema holding the result (the live schema after a swap).
    pub schema: String,
    pub events_applied: i64,
    /// The read model reflects the log up to here.
    pub position: Position,
    pub took: Duration,
}

struct Tracker {
    id: i64,
    started: Instant,
    state: Mutex<Progress>,
}

impl Tracker {
    fn snapshot(&self) -> Progress {
        let mut p = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        p.rate = p.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        p
    }
}

/// Catch-up rounds before the swap closes the remaining gap itself.
const MAX_CATCH_UP_ROUNDS: usize = 4;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildRequest {
    /// The whole log into a shadow read model, swapped in once it has caught up.
    Rebuild,
    /// Only the events after this position into a shadow read model, swapped in once it has
    /// caught up. Whatever the events up to the position built is discarded: the result is
    /// the fold of the later events alone (for a read model meant to forget old history; a
    /// repair wants [`BuildRequest::Rebuild`]).
    FromEventsAfter(Position),
    /// The log up to `position` into `<schema>__asof_<label>`, which stays for inspection
    /// (building the same label again replaces it).
    AsOf { position: Position, label: String },
}

impl BuildRequest {
    pub fn kind(&self) -> BuildKind {
        match self {
            BuildRequest::Rebuild => BuildKind::Rebuild,
            BuildRequest::FromEventsAfter(_) => BuildKind::Replay,
            BuildRequest::AsOf { .. } => BuildKind::AsOf,
        }
    }

    fn target(&self) -> Target {
        match self {
            BuildRequest::Rebuild | BuildRequest::FromEventsAfter(_) => Target::Shadow,
            BuildRequest::AsOf { label, .. } => Target::AsOf(label.clone()),
        }
    }
}

/// A build that holds its build lock (so no other build of the same target can start, in
/// any process) and has not started yet: a server answers "started" or `BUILD_RUNNING`
/// before running it in the background.
pub struct PendingBuild {
    engine: ProjectionEngine,
    projection: Arc<dyn Projection>,
    request: BuildRequest,
    /// Released when the build ends (or is dropped).
    _lock: deadpool_postgres::ClientWrapper,
}

impl PendingBuild {
    pub fn kind(&self) -> BuildKind {
        self.request.kind()
    }

    /// Runs the build to the end, reporting progress about twice a second.
    pub async fn run(self, on_progress: Option<ProgressCallback>) -> Result<BuildReport> {
        let PendingBuild {
            engine,
            projection,
            request,
            _lock,
        } = self;
        match request {
            BuildRequest::Rebuild => {
                engine
                    .rebuild_into_shadow(&projection, 0, BuildKind::Rebuild, on_progress)
                    .await
            }
            BuildRequest::FromEventsAfter(after) => {
                engine
                    .rebuild_into_shadow(&projection, after, BuildKind::Replay, on_progress)
                    .await
            }
            BuildRequest::AsOf { position, label } => {
                engine
                    .build_as_of_into(&projection, position, &label, on_progress)
                    .await
            }
        }
    }
}

impl ProjectionEngine {
    /// Takes the build lock for `request` on `name`: [`EngineError::BuildRunning`] when a
    /// build of the same target runs anywhere. Run the result to build.
    pub async fn prepare_build(&self, name: &str, request: BuildRequest) -> Result<PendingBuild> {
        if let BuildRequest::AsOf { label, .. } = &request {
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(EngineError::InvalidLabel {
                    label: label.clone(),
                });
            }
        }
        let projection = self.projection(name)?.clone();
        let lock = self.build_lock(&projection, &request.target()).await?;
        Ok(PendingBuild {
            engine: self.clone(),
            projection,
            request,
            _lock: lock,
        })
    }

    /// Rebuilds `name` from the whole log into a shadow read model and swaps it in.
    pub async fn rebuild(
        &self,
        name: &str,
        on_progress: Option<ProgressCallback>,
    ) -> Result<BuildReport> {
        self.prepare_build(name, BuildRequest::Rebuild)
            .await?
            .run(on_progress)
            .await
    }

    /// Builds `name` from the events after `after` only and swaps it in, discarding what the
    /// earlier events built (see [`BuildRequest::FromEventsAfter`]).
    pub async fn rebuild_from_events_after(
        &self,
        name: &str,
        after: Position,
        on_progress: Option<ProgressCallback>,
    ) -> Result<BuildReport> {
        self.prepare_build(name, BuildRequest::FromEventsAfter(after))
            .await?
            .run(on_progress)
            .await
    }

    /// Builds `name` over the log up to `position` into the schema `<schema>__asof_<label>`,
    /// which stays for inspection (rebuilding the same label replaces it).
    pub async fn build_as_of(
        &self,
        name: &str,
        position: Position,
        label: &str,
        on_progress: Option<ProgressCallback>,
    ) -> Result<BuildReport> {
        let request = BuildRequest::AsOf {
            position,
            label: label.to_string(),
        };
        self.prepare_build(name, request)
            .await?
            .run(on_progress)
            .await
    }

    /// An as-of build, under its build lock.
    async fn build_as_of_into(
        &self,
        projection: &Arc<dyn Projection>,
        position: Position,
        label: &str,
        on_progress: Option<ProgressCallback>,
    ) -> Result<BuildReport> {
        let target = Target::AsOf(label.to_string());
        let schema = target.schema(&projection.schema());
        let started = Instant::now();
        let tracker = self
            .begin_build(
                projection,
                &target,
                &schema,
                BuildKind::AsOf,
                0,
                Some(position),
            )
            .await?;
        let result = self
            .run_build_lane(projection, &target, Some(position), &tracker, on_progress)
            .await;
        self.finish_build(&tracker, result.as_ref().err()).await;
        result?;
        Ok(BuildReport {
            projection: projection.name().to_string(),
            schema,
            events_applied: tracker.snapshot().done,
            position,
            took: started.elapsed(),
        })
    }

    /// A shadow build (rebuild, or from the events after `from`), under its build lock.
    async fn rebuild_into_shadow(
        &self,
        projection: &Arc<dyn Projection>,
        from: Position,
        kind: BuildKind,
        on_progress: Option<ProgressCallback>,
    ) -> Result<BuildReport> {
        let started = Instant::now();
        let live_schema = projection.schema();
        let shadow_schema = Target::Shadow.schema(&live_schema);
        let tracker = self
            .begin_build(
                projection,
                &Target::Shadow,
                &shadow_schema,
                kind,
                from,
                None,
            )
            .await?;
        let result = async {
            // Catch up in rounds until the remaining gap is small enough to close while the
            // live lanes wait. If appends outpace the build, stop chasing after a few rounds:
            // the swap applies whatever is left while the live lanes wait.
            for _round in 0..MAX_CATCH_UP_ROUNDS {
                let head = self.store().head_position().await?;
                self.run_build_lane(
                    projection,
                    &Target::Shadow,
                    Some(head),
                    &tracker,
                    on_progress.clone(),
                )
                .await?;
                let now = self.store().head_position().await?;
                if now - head <= self.config().batch_size as i64 {
                    break;
                }
            }
            self.swap_in(projection, &shadow_schema, &tracker).await
        }
        .await;
        self.finish_build(&tracker, result.as_ref().err()).await;
        let position = result?;
        Ok(BuildReport {
            projection: projection.name().to_string(),
            schema: live_schema,
            events_applied: tracker.snapshot().done,
            position,
            took: started.elapsed(),
        })
    }

    /// Only one build per (projection, target) at a time, across processes: a session
    /// advisory lock held on a dedicated connection for the build's duration.
    async fn build_lock(
        &self,
        projection: &Arc<dyn Projection>,
        target: &Target,
    ) -> Result<deadpool_postgres::ClientWrapper> {
        let client = self.store().pool().get().await?;
        let key = format!("tidemark.build.{}.{}", projection.name(), target);
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(EngineError::db("taking the build lock"))?
            .get(0);
        if !got {
            return Err(EngineError::BuildRunning {
                projection: projection.name().to_string(),
                target: target.as_sql().into_owned(),
            });
        }
        // Detached from the pool: the connection closes when the build ends, releasing the
        // lock even if the build is aborted half-way.
        Ok(deadpool_postgres::Object::take(client))
    }

    async fn begin_build(
        &self,
        projection: &Arc<dyn Projection>,
        target: &Target,
        schema: &str,
        kind: BuildKind,
        from: Position,
        to: Option<Position>,
    ) -> Result<Tracker> {
        let mut client = self.store().pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting a build"))?;
        create_schema(&tx, projection.as_ref(), schema, self.store().partitions()).await?;
        crate::checkpoint::restart_target(&tx, projection.name(), target, from).await?;
        let upto = match to {
            Some(to) => to,
            None => self.store().head_position().await?,
        };
        let total = self
            .store()
            .count_events(from, upto, &projection.selector().log_filter(None))
            .await?;
        // A build of this target that was interrupted (its process died) is over.
        tx.execute(
            "UPDATE projection_rebuilds SET status = $3, error = 'interrupted', finished_at = now()
              WHERE projection = $1 AND target = $2 AND status = $4",
            &[
                &projection.name(),
                target,
                &BuildStatus::Failed,
                &BuildStatus::Running,
            ],
        )
        .await
        .map_err(EngineError::db("closing an interrupted build"))?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO projection_rebuilds (projection, target, kind, from_position, to_position, events_total, position, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $4, $7) RETURNING id",
                &[&projection.name(), target, &kind, &from, &to, &total, &BuildStatus::Running],
            )
            .await
            .map_err(EngineError::db("recording a build"))?
            .get(0);
        tx.commit()
            .await
            .map_err(EngineError::db("starting a build"))?;
        Ok(Tracker {
            id,
            started: Instant::now(),
            state: Mutex::new(Progress {
                done: 0,
                total,
                position: from,
                rate: 0.0,
            }),
        })
    }

    /// Runs the all-partitions lane of a build up to `until`, reporting progress.
    async fn run_build_lane(
        &self,
        projection: &Arc<dyn Projection>,
        target: &Target,
        until: Option<Position>,
        tracker: &Tracker,
        on_progress: Option<ProgressCallback>,
    ) -> Result<()> {
        let tracker_state = Arc::new(Mutex::new(
            *tracker.state.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        let shared = tracker_state.clone();
        let spec = LaneSpec::new(
            projection.clone(),
            target.clone(),
            None,
            until,
            self.store().partitions(),
        );
        let mut lane = Lane::new(spec, self.store().clone(), self.config().clone());
        lane.on_commit = Some(Arc::new(move |applied, position| {
            let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
            state.done += applied as i64;
            state.position = position;
            state.total = state.total.max(state.done);
        }));
        let lane = Arc::new(lane);
        let stop = self.shutdown_token().child_token();
        let reporter_stop = stop.child_token();
        let reporter = {
            let store = self.store().clone();
            let state = tracker_state.clone();
            let id = tracker.id;
            let started = tracker.started;
            let on_progress = on_progress.clone();
            let reporter_stop = reporter_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    let stopping = tokio::select! {
                        _ = reporter_stop.cancelled() => true,
                        _ = tick.tick() => false,
                    };
                    let mut p = *state.lock().unwrap_or_else(|e| e.into_inner());
                    p.rate = p.done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    record_progress(&store, id, &p).await;
                    if let Some(callback) = &on_progress {
                        callback(p);
                    }
                    if stopping {
                        return;
                    }
                }
            })
        };
        let exit = lane.run(&stop, Restart::OnTransientErrors).await;
        reporter_stop.cancel();
        let _ = reporter.await;
        *tracker.state.lock().unwrap_or_else(|e| e.into_inner()) =
            *tracker_state.lock().unwrap_or_else(|e| e.into_inner());
        match exit? {
            LaneExit::ReachedEnd => Ok(()),
            LaneExit::Shutdown => Err(EngineError::ShuttingDown),
            LaneExit::Stopped | LaneExit::Fenced => Err(EngineError::BuildStopped {
                projection: projection.name().to_string(),
            }),
        }
    }

    /// Applies the last events to the shadow and swaps it in, atomically. Returns the
    /// position the live read model now reflects.
    async fn swap_in(
        &self,
        projection: &Arc<dyn Projection>,
        shadow_schema: &str,
        tracker: &Tracker,
    ) -> Result<Position> {
        let name = projection.name();
        let live_schema = projection.schema();
        let retired = format!("{live_schema}__retired");
        let mut client = self.store().pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting the swap"))?;
        // Pause the live lanes (they lock their checkpoint first in every batch). Lock order
        // is live checkpoints, then the projection row, then the shadow checkpoint — the
        // projection row after the checkpoints, as parking an event does.
        crate::checkpoint::lock_live(&tx, name).await?;
        tx.query_one(
            "SELECT 1 FROM projections WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await
        .map_err(EngineError::db("locking the projection for the swap"))?;
        // Read once the live lanes are paused: the live checkpoints move to this head.
        let head = self.store().head_position().await?;
        let shadow = LaneSpec::new(
            projection.clone(),
            Target::Shadow,
            None,
            Some(head),
            self.store().partitions(),
        );
        let mut locked = LockedCheckpoint::lock_unleased(tx, &shadow, None).await?;
        let filter = shadow.read_filter();
        loop {
            let after = locked.position().unwrap_or(0);
            let events: Vec<_> = self
                .store()
                .read_log(after, &filter, self.config().batch_size)
                .await?
                .into_iter()
                .filter(|e| e.position <= head)
                .collect();
            let Some(last) = events.last() else { break };
            locked
                .apply(&events, "applying the last events before the swap")
                .await?;
            locked.advance(last.position, None).await?;
            tracker.state.lock().unwrap_or_else(|e| e.into_inner()).done += events.len() as i64;
        }
        let tx = locked.tx();
        tx.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {retired} CASCADE;
             ALTER SCHEMA {live} RENAME TO {retired};
             ALTER SCHEMA {shadow} RENAME TO {live};
             DROP SCHEMA {retired} CASCADE;",
            retired = quote_ident(&retired),
            live = quote_ident(&live_schema),
            shadow = quote_ident(shadow_schema),
        ))
        .await
        .map_err(EngineError::db("swapping the read models"))?;
        let lanes = projection.grouping().lanes(self.store().partitions());
        crate::checkpoint::move_live(tx, name, lanes, head).await?;
        crate::checkpoint::remove_target(tx, name, &Target::Shadow).await?;
        tx.execute(
            "UPDATE projections SET version = $2, status = $3, updated_at = now() WHERE name = $1",
            &[&name, &projection.version(), &ProjectionState::Running],
        )
        .await
        .map_err(EngineError::db("recording the new version"))?;
        locked.commit("committing the swap").await?;
        tracing::info!(
            projection = name,
            position = head,
            "rebuilt read model swapped in"
        );
        Ok(head)
    }

    async fn finish_build(&self, tracker: &Tracker, error: Option<&EngineError>) {
        let progress = tracker.snapshot();
        record_progress(self.store(), tracker.id, &progress).await;
        let (status, message) = match error {
            None => (BuildStatus::Done, None),
            Some(e) => (BuildStatus::Failed, Some(e.to_string())),
        };
        if let Ok(client) = self.store().pool().get().await {
            let _ = client
                .execute(
                    "UPDATE projection_rebuilds SET status = $2, error = $3, finished_at = now(), updated_at = now()
                      WHERE id = $1",
                    &[&tracker.id, &status, &message],
                )
                .await;
        }
    }
}

async fn record_progress(store: &EventStore, id: i64, p: &Progress) {
    let Ok(client) = store.pool().get().await else {
        return;
    };
    let _ = client
        .execute(
            "UPDATE projection_rebuilds SET events_done = $2, events_total = $3, position = $4, rate = $5,
                    updated_at = now() WHERE id = $1",
            &[&id, &p.done, &p.total, &p.position, &p.rate],
        )
        .await;
}
