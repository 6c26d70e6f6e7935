//! `@waitFor`: read-your-writes inside one query. On a field that reads a read model, it
//! waits until the named projection has applied every event up to `position` (e.g. the
//! `lastPosition` a mutation returned) before resolving the field:
//!
//! ```graphql
//! { balance(id: "a") @waitFor(projection: "account_balances", position: 42) { amount } }
//! ```
//!
//! When the wait times out the field fails with `TIMEOUT` rather than answer stale data.

use super::scalars::Int64;
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ErrorCode};
use crate::Tidemark;
use async_graphql::extensions::ResolveFut;
use async_graphql::{Context, CustomDirective, Directive, ServerError, ServerResult, Value};

struct WaitFor {
    projection: String,
    position: i64,
    timeout_ms: i32,
}

impl WaitFor {
    async fn wait(&self, ctx: &Context<'_>) -> Result<(), ApiError> {
        let principal = ctx.data_opt::<Principal>().unwrap_or(&Principal::Anonymous);
        principal.check(Role::Read)?;
        let tidemark = ctx
            .data_opt::<Tidemark>()
            .ok_or_else(|| ApiError::internal("the schema was built without a Tidemark handle"))?;
        let timeout =
            crate::schema::query::clamp_wait(self.timeout_ms, tidemark.limits().max_wait)?;
        let reached = tidemark
            .wait_for_position(&self.projection, self.position, timeout)
            .await?;
        if !reached {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "projection '{}' did not reach position {} within {} ms; retry shortly",
                    self.projection, self.position, self.timeout_ms
                ),
            )
            .with("projection", self.projection.as_str())
            .with("position", self.position)
            .with("retryAfterMs", crate::error::RETRY_AFTER_MS));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl CustomDirective for WaitFor {
    async fn resolve_field(
        &self,
        ctx: &Context<'_>,
        resolve: ResolveFut<'_>,
    ) -> ServerResult<Option<Value>> {
        if let Err(error) = self.wait(ctx).await {
            let mut error: ServerError = error.into_server_error();
            error.locations = vec![ctx.item.pos];
            return Err(ctx.set_error_path(error));
        }
        resolve.await
    }
}

/// Waits until `projection` has applied every event up to `position` before resolving
/// this field (read-your-writes); fails with `TIMEOUT` after `timeoutMs`.
#[Directive(location = "Field", name = "waitFor")]
pub fn wait_for(
    projection: String,
    position: Int64,
    #[graphql(default = 2000)] timeout_ms: i32,
) -> impl CustomDirective {
    WaitFor {
        projection,
        position: position.0,
        timeout_ms,
    }
}
