//! Honest outcomes when the database connection dies around COMMIT. A proxy between the
//! store and PostgreSQL ([`FaultProxy`]) breaks append transactions before their writes,
//! instead of their COMMIT, and after their COMMIT (swallowing the answer). Every failed
//! append must say either "nothing was written" (a retryable error, and indeed nothing of it
//! is in the log) or `OutcomeUnknown`; retried with the same ids until it succeeds, each
//! event is stored exactly once, and a retry of an append that did commit reports the
//! originals. Commands with a command id are retried the same way and apply once.

use crate::common;

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tidemark_store::aggregate::{Aggregate, CommandBus, CommandError, CommandOptions};
use tidemark_store::hashing::command_event_id;
use tidemark_store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreConfig, StoreError,
};
use tidemark_testkit::proxy::{Cut, FaultProxy};
use tidemark_testkit::TestDatabase;
use uuid::Uuid;

/// Every kind of cut, with untouched transactions between them so work goes on.
const PLAN: &[Cut] = &[
    Cut::AfterCommit,
    Cut::None,
    Cut::BeforeWrites,
    Cut::None,
    Cut::BeforeCommit,
    Cut::None,
];

/// Attempts per request before the test gives up (each cut costs one attempt; two cuts in a
/// row need two of the plan's six slots, so far fewer are ever used).
const MAX_ATTEMPTS: usize = 30;

/// A store whose connections go through `proxy`, migrated before the proxy is armed.
async fn store_through(proxy: &FaultProxy) -> EventStore {
    EventStore::open(proxy.config(), StoreConfig::default())
        .await
        .expect("the store opens through the proxy")
}

/// How many times each id is in the log, read past the proxy.
async fn stored_counts(raw: &tokio_postgres::Client, ids: &[Uuid]) -> Vec<i64> {
    let mut counts = Vec::with_capacity(ids.len());
    for id in ids {
        let row = raw
            .query_one("SELECT count(*) FROM events WHERE event_id = $1", &[id])
            .await
            .expect("counting an event id");
        counts.push(row.get(0));
    }
    counts
}

/// What happened to one append across its attempts.
#[derive(Debug, Default)]
struct History {
    unknown: usize,
    nothing_written: usize,
    /// "Nothing written" answers checked against the log (those before any unknown one).
    verified_nothing_written: usize,
    final_outcome: Option<AppendOutcome>,
}

/// One writer's appends, each retried with the same ids until it succeeds.
async fn run_writer(
    store: EventStore,
    raw: Arc<tokio_postgres::Client>,
    writer: usize,
) -> Vec<([Uuid; 2], History)> {
    let mut histories = Vec::new();
    for n in 0..12 {
        // `Any` with client ids: without the ids, a second write of a committed
        // append would be a second copy, so the ids are what makes it safe.
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let events = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                NewEvent::new("Tick", json!({ "writer": writer, "n": n, "i": i })).with_id(*id)
            })
            .collect::<Vec<_>>();
        let request = AppendRequest::new(format!("writer-{writer}"), ExpectedVersion::Any, events);
        let mut history = History::default();
        for _ in 0..MAX_ATTEMPTS {
            match store.append(request.clone()).await {
                Ok(outcome) => {
                    history.final_outcome = Some(outcome);
                    break;
                }
                Err(StoreError::OutcomeUnknown { .. }) => history.unknown += 1,
                Err(error) if error.is_retryable() => {
                    // "Nothing written" must be true: a rolled-back transaction
                    // is invisible now and can never commit later. (After an
                    // unknown outcome, the earlier attempt may have written it.)
                    if history.unknown == 0 {
                        history.verified_nothing_written += 1;
                        assert_eq!(
                            stored_counts(&raw, &ids).await,
                            vec![0, 0],
                            "an append answered '{error}' was written"
                        );
                    }
                    history.nothing_written += 1;
                }
                Err(error) => {
                    panic!("an append failed with a non-retryable error: {error:?}")
                }
            }
        }
        assert!(
            history.final_outcome.is_some(),
            "an append did not succeed in {MAX_ATTEMPTS} attempts: {history:?}"
        );
        histories.push((ids, history));
    }
    histories
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_cut_around_commit_are_unknown_or_nothing_written_and_retries_store_one_copy() {
    let db = TestDatabase::create().await;
    let proxy = FaultProxy::start(&db.pg_config()).await;
    let store = store_through(&proxy).await;
    let raw = Arc::new(common::connect(&db).await);
    proxy.arm(PLAN);

    // First one writer alone: each attempt is then exactly one transaction, so the plan's
    // cuts fall in a known order and every kind of outcome is certain to occur (an append cut
    // after COMMIT, then retried as a duplicate; one refused before its writes; one cut
    // instead of its COMMIT, then written by its retry). Then three writers at once, whose
    // appends share batches, for the same rules under concurrency.
    let mut histories = run_writer(store.clone(), raw.clone(), 0).await;
    let writers: Vec<_> = (1..4)
        .map(|writer| tokio::spawn(run_writer(store.clone(), raw.clone(), writer)))
        .collect();
    for writer in writers {
        histories.extend(
            common::within_deadline("a writer finishes", writer)
                .await
                .unwrap(),
        );
    }
    proxy.disarm();

    let counts = proxy.counts();
    assert!(
        counts.after_commit > 0 && counts.before_commit > 0 && counts.before_writes > 0,
        "every kind of cut happened: {counts:?}"
    );
    let all_ids: Vec<Uuid> = histories.iter().flat_map(|(ids, _)| ids.to_vec()).collect();
    assert_eq!(
        stored_counts(&raw, &all_ids).await,
        vec![1; all_ids.len()],
        "every event is stored exactly once"
    );
    let unknown_then_duplicate = histories
        .iter()
        .filter(|(_, h)| h.unknown > 0)
        .filter(|(_, h)| h.final_outcome.as_ref().is_some_and(|o| o.all_duplicates()))
        .count();
    let unknown_then_written = histories
        .iter()
        .filter(|(_, h)| h.unknown > 0)
        .filter(|(_, h)| {
            h.final_outcome
                .as_ref()
                .is_some_and(|o| !o.all_duplicates())
        })
        .count();
    let nothing_written = histories
        .iter()
        .filter(|(_, h)| h.verified_nothing_written > 0)
        .count();
    // A cut after COMMIT is an unknown outcome that was written (its retry is a duplicate);
    // one instead of COMMIT is an unknown outcome that was not (its retry writes).
    assert!(
        unknown_then_duplicate > 0,
        "no append committed with its answer lost: {counts:?}"
    );
    assert!(
        unknown_then_written > 0,
        "no append lost during COMMIT was rolled back: {counts:?}"
    );
    assert!(
        nothing_written > 0,
        "no append was refused before its COMMIT: {counts:?}"
    );
    // The log stays dense: nothing half-written, no holes from rolled-back batches.
    common::assert_dense_from_one(&common::read_all(&store).await);
}

// ------------------------------------------------------------------ commands

#[derive(Debug, Default)]
struct Account {
    balance: i64,
}

#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: i64 },
}

#[derive(Debug)]
enum AccountCommand {
    Deposit { amount: i64 },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Never;
    const CATEGORY: &'static str = "account";

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Never> {
        match command {
            AccountCommand::Deposit { amount } => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_retried_with_their_command_id_after_a_cut_apply_exactly_once() {
    let db = TestDatabase::create().await;
    let proxy = FaultProxy::start(&db.pg_config()).await;
    let store = store_through(&proxy).await;
    let raw = Arc::new(common::connect(&db).await);
    let stream = Account::stream_id("1");
    proxy.arm(PLAN);

    let clients: Vec<_> = (0..4)
        .map(|client| {
            let bus = CommandBus::new(store.clone());
            let raw = raw.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                let mut deposits = Vec::new();
                let mut duplicates = 0;
                for n in 0..10 {
                    let amount = client * 1000 + n + 1;
                    let command_id = Uuid::new_v4();
                    let first_event = command_event_id(command_id, &stream, 0);
                    let mut unknown = false;
                    let mut done = false;
                    for _ in 0..MAX_ATTEMPTS {
                        let options = CommandOptions::new().command_id(Some(command_id));
                        match bus
                            .execute_with::<Account>(
                                "1",
                                &AccountCommand::Deposit { amount },
                                options,
                            )
                            .await
                        {
                            Ok(outcome) => {
                                assert!(!unknown || outcome.append.is_some(), "{outcome:?}");
                                duplicates += usize::from(outcome.duplicate);
                                assert!(
                                    !outcome.duplicate || unknown,
                                    "only a command whose first answer was lost is a duplicate"
                                );
                                done = true;
                                break;
                            }
                            Err(CommandError::Store(StoreError::OutcomeUnknown { .. })) => {
                                unknown = true
                            }
                            Err(CommandError::Store(error))
                                if error.is_retryable()
                                    || matches!(error, StoreError::WrongExpectedVersion { .. }) =>
                            {
                                if !unknown {
                                    assert_eq!(
                                        stored_counts(&raw, &[first_event]).await,
                                        vec![0],
                                        "a command answered '{error}' was written"
                                    );
                                }
                            }
                            Err(error) => panic!("a deposit failed for good: {error:?}"),
                        }
                    }
                    assert!(done, "a deposit did not succeed in {MAX_ATTEMPTS} attempts");
                    deposits.push((command_id, amount));
                }
                (deposits, duplicates)
            })
        })
        .collect();
    let mut deposits = Vec::new();
    let mut duplicates = 0;
    for client in clients {
        let (mine, dups) = common::within_deadline("a client finishes", client)
            .await
            .unwrap();
        deposits.extend(mine);
        duplicates += dups;
    }
    proxy.disarm();

    assert!(
        proxy.counts().after_commit > 0,
        "no command committed with its answer lost: {:?}",
        proxy.counts()
    );
    assert!(
        duplicates > 0,
        "no retry found its command already applied: {:?}",
        proxy.counts()
    );
    let ids: Vec<Uuid> = deposits
        .iter()
        .map(|(command_id, _)| command_event_id(*command_id, &stream, 0))
        .collect();
    assert_eq!(
        stored_counts(&raw, &ids).await,
        vec![1; ids.len()],
        "each command's event is stored exactly once"
    );
    let (account, _) = CommandBus::new(store.clone())
        .load::<Account>("1")
        .await
        .expect("the account loads");
    assert_eq!(
        account.balance,
        deposits.iter().map(|(_, amount)| amount).sum::<i64>(),
        "the balance is the sum of the deposits, each once"
    );
}
