//! Writes a batch of prepared appends in one transaction.
//!
//! The transaction first locks the store's head row. Every writer (in this process or any
//! other) does the same, so writers are serialised: positions are assigned in commit order,
//! are dense, and the stream heads read under the lock cannot change until we commit. Each
//! request is then planned in Rust ([`plan`], a pure function giving a [`Decision`]) against
//! what was read under the lock plus the requests before it in the same batch ([`Known`]);
//! a request that cannot be written fails alone.

use super::prepare::PreparedAppend;
use crate::error::{Result, StoreError};
use crate::model::{AppendOutcome, AppendRequest, AppendedEvent, Position, StreamVersion};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tracing::Instrument;
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

/// What the batch knows of the log: the head, stream heads and stored events read under the
/// head lock, plus what the requests planned before in this batch are to write.
#[derive(Debug, Default)]
struct Known {
    /// The last position taken.
    head: Position,
    stream_heads: HashMap<String, StreamVersion>,
    by_id: HashMap<Uuid, Stored>,
    /// Only for events of content-dedup requests: what their lookups can find.
    by_content: HashMap<(String, [u8; 32]), Stored>,
}

/// What one request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Append: at least one event is new. `events` answers every event of the request in
    /// order: a new one (`duplicate: false`) is written at the position and stream version
    /// given; the others (content dedup) repeat content already in the stream or earlier in
    /// this append and name that event.
    Write {
        events: Vec<AppendedEvent>,
        stream_version: StreamVersion,
    },
    /// Nothing is new: every event is already in the log, by its id with the same content
    /// (the retry of an append that took effect) or, with content dedup, by its content.
    /// Nothing is written, the expected version is not checked, and the answer names the
    /// originals and the stream's current version (-1 when it has none).
    Duplicate {
        events: Vec<AppendedEvent>,
        stream_version: StreamVersion,
    },
    /// An event id is already stored with other content.
    IdTaken {
        event_id: Uuid,
        existing_position: Position,
    },
    /// Some events are new while others are stored under their ids with the same content:
    /// ids reused from another append, not a retry of this one.
    IdsReused {
        event_id: Uuid,
        existing_position: Position,
    },
    /// The stream is not at the expected version (`None`: it does not exist).
    WrongExpectedVersion { actual: Option<StreamVersion> },
}

/// How one event of a request relates to what is known.
#[derive(Debug, Clone, Copy)]
enum Resolution {
    New,
    /// Its id is stored, with the same content.
    StoredById(Stored),
    /// Its id is stored with other content.
    IdTaken(Stored),
    /// Content dedup: the stream holds the same content.
    StoredContent(Stored),
    /// Content dedup: the event at this index of the same append has the same content.
    RepeatInAppend(usize),
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

    let mut known = Known {
        head: head_row.get(0),
        stream_heads: stream_rows
            .into_iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect(),
        ..Known::default()
    };
    for row in &id_rows {
        let stored = stored_from_row(row);
        known.by_id.insert(stored.event_id, stored);
    }
    for row in &content_rows {
        let stored = stored_from_row(row);
        known
            .by_content
            .insert((row.get::<_, String>(4), stored.hash), stored);
    }

    let mut columns = Columns::default();
    let mut touched_streams: HashMap<&str, StreamVersion> = HashMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for &prepared in batch {
        let decision = plan(prepared, &known);
        if let Decision::Write {
            events,
            stream_version,
        } = &decision
        {
            known.record(prepared, events, *stream_version);
            columns.push(prepared, events);
            touched_streams.insert(prepared.request.stream_id.as_str(), *stream_version);
        }
        answers.push(decision.into_answer(&prepared.request));
    }
    let next_position = known.head;

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
        .instrument(tracing::debug_span!("append_commit"))
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

impl Known {
    /// Takes in what a [`Decision::Write`] of `prepared` writes, so the requests after it in
    /// the batch see its events and the stream's new version.
    fn record(
        &mut self,
        prepared: &PreparedAppend,
        events: &[AppendedEvent],
        stream_version: StreamVersion,
    ) {
        let request = &prepared.request;
        for (event, hash) in events.iter().zip(&prepared.hashes) {
            if event.duplicate {
                continue;
            }
            let stored = Stored {
                event_id: event.event_id,
                hash: *hash,
                position: event.position,
                stream_version: event.stream_version,
            };
            self.by_id.insert(stored.event_id, stored);
            if request.content_dedup {
                self.by_content
                    .insert((request.stream_id.clone(), *hash), stored);
            }
            self.head = self.head.max(event.position);
        }
        self.stream_heads
            .insert(request.stream_id.clone(), stream_version);
    }
}

impl<'a> Columns<'a> {
    /// Queues the new events of a [`Decision::Write`] of `prepared` for the insert.
    fn push(&mut self, prepared: &'a PreparedAppend, events: &[AppendedEvent]) {
        let request = &prepared.request;
        for (index, answer) in events.iter().enumerate() {
            if answer.duplicate {
                continue;
            }
            let event = &request.events[index];
            self.position.push(answer.position);
            self.stream_id.push(&request.stream_id);
            self.stream_version.push(answer.stream_version);
            self.partition.push(prepared.partition);
            self.event_id.push(answer.event_id);
            self.event_type.push(&event.event_type);
            self.schema_version.push(event.schema_version);
            self.payload.push(&event.payload);
            self.metadata.push(&event.metadata);
            self.content_hash.push(&prepared.hashes[index]);
        }
    }
}

impl Decision {
    /// The answer to the request this decides.
    fn into_answer(self, request: &AppendRequest) -> Result<AppendOutcome> {
        match self {
            Decision::Write {
                events,
                stream_version,
            }
            | Decision::Duplicate {
                events,
                stream_version,
            } => Ok(AppendOutcome {
                stream_id: request.stream_id.clone(),
                events,
                stream_version,
            }),
            Decision::IdTaken {
                event_id,
                existing_position,
            }
            | Decision::IdsReused {
                event_id,
                existing_position,
            } => Err(StoreError::EventIdConflict {
                event_id,
                existing_position,
            }),
            Decision::WrongExpectedVersion { actual } => Err(StoreError::WrongExpectedVersion {
                stream_id: request.stream_id.clone(),
                expected: request.expected,
                actual,
            }),
        }
    }
}

/// Plans one request against what is known, changing nothing. In order: an id stored with
/// other content, then ids partly stored, refuse the request; a request with nothing new is
/// a duplicate whatever its expectation; otherwise the expectation is checked against the
/// stream's head, and the new events take the next positions and versions.
fn plan(prepared: &PreparedAppend, known: &Known) -> Decision {
    let request = &prepared.request;
    let resolutions = resolve(prepared, known);

    let id_taken = resolutions.iter().find_map(|r| match r {
        Resolution::IdTaken(stored) => Some(*stored),
        _ => None,
    });
    if let Some(stored) = id_taken {
        return Decision::IdTaken {
            event_id: stored.event_id,
            existing_position: stored.position,
        };
    }
    let any_new = resolutions.iter().any(|r| matches!(r, Resolution::New));
    let stored_by_id = resolutions.iter().find_map(|r| match r {
        Resolution::StoredById(stored) => Some(*stored),
        _ => None,
    });
    if let (true, Some(stored)) = (any_new, stored_by_id) {
        return Decision::IdsReused {
            event_id: stored.event_id,
            existing_position: stored.position,
        };
    }

    let current = known.stream_heads.get(&request.stream_id).copied();
    if !any_new {
        let events = resolutions
            .iter()
            .map(|resolution| match *resolution {
                Resolution::StoredById(stored) | Resolution::StoredContent(stored) => {
                    duplicate_of(stored)
                }
                // A repeat in the append needs a new first occurrence; an id taken was refused.
                Resolution::New | Resolution::RepeatInAppend(_) | Resolution::IdTaken(_) => {
                    unreachable!("nothing is new and no id is taken")
                }
            })
            .collect();
        return Decision::Duplicate {
            events,
            stream_version: current.unwrap_or(-1),
        };
    }

    if !request.expected.is_satisfied_by(current) {
        return Decision::WrongExpectedVersion { actual: current };
    }

    let mut version = current.unwrap_or(-1);
    let mut position = known.head;
    let mut events: Vec<AppendedEvent> = Vec::with_capacity(resolutions.len());
    for (resolution, &id) in resolutions.iter().zip(&prepared.event_ids) {
        let answer = match *resolution {
            Resolution::New => {
                version += 1;
                position += 1;
                AppendedEvent {
                    event_id: id,
                    position,
                    stream_version: version,
                    duplicate: false,
                }
            }
            Resolution::StoredContent(stored) => duplicate_of(stored),
            // Earlier in this append, so already planned.
            Resolution::RepeatInAppend(first) => AppendedEvent {
                duplicate: true,
                ..events[first]
            },
            Resolution::StoredById(_) | Resolution::IdTaken(_) => {
                unreachable!("ids stored alongside new events were refused")
            }
        };
        events.push(answer);
    }
    Decision::Write {
        events,
        stream_version: version,
    }
}

/// How each event of `prepared` relates to what is known: by id first; then, for a
/// content-dedup request, by content in the stream and earlier in the same append.
fn resolve(prepared: &PreparedAppend, known: &Known) -> Vec<Resolution> {
    let request = &prepared.request;
    let mut first_with_hash: HashMap<[u8; 32], usize> = HashMap::new();
    prepared
        .event_ids
        .iter()
        .zip(&prepared.hashes)
        .enumerate()
        .map(|(index, (id, hash))| match known.by_id.get(id) {
            Some(stored) if stored.hash == *hash => Resolution::StoredById(*stored),
            Some(stored) => Resolution::IdTaken(*stored),
            None if request.content_dedup => {
                match known.by_content.get(&(request.stream_id.clone(), *hash)) {
                    Some(stored) => Resolution::StoredContent(*stored),
                    // Identical events within one content-dedup append are stored once too.
                    None => match first_with_hash.get(hash) {
                        Some(&first) => Resolution::RepeatInAppend(first),
                        None => {
                            first_with_hash.insert(*hash, index);
                            Resolution::New
                        }
                    },
                }
            }
            None => Resolution::New,
        })
        .collect()
}

fn duplicate_of(stored: Stored) -> AppendedEvent {
    AppendedEvent {
        event_id: stored.event_id,
        position: stored.position,
        stream_version: stored.stream_version,
        duplicate: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::append::prepare::prepare;
    use crate::config::Limits;
    use crate::model::{ExpectedVersion, NewEvent};
    use serde_json::json;

    const PARTITIONS: u16 = 16;

    fn prepared(request: AppendRequest) -> PreparedAppend {
        prepare(request, &Limits::default(), PARTITIONS).expect("a valid request")
    }

    /// An append to `stream` of one event per amount, each with a fresh id.
    fn append(stream: &str, expected: ExpectedVersion, amounts: &[i64]) -> PreparedAppend {
        prepared(AppendRequest::new(
            stream,
            expected,
            amounts
                .iter()
                .map(|amount| {
                    NewEvent::new("Deposited", json!({ "amount": amount })).with_id(Uuid::new_v4())
                })
                .collect(),
        ))
    }

    /// The same events (ids and content) as `original`, with another expectation.
    fn retry(original: &PreparedAppend, expected: ExpectedVersion) -> PreparedAppend {
        prepared(AppendRequest {
            expected,
            ..original.request.clone()
        })
    }

    /// Plans `prepared` against `known` and, when it writes, records it as the writer does.
    fn plan_and_record(prepared: &PreparedAppend, known: &mut Known) -> Decision {
        let decision = plan(prepared, known);
        if let Decision::Write {
            events,
            stream_version,
        } = &decision
        {
            known.record(prepared, events, *stream_version);
        }
        decision
    }

    /// A log whose last append was `prepared`, ending at position `head`: its stream head
    /// and its events by id are known, as a batch reads them under the lock.
    fn log_with(prepared: &PreparedAppend, head: Position) -> Known {
        let mut known = Known {
            head: head - prepared.event_ids.len() as i64,
            ..Known::default()
        };
        let decision = plan_and_record(prepared, &mut known);
        assert!(matches!(decision, Decision::Write { .. }), "{decision:?}");
        assert_eq!(known.head, head);
        known
    }

    fn written(events: &[AppendedEvent]) -> Vec<(Position, StreamVersion, bool)> {
        events
            .iter()
            .map(|e| (e.position, e.stream_version, e.duplicate))
            .collect()
    }

    #[track_caller]
    fn assert_writes(
        decision: &Decision,
        expected: &[(Position, StreamVersion, bool)],
        version: StreamVersion,
    ) {
        match decision {
            Decision::Write {
                events,
                stream_version,
            } => {
                assert_eq!(written(events), expected);
                assert_eq!(*stream_version, version);
            }
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn any_version_writes_to_a_new_or_an_existing_stream() {
        let known = Known {
            head: 10,
            ..Known::default()
        };
        let decision = plan(&append("a", ExpectedVersion::Any, &[1, 2]), &known);
        assert_writes(&decision, &[(11, 0, false), (12, 1, false)], 1);

        let known = log_with(&append("a", ExpectedVersion::Any, &[1, 2, 3]), 20);
        let decision = plan(&append("a", ExpectedVersion::Any, &[4]), &known);
        assert_writes(&decision, &[(21, 3, false)], 3);
    }

    #[test]
    fn no_stream_writes_only_to_a_stream_that_does_not_exist() {
        let decision = plan(
            &append("a", ExpectedVersion::NoStream, &[1]),
            &Known::default(),
        );
        assert_writes(&decision, &[(1, 0, false)], 0);

        let known = log_with(&append("a", ExpectedVersion::Any, &[1]), 1);
        let decision = plan(&append("a", ExpectedVersion::NoStream, &[2]), &known);
        assert_eq!(decision, Decision::WrongExpectedVersion { actual: Some(0) });
    }

    #[test]
    fn an_exact_version_must_be_the_streams_last() {
        let known = log_with(&append("a", ExpectedVersion::Any, &[1, 2]), 2);
        let decision = plan(&append("a", ExpectedVersion::Exact(1), &[3]), &known);
        assert_writes(&decision, &[(3, 2, false)], 2);

        let decision = plan(&append("a", ExpectedVersion::Exact(0), &[3]), &known);
        assert_eq!(decision, Decision::WrongExpectedVersion { actual: Some(1) });
        let decision = plan(&append("b", ExpectedVersion::Exact(0), &[3]), &known);
        assert_eq!(decision, Decision::WrongExpectedVersion { actual: None });
    }

    #[test]
    fn stream_exists_writes_only_to_an_existing_stream() {
        let known = log_with(&append("a", ExpectedVersion::Any, &[1]), 1);
        let decision = plan(&append("a", ExpectedVersion::StreamExists, &[2]), &known);
        assert_writes(&decision, &[(2, 1, false)], 1);

        let decision = plan(&append("b", ExpectedVersion::StreamExists, &[2]), &known);
        assert_eq!(decision, Decision::WrongExpectedVersion { actual: None });
    }

    #[test]
    fn a_retry_with_the_same_ids_and_content_is_a_duplicate_whatever_it_expects() {
        let original = append("a", ExpectedVersion::NoStream, &[1, 2]);
        let mut known = log_with(&original, 5);
        // The stream moved on since.
        plan_and_record(&append("a", ExpectedVersion::Any, &[3]), &mut known);

        let (first, second) = (original.event_ids[0], original.event_ids[1]);
        // NoStream no longer holds, and need not: nothing is written.
        let decision = plan(&retry(&original, ExpectedVersion::NoStream), &known);
        let expected = Decision::Duplicate {
            events: vec![
                AppendedEvent {
                    event_id: first,
                    position: 4,
                    stream_version: 0,
                    duplicate: true,
                },
                AppendedEvent {
                    event_id: second,
                    position: 5,
                    stream_version: 1,
                    duplicate: true,
                },
            ],
            stream_version: 2,
        };
        assert_eq!(decision, expected);
        assert_eq!(
            plan(&retry(&original, ExpectedVersion::Exact(7)), &known),
            expected
        );
    }

    #[test]
    fn a_blind_retry_derives_the_same_ids_and_is_a_duplicate() {
        // No client ids: an Exact/NoStream append derives them from stream, version and
        // content, so sending it again is recognised.
        let blind = || {
            prepared(AppendRequest::new(
                "a",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Opened", json!({ "owner": "ann" }))],
            ))
        };
        let mut known = Known::default();
        let first = plan_and_record(&blind(), &mut known);
        assert_writes(&first, &[(1, 0, false)], 0);
        match plan(&blind(), &known) {
            Decision::Duplicate {
                events,
                stream_version,
            } => {
                assert_eq!(written(&events), [(1, 0, true)]);
                assert_eq!(stream_version, 0);
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn an_id_stored_with_other_content_is_taken() {
        let original = append("a", ExpectedVersion::Any, &[1]);
        let known = log_with(&original, 9);
        let reused = prepared(AppendRequest::new(
            "a",
            ExpectedVersion::Any,
            vec![
                NewEvent::new("Deposited", json!({ "amount": 99 })).with_id(Uuid::new_v4()),
                NewEvent::new("Deposited", json!({ "amount": 2 })).with_id(original.event_ids[0]),
            ],
        ));
        let taken = Decision::IdTaken {
            event_id: original.event_ids[0],
            existing_position: 9,
        };
        assert_eq!(plan(&reused, &known), taken);
        // Refused before the expectation is looked at.
        assert_eq!(
            plan(&retry(&reused, ExpectedVersion::NoStream), &known),
            taken
        );
    }

    #[test]
    fn ids_partly_stored_with_the_same_content_are_reused_not_a_retry() {
        let original = append("a", ExpectedVersion::Any, &[1]);
        let known = log_with(&original, 3);
        let mut events = original.request.events.clone();
        events.push(NewEvent::new("Deposited", json!({ "amount": 2 })).with_id(Uuid::new_v4()));
        let extended = prepared(AppendRequest::new("a", ExpectedVersion::Any, events));
        let decision = plan(&extended, &known);
        assert_eq!(
            decision,
            Decision::IdsReused {
                event_id: original.event_ids[0],
                existing_position: 3,
            }
        );
        assert!(matches!(
            decision.into_answer(&extended.request),
            Err(StoreError::EventIdConflict {
                existing_position: 3,
                ..
            })
        ));
    }

    #[test]
    fn content_dedup_answers_content_the_stream_holds_with_the_original() {
        let original = append("a", ExpectedVersion::Any, &[1, 2]);
        let mut known = log_with(&original, 2);
        // As the batch reads it: the stream's events under their content.
        for (index, hash) in original.hashes.iter().enumerate() {
            let stored = known.by_id[&original.event_ids[index]];
            known.by_content.insert(("a".into(), *hash), stored);
        }
        // Same content, fresh ids.
        let again = append("a", ExpectedVersion::NoStream, &[1, 2]);
        let again = prepared(again.request.with_content_dedup(true));
        match plan(&again, &known) {
            Decision::Duplicate {
                events,
                stream_version,
            } => {
                assert_eq!(written(&events), [(1, 0, true), (2, 1, true)]);
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                assert_eq!(ids, original.event_ids, "named by the originals' ids");
                assert_eq!(stream_version, 1);
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }

        // Part stored, part new: the new part is written, the rest points at the original.
        let mixed = prepared(
            append("a", ExpectedVersion::Exact(1), &[2, 3])
                .request
                .with_content_dedup(true),
        );
        let decision = plan(&mixed, &known);
        assert_writes(&decision, &[(2, 1, true), (3, 2, false)], 2);

        // Without content dedup, the same content is simply written again.
        let decision = plan(&append("a", ExpectedVersion::Any, &[1]), &known);
        assert_writes(&decision, &[(3, 2, false)], 2);
    }

    #[test]
    fn content_dedup_stores_identical_events_of_one_append_once() {
        let request = append("a", ExpectedVersion::NoStream, &[1, 1, 2, 1])
            .request
            .with_content_dedup(true);
        let dedup = prepared(request);
        let decision = plan(&dedup, &Known::default());
        assert_writes(
            &decision,
            &[(1, 0, false), (1, 0, true), (2, 1, false), (1, 0, true)],
            1,
        );
        let Decision::Write { events, .. } = &decision else {
            unreachable!("checked above");
        };
        assert_eq!(
            events[1].event_id, dedup.event_ids[0],
            "named by the first one"
        );
        assert_eq!(events[3].event_id, dedup.event_ids[0]);

        let plain = prepared(AppendRequest {
            content_dedup: false,
            ..dedup.request.clone()
        });
        let decision = plan(&plain, &Known::default());
        assert_writes(
            &decision,
            &[(1, 0, false), (2, 1, false), (3, 2, false), (4, 3, false)],
            3,
        );
    }

    #[test]
    fn a_batch_plans_each_request_against_the_ones_before_it() {
        let mut known = Known {
            head: 100,
            ..Known::default()
        };
        let opened = append("a", ExpectedVersion::NoStream, &[1]);
        let decisions = [
            plan_and_record(&opened, &mut known),
            // Sees the version the first request gives the stream.
            plan_and_record(&append("a", ExpectedVersion::Exact(0), &[2, 3]), &mut known),
            // Fails alone, and takes no position.
            plan_and_record(&append("a", ExpectedVersion::NoStream, &[4]), &mut known),
            plan_and_record(&append("b", ExpectedVersion::NoStream, &[5]), &mut known),
            // A retry of the first in the same batch.
            plan_and_record(&retry(&opened, ExpectedVersion::NoStream), &mut known),
            // Its id again, with other content.
            plan_and_record(
                &prepared(AppendRequest::new(
                    "b",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Other", json!({})).with_id(opened.event_ids[0])],
                )),
                &mut known,
            ),
        ];
        assert_writes(&decisions[0], &[(101, 0, false)], 0);
        assert_writes(&decisions[1], &[(102, 1, false), (103, 2, false)], 2);
        assert_eq!(
            decisions[2],
            Decision::WrongExpectedVersion { actual: Some(2) }
        );
        assert_writes(&decisions[3], &[(104, 0, false)], 0);
        assert!(
            matches!(&decisions[4], Decision::Duplicate { events, stream_version: 2 }
                if written(events) == [(101, 0, true)]),
            "{:?}",
            decisions[4]
        );
        assert_eq!(
            decisions[5],
            Decision::IdTaken {
                event_id: opened.event_ids[0],
                existing_position: 101,
            }
        );
        assert_eq!(known.head, 104);
        assert_eq!(known.stream_heads.get("a"), Some(&2));
        assert_eq!(known.stream_heads.get("b"), Some(&0));
    }

    #[test]
    fn a_decision_answers_as_the_store_reports_it() {
        let request = AppendRequest::new("a", ExpectedVersion::Exact(3), Vec::new());
        assert!(matches!(
            Decision::WrongExpectedVersion { actual: None }.into_answer(&request),
            Err(StoreError::WrongExpectedVersion {
                ref stream_id,
                expected: ExpectedVersion::Exact(3),
                actual: None,
            }) if stream_id == "a"
        ));
        let id = Uuid::new_v4();
        for refused in [
            Decision::IdTaken {
                event_id: id,
                existing_position: 7,
            },
            Decision::IdsReused {
                event_id: id,
                existing_position: 7,
            },
        ] {
            assert!(matches!(
                refused.into_answer(&request),
                Err(StoreError::EventIdConflict { event_id, existing_position: 7 }) if event_id == id
            ));
        }
        let events = vec![AppendedEvent {
            event_id: id,
            position: 7,
            stream_version: 3,
            duplicate: true,
        }];
        let outcome = Decision::Duplicate {
            events: events.clone(),
            stream_version: 3,
        }
        .into_answer(&request)
        .expect("a duplicate succeeds");
        assert_eq!(outcome.stream_id, "a");
        assert_eq!(outcome.events, events);
        assert_eq!(outcome.stream_version, 3);
    }
}
