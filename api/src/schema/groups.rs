//! Consumer groups over GraphQL (`docs/consumer-groups.md`): consumers in any language pull
//! with `fetch` (a long poll), then `ack` or `nack`; operators create and delete groups,
//! read their lag and counters, and list and replay parked messages.
//!
//! The push form is the `consumerGroupMessages` subscription (over the GraphQL WebSocket):
//! the same deliveries as `fetch`, sent as they become ready; settled with `ack`/`nack`.
//!
//! Roles: reading groups is `read`; `fetch`, `ack`, `nack` and the subscription change a
//! group's state (what is in flight to whom), so they need `append`; creating, deleting and replaying are
//! `admin`. Errors: `GROUP_NOT_FOUND`, `GROUP_EXISTS`, `BAD_INPUT` (with the field).

use super::scalars::Int64;
use super::types::Event;
use crate::auth::{Role, RoleGuard};
use crate::error::{ApiError, ApiResult};
use crate::Tidemark;
use async_graphql::{Context, Enum, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use std::time::Duration;
use tidemark_consumers::{
    GroupSettings, GroupSpec, GroupStatus, Message, ParkedMessage, Selector, StartFrom,
};

/// How a group shares its messages among its consumers.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "tidemark_consumers::Strategy")]
pub enum ConsumerStrategy {
    /// Any message to any consumer that fetches (competing consumers); no order across
    /// consumers.
    RoundRobin,
    /// One stream's messages go to one consumer at a time, in stream order.
    PinnedByStream,
    /// Only the consumer holding the group's lease gets messages, in log order; another
    /// takes over once the holder has not fetched for an ack timeout.
    SingleActive,
}

/// Where a new group starts reading (`startAfter` gives a position instead).
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStart {
    /// The first event of the log.
    #[default]
    Beginning,
    /// Only events appended after the group is created.
    End,
}

/// What to do with messages a consumer could not process.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(remote = "tidemark_consumers::NackAction")]
pub enum NackAction {
    /// Deliver again after the group's retry backoff (parked once it had max deliveries).
    #[default]
    Retry,
    /// Set aside now, for an operator to inspect and replay.
    Park,
    /// Drop it: settled as if acked, and counted as skipped.
    Skip,
}

/// A consumer group: its definition, where it is, and its counters.
pub struct ConsumerGroup(pub GroupStatus);

#[Object]
impl ConsumerGroup {
    async fn name(&self) -> &str {
        &self.0.spec.name
    }
    /// Stream categories read (empty: all).
    async fn categories(&self) -> &[String] {
        &self.0.spec.selector.categories
    }
    /// Event types read (empty: all).
    async fn event_types(&self) -> &[String] {
        &self.0.spec.selector.event_types
    }
    async fn strategy(&self) -> ConsumerStrategy {
        self.0.spec.strategy.into()
    }
    /// Messages one consumer may hold unacked at once.
    async fn max_in_flight(&self) -> i32 {
        self.0.spec.settings.max_in_flight as i32
    }
    async fn ack_timeout_ms(&self) -> Int64 {
        Int64(self.0.spec.settings.ack_timeout.as_millis() as i64)
    }
    async fn max_deliveries(&self) -> i32 {
        self.0.spec.settings.max_deliveries as i32
    }
    async fn retry_backoff_ms(&self) -> Int64 {
        Int64(self.0.spec.settings.retry_backoff.as_millis() as i64)
    }
    async fn retry_backoff_max_ms(&self) -> Int64 {
        Int64(self.0.spec.settings.retry_backoff_max.as_millis() as i64)
    }
    /// The group reads the events after this position.
    async fn start_after(&self) -> Int64 {
        Int64(self.0.start_after)
    }
    /// Every matching event up to here has been taken from the log.
    async fn frontier(&self) -> Int64 {
        Int64(self.0.frontier)
    }
    /// Every matching event up to here is settled (acked, skipped or parked).
    async fn acked_through(&self) -> Int64 {
        Int64(self.0.acked_through)
    }
    /// Matching events not settled yet.
    async fn lag_events(&self) -> Int64 {
        Int64(self.0.lag_events)
    }
    /// Age of the oldest unsettled matching event, in seconds.
    async fn lag_seconds(&self) -> f64 {
        self.0.lag_seconds
    }
    /// Messages delivered and not yet acked or nacked.
    async fn in_flight(&self) -> Int64 {
        Int64(self.0.in_flight)
    }
    /// Messages taken from the log and waiting for a consumer (or a retry's backoff).
    async fn waiting(&self) -> Int64 {
        Int64(self.0.waiting)
    }
    /// Parked messages (see `parkedDeliveries`).
    async fn parked(&self) -> Int64 {
        Int64(self.0.parked)
    }
    async fn delivered_total(&self) -> Int64 {
        Int64(self.0.delivered_total)
    }
    /// Deliveries of a message delivered before (after a timeout or a retry).
    async fn redelivered_total(&self) -> Int64 {
        Int64(self.0.redelivered_total)
    }
    async fn acked_total(&self) -> Int64 {
        Int64(self.0.acked_total)
    }
    async fn skipped_total(&self) -> Int64 {
        Int64(self.0.skipped_total)
    }
    async fn parked_total(&self) -> Int64 {
        Int64(self.0.parked_total)
    }
    /// The consumer holding a single-active group, while it holds it.
    async fn active_consumer(&self) -> Option<&str> {
        self.0.active_consumer.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One event delivered to a consumer: ack or nack it by `position`.
pub struct ConsumerMessage(pub Message);

#[Object]
impl ConsumerMessage {
    async fn position(&self) -> Int64 {
        Int64(self.0.event.position)
    }
    /// 1 on the first delivery. More: it was delivered before and may have been processed
    /// already (dedupe by `event.eventId`).
    async fn delivery_count(&self) -> i32 {
        self.0.delivery_count as i32
    }
    /// When this delivery times out and the message goes to another consumer.
    async fn deadline(&self) -> DateTime<Utc> {
        self.0.deadline
    }
    async fn event(&self) -> Event {
        Event(self.0.event.clone())
    }
}

/// What an `ack` or `nack` did with the positions it named.
#[derive(SimpleObject)]
pub struct AckResult {
    /// Settled by this call.
    pub done: Vec<Int64>,
    /// Not (or no longer) this consumer's: it timed out and went to another consumer, or
    /// was settled already. Nothing is lost: whoever holds it now settles it.
    pub stale: Vec<Int64>,
    /// Of `done`, for a nack with `RETRY`: parked instead, having had max deliveries.
    pub parked: Vec<Int64>,
}

impl From<tidemark_consumers::AckOutcome> for AckResult {
    fn from(o: tidemark_consumers::AckOutcome) -> Self {
        let list = |v: Vec<i64>| v.into_iter().map(Int64).collect();
        AckResult {
            done: list(o.done),
            stale: list(o.stale),
            parked: list(o.parked),
        }
    }
}

/// A message set aside: past max deliveries, or parked by a consumer.
pub struct ParkedDelivery(pub ParkedMessage);

#[Object]
impl ParkedDelivery {
    async fn group(&self) -> &str {
        &self.0.group
    }
    async fn position(&self) -> Int64 {
        Int64(self.0.position)
    }
    async fn event_id(&self) -> uuid::Uuid {
        self.0.event_id
    }
    async fn stream_id(&self) -> &str {
        &self.0.stream_id
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
    /// The consumer that had it last.
    async fn consumer(&self) -> Option<&str> {
        self.0.consumer.as_deref()
    }
    async fn deliveries(&self) -> i32 {
        self.0.deliveries as i32
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    async fn parked_at(&self) -> DateTime<Utc> {
        self.0.parked_at
    }
}

/// Consumer-group queries.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupQuery;

#[Object]
impl GroupQuery {
    /// Every consumer group, by name, with its lag and counters.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn consumer_groups(&self, ctx: &Context<'_>) -> ApiResult<Vec<ConsumerGroup>> {
        let groups = Tidemark::from_ctx(ctx)?.groups();
        Ok(groups
            .list()
            .await?
            .into_iter()
            .map(ConsumerGroup)
            .collect())
    }

    /// One consumer group; `GROUP_NOT_FOUND` when there is none of that name.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn consumer_group(&self, ctx: &Context<'_>, name: String) -> ApiResult<ConsumerGroup> {
        let groups = Tidemark::from_ctx(ctx)?.groups();
        Ok(ConsumerGroup(groups.status(&name).await?))
    }

    /// Parked messages of `group` after position `after`, oldest first.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn parked_deliveries(
        &self,
        ctx: &Context<'_>,
        group: String,
        #[graphql(default)] after: Int64,
        #[graphql(default = 100)] first: i32,
    ) -> ApiResult<Vec<ParkedDelivery>> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let first = tidemark.page_size(first)?;
        let parked = tidemark
            .groups()
            .parked(&group, after.0, first as i64)
            .await?;
        Ok(parked.into_iter().map(ParkedDelivery).collect())
    }
}

/// Consumer-group mutations.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupMutation;

#[Object]
impl GroupMutation {
    /// Creates a consumer group reading the events of `categories` and `eventTypes` (each
    /// empty: all) from the beginning, the end, or after `startAfter`. Creating it again
    /// with the same definition answers the group; with another, `GROUP_EXISTS`.
    #[allow(clippy::too_many_arguments)]
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn create_consumer_group(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(default)] categories: Vec<String>,
        #[graphql(default)] event_types: Vec<String>,
        #[graphql(default)] start_at: GroupStart,
        #[graphql(desc = "Read the events after this position (instead of startAt)")]
        start_after: Option<Int64>,
        #[graphql(default_with = "ConsumerStrategy::RoundRobin")] strategy: ConsumerStrategy,
        #[graphql(default = 100)] max_in_flight: i32,
        #[graphql(default_with = "Int64(30_000)")] ack_timeout_ms: Int64,
        #[graphql(default = 5)] max_deliveries: i32,
        #[graphql(default_with = "Int64(1_000)")] retry_backoff_ms: Int64,
        #[graphql(default_with = "Int64(60_000)")] retry_backoff_max_ms: Int64,
    ) -> ApiResult<ConsumerGroup> {
        let groups = Tidemark::from_ctx(ctx)?.groups();
        let start = match (start_after, start_at) {
            (Some(_), GroupStart::End) => {
                return Err(ApiError::bad_input(
                    "startAfter",
                    "give startAfter or startAt: END, not both",
                ))
            }
            (Some(position), _) => StartFrom::After(position.0),
            (None, GroupStart::Beginning) => StartFrom::Start,
            (None, GroupStart::End) => StartFrom::End,
        };
        let spec = GroupSpec {
            name: name.clone(),
            selector: Selector {
                categories,
                event_types,
            },
            start,
            strategy: strategy.into(),
            settings: GroupSettings {
                max_in_flight: positive("maxInFlight", max_in_flight as i64)?,
                ack_timeout: millis("ackTimeoutMs", ack_timeout_ms)?,
                max_deliveries: positive("maxDeliveries", max_deliveries as i64)?,
                retry_backoff: millis("retryBackoffMs", retry_backoff_ms)?,
                retry_backoff_max: millis("retryBackoffMaxMs", retry_backoff_max_ms)?,
            },
        };
        groups.create(&spec).await?;
        Ok(ConsumerGroup(groups.status(&name).await?))
    }

    /// Deletes a consumer group with its in-flight and parked messages.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn delete_consumer_group(&self, ctx: &Context<'_>, name: String) -> ApiResult<bool> {
        Tidemark::from_ctx(ctx)?.groups().delete(&name).await?;
        Ok(true)
    }

    /// Up to `max` messages of `group` for `consumer` (a name the consumer picks and keeps),
    /// waiting up to `waitMs` for some when none is ready. Ack or nack each by position
    /// before its `deadline`, or it goes to another consumer.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn fetch(
        &self,
        ctx: &Context<'_>,
        group: String,
        consumer: String,
        #[graphql(default = 10)] max: i32,
        #[graphql(default)] wait_ms: Int64,
    ) -> ApiResult<Vec<ConsumerMessage>> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let limits = tidemark.limits();
        if wait_ms.0 < 0 || wait_ms.0 as u128 > limits.max_wait.as_millis() {
            return Err(ApiError::bad_input(
                "waitMs",
                format!(
                    "waitMs must be between 0 and {}",
                    limits.max_wait.as_millis()
                ),
            ));
        }
        // Answer before the request times out, whatever the limits say.
        let wait = Duration::from_millis(wait_ms.0 as u64).min(
            limits
                .request_timeout
                .saturating_sub(Duration::from_secs(1)),
        );
        let max = u32::try_from(max).unwrap_or(0);
        let messages = tidemark
            .groups()
            .fetch(&group, &consumer, max, wait)
            .await?;
        Ok(messages.into_iter().map(ConsumerMessage).collect())
    }

    /// Settles the messages at `positions` as processed. Positions this consumer does not
    /// hold (any more) come back as `stale`.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn ack(
        &self,
        ctx: &Context<'_>,
        group: String,
        consumer: String,
        positions: Vec<Int64>,
    ) -> ApiResult<AckResult> {
        let positions: Vec<i64> = positions.into_iter().map(|p| p.0).collect();
        let outcome = Tidemark::from_ctx(ctx)?
            .groups()
            .ack(&group, &consumer, &positions)
            .await?;
        Ok(outcome.into())
    }

    /// Settles messages this consumer could not process: `RETRY` (after the backoff),
    /// `PARK` or `SKIP`. `reason` is kept with retried and parked messages.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn nack(
        &self,
        ctx: &Context<'_>,
        group: String,
        consumer: String,
        positions: Vec<Int64>,
        #[graphql(default)] action: NackAction,
        reason: Option<String>,
    ) -> ApiResult<AckResult> {
        let positions: Vec<i64> = positions.into_iter().map(|p| p.0).collect();
        let outcome = Tidemark::from_ctx(ctx)?
            .groups()
            .nack(
                &group,
                &consumer,
                &positions,
                action.into(),
                reason.as_deref(),
            )
            .await?;
        Ok(outcome.into())
    }

    /// Hands parked messages of `group` (all, or those at `positions`) out again, their
    /// delivery count reset. Answers how many.
    #[graphql(guard = "RoleGuard(Role::Admin)")]
    async fn replay_parked_deliveries(
        &self,
        ctx: &Context<'_>,
        group: String,
        positions: Option<Vec<Int64>>,
    ) -> ApiResult<Int64> {
        let positions: Option<Vec<i64>> =
            positions.map(|list| list.into_iter().map(|p| p.0).collect());
        let replayed = Tidemark::from_ctx(ctx)?
            .groups()
            .replay_parked(&group, positions.as_deref())
            .await?;
        Ok(Int64(replayed as i64))
    }
}

/// Consumer-group subscriptions.
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupSubscription;

#[Subscription]
impl GroupSubscription {
    /// The push form of `fetch`: messages of `group` for `consumer`, sent as they become
    /// ready, each a delivery as `fetch` makes it (settle it with `ack` or `nack` before its
    /// `deadline`). At most the group's `maxInFlight` are unsettled at once: while the
    /// consumer holds that many, nothing more is sent. Messages sent to a connection that
    /// closes go to another consumer after their ack timeout. Ends with an error when the
    /// group is deleted.
    #[graphql(guard = "RoleGuard(Role::Append)")]
    async fn consumer_group_messages(
        &self,
        ctx: &Context<'_>,
        group: String,
        consumer: String,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ConsumerMessage>>> {
        let tidemark = Tidemark::from_ctx(ctx)?.clone();
        let groups = tidemark.groups().clone();
        // An unknown group fails now, not on the first poll.
        groups.status(&group).await.map_err(ApiError::from)?;
        let wait = tidemark.limits().max_wait;
        let stop = tidemark.shutdown_token();
        let batches = futures::stream::unfold(Some(groups), move |groups| {
            let (group, consumer) = (group.clone(), consumer.clone());
            async move {
                let groups = groups?;
                match groups.fetch(&group, &consumer, 100, wait).await {
                    Ok(messages) => Some((Ok(messages), Some(groups))),
                    // Said once; the stream ends.
                    Err(error) => Some((Err(ApiError::from(error)), None)),
                }
            }
        });
        let stream = batches
            .flat_map(|batch| {
                let items: Vec<async_graphql::Result<ConsumerMessage>> = match batch {
                    Ok(messages) => messages
                        .into_iter()
                        .map(|m| Ok(ConsumerMessage(m)))
                        .collect(),
                    Err(error) => vec![Err(error.into())],
                };
                futures::stream::iter(items)
            })
            .take_until(async move { stop.cancelled().await });
        Ok(stream)
    }
}

fn positive(field: &'static str, value: i64) -> ApiResult<u32> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_input(field, format!("{field} must be a positive number")))
}

fn millis(field: &'static str, value: Int64) -> ApiResult<Duration> {
    u64::try_from(value.0)
        .map(Duration::from_millis)
        .map_err(|_| ApiError::bad_input(field, format!("{field} must not be negative")))
}
