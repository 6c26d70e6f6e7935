//! A Tidemark application: one projection and one GraphQL query that reads it.

use async_graphql::{Context, Object};
use tidemark_api::{ApiError, ApiResult, Role, RoleGuard, Tidemark, TidemarkApp};
use tidemark_projections::{
    ApplyContext, EventSelector, Projection, ProjectionError, RecordedEvent,
};

/// A read model: how many events each stream of category `visit` holds.
struct VisitCounts;

#[async_trait::async_trait]
impl Projection for VisitCounts {
    fn name(&self) -> &str {
        "visit_counts"
    }

    fn selector(&self) -> EventSelector {
        EventSelector::categories(["visit"])
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        ctx.create_table("counts", "page text PRIMARY KEY, visits bigint NOT NULL")
            .await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let upsert = format!(
            "INSERT INTO {} AS c VALUES ($1, 1) \
             ON CONFLICT (page) DO UPDATE SET visits = c.visits + 1",
            ctx.table("counts")
        );
        for event in events {
            ctx.tx.execute(&upsert, &[&event.stream_id]).await?;
        }
        Ok(())
    }
}

#[derive(Clone, Default)]
pub struct VisitQuery;

#[Object]
impl VisitQuery {
    /// Visits of one page (stream `visit-<page>`), from the read model.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn visits(&self, ctx: &Context<'_>, page: String) -> ApiResult<i64> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let table = tidemark.read_model_table("visit_counts", "counts")?;
        let client = tidemark
            .store()
            .pool()
            .get()
            .await
            .map_err(ApiError::internal)?;
        let row = client
            .query_opt(
                &format!("SELECT visits FROM {table} WHERE page = $1"),
                &[&format!("visit-{page}")],
            )
            .await
            .map_err(ApiError::internal)?;
        Ok(row.map_or(0, |row| row.get(0)))
    }
}

pub fn app() -> TidemarkApp {
    TidemarkApp::builder()
        .name("visits")
        .projection(VisitCounts)
        .graphql_query(VisitQuery)
        .build()
}
