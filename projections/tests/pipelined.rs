//! The lane of a pipelined handler ([`Pipeline`]) against a real PostgreSQL, with a
//! handler whose acknowledgements the test resolves by hand: several pages are in flight at
//! once; the checkpoint never passes a page that is not acknowledged, even when the pages
//! after it are (page 1 fails after pages 2 and 3 were acknowledged: the lane sends again
//! from page 1, and every event ends up acknowledged, in order); and a page that fails for
//! good is handled event by event, so only its bad event is parked.

use async_trait::async_trait;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidemark_projections::{
    Acknowledgement, EngineConfig, EventSelector, FailurePolicy, Grouping, Handler, HandlerDedup,
    Pipeline, ProjectionEngine, ProjectionError, Registry,
};
use tidemark_store::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreConfig,
};
use tidemark_testkit::{read_all, wait_until, TestDatabase};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(60);
const NAME: &str = "pipelined";
const PAGE: usize = 10;

/// Resolves one page's acknowledgement.
type AckSender = oneshot::Sender<Result<(), ProjectionError>>;

/// What the handler saw, shared with the test.
#[derive(Default)]
struct Seen {
    /// The positions of each page sent through a pipeline, in the order sent.
    sent: Mutex<Vec<Vec<Position>>>,
    /// Acknowledgements the test has not resolved yet, by send number.
    pending: Mutex<Vec<Option<AckSender>>>,
    /// Resolve every acknowledgement `Ok` at once (after the scripted failure).
    auto_ok: AtomicBool,
    /// Positions acknowledged `Ok` through a pipeline, in the order the pages were sent.
    acknowledged: Mutex<Vec<Position>>,
    /// Positions handled one by one (`handle`: the lane's fallback).
    handled: Mutex<Vec<Position>>,
    /// `handle` fails for this position, always.
    poison: Mutex<Option<Position>>,
    /// The acknowledgement of the first page starting at this position fails for good.
    fail_page_at: Mutex<Option<Position>>,
}

impl Seen {
    fn sent(&self) -> Vec<Vec<Position>> {
        self.sent.lock().unwrap().clone()
    }

    fn resolve(&self, send: usize, result: Result<(), ProjectionError>) {
        let ack = self.pending.lock().unwrap()[send]
            .take()
            .expect("an acknowledgement not resolved yet");
        let _ = ack.send(result);
    }
}

struct Scripted(Arc<Seen>);

#[async_trait]
impl Handler for Scripted {
    fn name(&self) -> &str {
        NAME
    }

    fn selector(&self) -> EventSelector {
        EventSelector::all()
    }

    fn grouping(&self) -> Grouping {
        Grouping::LogOrder
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::ParkAndContinue
    }

    fn dedup(&self) -> HandlerDedup {
        HandlerDedup::AtDestination
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        if *self.0.poison.lock().unwrap() == Some(event.position) {
            return Err(ProjectionError::failed(std::io::Error::other("poison")));
        }
        self.0.handled.lock().unwrap().push(event.position);
        Ok(())
    }

    fn pipeline(&self) -> Option<Box<dyn Pipeline>> {
        Some(Box::new(ScriptedPipeline(self.0.clone())))
    }
}

struct ScriptedPipeline(Arc<Seen>);

#[async_trait]
impl Pipeline for ScriptedPipeline {
    async fn send(&mut self, events: &[RecordedEvent]) -> Result<Acknowledgement, ProjectionError> {
        let seen = self.0.clone();
        let positions: Vec<Position> = events.iter().map(|e| e.position).collect();
        seen.sent.lock().unwrap().push(positions.clone());
        let fails = {
            let mut fail = seen.fail_page_at.lock().unwrap();
            let fails = *fail == positions.first().copied();
            if fails {
                *fail = None;
            }
            fails
        };
        let (ack, acked) = oneshot::channel();
        if fails {
            let _ = ack.send(Err(ProjectionError::failed(std::io::Error::other(
                "refused for good",
            ))));
            seen.pending.lock().unwrap().push(None);
        } else if seen.auto_ok.load(Ordering::SeqCst) {
            let _ = ack.send(Ok(()));
            seen.pending.lock().unwrap().push(None);
        } else {
            seen.pending.lock().unwrap().push(Some(ack));
        }
        Ok(Box::pin(async move {
            acked.await.unwrap_or_else(|_| {
                Err(ProjectionError::transient(std::io::Error::other(
                    "the test dropped the acknowledgement",
                )))
            })?;
            seen.acknowledged.lock().unwrap().extend(positions);
            Ok(())
        }))
    }
}

async fn setup(events: usize) -> (TestDatabase, EventStore, Vec<Position>) {
    let db = TestDatabase::create().await;
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            migrations: tidemark_projections::migrations(),
            poll_interval: Duration::from_millis(50),
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens on a fresh test database");
    for i in 0..events {
        store
            .append(AppendRequest::new(
                format!("account-{}", i % 7),
                ExpectedVersion::Any,
                vec![NewEvent::new("MoneyDeposited", json!({ "n": i }))],
            ))
            .await
            .expect("append");
    }
    let log = read_all(&store).await.iter().map(|e| e.position).collect();
    (db, store, log)
}

fn engine(store: &EventStore, seen: &Arc<Seen>) -> ProjectionEngine {
    ProjectionEngine::new(
        store.clone(),
        Registry::new().handler(Scripted(seen.clone())),
        EngineConfig {
            batch_size: PAGE,
            pages_in_flight: 3,
            max_attempts: 2,
            retry_base: Duration::from_millis(5),
            retry_max: Duration::from_millis(50),
            ..EngineConfig::default()
        },
    )
}

async fn caught_up(engine: &ProjectionEngine, head: Position) {
    wait_until(
        "the lane's checkpoint reaches the head",
        DEADLINE,
        || async { engine.lowest_checkpoint(NAME).await.unwrap_or(0) >= head },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_page_is_never_overtaken_by_the_acknowledged_pages_sent_after_it() {
    let (_db, store, log) = setup(3 * PAGE).await;
    let seen = Arc::new(Seen::default());
    let engine = engine(&store, &seen);
    engine.start().await.expect("engine");

    // Three pages in flight before any is acknowledged.
    wait_until("three pages are sent", DEADLINE, || async {
        seen.sent().len() == 3
    })
    .await;
    let pages = seen.sent();
    assert_eq!(pages.concat(), log, "the pages are the log, in order");

    // Pages 2 and 3 are acknowledged, then page 1 fails.
    seen.auto_ok.store(true, Ordering::SeqCst);
    seen.resolve(2, Ok(()));
    seen.resolve(1, Ok(()));
    seen.resolve(
        0,
        Err(ProjectionError::transient(std::io::Error::other(
            "page 1 not acknowledged",
        ))),
    );
    caught_up(&engine, *log.last().unwrap()).await;

    // The lane committed nothing past page 1's start: it sent again from page 1.
    let sent = seen.sent();
    assert!(sent.len() >= 6, "the pages were sent again: {sent:?}");
    assert_eq!(
        sent[3].first(),
        log.first(),
        "after page 1 failed, the lane resumed from a checkpoint past it: {sent:?}"
    );
    assert_eq!(sent[3..6].concat(), log, "sent again in order: {sent:?}");
    // Everything acknowledged in the end, in log order after the failure.
    let acknowledged = seen.acknowledged.lock().unwrap().clone();
    let after_failure = &acknowledged[acknowledged.len() - log.len()..];
    assert_eq!(after_failure, log.as_slice());
    assert_eq!(
        engine.lowest_checkpoint(NAME).await.expect("checkpoint"),
        *log.last().unwrap()
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_fails_for_good_is_handled_one_by_one_and_only_its_bad_event_is_parked() {
    let (_db, store, log) = setup(3 * PAGE).await;
    let seen = Arc::new(Seen::default());
    seen.auto_ok.store(true, Ordering::SeqCst);
    let poison = log[PAGE + 4];
    *seen.poison.lock().unwrap() = Some(poison);
    *seen.fail_page_at.lock().unwrap() = Some(log[PAGE]);
    let engine = engine(&store, &seen);
    engine.start().await.expect("engine");
    caught_up(&engine, *log.last().unwrap()).await;

    let parked: Vec<Position> = engine
        .dead_letters(Some(NAME), false)
        .await
        .expect("dead letters")
        .iter()
        .map(|d| d.position)
        .collect();
    assert_eq!(parked, vec![poison], "only the bad event is parked");
    // Every other event was acknowledged through the pipeline or handled in the fallback.
    let done: BTreeSet<Position> = seen
        .acknowledged
        .lock()
        .unwrap()
        .iter()
        .chain(seen.handled.lock().unwrap().iter())
        .copied()
        .collect();
    let expected: BTreeSet<Position> = log.iter().copied().filter(|p| *p != poison).collect();
    assert_eq!(done, expected);
    // The failed page was handled one by one (the fallback), not acknowledged.
    let handled = seen.handled.lock().unwrap().clone();
    assert!(
        log[PAGE..2 * PAGE]
            .iter()
            .filter(|p| **p != poison)
            .all(|p| handled.contains(p)),
        "the failed page was handled one by one: {handled:?}"
    );
    engine.shutdown().await;
}
