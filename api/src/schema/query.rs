//! Built-in queries: the log, streams, projections, workers, read-your-writes waits.

use super::scalars::Int64;
use super::types::{
    Event, EventPage, PageInfo, PoolScaling, Projection, StreamPage, WaitResult, WindowResult,
    Worker,
};
use crate::auth::{Role, RoleGuard};
use crate::error::ApiError;
use crate::Tidemark;
use async_graphql::{Context, Object, Result};
use std::time::Duration;
use tidemark_projections::windowed::WindowQuery;
use tidemark_store::{Direction, LogFilter};

/// Queries every Tidemark server has. Applications add theirs beside these.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinQuery;

#[Object]
impl BuiltinQuery {
    /// Events of the whole log after a position, optionally filtered, in commit order.
    /// Page with `after: pageInfo.endCursor`: pages have no gaps and no repeats.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    // GraphQL arguments are the resolver's parameters.
    #[allow(clippy::too_many_arguments)]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            default_with = "Int64(0)",
            desc = "Position to read after (0: from the start); a previous page's endCursor"
        )]
        after: Int64,
        #[graphql(default = 100, desc = "Most events to return")] first: i32,
        #[graphql(desc = "Only streams of this category (stream id up to the first '-')")]
        category: Option<String>,
        #[graphql(desc = "Only these event types")] types: Option<Vec<String>>,
        #[graphql(desc = "Only this partition (0 .. partitions-1)")] partition: Option<i32>,
        #[graphql(
            default = false,
            desc = "Return every event as the latest registered version of its type (schemaVersion says which); default: as written"
        )]
        upcast: bool,
    ) -> Result<EventPage> {
        let after = after.0;
        let tidemark = Tidemark::from_ctx(ctx)?;
        let first = tidemark.page_size(first)?;
        if after < 0 {
            return Err(ApiError::bad_input("after", "after must not be negative").into());
        }
        let partitions = i32::from(tidemark.store().partitions());
        let partition = match partition {
            Some(p) if !(0..partitions).contains(&p) => {
                return Err(ApiError::bad_input(
                    "partition",
                    format!("partition must be between 0 and {}", partitions - 1),
                )
                .into())
            }
            Some(p) => Some(p as i16),
            None => None,
        };
        let filter = LogFilter {
            categories: category.into_iter().collect(),
            event_types: types.unwrap_or_default(),
            partition,
        };
        let mut events = tidemark
            .reader(upcast)
            .read_log(after, &filter, first + 1)
            .await?;
        let has_next_page = events.len() > first;
        events.truncate(first);
        Ok(EventPage {
            page_info: PageInfo {
                end_cursor: events.last().map(|e| Int64(e.position)),
                has_next_page,
            },
            events: events.into_iter().map(Event).collect(),
        })
    }

    /// Events of one stream, forwards (default) or backwards. Page with
    /// `after: pageInfo.endCursor` (a stream version).
    #[graphql(guard = "RoleGuard(Role::Read)")]
    // GraphQL arguments are the resolver's parameters.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        ctx: &Context<'_>,
        id: String,
        #[graphql(
            desc = "First version to read (inclusive); default the start, or the end when backward"
        )]
        from_version: Option<Int64>,
        #[graphql(default = false)] backward: bool,
        #[graphql(
            default = false,
            desc = "Return every event as the latest registered version of its type (schemaVersion says which); default: as written"
        )]
        upcast: bool,
        #[graphql(default = 100)] first: i32,
        #[graphql(desc = "A previous page's endCursor: continue after that version")] after: Option<
            Int64,
        >,
    ) -> Result<StreamPage> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let first = tidemark.page_size(first)?;
        let (from_version, after) = (from_version.map(i64::from), after.map(i64::from));
        let direction = if backward {
            Direction::Backward
        } else {
            Direction::Forward
        };
        let from = match (after, backward) {
            (Some(after), false) => Some(after.saturating_add(1)),
            (Some(after), true) => {
                if after <= 0 {
                    return Ok(StreamPage {
                        version: tidemark.reader(false).stream_version(&id).await?.map(Int64),
                        stream_id: id,
                        events: vec![],
                        page_info: PageInfo {
                            end_cursor: None,
                            has_next_page: false,
                        },
                    });
                }
                Some(after - 1)
            }
            (None, _) => from_version,
        };
        if from.is_some_and(|v| v < 0) {
            return Err(ApiError::bad_input("fromVersion", "versions start at 0").into());
        }
        let mut events = tidemark
            .reader(upcast)
            .read_stream(&id, from, direction, first + 1)
            .await?;
        let has_next_page = events.len() > first;
        events.truncate(first);
        Ok(StreamPage {
            version: tidemark.reader(false).stream_version(&id).await?.map(Int64),
            stream_id: id,
            page_info: PageInfo {
                end_cursor: events.last().map(|e| Int64(e.stream_version)),
                has_next_page,
            },
            events: events.into_iter().map(Event).collect(),
        })
    }

    /// Position of the last event in the log (0 when empty).
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn head(&self, ctx: &Context<'_>) -> Result<Int64> {
        Ok(Int64(
            Tidemark::from_ctx(ctx)?.store().head_position().await?,
        ))
    }

    /// Every registered projection with its status, checkpoints, lag and last build.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn projections(&self, ctx: &Context<'_>) -> Result<Vec<Projection>> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        Ok(tidemark
            .engine()
            .status()
            .await?
            .into_iter()
            .map(Projection::from)
            .collect())
    }

    /// One projection; `NOT_FOUND` when no projection has that name.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn projection(&self, ctx: &Context<'_>, name: String) -> Result<Projection> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        Ok(tidemark.engine().projection_status(&name).await?.into())
    }

    /// Results of a windowed projection: one row per key and window, by key then window
    /// start. `from`/`to` keep windows overlapping that time range; `finalOnly` keeps results
    /// that will not change again except by a revision. `BAD_INPUT` when the projection is
    /// not windowed.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    #[allow(clippy::too_many_arguments)]
    async fn windows(
        &self,
        ctx: &Context<'_>,
        projection: String,
        key: Option<String>,
        from: Option<chrono::DateTime<chrono::Utc>>,
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[graphql(default = false)] final_only: bool,
        #[graphql(default = 100)] first: i32,
    ) -> Result<Vec<WindowResult>> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let query = WindowQuery {
            key,
            from,
            to,
            final_only,
            changed: None,
            limit: tidemark.page_size(first)? as i64,
        };
        Ok(tidemark
            .engine()
            .windows(&projection, &query)
            .await?
            .into_iter()
            .map(WindowResult::from)
            .collect())
    }

    /// The worker registry: every process running projections, alive or recently gone,
    /// with the partition leases it holds.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn workers(&self, ctx: &Context<'_>) -> Result<Vec<Worker>> {
        let engine = Tidemark::from_ctx(ctx)?.engine();
        let me = engine.worker_id();
        Ok(engine
            .workers()
            .await?
            .into_iter()
            .map(|info| Worker {
                current: info.id == me,
                info,
            })
            .collect())
    }

    /// `desiredWorkers` per worker pool, from the live workers' latest heartbeats: wire it to
    /// an autoscaler (the same figure is the `tidemark_desired_workers` Prometheus gauge).
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn scaling(&self, ctx: &Context<'_>) -> Result<Vec<PoolScaling>> {
        let engine = Tidemark::from_ctx(ctx)?.engine();
        Ok(engine
            .pool_scaling()
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Waits until `projection`'s read model reflects every event up to `position` (e.g.
    /// the `lastPosition` of an append), at most `timeoutMs`. For the same guarantee inside
    /// one query, put `@waitFor(projection:, position:)` on the fields that read the model.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn wait_for(
        &self,
        ctx: &Context<'_>,
        projection: String,
        position: Int64,
        #[graphql(default = 2000)] timeout_ms: i32,
    ) -> Result<WaitResult> {
        let position = position.0;
        let tidemark = Tidemark::from_ctx(ctx)?;
        let timeout = tidemark.wait_timeout(timeout_ms)?;
        let reached = tidemark
            .wait_for_position(&projection, position, timeout)
            .await?;
        Ok(WaitResult {
            reached,
            projection,
            position: Int64(position),
        })
    }
}

/// Clamps a client's `first` into the configured page size.
pub(crate) fn clamp_page(first: i32, max: usize) -> std::result::Result<usize, ApiError> {
    if first < 1 {
        return Err(ApiError::bad_input("first", "first must be at least 1"));
    }
    let first = first as usize;
    if first > max {
        return Err(
            ApiError::bad_input("first", format!("first may be at most {max}"))
                .with("limit", max as u64),
        );
    }
    Ok(first)
}

/// A client's timeout, bounded by the configured maximum.
pub(crate) fn clamp_wait(
    timeout_ms: i32,
    max: Duration,
) -> std::result::Result<Duration, ApiError> {
    if timeout_ms < 0 {
        return Err(ApiError::bad_input(
            "timeoutMs",
            "timeoutMs must not be negative",
        ));
    }
    let wanted = Duration::from_millis(timeout_ms as u64);
    if wanted > max {
        return Err(ApiError::bad_input(
            "timeoutMs",
            format!("timeoutMs may be at most {}", max.as_millis()),
        ));
    }
    Ok(wanted)
}
