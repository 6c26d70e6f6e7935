//! Built-in subscriptions: the log (catch-up then live) and projection progress.

use super::types::{Event, Projection};
use crate::auth::{Role, RoleGuard};
use crate::error::ApiError;
use crate::Tidemark;
use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};
use std::time::Duration;
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
        #[graphql(default = 0)] after: i64,
        category: Option<String>,
        types: Option<Vec<String>>,
    ) -> Result<impl Stream<Item = Result<Event>>> {
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
        if !(50..=60_000).contains(&interval_ms) {
            return Err(ApiError::bad_input(
                "intervalMs",
                "intervalMs must be between 50 and 60000",
            )
            .into());
        }
        // Unknown names fail now, not on the first tick.
        tidemark.engine().projection(&name)?;
        let every = Duration::from_millis(interval_ms as u64);
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
