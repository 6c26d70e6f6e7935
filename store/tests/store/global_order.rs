//! Global order without skipped events (docs/design.md §3): many writers on several connections
//! and two store instances append while a reader tails the log by position; the reader sees
//! every acknowledged event exactly once, positions dense and increasing.
//!
//! The same tailing check is run against a deliberately broken writer (positions from a plain
//! SEQUENCE, committed in separate transactions in whatever order they finish) to prove the
//! check notices skipped events: a checker that cannot fail proves nothing.

use crate::common;

use common::{open_default, within_deadline};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark_store::{EventStore, ExpectedVersion, LogFilter, NewEvent, Position};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

/// Events per read of the tailing reader: small, so it reads often while writers run.
const TAIL_PAGE: usize = 64;

/// Something the tailing reader saw that breaks "every committed event exactly once, in
/// order".
#[derive(Debug, Clone, PartialEq, Eq)]
enum Violation {
    /// The reader was delivered `got` right after `previous`: a hole or a step back.
    NotNextPosition { previous: Position, got: Position },
    /// The same event was delivered twice.
    DeliveredTwice { event_id: Uuid, position: Position },
    /// An acknowledged event the reader never saw: it committed after the reader had
    /// already passed its position.
    Skipped { event_id: Uuid, position: Position },
    /// The reader saw an event nobody was told was written.
    NotAcknowledged { event_id: Uuid, position: Position },
    /// The reader saw another event at a position than the writer was told.
    WrongPosition {
        event_id: Uuid,
        acknowledged: Position,
        seen: Position,
    },
}

/// Tails the log as a consumer does: read a page after the last position seen, move the
/// checkpoint to the page's last position, repeat. Stops at the first empty read that
/// started after `writers_done` was set (every acknowledged append had committed by then).
/// Returns `(position, event id)` in delivery order.
async fn tail_log(store: EventStore, writers_done: Arc<AtomicBool>) -> Vec<(Position, Uuid)> {
    let mut seen = Vec::new();
    let mut checkpoint: Position = 0;
    loop {
        let done_before_read = writers_done.load(Ordering::SeqCst);
        let page = store
            .read_log(checkpoint, &LogFilter::all(), TAIL_PAGE)
            .await
            .expect("the tailing reader reads the log");
        if page.is_empty() {
            if done_before_read {
                return seen;
            }
            // Caught up: poll again shortly (a real consumer would wait for a wake-up; the
            // naive writers of the broken variant send none, and the check must be the same).
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        for event in &page {
            seen.push((event.position, event.event_id));
        }
        checkpoint = page.last().map_or(checkpoint, |e| e.position);
    }
}

/// The one checker both variants use: compares what the tailing reader saw (in delivery
/// order) with what the writers were told they wrote (`event id -> position`).
fn check_tail(
    seen: &[(Position, Uuid)],
    acknowledged: &BTreeMap<Uuid, Position>,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut previous: Position = 0;
    let mut delivered = HashSet::new();
    for &(position, event_id) in seen {
        if position != previous + 1 {
            violations.push(Violation::NotNextPosition {
                previous,
                got: position,
            });
        }
        previous = position;
        if !delivered.insert(event_id) {
            violations.push(Violation::DeliveredTwice { event_id, position });
        }
        match acknowledged.get(&event_id) {
            None => violations.push(Violation::NotAcknowledged { event_id, position }),
            Some(&acked) if acked != position => violations.push(Violation::WrongPosition {
                event_id,
                acknowledged: acked,
                seen: position,
            }),
            Some(_) => {}
        }
    }
    for (&event_id, &position) in acknowledged {
        if !delivered.contains(&event_id) {
            violations.push(Violation::Skipped { event_id, position });
        }
    }
    violations
}

/// Writers through the store; half on each of two store instances.
const STORE_WRITERS: usize = 10;
const APPENDS_PER_STORE_WRITER: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_event_once_in_order_while_writers_on_two_stores_append() {
    let db = TestDatabase::create().await;
    // Two instances on one database: two pools and two append writers, as two processes.
    let stores = [open_default(&db).await, open_default(&db).await];
    let writers_done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(tail_log(stores[0].clone(), writers_done.clone()));

    let mut writers = Vec::new();
    for writer in 0..STORE_WRITERS {
        let store = stores[writer % 2].clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(writer as u64);
            let mut acknowledged = Vec::new();
            for n in 0..APPENDS_PER_STORE_WRITER {
                let stream = format!("order-{}", rng.random_range(0..32));
                let events = (0..rng.random_range(1..=3))
                    .map(|k| {
                        NewEvent::new(
                            "Noted",
                            serde_json::json!({ "writer": writer, "n": n, "k": k }),
                        )
                    })
                    .collect();
                let outcome = store
                    .append(common::request(&stream, ExpectedVersion::Any, events))
                    .await
                    .expect("an Any append succeeds");
                acknowledged.extend(outcome.events.iter().map(|e| (e.event_id, e.position)));
            }
            acknowledged
        }));
    }
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        for (event_id, position) in writer.await.expect("a writer task panicked") {
            assert!(
                acknowledged.insert(event_id, position).is_none(),
                "each event is acknowledged once"
            );
        }
    }
    writers_done.store(true, Ordering::SeqCst);
    let seen = within_deadline("the tailing reader drains the log", reader)
        .await
        .expect("the reader task panicked");

    let violations = check_tail(&seen, &acknowledged);
    assert!(
        violations.is_empty(),
        "the reader must see every acknowledged event once, in dense order; found {} \
         violations, first ones: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    assert!(
        acknowledged.len() >= STORE_WRITERS * APPENDS_PER_STORE_WRITER,
        "every append wrote at least one event"
    );
    assert_eq!(seen.len(), acknowledged.len());
}

/// Writers of the broken variant, each on its own raw connection.
const NAIVE_WRITERS: usize = 8;
const INSERTS_PER_NAIVE_WRITER: usize = 150;

/// Writes one event the way Tidemark must *not*: a position from a sequence, then (after a
/// random hold, as if doing other work) the insert and the commit. Transactions therefore
/// commit out of position order. Returns the event's id and position once committed.
async fn naive_insert(
    client: &mut tokio_postgres::Client,
    writer: usize,
    n: usize,
    hold: Duration,
) -> (Uuid, Position) {
    let tx = client
        .transaction()
        .await
        .expect("starting a naive transaction");
    let position: Position = tx
        .query_one("SELECT nextval('naive_positions')", &[])
        .await
        .expect("taking a position from the sequence")
        .get(0);
    tokio::time::sleep(hold).await;
    let event_id = Uuid::new_v4();
    let stream_id = format!("naive-{writer}-{n}");
    let content_hash = vec![0u8; 32];
    tx.execute(
        "INSERT INTO events (position, stream_id, stream_version, partition, event_id, \
                             event_type, payload, content_hash) \
         VALUES ($1, $2, 0, 0, $3, 'Naive', '{}'::jsonb, $4)",
        &[&position, &stream_id, &event_id, &content_hash],
    )
    .await
    .expect("inserting a naive event");
    tx.commit().await.expect("committing a naive event");
    (event_id, position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tailing_check_detects_skipped_events_when_positions_come_from_a_plain_sequence() {
    let db = TestDatabase::create().await;
    // The store creates the schema and serves the reader; only the naive writers write.
    let store = open_default(&db).await;
    common::connect(&db)
        .await
        .batch_execute("CREATE SEQUENCE naive_positions")
        .await
        .expect("creating the naive writers' sequence");

    let writers_done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(tail_log(store.clone(), writers_done.clone()));
    let mut writers = Vec::new();
    for writer in 0..NAIVE_WRITERS {
        let mut client = common::connect(&db).await;
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1000 + writer as u64);
            let mut acknowledged = Vec::new();
            for n in 0..INSERTS_PER_NAIVE_WRITER {
                let hold = Duration::from_micros(rng.random_range(0..2000));
                acknowledged.push(naive_insert(&mut client, writer, n, hold).await);
            }
            acknowledged
        }));
    }
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("a naive writer task panicked"));
    }
    writers_done.store(true, Ordering::SeqCst);
    let seen = within_deadline("the tailing reader drains the log", reader)
        .await
        .expect("the reader task panicked");

    let violations = check_tail(&seen, &acknowledged);
    let skipped = violations
        .iter()
        .filter(|v| matches!(v, Violation::Skipped { .. }))
        .count();
    eprintln!(
        "naive writers: {} events committed, the reader saw {}, {} skipped, {} violations",
        acknowledged.len(),
        seen.len(),
        skipped,
        violations.len()
    );
    assert!(
        skipped > 0,
        "with positions from a sequence, transactions commit out of order and a tailing \
         reader passes positions whose rows commit later; the check must report such skipped \
         events, but it found none (violations: {violations:?})"
    );
    // All of them are in the table nonetheless: the reader, not the writer, lost them.
    let stored = common::read_all(&store).await;
    assert_eq!(stored.len(), acknowledged.len());
}
