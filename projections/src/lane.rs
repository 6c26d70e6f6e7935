//! A lane: one projection, one target read model, one partition (or all of them, in log
//! order). Every way a projection runs — live partitions, rebuilds, replays, as-of builds —
//! is a lane. Two other places still apply events outside this loop: the rebuild's final
//! catch-up inside the swap (`rebuild.rs`) and the replay of parked events
//! (`dead_letter.rs`); routing both through the lane's commit is open work.
//!
//! A lane fetches pages after its checkpoint into a bounded channel (fetch-ahead with
//! backpressure), and applies each batch in a transaction that first locks its checkpoint
//! row and checks it still holds the position the lane started from (so a lane can never
//! commit on top of someone else's work), then applies, then advances the checkpoint.

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::kinds::Target;
use crate::projection::{ApplyContext, FailurePolicy, Projection};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidemark_store::backoff::Backoff;
use tidemark_store::{EventStore, Page, Position, RecordedEvent, SubscribeOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Checkpoint partition number of a lane that reads every partition.
pub const ALL_PARTITIONS: i16 = -1;

/// Identifies a lane.
#[derive(Clone)]
pub(crate) struct LaneSpec {
    pub projection: Arc<dyn Projection>,
    pub target: Target,
    /// Schema the lane writes to.
    pub schema: String,
    pub partition: Option<i16>,
    /// Stop once every event up to this position is applied (as-of builds, swaps).
    pub until: Option<Position>,
}

impl LaneSpec {
    pub fn checkpoint_partition(&self) -> i16 {
        self.partition.unwrap_or(ALL_PARTITIONS)
    }

    fn describe(&self) -> String {
        match self.partition {
            Some(p) => format!("{}/{}#{}", self.projection.name(), self.target, p),
            None => format!("{}/{}", self.projection.name(), self.target),
        }
    }
}

/// Why a lane stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaneExit {
    /// Cancelled; the batch in hand was committed.
    Shutdown,
    /// Reached `until`.
    ReachedEnd,
    /// A poison event under `ParkAndStop`.
    Stopped,
    /// The lane lost the right to write (lease taken, checkpoint moved by someone else).
    Fenced,
}

/// Live progress of a lane (its checkpoint and rate), published after each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneProgress {
    /// Last committed checkpoint.
    pub checkpoint: Position,
    /// Every matching event at or before this position is applied.
    pub processed_through: Position,
    pub events_per_second: f64,
}

/// Events handed from the fetcher to the applier.
enum Fetched {
    Page(Page),
    Failed(EngineError),
}

/// Outcome of one attempt to commit a batch.
pub(crate) enum Commit {
    Done,
    Fenced,
}

pub(crate) struct Lane {
    pub spec: LaneSpec,
    pub store: EventStore,
    pub config: EngineConfig,
    pub fence: Fence,
    pub progress: watch::Sender<LaneProgress>,
    /// Called after each committed batch with the number of events applied.
    pub on_commit: Option<Arc<dyn Fn(usize, Position) + Send + Sync>>,
    /// A permit is held while a batch is applied (bounds partitions applying at once).
    pub permits: Option<Arc<tokio::sync::Semaphore>>,
}

impl Lane {
    /// Runs until cancelled, fenced, stopped by a poison event, or past `until`.
    /// Connection trouble is retried here with backoff; it never ends the lane.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<LaneExit> {
        let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
        let mut checkpoint_at_last_failure = None;
        loop {
            match self.run_once(&shutdown).await {
                Ok(exit) => return Ok(exit),
                Err(error) if error.is_transient() => {
                    // Progress since the previous failure: this is a new incident, so
                    // start again from the shortest pause.
                    let checkpoint = self.progress.borrow().checkpoint;
                    if checkpoint_at_last_failure.is_some_and(|at| checkpoint > at) {
                        backoff.reset();
                    }
                    checkpoint_at_last_failure = Some(checkpoint);
                    tracing::warn!(lane = %self.spec.describe(), %error, "lane interrupted; resuming from its checkpoint");
                    metrics::counter!("tidemark_projection_errors_total", "projection" => self.spec.projection.name().to_string(), "kind" => "transient").increment(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(LaneExit::Shutdown),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<LaneExit> {
        let mut checkpoint = crate::checkpoint::load(&self.store, &self.spec).await?;
        self.progress.send_modify(|p| {
            p.checkpoint = checkpoint;
            p.processed_through = p.processed_through.max(checkpoint);
        });
        if self.spec.until.is_some_and(|until| checkpoint >= until) {
            return Ok(LaneExit::ReachedEnd);
        }
        let parked_ahead =
            crate::dead_letter::parked_ahead(&self.store, &self.spec, checkpoint).await?;
        let (pages_tx, mut pages) = mpsc::channel(self.config.fetch_ahead_pages.max(1));
        let fetch_stop = shutdown.child_token();
        let fetcher = tokio::spawn(fetch(
            self.store.clone(),
            SubscribeOptions {
                after: checkpoint,
                filter: self
                    .spec
                    .projection
                    .selector()
                    .log_filter(self.spec.partition),
                page_size: self.config.batch_size,
            },
            pages_tx,
            fetch_stop.clone(),
        ));
        let _stop_fetcher = fetch_stop.drop_guard();
        let mut rate = Rate::default();
        let mut last_commit = Instant::now();
        loop {
            let fetched = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(LaneExit::Shutdown),
                fetched = pages.recv() => fetched,
            };
            let page = match fetched {
                Some(Fetched::Page(page)) => page,
                Some(Fetched::Failed(error)) => return Err(error),
                None => {
                    let _ = fetcher.await;
                    return Err(EngineError::Unavailable("the event fetcher stopped".into()));
                }
            };
            let until = self.spec.until.unwrap_or(Position::MAX);
            let events: Vec<RecordedEvent> = page
                .events
                .into_iter()
                .filter(|e| e.position <= until)
                .collect();
            if !events.is_empty() {
                // Events per second as they pass through the lane: this batch over the time
                // since the previous commit (idle time included), smoothed. Written with the
                // checkpoint, so status and metrics read what the lane last did.
                let per_second = rate.record(events.len(), last_commit.elapsed());
                match self
                    .apply_with_retries(checkpoint, &events, &parked_ahead, per_second, shutdown)
                    .await?
                {
                    Some(new_checkpoint) => checkpoint = new_checkpoint,
                    None => return Ok(self.stopped_or_fenced()),
                }
                last_commit = Instant::now();
                self.progress.send_modify(|p| {
                    p.checkpoint = checkpoint;
                    p.processed_through = p.processed_through.max(checkpoint);
                    p.events_per_second = per_second;
                });
                if let Some(on_commit) = &self.on_commit {
                    on_commit(events.len(), checkpoint);
                }
            }
            if let Some(caught_up) = page.caught_up_to {
                self.progress.send_modify(|p| {
                    p.processed_through = p.processed_through.max(caught_up.min(until))
                });
                if caught_up >= until {
                    return Ok(LaneExit::ReachedEnd);
                }
            }
            if self.spec.until.is_some_and(|u| checkpoint >= u) {
                return Ok(LaneExit::ReachedEnd);
            }
        }
    }

    fn stopped_or_fenced(&self) -> LaneExit {
        if self.fence.is_lost() {
            LaneExit::Fenced
        } else {
            LaneExit::Stopped
        }
    }

    /// Applies `events` (after `checkpoint`) and returns the new checkpoint, or `None` when the
    /// lane must stop (fenced, or a poison event under `ParkAndStop`). A failing batch is
    /// retried event by event so that only the bad event is parked.
    async fn apply_with_retries(
        &self,
        checkpoint: Position,
        events: &[RecordedEvent],
        parked_ahead: &[Position],
        events_per_second: f64,
        shutdown: &CancellationToken,
    ) -> Result<Option<Position>> {
        match self
            .commit(checkpoint, events, parked_ahead, events_per_second)
            .await
        {
            Ok(Commit::Done) => return Ok(events.last().map(|e| e.position)),
            Ok(Commit::Fenced) => return Ok(None),
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(lane = %self.spec.describe(), %error, events = events.len(), "batch failed; isolating the bad event");
            }
        }
        let mut checkpoint = checkpoint;
        for event in events {
            let mut attempts = 0u32;
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_max);
            loop {
                match self
                    .commit(
                        checkpoint,
                        std::slice::from_ref(event),
                        parked_ahead,
                        events_per_second,
                    )
                    .await
                {
                    Ok(Commit::Done) => {
                        checkpoint = event.position;
                        break;
                    }
                    Ok(Commit::Fenced) => return Ok(None),
                    Err(error) if error.is_transient() => return Err(error),
                    Err(error) => {
                        attempts += 1;
                        metrics::counter!("tidemark_projection_errors_total", "projection" => self.spec.projection.name().to_string(), "kind" => "failed").increment(1);
                        if attempts >= self.config.max_attempts {
                            let stop =
                                self.spec.projection.failure_policy() == FailurePolicy::ParkAndStop;
                            match crate::dead_letter::park(
                                &self.store,
                                &self.spec,
                                &self.fence,
                                checkpoint,
                                event,
                                &error.to_string(),
                                attempts,
                                stop,
                            )
                            .await?
                            {
                                Commit::Fenced => return Ok(None),
                                Commit::Done if stop => return Ok(None),
                                Commit::Done => {
                                    checkpoint = event.position;
                                    break;
                                }
                            }
                        }
                        tracing::warn!(lane = %self.spec.describe(), position = event.position, attempts, %error, "event failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Err(EngineError::ShuttingDown),
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            }
        }
        Ok(Some(checkpoint))
    }

    /// One transaction: lock and check the checkpoint (and lease), apply, advance (resolving
    /// parked events the batch applied, see `dead_letter::parked_ahead`), commit.
    async fn commit(
        &self,
        checkpoint: Position,
        events: &[RecordedEvent],
        parked_ahead: &[Position],
        events_per_second: f64,
    ) -> Result<Commit> {
        let Some(last) = events.last() else {
            return Ok(Commit::Done);
        };
        let _permit = match &self.permits {
            Some(permits) => Some(
                permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| EngineError::ShuttingDown)?,
            ),
            None => None,
        };
        let mut client = self.store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting a projection batch"))?;
        if !crate::checkpoint::lock_and_check(&tx, &self.spec, &self.fence, checkpoint).await? {
            return Ok(Commit::Fenced);
        }
        let ctx = ApplyContext {
            tx: &tx,
            schema: &self.spec.schema,
        };
        self.spec
            .projection
            .apply(&ctx, events)
            .await
            .map_err(|source| EngineError::Projection {
                projection: self.spec.projection.name().to_string(),
                phase: "applying events",
                position: checkpoint,
                source,
            })?;
        crate::checkpoint::advance(&tx, &self.spec, last.position, Some(events_per_second)).await?;
        if parked_ahead
            .iter()
            .any(|p| *p > checkpoint && *p <= last.position)
        {
            crate::dead_letter::resolve_applied(&tx, &self.spec, checkpoint, last.position).await?;
        }
        if !crate::checkpoint::lease_still_held(&tx, &self.spec, &self.fence).await? {
            return Ok(Commit::Fenced);
        }
        tx.commit()
            .await
            .map_err(EngineError::db("committing a projection batch"))?;
        Ok(Commit::Done)
    }
}

/// Feeds pages from the store's subscription into the lane's bounded channel.
async fn fetch(
    store: EventStore,
    options: SubscribeOptions,
    pages: mpsc::Sender<Fetched>,
    stop: CancellationToken,
) {
    let mut stream = std::pin::pin!(store.subscribe_pages(options));
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = stream.next() => next,
        };
        let fetched = match next {
            Some(Ok(page)) => Fetched::Page(page),
            Some(Err(error)) => Fetched::Failed(error.into()),
            None => return,
        };
        let failed = matches!(fetched, Fetched::Failed(_));
        // Waiting here is the backpressure: the fetcher runs at most `fetch_ahead_pages` ahead.
        if pages.send(fetched).await.is_err() || failed {
            return;
        }
    }
}

/// Events per second over recent batches (exponentially weighted).
#[derive(Default)]
struct Rate {
    value: f64,
}

impl Rate {
    fn record(&mut self, events: usize, took: Duration) -> f64 {
        let instant = events as f64 / took.as_secs_f64().max(1e-6);
        self.value = if self.value == 0.0 {
            instant
        } else {
            0.8 * self.value + 0.2 * instant
        };
        self.value
    }
}
