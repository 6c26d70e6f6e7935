//! Browsing the log as an operator does (the dashboard, the CLI): which categories and
//! streams it holds, and how fast it grows. Consumers that process events read with
//! [`crate::read`] instead; nothing here is needed to keep a read model correct.
//!
//! Every listing pages by key (`after`) with a limit, and costs at most what its page needs:
//! categories by a skip scan of the `(category, position)` index (one probe per category),
//! streams by the `streams` table's key, the append rate over a bounded tail of the log.

use crate::error::{Result, StoreError};
use crate::model::StreamVersion;
use chrono::{DateTime, Utc};

/// A stream as the `streams` table knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub stream_id: String,
    /// Version of its last event (its event count less one).
    pub version: StreamVersion,
    /// When its last append committed.
    pub updated_at: DateTime<Utc>,
}

/// How fast the log grows, measured over its most recent events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppendRate {
    /// Events appended per second, over the last `window_seconds`.
    pub events_per_second: f64,
    pub window_seconds: f64,
}

/// How many of the newest events an append-rate measurement looks at, at most: past this
/// many within the window, the rate is estimated from their time span instead.
pub const APPEND_RATE_SAMPLE: i64 = 5_000;

/// Up to `limit` categories after `after` (all when `None`), in the database's order.
pub(crate) async fn categories<C: deadpool_postgres::GenericClient>(
    client: &C,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    // A loose index scan: each step asks the index for the next category, so the cost is
    // one probe per category returned, however many events each has. The first step is
    // spelled without `after` when there is none (an `IS NULL OR` would make the planner
    // walk the index from its start, filtering).
    let first = if after.is_some() {
        "SELECT category FROM events WHERE category > $1::text ORDER BY category LIMIT 1"
    } else {
        "SELECT category FROM events WHERE $1::text IS NULL ORDER BY category LIMIT 1"
    };
    let statement = client
        .prepare_cached(&format!(
            "WITH RECURSIVE c(category) AS (
                 ({first})
                 UNION ALL
                 SELECT (SELECT e.category FROM events e WHERE e.category > c.category
                          ORDER BY e.category LIMIT 1)
                   FROM c WHERE c.category IS NOT NULL
             )
             SELECT category FROM c WHERE category IS NOT NULL LIMIT $2"
        ))
        .await
        .map_err(StoreError::db("preparing a category listing"))?;
    let rows = client
        .query(&statement, &[&after, &(limit as i64)])
        .await
        .map_err(StoreError::db("listing categories"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Up to `limit` streams after `after` (by stream id), of `category` when given.
pub(crate) async fn streams<C: deadpool_postgres::GenericClient>(
    client: &C,
    category: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StreamSummary>> {
    // The key is walked in order and filtered by category: a page of a common category
    // costs its page; one of a rare category may walk much of the table, which an operator's
    // click can afford and a hot path would not. As above, `after` is spelled only when given,
    // so the walk starts there.
    let from = if after.is_some() {
        "stream_id > $2::text"
    } else {
        "$2::text IS NULL"
    };
    let statement = client
        .prepare_cached(&format!(
            "SELECT stream_id, version, updated_at FROM streams
              WHERE {from} AND ($1::text IS NULL OR split_part(stream_id, '-', 1) = $1::text)
              ORDER BY stream_id LIMIT $3"
        ))
        .await
        .map_err(StoreError::db("preparing a stream listing"))?;
    let rows = client
        .query(&statement, &[&category, &after, &(limit as i64)])
        .await
        .map_err(StoreError::db("listing streams"))?;
    Ok(rows
        .iter()
        .map(|row| StreamSummary {
            stream_id: row.get(0),
            version: row.get(1),
            updated_at: row.get(2),
        })
        .collect())
}

/// The append rate over the last `window_seconds`, from the newest
/// [`APPEND_RATE_SAMPLE`] events' `recorded_at` (the database's clock, so every node
/// measures the same).
pub(crate) async fn append_rate<C: deadpool_postgres::GenericClient>(
    client: &C,
    window_seconds: f64,
) -> Result<AppendRate> {
    let statement = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE recorded_at > now() - make_interval(secs => $2)),
                    count(*),
                    extract(epoch FROM now() - min(recorded_at))::float8
               FROM events
              WHERE position > (SELECT position FROM store_head) - $1",
        )
        .await
        .map_err(StoreError::db("preparing an append-rate query"))?;
    let row = client
        .query_one(&statement, &[&APPEND_RATE_SAMPLE, &window_seconds])
        .await
        .map_err(StoreError::db("measuring the append rate"))?;
    let recent: i64 = row.get(0);
    let sampled: i64 = row.get(1);
    let span: Option<f64> = row.get(2);
    Ok(AppendRate {
        events_per_second: rate(recent, sampled, span, window_seconds),
        window_seconds,
    })
}

/// Events per second from a sample of the newest events: `recent` of the `sampled` fall
/// within the window; `span` is the age of the oldest sampled one. When the whole (full)
/// sample is within the window, more events may lie before it, so its own span is the
/// honest divisor.
fn rate(recent: i64, sampled: i64, span: Option<f64>, window_seconds: f64) -> f64 {
    if recent == 0 || window_seconds <= 0.0 {
        return 0.0;
    }
    if recent == sampled && sampled >= APPEND_RATE_SAMPLE {
        if let Some(span) = span.filter(|s| *s > 0.0) {
            return sampled as f64 / span.min(window_seconds);
        }
    }
    recent as f64 / window_seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_events_in_the_window_over_the_window() {
        assert_eq!(rate(0, 0, None, 10.0), 0.0);
        assert_eq!(rate(0, 40, Some(300.0), 10.0), 0.0);
        assert_eq!(rate(25, 40, Some(300.0), 10.0), 2.5);
    }

    #[test]
    fn a_full_sample_inside_the_window_is_measured_over_its_own_span() {
        // 5,000 events in the last 2 s: 2,500/s, not 500/s.
        assert_eq!(
            rate(APPEND_RATE_SAMPLE, APPEND_RATE_SAMPLE, Some(2.0), 10.0),
            2_500.0
        );
        // A sample that is not full holds every event of the window.
        assert_eq!(rate(100, 100, Some(2.0), 10.0), 10.0);
    }
}
