//! Reads: a stream forwards or backwards, the log (optionally filtered) after a position,
//! and counts over the log for consumers that keep positions (how many events lie after
//! them, how old the oldest is), so no caller needs SQL on `events`.
//!
//! Every read pages with a limit. Log reads are keyed by position, so a reader that keeps the
//! last position it saw can never skip an event (positions are dense and in commit order).

use crate::error::{Result, StoreError};
use crate::model::{PayloadEncoding, Position, RecordedEvent, StreamVersion};
use futures::TryStreamExt;
use tokio_postgres::types::ToSql;

/// Columns of `events` in the order [`event_from_row`] decodes them.
pub(crate) const EVENT_COLUMNS: &str = "position, stream_id, stream_version, partition, event_id, \
     event_type, schema_version, payload, metadata, content_hash, recorded_at, payload_avro";

/// An event as read from its row: a binary payload is still bytes, to be decoded to JSON by
/// the store's payload codec ([`crate::hooks::finish_read`]) before any reader sees it.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    /// `payload` is `Null` while `avro` holds the payload.
    pub event: RecordedEvent,
    pub avro: Option<Vec<u8>>,
}

/// Which direction to read a stream in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// Restricts a log read. Fields combine with AND; the values inside one field with OR.
/// The default reads everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogFilter {
    /// Stream categories (stream id up to the first `-`).
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
    pub partition: Option<i16>,
}

impl LogFilter {
    pub fn all() -> Self {
        LogFilter::default()
    }

    pub fn category(category: impl Into<String>) -> Self {
        LogFilter {
            categories: vec![category.into()],
            ..LogFilter::default()
        }
    }

    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        LogFilter {
            event_types: types.into_iter().map(Into::into).collect(),
            ..LogFilter::default()
        }
    }

    pub fn partition(partition: i16) -> Self {
        LogFilter {
            partition: Some(partition),
            ..LogFilter::default()
        }
    }

    pub fn with_partition(mut self, partition: Option<i16>) -> Self {
        self.partition = partition;
        self
    }

    /// Does `event` pass this filter? (The same test the SQL applies.)
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == event.category()))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.partition.is_none_or(|p| p == event.partition)
    }

    /// SQL for this filter's shape. Only the shape (which fields are set) varies the text,
    /// so each shape is prepared once per connection and cached.
    fn sql(&self) -> String {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position > $1");
        let mut next = 3;
        if !self.categories.is_empty() {
            sql.push_str(&format!(" AND category = ANY(${next})"));
            next += 1;
        }
        if !self.event_types.is_empty() {
            sql.push_str(&format!(" AND event_type = ANY(${next})"));
            next += 1;
        }
        if self.partition.is_some() {
            sql.push_str(&format!(" AND partition = ${next}"));
        }
        sql.push_str(" ORDER BY position LIMIT $2");
        sql
    }
}

/// Decodes a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &tokio_postgres::Row) -> StoredEvent {
    let hash: &[u8] = row.get(9);
    let mut content_hash = [0u8; 32];
    if hash.len() == 32 {
        content_hash.copy_from_slice(hash);
    }
    let payload: Option<serde_json::Value> = row.get(7);
    let avro: Option<Vec<u8>> = row.get(11);
    let encoding = if avro.is_some() {
        PayloadEncoding::Avro
    } else {
        PayloadEncoding::Json
    };
    let event = RecordedEvent {
        position: row.get(0),
        stream_id: row.get(1),
        stream_version: row.get(2),
        partition: row.get(3),
        event_id: row.get(4),
        event_type: row.get(5),
        schema_version: row.get(6),
        payload: payload.unwrap_or(serde_json::Value::Null),
        metadata: row.get(8),
        content_hash,
        recorded_at: row.get(10),
        encoding,
    };
    StoredEvent { event, avro }
}

/// Reads up to `limit` events after `after` that pass `filter`, in position order.
pub(crate) async fn read_log<C: deadpool_postgres::GenericClient>(
    client: &C,
    after: Position,
    filter: &LogFilter,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let statement = client
        .prepare_cached(&filter.sql())
        .await
        .map_err(StoreError::db("preparing a log read"))?;
    let limit = limit as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after, &limit];
    if !filter.categories.is_empty() {
        params.push(&filter.categories);
    }
    if !filter.event_types.is_empty() {
        params.push(&filter.event_types);
    }
    if let Some(partition) = &filter.partition {
        params.push(partition);
    }
    // Decode rows as they arrive instead of after the whole page: the client decodes while
    // the server is still sending.
    let rows = client
        .query_raw(&statement, params)
        .await
        .map_err(StoreError::db("reading the log"))?;
    let mut rows = std::pin::pin!(rows);
    let mut events = Vec::with_capacity(limit.clamp(0, 10_000) as usize);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(StoreError::db("reading the log"))?
    {
        events.push(event_from_row(&row));
    }
    Ok(events)
}

/// The position of the last committed event (0 when the log is empty) as this connection's
/// database sees it: on a streaming replica, what it has replayed.
pub(crate) async fn head<C: deadpool_postgres::GenericClient>(client: &C) -> Result<Position> {
    let statement = client
        .prepare_cached("SELECT position FROM store_head")
        .await
        .map_err(StoreError::db("preparing a head read"))?;
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(StoreError::db("reading the store head"))?;
    Ok(row.get(0))
}

/// Reads up to `limit` events of one stream starting at `from` (inclusive) in `direction`.
/// Backwards, `from = None` starts at the stream's last event.
pub(crate) async fn read_stream<C: deadpool_postgres::GenericClient>(
    client: &C,
    stream_id: &str,
    from: Option<StreamVersion>,
    direction: Direction,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        ),
        Direction::Backward => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version <= $2 \
             ORDER BY stream_version DESC LIMIT $3"
        ),
    };
    let from = match (direction, from) {
        (_, Some(v)) => v,
        (Direction::Forward, None) => 0,
        (Direction::Backward, None) => i64::MAX,
    };
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(StoreError::db("preparing a stream read"))?;
    let rows = client
        .query(&statement, &[&stream_id, &from, &(limit as i64)])
        .await
        .map_err(StoreError::db("reading a stream"))?;
    Ok(rows.iter().map(event_from_row).collect())
}

/// SQL: events `e` passing a filter's categories (`$3`) and event types (`$4`); an empty list
/// matches all. The counting queries take the filter in this one fixed shape, so each is
/// prepared once per connection.
const FILTER_MATCHES: &str = "(cardinality($3::text[]) = 0 OR e.category = ANY($3::text[]))
     AND (cardinality($4::text[]) = 0 OR e.event_type = ANY($4::text[]))";

/// SQL: events `e` of partition `p.partition` after `p.after`, up to `$5`. Spelled as row
/// comparisons so the planner scans the (partition, position) index for exactly that range;
/// with separate conditions it walks the position index over every partition's events.
const IN_PARTITION_RANGE: &str = "(e.partition, e.position) > (p.partition, p.after)
     AND (e.partition, e.position) <= (p.partition, $5)";

/// How far behind one partition's position the log is: see [`crate::EventStore::backlog`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionBacklog {
    pub partition: i16,
    /// Matching events after the partition's position, up to the head given, counted up
    /// to the cap given.
    pub events: i64,
    /// Age of the oldest of those events (`recorded_at`, by the database's clock), in
    /// seconds; `None` when there is none.
    pub oldest_age_seconds: Option<f64>,
}

/// Counts the events after `after` up to `upto` (inclusive) that pass `filter`.
pub(crate) async fn count_events<C: deadpool_postgres::GenericClient>(
    client: &C,
    after: Position,
    upto: Position,
    filter: &LogFilter,
) -> Result<i64> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT count(*) FROM events e
              WHERE e.position > $1 AND e.position <= $2 AND {FILTER_MATCHES}
                AND ($5::smallint IS NULL OR e.partition = $5)"
        ))
        .await
        .map_err(StoreError::db("preparing an event count"))?;
    let row = client
        .query_one(
            &statement,
            &[
                &after,
                &upto,
                &filter.categories,
                &filter.event_types,
                &filter.partition,
            ],
        )
        .await
        .map_err(StoreError::db("counting events"))?;
    Ok(row.get(0))
}

/// The backlog of each `(partition, position)`: see [`crate::EventStore::backlog`].
pub(crate) async fn backlog<C: deadpool_postgres::GenericClient>(
    client: &C,
    positions: &[(i16, Position)],
    upto: Position,
    filter: &LogFilter,
    cap: i64,
) -> Result<Vec<PartitionBacklog>> {
    let pending = format!("events e WHERE {IN_PARTITION_RANGE} AND {FILTER_MATCHES}");
    let sql = format!(
        "SELECT p.partition,
                (SELECT count(*) FROM (SELECT 1 FROM {pending} LIMIT $6) AS pending),
                (SELECT extract(epoch FROM now() - e.recorded_at)::float8 FROM {pending}
                  ORDER BY e.partition, e.position LIMIT 1)
           FROM unnest($1::smallint[], $2::bigint[]) AS p(partition, after)
          ORDER BY p.partition"
    );
    let doing = ["preparing a backlog query", "measuring a backlog"];
    let rows = PerPartition::new(positions, upto, filter)
        .query(client, &sql, &[&cap], doing)
        .await?;
    Ok(rows
        .iter()
        .map(|r| PartitionBacklog {
            partition: r.get(0),
            events: r.get(1),
            oldest_age_seconds: r.get(2),
        })
        .collect())
}

/// Of `positions`, the partitions with a matching event after their position, up to `upto`.
pub(crate) async fn partitions_behind<C: deadpool_postgres::GenericClient>(
    client: &C,
    positions: &[(i16, Position)],
    upto: Position,
    filter: &LogFilter,
) -> Result<Vec<i16>> {
    let sql = format!(
        "SELECT p.partition FROM unnest($1::smallint[], $2::bigint[]) AS p(partition, after)
          WHERE EXISTS (SELECT 1 FROM events e
                         WHERE {IN_PARTITION_RANGE} AND {FILTER_MATCHES})
          ORDER BY p.partition"
    );
    let doing = [
        "preparing a progress check",
        "checking progress against the log",
    ];
    let rows = PerPartition::new(positions, upto, filter)
        .query(client, &sql, &[], doing)
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The arguments every per-partition query binds the same way: `$1`/`$2` the partitions
/// and their positions (unnested as `p(partition, after)`), `$3`/`$4` the filter (see
/// [`FILTER_MATCHES`]) and `$5` `upto` (see [`IN_PARTITION_RANGE`]).
struct PerPartition<'a> {
    positions: &'a [(i16, Position)],
    upto: Position,
    filter: &'a LogFilter,
}

impl<'a> PerPartition<'a> {
    fn new(positions: &'a [(i16, Position)], upto: Position, filter: &'a LogFilter) -> Self {
        PerPartition {
            positions,
            upto,
            filter,
        }
    }

    /// Prepares (cached) and runs `sql` with these arguments, then `extra` from `$6` on.
    /// `[preparing, running]` say what failed in the error.
    async fn query<C: deadpool_postgres::GenericClient>(
        &self,
        client: &C,
        sql: &str,
        extra: &[&(dyn ToSql + Sync)],
        [preparing, running]: [&'static str; 2],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(StoreError::db(preparing))?;
        let (partitions, afters): (Vec<i16>, Vec<Position>) =
            self.positions.iter().copied().unzip();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &partitions,
            &afters,
            &self.filter.categories,
            &self.filter.event_types,
            &self.upto,
        ];
        params.extend_from_slice(extra);
        client
            .query(&statement, &params)
            .await
            .map_err(StoreError::db(running))
    }
}
