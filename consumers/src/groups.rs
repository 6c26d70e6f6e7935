//! [`ConsumerGroups`]: the handle every process serving consumers holds. Create, list,
//! inspect and delete groups; `fetch` (with a long-poll wait), `ack`, `nack`; list and
//! replay parked messages. All state is in PostgreSQL (`consumer_groups`,
//! `consumer_deliveries`, `consumer_parked`), so any process serves any consumer.
//!
//! Every operation that changes a group locks the group's row first (`FOR UPDATE`), so the
//! processes serving one group take turns in short transactions, and no message is handed
//! to two consumers at once: a delivery is a row update under that lock. Events come from
//! the log through the store's read path (`EventStore::read_log`, upcast like every other
//! reader's); a fetch reads them before taking the lock and keeps only those past the
//! frontier it finds under the lock, so the lock is never held across a log read.

use crate::error::{db, ConsumerError, Result};
use crate::model::{
    AckOutcome, GroupSettings, GroupSpec, GroupStatus, Message, NackAction, ParkedMessage,
    Selector, StartFrom, Strategy,
};
use crate::select::{self, Row, RowState};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::{EventStore, LogFilter, Position, RecordedEvent};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most messages one fetch hands out.
pub const MAX_BATCH: u32 = 1000;
/// Events a fetch reads from the log at once into the group's outstanding messages.
const READ_PAGE: usize = 500;
/// A fetch reads no more from the log while this many messages already wait (a pinned
/// group whose streams are all busy must not pull the whole log into its table).
const WAITING_CAP: i64 = 2_000;
/// How many waiting messages a pinned-by-stream fetch considers at once.
const PINNED_WINDOW: i64 = 2_000;
/// A long-polling fetch looks again at least this often: timeouts, retry backoffs and acks
/// in other processes make messages ready without any append to wake on.
const POLL: Duration = Duration::from_millis(200);
/// Counting the lag after the frontier stops here (per partition).
const LAG_CAP: i64 = 1_000_000;

/// The consumer groups of one store. Cheap to clone.
#[derive(Clone)]
pub struct ConsumerGroups {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    /// Woken by this process's acks, nacks and replays: a long-polling fetch may have
    /// something now (capacity freed, a stream released, messages back).
    settled: Notify,
    shutdown: CancellationToken,
}

/// The columns of `consumer_groups` that [`GroupRow::from_row`] decodes, in order.
const GROUP_COLUMNS: &str = "name, categories, event_types, strategy, max_in_flight, \
     ack_timeout_ms, max_deliveries, retry_backoff_ms, retry_backoff_max_ms, start_after, \
     frontier, active_consumer, active_until, delivered_total, redelivered_total, acked_total, \
     skipped_total, parked_total, created_at, now()";

/// A group's row, as read (under the lock or not).
struct GroupRow {
    spec: GroupSpec,
    start_after: Position,
    frontier: Position,
    active_consumer: Option<String>,
    active_until: Option<DateTime<Utc>>,
    totals: [i64; 5],
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

impl GroupRow {
    fn from_row(row: &tokio_postgres::Row) -> Result<GroupRow> {
        let strategy: String = row.get(3);
        let strategy = Strategy::parse_sql(&strategy).ok_or_else(|| {
            ConsumerError::invalid(
                "strategy",
                format!("the stored strategy '{strategy}' is unknown to this build"),
            )
        })?;
        let ms = |i: usize| Duration::from_millis(row.get::<_, i64>(i).max(0) as u64);
        let start_after: Position = row.get(9);
        Ok(GroupRow {
            spec: GroupSpec {
                name: row.get(0),
                selector: Selector {
                    categories: row.get(1),
                    event_types: row.get(2),
                },
                start: StartFrom::After(start_after),
                strategy,
                settings: GroupSettings {
                    max_in_flight: row.get::<_, i32>(4).max(1) as u32,
                    ack_timeout: ms(5),
                    max_deliveries: row.get::<_, i32>(6).max(1) as u32,
                    retry_backoff: ms(7),
                    retry_backoff_max: ms(8),
                },
            },
            start_after,
            frontier: row.get(10),
            active_consumer: row.get(11),
            active_until: row.get(12),
            totals: [
                row.get(13),
                row.get(14),
                row.get(15),
                row.get(16),
                row.get(17),
            ],
            created_at: row.get(18),
            now: row.get(19),
        })
    }

    fn ack_timeout_ms(&self) -> i64 {
        self.spec.settings.ack_timeout.as_millis() as i64
    }
}

/// Moves the outstanding messages `$2` of group `$1` to the parked ones, with reason `$3`.
const PARK_POSITIONS: &str = "WITH moved AS (
        DELETE FROM consumer_deliveries WHERE group_name = $1 AND position = ANY($2)
        RETURNING position, event_id, stream_id, recorded_at, consumer, delivery_count)
     INSERT INTO consumer_parked (group_name, position, event_id, stream_id, recorded_at, consumer, deliveries, reason)
     SELECT $1, position, event_id, stream_id, recorded_at, consumer, delivery_count, $3 FROM moved
     ON CONFLICT (group_name, position) DO NOTHING";

impl ConsumerGroups {
    /// The groups of `store`'s database. Long-polling fetches end early once `shutdown`
    /// is cancelled.
    pub fn new(store: EventStore, shutdown: CancellationToken) -> ConsumerGroups {
        ConsumerGroups {
            inner: Arc::new(Inner {
                store,
                settled: Notify::new(),
                shutdown,
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Creates a group. `Ok(false)`: a group of that name exists with the same definition
    /// (creating is idempotent); with another definition, `GroupExists`.
    pub async fn create(&self, spec: &GroupSpec) -> Result<bool> {
        validate_spec(spec)?;
        let start_after = match spec.start {
            StartFrom::Start => 0,
            StartFrom::End => self.inner.store.head_position().await?,
            StartFrom::After(position) => position,
        };
        let client = self.inner.store.pool().get().await?;
        let s = &spec.settings;
        let inserted = client
            .execute(
                "INSERT INTO consumer_groups (name, categories, event_types, strategy, max_in_flight,
                     ack_timeout_ms, max_deliveries, retry_backoff_ms, retry_backoff_max_ms,
                     start_after, frontier)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                 ON CONFLICT (name) DO NOTHING",
                &[
                    &spec.name,
                    &spec.selector.categories,
                    &spec.selector.event_types,
                    &spec.strategy.as_sql(),
                    &(s.max_in_flight as i32),
                    &(s.ack_timeout.as_millis() as i64),
                    &(s.max_deliveries as i32),
                    &(s.retry_backoff.as_millis() as i64),
                    &(s.retry_backoff_max.as_millis() as i64),
                    &start_after,
                ],
            )
            .await
            .map_err(db("creating a consumer group"))?;
        if inserted == 1 {
            tracing::info!(group = %spec.name, strategy = %spec.strategy, start_after, "consumer group created");
            return Ok(true);
        }
        let existing = self.row(&spec.name).await?;
        let same_start = match spec.start {
            StartFrom::Start => existing.start_after == 0,
            StartFrom::End => true,
            StartFrom::After(position) => existing.start_after == position,
        };
        if same_start
            && existing.spec.selector == spec.selector
            && existing.spec.strategy == spec.strategy
            && existing.spec.settings == spec.settings
        {
            Ok(false)
        } else {
            Err(ConsumerError::GroupExists(spec.name.clone()))
        }
    }

    /// Deletes a group with its outstanding and parked messages.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let client = self.inner.store.pool().get().await?;
        let deleted = client
            .execute("DELETE FROM consumer_groups WHERE name = $1", &[&name])
            .await
            .map_err(db("deleting a consumer group"))?;
        if deleted == 0 {
            return Err(ConsumerError::GroupNotFound(name.to_owned()));
        }
        tracing::info!(group = name, "consumer group deleted");
        Ok(())
    }

    async fn row(&self, name: &str) -> Result<GroupRow> {
        let client = self.inner.store.pool().get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {GROUP_COLUMNS} FROM consumer_groups WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(db("reading a consumer group"))?
            .ok_or_else(|| ConsumerError::GroupNotFound(name.to_owned()))?;
        GroupRow::from_row(&row)
    }

    /// Every group with its status, by name.
    pub async fn list(&self) -> Result<Vec<GroupStatus>> {
        let names: Vec<String> = {
            let client = self.inner.store.pool().get().await?;
            client
                .query("SELECT name FROM consumer_groups ORDER BY name", &[])
                .await
                .map_err(db("listing consumer groups"))?
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let mut statuses = Vec::with_capacity(names.len());
        for name in names {
            match self.status(&name).await {
                Ok(status) => statuses.push(status),
                // Deleted between the two reads.
                Err(ConsumerError::GroupNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(statuses)
    }

    /// One group's definition, progress, lag and counters.
    pub async fn status(&self, name: &str) -> Result<GroupStatus> {
        let group = self.row(name).await?;
        let client = self.inner.store.pool().get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE deadline IS NOT NULL),
                        count(*) FILTER (WHERE deadline IS NULL),
                        min(position),
                        extract(epoch FROM now() - min(recorded_at))::float8,
                        (SELECT count(*) FROM consumer_parked WHERE group_name = $1)
                   FROM consumer_deliveries WHERE group_name = $1",
                &[&name],
            )
            .await
            .map_err(db("reading a consumer group's messages"))?;
        drop(client);
        let in_flight: i64 = row.get(0);
        let waiting: i64 = row.get(1);
        let lowest: Option<Position> = row.get(2);
        let outstanding_age: Option<f64> = row.get(3);
        let parked: i64 = row.get(4);

        let store = &self.inner.store;
        let head = store.head_position().await?;
        let filter = group.spec.selector.filter();
        let (mut after_events, mut after_age) = (0i64, None::<f64>);
        if head > group.frontier {
            let positions: Vec<(i16, Position)> = (0..store.partitions() as i16)
                .map(|p| (p, group.frontier))
                .collect();
            for backlog in store.backlog(&positions, head, &filter, LAG_CAP).await? {
                after_events += backlog.events;
                after_age = max_age(after_age, backlog.oldest_age_seconds);
            }
        }
        let lag_seconds = max_age(outstanding_age, after_age).unwrap_or(0.0).max(0.0);
        let [delivered_total, redelivered_total, acked_total, skipped_total, parked_total] =
            group.totals;
        let active_consumer = match (group.active_consumer, group.active_until) {
            (Some(holder), Some(until)) if until > group.now => Some(holder),
            _ => None,
        };
        Ok(GroupStatus {
            start_after: group.start_after,
            frontier: group.frontier,
            acked_through: lowest.map_or(group.frontier, |p| p - 1),
            lag_events: in_flight + waiting + after_events,
            lag_seconds,
            in_flight,
            waiting,
            parked,
            delivered_total,
            redelivered_total,
            acked_total,
            skipped_total,
            parked_total,
            active_consumer,
            created_at: group.created_at,
            spec: group.spec,
        })
    }

    /// Up to `max` messages for `consumer`, waiting up to `wait` for some when none is
    /// ready (long poll). Returns early, empty, when the server shuts down.
    pub async fn fetch(
        &self,
        group: &str,
        consumer: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Message>> {
        validate_consumer(consumer)?;
        if max == 0 || max > MAX_BATCH {
            return Err(ConsumerError::invalid(
                "max",
                format!("must be between 1 and {MAX_BATCH}"),
            ));
        }
        let until = tokio::time::Instant::now() + wait;
        let mut head = self.inner.store.head_watch();
        loop {
            head.borrow_and_update();
            let settled = self.inner.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            let batch = self.fetch_once(group, consumer, max).await?;
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= until || self.inner.shutdown.is_cancelled() {
                return Ok(batch);
            }
            let nap = (until - now).min(POLL);
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        // The store is gone: nothing will announce appends any more.
                        tokio::time::sleep(nap).await;
                    }
                }
                _ = settled => {}
                _ = tokio::time::sleep(nap) => {}
                _ = self.inner.shutdown.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// One attempt: settle timeouts, take new events from the log, hand out what this
    /// consumer may have now.
    async fn fetch_once(&self, group: &str, consumer: &str, max: u32) -> Result<Vec<Message>> {
        let store = &self.inner.store;
        // Read the log before taking the lock (see the module docs).
        let mut client = store.pool().get().await?;
        let peek = client
            .query_opt(
                "SELECT frontier, categories, event_types,
                        (SELECT count(*) FROM consumer_deliveries
                          WHERE group_name = $1 AND deadline IS NULL)
                   FROM consumer_groups WHERE name = $1",
                &[&group],
            )
            .await
            .map_err(db("reading a consumer group"))?
            .ok_or_else(|| ConsumerError::GroupNotFound(group.to_owned()))?;
        let snapshot_frontier: Position = peek.get(0);
        let filter = LogFilter {
            categories: peek.get(1),
            event_types: peek.get(2),
            partition: None,
        };
        let waiting: i64 = peek.get(3);
        let head = *store.head_watch().borrow();
        let mut read: Vec<RecordedEvent> = Vec::new();
        let mut read_through = snapshot_frontier;
        if head > snapshot_frontier && waiting < WAITING_CAP {
            read = store
                .read_log(snapshot_frontier, &filter, READ_PAGE)
                .await?;
            read_through = match read.last() {
                Some(last) if read.len() == READ_PAGE => last.position,
                // The whole log up to `head` (announced, so committed) was read.
                Some(last) => last.position.max(head),
                None => head,
            };
        }

        let tx = client.transaction().await.map_err(db("starting a fetch"))?;
        let row = tx
            .query_opt(
                &format!("SELECT {GROUP_COLUMNS} FROM consumer_groups WHERE name = $1 FOR UPDATE"),
                &[&group],
            )
            .await
            .map_err(db("locking a consumer group"))?
            .ok_or_else(|| ConsumerError::GroupNotFound(group.to_owned()))?;
        let locked = GroupRow::from_row(&row)?;
        let settings = &locked.spec.settings;

        // Timeouts: past max deliveries parked, the others ready again.
        let reason = format!(
            "not acknowledged within the ack timeout ({} ms) after {} deliveries",
            settings.ack_timeout.as_millis(),
            settings.max_deliveries
        );
        let parked = tx
            .execute(
                "WITH moved AS (
                    DELETE FROM consumer_deliveries
                     WHERE group_name = $1 AND deadline < now() AND delivery_count >= $2
                    RETURNING position, event_id, stream_id, recorded_at, consumer, delivery_count)
                 INSERT INTO consumer_parked (group_name, position, event_id, stream_id, recorded_at, consumer, deliveries, reason)
                 SELECT $1, position, event_id, stream_id, recorded_at, consumer, delivery_count, $3 FROM moved
                 ON CONFLICT (group_name, position) DO NOTHING",
                &[&group, &(settings.max_deliveries as i32), &reason],
            )
            .await
            .map_err(db("parking timed-out messages"))? as i64;
        if parked > 0 {
            tracing::warn!(group, parked, "messages parked after max deliveries");
        }
        tx.execute(
            "UPDATE consumer_deliveries SET deadline = NULL
              WHERE group_name = $1 AND deadline < now()",
            &[&group],
        )
        .await
        .map_err(db("releasing timed-out messages"))?;

        // New events: those past the frontier found under the lock (another process may
        // have taken some since the snapshot).
        let mut frontier = locked.frontier;
        if read_through > frontier {
            let fresh: Vec<&RecordedEvent> =
                read.iter().filter(|e| e.position > frontier).collect();
            let positions: Vec<Position> = fresh.iter().map(|e| e.position).collect();
            let ids: Vec<Uuid> = fresh.iter().map(|e| e.event_id).collect();
            let streams: Vec<&str> = fresh.iter().map(|e| e.stream_id.as_str()).collect();
            let recorded: Vec<DateTime<Utc>> = fresh.iter().map(|e| e.recorded_at).collect();
            tx.execute(
                "INSERT INTO consumer_deliveries (group_name, position, event_id, stream_id, recorded_at)
                 SELECT $1, * FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[])
                 ON CONFLICT (group_name, position) DO NOTHING",
                &[&group, &positions, &ids, &streams, &recorded],
            )
            .await
            .map_err(db("taking new events into a consumer group"))?;
            frontier = read_through;
        }

        let capacity = self.capacity(&tx, &locked, consumer, max).await?;
        let chosen = if capacity == 0 {
            Vec::new()
        } else {
            let rows = outstanding(&tx, group, consumer, locked.spec.strategy, capacity).await?;
            select::select(locked.spec.strategy, &rows, capacity)
        };
        let assigned = if chosen.is_empty() {
            Vec::new()
        } else {
            tx.query(
                "UPDATE consumer_deliveries
                    SET consumer = $2, delivery_count = delivery_count + 1, not_before = NULL,
                        deadline = now() + $4::bigint * interval '1 millisecond'
                  WHERE group_name = $1 AND position = ANY($3)
                 RETURNING position, delivery_count, deadline",
                &[&group, &consumer, &chosen, &locked.ack_timeout_ms()],
            )
            .await
            .map_err(db("handing out messages"))?
        };
        let redelivered = assigned.iter().filter(|r| r.get::<_, i32>(1) > 1).count() as i64;
        tx.execute(
            "UPDATE consumer_groups
                SET frontier = $2, delivered_total = delivered_total + $3,
                    redelivered_total = redelivered_total + $4, parked_total = parked_total + $5
              WHERE name = $1",
            &[
                &group,
                &frontier,
                &(assigned.len() as i64),
                &redelivered,
                &parked,
            ],
        )
        .await
        .map_err(db("advancing a consumer group"))?;
        tx.commit().await.map_err(db("committing a fetch"))?;
        drop(client);

        // The events' bodies: those read above, the rest (redeliveries, messages another
        // process took from the log) read again by position. A failure here loses nothing:
        // the deliveries time out and go out again.
        let mut bodies: HashMap<Position, RecordedEvent> = read
            .into_iter()
            .filter(|e| chosen.binary_search(&e.position).is_ok())
            .map(|e| (e.position, e))
            .collect();
        let missing: BTreeSet<Position> = chosen
            .iter()
            .copied()
            .filter(|p| !bodies.contains_key(p))
            .collect();
        read_positions(store, &filter, missing, &mut bodies).await?;
        let mut messages: Vec<Message> = assigned
            .iter()
            .filter_map(|row| {
                let position: Position = row.get(0);
                let event = bodies.remove(&position)?;
                Some(Message {
                    event,
                    delivery_count: row.get::<_, i32>(1).max(1) as u32,
                    deadline: row.get(2),
                })
            })
            .collect();
        messages.sort_by_key(|m| m.event.position);
        Ok(messages)
    }

    /// How many messages `consumer` may take now: none while another consumer holds a
    /// single-active group's lease (taking it over once it lapsed), otherwise up to its
    /// free in-flight slots.
    async fn capacity(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        group: &GroupRow,
        consumer: &str,
        max: u32,
    ) -> Result<usize> {
        let name = &group.spec.name;
        if group.spec.strategy == Strategy::SingleActive {
            let held_by_other = match (&group.active_consumer, group.active_until) {
                (Some(holder), Some(until)) => holder != consumer && until > group.now,
                _ => false,
            };
            if held_by_other {
                return Ok(0);
            }
            if let Some(previous) = group.active_consumer.as_deref().filter(|h| *h != consumer) {
                // The previous holder stopped fetching for an ack timeout: what it still
                // holds goes to the new holder, in order.
                tx.execute(
                    "UPDATE consumer_deliveries SET deadline = NULL
                      WHERE group_name = $1 AND consumer = $2 AND deadline IS NOT NULL",
                    &[name, &previous],
                )
                .await
                .map_err(db("releasing a previous active consumer's messages"))?;
                tracing::info!(group = %name, previous, consumer, "single active consumer taken over");
            }
            tx.execute(
                "UPDATE consumer_groups
                    SET active_consumer = $2, active_until = now() + $3::bigint * interval '1 millisecond'
                  WHERE name = $1",
                &[name, &consumer, &group.ack_timeout_ms()],
            )
            .await
            .map_err(db("renewing the active consumer's lease"))?;
        }
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM consumer_deliveries
                  WHERE group_name = $1 AND consumer = $2 AND deadline IS NOT NULL",
                &[name, &consumer],
            )
            .await
            .map_err(db("counting a consumer's messages in flight"))?
            .get(0);
        let free = (group.spec.settings.max_in_flight as i64 - held).max(0);
        Ok(free.min(max as i64) as usize)
    }

    /// Settles `positions` as processed by `consumer`. Positions it does not hold (any
    /// more) are reported stale.
    pub async fn ack(
        &self,
        group: &str,
        consumer: &str,
        positions: &[Position],
    ) -> Result<AckOutcome> {
        validate_consumer(consumer)?;
        let mut client = self.inner.store.pool().get().await?;
        let tx = client.transaction().await.map_err(db("starting an ack"))?;
        lock_group(&tx, group).await?;
        // A delivery that timed out but went to nobody else yet is still this consumer's:
        // its ack counts and spares a redelivery.
        let rows = tx
            .query(
                "DELETE FROM consumer_deliveries
                  WHERE group_name = $1 AND consumer = $2 AND position = ANY($3)
                 RETURNING position",
                &[&group, &consumer, &positions],
            )
            .await
            .map_err(db("acknowledging messages"))?;
        let done: Vec<Position> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute(
            "UPDATE consumer_groups SET acked_total = acked_total + $2 WHERE name = $1",
            &[&group, &(done.len() as i64)],
        )
        .await
        .map_err(db("counting acknowledged messages"))?;
        tx.commit().await.map_err(db("committing an ack"))?;
        self.inner.settled.notify_waiters();
        Ok(outcome(positions, done, Vec::new()))
    }

    /// Settles `positions`, held in flight by `consumer`, as it asks: retry later, park,
    /// or skip. `reason` is kept with a retried or parked message.
    pub async fn nack(
        &self,
        group: &str,
        consumer: &str,
        positions: &[Position],
        action: NackAction,
        reason: Option<&str>,
    ) -> Result<AckOutcome> {
        validate_consumer(consumer)?;
        let reason = reason.unwrap_or("nacked by the consumer");
        let mut client = self.inner.store.pool().get().await?;
        let tx = client.transaction().await.map_err(db("starting a nack"))?;
        let group_row = lock_group(&tx, group).await?;
        let settings = &group_row.spec.settings;
        let held = tx
            .query(
                "SELECT position, delivery_count FROM consumer_deliveries
                  WHERE group_name = $1 AND consumer = $2 AND deadline IS NOT NULL
                    AND position = ANY($3)",
                &[&group, &consumer, &positions],
            )
            .await
            .map_err(db("reading messages to nack"))?;
        let held: Vec<(Position, u32)> = held
            .iter()
            .map(|r| (r.get(0), r.get::<_, i32>(1).max(0) as u32))
            .collect();
        let done: Vec<Position> = held.iter().map(|(p, _)| *p).collect();
        let mut parked = Vec::new();
        let mut skipped = 0i64;
        match action {
            NackAction::Skip => {
                tx.execute(
                    "DELETE FROM consumer_deliveries WHERE group_name = $1 AND position = ANY($2)",
                    &[&group, &done],
                )
                .await
                .map_err(db("skipping messages"))?;
                skipped = done.len() as i64;
            }
            NackAction::Park => {
                tx.execute(PARK_POSITIONS, &[&group, &done, &reason])
                    .await
                    .map_err(db("parking messages"))?;
                parked = done.clone();
            }
            NackAction::Retry => {
                let (exhausted, retry): (Vec<_>, Vec<_>) = held
                    .iter()
                    .partition(|(_, count)| *count >= settings.max_deliveries);
                parked = exhausted.iter().map(|(p, _)| *p).collect();
                let exhausted_reason = format!(
                    "nacked for retry after {} deliveries: {reason}",
                    settings.max_deliveries
                );
                tx.execute(PARK_POSITIONS, &[&group, &parked, &exhausted_reason])
                    .await
                    .map_err(db("parking messages"))?;
                let retry_positions: Vec<Position> = retry.iter().map(|(p, _)| *p).collect();
                let delays: Vec<i64> = retry
                    .iter()
                    .map(|(_, count)| settings.retry_delay(*count).as_millis() as i64)
                    .collect();
                tx.execute(
                    "UPDATE consumer_deliveries d
                        SET deadline = NULL, last_error = $4,
                            not_before = now() + u.delay_ms * interval '1 millisecond'
                       FROM unnest($2::bigint[], $3::bigint[]) AS u(position, delay_ms)
                      WHERE d.group_name = $1 AND d.position = u.position",
                    &[&group, &retry_positions, &delays, &reason],
                )
                .await
                .map_err(db("scheduling retries"))?;
            }
        }
        tx.execute(
            "UPDATE consumer_groups
                SET skipped_total = skipped_total + $2, parked_total = parked_total + $3
              WHERE name = $1",
            &[&group, &skipped, &(parked.len() as i64)],
        )
        .await
        .map_err(db("counting nacked messages"))?;
        tx.commit().await.map_err(db("committing a nack"))?;
        self.inner.settled.notify_waiters();
        Ok(outcome(positions, done, parked))
    }

    /// Parked messages of `group` after `after`, oldest position first, at most `limit`.
    pub async fn parked(
        &self,
        group: &str,
        after: Position,
        limit: i64,
    ) -> Result<Vec<ParkedMessage>> {
        let client = self.inner.store.pool().get().await?;
        let exists = client
            .query_opt("SELECT 1 FROM consumer_groups WHERE name = $1", &[&group])
            .await
            .map_err(db("reading a consumer group"))?;
        if exists.is_none() {
            return Err(ConsumerError::GroupNotFound(group.to_owned()));
        }
        let rows = client
            .query(
                "SELECT position, event_id, stream_id, recorded_at, consumer, deliveries, reason, parked_at
                   FROM consumer_parked WHERE group_name = $1 AND position > $2
                  ORDER BY position LIMIT $3",
                &[&group, &after, &limit.clamp(0, 10_000)],
            )
            .await
            .map_err(db("listing parked messages"))?;
        Ok(rows
            .iter()
            .map(|r| ParkedMessage {
                group: group.to_owned(),
                position: r.get(0),
                event_id: r.get(1),
                stream_id: r.get(2),
                recorded_at: r.get(3),
                consumer: r.get(4),
                deliveries: r.get::<_, i32>(5).max(0) as u32,
                reason: r.get(6),
                parked_at: r.get(7),
            })
            .collect())
    }

    /// Puts parked messages of `group` (all, or those at `positions`) back among the
    /// outstanding ones, with their delivery count reset. Returns how many.
    pub async fn replay_parked(&self, group: &str, positions: Option<&[Position]>) -> Result<u64> {
        let mut client = self.inner.store.pool().get().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a replay"))?;
        lock_group(&tx, group).await?;
        let positions: Option<Vec<Position>> = positions.map(<[Position]>::to_vec);
        let replayed = tx
            .execute(
                "WITH moved AS (
                    DELETE FROM consumer_parked
                     WHERE group_name = $1 AND ($2::bigint[] IS NULL OR position = ANY($2))
                    RETURNING position, event_id, stream_id, recorded_at)
                 INSERT INTO consumer_deliveries (group_name, position, event_id, stream_id, recorded_at)
                 SELECT $1, position, event_id, stream_id, recorded_at FROM moved
                 ON CONFLICT (group_name, position) DO NOTHING",
                &[&group, &positions],
            )
            .await
            .map_err(db("replaying parked messages"))?;
        tx.commit().await.map_err(db("committing a replay"))?;
        self.inner.settled.notify_waiters();
        tracing::info!(group, replayed, "parked messages replayed");
        Ok(replayed)
    }

    /// Publishes every group's figures as Prometheus gauges every `every`, until the
    /// shutdown token is cancelled. A failing or panicking round is logged and the next
    /// one runs.
    pub fn spawn_metrics_reporter(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let groups = self.clone();
        tokio::spawn(async move {
            use futures::FutureExt;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = groups.inner.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let round = std::panic::AssertUnwindSafe(groups.list()).catch_unwind();
                match round.await {
                    Ok(Ok(statuses)) => crate::metrics::publish(&statuses),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "consumer group metrics not updated this round")
                    }
                    Err(_) => {
                        metrics::counter!("tidemark_consumer_group_metrics_panics_total")
                            .increment(1);
                        tracing::error!(
                            "the consumer group metrics reporter panicked; it carries on"
                        );
                    }
                }
            }
        })
    }
}

/// Locks `group`'s row for the transaction; `GroupNotFound` when there is none.
async fn lock_group(tx: &deadpool_postgres::Transaction<'_>, group: &str) -> Result<GroupRow> {
    let row = tx
        .query_opt(
            &format!("SELECT {GROUP_COLUMNS} FROM consumer_groups WHERE name = $1 FOR UPDATE"),
            &[&group],
        )
        .await
        .map_err(db("locking a consumer group"))?
        .ok_or_else(|| ConsumerError::GroupNotFound(group.to_owned()))?;
    GroupRow::from_row(&row)
}

/// The outstanding messages a fetch chooses from (see [`select::select`] for which).
async fn outstanding(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &str,
    consumer: &str,
    strategy: Strategy,
    capacity: usize,
) -> Result<Vec<Row>> {
    let columns =
        "position, stream_id, deadline IS NOT NULL, consumer = $2 AND deadline IS NOT NULL,
                   not_before IS NULL OR not_before <= now()";
    let ready = "deadline IS NULL AND (not_before IS NULL OR not_before <= now())";
    let rows = match strategy {
        Strategy::PinnedByStream => {
            tx.query(
                &format!(
                    "SELECT {columns} FROM consumer_deliveries
                      WHERE group_name = $1 AND stream_id IN (
                            SELECT stream_id FROM consumer_deliveries
                             WHERE group_name = $1 AND {ready} ORDER BY position LIMIT $3)
                      ORDER BY position"
                ),
                &[&group, &consumer, &PINNED_WINDOW],
            )
            .await
        }
        Strategy::RoundRobin | Strategy::SingleActive => {
            tx.query(
                &format!(
                    "SELECT {columns} FROM consumer_deliveries
                      WHERE group_name = $1 AND {ready}
                      ORDER BY position LIMIT $3"
                ),
                &[&group, &consumer, &(capacity as i64)],
            )
            .await
        }
    }
    .map_err(db("reading a consumer group's outstanding messages"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let in_flight: bool = r.get(2);
            let mine: Option<bool> = r.get(3);
            let due: Option<bool> = r.get(4);
            Row {
                position: r.get(0),
                stream_id: r.get(1),
                state: if in_flight {
                    RowState::InFlight {
                        mine: mine.unwrap_or(false),
                    }
                } else if due.unwrap_or(false) {
                    RowState::Ready
                } else {
                    RowState::Backoff
                },
            }
        })
        .collect())
}

/// Reads the events at `positions` (all passing `filter`) into `bodies`, a few queries
/// for positions close together: each read starts at the lowest position still missing.
async fn read_positions(
    store: &EventStore,
    filter: &LogFilter,
    mut missing: BTreeSet<Position>,
    bodies: &mut HashMap<Position, RecordedEvent>,
) -> Result<()> {
    while let Some(&first) = missing.first() {
        let span = (missing.len() * 2 + 16).min(READ_PAGE);
        let page = store.read_log(first - 1, filter, span).await?;
        if page.is_empty() {
            // Not in the log as the selector sees it (cannot happen for a message taken
            // from it); deliver the rest.
            tracing::warn!(
                position = first,
                "a consumer group's message is not in the log"
            );
            missing.remove(&first);
            continue;
        }
        let mut found_first = false;
        for event in page {
            if missing.remove(&event.position) {
                found_first |= event.position == first;
                bodies.insert(event.position, event);
            }
        }
        if !found_first {
            missing.remove(&first);
        }
    }
    Ok(())
}

fn max_age(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn outcome(asked: &[Position], done: Vec<Position>, parked: Vec<Position>) -> AckOutcome {
    let settled: BTreeSet<Position> = done.iter().copied().collect();
    let mut stale: Vec<Position> = asked
        .iter()
        .copied()
        .filter(|p| !settled.contains(p))
        .collect();
    stale.sort_unstable();
    stale.dedup();
    let mut done = done;
    done.sort_unstable();
    let mut parked = parked;
    parked.sort_unstable();
    AckOutcome {
        done,
        stale,
        parked,
    }
}

/// Group names: what a metric label and a command-line argument carry without quoting.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConsumerError::invalid(
            "name",
            "a group name is 1 to 100 characters of letters, digits, '_', '-' and '.'",
        ))
    }
}

fn validate_consumer(consumer: &str) -> Result<()> {
    if consumer.is_empty() || consumer.len() > 200 || consumer.chars().any(char::is_control) {
        return Err(ConsumerError::invalid(
            "consumer",
            "a consumer name is 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

fn validate_spec(spec: &GroupSpec) -> Result<()> {
    validate_name(&spec.name)?;
    let s = &spec.settings;
    if s.max_in_flight == 0 || s.max_in_flight > 100_000 {
        return Err(ConsumerError::invalid(
            "maxInFlight",
            "must be between 1 and 100000",
        ));
    }
    let day = Duration::from_secs(86_400);
    if s.ack_timeout < Duration::from_millis(1) || s.ack_timeout > day {
        return Err(ConsumerError::invalid(
            "ackTimeoutMs",
            "must be between 1 ms and one day",
        ));
    }
    if s.max_deliveries == 0 || s.max_deliveries > 1_000 {
        return Err(ConsumerError::invalid(
            "maxDeliveries",
            "must be between 1 and 1000",
        ));
    }
    if s.retry_backoff > day || s.retry_backoff_max > day {
        return Err(ConsumerError::invalid(
            "retryBackoffMs",
            "must be at most one day",
        ));
    }
    if let StartFrom::After(position) = spec.start {
        if position < 0 {
            return Err(ConsumerError::invalid("from", "a position is not negative"));
        }
    }
    for (field, list) in [
        ("categories", &spec.selector.categories),
        ("eventTypes", &spec.selector.event_types),
    ] {
        if list.iter().any(|v| v.is_empty() || v.len() > 200) {
            return Err(ConsumerError::invalid(
                field,
                "each value is 1 to 200 characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_report_what_they_did_not_settle_as_stale() {
        let o = outcome(&[5, 3, 9, 3], vec![9, 3], vec![]);
        assert_eq!(o.done, [3, 9]);
        assert_eq!(o.stale, [5]);
    }

    #[test]
    fn names_and_settings_are_checked_before_touching_the_database() {
        assert!(validate_spec(&GroupSpec::new("orders.v1-mail_out")).is_ok());
        assert!(matches!(
            validate_spec(&GroupSpec::new("has space")),
            Err(ConsumerError::Invalid { field: "name", .. })
        ));
        let zero = GroupSpec::new("g").settings(GroupSettings {
            max_in_flight: 0,
            ..GroupSettings::default()
        });
        assert!(matches!(
            validate_spec(&zero),
            Err(ConsumerError::Invalid {
                field: "maxInFlight",
                ..
            })
        ));
        assert!(validate_consumer("worker-1@host").is_ok());
        assert!(validate_consumer("").is_err());
    }
}
