//! [`BankClient`]: the bank's GraphQL API as typed calls, over real HTTP, so the tests read
//! as what a client does (`bank.withdraw("acc-1", 150).await.rejected()`) rather than as
//! query strings. Commands use the append key and answer [`Answer`]; reads use the read key
//! and wait (`@waitFor`) for the position they are given.

use crate::common::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tidemark_example_bank::projections::AlertSink;

/// What a command answered when it went through (the bank's `CommandResult`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Done {
    pub stream_id: String,
    pub stream_version: Option<i64>,
    pub position: i64,
    pub changed: bool,
    pub duplicate: bool,
}

/// A command that did not go through: its error's code and message, and the whole answer.
#[derive(Debug, Clone)]
pub struct Refused {
    pub code: String,
    pub message: String,
    pub body: Value,
}

/// A command's answer.
pub type Answer = Result<Done, Refused>;

/// What a test expects of an [`Answer`].
pub trait Expect {
    /// The command went through.
    fn done(self) -> Done;
    /// The command was refused by a rule of the bank (`REJECTED`, without data); returns
    /// the sentence.
    fn rejected(self) -> String;
}

impl Expect for Answer {
    #[track_caller]
    fn done(self) -> Done {
        self.unwrap_or_else(|refused| panic!("the command was refused: {}", refused.body))
    }

    #[track_caller]
    fn rejected(self) -> String {
        let refused = match self {
            Ok(done) => panic!("the command went through: {done:?}"),
            Err(refused) => refused,
        };
        assert_eq!(refused.code, "REJECTED", "{}", refused.body);
        assert!(
            refused.body["data"].is_null(),
            "a refused command has no data: {}",
            refused.body
        );
        refused.message
    }
}

/// One alert as the handler sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    pub account: String,
    pub amount: i64,
}

/// An [`AlertSink`] that records every alert, duplicates included.
#[derive(Default)]
pub struct RecordingAlerts {
    sent: Mutex<Vec<Alert>>,
}

impl RecordingAlerts {
    /// Every alert sent so far, by id.
    pub fn sent(&self) -> Vec<Alert> {
        let mut sent = self.sent.lock().unwrap().clone();
        sent.sort_by(|a, b| a.id.cmp(&b.id));
        sent
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

/// The fields every command answers.
const RESULT: &str = "{ streamId streamVersion position changed duplicate }";

/// A client of a bank server of its own (a fresh database, a recording alert sink).
pub struct BankClient {
    pub app: TestApp,
    pub alerts: Arc<RecordingAlerts>,
}

impl BankClient {
    /// Starts the bank on a fresh database.
    pub async fn start() -> BankClient {
        let alerts = Arc::new(RecordingAlerts::default());
        let app = spawn_app_with(tidemark_example_bank::app(alerts.clone()), |_| {}).await;
        BankClient { app, alerts }
    }

    // -------------------------------------------------------------- commands

    /// Registers `customer`, named after its id, with the email `<id>@example.com`.
    pub async fn register(&self, customer: &str) -> Answer {
        self.register_with_email(customer, &format!("{customer}@example.com"))
            .await
    }

    pub async fn register_with_email(&self, customer: &str, email: &str) -> Answer {
        self.command(
            "registerCustomer",
            "customerId: $c, name: $c, email: $e",
            "$c: String!, $e: String!",
            json!({ "c": customer, "e": email }),
        )
        .await
    }

    pub async fn open_account(&self, account: &str, owner: &str) -> Answer {
        self.command(
            "openAccount",
            "accountId: $a, owner: $o",
            "$a: String!, $o: String!",
            json!({ "a": account, "o": owner }),
        )
        .await
    }

    pub async fn deposit(&self, account: &str, amount: i64) -> Answer {
        self.money("deposit", account, amount).await
    }

    pub async fn withdraw(&self, account: &str, amount: i64) -> Answer {
        self.money("withdraw", account, amount).await
    }

    pub async fn close_account(&self, account: &str) -> Answer {
        self.command(
            "closeAccount",
            "accountId: $a",
            "$a: String!",
            json!({ "a": account }),
        )
        .await
    }

    pub async fn place_order(
        &self,
        order: &str,
        customer: &str,
        account: &str,
        amount: i64,
    ) -> Answer {
        self.command(
            "placeOrder",
            "orderId: $o, customerId: $c, accountId: $a, amount: $n",
            "$o: String!, $c: String!, $a: String!, $n: Int!",
            json!({ "o": order, "c": customer, "a": account, "n": amount }),
        )
        .await
    }

    pub async fn pay_order(&self, order: &str) -> Answer {
        self.order_command("payOrder", order).await
    }

    pub async fn ship_order(&self, order: &str) -> Answer {
        self.order_command("shipOrder", order).await
    }

    pub async fn cancel_order(&self, order: &str) -> Answer {
        self.order_command("cancelOrder", order).await
    }

    /// Opens `account` for `owner` and deposits `amount`, which must be the account's
    /// first event after opening; returns the position of the deposit.
    pub async fn open_funded(&self, account: &str, owner: &str, amount: i64) -> i64 {
        self.open_account(account, owner).await.done();
        let deposit = self.deposit(account, amount).await.done();
        assert_eq!(deposit.stream_version, Some(1));
        assert!(deposit.changed);
        deposit.position
    }

    /// `clients` clients withdraw `amount` from `account` at the same moment, each on a
    /// connection of its own (like separate processes); their answers.
    pub async fn withdraw_at_once(
        &self,
        account: &str,
        amount: i64,
        clients: usize,
    ) -> Vec<Answer> {
        let start = Arc::new(tokio::sync::Barrier::new(clients));
        let racers: Vec<_> = (0..clients)
            .map(|_| {
                let start = start.clone();
                let url = format!("{}/graphql", self.app.address);
                let body = json!({
                    "query": format!("mutation($a: String!, $n: Int!) {{ withdraw(accountId: $a, amount: $n) {RESULT} }}"),
                    "variables": { "a": account, "n": amount },
                });
                tokio::spawn(async move {
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
        let mut answers = Vec::with_capacity(clients);
        for racer in racers {
            answers.push(answer("withdraw", racer.await.expect("a racer panicked")));
        }
        answers
    }

    // -------------------------------------------------------------- reads

    /// The account as `account_balances` has it once it applied `position`: `{ id owner
    /// balance version }`, or null.
    pub async fn account(&self, account: &str, position: i64) -> Value {
        self.read(
            "query($a: String!, $p: Int64!) {
               account(id: $a) @waitFor(projection: \"account_balances\", position: $p) { id owner balance version }
             }",
            json!({ "a": account, "p": position }),
        )
        .await["account"]
            .clone()
    }

    /// The account's balance once `account_balances` applied `position`.
    pub async fn balance(&self, account: &str, position: i64) -> i64 {
        self.account(account, position).await["balance"]
            .as_i64()
            .unwrap_or_else(|| panic!("account {account} is in the read model"))
    }

    /// Every account's balance (by stream id) once `account_balances` applied `position`.
    pub async fn balances(&self, position: i64) -> BTreeMap<String, i64> {
        self.read(
            "query($p: Int64!) { accounts(first: 1000) @waitFor(projection: \"account_balances\", position: $p) { id balance } }",
            json!({ "p": position }),
        )
        .await["accounts"]
            .as_array()
            .expect("a list of accounts")
            .iter()
            .map(|a| {
                (
                    format!("account-{}", a["id"].as_str().unwrap()),
                    a["balance"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// The order as the `orders` read model has it once it applied `position`: `{ id
    /// customerId accountId amount status }`, or null.
    pub async fn order(&self, order: &str, position: i64) -> Value {
        self.read(
            "query($o: String!, $p: Int64!) {
               order(id: $o) @waitFor(projection: \"orders\", position: $p) { id customerId accountId amount status }
             }",
            json!({ "o": order, "p": position }),
        )
        .await["order"]
            .clone()
    }

    /// `categoryTotals` once the read model applied `position`: (category, event type) ->
    /// (events, amount).
    pub async fn category_totals(&self, position: i64) -> BTreeMap<(String, String), (i64, i64)> {
        self.read(
            "query($p: Int64!) { categoryTotals @waitFor(projection: \"category_totals\", position: $p) { category eventType events amount } }",
            json!({ "p": position }),
        )
        .await["categoryTotals"]
            .as_array()
            .expect("a list of totals")
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
            .collect()
    }

    /// The position of the last event in the log.
    pub async fn head(&self) -> i64 {
        self.read("{ head }", json!({})).await["head"]
            .as_i64()
            .unwrap()
    }

    /// The events of one stream, through the API: `{ eventId type data streamVersion
    /// position }` each.
    pub async fn stream_events(&self, stream: &str) -> Vec<Value> {
        self.read(
            "query($s: String!) { stream(id: $s, first: 1000) { events { eventId type data streamVersion position } } }",
            json!({ "s": stream }),
        )
        .await["stream"]["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The stream's version (null: no such stream).
    pub async fn stream_version(&self, stream: &str) -> Value {
        self.read(
            "query($s: String!) { stream(id: $s) { version } }",
            json!({ "s": stream }),
        )
        .await["stream"]["version"]
            .clone()
    }

    /// Waits until `projection` has applied `position` (at most 20 s); whether it did.
    pub async fn wait_for(&self, projection: &str, position: i64) -> bool {
        self.read(
            "query($n: String!, $p: Int64!) { waitFor(projection: $n, position: $p, timeoutMs: 20000) { reached } }",
            json!({ "n": projection, "p": position }),
        )
        .await["waitFor"]["reached"]
            == true
    }

    /// `projection`'s last build (`{ status error eventsDone }`) once it is no longer
    /// running.
    pub async fn finished_build(&self, projection: &str) -> Value {
        eventually("the build to finish", WAIT, || async {
            let build = self
                .read(
                    "query($n: String!) { projection(name: $n) { lastBuild { status error eventsDone } } }",
                    json!({ "n": projection }),
                )
                .await["projection"]["lastBuild"]
                .clone();
            (build["status"] != "running" && !build.is_null()).then_some(build)
        })
        .await
    }

    // -------------------------------------------------------------- plumbing

    async fn money(&self, mutation: &str, account: &str, amount: i64) -> Answer {
        self.command(
            mutation,
            "accountId: $a, amount: $n",
            "$a: String!, $n: Int!",
            json!({ "a": account, "n": amount }),
        )
        .await
    }

    async fn order_command(&self, mutation: &str, order: &str) -> Answer {
        self.command(
            mutation,
            "orderId: $o",
            "$o: String!",
            json!({ "o": order }),
        )
        .await
    }

    /// Runs `mutation(arguments)` with the append key.
    async fn command(
        &self,
        mutation: &str,
        arguments: &str,
        parameters: &str,
        variables: Value,
    ) -> Answer {
        let query = format!("mutation({parameters}) {{ {mutation}({arguments}) {RESULT} }}");
        let body = self.app.graphql(&query, variables, Some(APPEND_KEY)).await;
        answer(mutation, body)
    }

    /// Runs a query with the read key; panics on errors; returns `data`.
    async fn read(&self, query: &str, variables: Value) -> Value {
        self.app
            .graphql_data(query, variables, Some(READ_KEY))
            .await
    }
}

/// The answer of `mutation` in `body`: its result, or its first error.
fn answer(mutation: &str, body: Value) -> Answer {
    match error_code(&body) {
        None => Ok(serde_json::from_value(body["data"][mutation].clone())
            .unwrap_or_else(|e| panic!("{mutation} answers a CommandResult ({e}): {body}"))),
        Some(code) => Err(Refused {
            code: code.to_string(),
            message: body["errors"][0]["message"]
                .as_str()
                .expect("a message")
                .to_string(),
            body,
        }),
    }
}
