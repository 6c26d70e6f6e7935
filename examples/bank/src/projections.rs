//! Read models of the bank and a side-effect handler.

use async_trait::async_trait;
use std::sync::Arc;
use tidemark_projections::windowing::{
    Aggregate, EventTimeSource, FieldPath, KeySource, LatePolicy, MissingTimePolicy,
    WatermarkConfig, WindowConfig, WindowSpec,
};
use tidemark_projections::{
    ApplyContext, EventSelector, Handler, Projection, ProjectionError, RecordedEvent,
    WindowedProjection,
};

/// An event's `amount` in cents; 0 for events without one.
fn amount_of(event: &RecordedEvent) -> i64 {
    event
        .payload
        .get("amount")
        .and_then(|a| a.as_i64())
        .unwrap_or(0)
}

/// Creates the read model's table `name` with `columns` (SQL) and an index on each of
/// `indexed`, in one batch: every projection's `setup` is this.
async fn create_table(
    ctx: &ApplyContext<'_>,
    name: &str,
    columns: &str,
    indexed: &[&str],
) -> Result<(), ProjectionError> {
    ctx.create_table(name, columns).await?;
    for column in indexed {
        ctx.tx
            .batch_execute(&format!("CREATE INDEX ON {} ({column})", ctx.table(name)))
            .await?;
    }
    Ok(())
}

/// Balance per account: a per-stream fold. `version` is the last stream version applied, so
/// readers can tell how fresh a row is.
pub struct AccountBalances;

#[async_trait]
impl Projection for AccountBalances {
    fn name(&self) -> &str {
        "account_balances"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["account"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        let columns = "account_id text PRIMARY KEY, owner text, balance bigint NOT NULL DEFAULT 0,
                       version bigint NOT NULL, events bigint NOT NULL DEFAULT 0";
        create_table(ctx, "balances", columns, &[]).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS b (account_id, owner, balance, version, events) VALUES ($1, $2, $3, $4, 1)
                 ON CONFLICT (account_id) DO UPDATE
                    SET owner = coalesce(EXCLUDED.owner, b.owner), balance = b.balance + EXCLUDED.balance,
                        version = EXCLUDED.version, events = b.events + 1",
                ctx.table("balances")
            ))
            .await?;
        for event in events {
            let amount = amount_of(event);
            let (delta, owner) = match event.event_type.as_str() {
                "AccountOpened" => (0, event.payload.get("owner").and_then(|o| o.as_str())),
                "MoneyDeposited" => (amount, None),
                "MoneyWithdrawn" => (-amount, None),
                _ => continue,
            };
            ctx.tx
                .execute(
                    &upsert,
                    &[&event.stream_id, &owner, &delta, &event.stream_version],
                )
                .await?;
        }
        Ok(())
    }
}

/// Event counts and amount sums per (category, event type): a cross-stream aggregate.
pub struct CategoryTotals;

#[async_trait]
impl Projection for CategoryTotals {
    fn name(&self) -> &str {
        "category_totals"
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        let columns =
            "category text, event_type text, events bigint NOT NULL, amount bigint NOT NULL,
                       PRIMARY KEY (category, event_type)";
        create_table(ctx, "totals", columns, &[]).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        // Fold the batch in memory first: one row write per key instead of per event.
        let mut sums: std::collections::BTreeMap<(&str, &str), (i64, i64)> = Default::default();
        for event in events {
            let amount = amount_of(event);
            let entry = sums
                .entry((event.category(), event.event_type.as_str()))
                .or_default();
            entry.0 += 1;
            entry.1 += amount;
        }
        let upsert = ctx
            .tx
            .prepare_cached(&format!(
                "INSERT INTO {} AS t VALUES ($1, $2, $3, $4)
                 ON CONFLICT (category, event_type) DO UPDATE
                    SET events = t.events + EXCLUDED.events, amount = t.amount + EXCLUDED.amount",
                ctx.table("totals")
            ))
            .await?;
        for ((category, event_type), (count, amount)) in sums {
            ctx.tx
                .execute(&upsert, &[&category, &event_type, &count, &amount])
                .await?;
        }
        Ok(())
    }
}

/// Orders with their status, customer and account: the read model behind order queries.
pub struct OrdersByStatus;

#[async_trait]
impl Projection for OrdersByStatus {
    fn name(&self) -> &str {
        "orders"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["order"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        let columns = "order_id text PRIMARY KEY, customer_id text NOT NULL, account_id text NOT NULL,
                       amount bigint NOT NULL, status text NOT NULL, updated_position bigint NOT NULL";
        create_table(ctx, "orders", columns, &["status"]).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let table = ctx.table("orders");
        for event in events {
            let order_id = event
                .stream_id
                .strip_prefix("order-")
                .unwrap_or(&event.stream_id);
            let p = &event.payload;
            let text = |k: &str| {
                p.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            match event.event_type.as_str() {
                "OrderPlaced" => {
                    let amount = amount_of(event);
                    ctx.tx
                        .execute(
                            &format!("INSERT INTO {table} VALUES ($1, $2, $3, $4, 'placed', $5) ON CONFLICT (order_id) DO NOTHING"),
                            &[&order_id, &text("customer_id"), &text("account_id"), &amount, &event.position],
                        )
                        .await?;
                }
                "OrderPaid" | "OrderShipped" | "OrderCancelled" => {
                    let status = match event.event_type.as_str() {
                        "OrderPaid" => "paid",
                        "OrderShipped" => "shipped",
                        _ => "cancelled",
                    };
                    ctx.tx
                        .execute(
                            &format!("UPDATE {table} SET status = $2, updated_position = $3 WHERE order_id = $1"),
                            &[&order_id, &status, &event.position],
                        )
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One of the bank's windowed read models (docs/windowing.md), rows in
/// `rm_<name>.windows`: everything that decides its rows, so that tests and audits can fold
/// the log the same way ([`BankWindows::projection`] builds the projection from it).
#[derive(Clone)]
pub struct BankWindows {
    pub name: &'static str,
    pub selector: EventSelector,
    pub key: KeySource,
    pub time: EventTimeSource,
    pub config: WindowConfig,
    pub aggregate: Aggregate,
}

/// The bank's events carry no time of their own, so their event time is `recorded_at`, the
/// time the store stamped on the append: ingestion time. It is the start of the appending
/// transaction (`now()`), so events reach the log out of time order only by as much as
/// concurrent appends overlap, well under the 5 s of out-of-orderness allowed here (an
/// append slower than that would make its events late). A partition without events for a
/// minute of log time stops holding the watermark back (idleness is measured on
/// `recorded_at` too, so rebuilds decide the same), so one quiet partition cannot keep a
/// shard's windows open. No allowed lateness: a window is final once the watermark passes its
/// end. The money sums revise a final window for the rare event later than that, for a day,
/// rather than lose it from the sum; a session count drops it (counted in the status).
fn ingestion_time(spec: WindowSpec, late_policy: LatePolicy) -> WindowConfig {
    WindowConfig {
        spec,
        allowed_lateness: 0,
        late_policy,
        watermark: WatermarkConfig {
            out_of_orderness: 5_000,
            idle_timeout: Some(60_000),
        },
    }
}

impl BankWindows {
    /// Deposits per account in 5-minute tumbling windows: the sum of the amounts.
    pub fn deposits() -> BankWindows {
        BankWindows {
            name: "deposits_5m",
            selector: EventSelector::event_types(["MoneyDeposited"]),
            // A deposit's stream is its account (`account-<id>`).
            key: KeySource::StreamId,
            time: EventTimeSource::RecordedAt,
            config: ingestion_time(
                WindowSpec::Tumbling { size: 300_000 },
                LatePolicy::Revise {
                    retention: 86_400_000,
                },
            ),
            aggregate: Aggregate::Sum(FieldPath::field("amount")),
        }
    }

    /// Withdrawals per account summed over the last minute, every 10 seconds: the velocity
    /// a fraud check looks at.
    pub fn withdrawals() -> BankWindows {
        BankWindows {
            name: "withdrawals_1m",
            selector: EventSelector::event_types(["MoneyWithdrawn"]),
            key: KeySource::StreamId,
            time: EventTimeSource::RecordedAt,
            config: ingestion_time(
                WindowSpec::Sliding {
                    size: 60_000,
                    slide: 10_000,
                },
                LatePolicy::Revise {
                    retention: 86_400_000,
                },
            ),
            aggregate: Aggregate::Sum(FieldPath::field("amount")),
        }
    }

    /// Customer activity sessions (30 minutes without activity end one): events per
    /// session, over the events that name the customer (`CustomerRegistered`, `OrderPlaced`).
    pub fn customer_sessions() -> BankWindows {
        BankWindows {
            name: "customer_sessions",
            selector: EventSelector::event_types(["CustomerRegistered", "OrderPlaced"]),
            key: KeySource::Payload(FieldPath::field("customer_id")),
            time: EventTimeSource::RecordedAt,
            config: ingestion_time(WindowSpec::Session { gap: 1_800_000 }, LatePolicy::Drop),
            aggregate: Aggregate::Count,
        }
    }

    /// The three, in registration order.
    pub fn all() -> [BankWindows; 3] {
        [
            BankWindows::deposits(),
            BankWindows::withdrawals(),
            BankWindows::customer_sessions(),
        ]
    }

    /// The projection. The configurations above are constants, checked by the unit test
    /// `windowed_read_models_are_valid`, so this cannot fail.
    pub fn projection(&self) -> WindowedProjection<Aggregate> {
        WindowedProjection::new(self.name, self.config.clone(), self.aggregate.clone())
            .expect("the bank's window configurations are valid (unit-tested)")
            .with_selector(self.selector.clone())
            .with_key(self.key.clone())
            .with_event_time(self.time.clone(), MissingTimePolicy::Park)
    }
}

/// Where alerts go: in production another service; in tests, a recorder.
#[async_trait]
pub trait AlertSink: Send + Sync + 'static {
    /// Must tolerate the same `alert_id` twice (delivery is at-least-once).
    async fn send(&self, alert_id: String, account: &str, amount: i64) -> Result<(), String>;
}

/// Alerts on withdrawals of at least `threshold` cents: a side effect outside Postgres.
pub struct LargeWithdrawalAlerts {
    pub threshold: i64,
    pub sink: Arc<dyn AlertSink>,
}

#[async_trait]
impl Handler for LargeWithdrawalAlerts {
    fn name(&self) -> &str {
        "large_withdrawal_alerts"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::event_types(["MoneyWithdrawn"])
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let amount = amount_of(event);
        if amount < self.threshold {
            return Ok(());
        }
        self.sink
            .send(event.event_id.to_string(), &event.stream_id, amount)
            .await
            .map_err(ProjectionError::transient)
    }
}

/// Fresh folds of the log, for tests and audits: what the read models must equal.
pub mod fold {
    use super::amount_of;
    use std::collections::BTreeMap;
    use tidemark_projections::RecordedEvent;

    /// account id -> (balance, last version, event count), over account events.
    pub fn balances<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> BTreeMap<String, (i64, i64, i64)> {
        let mut out: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for event in events.into_iter().filter(|e| e.category() == "account") {
            let amount = amount_of(event);
            let delta = match event.event_type.as_str() {
                "MoneyDeposited" => amount,
                "MoneyWithdrawn" => -amount,
                "AccountOpened" => 0,
                _ => continue,
            };
            let entry = out.entry(event.stream_id.clone()).or_default();
            entry.0 += delta;
            entry.1 = event.stream_version;
            entry.2 += 1;
        }
        out
    }

    /// (category, event type) -> (count, amount sum).
    pub fn totals<'a>(
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> BTreeMap<(String, String), (i64, i64)> {
        let mut out: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for event in events {
            let amount = amount_of(event);
            let entry = out
                .entry((event.category().to_string(), event.event_type.clone()))
                .or_default();
            entry.0 += 1;
            entry.1 += amount;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::BankWindows;
    use tidemark_projections::Projection;

    #[test]
    fn windowed_read_models_are_valid() {
        for windows in BankWindows::all() {
            assert!(
                windows.config.validate().is_ok(),
                "{}: {:?}",
                windows.name,
                windows.config.validate()
            );
            assert_eq!(windows.projection().name(), windows.name);
        }
    }
}
