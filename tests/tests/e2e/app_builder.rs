//! An application built with `TidemarkApp::builder()`: its own queries and mutations merged
//! with the built-in ones, commands through the command bus, a read model read with
//! `@waitFor` (read-your-writes), and racing commands that keep the invariant.

use crate::common;

use async_graphql::{Context, Object};
use async_trait::async_trait;
use common::*;
use serde_json::json;
use tidemark_api::{ApiResult, Role, RoleGuard, Tidemark, TidemarkApp};
use tidemark_projections::{
    ApplyContext, EventSelector, Projection, ProjectionError, RecordedEvent,
};
use tidemark_store::aggregate::Aggregate;

/// A counter that may never exceed 10.
#[derive(Default)]
struct Counter {
    value: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum CounterEvent {
    Incremented { by: i64 },
}

impl Aggregate for Counter {
    type Command = i64;
    type Event = CounterEvent;
    type Error = LimitExceeded;
    const CATEGORY: &'static str = "counter";

    fn apply(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::Incremented { by } => self.value += by,
        }
    }

    fn handle(&self, by: &i64) -> Result<Vec<CounterEvent>, LimitExceeded> {
        if self.value + by > 10 {
            return Err(LimitExceeded(self.value));
        }
        Ok(vec![CounterEvent::Incremented { by: *by }])
    }
}

#[derive(Debug)]
struct LimitExceeded(i64);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the counter is at {} and may not exceed 10", self.0)
    }
}

impl std::error::Error for LimitExceeded {}

/// The read model: the value of each counter.
struct CounterValues;

#[async_trait]
impl Projection for CounterValues {
    fn name(&self) -> &str {
        "counter_values"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["counter"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table("values", "id text PRIMARY KEY, value bigint NOT NULL")
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let sql = format!(
            "INSERT INTO {} AS v VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET value = v.value + EXCLUDED.value",
            ctx.table("values")
        );
        for event in events {
            let by = event.payload["by"].as_i64().unwrap_or(0);
            ctx.tx.execute(&sql, &[&event.stream_id, &by]).await?;
        }
        Ok(())
    }
}

#[derive(Clone, Default)]
struct CounterQuery;

#[Object]
impl CounterQuery {
    /// A counter's value from the read model (0 when unknown).
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn counter(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<i64> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let client = tidemark.store().pool().get().await?;
        let row = client
            .query_opt(
                "SELECT value FROM rm_counter_values.values WHERE id = $1",
                &[&Counter::stream_id(&id)],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }
}

#[derive(Clone, Default)]
struct CounterMutation;

#[Object]
impl CounterMutation {
    /// Adds `by` to a counter; returns the position to wait for.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn increment(&self, ctx: &Context<'_>, id: String, by: i64) -> ApiResult<i64> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let outcome = tidemark.commands().execute::<Counter>(&id, &by).await?;
        Ok(outcome.position())
    }
}

fn counter_app() -> TidemarkApp {
    TidemarkApp::builder()
        .name("counters")
        .projection(CounterValues)
        .graphql_query(CounterQuery)
        .graphql_mutation(CounterMutation)
        .build()
}

#[tokio::test]
async fn a_command_changes_the_read_model_and_wait_for_reads_it_back() {
    let app = spawn_app_with(counter_app(), |_| {}).await;
    let body = app
        .graphql(
            "mutation { increment(id: \"a\", by: 3) }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    assert_no_errors(&body);
    let position = body["data"]["increment"].as_i64().unwrap();

    // Read-your-writes in one query: the directive waits for the projection.
    let body = app
        .graphql(
            "query($p: Int64!) { counter(id: \"a\") @waitFor(projection: \"counter_values\", position: $p) head }",
            json!({ "p": position }),
            Some(READ_KEY),
        )
        .await;
    assert_no_errors(&body);
    assert_eq!(body["data"]["counter"], 3);
    assert_eq!(body["data"]["head"], position);

    // A broken rule is REJECTED with the aggregate's sentence, and writes nothing.
    let body = app
        .graphql(
            "mutation { increment(id: \"a\", by: 8) }",
            json!({}),
            Some(APPEND_KEY),
        )
        .await;
    let error = assert_error(&body, "REJECTED");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("may not exceed 10"));

    // A wait that cannot complete times out with TIMEOUT instead of stale data.
    let body = app
        .graphql(
            "{ counter(id: \"a\") @waitFor(projection: \"counter_values\", position: 999, timeoutMs: 100) }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&body, "TIMEOUT");
}

#[tokio::test]
async fn racing_commands_keep_the_invariant() {
    let app = spawn_app_with(counter_app(), |_| {}).await;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let client = app.client.clone();
            let url = format!("{}/graphql", app.address);
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("authorization", format!("Bearer {APPEND_KEY}"))
                    .json(&json!({ "query": "mutation { increment(id: \"race\", by: 3) }" }))
                    .send()
                    .await
                    .unwrap();
                response.json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    let mut succeeded = 0;
    for racer in racers {
        let body = racer.await.unwrap();
        match error_code(&body) {
            None => succeeded += 1,
            Some(code) => assert!(
                code == "REJECTED" || code == "WRONG_EXPECTED_VERSION",
                "unexpected {body}"
            ),
        }
    }
    // 3 x 3 fits under 10, a 4th does not (a racer may also give up after its retries).
    assert!((1..=3).contains(&succeeded), "{succeeded} succeeded");
    let events = app
        .graphql(
            "{ stream(id: \"counter-race\") { version } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_eq!(events["data"]["stream"]["version"], succeeded - 1);
}

/// An application whose query object is named `Query` (the natural choice).
#[derive(Default, Clone)]
struct Query;

#[Object]
impl Query {
    async fn greeting(&self) -> &str {
        "hello"
    }
}

/// Naming the application's query type `Query` is refused at start with a sentence that
/// says what to rename — before the database is touched (no migration ran) — instead of a
/// name-clash panic after the migrations.
#[tokio::test]
async fn an_application_query_named_query_is_refused_before_the_database_is_touched() {
    let db = tidemark_testkit::TestDatabase::create().await;
    let app = TidemarkApp::builder().graphql_query(Query).build();
    let config = test_config(tidemark_api::DatabaseConfig::url(db.url()));
    let error = match tidemark_api::Application::build(config, app).await {
        Ok(_) => panic!("an application with a query type named Query started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("GraphQL query object is named `Query`")
            && error.contains("#[graphql(name = \"AppQuery\")]"),
        "{error}"
    );
    let client = tidemark_testkit::connect(&db).await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("counting tables")
        .get(0);
    assert_eq!(tables, 0, "migrations ran before the clash was found");
}
