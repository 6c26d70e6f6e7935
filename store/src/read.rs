//! Reads: a stream forwards or backwards, the log (optionally filtered) after a position.
//!
//! Every read pages with a limit. Log reads are keyed by position, so a reader that keeps the
//! last position it saw can never skip an event (positions are dense and in commit order).

use crate::error::{Result, StoreError};
use crate::model::{Position, RecordedEvent, StreamVersion};
use futures::TryStreamExt;
use tokio_postgres::types::ToSql;

/// Columns of `events` in the order [`event_from_row`] decodes them.
pub(crate) const EVENT_COLUMNS: &str = "position, stream_id, stream_version, partition, event_id, \
     event_type, schema_version, payload, metadata, content_hash, recorded_at";

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
pub(crate) fn event_from_row(row: &tokio_postgres::Row) -> RecordedEvent {
    let hash: &[u8] = row.get(9);
    let mut content_hash = [0u8; 32];
    if hash.len() == 32 {
        content_hash.copy_from_slice(hash);
    }
    RecordedEvent {
        position: row.get(0),
        stream_id: row.get(1),
        stream_version: row.get(2),
        partition: row.get(3),
        event_id: row.get(4),
        event_type: row.get(5),
        schema_version: row.get(6),
        payload: row.get(7),
        metadata: row.get(8),
        content_hash,
        recorded_at: row.get(10),
    }
}

/// Reads up to `limit` events after `after` that pass `filter`, in position order.
pub(crate) async fn read_log<C: deadpool_postgres::GenericClient>(
    client: &C,
    after: Position,
    filter: &LogFilter,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
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

/// Reads up to `limit` events of one stream starting at `from` (inclusive) in `direction`.
/// Backwards, `from = None` starts at the stream's last event.
pub(crate) async fn read_stream<C: deadpool_postgres::GenericClient>(
    client: &C,
    stream_id: &str,
    from: Option<StreamVersion>,
    direction: Direction,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
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
