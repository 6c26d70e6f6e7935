//! The example bank application (`tidemark-example-bank`) end to end: the real server on a
//! free port with the bank's projections, handler and GraphQL objects, real HTTP and
//! WebSocket clients. Commands change read models that `@waitFor` reads back; the domain's
//! rules hold over the API, also under racing clients; the alert handler fires once per
//! large withdrawal; read keys read and do not write; and the README's walkthrough runs
//! exactly as written.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tidemark_example_bank::projections::{fold, AlertSink};
use tidemark_example_bank::LARGE_WITHDRAWAL;
use tidemark_store::RecordedEvent;

// ------------------------------------------------------------------ support

/// One alert as the handler sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alert {
    id: String,
    account: String,
    amount: i64,
}

/// An [`AlertSink`] that records every alert, duplicates included.
#[derive(Default)]
struct RecordingAlerts {
    sent: Mutex<Vec<Alert>>,
}

impl RecordingAlerts {
    fn sent(&self) -> Vec<Alert> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl AlertSink for RecordingAlerts {
    async fn send(&self, alert_id: String, account: &str, amount: i64) -> Result<(), String> {
        self.sent.lock().unwrap().push(Alert {
            id: alert_id,
            account: account.to_string(),
            amount,
        });
        Ok(())
    }
}

/// The bank on a fresh database, with a recording alert sink.
async fn spawn_bank() -> (TestApp, Arc<RecordingAlerts>) {
    let alerts = Arc::new(RecordingAlerts::default());
    let app = spawn_app_with(tidemark_example_bank::app(alerts.clone()), |_| {}).await;
    (app, alerts)
}

/// Runs a mutation with the append key; panics on errors; returns `data`.
async fn command(app: &TestApp, mutation: &str, variables: Value) -> Value {
    app.graphql_data(mutation, variables, Some(APPEND_KEY))
        .await
}

/// Runs a mutation that must be refused with `REJECTED`; returns the sentence.
async fn rejected(app: &TestApp, mutation: &str, variables: Value) -> String {
    let body = app.graphql(mutation, variables, Some(APPEND_KEY)).await;
    let error = assert_error(&body, "REJECTED");
    assert!(
        body["data"].is_null(),
        "a refused command has no data: {body}"
    );
    error["message"].as_str().expect("a message").to_string()
}

/// Opens `account` for `owner` and deposits `amount`; returns the position of the deposit.
async fn open_account(app: &TestApp, account: &str, owner: &str, amount: i64) -> i64 {
    let data = command(
        app,
        "mutation($a: String!, $o: String!, $amount: Int!) {
           open: openAccount(accountId: $a, owner: $o) { position }
           deposit(accountId: $a, amount: $amount) { position streamVersion changed }
         }",
        json!({ "a": account, "o": owner, "amount": amount }),
    )
    .await;
    assert_eq!(data["deposit"]["streamVersion"], 1);
    assert_eq!(data["deposit"]["changed"], true);
    data["deposit"]["position"].as_i64().unwrap()
}

/// Registers `customer` (name = id, email `<id>@example.com`); returns the position.
async fn register(app: &TestApp, customer: &str) -> i64 {
    let data = command(
        app,
        "mutation($c: String!, $e: String!) { registerCustomer(customerId: $c, name: $c, email: $e) { position } }",
        json!({ "c": customer, "e": format!("{customer}@example.com") }),
    )
    .await;
    data["registerCustomer"]["position"].as_i64().unwrap()
}

/// The account as `account_balances` has it once it applied `position` (read key).
async fn account_at(app: &TestApp, account: &str, position: i64) -> Value {
    let data = app
        .graphql_data(
            "query($a: String!, $p: Int!) {
               account(id: $a) @waitFor(projection: \"account_balances\", position: $p) { id owner balance version }
             }",
            json!({ "a": account, "p": position }),
            Some(READ_KEY),
        )
        .await;
    data["account"].clone()
}

async fn balance_at(app: &TestApp, account: &str, position: i64) -> i64 {
    account_at(app, account, position).await["balance"]
        .as_i64()
        .unwrap_or_else(|| panic!("account {account} is in the read model"))
}

/// The order as the `orders` read model has it once it applied `position`.
async fn order_at(app: &TestApp, order: &str, position: i64) -> Value {
    let data = app
        .graphql_data(
            "query($o: String!, $p: Int!) {
               order(id: $o) @waitFor(projection: \"orders\", position: $p) { id customerId accountId amount status }
             }",
            json!({ "o": order, "p": position }),
            Some(READ_KEY),
        )
        .await;
    data["order"].clone()
}

/// The events of one stream, through the API.
async fn stream_events(app: &TestApp, stream: &str) -> Vec<Value> {
    let data = app
        .graphql_data(
            "query($s: String!) { stream(id: $s, first: 1000) { events { eventId type data streamVersion position } } }",
            json!({ "s": stream }),
            Some(READ_KEY),
        )
        .await;
    data["stream"]["events"].as_array().unwrap().clone()
}

async fn head(app: &TestApp) -> i64 {
    app.graphql_data("{ head }", json!({}), Some(READ_KEY))
        .await["head"]
        .as_i64()
        .unwrap()
}

/// Balances folded from the log (the store's own read, not the API), after checking that no
/// account's running balance ever went below zero.
fn balances_never_negative(events: &[RecordedEvent]) -> BTreeMap<String, i64> {
    let mut running: BTreeMap<String, i64> = BTreeMap::new();
    for event in events.iter().filter(|e| e.category() == "account") {
        let amount = event.payload["amount"].as_i64().unwrap_or(0);
        let balance = running.entry(event.stream_id.clone()).or_default();
        match event.event_type.as_str() {
            "MoneyDeposited" => *balance += amount,
            "MoneyWithdrawn" => *balance -= amount,
            _ => {}
        }
        assert!(
            *balance >= 0,
            "{} went to {balance} at position {}",
            event.stream_id,
            event.position
        );
    }
    let folded: BTreeMap<String, i64> = fold::balances(events)
        .into_iter()
        .map(|(stream, (balance, _, _))| (stream, balance))
        .collect();
    assert_eq!(folded, running, "the example's fold agrees");
    folded
}

// ------------------------------------------------------------------ read models

#[tokio::test]
async fn a_deposit_is_read_back_from_the_balances_read_model_with_wait_for() {
    let (app, _) = spawn_bank().await;
    let position = open_account(&app, "acc-1", "ann", 10_000).await;

    // One request: the write is visible as soon as the field's wait returns.
    let account = account_at(&app, "acc-1", position).await;
    assert_eq!(
        account,
        json!({ "id": "acc-1", "owner": "ann", "balance": 10_000, "version": 1 })
    );

    let data = command(
        &app,
        "mutation { deposit(accountId: \"acc-1\", amount: 2550) { streamId streamVersion position changed } }",
        json!({}),
    )
    .await;
    assert_eq!(data["deposit"]["streamId"], "account-acc-1");
    assert_eq!(data["deposit"]["streamVersion"], 2);
    assert_eq!(data["deposit"]["changed"], true);
    let position = data["deposit"]["position"].as_i64().unwrap();
    assert_eq!(position, head(&app).await);
    assert_eq!(balance_at(&app, "acc-1", position).await, 12_550);

    // The list of accounts reads the same model.
    let data = app
        .graphql_data(
            "query($p: Int!) { accounts @waitFor(projection: \"account_balances\", position: $p) { id balance } }",
            json!({ "p": position }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(
        data["accounts"],
        json!([{ "id": "acc-1", "balance": 12_550 }])
    );
}

#[tokio::test]
async fn an_order_goes_placed_paid_shipped_in_the_orders_read_model() {
    let (app, _) = spawn_bank().await;
    register(&app, "bob").await;
    open_account(&app, "bob-1", "bob", 10_000).await;

    let data = command(
        &app,
        "mutation { placeOrder(orderId: \"o-1\", customerId: \"bob\", accountId: \"bob-1\", amount: 2500) { streamId position } }",
        json!({}),
    )
    .await;
    assert_eq!(data["placeOrder"]["streamId"], "order-o-1");
    let placed = data["placeOrder"]["position"].as_i64().unwrap();
    assert_eq!(
        order_at(&app, "o-1", placed).await,
        json!({ "id": "o-1", "customerId": "bob", "accountId": "bob-1", "amount": 2500, "status": "placed" })
    );

    let data = command(
        &app,
        "mutation { payOrder(orderId: \"o-1\") { position changed } }",
        json!({}),
    )
    .await;
    assert_eq!(data["payOrder"]["changed"], true);
    let paid = data["payOrder"]["position"].as_i64().unwrap();
    assert_eq!(order_at(&app, "o-1", paid).await["status"], "paid");
    // Paying withdrew from the account, before the order was marked paid.
    assert_eq!(balance_at(&app, "bob-1", paid).await, 7_500);

    let data = command(
        &app,
        "mutation { shipOrder(orderId: \"o-1\") { position } }",
        json!({}),
    )
    .await;
    let shipped = data["shipOrder"]["position"].as_i64().unwrap();
    assert_eq!(order_at(&app, "o-1", shipped).await["status"], "shipped");

    // A second order, cancelled: the status filter tells them apart.
    let data = command(
        &app,
        "mutation {
           place: placeOrder(orderId: \"o-2\", customerId: \"bob\", accountId: \"bob-1\", amount: 100) { position }
           cancel: cancelOrder(orderId: \"o-2\") { position }
         }",
        json!({}),
    )
    .await;
    let last = data["cancel"]["position"].as_i64().unwrap();
    let data = app
        .graphql_data(
            "query($p: Int!) {
               shipped: orders(status: \"shipped\") @waitFor(projection: \"orders\", position: $p) { id }
               cancelled: orders(status: \"cancelled\") @waitFor(projection: \"orders\", position: $p) { id }
               all: orders @waitFor(projection: \"orders\", position: $p) { id status }
             }",
            json!({ "p": last }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data["shipped"], json!([{ "id": "o-1" }]));
    assert_eq!(data["cancelled"], json!([{ "id": "o-2" }]));
    assert_eq!(
        data["all"],
        json!([{ "id": "o-2", "status": "cancelled" }, { "id": "o-1", "status": "shipped" }]),
        "newest change first"
    );

    // The cross-stream read model counts every category's events and sums their amounts,
    // exactly as a fresh fold of the whole log does.
    let data = app
        .graphql_data(
            "query($p: Int!) { categoryTotals @waitFor(projection: \"category_totals\", position: $p) { category eventType events amount } }",
            json!({ "p": last }),
            Some(READ_KEY),
        )
        .await;
    let served: BTreeMap<(String, String), (i64, i64)> = data["categoryTotals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                (
                    t["category"].as_str().unwrap().to_string(),
                    t["eventType"].as_str().unwrap().to_string(),
                ),
                (t["events"].as_i64().unwrap(), t["amount"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(served, fold::totals(&app.all_events().await));
    let expected: BTreeMap<(String, String), (i64, i64)> = [
        ("account", "AccountOpened", 1, 0),
        ("account", "MoneyDeposited", 1, 10_000),
        ("account", "MoneyWithdrawn", 1, 2_500),
        ("customer", "CustomerRegistered", 1, 0),
        ("order", "OrderCancelled", 1, 0),
        ("order", "OrderPaid", 1, 2_500),
        ("order", "OrderPlaced", 2, 2_600),
        ("order", "OrderShipped", 1, 0),
    ]
    .into_iter()
    .map(|(c, t, n, a)| ((c.to_string(), t.to_string()), (n, a)))
    .collect();
    assert_eq!(served, expected);
}

// ------------------------------------------------------------------ rules

#[tokio::test]
async fn the_bank_rules_hold_over_the_api() {
    let (app, _) = spawn_bank().await;
    register(&app, "cat").await;
    open_account(&app, "cat-1", "cat", 100).await;
    let head_before = head(&app).await;

    // No overdraft.
    let message = rejected(
        &app,
        "mutation { withdraw(accountId: \"cat-1\", amount: 150) { position } }",
        json!({}),
    )
    .await;
    assert_eq!(
        message,
        "insufficient funds: the balance is 100, the withdrawal 150"
    );
    // Amounts are positive.
    for mutation in [
        "mutation { withdraw(accountId: \"cat-1\", amount: -5) { position } }",
        "mutation { deposit(accountId: \"cat-1\", amount: 0) { position } }",
    ] {
        let message = rejected(&app, mutation, json!({})).await;
        assert!(message.starts_with("amounts must be positive"), "{message}");
    }
    // Money only moves on accounts that exist, and the message names the account.
    let message = rejected(
        &app,
        "mutation { deposit(accountId: \"nope\", amount: 5) { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "account nope does not exist");
    // Emails must look like one; a customer registers once.
    for email in ["cat", "cat@localhost", "@example.com"] {
        let message = rejected(
            &app,
            "mutation($e: String!) { registerCustomer(customerId: \"dan\", name: \"Dan\", email: $e) { position } }",
            json!({ "e": email }),
        )
        .await;
        assert_eq!(message, format!("'{email}' is not a valid email address"));
    }
    let message = rejected(
        &app,
        "mutation { registerCustomer(customerId: \"cat\", name: \"Cat\", email: \"cat@example.org\") { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "customer cat is already registered");
    // Orders need a registered customer and an existing account.
    let message = rejected(
        &app,
        "mutation { placeOrder(orderId: \"o\", customerId: \"ghost\", accountId: \"cat-1\", amount: 5) { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "customer ghost is not registered");
    let message = rejected(
        &app,
        "mutation { shipOrder(orderId: \"nope\") { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "order nope does not exist");
    // None of that wrote anything.
    assert_eq!(head(&app).await, head_before);
    assert_eq!(
        app.graphql_data(
            "{ stream(id: \"customer-dan\") { version } }",
            json!({}),
            Some(READ_KEY)
        )
        .await["stream"]["version"],
        Value::Null
    );

    // An unpaid order cannot ship.
    command(
        &app,
        "mutation { placeOrder(orderId: \"o-1\", customerId: \"cat\", accountId: \"cat-1\", amount: 60) { position } }",
        json!({}),
    )
    .await;
    let message = rejected(
        &app,
        "mutation { shipOrder(orderId: \"o-1\") { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "order o-1 is not paid and cannot be shipped");

    // Paying twice withdraws once: the second call changes nothing.
    let data = command(
        &app,
        "mutation { payOrder(orderId: \"o-1\") { position changed } }",
        json!({}),
    )
    .await;
    assert_eq!(data["payOrder"]["changed"], true);
    let paid = data["payOrder"]["position"].as_i64().unwrap();
    let data = command(
        &app,
        "mutation { payOrder(orderId: \"o-1\") { position changed } }",
        json!({}),
    )
    .await;
    assert_eq!(data["payOrder"]["changed"], false);
    assert_eq!(data["payOrder"]["position"], 0, "nothing written");
    assert_eq!(head(&app).await, paid);
    assert_eq!(balance_at(&app, "cat-1", paid).await, 40);
    let withdrawals: Vec<Value> = stream_events(&app, "account-cat-1")
        .await
        .into_iter()
        .filter(|e| e["type"] == "MoneyWithdrawn")
        .collect();
    assert_eq!(withdrawals.len(), 1, "{withdrawals:?}");
    assert_eq!(
        withdrawals[0]["data"],
        json!({ "amount": 60, "order_id": "o-1" })
    );
    // An order the account cannot pay is refused and stays unpaid.
    command(
        &app,
        "mutation { placeOrder(orderId: \"o-2\", customerId: \"cat\", accountId: \"cat-1\", amount: 41) { position } }",
        json!({}),
    )
    .await;
    let message = rejected(
        &app,
        "mutation { payOrder(orderId: \"o-2\") { position } }",
        json!({}),
    )
    .await;
    assert_eq!(
        message,
        "insufficient funds: the balance is 40, the withdrawal 41"
    );
    let data = command(
        &app,
        "mutation { cancelOrder(orderId: \"o-2\") { position } }",
        json!({}),
    )
    .await;
    let cancelled = data["cancelOrder"]["position"].as_i64().unwrap();
    assert_eq!(
        order_at(&app, "o-2", cancelled).await["status"],
        "cancelled"
    );

    // Closing needs a zero balance; a closed account takes no more money.
    let message = rejected(
        &app,
        "mutation { closeAccount(accountId: \"cat-1\") { position } }",
        json!({}),
    )
    .await;
    assert_eq!(
        message,
        "an account can only be closed with a zero balance (it holds 40)"
    );
    let data = command(
        &app,
        "mutation {
           withdraw(accountId: \"cat-1\", amount: 40) { position }
           closeAccount(accountId: \"cat-1\") { position changed }
         }",
        json!({}),
    )
    .await;
    assert_eq!(data["closeAccount"]["changed"], true);
    let message = rejected(
        &app,
        "mutation { deposit(accountId: \"cat-1\", amount: 5) { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "account cat-1 is closed");
    let message = rejected(
        &app,
        "mutation { placeOrder(orderId: \"o-3\", customerId: \"cat\", accountId: \"cat-1\", amount: 5) { position } }",
        json!({}),
    )
    .await;
    assert_eq!(message, "account cat-1 is closed");

    let balances = balances_never_negative(&app.all_events().await);
    assert_eq!(balances["account-cat-1"], 0);
}

/// Races of concurrent clients withdrawing from one account, each client on its own
/// connection, released together: the balance never goes below zero, in the log and in the
/// read model, and exactly as many withdrawals succeed as the balance allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_withdrawals_never_overdraw() {
    const RACES: usize = 12;
    const CLIENTS: usize = 8;
    let (app, _) = spawn_bank().await;

    async fn race(app: &TestApp, account: &str, amount: i64) -> (usize, Vec<String>) {
        let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let racers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let start = start.clone();
                let url = format!("{}/graphql", app.address);
                let body = json!({
                    "query": "mutation($a: String!, $n: Int!) { withdraw(accountId: $a, amount: $n) { position } }",
                    "variables": { "a": account, "n": amount },
                });
                tokio::spawn(async move {
                    // Its own client: its own connection, like a separate process.
                    let client = reqwest::Client::new();
                    start.wait().await;
                    let response = client
                        .post(url)
                        .header("authorization", format!("Bearer {APPEND_KEY}"))
                        .json(&body)
                        .send()
                        .await
                        .expect("the server answers");
                    response.json::<Value>().await.expect("a JSON body")
                })
            })
            .collect();
        let mut succeeded = 0;
        let mut refusals = Vec::new();
        for racer in racers {
            let body = racer.await.unwrap();
            match error_code(&body) {
                None => succeeded += 1,
                Some("REJECTED") | Some("WRONG_EXPECTED_VERSION") => {
                    refusals.push(format!(
                        "{}: {}",
                        error_code(&body).unwrap(),
                        body["errors"][0]["message"].as_str().unwrap()
                    ));
                }
                Some(other) => panic!("unexpected {other}: {body}"),
            }
        }
        (succeeded, refusals)
    }

    /// Commands the bus decided again after a conflict, so far (a process-wide counter).
    async fn retries(app: &TestApp) -> u64 {
        let (_, metrics) = app.get("/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tidemark_command_retries_total "))
            .map_or(0, |n| n.trim().parse::<f64>().unwrap() as u64)
    }

    let retries_before = retries(&app).await;
    let mut conflicts = 0;
    let mut accounts = BTreeMap::new();
    for round in 0..RACES {
        // Balance 100, everyone withdraws 70: exactly one can.
        let account = format!("race-{round}");
        open_account(&app, &account, "racer", 100).await;
        let (succeeded, refusals) = race(&app, &account, 70).await;
        assert_eq!(succeeded, 1, "race {round}: {refusals:?}");
        for refusal in &refusals {
            if refusal.starts_with("WRONG_EXPECTED_VERSION") {
                conflicts += 1;
            } else {
                assert_eq!(
                    refusal,
                    "REJECTED: insufficient funds: the balance is 30, the withdrawal 70"
                );
            }
        }
        accounts.insert(format!("account-{account}"), 30);
    }
    let exclusive_retries = retries(&app).await - retries_before;
    let exclusive_conflicts = conflicts;
    let mut split_succeeded = Vec::new();
    for round in 0..RACES / 3 {
        // Balance 100, everyone withdraws 30: at most three can; a client may also give up
        // after its retries while others keep moving the stream.
        let account = format!("split-{round}");
        open_account(&app, &account, "racer", 100).await;
        let (succeeded, refusals) = race(&app, &account, 30).await;
        assert!((1..=3).contains(&succeeded), "{succeeded}: {refusals:?}");
        conflicts += refusals
            .iter()
            .filter(|r| r.starts_with("WRONG_EXPECTED_VERSION"))
            .count();
        split_succeeded.push(succeeded);
        let expected = 100 - 30 * succeeded as i64;
        accounts.insert(format!("account-{account}"), expected);
    }
    eprintln!(
        "{RACES} races of {CLIENTS} clients withdrawing 70 of 100: {exclusive_retries} commands \
         retried after a conflict, {exclusive_conflicts} gave up with WRONG_EXPECTED_VERSION; \
         {} races withdrawing 30 of 100: {split_succeeded:?} succeeded, {} gave up",
        RACES / 3,
        conflicts - exclusive_conflicts
    );

    // The log: no running balance below zero, and the balances the answers promised.
    let events = app.all_events().await;
    let folded = balances_never_negative(&events);
    assert_eq!(folded, accounts);
    // The read model agrees with the log.
    let position = head(&app).await;
    let data = app
        .graphql_data(
            "query($p: Int!) { accounts(first: 1000) @waitFor(projection: \"account_balances\", position: $p) { id balance } }",
            json!({ "p": position }),
            Some(READ_KEY),
        )
        .await;
    let served: BTreeMap<String, i64> = data["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                format!("account-{}", a["id"].as_str().unwrap()),
                a["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(served, accounts);
    assert!(served.values().all(|b| *b >= 0));
}

// ------------------------------------------------------------------ handler

#[tokio::test]
async fn a_large_withdrawal_is_alerted_once_per_event() {
    let (app, alerts) = spawn_bank().await;
    register(&app, "eve").await;
    open_account(&app, "eve-1", "eve", 4 * LARGE_WITHDRAWAL).await;
    command(
        &app,
        "mutation($small: Int!, $large: Int!, $larger: Int!) {
           small: withdraw(accountId: \"eve-1\", amount: $small) { position }
           large: withdraw(accountId: \"eve-1\", amount: $large) { position }
           order: placeOrder(orderId: \"big\", customerId: \"eve\", accountId: \"eve-1\", amount: $larger) { position }
         }",
        json!({ "small": LARGE_WITHDRAWAL - 1, "large": LARGE_WITHDRAWAL, "larger": LARGE_WITHDRAWAL + 5 }),
    )
    .await;
    let data = command(
        &app,
        "mutation { payOrder(orderId: \"big\") { position } deposit(accountId: \"eve-1\", amount: 900000) { position } }",
        json!({}),
    )
    .await;
    let last = data["deposit"]["position"].as_i64().unwrap();

    let data = app
        .graphql_data(
            "query($p: Int!) { waitFor(projection: \"large_withdrawal_alerts\", position: $p, timeoutMs: 20000) { reached } }",
            json!({ "p": last }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data["waitFor"]["reached"], true);

    // Exactly the withdrawals of LARGE_WITHDRAWAL or more, the order payment included,
    // each alerted once under its event id; deposits and small withdrawals are not.
    let mut expected: Vec<Alert> = stream_events(&app, "account-eve-1")
        .await
        .into_iter()
        .filter(|e| e["type"] == "MoneyWithdrawn")
        .filter(|e| e["data"]["amount"].as_i64().unwrap() >= LARGE_WITHDRAWAL)
        .map(|e| Alert {
            id: e["eventId"].as_str().unwrap().to_string(),
            account: "account-eve-1".into(),
            amount: e["data"]["amount"].as_i64().unwrap(),
        })
        .collect();
    assert_eq!(
        expected.iter().map(|a| a.amount).collect::<Vec<_>>(),
        [LARGE_WITHDRAWAL, LARGE_WITHDRAWAL + 5]
    );
    let mut sent = alerts.sent();
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(sent, expected);

    // Rebuilding the handler from position 0 (an admin's replay of the whole log) alerts
    // nothing again: each event id is alerted once.
    let data = app
        .graphql_data(
            "mutation { rebuildProjection(name: \"large_withdrawal_alerts\") { kind } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(data["rebuildProjection"]["kind"], "REBUILD");
    let build = eventually("the rebuild to finish", WAIT, || async {
        let data = app
            .graphql_data(
                "{ projection(name: \"large_withdrawal_alerts\") { lastBuild { status error eventsDone } } }",
                json!({}),
                Some(READ_KEY),
            )
            .await;
        let build = data["projection"]["lastBuild"].clone();
        (build["status"] != "running" && !build.is_null()).then_some(build)
    })
    .await;
    assert_eq!(build["status"], "done", "{build}");
    assert_eq!(
        build["eventsDone"], 3,
        "the rebuild went over the three withdrawals again"
    );
    let mut after = alerts.sent();
    after.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(after, expected, "no alert is sent twice");
}

// ------------------------------------------------------------------ auth

const BANK_MUTATIONS: [&str; 9] = [
    "mutation { registerCustomer(customerId: \"x\", name: \"X\", email: \"x@example.com\") { position } }",
    "mutation { openAccount(accountId: \"x-2\", owner: \"x\") { position } }",
    "mutation { deposit(accountId: \"x-1\", amount: 5) { position } }",
    "mutation { withdraw(accountId: \"x-1\", amount: 5) { position } }",
    "mutation { closeAccount(accountId: \"x-1\") { position } }",
    "mutation { placeOrder(orderId: \"x\", customerId: \"x\", accountId: \"x-1\", amount: 5) { position } }",
    "mutation { payOrder(orderId: \"x\") { position } }",
    "mutation { shipOrder(orderId: \"x\") { position } }",
    "mutation { cancelOrder(orderId: \"x\") { position } }",
];

#[tokio::test]
async fn a_read_key_reads_the_bank_but_runs_no_command() {
    let (app, _) = spawn_bank().await;
    let position = open_account(&app, "x-1", "x", 500).await;

    let data = app
        .graphql_data(
            "query($p: Int!) {
               account(id: \"x-1\") @waitFor(projection: \"account_balances\", position: $p) { balance }
               accounts @waitFor(projection: \"account_balances\", position: $p) { id }
               orders { id }
               order(id: \"x\") { id }
               categoryTotals { category }
             }",
            json!({ "p": position }),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(data["account"]["balance"], 500);
    assert_eq!(data["accounts"], json!([{ "id": "x-1" }]));
    assert_eq!(data["orders"], json!([]));
    assert_eq!(data["order"], Value::Null);

    for mutation in BANK_MUTATIONS {
        let body = app.graphql(mutation, json!({}), Some(READ_KEY)).await;
        let error = assert_error(&body, "FORBIDDEN");
        assert_eq!(error["extensions"]["requiredRole"], "append", "{mutation}");
        let body = app.graphql(mutation, json!({}), None).await;
        assert_error(&body, "UNAUTHENTICATED");
    }
    let body = app
        .graphql("{ account(id: \"x-1\") { balance } }", json!({}), None)
        .await;
    assert_error(&body, "UNAUTHENTICATED");

    // Nothing was written by the refused calls.
    assert_eq!(head(&app).await, position);
    assert_eq!(balance_at(&app, "x-1", position).await, 500);
}

// ------------------------------------------------------------------ the README

/// One fenced block of the walkthrough: its info string and text.
struct Block {
    lang: String,
    text: String,
}

/// The fenced blocks of the README section headed `## A 2-minute walkthrough`, in order,
/// and the section's text.
fn walkthrough() -> (Vec<Block>, String) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let start = readme
        .find("\n## A 2-minute walkthrough\n")
        .expect("the README has a walkthrough section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in section.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block in the walkthrough");
    (blocks, section.to_string())
}

fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The walkthrough, run as written against a freshly started bank in `--insecure-dev`
/// mode (no key, like the README): each GraphQL block in order, each answer compared with
/// the JSON block after it when there is one, the subscription over WebSocket receiving
/// the history and then the next step's deposit live. The run command and the curl line
/// are checked against the real command line and the first GraphQL block.
#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let (blocks, section) = walkthrough();

    // The run command at the top of the README is the bank's `serve --insecure-dev` on the
    // default address, and the walkthrough quotes what `serve` prints for it.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let run = readme
        .lines()
        .find(|l| l.starts_with("cargo run "))
        .expect("the README starts with the run command");
    let run = run.split('#').next().unwrap();
    assert!(
        run.starts_with("cargo run -p tidemark-example-bank -- "),
        "{run}"
    );
    let args = run.split(" -- ").nth(1).unwrap().split_whitespace();
    let cli = <tidemark_api::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("bank").chain(args),
    )
    .expect("the run command parses");
    let tidemark_api::cli::Command::Serve(serve) = cli.command else {
        panic!("the run command serves");
    };
    assert!(serve.insecure_dev);
    // What `serve` prints (api/src/cli.rs), for the default address.
    const PRINTED: &str =
        "Tidemark is listening on http://{0}/ (GraphiQL: http://{0}/, GraphQL: http://{0}/graphql)";
    assert!(
        include_str!("../../../api/src/cli.rs").contains(&format!("\"{PRINTED}\"")),
        "`serve` prints something else now: update the walkthrough and this test"
    );
    let printed = PRINTED.replace("{0}", &serve.listen.to_string());
    assert!(
        section.contains(&printed),
        "the walkthrough quotes {printed}"
    );
    let url = format!("http://{}/", serve.listen);
    assert!(section.contains(&format!("<{url}>")), "GraphiQL at {url}");

    // The curl line posts the first GraphQL block to the same server.
    let graphql: Vec<&Block> = blocks.iter().filter(|b| b.lang == "graphql").collect();
    let curl = blocks
        .iter()
        .find(|b| b.lang == "sh" && b.text.starts_with("curl "))
        .expect("a curl version of step 1");
    assert!(
        curl.text.contains(&format!(" {url}graphql ")),
        "curl posts to {url}graphql"
    );
    let payload = curl
        .text
        .split(" -d '")
        .nth(1)
        .and_then(|rest| rest.trim_end().strip_suffix('\''))
        .expect("curl -d '<json>'");
    let payload: Value = serde_json::from_str(payload).expect("curl sends valid JSON");
    assert_eq!(
        squeeze(payload["query"].as_str().unwrap()),
        squeeze(&graphql[0].text),
        "the curl line runs step 1"
    );

    assert_eq!(
        graphql
            .iter()
            .map(|b| b.text.split_whitespace().next().unwrap())
            .collect::<Vec<_>>(),
        ["mutation", "query", "subscription", "mutation", "mutation"],
        "the walkthrough's steps changed: update this test"
    );

    let app = spawn_app_with(
        tidemark_example_bank::app(Arc::new(RecordingAlerts::default())),
        |config| config.insecure_dev = true,
    )
    .await;
    // Each block's answer, and the JSON shown after it, if any.
    let expected_after = |index: usize| -> Option<Value> {
        let at = blocks
            .iter()
            .position(|b| std::ptr::eq(b, graphql[index]))
            .unwrap();
        blocks
            .get(at + 1)
            .filter(|b| b.lang == "json")
            .map(|b| serde_json::from_str(&b.text).expect("the README's JSON is valid"))
    };

    // 1. The commands.
    let answer = app.graphql(&graphql[0].text, json!({}), None).await;
    assert_no_errors(&answer);
    let deposit_position = answer["data"]["deposit"]["position"].as_i64().unwrap();
    assert_eq!(Some(answer), expected_after(0));

    // 2. The query waits for the position step 1 returned (the README says which).
    let waited: Vec<i64> = graphql[1]
        .text
        .split("position: ")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!waited.is_empty());
    assert!(waited.iter().all(|p| *p == deposit_position), "{waited:?}");
    assert!(section.contains(&format!("which is {deposit_position} on a fresh database")));
    let answer = app.graphql(&graphql[1].text, json!({}), None).await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["account"]["balance"], 5000);
    assert_eq!(Some(answer), expected_after(1));

    // 3. The subscription: the history, then the next step's deposit, live.
    let mut subscription = app.subscribe(&graphql[2].text, json!({}), None).await;
    let mut history = Vec::new();
    for _ in 0..2 {
        let event = subscription.next().await["events"].clone();
        history.push((event["position"].clone(), event["type"].clone()));
    }
    assert_eq!(
        history,
        [
            (json!(2), json!("AccountOpened")),
            (json!(3), json!("MoneyDeposited"))
        ]
    );
    // Only the history so far: the next step's deposit (the sentinel) is the next message.
    let answer = app.graphql(&graphql[3].text, json!({}), None).await;
    assert_no_errors(&answer);
    assert_eq!(answer["data"]["deposit"]["position"], 4);
    let live = subscription.next().await["events"].clone();
    assert_eq!(live["position"], 4);
    assert_eq!(live["streamId"], "account-ann-1");
    assert_eq!(live["type"], "MoneyDeposited");
    assert_eq!(live["data"], json!({ "amount": 2500 }));
    subscription.close().await;

    // 4. The rule: refused with the sentence the README quotes, nothing written.
    let answer = app.graphql(&graphql[4].text, json!({}), None).await;
    let error = assert_error(&answer, "REJECTED");
    let message = error["message"].as_str().unwrap();
    assert!(
        section.contains(&format!("`{message}`")),
        "the README quotes {message}"
    );
    assert_eq!(
        app.graphql("{ head }", json!({}), None).await["data"]["head"],
        4
    );
}
