//! # A small bank on Tidemark
//!
//! - [`domain`]: the write side — customers, accounts and orders with their invariants.
//! - [`graphql`]: the commands as mutations and the read models as queries, merged with
//!   Tidemark's built-in schema by [`app`].
//! - [`schemas`]: how `MoneyDeposited` evolved (v1 `{amount}`, v2 adds `currency`): the
//!   registered schemas and the v1 → v2 upcaster that projections and the aggregate read
//!   through.
//! - [`projections`]: the read models — balances per account (a per-stream fold), totals
//!   per category and event type (a cross-stream aggregate), orders, and event-time windows
//!   ([`projections::BankWindows`]: deposits per account per 5 minutes, withdrawals per
//!   account over a sliding minute, customer sessions) — and a side-effect handler that
//!   alerts on large withdrawals.
//!
//! Streams are `account-<id>`; events are `AccountOpened`, `MoneyDeposited` (v2: with a
//! `currency`) and `MoneyWithdrawn` with an integer `amount` in cents.

pub mod domain;
pub mod graphql;
pub mod projections;
pub mod schemas;

use projections::{
    AccountBalances, AlertSink, BankWindows, CategoryTotals, LargeWithdrawalAlerts, OrdersByStatus,
};
use std::sync::Arc;
use tidemark_api::TidemarkApp;

/// Large withdrawals alert from this amount (cents) on.
pub const LARGE_WITHDRAWAL: i64 = 100_000;

/// The bank as a Tidemark application: its read models, its alert handler and its GraphQL
/// objects. `alerts` receives large-withdrawal alerts (another service in production).
pub fn app(alerts: Arc<dyn AlertSink>) -> TidemarkApp {
    let builder = schemas::register(TidemarkApp::builder())
        .name("bank")
        .projection(AccountBalances)
        .projection(CategoryTotals)
        .projection(OrdersByStatus);
    BankWindows::all()
        .iter()
        .fold(builder, |builder, windows| {
            builder.projection(windows.projection())
        })
        .handler(LargeWithdrawalAlerts {
            threshold: LARGE_WITHDRAWAL,
            sink: alerts,
        })
        .graphql_query(graphql::BankQuery)
        .graphql_mutation(graphql::BankMutation)
        .build()
}

/// An [`AlertSink`] that logs alerts: what the example binary uses instead of a real
/// notification service.
pub struct LogAlerts;

#[async_trait::async_trait]
impl AlertSink for LogAlerts {
    async fn send(&self, alert_id: String, account: &str, amount: i64) -> Result<(), String> {
        tracing::warn!(alert_id, account, amount, "large withdrawal");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::graphql::{BankMutation, BankQuery};
    use async_graphql::{EmptySubscription, Schema};

    /// `examples/bank/schema.graphql` is the SDL of the bank's own queries and mutations
    /// (Tidemark's built-ins, merged beside them, are pinned in `api/schema.graphql`),
    /// committed so a change to the bank's API shows up in review. Regenerate with
    /// `TIDEMARK_UPDATE_SCHEMA=1 cargo test -p tidemark-example-bank --lib`.
    #[test]
    fn schema_file_matches_the_code() {
        let sdl = Schema::build(BankQuery, BankMutation, EmptySubscription)
            .finish()
            .sdl();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
        if std::env::var_os("TIDEMARK_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &sdl).expect("write examples/bank/schema.graphql");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == sdl,
            "examples/bank/schema.graphql differs from the schema in the code; if the change is \
             intended, regenerate it with `TIDEMARK_UPDATE_SCHEMA=1 cargo test -p \
             tidemark-example-bank --lib` and commit it"
        );
    }
}
