//! Built-in subscriptions: the log (catch-up then live), projection progress, and the
//! changes of a windowed projection's windows.

use super::scalars::Int64;
use super::types::{Event, Projection, WindowResult};
use crate::auth::{Role, RoleGuard};
use crate::error::ApiError;
use crate::Tidemark;
use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};
use std::time::Duration;
use tidemark_projections::windowed::WindowQuery;
use tidemark_projections::ProjectionStatus;
use tidemark_store::{LogFilter, SubscribeOptions};

/// Subscriptions every Tidemark server has.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinSubscription;

#[Subscription]
impl BuiltinSubscription {
    /// Events after `after`, first the history then live, each exactly once and in order.
    /// To resume after a disconnect, subscribe again with the last position received.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Int64(0)")] after: Int64,
        category: Option<String>,
        types: Option<Vec<String>>,
    ) -> Result<impl Stream<Item = Result<Event>>> {
        let after = after.0;
        let tidemark = Tidemark::from_ctx(ctx)?;
        if after < 0 {
            return Err(ApiError::bad_input("after", "after must not be negative").into());
        }
        let options = SubscribeOptions {
            after,
            filter: LogFilter {
                categories: category.into_iter().collect(),
                event_types: types.unwrap_or_default(),
                partition: None,
            },
            page_size: 500,
        };
        let stop = tidemark.shutdown_token();
        let stream = tidemark
            .store()
            .subscribe(options)
            .map(|item| item.map(Event).map_err(async_graphql::Error::from))
            .take_until(async move { stop.cancelled().await });
        Ok(stream)
    }

    /// Windows of a windowed projection as they change: by default each window when it
    /// becomes final or is revised (with `finalOnly: false`, every change), from now on,
    /// in the order they changed (checked every `intervalMs`). A change is sent once every
    /// lane of the projection has passed it, so none is skipped; after a rebuild swaps in,
    /// rows it rebuilt may be sent again.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn window_changes(
        &self,
        ctx: &Context<'_>,
        projection: String,
        key: Option<String>,
        #[graphql(default = true)] final_only: bool,
        #[graphql(default = 500)] interval_ms: i32,
    ) -> Result<impl Stream<Item = Result<WindowResult>>> {
        let tidemark = Tidemark::from_ctx(ctx)?.clone();
        let every = polling_interval(interval_ms)?;
        // Unknown or unwindowed projections fail now, not on the first tick.
        let probe = WindowQuery {
            limit: 1,
            ..WindowQuery::default()
        };
        tidemark.engine().windows(&projection, &probe).await?;
        let cursor = tidemark.engine().lowest_checkpoint(&projection).await?;
        let stop = tidemark.shutdown_token();
        let state = (tidemark, cursor, true);
        let stream = futures::stream::unfold(state, move |(tidemark, cursor, first)| {
            let (projection, key) = (projection.clone(), key.clone());
            async move {
                if !first {
                    tokio::time::sleep(every).await;
                }
                let changes = async {
                    let horizon = tidemark.engine().lowest_checkpoint(&projection).await?;
                    // Every change up to the horizon, however many: the horizon moves with the
                    // lanes, so one poll holds what they committed since the last.
                    let query = WindowQuery {
                        key,
                        final_only,
                        changed: Some((cursor, horizon)),
                        limit: i64::MAX,
                        ..WindowQuery::default()
                    };
                    let rows = tidemark.engine().windows(&projection, &query).await?;
                    Ok::<_, tidemark_projections::EngineError>((rows, horizon.max(cursor)))
                }
                .await;
                match changes {
                    Ok((rows, next)) => {
                        let items: Vec<Result<WindowResult>> = rows
                            .into_iter()
                            .map(|row| Ok(WindowResult::from(row)))
                            .collect();
                        Some((futures::stream::iter(items), (tidemark, next, false)))
                    }
                    Err(error) => Some((
                        futures::stream::iter(vec![Err(async_graphql::Error::from(error))]),
                        (tidemark, cursor, false),
                    )),
                }
            }
        })
        .flatten()
        .take_until(async move { stop.cancelled().await });
        Ok(stream)
    }

    /// A projection's status, checkpoints and build progress, sent when they change
    /// (checked every `intervalMs`).
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn projection_progress(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default = 500)] interval_ms: i32,
    ) -> Result<impl Stream<Item = Result<Projection>>> {
        let tidemark = Tidemark::from_ctx(ctx)?.clone();
        let every = polling_interval(interval_ms)?;
        // Unknown names fail now, not on the first tick.
        tidemark.engine().projection(&name)?;
        let stop = tidemark.shutdown_token();
        let state = (tidemark, name, None::<String>, true);
        let stream =
            futures::stream::unfold(state, move |(tidemark, name, last, first)| async move {
                if !first {
                    tokio::time::sleep(every).await;
                }
                match tidemark.engine().projection_status(&name).await {
                    // Only send changes.
                    Ok(status) if last.as_deref() == Some(fingerprint(&status).as_str()) => {
                        Some((None, (tidemark, name, last, false)))
                    }
                    Ok(status) => {
                        let seen = Some(fingerprint(&status));
                        Some((
                            Some(Ok(Projection::from(status))),
                            (tidemark, name, seen, false),
                        ))
                    }
                    Err(error) => {
                        let item = Some(Err(async_graphql::Error::from(error)));
                        Some((item, (tidemark, name, last, false)))
                    }
                }
            })
            .filter_map(futures::future::ready)
            .take_until(async move { stop.cancelled().await });
        Ok(stream)
    }
}

/// What a client would see change, leaving out rates and ages, which move on every read
/// (so an idle projection sends nothing).
fn fingerprint(status: &ProjectionStatus) -> String {
    let partitions: Vec<_> = status
        .partitions
        .iter()
        .map(|p| (p.checkpoint, p.lag_events))
        .collect();
    let build = status
        .last_rebuild
        .as_ref()
        .map(|b| (b.id, b.status, b.events_done, b.events_total, b.position));
    let unowned: Vec<i16> = status
        .unowned_partitions
        .iter()
        .map(|u| u.partition)
        .collect();
    format!(
        "{} {:?} {} {} {:?} {:?} {:?}",
        status.status, status.live_version, status.head, status.parked, partitions, build, unowned
    )
}

/// A subscription's `intervalMs`, checked.
fn polling_interval(interval_ms: i32) -> Result<Duration, ApiError> {
    if !(50..=60_000).contains(&interval_ms) {
        return Err(ApiError::bad_input(
            "intervalMs",
            "intervalMs must be between 50 and 60000",
        ));
    }
    Ok(Duration::from_millis(interval_ms as u64))
}
