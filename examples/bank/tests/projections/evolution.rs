//! Schema evolution of `MoneyDeposited` (v1 `{amount}`, v2 adds `currency`): a log holding
//! both versions builds and rebuilds to the same read models as a log written entirely in
//! v2, and the account aggregate loads it the same; the log keeps the v1 events as written.

use crate::common::*;

use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tidemark_api::evolution::Evolution;
use tidemark_example_bank::domain::{Account, AccountCommand};
use tidemark_example_bank::projections::{AccountBalances, CategoryTotals};
use tidemark_example_bank::{app, LogAlerts};
use tidemark_projections::{ApplyContext, Projection, ProjectionError, RecordedEvent, Registry};
use tidemark_store::aggregate::{CommandBus, CommandError};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use tidemark_testkit::TestDatabase;

/// Deposits per currency: a read model that needs v2 (a v1 event has no currency).
struct DepositsByCurrency;

#[async_trait]
impl Projection for DepositsByCurrency {
    fn name(&self) -> &str {
        "deposits_by_currency"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table(
            "deposits",
            "currency text PRIMARY KEY, deposits bigint NOT NULL, amount bigint NOT NULL",
        )
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS d VALUES ($1, 1, $2) ON CONFLICT (currency) DO UPDATE
                    SET deposits = d.deposits + 1, amount = d.amount + EXCLUDED.amount",
                ctx.table("deposits")
            ))
            .await?;
        for event in events.iter().filter(|e| e.event_type == "MoneyDeposited") {
            let currency = event.payload["currency"].as_str().ok_or_else(|| {
                ProjectionError::failed(format!(
                    "deposit at position {} has no currency (schema version {})",
                    event.position, event.schema_version
                ))
            })?;
            let amount = event.payload["amount"].as_i64().unwrap_or(0);
            ctx.tx.execute(&upsert, &[&currency, &amount]).await?;
        }
        Ok(())
    }
}

/// The same deposits, each written as v1 (`{amount}`) or as v2 with the currency v1 meant.
fn deposit(amount: i64, currency: &str, as_v1: bool) -> NewEvent {
    if as_v1 {
        NewEvent::new("MoneyDeposited", json!({"amount": amount}))
    } else {
        NewEvent::new(
            "MoneyDeposited",
            json!({"amount": amount, "currency": currency}),
        )
        .with_schema_version(2)
    }
}

/// The bank's log, with the EUR deposits written as v1 when `mixed`.
fn history(mixed: bool) -> Vec<AppendRequest> {
    let opened = |owner: &str| NewEvent::new("AccountOpened", json!({"owner": owner}));
    let withdrawn = |amount: i64| NewEvent::new("MoneyWithdrawn", json!({"amount": amount}));
    vec![
        AppendRequest::new(
            "account-1",
            ExpectedVersion::NoStream,
            vec![
                opened("ann"),
                deposit(100, "EUR", mixed),
                deposit(50, "EUR", false),
                withdrawn(30),
            ],
        ),
        AppendRequest::new(
            "account-2",
            ExpectedVersion::NoStream,
            vec![
                opened("bob"),
                deposit(7, "EUR", mixed),
                deposit(20, "USD", false),
            ],
        ),
        AppendRequest::new(
            "account-1",
            ExpectedVersion::Exact(3),
            vec![deposit(5, "EUR", mixed)],
        ),
    ]
}

type ReadModels = (
    BTreeMap<String, (i64, i64, i64)>,
    BTreeMap<(String, String), (i64, i64)>,
    BTreeMap<String, (i64, i64)>,
);

async fn read_models(db: &TestDatabase) -> ReadModels {
    let client = connect(db).await;
    let deposits = client
        .query(
            "SELECT currency, deposits, amount FROM rm_deposits_by_currency.deposits",
            &[],
        )
        .await
        .expect("reading the deposits read model")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    (
        read_balances(&client, "rm_account_balances").await,
        read_totals(&client, "rm_category_totals").await,
        deposits,
    )
}

/// The bank's log (mixed or all v2) in a database of its own with the bank's schemas and
/// upcasters installed: its read models built, then rebuilt, through the upcasting handle,
/// and account 1 as the aggregate loads it. One database at a time: each is closed before
/// the next opens.
async fn bank_log(mixed: bool) -> (ReadModels, (i64, Option<i64>)) {
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let evolution = Evolution::install(&store, &app(Arc::new(LogAlerts)))
        .await
        .expect("the bank's schemas register");
    append_all(&store, history(mixed)).await;
    let engine = engine(
        &evolution.upcasting,
        Registry::new()
            .projection(AccountBalances)
            .projection(CategoryTotals)
            .projection(DepositsByCurrency),
    );
    engine.start().await.expect("the engine starts");
    let names = [
        "account_balances",
        "category_totals",
        "deposits_by_currency",
    ];
    for name in names {
        caught_up(&engine, name, DEADLINE).await;
    }
    let built = read_models(&db).await;
    for name in names {
        engine.rebuild(name, None).await.expect("the rebuild runs");
    }
    let rebuilt = read_models(&db).await;
    assert_eq!(
        built, rebuilt,
        "a rebuild gives the read models it replaces"
    );
    engine.shutdown().await;

    // The aggregate loads through the upcasting handle; the raw log of v1 deposits cannot
    // be decoded as v2 without it.
    let load = |store: EventStore| async move {
        CommandBus::new(store)
            .load::<Account>("1")
            .await
            .map(|(account, version)| (account.balance, version))
    };
    let loaded = load(evolution.upcasting.clone())
        .await
        .expect("loads upcast");
    if mixed {
        // The log keeps the v1 events as written.
        let written: Vec<(i32, Value)> = read_all(&store)
            .await
            .into_iter()
            .filter(|e| e.event_type == "MoneyDeposited")
            .map(|e| (e.schema_version, e.payload))
            .collect();
        assert_eq!(written[0], (1, json!({"amount": 100})));
        assert!(
            matches!(
                load(store.without_read_hook()).await,
                Err(CommandError::Decode { .. })
            ),
            "v1 deposits need the upcaster"
        );
        // New deposits are written as v2, with the currency.
        let outcome = CommandBus::new(evolution.upcasting.clone())
            .execute::<Account>("1", &AccountCommand::Deposit { amount: 9 })
            .await
            .expect("the deposit goes through");
        let last = store
            .read_log(outcome.position() - 1, &Default::default(), 1)
            .await
            .unwrap();
        assert_eq!(last[0].schema_version, 2);
        assert_eq!(last[0].payload, json!({"amount": 9, "currency": "EUR"}));
    }
    store.shutdown().await;
    store.pool().close();
    (rebuilt, loaded)
}

#[tokio::test]
async fn a_log_holding_both_versions_of_money_deposited_rebuilds_to_the_same_read_models() {
    let (from_mixed, loaded_mixed) = bank_log(true).await;
    let (from_v2, loaded_v2) = bank_log(false).await;

    assert_eq!(from_mixed, from_v2);
    assert_eq!(
        from_mixed.2,
        BTreeMap::from([("EUR".to_string(), (4, 162)), ("USD".to_string(), (1, 20))]),
        "the fold of the upcast deposits"
    );
    assert_eq!(loaded_mixed, (125, Some(4)));
    assert_eq!(loaded_v2, loaded_mixed);
}
