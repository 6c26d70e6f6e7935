//! Writes a batch of prepared appends in one transaction.
//!
//! The transaction first locks the store's head row. Every writer (in this process or any
//! other) does the same, so writers are serialised: positions are assigned in commit order,
//! are dense, and the stream heads read under the lock cannot change until we commit. Each
//! request is then checked in Rust against those heads (and against the requests before it
//! in the same batch); a failed check fails that request only.

use super::prepare::PreparedAppend;
use crate::error::{Result, StoreError};
use crate::model::{AppendOutcome, AppendedEvent, Position, StreamVersion};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Channel on which commits are announced (payload: the new head and the last position per
/// partition the commit touched, see `heads::encode`).
pub(crate) const NOTIFY_CHANNEL: &str = "tidemark_events";

/// What the log already holds for an event id or (stream, content hash).
#[derive(Debug, Clone, Copy)]
struct Stored {
    hash: [u8; 32],
    position: Position,
    stream_version: StreamVersion,
    event_id: Uuid,
}

/// How one event of a request relates to what is stored.
enum Resolution {
    New,
    DuplicateById(Stored),
    DuplicateByContent(Stored),
    Conflict(Stored),
}

/// Rows to insert, column by column (UNNEST wants arrays).
#[derive(Default)]
struct Columns<'a> {
    position: Vec<i64>,
    stream_id: Vec<&'a str>,
    stream_version: Vec<i64>,
    partition: Vec<i16>,
    event_id: Vec<Uuid>,
    event_type: Vec<&'a str>,
    schema_version: Vec<i32>,
    payload: Vec<&'a serde_json::Value>,
    metadata: Vec<&'a serde_json::Value>,
    content_hash: Vec<&'a [u8]>,
}

/// The result of a batch that reached the database: one answer per request, in order,
/// and the head after commit (`None` when nothing was written).
pub(crate) struct BatchResult {
    pub answers: Vec<Result<AppendOutcome>>,
    pub new_head: Option<Position>,
    /// The last position written in each partition the batch touched.
    pub partition_heads: Vec<(i16, Position)>,
}

/// Checks and writes `batch` in one transaction. An `Err` means the whole transaction failed
/// and nothing was written, except [`StoreError::OutcomeUnknown`]: the connection broke
/// during COMMIT, and the batch may or may not have been written.
pub(crate) async fn write_batch(
    client: &mut deadpool_postgres::Client,
    batch: &[&PreparedAppend],
) -> Result<BatchResult> {
    let tx = client
        .build_transaction()
        .start()
        .await
        .map_err(StoreError::db("starting an append transaction"))?;

    // Reads: lock the head row, then read the stream heads and what is already stored under
    // this batch's ids (and content). The statements are pipelined — sent together, executed
    // by the server in order — so the reads after the lock see every commit before it, for
    // one round trip instead of one each.
    let (lock_head, select_streams, select_ids, select_content) = futures::try_join!(
        tx.prepare_cached("SELECT position FROM store_head FOR UPDATE"),
        tx.prepare_cached("SELECT stream_id, version FROM streams WHERE stream_id = ANY($1)"),
        tx.prepare_cached(
            "SELECT event_id, content_hash, position, stream_version FROM events WHERE event_id = ANY($1)",
        ),
        tx.prepare_cached(
            "SELECT DISTINCT ON (e.stream_id, e.content_hash)
                    e.event_id, e.content_hash, e.position, e.stream_version, e.stream_id
               FROM events e
               JOIN unnest($1::text[], $2::bytea[]) AS k(stream_id, content_hash)
                 ON e.stream_id = k.stream_id AND e.content_hash = k.content_hash
              ORDER BY e.stream_id, e.content_hash, e.position",
        ),
    )
    .map_err(StoreError::db("preparing the append statements"))?;

    let mut stream_ids: Vec<&str> = batch.iter().map(|p| p.request.stream_id.as_str()).collect();
    stream_ids.sort_unstable();
    stream_ids.dedup();
    let all_ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|p| p.event_ids.iter().copied())
        .collect();
    // Identical content already in the stream, for requests that ask for content dedup.
    let (dedup_streams, dedup_hashes): (Vec<&str>, Vec<&[u8]>) = batch
        .iter()
        .filter(|p| p.request.content_dedup)
        .flat_map(|p| {
            p.hashes
                .iter()
                .map(move |h| (p.request.stream_id.as_str(), &h[..]))
        })
        .unzip();
    let content_rows = async {
        if dedup_streams.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&select_content, &[&dedup_streams, &dedup_hashes])
                .await
        }
    };
    let stream_params: [&(dyn ToSql + Sync); 1] = [&stream_ids];
    let id_params: [&(dyn ToSql + Sync); 1] = [&all_ids];
    // A new store's tables grow quickly after the generic plans of these lookups are cached,
    // and a plan made for an empty table scans the whole table: plan each batch's lookups for
    // the table as it is now (cheap next to the batch, and it rides in the same round trip).
    let plan_for_now = tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan");
    let ((), head_row, stream_rows, id_rows, content_rows) = futures::try_join!(
        plan_for_now,
        tx.query_one(&lock_head, &[]),
        tx.query(&select_streams, &stream_params),
        tx.query(&select_ids, &id_params),
        content_rows,
    )
    .map_err(StoreError::db(
        "locking the store head and reading stream heads",
    ))?;

    let head: Position = head_row.get(0);
    let mut stream_heads: HashMap<String, StreamVersion> = stream_rows
        .into_iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect();
    let mut by_id: HashMap<Uuid, Stored> = HashMap::new();
    for row in &id_rows {
        let stored = stored_from_row(row);
        by_id.insert(stored.event_id, stored);
    }
    let mut by_content: HashMap<(String, [u8; 32]), Stored> = HashMap::new();
    for row in &content_rows {
        let stored = stored_from_row(row);
        by_content.insert((row.get::<_, String>(4), stored.hash), stored);
    }

    let mut next_position = head;
    let mut columns = Columns::default();
    let mut touched_streams: HashMap<&str, StreamVersion> = HashMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for &prepared in batch {
        let answer = decide(
            prepared,
            &mut stream_heads,
            &mut by_id,
            &mut by_content,
            &mut next_position,
            &mut columns,
        );
        if let Ok(outcome) = &answer {
            if !outcome.all_duplicates() {
                touched_streams.insert(prepared.request.stream_id.as_str(), outcome.stream_version);
            }
        }
        answers.push(answer);
    }

    if columns.position.is_empty() {
        // Nothing to write: every request failed or was a duplicate. Release the lock.
        tx.rollback()
            .await
            .map_err(StoreError::db("ending a read-only append transaction"))?;
        return Ok(BatchResult {
            answers,
            new_head: None,
            partition_heads: Vec::new(),
        });
    }

    let (insert_events, upsert_streams, advance_head, notify) = futures::try_join!(
        tx.prepare_cached(
            "INSERT INTO events (position, stream_id, stream_version, partition, event_id, event_type,
                                 schema_version, payload, metadata, content_hash)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::smallint[], $5::uuid[],
                                  $6::text[], $7::int[], $8::jsonb[], $9::jsonb[], $10::bytea[])",
        ),
        tx.prepare_cached(
            "INSERT INTO streams (stream_id, version)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
        ),
        tx.prepare_cached("UPDATE store_head SET position = $1"),
        tx.prepare_cached("SELECT pg_notify($1, $2)"),
    )
    .map_err(StoreError::db("preparing the append writes"))?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &columns.position,
        &columns.stream_id,
        &columns.stream_version,
        &columns.partition,
        &columns.event_id,
        &columns.event_type,
        &columns.schema_version,
        &columns.payload,
        &columns.metadata,
        &columns.content_hash,
    ];
    let (streams, versions): (Vec<&str>, Vec<i64>) = touched_streams.into_iter().unzip();
    let mut partition_heads: HashMap<i16, Position> = HashMap::new();
    for (&partition, &position) in columns.partition.iter().zip(&columns.position) {
        let last = partition_heads.entry(partition).or_default();
        *last = (*last).max(position);
    }
    let mut partition_heads: Vec<(i16, Position)> = partition_heads.into_iter().collect();
    partition_heads.sort_unstable();
    let head_text = crate::heads::encode(next_position, &partition_heads);
    // Writes, pipelined like the reads (one round trip). The notification is delivered to
    // listeners only when the transaction commits.
    futures::try_join!(
        async {
            tx.execute(&insert_events, &params)
                .await
                .map_err(StoreError::db("inserting events"))
        },
        async {
            tx.execute(&upsert_streams, &[&streams, &versions])
                .await
                .map_err(StoreError::db("updating stream heads"))
        },
        async {
            tx.execute(&advance_head, &[&next_position])
                .await
                .map_err(StoreError::db("advancing the store head"))
        },
        async {
            tx.execute(&notify, &[&NOTIFY_CHANNEL, &head_text])
                .await
                .map_err(StoreError::db("notifying listeners"))
        },
    )?;
    // Up to here every failure ended the transaction without a COMMIT: nothing was written.
    // From the moment COMMIT is sent until its answer arrives, a broken connection leaves
    // the outcome unknown; `commit_failed` tells the two apart.
    tx.commit()
        .await
        .map_err(StoreError::commit_failed("committing appended events"))?;
    Ok(BatchResult {
        answers,
        new_head: Some(next_position),
        partition_heads,
    })
}

fn stored_from_row(row: &tokio_postgres::Row) -> Stored {
    let hash_bytes: &[u8] = row.get(1);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(hash_bytes);
    Stored {
        event_id: row.get(0),
        hash,
        position: row.get(2),
        stream_version: row.get(3),
    }
}

/// Decides one request against the stored state plus the requests before it in this batch,
/// and, when it succeeds, queues its new events and records them in the lookup maps so later
/// requests in the batch see them.
fn decide<'a>(
    prepared: &'a PreparedAppend,
    stream_heads: &mut HashMap<String, StreamVersion>,
    by_id: &mut HashMap<Uuid, Stored>,
    by_content: &mut HashMap<(String, [u8; 32]), Stored>,
    next_position: &mut Position,
    columns: &mut Columns<'a>,
) -> Result<AppendOutcome> {
    let request = &prepared.request;
    let stream_id = request.stream_id.as_str();

    let mut resolutions = Vec::with_capacity(request.events.len());
    let mut batch_content: HashMap<[u8; 32], usize> = HashMap::new();
    for (index, (id, hash)) in prepared.event_ids.iter().zip(&prepared.hashes).enumerate() {
        let resolution = match by_id.get(id) {
            Some(stored) if stored.hash == *hash => Resolution::DuplicateById(*stored),
            Some(stored) => Resolution::Conflict(*stored),
            None if request.content_dedup => {
                match by_content.get(&(request.stream_id.clone(), *hash)) {
                    Some(stored) => Resolution::DuplicateByContent(*stored),
                    // Identical events within one content-dedup append are stored once too.
                    None => match batch_content.get(hash) {
                        Some(&first) => Resolution::DuplicateByContent(Stored {
                            event_id: prepared.event_ids[first],
                            hash: *hash,
                            position: -1,
                            stream_version: -1,
                        }),
                        None => {
                            batch_content.insert(*hash, index);
                            Resolution::New
                        }
                    },
                }
            }
            None => Resolution::New,
        };
        resolutions.push(resolution);
    }

    if let Some(Resolution::Conflict(stored)) = resolutions
        .iter()
        .find(|r| matches!(r, Resolution::Conflict(_)))
    {
        return Err(StoreError::EventIdConflict {
            event_id: stored.event_id,
            existing_position: stored.position,
        });
    }
    let any_new = resolutions.iter().any(|r| matches!(r, Resolution::New));
    if any_new {
        // Some ids stored, others not: the ids were reused from another append.
        if let Some(Resolution::DuplicateById(stored)) = resolutions
            .iter()
            .find(|r| matches!(r, Resolution::DuplicateById(_)))
        {
            return Err(StoreError::EventIdConflict {
                event_id: stored.event_id,
                existing_position: stored.position,
            });
        }
    }

    let current = stream_heads.get(stream_id).copied();
    if !any_new {
        // An idempotent retry (or fully deduplicated content): report the originals.
        let events = resolutions
            .iter()
            .zip(&prepared.event_ids)
            .map(|(r, id)| match r {
                Resolution::DuplicateById(s) | Resolution::DuplicateByContent(s) => AppendedEvent {
                    event_id: if matches!(r, Resolution::DuplicateById(_)) {
                        *id
                    } else {
                        s.event_id
                    },
                    position: s.position,
                    stream_version: s.stream_version,
                    duplicate: true,
                },
                Resolution::New | Resolution::Conflict(_) => unreachable!("checked above"),
            })
            .collect();
        return Ok(AppendOutcome {
            stream_id: request.stream_id.clone(),
            events,
            stream_version: current.unwrap_or(-1),
        });
    }

    if !request.expected.is_satisfied_by(current) {
        return Err(StoreError::WrongExpectedVersion {
            stream_id: request.stream_id.clone(),
            expected: request.expected,
            actual: current,
        });
    }

    let mut version = current.unwrap_or(-1);
    let mut events: Vec<AppendedEvent> = Vec::with_capacity(request.events.len());
    for (index, resolution) in resolutions.iter().enumerate() {
        let id = prepared.event_ids[index];
        let hash = prepared.hashes[index];
        match resolution {
            Resolution::New => {
                version += 1;
                *next_position += 1;
                let event = &request.events[index];
                columns.position.push(*next_position);
                columns.stream_id.push(stream_id);
                columns.stream_version.push(version);
                columns.partition.push(prepared.partition);
                columns.event_id.push(id);
                columns.event_type.push(&event.event_type);
                columns.schema_version.push(event.schema_version);
                columns.payload.push(&event.payload);
                columns.metadata.push(&event.metadata);
                columns.content_hash.push(&prepared.hashes[index]);
                let stored = Stored {
                    event_id: id,
                    hash,
                    position: *next_position,
                    stream_version: version,
                };
                by_id.insert(id, stored);
                if request.content_dedup {
                    by_content.insert((request.stream_id.clone(), hash), stored);
                }
                events.push(AppendedEvent {
                    event_id: id,
                    position: *next_position,
                    stream_version: version,
                    duplicate: false,
                });
            }
            Resolution::DuplicateByContent(stored) => {
                // A duplicate of an earlier event of this same append: point at that one.
                let original = if stored.position < 0 {
                    by_id[&stored.event_id]
                } else {
                    *stored
                };
                events.push(AppendedEvent {
                    event_id: original.event_id,
                    position: original.position,
                    stream_version: original.stream_version,
                    duplicate: true,
                });
            }
            Resolution::DuplicateById(_) | Resolution::Conflict(_) => unreachable!("checked above"),
        }
    }
    stream_heads.insert(request.stream_id.clone(), version);
    Ok(AppendOutcome {
        stream_id: request.stream_id.clone(),
        events,
        stream_version: version,
    })
}
