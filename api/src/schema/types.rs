//! GraphQL types of the built-in schema: events in and out, pages, projection status.

use async_graphql::{
    ComplexObject, Enum, InputObject, InputValueError, InputValueResult, Json, Object, Scalar,
    ScalarType, SimpleObject, Value,
};
use chrono::{DateTime, Utc};
use tidemark_projections::{
    DeadLetter, PartitionLag, ProjectionStatus, RebuildProgress, WorkerInfo,
};
use tidemark_store::{AppendOutcome, ExpectedVersion, RecordedEvent};
use uuid::Uuid;

use super::scalars::Int64;

/// What the client believes about the stream before appending: `"any"`, `"no_stream"`,
/// `"stream_exists"`, or the exact version of the stream's last event as a number (`3`, or
/// `"3"`). A mismatch fails with `WRONG_EXPECTED_VERSION` and writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVersionInput(pub ExpectedVersion);

/// What the client believes about the stream before appending: `"any"`, `"no_stream"`,
/// `"stream_exists"`, or the exact version of the stream's last event as a number (`3`, or
/// `"3"`). A mismatch fails with `WRONG_EXPECTED_VERSION` and writes nothing.
#[Scalar(name = "ExpectedVersion")]
impl ScalarType for ExpectedVersionInput {
    fn parse(value: Value) -> InputValueResult<Self> {
        let parsed = match &value {
            Value::Number(n) => n.as_i64().map(ExpectedVersion::Exact),
            Value::String(s) => parse_expected(s),
            _ => None,
        };
        match parsed {
            Some(ExpectedVersion::Exact(v)) if v < 0 => Err(InputValueError::custom(
                "expectedVersion must not be negative; versions start at 0",
            )),
            Some(expected) => Ok(ExpectedVersionInput(expected)),
            None => Err(InputValueError::custom(
                "expectedVersion must be \"any\", \"no_stream\", \"stream_exists\" or a version number",
            )),
        }
    }

    fn to_value(&self) -> Value {
        match self.0 {
            ExpectedVersion::Exact(v) => Value::from(v),
            other => Value::from(expected_to_string(other)),
        }
    }
}

fn parse_expected(text: &str) -> Option<ExpectedVersion> {
    match text.trim().to_ascii_lowercase().as_str() {
        "any" => Some(ExpectedVersion::Any),
        "no_stream" => Some(ExpectedVersion::NoStream),
        "stream_exists" => Some(ExpectedVersion::StreamExists),
        number => number.parse().ok().map(ExpectedVersion::Exact),
    }
}

/// The wire form of an expectation (`"any"`, ..., or the number as a string).
pub fn expected_to_string(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any".into(),
        ExpectedVersion::NoStream => "no_stream".into(),
        ExpectedVersion::StreamExists => "stream_exists".into(),
        ExpectedVersion::Exact(v) => v.to_string(),
    }
}

/// One event to append.
#[derive(Debug, Clone, InputObject)]
pub struct EventInput {
    /// Optional client-chosen id. Without one, an append with an exact or `no_stream`
    /// expectation gets an id derived from its content and position (so a blind retry is
    /// idempotent), any other append a fresh UUIDv7.
    pub event_id: Option<Uuid>,
    /// The event type, e.g. `MoneyDeposited`.
    #[graphql(name = "type")]
    pub event_type: String,
    /// The payload: a JSON object.
    pub data: Json<serde_json::Value>,
    /// Metadata: a JSON object (correlation and causation ids, actor...). Default `{}`.
    pub metadata: Option<Json<serde_json::Value>>,
    /// Version of the payload's schema, for upcasting. Default 1.
    #[graphql(default = 1)]
    pub schema_version: i32,
}

/// An event as stored in the log.
pub struct Event(pub RecordedEvent);

/// An event as stored in the log.
#[Object]
impl Event {
    /// Global position: dense, in commit order, starting at 1. Use it as a cursor.
    async fn position(&self) -> Int64 {
        Int64(self.0.position)
    }
    async fn stream_id(&self) -> &str {
        &self.0.stream_id
    }
    /// Version within the stream, from 0.
    async fn stream_version(&self) -> Int64 {
        Int64(self.0.stream_version)
    }
    /// The stream's category: its id up to the first `-`.
    async fn category(&self) -> &str {
        self.0.category()
    }
    async fn partition(&self) -> i16 {
        self.0.partition
    }
    async fn event_id(&self) -> Uuid {
        self.0.event_id
    }
    #[graphql(name = "type")]
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    async fn schema_version(&self) -> i32 {
        self.0.schema_version
    }
    async fn data(&self) -> Json<&serde_json::Value> {
        Json(&self.0.payload)
    }
    async fn metadata(&self) -> Json<&serde_json::Value> {
        Json(&self.0.metadata)
    }
    /// blake3 of the canonical content, hexadecimal.
    async fn content_hash(&self) -> String {
        hex(&self.0.content_hash)
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where to continue.
#[derive(Debug, Clone, SimpleObject)]
pub struct PageInfo {
    /// The cursor of the last event of this page: its position (log reads) or stream
    /// version (stream reads). Pass it as `after` to get the next page. Null when empty.
    pub end_cursor: Option<Int64>,
    /// Whether more events were there when this page was read.
    pub has_next_page: bool,
}

/// A page of events from the log.
#[derive(SimpleObject)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub page_info: PageInfo,
}

/// A page of one stream's events.
#[derive(SimpleObject)]
pub struct StreamPage {
    pub stream_id: String,
    /// The stream's last version now; null when the stream has no events.
    pub version: Option<Int64>,
    pub events: Vec<Event>,
    pub page_info: PageInfo,
}

/// Where one appended event landed.
#[derive(Debug, Clone, SimpleObject)]
pub struct AppendedEvent {
    pub event_id: Uuid,
    pub position: Int64,
    pub stream_version: Int64,
    /// The event was already stored (an idempotent retry or content dedup); the position
    /// and version are the original's.
    pub duplicate: bool,
}

/// The result of an append.
#[derive(Debug, Clone, SimpleObject)]
pub struct AppendResult {
    pub stream_id: String,
    /// The stream's last version after the append.
    pub stream_version: Int64,
    /// Position of the last event: wait for this one to read your writes.
    pub last_position: Int64,
    /// How many events were already stored.
    pub duplicates: i32,
    pub events: Vec<AppendedEvent>,
}

impl From<AppendOutcome> for AppendResult {
    fn from(outcome: AppendOutcome) -> Self {
        AppendResult {
            last_position: Int64(outcome.last_position()),
            duplicates: outcome.events.iter().filter(|e| e.duplicate).count() as i32,
            stream_id: outcome.stream_id,
            stream_version: Int64(outcome.stream_version),
            events: outcome
                .events
                .into_iter()
                .map(|e| AppendedEvent {
                    event_id: e.event_id,
                    position: Int64(e.position),
                    stream_version: Int64(e.stream_version),
                    duplicate: e.duplicate,
                })
                .collect(),
        }
    }
}

/// One partition of a projection.
pub struct PartitionStatus(pub PartitionLag);

/// One partition of a projection: its checkpoint and lag.
#[Object]
impl PartitionStatus {
    async fn partition(&self) -> i16 {
        self.0.partition
    }
    /// Every matching event up to here is applied.
    async fn checkpoint(&self) -> Int64 {
        Int64(self.0.checkpoint)
    }
    /// Matching events after the checkpoint (capped at 1,000,000).
    async fn lag_events(&self) -> Int64 {
        Int64(self.0.lag_events)
    }
    /// Age of the oldest unapplied event; 0 when caught up.
    async fn lag_seconds(&self) -> f64 {
        self.0.lag_seconds
    }
    async fn events_per_second(&self) -> f64 {
        self.0.events_per_second
    }
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.0.updated_at
    }
}

/// A partition nobody applies events of.
pub struct UnownedPartition(pub tidemark_projections::UnownedPartition);

/// A partition of a projection that no live worker has owned for longer than a lease period:
/// its events are not applied until a worker running the projection claims it.
#[Object]
impl UnownedPartition {
    async fn partition(&self) -> i16 {
        self.0.partition
    }
    /// Seconds since its lease expired or was given back; null when unknown (never claimed).
    async fn unowned_seconds(&self) -> Option<f64> {
        self.0.unowned_seconds
    }
}

/// A rebuild, replay or as-of build, running or finished.
pub struct Build(pub RebuildProgress);

/// A rebuild, replay or as-of build, running or finished.
#[Object]
impl Build {
    async fn id(&self) -> Int64 {
        Int64(self.0.id)
    }
    /// `rebuild`, `replay` or `as_of`.
    async fn kind(&self) -> &str {
        self.0.kind.as_sql()
    }
    /// `shadow` or `as_of:<label>`.
    async fn target(&self) -> String {
        self.0.target.to_string()
    }
    async fn from_position(&self) -> Int64 {
        Int64(self.0.from_position)
    }
    async fn to_position(&self) -> Option<Int64> {
        self.0.to_position.map(Int64)
    }
    async fn events_done(&self) -> Int64 {
        Int64(self.0.events_done)
    }
    async fn events_total(&self) -> Int64 {
        Int64(self.0.events_total)
    }
    /// Done / total, from 0 to 1.
    async fn fraction(&self) -> f64 {
        self.0.fraction()
    }
    async fn position(&self) -> Int64 {
        Int64(self.0.position)
    }
    /// Events per second.
    async fn rate(&self) -> f64 {
        self.0.rate
    }
    async fn eta_seconds(&self) -> Option<f64> {
        self.0.eta_seconds
    }
    /// `running`, `done` or `failed`.
    async fn status(&self) -> &str {
        self.0.status.as_sql()
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
}

/// An event a projection could not apply, parked after its retries.
pub struct ParkedEvent(pub DeadLetter);

/// An event a projection could not apply, parked after its retries (a dead letter).
#[Object]
impl ParkedEvent {
    /// Pass to `replayParked(ids:)`.
    async fn id(&self) -> Int64 {
        Int64(self.0.id)
    }
    async fn projection(&self) -> &str {
        &self.0.projection
    }
    async fn partition(&self) -> i16 {
        self.0.partition
    }
    async fn position(&self) -> Int64 {
        Int64(self.0.position)
    }
    async fn event_id(&self) -> Uuid {
        self.0.event_id
    }
    async fn error(&self) -> &str {
        &self.0.error
    }
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    async fn parked_at(&self) -> DateTime<Utc> {
        self.0.parked_at
    }
    async fn replayed_at(&self) -> Option<DateTime<Utc>> {
        self.0.replayed_at
    }
}

/// A projection: its version, state, checkpoints, lag and builds.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Projection {
    pub name: String,
    /// Version in the code.
    pub version: i32,
    /// Version of the serving read model (differs while a version bump rebuilds).
    pub live_version: Option<i32>,
    /// `running`, `rebuilding`, `stopped` or `not started`.
    pub status: String,
    /// Schema of the serving read model.
    pub schema: String,
    /// Head of the log when this was read.
    pub head: Int64,
    /// Every matching event up to this position is applied (the lowest checkpoint of the
    /// partitions that still have events to apply; the head when none has).
    pub checkpoint: Int64,
    pub lag_events: Int64,
    pub lag_seconds: f64,
    pub events_per_second: f64,
    /// Parked events not yet replayed.
    pub parked: Int64,
    #[graphql(skip)]
    pub inner: ProjectionStatus,
}

#[ComplexObject]
impl Projection {
    async fn partitions(&self) -> Vec<PartitionStatus> {
        self.inner
            .partitions
            .iter()
            .cloned()
            .map(PartitionStatus)
            .collect()
    }

    /// Partitions no live worker has owned for longer than a lease period (empty when every
    /// partition has a live owner). Their lag only grows: start a worker that runs this
    /// projection, in its pool.
    async fn unowned_partitions(&self) -> Vec<UnownedPartition> {
        self.inner
            .unowned_partitions
            .iter()
            .cloned()
            .map(UnownedPartition)
            .collect()
    }

    /// The latest rebuild, replay or as-of build.
    async fn last_build(&self) -> Option<Build> {
        self.inner.last_rebuild.clone().map(Build)
    }

    /// Watermark and lateness, for a windowed projection (null for others).
    async fn window(&self) -> Option<WindowStatus> {
        self.inner.window.clone().map(|w| WindowStatus {
            watermark: w.watermark,
            shards: Int64(w.shards),
            late_dropped: Int64(w.late_dropped),
            late_parked: Int64(w.late_parked),
            open_windows: Int64(w.open_windows),
        })
    }

    /// Parked events (dead letters) of this projection.
    async fn dead_letters(
        &self,
        ctx: &async_graphql::Context<'_>,
        #[graphql(default = false)] include_replayed: bool,
    ) -> async_graphql::Result<Vec<ParkedEvent>> {
        let tidemark = crate::Tidemark::from_ctx(ctx)?;
        Ok(tidemark
            .engine()
            .dead_letters(Some(&self.name), include_replayed)
            .await?
            .into_iter()
            .map(ParkedEvent)
            .collect())
    }
}

impl From<ProjectionStatus> for Projection {
    fn from(status: ProjectionStatus) -> Self {
        Projection {
            name: status.name.clone(),
            version: status.version,
            live_version: status.live_version,
            status: status.status.as_sql().to_string(),
            schema: status.schema.clone(),
            head: Int64(status.head),
            checkpoint: Int64(status.caught_up_to()),
            lag_events: Int64(status.lag_events()),
            lag_seconds: status.lag_seconds(),
            events_per_second: status.events_per_second(),
            parked: Int64(status.parked),
            inner: status,
        }
    }
}

/// One window of one key of a windowed projection, with its aggregate.
#[derive(Debug, Clone, SimpleObject)]
pub struct WindowResult {
    pub key: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    /// `open` (more events expected), `complete` (the watermark passed its end; late events
    /// within the allowed lateness may still change it), `final`, or `revised` (a late event
    /// changed it after it was final).
    pub status: String,
    /// The aggregate's output (a number, or an object for a custom fold).
    pub aggregate: async_graphql::Json<serde_json::Value>,
    pub events: Int64,
    /// Changes after it was final.
    pub revision: i32,
    /// Position of the last event of the batch that last changed it.
    pub changed_at: Int64,
}

impl From<tidemark_projections::windowed::WindowRow> for WindowResult {
    fn from(row: tidemark_projections::windowed::WindowRow) -> Self {
        WindowResult {
            key: row.key,
            start: row.start,
            end: row.end,
            status: row.status.as_str().to_string(),
            aggregate: async_graphql::Json(row.aggregate),
            events: Int64(row.events),
            revision: row.revision,
            changed_at: Int64(row.changed_at),
        }
    }
}

/// Watermark and lateness of a windowed projection's live read model.
#[derive(Debug, Clone, SimpleObject)]
pub struct WindowStatus {
    /// The lowest watermark of its shards: a window is final once this passes its end plus
    /// the allowed lateness. Null until a shard has one.
    pub watermark: Option<chrono::DateTime<chrono::Utc>>,
    /// Shards (partitions its keys hash to) holding state.
    pub shards: Int64,
    /// Events too late to update one of their windows (dropped, or past a revise retention).
    pub late_dropped: Int64,
    /// Events too late, parked as dead letters.
    pub late_parked: Int64,
    /// Windows whose result may still change.
    pub open_windows: Int64,
}

/// A process in the worker registry: it runs projections (and usually serves the API).
pub struct Worker {
    pub info: WorkerInfo,
    /// Whether this is the process that answered.
    pub current: bool,
}

#[Object]
impl Worker {
    async fn id(&self) -> Uuid {
        self.info.id
    }
    async fn host(&self) -> &str {
        &self.info.host
    }
    async fn pid(&self) -> i32 {
        self.info.pid
    }
    /// Where its API listens, if it serves one.
    async fn address(&self) -> Option<&str> {
        self.info.address.as_deref()
    }
    /// The projection worker pool it runs.
    async fn pool(&self) -> &str {
        &self.info.pool
    }
    /// Tidemark version.
    async fn version(&self) -> &str {
        &self.info.version
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.info.started_at
    }
    async fn heartbeat_at(&self) -> DateTime<Utc> {
        self.info.heartbeat_at
    }
    async fn stopped_at(&self) -> Option<DateTime<Utc>> {
        self.info.stopped_at
    }
    /// Heartbeat within the timeout and not stopped.
    async fn alive(&self) -> bool {
        self.info.alive
    }
    /// Partitions it applies at once (its adaptive limit, summed over projections).
    async fn concurrency(&self) -> i32 {
        self.info.concurrency
    }
    /// The `desired_workers` it last computed for its pool.
    async fn desired_workers(&self) -> i32 {
        self.info.desired_workers
    }
    /// Unprocessed events over its pool's projections, as it last measured.
    async fn lag_events(&self) -> Int64 {
        Int64(self.info.lag_events)
    }
    /// `projection#partition` of every lease it holds.
    async fn leases(&self) -> &[String] {
        &self.info.leases
    }
    /// The projections it runs (their partitions are shared among the workers running them).
    async fn projections(&self) -> &[String] {
        &self.info.projections
    }
    /// Whether this is the process that answered.
    async fn current(&self) -> bool {
        self.current
    }
}

/// The scaling signal of one worker pool: the input for an external autoscaler
/// (see docs/scaling-out.md for the formula).
#[derive(Debug, Clone, SimpleObject)]
pub struct PoolScaling {
    pub pool: String,
    /// Workers of the pool with a recent heartbeat.
    pub live_workers: Int64,
    /// How many workers the pool should have to keep up with appends and clear its backlog.
    pub desired_workers: i32,
    pub lag_events: Int64,
}

impl From<tidemark_projections::PoolScaling> for PoolScaling {
    fn from(p: tidemark_projections::PoolScaling) -> Self {
        PoolScaling {
            pool: p.pool,
            live_workers: Int64(p.live_workers),
            desired_workers: p.desired_workers,
            lag_events: Int64(p.lag_events),
        }
    }
}

/// The answer of `waitFor`.
#[derive(Debug, Clone, SimpleObject)]
pub struct WaitResult {
    /// The projection's read model reflects every event up to `position`.
    pub reached: bool,
    pub projection: String,
    pub position: Int64,
}

/// Which build to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum BuildKind {
    /// From the whole log.
    Rebuild,
    /// From the events after a position (`from`) only, discarding what earlier events built.
    Replay,
    /// Up to a position, into a separate schema.
    AsOf,
}

impl From<tidemark_projections::BuildKind> for BuildKind {
    fn from(kind: tidemark_projections::BuildKind) -> Self {
        match kind {
            tidemark_projections::BuildKind::Rebuild => BuildKind::Rebuild,
            tidemark_projections::BuildKind::Replay => BuildKind::Replay,
            tidemark_projections::BuildKind::AsOf => BuildKind::AsOf,
        }
    }
}

/// A build started in the background; follow it with `projections` or the
/// `projectionProgress` subscription.
#[derive(Debug, Clone, SimpleObject)]
pub struct BuildStarted {
    pub projection: String,
    pub kind: BuildKind,
    pub from_position: Int64,
    pub to_position: Option<Int64>,
    /// Schema the result lands in (the live schema after a rebuild or replay swaps in).
    pub schema: String,
}

/// The answer of `replayParked`.
#[derive(Debug, Clone, SimpleObject)]
pub struct ReplayResult {
    pub projection: String,
    /// Parked events applied now.
    pub replayed: i32,
}
