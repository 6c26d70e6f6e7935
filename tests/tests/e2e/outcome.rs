//! Honest answers when the server's database connection dies around COMMIT, end to end: the
//! bank server runs against PostgreSQL through a proxy that breaks append transactions
//! before their writes, instead of their COMMIT, and after their COMMIT (swallowing the
//! answer). Several clients deposit (with a `commandId`) and append raw events (with event
//! ids). Every answer is a success, a "nothing written" `OVERLOADED` (or, for a command that
//! kept colliding with the others, `WRONG_EXPECTED_VERSION`; then indeed nothing is in the
//! log), or `OUTCOME_UNKNOWN` — never `INTERNAL`. Retried with the same ids until
//! they succeed, each event and each deposit is in the log exactly once, and the balance is
//! the sum of the deposits. And without faults: a command sent again with its `commandId`
//! answers with its first result and writes nothing more.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidemark_api::DatabaseConfig;
use tidemark_store::hashing::command_event_id;
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

/// Attempts per request before the test gives up (far more than the plan ever needs).
const MAX_ATTEMPTS: usize = 30;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 8;

/// A connection to the test database that bypasses the proxy.
async fn direct(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = db
        .pg_config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("a direct connection to the test database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// How many times each id is in the log.
async fn stored_counts(raw: &tokio_postgres::Client, ids: &[Uuid]) -> Vec<i64> {
    let row = raw
        .query_one(
            "SELECT array_agg((SELECT count(*) FROM events e WHERE e.event_id = i) ORDER BY n)
               FROM unnest($1::uuid[]) WITH ORDINALITY AS t(i, n)",
            &[&ids],
        )
        .await
        .expect("counting event ids");
    row.get(0)
}

/// Answers seen, by code (`ok` for a success).
type Codes = BTreeMap<String, usize>;

/// Sends `request` until it succeeds, as a careful client does: the same ids on
/// `OUTCOME_UNKNOWN`, `OVERLOADED` and (a command) `WRONG_EXPECTED_VERSION`, nothing else
/// retried. While no answer was `OUTCOME_UNKNOWN`, the others must have written nothing. Returns the
/// successful `data` and whether an answer was `OUTCOME_UNKNOWN`.
async fn until_success(
    app: &TestApp,
    raw: &tokio_postgres::Client,
    request: &Value,
    ids: &[Uuid],
    codes: &mut Codes,
) -> (Value, bool) {
    let mut unknown = false;
    for _ in 0..MAX_ATTEMPTS {
        let (_, body) = app.post_raw(request.to_string(), Some(APPEND_KEY)).await;
        let code = error_code(&body).map(str::to_string);
        *codes
            .entry(code.clone().unwrap_or_else(|| "ok".into()))
            .or_default() += 1;
        match code.as_deref() {
            None => return (body["data"].clone(), unknown),
            Some("OUTCOME_UNKNOWN") => {
                let message = body["errors"][0]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("may or may not have been written"),
                    "{body}"
                );
                unknown = true;
            }
            // A command that kept colliding with the other clients' deposits: it wrote
            // nothing, and sending it again reloads the account.
            Some("OVERLOADED" | "WRONG_EXPECTED_VERSION") => {
                if !unknown {
                    assert_eq!(
                        stored_counts(raw, ids).await,
                        vec![0; ids.len()],
                        "an answer said nothing was written, but it was: {body}"
                    );
                }
            }
            Some(other) => panic!("a {other} answer to {request}: {body}"),
        }
    }
    panic!("{request} did not succeed in {MAX_ATTEMPTS} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_around_a_broken_commit_are_honest_and_retries_with_the_same_ids_apply_once() {
    let db = Arc::new(TestDatabase::create().await);
    let proxy = FaultProxy::start(&db.pg_config()).await;
    let url = proxy.url();
    let app = Arc::new(
        spawn_app_on(
            db.clone(),
            tidemark_example_bank::app(Arc::new(tidemark_example_bank::LogAlerts)),
            move |config| config.database = DatabaseConfig::url(url),
        )
        .await,
    );
    let raw = Arc::new(direct(&db).await);
    app.graphql_data(
        "mutation { openAccount(accountId: \"1\", owner: \"ann\") { position } }",
        json!({}),
        Some(APPEND_KEY),
    )
    .await;

    // Deposits, each with a commandId.
    proxy.arm(PLAN);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (app, raw) = (app.clone(), raw.clone());
            tokio::spawn(async move {
                let mut codes = Codes::new();
                let mut deposits = Vec::new();
                let mut duplicates = 0;
                for n in 0..PER_CLIENT {
                    let amount = (client * 1000 + n + 1) as i64;
                    let command_id = Uuid::new_v4();
                    let event_id = command_event_id(command_id, "account-1", 0);
                    let request = json!({
                        "query": "mutation($c: UUID!, $amount: Int!) {
                                    deposit(accountId: \"1\", amount: $amount, commandId: $c) {
                                      position changed duplicate } }",
                        "variables": { "c": command_id, "amount": amount },
                    });
                    let (data, unknown) =
                        until_success(&app, &raw, &request, &[event_id], &mut codes).await;
                    assert_eq!(data["deposit"]["changed"], true, "{data}");
                    if data["deposit"]["duplicate"] == true {
                        assert!(unknown, "only a retry after a lost answer is a duplicate");
                        duplicates += 1;
                    }
                    deposits.push((event_id, amount));
                }
                (codes, deposits, duplicates)
            })
        })
        .collect();
    let mut deposit_codes = Codes::new();
    let mut deposits = Vec::new();
    let mut duplicate_deposits = 0;
    for client in clients {
        let (codes, mine, duplicates) = client.await.expect("a depositing client panicked");
        for (code, count) in codes {
            *deposit_codes.entry(code).or_default() += count;
        }
        deposits.extend(mine);
        duplicate_deposits += duplicates;
    }
    let deposit_cuts = proxy.counts();

    // Raw appends, each event with an id.
    proxy.arm(PLAN);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (app, raw) = (app.clone(), raw.clone());
            tokio::spawn(async move {
                let mut codes = Codes::new();
                let mut ids = Vec::new();
                let mut duplicates = 0;
                for n in 0..PER_CLIENT {
                    let mine = [Uuid::new_v4(), Uuid::new_v4()];
                    let request = json!({
                        "query": "mutation($s: String!, $e: [EventInput!]!) {
                                    appendEvents(streamId: $s, events: $e) { duplicates } }",
                        "variables": {
                            "s": format!("raw-{client}"),
                            "e": mine.iter().map(|id| json!({
                                "eventId": id, "type": "Tick", "data": { "n": n },
                            })).collect::<Vec<_>>(),
                        },
                    });
                    let (data, unknown) =
                        until_success(&app, &raw, &request, &mine, &mut codes).await;
                    if data["appendEvents"]["duplicates"] != 0 {
                        assert!(unknown, "only a retry after a lost answer is a duplicate");
                        duplicates += 1;
                    }
                    ids.extend(mine);
                }
                (codes, ids, duplicates)
            })
        })
        .collect();
    let mut append_codes = Codes::new();
    let mut raw_ids = Vec::new();
    let mut duplicate_appends = 0;
    for client in clients {
        let (codes, mine, duplicates) = client.await.expect("an appending client panicked");
        for (code, count) in codes {
            *append_codes.entry(code).or_default() += count;
        }
        raw_ids.extend(mine);
        duplicate_appends += duplicates;
    }
    proxy.disarm();

    // The faults were there and were answered as they were.
    for (what, codes) in [("deposits", &deposit_codes), ("appends", &append_codes)] {
        assert!(
            codes.get("OUTCOME_UNKNOWN").is_some_and(|&n| n > 0)
                && codes.get("OVERLOADED").is_some_and(|&n| n > 0),
            "{what}: both an unknown outcome and a refusal were seen: {codes:?}"
        );
    }
    assert!(
        duplicate_deposits > 0 && duplicate_appends > 0,
        "retries found committed originals ({duplicate_deposits} deposits, {duplicate_appends} appends); cuts after the deposits {deposit_cuts:?}, in all {:?}",
        proxy.counts()
    );

    // Each once in the log.
    let deposit_ids: Vec<Uuid> = deposits.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        stored_counts(&raw, &deposit_ids).await,
        vec![1; deposit_ids.len()],
        "each deposit command is in the log once"
    );
    assert_eq!(
        stored_counts(&raw, &raw_ids).await,
        vec![1; raw_ids.len()],
        "each appended event is in the log once"
    );
    let logged: Vec<i64> = raw
        .query(
            "SELECT (payload->>'amount')::bigint FROM events
              WHERE stream_id = 'account-1' AND event_type = 'MoneyDeposited'",
            &[],
        )
        .await
        .expect("reading the deposits")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: i64 = deposits.iter().map(|(_, amount)| amount).sum();
    assert_eq!(logged.len(), deposits.len(), "one event per deposit");
    assert_eq!(logged.iter().sum::<i64>(), expected);

    // And the read model agrees.
    let head = app
        .tidemark
        .store()
        .head_position()
        .await
        .expect("the head");
    let data = app
        .graphql_data(
            "query($p: Int64!) { account(id: \"1\") @waitFor(projection: \"account_balances\", position: $p, timeoutMs: 20000) { balance } }",
            json!({ "p": head }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data["account"]["balance"], expected);
}

#[tokio::test]
async fn a_command_sent_again_with_its_command_id_answers_the_first_result_and_applies_once() {
    let app = spawn_app_with(
        tidemark_example_bank::app(Arc::new(tidemark_example_bank::LogAlerts)),
        |_| {},
    )
    .await;
    let run = |mutation: &'static str, command_id: Uuid| {
        let app = &app;
        async move {
            app.graphql_data(mutation, json!({ "c": command_id }), Some(APPEND_KEY))
                .await
        }
    };
    const OPEN: &str = "mutation($c: UUID!) { r: openAccount(accountId: \"7\", owner: \"ann\", commandId: $c) { position streamVersion changed duplicate } }";
    const DEPOSIT: &str = "mutation($c: UUID!) { r: deposit(accountId: \"7\", amount: 100, commandId: $c) { position streamVersion changed duplicate } }";
    const WITHDRAW: &str = "mutation($c: UUID!) { r: withdraw(accountId: \"7\", amount: 100, commandId: $c) { position streamVersion changed duplicate } }";
    let (open, deposit, withdraw) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut firsts = Vec::new();
    for (mutation, command_id) in [(OPEN, open), (DEPOSIT, deposit), (WITHDRAW, withdraw)] {
        let first = run(mutation, command_id).await["r"].clone();
        assert_eq!(
            (&first["changed"], &first["duplicate"]),
            (&json!(true), &json!(false))
        );
        firsts.push(first);
    }
    // Sent again, each answers as the first time, even the withdrawal that the balance (now
    // 0) would refuse if it were decided again; nothing more is written.
    for ((mutation, command_id), first) in [(OPEN, open), (DEPOSIT, deposit), (WITHDRAW, withdraw)]
        .into_iter()
        .zip(&firsts)
    {
        let again = run(mutation, command_id).await["r"].clone();
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["changed"], true, "{again}");
        assert_eq!(again["position"], first["position"], "{again}");
        assert_eq!(again["streamVersion"], first["streamVersion"], "{again}");
    }
    let events = app.all_events().await;
    let types: Vec<&str> = events
        .iter()
        .filter(|e| e.stream_id == "account-7")
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]);
    // Without a command id, the same deposit twice is two deposits (two clients' commands).
    for _ in 0..2 {
        app.graphql_data(
            "mutation { deposit(accountId: \"7\", amount: 5) { changed } }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    }
    assert_eq!(app.all_events().await.len(), events.len() + 2);
}

/// The append writer is supervised: when it panics after committing a batch (injected), the
/// appends of that batch are answered "may or may not have been written" (`WriterFailed`,
/// `INTERNAL` over the API) instead of being dropped, the panic is counted, and the writer
/// goes on: the next append succeeds, and a retry with the same event id is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_append_writer_answers_its_batch_and_carries_on() {
    use tidemark_store::{
        AppendRequest, EventStore, ExpectedVersion, NewEvent, PipelineConfig, StoreConfig,
        StoreError,
    };
    let db = TestDatabase::create().await;
    let store = EventStore::open(
        db.pg_config(),
        StoreConfig {
            pipeline: PipelineConfig {
                panic_after_commit_on_stream: Some("boom-1".into()),
                ..PipelineConfig::default()
            },
            ..StoreConfig::default()
        },
    )
    .await
    .expect("the store opens");
    let append = |stream: &str, id: Uuid| {
        let store = store.clone();
        let request = AppendRequest::new(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Tested", json!({})).with_id(id)],
        );
        async move { store.append(request).await }
    };
    append("ok-1", Uuid::new_v4())
        .await
        .expect("a first append");
    let boom_id = Uuid::new_v4();
    match append("boom-1", boom_id).await {
        Err(error @ StoreError::WriterFailed) => {
            assert!(error.is_retryable());
            assert!(error
                .to_string()
                .contains("may or may not have been written"));
            let api = tidemark_api::ApiError::from_store(&error);
            assert_eq!(api.code.as_str(), "INTERNAL");
            assert!(api.message.contains("retry with the same event ids"));
        }
        other => panic!("expected WriterFailed, got {other:?}"),
    }
    append("ok-2", Uuid::new_v4())
        .await
        .expect("the writer carries on after the panic");
    // The panicking batch had committed: a retry with the same id is its duplicate.
    let retried = tokio::time::timeout(WAIT, async {
        let request = AppendRequest::new(
            "boom-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Tested", json!({})).with_id(boom_id)],
        );
        // Written through a store without the fault hook.
        let plain = EventStore::open(db.pg_config(), StoreConfig::default())
            .await
            .expect("a second store opens");
        let outcome = plain.append(request).await;
        plain.shutdown().await;
        outcome
    })
    .await
    .expect("answered in time")
    .expect("the retry succeeds");
    assert!(retried.events[0].duplicate, "no second copy: {retried:?}");
    store.shutdown().await;
}
