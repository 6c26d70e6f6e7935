//! Reads from a streaming replica: which reads may go there, the check that a replica holds
//! this store, and how far behind the primary it is.
//!
//! A store opened with a replica's pool ([`crate::EventStore::open_with_pools`]) sends the
//! event reads of its [`crate::EventStore::on_replica`] handles there (`read_log`,
//! `read_stream`, `stream_version`, `subscribe`, `subscribe_pages`); every other handle, and
//! everything else (appends and their expected-version checks, the head, counts and backlogs
//! that decide whether a consumer is caught up, whatever a consumer writes), stays on the
//! primary.
//!
//! Nothing is skipped on a replica. A physical standby replays the primary's commits in
//! commit order, and positions are dense and given in commit order, so the events a
//! replica shows are always a prefix of the log: a reader that keeps its last position
//! finds every later event there, only later. What must not come from the primary is any
//! claim about what the reader has seen: a subscription reports itself caught up only to
//! the replica's own head, read before each page (see [`crate::subscribe`]). Whoever needs
//! its own writes back at once (the command bus loading an aggregate it is about to append
//! to, a read-your-writes wait) reads the primary.

use crate::backoff::Backoff;
use crate::error::{Result, StoreError};
use crate::model::Position;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// How far the replica is behind the primary, measured by [`crate::EventStore::replica_lag`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLag {
    /// The primary's head, read after the replica's.
    pub primary_head: Position,
    /// The last position the replica has replayed.
    pub replica_head: Position,
    /// Events committed on the primary that the replica has not replayed.
    pub events: i64,
    /// Age of the oldest of those events (by the primary's clock), in seconds; 0 when none.
    pub seconds: f64,
    /// WAL the replica has not replayed, in bytes; `None` when the read database is not a
    /// standby (it then replays nothing).
    pub bytes: Option<u64>,
    /// Whether the read database is a standby (in recovery).
    pub standby: bool,
}

/// How long [`check`] waits for a standby to replay the store's creation (a store created
/// a moment ago may not be on its replica yet).
const CHECK_WAIT: Duration = Duration::from_secs(15);

/// Refuses a replica that does not hold the store `primary` holds: the first migration of
/// both must have been applied at the same instant (a physical replica has the primary's
/// rows, so a different store, or none, is a wrong URL). A standby that does not show it yet
/// gets [`CHECK_WAIT`] to replay it.
pub(crate) async fn check(primary: &deadpool_postgres::Client, replica: &Pool) -> Result<()> {
    const FINGERPRINT: &str = "SELECT min(applied_at)::text FROM tidemark_migrations";
    let ours: Option<String> = primary
        .query_one(FINGERPRINT, &[])
        .await
        .map_err(StoreError::db("reading the store's first migration"))?
        .get(0);
    let deadline = tokio::time::Instant::now() + CHECK_WAIT;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
    loop {
        let replica = replica
            .get()
            .await
            .map_err(|error| match StoreError::from(error) {
                StoreError::Unavailable(reason) => StoreError::Unavailable(format!(
                    "the read replica is unreachable: {reason}; check the read database URL and \
                 that the standby is running"
                )),
                other => other,
            })?;
        let standby: bool = replica
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(StoreError::db("asking the replica whether it is a standby"))?
            .get(0);
        let theirs: Option<String> = match replica.query_one(FINGERPRINT, &[]).await {
            Ok(row) => row.get(0),
            Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => None,
            Err(error) => {
                return Err(StoreError::db("reading the replica's first migration")(
                    error,
                ))
            }
        };
        if ours == theirs {
            if standby {
                tracing::info!("event reads of replica handles go to a streaming replica");
            } else {
                tracing::warn!(
                    "the read database is not a standby (not in recovery): it holds this \
                     store, so reads there are correct, but it is not a replica"
                );
            }
            return Ok(());
        }
        if !standby || tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Config(format!(
                "the read database does not hold this store (its first migration was applied \
                 at {}, the primary's at {}): point the read database URL at a streaming \
                 replica (standby) of the primary's database, or leave it out",
                theirs.as_deref().unwrap_or("no time: it has none"),
                ours.as_deref().unwrap_or("no time"),
            )));
        }
        drop(replica);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Measures the replica against the primary: the replica first, so the primary's figures
/// are never older than the replica's.
pub(crate) async fn lag(primary: &Pool, replica: &Pool) -> Result<ReplicaLag> {
    let (replica_head, replayed, standby) = {
        let client = replica.get().await?;
        let row = client
            .query_one(
                "SELECT position, pg_last_wal_replay_lsn()::text, pg_is_in_recovery()
                   FROM store_head",
                &[],
            )
            .await
            .map_err(StoreError::db("reading the replica's position"))?;
        let replayed: Option<String> = row.get(1);
        (row.get::<_, Position>(0), replayed, row.get::<_, bool>(2))
    };
    let client = primary.get().await?;
    let row = client
        .query_one(
            "SELECT h.position, pg_current_wal_lsn()::text,
                    (SELECT extract(epoch FROM now() - e.recorded_at)::float8
                       FROM events e WHERE e.position = $1)
               FROM store_head h",
            &[&(replica_head + 1)],
        )
        .await
        .map_err(StoreError::db("reading the primary's position"))?;
    let primary_head: Position = row.get(0);
    let written: String = row.get(1);
    let oldest_missing: Option<f64> = row.get(2);
    let events = (primary_head - replica_head).max(0);
    let bytes = match (replayed.as_deref().and_then(parse_lsn), parse_lsn(&written)) {
        (Some(replayed), Some(written)) => Some(written.saturating_sub(replayed)),
        _ => None,
    };
    Ok(ReplicaLag {
        primary_head,
        replica_head,
        events,
        seconds: if events > 0 {
            oldest_missing.unwrap_or(0.0).max(0.0)
        } else {
            0.0
        },
        bytes,
        standby,
    })
}

/// A `pg_lsn` as text (`16/B374D848`) as a byte offset in the WAL.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsns_are_byte_offsets() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/xyz"), None);
    }
}
