//! A lane: one projection, one target read model, one partition (or all of them, in log
//! order). Every way a projection runs — live partitions, rebuilds, replays, as-of builds,
//! a hand-driven [`Lane::step`] — is a lane, and every event reaches a read model through
//! [`LockedCheckpoint`]: a transaction that first locks the lane's checkpoint row and checks
//! it still holds the position the caller started from (so nobody commits on top of someone
//! else's work), then applies, advances the checkpoint, checks the lease once more, and
//! commits. The swap after a rebuild and the replay of parked events use the same primitive.
//!
//! A running lane fetches pages after its checkpoint into a bounded channel (fetch-ahead
//! with backpressure), from the store's read replica when it has one (everything else of a
//! lane is on the primary). Failures go through one retry policy ([`Retry`]): a failing batch is
//! retried event by event so only the bad event is parked, and a lane that fails as a whole
//! restarts from its checkpoint (a panic included) with backoff that starts over once the
//! lane made progress.
//!
//! A handler that acknowledges asynchronously ([`crate::Pipeline`]) is not called in the
//! transaction: its lane sends pages ahead and commits each page's checkpoint once the page
//! is acknowledged, in order ([`pipelined`]); a failing page falls back to the path above.

mod commit;
mod feed;
mod pipelined;
mod replay;
mod retry;

pub(crate) use commit::{Commit, LockedCheckpoint};
pub(crate) use feed::Feeds;
pub(crate) use replay::replay_parked;
pub(crate) use retry::Retry;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::fence::Fence;
use crate::projection::FailurePolicy;
use crate::spec::LaneSpec;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use tidemark_store::{EventStore, Page, Position, RecordedEvent, SubscribeOptions};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

/// What a failure of the whole lane leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Only connection trouble is retried; any other failure ends the lane with its error
    /// (a build reports it as failed).
    OnTransientErrors,
    /// Every failure and panic is logged, counted and retried from the checkpoint (live
    /// lanes keep going; a bug fixed by a redeploy resumes where it stopped).
    Always,
}

/// Live progress of a lane, published after each batch: the engine's read-your-writes
/// waits watch it to wake as soon as a local lane passes the position they wait for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneProgress {
    /// Last committed checkpoint.
    pub checkpoint: Position,
    /// Every matching event at or before this position is applied.
    pub processed_through: Position,
    pub events_per_second: f64,
}

/// What one [`Lane::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Applied (or parked) the events of one page; the checkpoint is now here.
    Applied { events: usize, checkpoint: Position },
    /// Nothing to apply: the read model reflects the log up to `through`.
    CaughtUp { through: Position },
    /// A poison event stopped the partition (`ParkAndStop`); replay it to go on.
    Stopped,
}

/// Events handed from the fetcher (or the group's [`Feeds`]) to the applier.
pub(crate) enum Fetched {
    Page(LanePage),
    Failed(EngineError),
}

/// A page as the lane applies it: the events it applies, and how far the page read.
struct Prepared {
    /// The page's events this lane applies (after where it is, up to `until`, its share of
    /// the partitions).
    events: Vec<RecordedEvent>,
    /// How far this lane is done with the log: a lane that reads every partition moves past
    /// the events other lanes apply.
    read_through: Option<Position>,
    caught_up_to: Option<Position>,
}

/// Who carries a page's events out, before its checkpoint commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    /// The commit's transaction applies them (with retries, isolating a bad event).
    InTransaction,
    /// A pipeline already did, and every event is acknowledged: the commit only moves the
    /// checkpoint.
    Acknowledged,
}

/// A page as a lane receives it: the events it may apply, and how far the read went.
pub(crate) struct LanePage {
    events: Vec<RecordedEvent>,
    /// The last position the read covered: a lane fed by its group's read may move its
    /// checkpoint past the events up to here that other lanes apply.
    read_through: Option<Position>,
    /// See [`Page::caught_up_to`].
    caught_up_to: Option<Position>,
}

impl LanePage {
    /// Appends the page read after this one. Events it repeats (a shared read that started
    /// again behind, see `feed`) are dropped, so the events stay in log order.
    fn absorb(&mut self, next: LanePage) {
        let last = self.events.last().map(|e| e.position);
        self.events.extend(
            next.events
                .into_iter()
                .filter(|e| last.is_none_or(|last| e.position > last)),
        );
        self.read_through = self.read_through.max(next.read_through);
        self.caught_up_to = next.caught_up_to.or(self.caught_up_to);
    }
}

impl From<Page> for LanePage {
    fn from(page: Page) -> Self {
        LanePage {
            read_through: page.events.last().map(|e| e.position),
            events: page.events,
            caught_up_to: page.caught_up_to,
        }
    }
}

/// At most this many batches per read of a lane group's shared read (memory: the read and
/// the one requested ahead are held at once).
const FEED_READ_BATCHES: usize = 8;

/// A lane that only moves its checkpoint past other lanes' events commits that when its
/// read reaches the head, or once it is this many pages behind (fewer transactions while
/// catching up; the waits and the status read the checkpoint once the lane is caught up).
const IDLE_ADVANCE_PAGES: usize = 10;

/// After a page: go on from a checkpoint, or stop.
enum Next {
    Continue(Position),
    Exit(LaneExit),
}

/// One projection applying to one read model from one partition (or all). The engine runs
/// live lanes and build lanes; [`crate::ProjectionEngine::lane`] gives one to drive by hand.
pub struct Lane {
    pub(crate) spec: LaneSpec,
    pub(crate) store: EventStore,
    pub(crate) config: EngineConfig,
    pub(crate) fence: Fence,
    pub(crate) progress: watch::Sender<LaneProgress>,
    /// Called after each committed batch with the number of events applied.
    pub(crate) on_commit: Option<Arc<dyn Fn(usize, Position) + Send + Sync>>,
    /// A permit is held while a batch is applied (bounds partitions applying at once).
    pub(crate) permits: Option<Arc<tokio::sync::Semaphore>>,
    /// The shared reads of this process's lane groups: a live lane of a projection that
    /// reads every partition is fed by its group's one read instead of reading alone.
    pub(crate) feeds: Option<Feeds>,
}

impl Lane {
    /// A lane of `spec` with no lease, no concurrency bound and its own progress channel.
    pub(crate) fn new(spec: LaneSpec, store: EventStore, config: EngineConfig) -> Self {
        Lane {
            spec,
            store,
            config,
            fence: Fence::default(),
            progress: watch::channel(LaneProgress::default()).0,
            on_commit: None,
            permits: None,
            feeds: None,
        }
    }

    /// Applies the next page of events after the checkpoint (at most the engine's batch
    /// size), exactly as a running lane would: same commit, same retries and parking. For
    /// tests and tools that want to apply deterministically instead of waiting on the
    /// engine's background lanes. Do not step a lane the engine also runs: both would
    /// commit, and the checkpoint check makes one of them fail and retry.
    pub async fn step(&self) -> Result<Step> {
        let checkpoint = self.load_checkpoint().await?;
        // Read before the page: a short page then means everything up to here is seen. Both
        // on the primary (this handle's reads): a head from one server and a page from
        // another would claim events the page could not see.
        let head = self.store.head_position().await?;
        let filter = self.spec.read_filter();
        let events = self
            .store
            .read_log(checkpoint, &filter, self.config.batch_size)
            .await?;
        let count = events.len();
        let short = count < self.config.batch_size;
        let page = LanePage::from(Page {
            events,
            caught_up_to: short.then_some(head),
        });
        let parked_ahead =
            crate::dead_letter::parked_ahead(&self.store, &self.spec, checkpoint).await?;
        let never = CancellationToken::new();
        let next = self
            .apply_page(
                checkpoint,
                page,
                &parked_ahead,
                &mut Rate::default(),
                &never,
            )
            .await?;
        Ok(match next {
            Next::Exit(_) => Step::Stopped,
            Next::Continue(checkpoint) if count > 0 => Step::Applied {
                events: count,
                checkpoint,
            },
            Next::Continue(checkpoint) => Step::CaughtUp {
                through: head.max(checkpoint),
            },
        })
    }

    /// Runs until cancelled, fenced, stopped by a poison event, or past `until`, restarting
    /// from the checkpoint after failures as `restart` says. Each run is a task of its own,
    /// so a panic in a projection is caught here.
    pub(crate) async fn run(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        restart: Restart,
    ) -> Result<LaneExit> {
        let mut retry = Retry::new(&self.config);
        loop {
            let lane = self.clone();
            let token = shutdown.clone();
            let outcome = tokio::spawn(async move { lane.run_once(&token).await }).await;
            let projection = self.spec.projection.name().to_string();
            match outcome {
                Ok(Ok(exit)) => return Ok(exit),
                Ok(Err(EngineError::ShuttingDown)) => return Err(EngineError::ShuttingDown),
                Ok(Err(error)) if error.is_transient() => {
                    tracing::warn!(lane = %self.spec.describe(), %error, "lane interrupted; resuming from its checkpoint");
                    metrics::counter!("tidemark_projection_errors_total", "projection" => projection, "kind" => "transient").increment(1);
                }
                Ok(Err(error)) if restart == Restart::Always => {
                    tracing::error!(lane = %self.spec.describe(), %error, "lane failed; restarting from its checkpoint");
                    metrics::counter!("tidemark_projection_errors_total", "projection" => projection, "kind" => "lane").increment(1);
                }
                Ok(Err(error)) => return Err(error),
                Err(panic) if restart == Restart::Always => {
                    tracing::error!(lane = %self.spec.describe(), %panic, "lane panicked; restarting from its checkpoint");
                    metrics::counter!("tidemark_projection_errors_total", "projection" => projection, "kind" => "panic").increment(1);
                }
                Err(panic) => {
                    return Err(EngineError::LanePanicked {
                        lane: self.spec.describe(),
                        message: panic.to_string(),
                    })
                }
            }
            let progress = self.progress.borrow().checkpoint;
            if !retry.pause(progress, shutdown).await {
                return Ok(LaneExit::Shutdown);
            }
        }
    }

    async fn load_checkpoint(&self) -> Result<Position> {
        let checkpoint = crate::checkpoint::load(&self.store, &self.spec).await?;
        self.progress.send_modify(|p| {
            p.checkpoint = checkpoint;
            p.processed_through = p.processed_through.max(checkpoint);
        });
        Ok(checkpoint)
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<LaneExit> {
        let mut checkpoint = self.load_checkpoint().await?;
        if self.spec.until.is_some_and(|until| checkpoint >= until) {
            return Ok(LaneExit::ReachedEnd);
        }
        let parked_ahead =
            crate::dead_letter::parked_ahead(&self.store, &self.spec, checkpoint).await?;
        let fetch_stop = shutdown.child_token();
        let _stop_fetcher = fetch_stop.clone().drop_guard();
        // Only the events are read on the replica (when the store has one): the checkpoint,
        // the parked events and every commit are on the primary. The subscription reports
        // itself caught up only as far as the replica has replayed, so a lane (and a build
        // running to `until`) never takes a lagging replica for the end of the log.
        let reader = self.store.on_replica();
        let (mut pages, fetcher) = match &self.feeds {
            Some(feeds) if self.spec.reads_with_its_group() => {
                // Each read of the group is split among its lanes: read several batches at
                // once so each lane's share of a read is closer to a batch.
                let lanes = usize::from(self.spec.grouping.lanes(self.spec.partitions));
                let page_size = self.config.batch_size * lanes.clamp(1, FEED_READ_BATCHES);
                let pages = feeds.join(
                    &reader,
                    &self.spec,
                    checkpoint,
                    page_size,
                    self.config.fetch_ahead_pages,
                );
                (pages, None)
            }
            _ => {
                let (pages_tx, pages) = mpsc::channel(self.config.fetch_ahead_pages.max(1));
                let fetcher = tokio::spawn(fetch(
                    reader,
                    SubscribeOptions {
                        after: checkpoint,
                        filter: self.spec.read_filter(),
                        page_size: self.config.batch_size,
                    },
                    pages_tx,
                    fetch_stop,
                ));
                (pages, Some(fetcher))
            }
        };
        let mut rate = Rate::default();
        if let Some(pipeline) = self.pipeline() {
            let run = pipelined::Run {
                checkpoint,
                pages: &mut pages,
                parked_ahead: &parked_ahead,
                rate: &mut rate,
                shutdown,
            };
            return self.run_pipelined(run, pipeline).await;
        }
        let mut held: Option<Fetched> = None;
        loop {
            let fetched = match held.take() {
                Some(fetched) => Some(fetched),
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(LaneExit::Shutdown),
                    fetched = pages.recv() => fetched,
                },
            };
            let page = match fetched {
                Some(Fetched::Page(mut page)) => {
                    // Pages already waiting join this one up to a batch: a lane handed a
                    // small share of each read commits fewer, larger transactions.
                    while page.events.len() < self.config.batch_size {
                        match pages.try_recv() {
                            Ok(Fetched::Page(next))
                                if page.events.len() + next.events.len()
                                    <= self.config.batch_size =>
                            {
                                page.absorb(next)
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    page
                }
                Some(Fetched::Failed(error)) => return Err(error),
                None => {
                    if let Some(fetcher) = fetcher {
                        let _ = fetcher.await;
                    }
                    return Err(EngineError::Unavailable("the event fetcher stopped".into()));
                }
            };
            match self
                .apply_page(checkpoint, page, &parked_ahead, &mut rate, shutdown)
                .await?
            {
                Next::Continue(next) => checkpoint = next,
                Next::Exit(exit) => return Ok(exit),
            }
        }
    }

    /// A new pipeline of the lane's handler, when it has one and more than one page may be
    /// in flight.
    fn pipeline(&self) -> Option<Box<dyn crate::projection::Pipeline>> {
        if self.config.pages_in_flight > 1 {
            self.spec.projection.pipeline()
        } else {
            None
        }
    }

    /// Applies one page read after `checkpoint`: where pages become commits, for a running
    /// lane and for [`Lane::step`] alike.
    async fn apply_page(
        &self,
        checkpoint: Position,
        page: LanePage,
        parked_ahead: &[Position],
        rate: &mut Rate,
        shutdown: &CancellationToken,
    ) -> Result<Next> {
        let page = self.prepare(page, checkpoint);
        self.apply_prepared(
            checkpoint,
            &page,
            Handling::InTransaction,
            parked_ahead,
            rate,
            shutdown,
        )
        .await
    }

    /// The events of `page` this lane applies after `after`, and how far it read.
    fn prepare(&self, page: LanePage, after: Position) -> Prepared {
        let until = self.spec.until.unwrap_or(Position::MAX);
        let read_through = page.read_through.map(|p| p.min(until));
        // Events at or before `after` are already applied (or sent): a shared read may hand
        // them out again when another lane of the group joins behind this one.
        let events: Vec<RecordedEvent> = page
            .events
            .into_iter()
            .filter(|e| e.position > after && e.position <= until && self.spec.applies(e))
            .collect();
        Prepared {
            events,
            read_through,
            caught_up_to: page.caught_up_to,
        }
    }

    /// Commits a prepared page after `checkpoint`: its events (applied in the transaction,
    /// or already acknowledged by a pipeline, as `handling` says), then the events of the
    /// page it only reads past.
    async fn apply_prepared(
        &self,
        checkpoint: Position,
        page: &Prepared,
        handling: Handling,
        parked_ahead: &[Position],
        rate: &mut Rate,
        shutdown: &CancellationToken,
    ) -> Result<Next> {
        let until = self.spec.until.unwrap_or(Position::MAX);
        let events = &page.events;
        let read_through = page.read_through;
        let mut checkpoint = checkpoint;
        if let Some(last) = events.last() {
            // Events per second as they pass through the lane: this batch over the time
            // since the previous commit (idle time included), smoothed. Written with the
            // checkpoint, so status and metrics read what the lane last did.
            let per_second = rate.record(events.len());
            let span = tracing::info_span!(
                "lane_batch",
                projection = self.spec.projection.name(),
                partition = self.spec.partition,
                target = %self.spec.target.as_sql(),
                events = events.len(),
                after = checkpoint,
            );
            let started = Instant::now();
            let through = read_through.unwrap_or(0);
            let committed = match handling {
                Handling::InTransaction => {
                    self.apply_with_retries(
                        checkpoint,
                        events,
                        through,
                        parked_ahead,
                        per_second,
                        shutdown,
                    )
                    .instrument(span)
                    .await?
                }
                Handling::Acknowledged => {
                    let through = through.max(last.position);
                    match self
                        .commit(checkpoint, &[], through, parked_ahead, per_second)
                        .instrument(span)
                        .await?
                    {
                        Commit::Done => Some(through),
                        Commit::Fenced => return Ok(Next::Exit(LaneExit::Fenced)),
                    }
                }
            };
            match committed {
                Some(new_checkpoint) => checkpoint = new_checkpoint,
                None => return Ok(Next::Exit(self.stopped_or_fenced())),
            }
            crate::metrics::record_batch(
                self.spec.projection.name(),
                events.len(),
                started.elapsed(),
            );
            rate.committed();
            self.progress.send_modify(|p| {
                p.checkpoint = checkpoint;
                p.processed_through = p.processed_through.max(checkpoint);
                p.events_per_second = per_second;
            });
            if let Some(on_commit) = &self.on_commit {
                on_commit(events.len(), checkpoint);
            }
        }
        let idle_advance_due = |through: Position| {
            page.caught_up_to.is_some()
                || self.spec.until.is_some_and(|u| through >= u)
                || through - checkpoint >= (IDLE_ADVANCE_PAGES * self.config.batch_size) as Position
        };
        if let Some(through) = read_through.filter(|t| *t > checkpoint && idle_advance_due(*t)) {
            match self
                .commit(checkpoint, &[], through, parked_ahead, rate.value)
                .await?
            {
                Commit::Done => checkpoint = through,
                Commit::Fenced => return Ok(Next::Exit(LaneExit::Fenced)),
            }
            self.progress.send_modify(|p| {
                p.checkpoint = checkpoint;
                p.processed_through = p.processed_through.max(checkpoint);
            });
        }
        if let Some(caught_up) = page.caught_up_to {
            self.progress.send_modify(|p| {
                p.processed_through = p.processed_through.max(caught_up.min(until))
            });
            if caught_up >= until {
                return Ok(Next::Exit(LaneExit::ReachedEnd));
            }
        }
        if self.spec.until.is_some_and(|u| checkpoint >= u) {
            return Ok(Next::Exit(LaneExit::ReachedEnd));
        }
        Ok(Next::Continue(checkpoint))
    }

    fn stopped_or_fenced(&self) -> LaneExit {
        if self.fence.is_lost() {
            LaneExit::Fenced
        } else {
            LaneExit::Stopped
        }
    }

    /// Applies `events` (after `checkpoint`) and returns the new checkpoint, or `None` when the
    /// lane must stop (fenced, or a poison event under `ParkAndStop`). The batch's commit moves
    /// the checkpoint to `through` when that is past its last event (the read went further).
    /// A failing batch is retried event by event so that only the bad event is parked.
    async fn apply_with_retries(
        &self,
        checkpoint: Position,
        events: &[RecordedEvent],
        through: Position,
        parked_ahead: &[Position],
        events_per_second: f64,
        shutdown: &CancellationToken,
    ) -> Result<Option<Position>> {
        let Some(last) = events.last() else {
            return Ok(Some(checkpoint));
        };
        let through = through.max(last.position);
        match self
            .commit(checkpoint, events, through, parked_ahead, events_per_second)
            .await
        {
            Ok(Commit::Done) => return Ok(Some(through)),
            Ok(Commit::Fenced) => return Ok(None),
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(lane = %self.spec.describe(), %error, events = events.len(), "batch failed; isolating the bad event");
            }
        }
        let mut checkpoint = checkpoint;
        for event in events {
            let mut attempts = 0u32;
            let mut retry = Retry::new(&self.config);
            loop {
                let error = match self
                    .commit(
                        checkpoint,
                        std::slice::from_ref(event),
                        event.position,
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
                    Err(error) => error,
                };
                attempts += 1;
                metrics::counter!("tidemark_projection_errors_total", "projection" => self.spec.projection.name().to_string(), "kind" => "failed").increment(1);
                if attempts >= self.config.max_attempts {
                    let stop = self.spec.projection.failure_policy() == FailurePolicy::ParkAndStop;
                    match self.park(checkpoint, event, &error, attempts, stop).await? {
                        Commit::Fenced => return Ok(None),
                        Commit::Done if stop => return Ok(None),
                        Commit::Done => {
                            checkpoint = event.position;
                            break;
                        }
                    }
                }
                tracing::warn!(lane = %self.spec.describe(), position = event.position, attempts, %error, "event failed; retrying");
                if !retry.pause(checkpoint, shutdown).await {
                    return Err(EngineError::ShuttingDown);
                }
            }
        }
        Ok(Some(checkpoint))
    }

    /// One batch: lock and check the checkpoint (and lease), apply `events`, advance to
    /// `through` (resolving parked events the batch passed, see `dead_letter::parked_ahead`),
    /// commit. `events` may be empty: a keyed lane moves past events other lanes apply.
    async fn commit(
        &self,
        checkpoint: Position,
        events: &[RecordedEvent],
        through: Position,
        parked_ahead: &[Position],
        events_per_second: f64,
    ) -> Result<Commit> {
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
        let Some(mut locked) =
            LockedCheckpoint::lock(tx, &self.spec, &self.fence, Some(checkpoint)).await?
        else {
            return Ok(Commit::Fenced);
        };
        if !events.is_empty() {
            locked.apply(events, "applying events").await?;
        }
        locked.advance(through, Some(events_per_second)).await?;
        if parked_ahead
            .iter()
            .any(|p| *p > checkpoint && *p <= through)
        {
            crate::dead_letter::resolve_applied(locked.tx(), &self.spec, checkpoint, through)
                .await?;
        }
        locked.commit("committing a projection batch").await
    }

    /// Parks `event` and moves the checkpoint past it, in one transaction (so the event is
    /// either parked and skipped, or neither). With `stop`, the checkpoint stays before it
    /// and the projection is marked stopped instead.
    async fn park(
        &self,
        checkpoint: Position,
        event: &RecordedEvent,
        error: &EngineError,
        attempts: u32,
        stop: bool,
    ) -> Result<Commit> {
        let error = error.to_string();
        let mut client = self.store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(EngineError::db("starting to park an event"))?;
        let Some(mut locked) =
            LockedCheckpoint::lock(tx, &self.spec, &self.fence, Some(checkpoint)).await?
        else {
            return Ok(Commit::Fenced);
        };
        crate::dead_letter::record(locked.tx(), &self.spec, event, &error, attempts).await?;
        if stop {
            crate::dead_letter::stop_projection(locked.tx(), self.spec.projection.name()).await?;
        } else {
            locked.advance(event.position, None).await?;
        }
        let commit = locked.commit("committing a parked event").await?;
        if commit == Commit::Done {
            metrics::counter!("tidemark_projection_parked_total", "projection" => self.spec.projection.name().to_string()).increment(1);
            tracing::error!(
                projection = self.spec.projection.name(),
                position = event.position,
                event_id = %event.event_id,
                attempts,
                error,
                stopped = stop,
                "event parked as a dead letter"
            );
        }
        Ok(commit)
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
            Some(Ok(page)) => Fetched::Page(page.into()),
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

/// Events per second over recent batches (exponentially weighted), measured from one
/// commit to the next.
struct Rate {
    value: f64,
    last_commit: Instant,
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            value: 0.0,
            last_commit: Instant::now(),
        }
    }
}

impl Rate {
    fn record(&mut self, events: usize) -> f64 {
        let took = self.last_commit.elapsed();
        let instant = events as f64 / took.as_secs_f64().max(1e-6);
        self.value = if self.value == 0.0 {
            instant
        } else {
            0.8 * self.value + 0.2 * instant
        };
        self.value
    }

    fn committed(&mut self) {
        self.last_commit = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windowing::time::recorded_event;

    fn page(positions: &[Position], caught_up_to: Option<Position>) -> LanePage {
        let events: Vec<RecordedEvent> = positions
            .iter()
            .map(|p| {
                let mut event = recorded_event(serde_json::json!({}), serde_json::json!({}));
                event.position = *p;
                event
            })
            .collect();
        LanePage {
            read_through: events.last().map(|e| e.position),
            events,
            caught_up_to,
        }
    }

    #[test]
    fn absorbing_a_page_keeps_log_order_and_drops_what_a_rewound_read_repeats() {
        let mut first = page(&[3, 5, 8], None);
        // A shared read that started again behind hands out 5 and 8 once more.
        first.absorb(page(&[5, 8, 9, 12], Some(20)));
        let positions: Vec<Position> = first.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, [3, 5, 8, 9, 12]);
        assert_eq!(first.read_through, Some(12));
        assert_eq!(first.caught_up_to, Some(20));

        // An empty page that only reports progress keeps what the read covered.
        let mut second = page(&[4], Some(10));
        second.absorb(page(&[], None));
        assert_eq!(second.read_through, Some(4));
        assert_eq!(second.caught_up_to, Some(10));
    }
}
