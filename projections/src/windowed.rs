//! A windowed projection: the event-time window operator ([`crate::windowing`]) run as the
//! fold of an ordinary projection, so it runs in the same lanes, commits with the same
//! checkpoint, rebuilds and replays like any projection, and is exactly-once the same way.
//!
//! Grouped by its key ([`Grouping::ByKey`]): every event of a key is applied by one lane in
//! log order. The operator state is kept per *shard* — the partition its keys hash to
//! ([`key_partition`]) — whichever lane applies it: a live lane applies one shard, a build
//! lane (every partition, in log order) all of them, each shard's events in the same order.
//! So a shard's operator sees the same events in the same order live, after a crash, and in a
//! rebuild, and its results are the same. Processing time (for idleness) is the events'
//! `recorded_at`, never the wall clock, for the same reason.
//!
//! Per batch and shard, one transaction (the lane's): load the shard's state, apply the
//! events, write the result rows the changes net to ([`row_ops`]), store the changed keys and
//! the shard's watermark. Tables in the projection's schema:
//! - `windows`: one row per (key, window): status (`open`, `complete`, `final`, `revised`),
//!   the aggregate as JSON, events, revision;
//! - `window_state`: per (shard, key) the open (and retained) windows' accumulators;
//! - `window_meta`: per shard the watermark state and the late counters (also as columns,
//!   for status and metrics).

use crate::error::ProjectionError;
use crate::kinds::ProjectionKind;
use crate::projection::{quote_ident, ApplyContext, EventSelector, Grouping, Projection};
use crate::windowing::{
    event_time, key_partition, row_ops, to_datetime, EventTimeSource, KeySource, KeyState,
    MissingTimePolicy, OperatorMeta, RowOp, RowStatus, TimeMs, WindowChange, WindowConfig,
    WindowFold, WindowInput, WindowOperator, WindowingError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use tidemark_store::{Position, RecordedEvent};

/// A projection whose read model is keyed event-time windows and their aggregates.
pub struct WindowedProjection<F: WindowFold + Clone> {
    name: String,
    version: i32,
    pool: String,
    selector: EventSelector,
    time: EventTimeSource,
    missing_time: MissingTimePolicy,
    key: KeySource,
    config: WindowConfig,
    fold: F,
    /// Per read-model schema: does its `window_state` have the `next_due` column (read
    /// models set up by earlier releases do not, and load every key of a shard per batch)?
    layouts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>,
}

impl<F: WindowFold + Clone> WindowedProjection<F> {
    /// Windows of `config` folded with `fold` (an [`crate::windowing::Aggregate`] or your
    /// own), over every event, one key, event time `recorded_at`; refine with the `with_*`
    /// methods. An invalid configuration is refused here, not at the first event.
    pub fn new(
        name: impl Into<String>,
        config: WindowConfig,
        fold: F,
    ) -> Result<Self, WindowingError> {
        config.validate()?;
        Ok(WindowedProjection {
            name: name.into(),
            version: 1,
            pool: "default".into(),
            selector: EventSelector::all(),
            time: EventTimeSource::RecordedAt,
            missing_time: MissingTimePolicy::Park,
            key: KeySource::Global,
            config,
            fold,
            layouts: Default::default(),
        })
    }

    /// Which events it reads.
    pub fn with_selector(mut self, selector: EventSelector) -> Self {
        self.selector = selector;
        self
    }

    /// Where an event's time comes from, and what an event without one gets (parked, or its
    /// `recorded_at`).
    pub fn with_event_time(mut self, source: EventTimeSource, missing: MissingTimePolicy) -> Self {
        self.time = source;
        self.missing_time = missing;
        self
    }

    /// What the windows are per (a field, the stream, a function); one group by default.
    pub fn with_key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Bump to rebuild (a changed window spec or lateness needs it: stored state built with
    /// another one is refused).
    pub fn with_version(mut self, version: i32) -> Self {
        self.version = version;
        self
    }

    /// The worker pool it runs in.
    pub fn in_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = pool.into();
        self
    }

    /// Whether the read model's `window_state` keeps each key's `next_due` (asked once per
    /// schema and process; a stale "no" after a rebuild swapped in the new layout only costs
    /// full loads, and rows written without it count as due, see [`Self::load_due`]).
    async fn keeps_next_due(&self, ctx: &ApplyContext<'_>) -> Result<bool, ProjectionError> {
        if let Some(known) = self
            .layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ctx.schema)
        {
            return Ok(*known);
        }
        let keeps: bool = ctx
            .tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                                 WHERE table_schema = $1 AND table_name = 'window_state'
                                   AND column_name = 'next_due')",
                &[&ctx.schema],
            )
            .await?
            .get(0);
        self.layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ctx.schema.to_string(), keeps);
        Ok(keeps)
    }

    /// The shard's operator as stored (a fresh one when the shard has no state yet), with
    /// the state of the keys in `touched` only when the read model keeps `next_due` (the
    /// others are loaded when due, [`Self::load_due`]), else of every key.
    async fn load(
        &self,
        ctx: &ApplyContext<'_>,
        shard: i16,
        touched: Option<&[&str]>,
    ) -> Result<WindowOperator<F>, ProjectionError> {
        let meta = ctx
            .tx
            .query_opt(
                &format!(
                    "SELECT meta FROM {} WHERE shard = $1",
                    ctx.table("window_meta")
                ),
                &[&shard],
            )
            .await?;
        let Some(meta) = meta else {
            return WindowOperator::new(self.config.clone(), self.fold.clone())
                .map_err(ProjectionError::failed);
        };
        let meta: OperatorMeta = serde_json::from_value(meta.get(0))
            .map_err(|e| ProjectionError::failed(format!("stored window meta: {e}")))?;
        let table = ctx.table("window_state");
        let rows = match touched {
            Some(keys) => {
                let statement = ctx
                    .tx
                    .prepare_cached(&format!(
                        "SELECT key, windows FROM {table} WHERE shard = $1 AND key = ANY($2)"
                    ))
                    .await?;
                ctx.tx.query(&statement, &[&shard, &keys]).await?
            }
            None => {
                ctx.tx
                    .query(
                        &format!("SELECT key, windows FROM {table} WHERE shard = $1"),
                        &[&shard],
                    )
                    .await?
            }
        };
        WindowOperator::restore_parts(
            self.config.clone(),
            self.fold.clone(),
            meta,
            key_states::<F>(rows)?,
        )
        .map_err(ProjectionError::failed)
    }

    /// Loads the keys of the shard (beyond those already held) whose windows the operator's
    /// watermark has made due, and fires them.
    async fn load_due(
        &self,
        ctx: &ApplyContext<'_>,
        shard: i16,
        operator: &mut WindowOperator<F>,
        held: &[&str],
    ) -> Result<Vec<WindowChange>, ProjectionError> {
        let Some(watermark) = operator.watermark() else {
            return Ok(Vec::new());
        };
        let statement = ctx
            .tx
            .prepare_cached(&format!(
                "SELECT key, windows FROM {} WHERE shard = $1 AND key <> ALL($2)
                    AND (next_due IS NULL OR next_due <= $3)",
                ctx.table("window_state")
            ))
            .await?;
        let rows = ctx
            .tx
            .query(&statement, &[&shard, &held, &watermark])
            .await?;
        Ok(operator.restore_more_keys(key_states::<F>(rows)?))
    }

    /// Stores what the batch changed in the shard's state.
    async fn save(
        &self,
        ctx: &ApplyContext<'_>,
        shard: i16,
        operator: &mut WindowOperator<F>,
        keeps_next_due: bool,
    ) -> Result<(), ProjectionError> {
        let delta = operator.take_delta();
        // One statement for the kept keys and one for the emptied ones, whatever their
        // number: a batch over many keys would otherwise wait for a round trip per key.
        let mut kept: Vec<&str> = Vec::new();
        let mut states: Vec<serde_json::Value> = Vec::new();
        let mut next_dues: Vec<Option<TimeMs>> = Vec::new();
        let mut emptied: Vec<&str> = Vec::new();
        for (key, state) in &delta.keys {
            match state {
                Some(state) => {
                    kept.push(key);
                    states.push(
                        serde_json::to_value(state)
                            .map_err(|e| ProjectionError::failed(format!("window state: {e}")))?,
                    );
                    next_dues.push(operator.next_due(key));
                }
                None => emptied.push(key),
            }
        }
        let table = ctx.table("window_state");
        if !kept.is_empty() {
            if keeps_next_due {
                let upsert = ctx
                    .tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} (shard, key, windows, next_due)
                         SELECT $1, * FROM unnest($2::text[], $3::jsonb[], $4::bigint[])
                         ON CONFLICT (shard, key) DO UPDATE SET windows = EXCLUDED.windows,
                            next_due = EXCLUDED.next_due"
                    ))
                    .await?;
                ctx.tx
                    .execute(&upsert, &[&shard, &kept, &states, &next_dues])
                    .await?;
            } else {
                let upsert = ctx
                    .tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} (shard, key, windows)
                         SELECT $1, * FROM unnest($2::text[], $3::jsonb[])
                         ON CONFLICT (shard, key) DO UPDATE SET windows = EXCLUDED.windows"
                    ))
                    .await?;
                ctx.tx.execute(&upsert, &[&shard, &kept, &states]).await?;
            }
        }
        if !emptied.is_empty() {
            let delete = ctx
                .tx
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE shard = $1 AND key = ANY($2)"
                ))
                .await?;
            ctx.tx.execute(&delete, &[&shard, &emptied]).await?;
        }
        let meta = serde_json::to_value(&delta.meta)
            .map_err(|e| ProjectionError::failed(format!("window meta: {e}")))?;
        let watermark = delta.meta.watermark.watermark.map(to_datetime);
        ctx.tx
            .execute(
                &format!(
                    "INSERT INTO {} (shard, meta, watermark, late_dropped, late_parked)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (shard) DO UPDATE SET meta = EXCLUDED.meta,
                        watermark = EXCLUDED.watermark, late_dropped = EXCLUDED.late_dropped,
                        late_parked = EXCLUDED.late_parked",
                    ctx.table("window_meta")
                ),
                &[
                    &shard,
                    &meta,
                    &watermark,
                    &(delta.meta.late_dropped as i64),
                    &(delta.meta.late_parked as i64),
                ],
            )
            .await?;
        Ok(())
    }
}

/// Stored window states, by key.
type KeyStates<A> = Vec<(String, KeyState<A>)>;

/// Keyed window states from `(key, windows)` rows.
fn key_states<F: WindowFold>(
    rows: Vec<tokio_postgres::Row>,
) -> Result<KeyStates<F::Acc>, ProjectionError> {
    rows.iter()
        .map(|row| {
            let state: KeyState<F::Acc> = serde_json::from_value(row.get(1))
                .map_err(|e| ProjectionError::failed(format!("stored window state: {e}")))?;
            Ok((row.get::<_, String>(0), state))
        })
        .collect()
}

/// Writes the result rows a batch's changes net to.
/// `changed_at` is the position of the last event of the batch that changed the rows: a
/// reader of changes takes rows up to the lowest checkpoint of the projection's lanes, past
/// which no lane can commit a change any more (see [`WindowQuery::changed`]).
async fn write_results(
    ctx: &ApplyContext<'_>,
    changes: &[WindowChange],
    changed_at: Position,
) -> Result<(), ProjectionError> {
    // Set-based, one statement each for the upserts and the deletes: see `save`.
    let mut upserts = ResultColumns::default();
    let (mut gone_keys, mut gone_starts, mut gone_ends) = (Vec::new(), Vec::new(), Vec::new());
    for op in row_ops(changes) {
        match op {
            RowOp::Upsert { status, result } => {
                upserts.keys.push(result.key);
                upserts.starts.push(to_datetime(result.window.start));
                upserts.ends.push(to_datetime(result.window.end));
                upserts.statuses.push(status.as_str());
                upserts.aggregates.push(result.aggregate);
                upserts.events.push(result.events as i64);
                upserts.revisions.push(result.revision as i32);
            }
            RowOp::Delete { key, window } => {
                gone_keys.push(key);
                gone_starts.push(to_datetime(window.start));
                gone_ends.push(to_datetime(window.end));
            }
        }
    }
    let table = ctx.table("windows");
    if !gone_keys.is_empty() {
        let delete = ctx
            .tx
            .prepare_cached(&format!(
                "DELETE FROM {table} w
                  USING unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS g(key, s, e)
                  WHERE w.key = g.key AND w.window_start = g.s AND w.window_end = g.e"
            ))
            .await?;
        ctx.tx
            .execute(&delete, &[&gone_keys, &gone_starts, &gone_ends])
            .await?;
    }
    if !upserts.keys.is_empty() {
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {table} (key, window_start, window_end, status, aggregate, events, revision, changed_at)
                 SELECT *, $8 FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[],
                                         $4::text[], $5::jsonb[], $6::bigint[], $7::int[])
                 ON CONFLICT (key, window_start, window_end) DO UPDATE SET status = EXCLUDED.status,
                    aggregate = EXCLUDED.aggregate, events = EXCLUDED.events,
                    revision = EXCLUDED.revision, changed_at = EXCLUDED.changed_at"
            ))
            .await?;
        ctx.tx
            .execute(
                &upsert,
                &[
                    &upserts.keys,
                    &upserts.starts,
                    &upserts.ends,
                    &upserts.statuses,
                    &upserts.aggregates,
                    &upserts.events,
                    &upserts.revisions,
                    &changed_at,
                ],
            )
            .await?;
    }
    Ok(())
}

/// The result rows of a batch's upserts, column by column (statement arrays).
#[derive(Default)]
struct ResultColumns {
    keys: Vec<String>,
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
    statuses: Vec<&'static str>,
    aggregates: Vec<serde_json::Value>,
    events: Vec<i64>,
    revisions: Vec<i32>,
}

#[async_trait]
impl<F: WindowFold + Clone> Projection for WindowedProjection<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> i32 {
        self.version
    }

    fn selector(&self) -> EventSelector {
        self.selector.clone()
    }

    fn pool(&self) -> &str {
        &self.pool
    }

    fn grouping(&self) -> Grouping {
        Grouping::ByKey(self.key.clone())
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Windowed
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.tx
            .batch_execute(&format!(
                "CREATE TABLE {windows} (
                    key text NOT NULL,
                    window_start timestamptz NOT NULL,
                    window_end timestamptz NOT NULL,
                    status text NOT NULL,
                    aggregate jsonb NOT NULL,
                    events bigint NOT NULL,
                    revision integer NOT NULL,
                    changed_at bigint NOT NULL,
                    PRIMARY KEY (key, window_start, window_end));
                 CREATE INDEX ON {windows} (changed_at);
                 CREATE TABLE {state} (
                    shard smallint NOT NULL,
                    key text NOT NULL,
                    windows jsonb NOT NULL,
                    next_due bigint,
                    PRIMARY KEY (shard, key));
                 CREATE INDEX ON {state} (shard, next_due);
                 CREATE TABLE {meta} (
                    shard smallint PRIMARY KEY,
                    meta jsonb NOT NULL,
                    watermark timestamptz,
                    late_dropped bigint NOT NULL,
                    late_parked bigint NOT NULL);",
                windows = ctx.table("windows"),
                state = ctx.table("window_state"),
                meta = ctx.table("window_meta"),
            ))
            .await?;
        Ok(())
    }

    /// An event without a usable time or key, with a value the fold refuses, or too late
    /// under `LatePolicy::Park` fails the batch; the lane then applies the batch event by
    /// event and parks that one (the state is reloaded from the transaction each time, so a
    /// failed attempt leaves nothing behind).
    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut shards: BTreeMap<i16, Vec<(&RecordedEvent, String, TimeMs)>> = BTreeMap::new();
        for event in events {
            let key = self.key.key_of(event).map_err(ProjectionError::failed)?;
            let time = event_time(event, &self.time, self.missing_time)
                .map_err(ProjectionError::failed)?;
            shards
                .entry(key_partition(&key, ctx.partitions))
                .or_default()
                .push((event, key, time));
        }
        let keeps_next_due = self.keeps_next_due(ctx).await?;
        for (shard, events) in shards {
            let mut touched: Vec<&str> = events.iter().map(|(_, key, _)| key.as_str()).collect();
            touched.sort_unstable();
            touched.dedup();
            let mut operator = self
                .load(ctx, shard, keeps_next_due.then_some(&touched[..]))
                .await?;
            let changed_at = events.last().map_or(0, |(event, ..)| event.position);
            let mut changes = Vec::new();
            for (event, key, time) in &events {
                let (event, time) = (*event, *time);
                let input = WindowInput {
                    partition: event.partition,
                    key,
                    time,
                    value: &event.payload,
                };
                let out = operator.apply(input, event.recorded_at.timestamp_millis());
                if let Some(WindowChange::Park { reason }) = out.first() {
                    return Err(ProjectionError::failed(format!(
                        "event {} cannot be windowed: {reason}",
                        event.event_id
                    )));
                }
                changes.extend(out);
            }
            if keeps_next_due {
                changes.extend(self.load_due(ctx, shard, &mut operator, &touched).await?);
            }
            write_results(ctx, &changes, changed_at).await?;
            self.save(ctx, shard, &mut operator, keeps_next_due).await?;
        }
        Ok(())
    }
}

/// One row of a windowed projection's results.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub key: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: RowStatus,
    /// The fold's output.
    pub aggregate: serde_json::Value,
    pub events: i64,
    /// Changes after the window was final.
    pub revision: i32,
    /// Position of the last event of the batch that last changed the row.
    pub changed_at: Position,
}

/// Which result rows to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowQuery {
    /// One key; all when `None`.
    pub key: Option<String>,
    /// Windows ending after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Windows starting before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only results that will not change again except by a revision (`final`, `revised`).
    pub final_only: bool,
    /// Only rows changed in `(after, upto]` (positions), in the order they changed: a reader
    /// of changes passes its cursor and the projection's lowest checkpoint, so rows a lane has
    /// yet to commit cannot be skipped.
    pub changed: Option<(Position, Position)>,
    pub limit: i64,
}

/// Reads result rows of the windowed projection whose live schema is `schema`.
pub(crate) async fn read_rows(
    client: &deadpool_postgres::Client,
    schema: &str,
    query: &WindowQuery,
) -> Result<Vec<WindowRow>, tokio_postgres::Error> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident("windows"));
    let (after, upto) = query.changed.unwrap_or((Position::MIN, Position::MAX));
    let order = if query.changed.is_some() {
        "changed_at, key, window_start"
    } else {
        "key, window_start, window_end"
    };
    let final_statuses = [RowStatus::Final.as_str(), RowStatus::Revised.as_str()];
    let rows = client
        .query(
            &format!(
                "SELECT key, window_start, window_end, status, aggregate, events, revision, changed_at
                   FROM {table}
                  WHERE ($1::text IS NULL OR key = $1)
                    AND ($2::timestamptz IS NULL OR window_end > $2)
                    AND ($3::timestamptz IS NULL OR window_start < $3)
                    AND (NOT $4 OR status = ANY($5))
                    AND changed_at > $6 AND changed_at <= $7
                  ORDER BY {order} LIMIT $8"
            ),
            &[
                &query.key,
                &query.from,
                &query.to,
                &query.final_only,
                &&final_statuses[..],
                &after,
                &upto,
                &query.limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WindowRow {
            key: r.get(0),
            start: r.get(1),
            end: r.get(2),
            status: RowStatus::parse(r.get(3)).unwrap_or(RowStatus::Open),
            aggregate: r.get(4),
            events: r.get(5),
            revision: r.get(6),
            changed_at: r.get(7),
        })
        .collect())
}
