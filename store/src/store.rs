//! [`EventStore`]: the handle applications hold. Cheap to clone; every clone shares the
//! pool, the append pipeline and the head watcher (and the read replica's pool, if any).

use crate::append::pipeline::{self, AppendQueue};
use crate::append::prepare::prepare;
use crate::browse::{AppendRate, StreamSummary};
use crate::config::StoreConfig;
use crate::error::{Result, StoreError};
use crate::heads::Heads;
use crate::hooks::{codec_of, finish_read, AppendValidator, CodecSlot, PayloadCodec, ReadHook};
use crate::migrate;
use crate::model::{
    AppendOutcome, AppendRequest, PayloadEncoding, Position, RecordedEvent, StreamVersion,
};
use crate::read::{self, Direction, LogFilter, PartitionBacklog};
use crate::subscribe::{self, SubscribeOptions};
use crate::tls::PgTls;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::Stream;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The event store. See the crate documentation for an overview.
#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
    /// Applied to every event this handle reads (see [`crate::hooks`]); other handles of
    /// the same store may have none.
    read_hook: Option<Arc<dyn ReadHook>>,
    /// Whether this handle's event reads go to the read replica (see [`crate::replica`]).
    on_replica: bool,
}

struct Inner {
    pool: Pool,
    /// A streaming replica's pool for the reads of [`EventStore::on_replica`] handles.
    replica: Option<Pool>,
    pg_config: tokio_postgres::Config,
    tls: PgTls,
    config: StoreConfig,
    partitions: u16,
    queue: AppendQueue,
    head: watch::Receiver<Position>,
    /// The last position written in each partition, as last announced (subscriptions to one
    /// partition wake on it).
    partition_heads: watch::Receiver<Arc<[Position]>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Checks every append of every handle; read once per append.
    validator: RwLock<Option<Arc<dyn AppendValidator>>>,
    /// Encodes every append of every handle, decodes every binary payload read.
    codec: CodecSlot,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone without an explicit shutdown: stop the background tasks.
        self.shutdown.cancel();
    }
}

/// Builds a connection pool for `pg_config` with `max_size` connections, encrypted as its
/// `sslmode` says (see [`crate::tls`]).
pub fn build_pool(pg_config: tokio_postgres::Config, tls: &PgTls, max_size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        pg_config,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))
}

impl EventStore {
    /// Connects to the database described by `pg_config`, applies migrations (unless
    /// disabled), creates the store on first use and starts the append writer and the head
    /// watcher. Fails fast with a clear error when the database is unreachable.
    pub async fn open(
        pg_config: tokio_postgres::Config,
        config: StoreConfig,
    ) -> Result<EventStore> {
        let tls = PgTls::new(&config.tls)?;
        let pool = build_pool(pg_config.clone(), &tls, 32)?;
        EventStore::open_with_pool(pool, pg_config, config).await
    }

    /// Like [`EventStore::open`] on an existing pool (the store shares it with, e.g., the
    /// projection engine). `pg_config` and `config.tls` are used for the LISTEN connection.
    pub async fn open_with_pool(
        pool: Pool,
        pg_config: tokio_postgres::Config,
        config: StoreConfig,
    ) -> Result<EventStore> {
        EventStore::open_with_pools(pool, None, pg_config, config).await
    }

    /// Like [`EventStore::open_with_pool`], with `replica`, the pool of a streaming replica
    /// of the same database, for the event reads of [`EventStore::on_replica`] handles (see
    /// [`crate::replica`]). The replica is checked to hold this store, so a wrong URL is
    /// refused here rather than read from.
    pub async fn open_with_pools(
        pool: Pool,
        replica: Option<Pool>,
        pg_config: tokio_postgres::Config,
        config: StoreConfig,
    ) -> Result<EventStore> {
        let tls = PgTls::new(&config.tls)?;
        let mut client = pool.get().await.map_err(|e| match StoreError::from(e) {
            StoreError::Unavailable(reason) => StoreError::Unavailable(format!(
                "{reason}; check DATABASE_URL and that PostgreSQL is running"
            )),
            other => other,
        })?;
        if config.migrate {
            migrate::run(&mut client, &config.migrations).await?;
        } else {
            migrate::verify(&client, &config.migrations).await?;
        }
        let partitions = i32::from(config.partitions.max(1));
        client
            .execute(
                "INSERT INTO store_head (position, partitions) VALUES (0, $1) ON CONFLICT DO NOTHING",
                &[&partitions],
            )
            .await
            .map_err(StoreError::db("creating the store head"))?;
        let row = client
            .query_one("SELECT position, partitions FROM store_head", &[])
            .await
            .map_err(StoreError::db("reading the store head"))?;
        let head_position: Position = row.get(0);
        let stored_partitions: i32 = row.get(1);
        if stored_partitions != partitions {
            tracing::warn!(
                configured = partitions,
                stored = stored_partitions,
                "the store was created with a different partition count; using the stored one"
            );
        }
        if let Some(replica) = &replica {
            crate::replica::check(&client, replica).await?;
        }
        drop(client);

        let shutdown = CancellationToken::new();
        let heads = Heads::new(head_position, stored_partitions as u16);
        let watcher = tokio::spawn(subscribe::watch_head(
            pg_config.clone(),
            tls.clone(),
            heads.clone(),
            shutdown.child_token(),
        ));
        let (queue, writer) = pipeline::start(
            pool.clone(),
            config.pipeline.clone(),
            heads.clone(),
            shutdown.child_token(),
        );
        Ok(EventStore {
            inner: Arc::new(Inner {
                pool,
                replica,
                pg_config,
                tls,
                config,
                partitions: stored_partitions as u16,
                queue,
                head: heads.head(),
                partition_heads: heads.partitions(),
                shutdown,
                tasks: Mutex::new(vec![writer, watcher]),
                validator: RwLock::new(None),
                codec: CodecSlot::default(),
            }),
            read_hook: None,
            on_replica: false,
        })
    }

    /// Appends events to one stream, atomically. See [`AppendRequest`] for the options and
    /// docs/design.md §4 and §5 for the rules on expected versions and dedup, §6 for what an
    /// error says about whether anything was written.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        let mut prepared = prepare(request, &self.inner.config.limits, self.inner.partitions)?;
        let validator = self
            .inner
            .validator
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(validator) = validator {
            validator
                .check(&prepared.request)
                .await
                .map_err(StoreError::Refused)?;
        }
        // After validation, so a payload that breaks its JSON Schema is reported as such
        // rather than as an encoding failure.
        match codec_of(&self.inner.codec) {
            Some(codec) => {
                let binary = codec
                    .encode(&prepared.request)
                    .await
                    .map_err(StoreError::Refused)?;
                if binary.len() != prepared.request.events.len() {
                    return Err(StoreError::Refused(crate::hooks::HookError::new(
                        "INTERNAL",
                        None,
                        crate::error::CodecMismatch {
                            events: prepared.request.events.len(),
                            answers: binary.len(),
                        },
                    )));
                }
                prepared.binary = binary;
            }
            None => {
                if let Some(event_index) = prepared
                    .request
                    .events
                    .iter()
                    .position(|e| e.encoding == Some(PayloadEncoding::Avro))
                {
                    return Err(
                        crate::error::ValidationError::NoPayloadCodec { event_index }.into(),
                    );
                }
            }
        }
        self.inner.queue.submit(prepared).await
    }

    /// Installs (or with `None` removes) the payload codec: every later append of every
    /// handle is encoded by it, and every binary payload any handle reads is decoded by it
    /// (see [`crate::hooks`]). Without one, binary payloads cannot be written or read.
    pub fn set_payload_codec(&self, codec: Option<Arc<dyn PayloadCodec>>) {
        *self.inner.codec.write().unwrap_or_else(|e| e.into_inner()) = codec;
    }

    /// Installs (or with `None` removes) the validator every later append of every handle
    /// of this store passes before it is queued (see [`crate::hooks`]).
    pub fn set_append_validator(&self, validator: Option<Arc<dyn AppendValidator>>) {
        *self
            .inner
            .validator
            .write()
            .unwrap_or_else(|e| e.into_inner()) = validator;
    }

    /// A handle of the same store whose reads (`read_stream`, `read_log`, `subscribe`,
    /// `subscribe_pages`) pass events through `hook`; appends and everything else are
    /// shared with `self`. The projection engine and the command bus read through such a
    /// handle to see events upcast, while the log keeps them as written.
    pub fn with_read_hook(&self, hook: Arc<dyn ReadHook>) -> EventStore {
        EventStore {
            read_hook: Some(hook),
            ..self.clone()
        }
    }

    /// A handle of the same store without a read hook: reads return the log as written.
    pub fn without_read_hook(&self) -> EventStore {
        EventStore {
            read_hook: None,
            ..self.clone()
        }
    }

    /// A handle of the same store (same read hook) whose event reads — `read_log`,
    /// `read_stream`, `stream_version`, `subscribe`, `subscribe_pages` — go to the read
    /// replica, when the store was opened with one (else to the primary, like any handle).
    /// Appends and everything else stay on the primary. A reader on a lagging replica sees
    /// the log later, never with a gap: see [`crate::replica`] for what may read there.
    pub fn on_replica(&self) -> EventStore {
        EventStore {
            on_replica: true,
            ..self.clone()
        }
    }

    /// A handle of the same store (same read hook) that reads everything from the primary:
    /// what must read its own writes does (the command bus, consumer groups).
    pub fn on_primary(&self) -> EventStore {
        EventStore {
            on_replica: false,
            ..self.clone()
        }
    }

    /// Whether the store was opened with a read replica.
    pub fn has_replica(&self) -> bool {
        self.inner.replica.is_some()
    }

    /// The pool this handle's event reads use, and whether it is a replica's.
    fn reads(&self) -> (&Pool, bool) {
        match (&self.inner.replica, self.on_replica) {
            (Some(replica), true) => (replica, true),
            _ => (&self.inner.pool, false),
        }
    }

    /// How far the read replica is behind the primary; `None` without one.
    pub async fn replica_lag(&self) -> Result<Option<crate::replica::ReplicaLag>> {
        match &self.inner.replica {
            Some(replica) => crate::replica::lag(&self.inner.pool, replica)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// Reads up to `limit` events of `stream_id` starting at version `from` (inclusive).
    /// On a replica handle, from the replica.
    pub async fn read_stream(
        &self,
        stream_id: &str,
        from: Option<StreamVersion>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        crate::validate::stream_id(stream_id, &self.inner.config.limits)?;
        let client = self.reads().0.get().await?;
        let stored = read::read_stream(&client, stream_id, from, direction, limit).await?;
        drop(client);
        finish_read(&self.inner.codec, self.read_hook.as_ref(), stored).await
    }

    /// Reads up to `limit` events after `after` passing `filter`, in position order. On a
    /// replica handle, from the replica: the page may end before the primary's head.
    pub async fn read_log(
        &self,
        after: Position,
        filter: &LogFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let client = self.reads().0.get().await?;
        let stored = read::read_log(&client, after, filter, limit).await?;
        drop(client);
        finish_read(&self.inner.codec, self.read_hook.as_ref(), stored).await
    }

    /// The number of events after `after` up to `upto` (inclusive) that pass `filter`
    /// (a build's total, for its progress).
    pub async fn count_events(
        &self,
        after: Position,
        upto: Position,
        filter: &LogFilter,
    ) -> Result<i64> {
        let client = self.inner.pool.get().await?;
        read::count_events(&client, after, upto, filter).await
    }

    /// For a consumer that keeps one position per partition (a projection's checkpoints):
    /// per `(partition, position)`, how many events passing `filter` lie after the position
    /// up to `upto` (counted up to `cap`, so a huge backlog costs no more than `cap` rows),
    /// and how old the oldest of them is. One query for every partition. `filter.partition`
    /// is not used: each entry names its partition.
    pub async fn backlog(
        &self,
        positions: &[(i16, Position)],
        upto: Position,
        filter: &LogFilter,
        cap: i64,
    ) -> Result<Vec<PartitionBacklog>> {
        let client = self.inner.pool.get().await?;
        read::backlog(&client, positions, upto, filter, cap).await
    }

    /// Of `positions` (one per partition), the partitions that have an event passing
    /// `filter` after their position, up to `upto`: the ones a reader waiting for `upto`
    /// still waits for. Cheaper than [`EventStore::backlog`]: it stops at the first event.
    pub async fn partitions_behind(
        &self,
        positions: &[(i16, Position)],
        upto: Position,
        filter: &LogFilter,
    ) -> Result<Vec<i16>> {
        let client = self.inner.pool.get().await?;
        read::partitions_behind(&client, positions, upto, filter).await
    }

    /// The last version of a stream, or `None` if it has no events.
    pub async fn stream_version(&self, stream_id: &str) -> Result<Option<StreamVersion>> {
        let client = self.reads().0.get().await?;
        let statement = client
            .prepare_cached("SELECT version FROM streams WHERE stream_id = $1")
            .await
            .map_err(StoreError::db("preparing a stream version query"))?;
        let row = client
            .query_opt(&statement, &[&stream_id])
            .await
            .map_err(StoreError::db("reading a stream version"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Up to `limit` stream categories after `after`, in order (for browsing; see
    /// [`crate::browse`]).
    pub async fn categories(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let client = self.inner.pool.get().await?;
        crate::browse::categories(&client, after, limit).await
    }

    /// Up to `limit` streams after `after` (by id), of `category` when given.
    pub async fn streams(
        &self,
        category: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamSummary>> {
        let client = self.inner.pool.get().await?;
        crate::browse::streams(&client, category, after, limit).await
    }

    /// Events appended per second over the last `window_seconds`, by the database's clock.
    pub async fn append_rate(&self, window_seconds: f64) -> Result<AppendRate> {
        let client = self.inner.pool.get().await?;
        crate::browse::append_rate(&client, window_seconds).await
    }

    /// The position of the last committed event (0 when the log is empty), from the database.
    pub async fn head_position(&self) -> Result<Position> {
        let client = self.inner.pool.get().await?;
        let row = client
            .query_one("SELECT position FROM store_head", &[])
            .await
            .map_err(StoreError::db("reading the store head"))?;
        Ok(row.get(0))
    }

    /// Catch-up-then-live subscription to the log.
    pub fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
        subscribe::subscribe(self.subscription_source(), options)
    }

    /// Like [`EventStore::subscribe`], in pages as read, with progress markers: the form
    /// consumers that batch (projection workers) want.
    pub fn subscribe_pages(
        &self,
        options: SubscribeOptions,
    ) -> impl Stream<Item = Result<subscribe::Page>> + Send + 'static {
        subscribe::subscribe_pages(self.subscription_source(), options)
    }

    /// What a subscription reads with and wakes on: the pool and the announced heads.
    fn subscription_source(&self) -> subscribe::Source {
        let (pool, replica) = self.reads();
        subscribe::Source {
            pool: pool.clone(),
            replica,
            head: self.inner.head.clone(),
            partitions: self.inner.partition_heads.clone(),
            poll_interval: self.inner.config.poll_interval,
            read_hook: self.read_hook.clone(),
            codec: self.inner.codec.clone(),
        }
    }

    /// A watch of the head position as last announced (by this process's appends or by
    /// NOTIFY from any process). It may lag the database briefly; use it to wake up, not
    /// as the truth.
    pub fn head_watch(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }

    /// The primary's pool: everything that writes, locks or reads its own writes uses it.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The read replica's pool, when the store was opened with one.
    pub fn replica_pool(&self) -> Option<&Pool> {
        self.inner.replica.as_ref()
    }

    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.inner.pg_config
    }

    /// The TLS connector of the store's own connections, for other connections to the same
    /// database (the projection coordinator's).
    pub fn tls(&self) -> &PgTls {
        &self.inner.tls
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Number of partitions of this store.
    pub fn partitions(&self) -> u16 {
        self.inner.partitions
    }

    /// Partition of `stream_id` in this store.
    pub fn partition_of(&self, stream_id: &str) -> i16 {
        crate::hashing::partition_of(stream_id, self.inner.partitions)
    }

    /// Appends waiting in the queue right now.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.depth()
    }

    /// Stops accepting appends, writes and answers every append already queued, and stops
    /// the background tasks. Appends submitted afterwards fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let tasks: Vec<_> = match self.inner.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("partitions", &self.inner.partitions)
            .field("read_hook", &self.read_hook.is_some())
            .field("on_replica", &self.reads().1)
            .finish_non_exhaustive()
    }
}
