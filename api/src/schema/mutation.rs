//! Built-in mutations: appending events, and the admin operations on projections.

use super::scalars::Int64;
use super::types::{
    AppendResult, BuildKind, BuildStarted, EventInput, ExpectedVersionInput, ReplayResult,
};
use crate::auth::{Role, RoleGuard};
use crate::error::ApiError;
use crate::Tidemark;
use async_graphql::{Context, Object, Result};
use tidemark_projections::BuildRequest;
use tidemark_store::{AppendRequest, ExpectedVersion, NewEvent};

/// Mutations every Tidemark server has. Applications add theirs beside these.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinMutation;

#[Object]
impl BuiltinMutation {
    /// Appends events to one stream, atomically: all of them or none.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn append_events(
        &self,
        ctx: &Context<'_>,
        stream_id: String,
        #[graphql(default_with = "ExpectedVersionInput(ExpectedVersion::Any)")]
        expected_version: ExpectedVersionInput,
        events: Vec<EventInput>,
        #[graphql(
            default = false,
            desc = "Store an event identical to one already in the stream only once"
        )]
        dedup: bool,
    ) -> Result<AppendResult> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let limits = tidemark.limits();
        if events.len() > limits.max_events_per_append {
            // Checked here too so the API's limit holds even if the store allows more.
            return Err(ApiError::bad_input(
                "events",
                format!(
                    "this append has {} events; the limit is {} per append",
                    events.len(),
                    limits.max_events_per_append
                ),
            )
            .with("count", events.len() as u64)
            .with("limit", limits.max_events_per_append as u64)
            .into());
        }
        let events = events
            .into_iter()
            .map(|e| NewEvent {
                event_id: e.event_id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.data.0,
                metadata: e
                    .metadata
                    .map(|m| m.0)
                    .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
            })
            .collect();
        let request =
            AppendRequest::new(stream_id, expected_version.0, events).with_content_dedup(dedup);
        let outcome = tidemark.store().append(request).await?;
        Ok(outcome.into())
    }

    /// Rebuilds a projection in the background from the whole log. With `from` (> 0) it is
    /// built from the events after that position only, and whatever the earlier events built
    /// is discarded: that needs `discardEarlierEvents: true`. The serving read model stays
    /// until the new one has caught up and is swapped in. A build of the same projection
    /// already running (in any process) is refused with `BUILD_RUNNING`. Follow it with
    /// `projections { lastBuild }` or the `projectionProgress` subscription.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn rebuild_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
        from: Option<Int64>,
        #[graphql(
            default = false,
            desc = "Confirms that a build `from` a position discards what the events up to it built"
        )]
        discard_earlier_events: bool,
    ) -> Result<BuildStarted> {
        let from = from.map(i64::from);
        let tidemark = Tidemark::from_ctx(ctx)?;
        let request = match from {
            Some(p) if p < 0 => {
                return Err(ApiError::bad_input("from", "from must not be negative").into())
            }
            Some(p) if p > 0 && !discard_earlier_events => {
                return Err(ApiError::bad_input(
                    "discardEarlierEvents",
                    format!(
                        "a build from position {p} keeps only what the events after it build and \
                         discards the rest; pass discardEarlierEvents: true to confirm, or omit \
                         `from` to rebuild from the whole log"
                    ),
                )
                .into());
            }
            Some(p) if p > 0 => BuildRequest::FromEventsAfter(p),
            _ => BuildRequest::Rebuild,
        };
        let schema = tidemark.engine().projection(&name)?.schema();
        let build = tidemark.engine().prepare_build(&name, request).await?;
        let kind = build.kind().into();
        let task_name = name.clone();
        tidemark.spawn_background(async move {
            match build.run(None).await {
                Ok(report) => tracing::info!(
                    projection = task_name,
                    events = report.events_applied,
                    position = report.position,
                    took = ?report.took,
                    "rebuild finished"
                ),
                Err(error) => {
                    tracing::error!(projection = task_name, %error, "rebuild failed")
                }
            }
        });
        Ok(BuildStarted {
            projection: name,
            kind,
            from_position: Int64(from.unwrap_or(0)),
            to_position: None,
            schema,
        })
    }

    /// Builds a projection over the log up to `position` into its own schema
    /// (`<schema>__asof_<label>`), in the background, for inspection or audits. A build of
    /// the same label already running is refused with `BUILD_RUNNING`.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn build_projection_as_of(
        &self,
        ctx: &Context<'_>,
        name: String,
        position: Int64,
        #[graphql(desc = "Letters, digits and '_'; names the schema")] label: String,
    ) -> Result<BuildStarted> {
        let position = position.0;
        let tidemark = Tidemark::from_ctx(ctx)?;
        if position < 0 {
            return Err(ApiError::bad_input("position", "position must not be negative").into());
        }
        let schema = format!(
            "{}__asof_{label}",
            tidemark.engine().projection(&name)?.schema()
        );
        let request = BuildRequest::AsOf {
            position,
            label: label.clone(),
        };
        let build = tidemark.engine().prepare_build(&name, request).await?;
        let task_name = name.clone();
        tidemark.spawn_background(async move {
            match build.run(None).await {
                Ok(report) => tracing::info!(
                    projection = task_name,
                    schema = report.schema,
                    "as-of build finished"
                ),
                Err(error) => tracing::error!(projection = task_name, %error, "as-of build failed"),
            }
        });
        Ok(BuildStarted {
            schema,
            projection: name,
            kind: BuildKind::AsOf,
            from_position: Int64(0),
            to_position: Some(Int64(position)),
        })
    }

    /// Applies parked events of a projection again (all, or those with `ids`), e.g. after
    /// a fix. A projection stopped on a poison event resumes.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn replay_parked(
        &self,
        ctx: &Context<'_>,
        name: String,
        ids: Option<Vec<Int64>>,
    ) -> Result<ReplayResult> {
        let ids: Option<Vec<i64>> = ids.map(|ids| ids.into_iter().map(i64::from).collect());
        let tidemark = Tidemark::from_ctx(ctx)?;
        let replayed = tidemark
            .engine()
            .replay_parked(&name, ids.as_deref())
            .await?;
        Ok(ReplayResult {
            projection: name,
            replayed: replayed as i32,
        })
    }
}
