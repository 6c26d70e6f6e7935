//! What an application writes: a [`Projection`] (a fold into Postgres tables) or a
//! [`Handler`] (a side effect elsewhere, optionally acknowledged asynchronously through a
//! [`Pipeline`]), and the context each is given.

use crate::error::ProjectionError;
use async_trait::async_trait;
use tidemark_store::{LogFilter, RecordedEvent};

/// What to do when an event still fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Park the event in the dead-letter table and go on with the next one.
    #[default]
    ParkAndContinue,
    /// Park the event and stop this partition until an operator intervenes.
    ParkAndStop,
}

/// Which lane applies an event: how a projection's events are grouped over its partitions.
#[derive(Debug, Clone, Default)]
pub enum Grouping {
    /// By stream (the default): partition `p` applies the events of the streams the store
    /// hashes to `p`, each stream in version order.
    #[default]
    ByStream,
    /// By a key (a field, the stream, a function): every event with one key is applied by
    /// the same lane, in log order, whatever stream it came from. A projection that updates
    /// a row shared by many streams (a total per category) needs this: grouped by stream,
    /// partitions applying in parallel update that row in any order and can deadlock.
    /// Each lane reads the whole log (filtered by the selector) and applies its keys' share;
    /// an event without a usable key is parked.
    ByKey(crate::windowing::KeySource),
    /// Evenly, by event id, with no order at all: for handlers whose side effects need none
    /// (sending mail), so one busy stream's events spread over every worker. Each lane reads
    /// the whole log (filtered by the selector) and applies its share.
    Shuffle,
    /// The whole log in log order, by a single lane (partition 0, one lease): for handlers
    /// whose destination must see every event in the order of the log, such as the relay to
    /// a message broker. It runs in one process at a time and does not scale out; its rate
    /// is one lane's.
    LogOrder,
}

impl Grouping {
    /// Does each lane read every partition (and keep its share)?
    pub(crate) fn reads_every_partition(&self) -> bool {
        !matches!(self, Grouping::ByStream)
    }

    /// How many lanes (leases, live checkpoints) a projection grouped so runs over a store of
    /// `partitions` partitions: one per partition, or the single lane of a log-order one.
    pub fn lanes(&self, partitions: u16) -> u16 {
        match self {
            Grouping::LogOrder => 1,
            _ => partitions,
        }
    }
}

/// How a [`Handler`] avoids repeating its side effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandlerDedup {
    /// The engine records each handled event's id in `handler_dedup`, in the transaction
    /// that advances the checkpoint, and skips recorded events (a rebuild or a replayed
    /// dead letter does not repeat them).
    #[default]
    Recorded,
    /// The destination drops repeats by event id itself (a broker's duplicate window): the
    /// engine keeps no record (no row per event), and the events after the checkpoint are
    /// handled again after a crash.
    AtDestination,
}

/// Which events a projection reads. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSelector {
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
}

impl EventSelector {
    pub fn all() -> Self {
        EventSelector::default()
    }

    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(categories: I) -> Self {
        EventSelector {
            categories: categories.into_iter().map(Into::into).collect(),
            event_types: vec![],
        }
    }

    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        EventSelector {
            categories: vec![],
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    pub(crate) fn log_filter(&self, partition: Option<i16>) -> LogFilter {
        LogFilter {
            categories: self.categories.clone(),
            event_types: self.event_types.clone(),
            partition,
        }
    }
}

/// Where a projection writes: an open transaction and the schema of the target read model
/// (the live one, a shadow being rebuilt, or an as-of copy). Always qualify table names
/// with [`ApplyContext::table`] so the same code writes to whichever target is running.
pub struct ApplyContext<'a> {
    pub tx: &'a deadpool_postgres::Transaction<'a>,
    pub schema: &'a str,
    /// The store's partition count: what keys are hashed onto
    /// ([`crate::windowing::key_partition`]), e.g. to keep state per lane of a keyed projection.
    pub partitions: u16,
}

impl ApplyContext<'_> {
    /// `"schema"."name"`, quoted, for use in SQL.
    pub fn table(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(self.schema), quote_ident(name))
    }

    /// Creates the table `name` in the target schema with `columns` (SQL column and
    /// constraint definitions): what most `setup`s do.
    pub async fn create_table(&self, name: &str, columns: &str) -> Result<(), ProjectionError> {
        self.tx
            .batch_execute(&format!("CREATE TABLE {} ({columns})", self.table(name)))
            .await?;
        Ok(())
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A read model kept in Postgres, built by folding events.
///
/// The engine calls `apply` with a batch of events in position order (per stream, in version
/// order) inside the transaction that also advances the projection's checkpoint: the read
/// model is exactly-once. `apply` must not commit, and should not have side effects outside
/// the transaction (use a [`Handler`] for those).
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique, stable name (also names the checkpoint and the default schema).
    fn name(&self) -> &str;

    /// Bump to rebuild the read model from the start on the next engine start.
    fn version(&self) -> i32 {
        1
    }

    /// Which events to receive.
    fn selector(&self) -> EventSelector {
        EventSelector::all()
    }

    /// The schema holding the live read model; readers query `schema.table`.
    fn schema(&self) -> String {
        format!(
            "rm_{}",
            self.name()
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }

    /// Worker pool this projection runs in (see scale-out); `default` unless pinned.
    fn pool(&self) -> &str {
        "default"
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::default()
    }

    /// Which lane applies which events (by stream unless the projection says otherwise).
    fn grouping(&self) -> Grouping {
        Grouping::ByStream
    }

    /// What its read model is (status reads a windowed one's watermark and lateness).
    fn kind(&self) -> crate::kinds::ProjectionKind {
        crate::kinds::ProjectionKind::Fold
    }

    /// Creates the read-model tables in `ctx.schema` (which exists and is empty).
    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError>;

    /// Applies a batch of events.
    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError>;

    /// Clears state kept outside `ctx.schema` before a rebuild. The engine already drops and
    /// recreates the schema itself, so most projections keep the default.
    async fn reset(&self, _ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// A [`Pipeline`] for one run of a lane, when the projection's side effects are
    /// acknowledged asynchronously (see [`Handler::pipeline`]). A fold applies in the
    /// checkpoint's transaction and keeps the default, `None`; the engine's wrapper of a
    /// [`Handler`] answers for it.
    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        None
    }
}

/// Resolves once the side effects of one batch sent through a [`Pipeline`] are done
/// (every event acknowledged by the destination), or with why not.
pub type Acknowledgement = futures::future::BoxFuture<'static, Result<(), ProjectionError>>;

/// The sending half of a [`Handler`] whose destination acknowledges asynchronously, such as a
/// message broker: the lane sends a page, and sends the next ones while the earlier pages'
/// acknowledgements (and then their checkpoint commits) are pending, up to
/// [`crate::EngineConfig::pages_in_flight`] pages.
///
/// A lane opens one pipeline per run (after every restart, a new one) and sends it its pages
/// in log order, each the one after the previous. It commits the checkpoint past a page only
/// once that page's acknowledgement and those of every earlier page resolved `Ok`, in order.
/// When one fails, the lane drops the pipeline and every later page's acknowledgement, and
/// sends again from its checkpoint (transient error: after a pause; any other error: the
/// pages are handled one by one through [`Handler::handle_batch`], isolating and parking the
/// bad event as usual).
///
/// So the pipeline must make sure that when a page fails, the later pages already sent cannot
/// take effect before it, out of order: chain each page to the one before it, as the relay
/// does with JetStream's `Nats-Expected-Last-Msg-Id` (a publish whose predecessor is missing is
/// refused). And as with any handler, repeats after a failure or a crash must be harmless
/// (the destination drops them by event id: [`HandlerDedup::AtDestination`]).
#[async_trait]
pub trait Pipeline: Send {
    /// Starts the side effects of `events` — the batch after the previous one sent through
    /// this pipeline, or after the lane's checkpoint for the first — and returns their
    /// acknowledgement without waiting for it. An error here fails the page as a failed
    /// acknowledgement would.
    async fn send(&mut self, events: &[RecordedEvent]) -> Result<Acknowledgement, ProjectionError>;
}

/// A side effect outside Postgres (calling another service, sending mail). At-least-once:
/// a batch is handled, then recorded in `handler_dedup` with the checkpoint; a crash in
/// between handles it again, so `handle` should be idempotent on `event.event_id`. Once
/// recorded, a retried event is skipped (unless the handler's [`HandlerDedup`] says its
/// destination dedups instead).
///
/// The checkpoint moves only after `handle_batch` returned `Ok`: an error leaves it before
/// the batch. A transient error ([`ProjectionError::transient`]) restarts the lane from its
/// checkpoint after a pause, without counting towards parking; any other error retries the
/// batch event by event and parks the event that keeps failing.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    fn name(&self) -> &str;

    fn selector(&self) -> EventSelector {
        EventSelector::all()
    }

    fn pool(&self) -> &str {
        "default"
    }

    /// Which lane handles which events (by stream unless the handler says otherwise;
    /// [`Grouping::Shuffle`] when order does not matter).
    fn grouping(&self) -> Grouping {
        Grouping::ByStream
    }

    /// What to do with an event that keeps failing.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::default()
    }

    /// Who drops repeated events: the engine's `handler_dedup` rows, or the destination.
    fn dedup(&self) -> HandlerDedup {
        HandlerDedup::Recorded
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError>;

    /// Handles a batch, in the lane's order (the same order `handle` would see). By default
    /// one `handle` after another; a handler overrides it to do a batch's side effects
    /// together (publishes pipelined, then every acknowledgement awaited). It must return
    /// `Ok` only once every event of the batch is done: the checkpoint then moves past them.
    async fn handle_batch(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        for event in events {
            self.handle(event).await?;
        }
        Ok(())
    }

    /// A handler whose destination acknowledges asynchronously returns a new [`Pipeline`]
    /// here: its lanes then keep several pages in flight (the next page is sent while the
    /// previous one's acknowledgement and checkpoint are pending) instead of handling one
    /// page at a time inside the checkpoint's transaction. Only for a handler whose
    /// destination drops repeats ([`HandlerDedup::AtDestination`]): the engine's dedup rows
    /// are written in the checkpoint's transaction, so a `Recorded` handler is never
    /// pipelined. `handle_batch` stays in use: [`crate::Lane::step`] and the isolation of a
    /// failing page go through it.
    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        None
    }
}

/// Runs a [`Handler`] with the projection machinery: the dedup rows are its read model.
pub(crate) struct HandlerProjection<H>(pub H);

#[async_trait]
impl<H: Handler> Projection for HandlerProjection<H> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn selector(&self) -> EventSelector {
        self.0.selector()
    }

    fn pool(&self) -> &str {
        self.0.pool()
    }

    fn grouping(&self) -> Grouping {
        self.0.grouping()
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.0.failure_policy()
    }

    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        match self.0.dedup() {
            HandlerDedup::AtDestination => self.0.pipeline(),
            HandlerDedup::Recorded => None,
        }
    }

    async fn setup(&self, _ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        Ok(())
    }

    /// Hands the batch's unrecorded events to the handler at once, then records them in the
    /// transaction that advances the checkpoint (one query each way per batch).
    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        if self.0.dedup() == HandlerDedup::AtDestination {
            return self.0.handle_batch(events).await;
        }
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
        let seen = ctx
            .tx
            .prepare_cached(
                "SELECT event_id FROM handler_dedup WHERE handler = $1 AND event_id = ANY($2)",
            )
            .await?;
        let seen: std::collections::HashSet<uuid::Uuid> = ctx
            .tx
            .query(&seen, &[&self.0.name(), &ids])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let fresh: Vec<RecordedEvent>;
        let fresh: &[RecordedEvent] = if seen.is_empty() {
            events
        } else {
            fresh = events
                .iter()
                .filter(|e| !seen.contains(&e.event_id))
                .cloned()
                .collect();
            &fresh
        };
        if fresh.is_empty() {
            return Ok(());
        }
        self.0.handle_batch(fresh).await?;
        let ids: Vec<uuid::Uuid> = fresh.iter().map(|e| e.event_id).collect();
        let record = ctx
            .tx
            .prepare_cached(
                "INSERT INTO handler_dedup (handler, event_id) SELECT $1, unnest($2::uuid[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        ctx.tx.execute(&record, &[&self.0.name(), &ids]).await?;
        Ok(())
    }
}
