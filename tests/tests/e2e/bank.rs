//! The example bank application (`tidemark-example-bank`) end to end: the real server on a
//! free port with the bank's projections, handler and GraphQL objects, driven by
//! [`BankClient`] over real HTTP. Each test states one behaviour: commands change read
//! models that `@waitFor` reads back; the domain's rules hold over the API (`REJECTED`,
//! the rule's sentence, nothing written), also under racing clients; the alert handler
//! fires once per large withdrawal; read keys read and do not write; and the README's
//! walkthrough runs exactly as written. The rules themselves, case by case, are unit tests
//! of the bank's domain.

mod client;

use crate::common::*;
use client::{Alert, Answer, BankClient, Expect, RecordingAlerts};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidemark_example_bank::projections::fold;
use tidemark_example_bank::LARGE_WITHDRAWAL;
use tidemark_store::RecordedEvent;

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
async fn a_deposit_answers_the_streams_new_version_and_the_head_position() {
    let bank = BankClient::start().await;
    bank.open_funded("acc-1", "ann", 10_000).await;

    let deposit = bank.deposit("acc-1", 2550).await.done();
    assert_eq!(deposit.stream_id, "account-acc-1");
    assert_eq!(deposit.stream_version, Some(2));
    assert!(deposit.changed);
    assert_eq!(deposit.position, bank.head().await);
}

/// A command's events carry the request's correlation and causation ids
/// (`X-Correlation-Id`, `X-Causation-Id`) in their metadata, and the answer echoes the
/// correlation id; a request without one gets a fresh one, shared by all its events.
#[tokio::test]
async fn a_commands_events_carry_the_requests_correlation_and_causation_ids() {
    let bank = BankClient::start().await;
    let open = |correlation: Option<&'static str>| {
        let mut request = bank
            .app
            .client
            .post(format!("{}/graphql", bank.app.address))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {APPEND_KEY}"));
        if let Some(correlation) = correlation {
            request = request
                .header("x-correlation-id", correlation)
                .header("x-causation-id", "signup-form-submitted");
        }
        request
            .body(
                json!({ "query": format!(
                    "mutation {{ openAccount(accountId: \"{}\", owner: \"ann\") {{ position }} }}",
                    correlation.unwrap_or("plain")
                ) })
                .to_string(),
            )
            .send()
    };
    let answer = open(Some("journey-7")).await.expect("an answer");
    assert_eq!(answer.headers()["x-correlation-id"], "journey-7");
    let answer = open(None).await.expect("an answer");
    let fresh = answer.headers()["x-correlation-id"]
        .to_str()
        .expect("text")
        .to_string();
    let events = bank.app.all_events().await;
    let metadata = |stream: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e.stream_id == stream)
            .map(|e| e.metadata.clone())
            .collect()
    };
    let traced = metadata("account-journey-7");
    assert!(!traced.is_empty());
    for m in &traced {
        assert_eq!(m["correlationId"], "journey-7", "{m}");
        assert_eq!(m["causationId"], "signup-form-submitted", "{m}");
    }
    let plain = metadata("account-plain");
    assert!(!plain.is_empty());
    for m in &plain {
        assert_eq!(m["correlationId"], fresh.as_str(), "{m}");
    }

    // An id that cannot be one is refused before anything runs.
    let refused = bank
        .app
        .client
        .post(format!("{}/graphql", bank.app.address))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {APPEND_KEY}"))
        .header("x-correlation-id", "two words")
        .body(json!({ "query": "mutation { openAccount(accountId: \"nope\", owner: \"x\") { position } }" }).to_string())
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_INPUT",
        "{body}"
    );
}

#[tokio::test]
async fn a_deposit_is_read_back_from_the_balances_read_model_with_wait_for() {
    let bank = BankClient::start().await;
    let position = bank.open_funded("acc-1", "ann", 10_000).await;

    // One request: the write is visible as soon as the field's wait returns.
    assert_eq!(
        bank.account("acc-1", position).await,
        json!({ "id": "acc-1", "owner": "ann", "balance": 10_000, "version": 1 })
    );
    let position = bank.deposit("acc-1", 2550).await.done().position;
    assert_eq!(bank.balance("acc-1", position).await, 12_550);

    // The list of accounts reads the same model.
    let data = bank
        .app
        .graphql_data(
            "query($p: Int64!) { accounts @waitFor(projection: \"account_balances\", position: $p) { id balance } }",
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
    let bank = BankClient::start().await;
    bank.register("bob").await.done();
    bank.open_funded("bob-1", "bob", 10_000).await;

    let placed = bank.place_order("o-1", "bob", "bob-1", 2500).await.done();
    assert_eq!(placed.stream_id, "order-o-1");
    assert_eq!(
        bank.order("o-1", placed.position).await,
        json!({ "id": "o-1", "customerId": "bob", "accountId": "bob-1", "amount": 2500, "status": "placed" })
    );

    let paid = bank.pay_order("o-1").await.done();
    assert!(paid.changed);
    assert_eq!(bank.order("o-1", paid.position).await["status"], "paid");
    // Paying withdrew from the account, before the order was marked paid.
    assert_eq!(bank.balance("bob-1", paid.position).await, 7_500);

    let shipped = bank.ship_order("o-1").await.done().position;
    assert_eq!(bank.order("o-1", shipped).await["status"], "shipped");
}

/// Bob's shipped order `o-1` (2500 from `bob-1`, funded with 10,000) and cancelled order
/// `o-2` (100); the position of the cancel.
async fn a_shipped_and_a_cancelled_order(bank: &BankClient) -> i64 {
    bank.register("bob").await.done();
    bank.open_funded("bob-1", "bob", 10_000).await;
    bank.place_order("o-1", "bob", "bob-1", 2500).await.done();
    bank.pay_order("o-1").await.done();
    bank.ship_order("o-1").await.done();
    bank.place_order("o-2", "bob", "bob-1", 100).await.done();
    bank.cancel_order("o-2").await.done().position
}

#[tokio::test]
async fn orders_are_listed_newest_change_first_and_filtered_by_status() {
    let bank = BankClient::start().await;
    let last = a_shipped_and_a_cancelled_order(&bank).await;
    let data = bank
        .app
        .graphql_data(
            "query($p: Int64!) {
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
}

/// The cross-stream read model counts every category's events and sums their amounts,
/// exactly as a fresh fold of the whole log does.
#[tokio::test]
async fn category_totals_count_and_sum_every_category_like_a_fold_of_the_log() {
    let bank = BankClient::start().await;
    let last = a_shipped_and_a_cancelled_order(&bank).await;
    let served = bank.category_totals(last).await;
    assert_eq!(served, fold::totals(&bank.app.all_events().await));
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

/// The head has not moved from `head_before`: the refused commands wrote nothing.
async fn assert_nothing_written(bank: &BankClient, head_before: i64) {
    assert_eq!(bank.head().await, head_before, "a refused command wrote");
}

#[tokio::test]
async fn an_overdraft_is_rejected_with_the_balance_and_the_withdrawal() {
    let bank = BankClient::start().await;
    let head = bank.open_funded("cat-1", "cat", 100).await;

    assert_eq!(
        bank.withdraw("cat-1", 150).await.rejected(),
        "insufficient funds: the balance is 100, the withdrawal 150"
    );
    assert_nothing_written(&bank, head).await;
}

#[tokio::test]
async fn amounts_must_be_positive() {
    let bank = BankClient::start().await;
    let head = bank.open_funded("cat-1", "cat", 100).await;

    for refused in [
        bank.withdraw("cat-1", -5).await,
        bank.deposit("cat-1", 0).await,
    ] {
        let message = refused.rejected();
        assert!(message.starts_with("amounts must be positive"), "{message}");
    }
    assert_nothing_written(&bank, head).await;
}

#[tokio::test]
async fn money_moves_only_on_an_account_that_exists_and_the_refusal_names_it() {
    let bank = BankClient::start().await;
    let head = bank.open_funded("cat-1", "cat", 100).await;

    assert_eq!(
        bank.deposit("nope", 5).await.rejected(),
        "account nope does not exist"
    );
    assert_nothing_written(&bank, head).await;
}

#[tokio::test]
async fn a_customer_needs_a_plausible_email_and_registers_once() {
    let bank = BankClient::start().await;
    let head = bank.register("cat").await.done().position;

    for email in ["cat", "cat@localhost", "@example.com"] {
        assert_eq!(
            bank.register_with_email("dan", email).await.rejected(),
            format!("'{email}' is not a valid email address")
        );
    }
    assert_eq!(
        bank.register_with_email("cat", "cat@example.org")
            .await
            .rejected(),
        "customer cat is already registered"
    );
    assert_nothing_written(&bank, head).await;
    assert_eq!(bank.stream_version("customer-dan").await, Value::Null);
}

#[tokio::test]
async fn an_order_needs_a_registered_customer_and_only_a_placed_order_ships() {
    let bank = BankClient::start().await;
    bank.register("cat").await.done();
    let head = bank.open_funded("cat-1", "cat", 100).await;

    assert_eq!(
        bank.place_order("o", "ghost", "cat-1", 5).await.rejected(),
        "customer ghost is not registered"
    );
    assert_eq!(
        bank.ship_order("nope").await.rejected(),
        "order nope does not exist"
    );
    assert_nothing_written(&bank, head).await;
}

#[tokio::test]
async fn an_unpaid_order_cannot_ship() {
    let bank = BankClient::start().await;
    bank.register("cat").await.done();
    bank.open_funded("cat-1", "cat", 100).await;
    let head = bank
        .place_order("o-1", "cat", "cat-1", 60)
        .await
        .done()
        .position;

    assert_eq!(
        bank.ship_order("o-1").await.rejected(),
        "order o-1 is not paid and cannot be shipped"
    );
    assert_nothing_written(&bank, head).await;
}

#[tokio::test]
async fn paying_an_order_twice_withdraws_once() {
    let bank = BankClient::start().await;
    bank.register("cat").await.done();
    bank.open_funded("cat-1", "cat", 100).await;
    bank.place_order("o-1", "cat", "cat-1", 60).await.done();

    let paid = bank.pay_order("o-1").await.done();
    assert!(paid.changed);
    let again = bank.pay_order("o-1").await.done();
    assert!(!again.changed, "the second payment changes nothing");
    assert_eq!(again.position, 0, "nothing written");
    assert_eq!(bank.head().await, paid.position);
    assert_eq!(bank.balance("cat-1", paid.position).await, 40);
    let withdrawals: Vec<Value> = bank
        .stream_events("account-cat-1")
        .await
        .into_iter()
        .filter(|e| e["type"] == "MoneyWithdrawn")
        .collect();
    assert_eq!(withdrawals.len(), 1, "{withdrawals:?}");
    assert_eq!(
        withdrawals[0]["data"],
        json!({ "amount": 60, "order_id": "o-1" })
    );
}

#[tokio::test]
async fn an_order_the_account_cannot_pay_is_refused_and_stays_unpaid_until_cancelled() {
    let bank = BankClient::start().await;
    bank.register("cat").await.done();
    bank.open_funded("cat-1", "cat", 40).await;
    let head = bank
        .place_order("o-2", "cat", "cat-1", 41)
        .await
        .done()
        .position;

    assert_eq!(
        bank.pay_order("o-2").await.rejected(),
        "insufficient funds: the balance is 40, the withdrawal 41"
    );
    assert_nothing_written(&bank, head).await;
    assert_eq!(bank.order("o-2", head).await["status"], "placed");
    let cancelled = bank.cancel_order("o-2").await.done().position;
    assert_eq!(bank.order("o-2", cancelled).await["status"], "cancelled");
}

#[tokio::test]
async fn closing_needs_a_zero_balance_and_a_closed_account_takes_no_more_money() {
    let bank = BankClient::start().await;
    bank.register("cat").await.done();
    let funded = bank.open_funded("cat-1", "cat", 40).await;

    assert_eq!(
        bank.close_account("cat-1").await.rejected(),
        "an account can only be closed with a zero balance (it holds 40)"
    );
    assert_nothing_written(&bank, funded).await;
    bank.withdraw("cat-1", 40).await.done();
    assert!(bank.close_account("cat-1").await.done().changed);
    let closed = bank.head().await;
    assert_eq!(
        bank.deposit("cat-1", 5).await.rejected(),
        "account cat-1 is closed"
    );
    assert_eq!(
        bank.place_order("o-3", "cat", "cat-1", 5).await.rejected(),
        "account cat-1 is closed"
    );
    assert_nothing_written(&bank, closed).await;

    let balances = balances_never_negative(&bank.app.all_events().await);
    assert_eq!(balances["account-cat-1"], 0);
}

// ------------------------------------------------------------------ racing clients

const RACES: usize = 12;
const CLIENTS: usize = 8;

/// What one race of withdrawals came to: how many went through, and each refusal as
/// `<code>: <message>`.
async fn race(bank: &BankClient, account: &str, amount: i64) -> (usize, Vec<String>) {
    let answers: Vec<Answer> = bank.withdraw_at_once(account, amount, CLIENTS).await;
    let mut succeeded = 0;
    let mut refusals = Vec::new();
    for answer in answers {
        match answer {
            Ok(_) => succeeded += 1,
            Err(refused)
                if refused.code == "REJECTED" || refused.code == "WRONG_EXPECTED_VERSION" =>
            {
                refusals.push(format!("{}: {}", refused.code, refused.message));
            }
            Err(refused) => panic!("unexpected {}: {}", refused.code, refused.body),
        }
    }
    (succeeded, refusals)
}

/// Commands the bus decided again after a conflict, so far (a process-wide counter, so
/// other tests of this binary add theirs: for the log only).
async fn retries(bank: &BankClient) -> u64 {
    let (_, metrics) = bank.app.get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidemark_command_retries_total "))
        .map_or(0, |n| n.trim().parse::<f64>().unwrap() as u64)
}

/// After races: no running balance below zero in the log, the balances the answers
/// promised, and the read model agreeing with the log.
async fn assert_balances(bank: &BankClient, accounts: &BTreeMap<String, i64>) {
    let events = bank.app.all_events().await;
    let folded = balances_never_negative(&events);
    assert_eq!(&folded, accounts);
    let served = bank.balances(bank.head().await).await;
    assert_eq!(&served, accounts);
    assert!(served.values().all(|b| *b >= 0));
}

/// Races of concurrent clients withdrawing 70 from a balance of 100, each client on its
/// own connection, released together: exactly one withdrawal goes through; the others
/// are refused for the balance or give up after their retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_racing_withdrawals_only_one_goes_through_when_the_balance_allows_one() {
    let bank = BankClient::start().await;
    let retries_before = retries(&bank).await;
    let mut conflicts = 0;
    let mut accounts = BTreeMap::new();
    for round in 0..RACES {
        let account = format!("race-{round}");
        bank.open_funded(&account, "racer", 100).await;
        let (succeeded, refusals) = race(&bank, &account, 70).await;
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
    eprintln!(
        "{RACES} races of {CLIENTS} clients withdrawing 70 of 100: {} commands retried after \
         a conflict, {conflicts} gave up with WRONG_EXPECTED_VERSION",
        retries(&bank).await - retries_before
    );
    assert_balances(&bank, &accounts).await;
}

/// Races of concurrent clients withdrawing 30 from a balance of 100: at most three go
/// through (a client may also give up after its retries while others keep moving the
/// stream), and the balance never goes below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_withdrawals_never_overdraw() {
    let bank = BankClient::start().await;
    let mut conflicts = 0;
    let mut split_succeeded = Vec::new();
    let mut accounts = BTreeMap::new();
    for round in 0..RACES / 3 {
        let account = format!("split-{round}");
        bank.open_funded(&account, "racer", 100).await;
        let (succeeded, refusals) = race(&bank, &account, 30).await;
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
        "{} races of {CLIENTS} clients withdrawing 30 of 100: {split_succeeded:?} succeeded, \
         {conflicts} gave up",
        RACES / 3,
    );
    assert_balances(&bank, &accounts).await;
}

// ------------------------------------------------------------------ handler

/// Eve withdraws just under the alert threshold, at it, and pays an order just over it,
/// then deposits; the alerts those withdrawals call for (by event id), and the position of
/// the deposit.
async fn small_large_and_order_withdrawals(bank: &BankClient) -> (Vec<Alert>, i64) {
    bank.register("eve").await.done();
    bank.open_funded("eve-1", "eve", 4 * LARGE_WITHDRAWAL).await;
    bank.withdraw("eve-1", LARGE_WITHDRAWAL - 1).await.done();
    bank.withdraw("eve-1", LARGE_WITHDRAWAL).await.done();
    bank.place_order("big", "eve", "eve-1", LARGE_WITHDRAWAL + 5)
        .await
        .done();
    bank.pay_order("big").await.done();
    let last = bank.deposit("eve-1", 900_000).await.done().position;

    let mut expected: Vec<Alert> = bank
        .stream_events("account-eve-1")
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
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    (expected, last)
}

/// Exactly the withdrawals of `LARGE_WITHDRAWAL` or more, the order payment included, are
/// alerted, each once under its event id; deposits and small withdrawals are not.
#[tokio::test]
async fn a_large_withdrawal_is_alerted_once_per_event() {
    let bank = BankClient::start().await;
    let (expected, last) = small_large_and_order_withdrawals(&bank).await;
    assert!(bank.wait_for("large_withdrawal_alerts", last).await);

    let mut amounts: Vec<i64> = expected.iter().map(|a| a.amount).collect();
    amounts.sort();
    assert_eq!(amounts, [LARGE_WITHDRAWAL, LARGE_WITHDRAWAL + 5]);
    assert_eq!(bank.alerts.sent(), expected);
}

/// Rebuilding the handler from position 0 (an admin's replay of the whole log) alerts
/// nothing again: each event id is alerted once.
#[tokio::test]
async fn rebuilding_the_alert_handler_sends_no_alert_twice() {
    let bank = BankClient::start().await;
    let (expected, last) = small_large_and_order_withdrawals(&bank).await;
    assert!(bank.wait_for("large_withdrawal_alerts", last).await);
    assert_eq!(bank.alerts.sent(), expected);

    let data = bank
        .app
        .graphql_data(
            "mutation { rebuildProjection(name: \"large_withdrawal_alerts\") { kind } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(data["rebuildProjection"]["kind"], "REBUILD");
    let build = bank.finished_build("large_withdrawal_alerts").await;
    assert_eq!(build["status"], "done", "{build}");
    assert_eq!(
        build["eventsDone"], 3,
        "the rebuild went over the three withdrawals again"
    );
    assert_eq!(bank.alerts.sent(), expected, "no alert is sent twice");
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
async fn a_read_key_reads_every_read_model_of_the_bank() {
    let bank = BankClient::start().await;
    let position = bank.open_funded("x-1", "x", 500).await;

    let data = bank
        .app
        .graphql_data(
            "query($p: Int64!) {
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
}

#[tokio::test]
async fn a_read_key_runs_no_command_and_without_a_key_nothing_runs() {
    let bank = BankClient::start().await;
    let position = bank.open_funded("x-1", "x", 500).await;
    let app = &bank.app;

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
    assert_eq!(bank.head().await, position);
    assert_eq!(bank.balance("x-1", position).await, 500);
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

/// The address the README's run command serves on: it is the bank's `serve
/// --insecure-dev`, parsed by the real command line.
fn readme_serve_address() -> std::net::SocketAddr {
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
    serve.listen
}

/// The run command at the top of the README is the bank's `serve --insecure-dev` on the
/// default address, and the walkthrough quotes what `serve` prints for it.
#[test]
fn the_readme_run_command_serves_the_bank_and_the_walkthrough_quotes_what_it_prints() {
    let (_, section) = walkthrough();
    let listen = readme_serve_address();
    // What `serve` prints (api/src/cli.rs), for the default address.
    const PRINTED: &str =
        "Tidemark is listening on http://{0}/ (GraphiQL: http://{0}/, dashboard: http://{0}/ui, GraphQL: http://{0}/graphql)";
    assert!(
        include_str!("../../../api/src/cli.rs").contains(&format!("\"{PRINTED}\"")),
        "`serve` prints something else now: update the walkthrough and this test"
    );
    let printed = PRINTED.replace("{0}", &listen.to_string());
    assert!(
        section.contains(&printed),
        "the walkthrough quotes {printed}"
    );
    let url = format!("http://{listen}/");
    assert!(section.contains(&format!("<{url}>")), "GraphiQL at {url}");
}

/// The curl line posts the first GraphQL block to the server the run command starts.
#[test]
fn the_readme_curl_line_runs_step_one() {
    let (blocks, _) = walkthrough();
    let url = format!("http://{}/", readme_serve_address());
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
}

/// The walkthrough, run as written against a freshly started bank in `--insecure-dev`
/// mode (no key, like the README): each GraphQL block in order, each answer compared with
/// the JSON block after it when there is one, the subscription over WebSocket receiving
/// the history and then the next step's deposit live.
#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let (blocks, section) = walkthrough();
    let graphql: Vec<&Block> = blocks.iter().filter(|b| b.lang == "graphql").collect();
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
    assert_eq!(live["data"], json!({ "amount": 2500, "currency": "EUR" }));
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
