//! What a consumer group is and what its operations take and answer: the group's
//! definition ([`GroupSpec`]: selector, start, [`Strategy`], [`GroupSettings`]), a delivered
//! [`Message`], a nack's [`NackAction`], what an ack or nack did ([`AckOutcome`]), a group's
//! [`GroupStatus`] and a [`ParkedMessage`]. The strategy's SQL spelling lives here only.

use chrono::{DateTime, Utc};
use std::time::Duration;
use tidemark_store::{LogFilter, Position, RecordedEvent};
use uuid::Uuid;

/// How a group shares its messages among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Any message to any consumer that asks (competing consumers); no order across
    /// consumers.
    #[default]
    RoundRobin,
    /// One stream's messages go to one consumer at a time, in stream order: a stream with a
    /// message in flight to one consumer gives the others nothing until that is settled.
    PinnedByStream,
    /// Only the consumer holding the group's lease gets messages, in log order; another
    /// takes over when the holder has not fetched for an ack timeout.
    SingleActive,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::RoundRobin,
        Strategy::PinnedByStream,
        Strategy::SingleActive,
    ];

    /// The spelling in `consumer_groups.strategy` (and on the command line).
    pub fn as_sql(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::PinnedByStream => "pinned_by_stream",
            Strategy::SingleActive => "single_active",
        }
    }

    pub fn parse_sql(text: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_sql() == text)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_sql())
    }
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event of the log.
    Start,
    /// After the last event at creation: only events appended later.
    End,
    /// The events after this position.
    After(Position),
}

/// Which events a group reads: stream categories and event types (each empty: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub categories: Vec<String>,
    pub event_types: Vec<String>,
}

impl Selector {
    /// The store's filter for this selector (the store's one read path serves it).
    pub fn filter(&self) -> LogFilter {
        LogFilter {
            categories: self.categories.clone(),
            event_types: self.event_types.clone(),
            partition: None,
        }
    }
}

/// How a group delivers, redelivers and gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// Messages one consumer may hold unacked at once.
    pub max_in_flight: u32,
    /// A message not acked (or nacked) this long after its delivery is delivered again.
    pub ack_timeout: Duration,
    /// After this many deliveries, a message that times out or is nacked for retry is parked.
    pub max_deliveries: u32,
    /// A nack with retry waits this long before the message is handed out again, doubled
    /// per delivery up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            max_in_flight: 100,
            ack_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
        }
    }
}

impl GroupSettings {
    /// The wait before a message nacked for retry on its `deliveries`-th delivery is handed
    /// out again: `retry_backoff` doubled per earlier delivery, up to `retry_backoff_max`.
    pub fn retry_delay(&self, deliveries: u32) -> Duration {
        let doublings = deliveries.saturating_sub(1).min(20);
        self.retry_backoff
            .saturating_mul(1 << doublings)
            .min(self.retry_backoff_max.max(self.retry_backoff))
    }
}

/// Everything that defines a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub selector: Selector,
    pub start: StartFrom,
    pub strategy: Strategy,
    pub settings: GroupSettings,
}

impl GroupSpec {
    pub fn new(name: impl Into<String>) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            selector: Selector::default(),
            start: StartFrom::Start,
            strategy: Strategy::default(),
            settings: GroupSettings::default(),
        }
    }

    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(mut self, list: I) -> Self {
        self.selector.categories = list.into_iter().map(Into::into).collect();
        self
    }

    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, list: I) -> Self {
        self.selector.event_types = list.into_iter().map(Into::into).collect();
        self
    }

    pub fn start(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    pub fn settings(mut self, settings: GroupSettings) -> Self {
        self.settings = settings;
        self
    }
}

/// One event handed to a consumer. Ack or nack it by its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub event: RecordedEvent,
    /// 1 on the first delivery; more after a timeout or a retry. A consumer seeing more than
    /// 1 may have processed it already (dedupe by `event.event_id`).
    pub delivery_count: u32,
    /// When this delivery times out (by the database's clock).
    pub deadline: DateTime<Utc>,
}

impl Message {
    pub fn position(&self) -> Position {
        self.event.position
    }
}

/// What a consumer wants done with a message it could not process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackAction {
    /// Hand it out again after the group's retry backoff (parked once it has had max
    /// deliveries).
    Retry,
    /// Set it aside now, for an operator to look at and replay.
    Park,
    /// Drop it: counted as acked (and as skipped).
    Skip,
}

/// What an ack or a nack did with the positions it named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Settled by this call.
    pub done: Vec<Position>,
    /// Not (or no longer) this consumer's: it timed out and went to another consumer, or
    /// was settled already. Nothing is lost: whoever holds it now settles it.
    pub stale: Vec<Position>,
    /// Of `done` for a nack with retry: parked instead, having had max deliveries.
    pub parked: Vec<Position>,
}

/// A group's definition and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStatus {
    pub spec: GroupSpec,
    /// The position `StartFrom` resolved to at creation: the group reads the events after it.
    pub start_after: Position,
    /// Every matching event up to here has been taken from the log.
    pub frontier: Position,
    /// Every matching event up to here is settled (acked, skipped or parked).
    pub acked_through: Position,
    /// Matching events not yet settled (outstanding ones, and those after the frontier up to
    /// the head; the latter counted up to a cap).
    pub lag_events: i64,
    /// Age of the oldest unsettled matching event, in seconds (0 when none).
    pub lag_seconds: f64,
    pub in_flight: i64,
    /// Outstanding and not in flight: waiting for a consumer (or for a retry's backoff).
    pub waiting: i64,
    pub parked: i64,
    pub delivered_total: i64,
    pub redelivered_total: i64,
    pub acked_total: i64,
    pub skipped_total: i64,
    pub parked_total: i64,
    /// The holder of a single-active group's lease, while it holds it.
    pub active_consumer: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedMessage {
    pub group: String,
    pub position: Position,
    pub event_id: Uuid,
    pub stream_id: String,
    pub recorded_at: DateTime<Utc>,
    /// The consumer that had it last (none if it was never delivered).
    pub consumer: Option<String>,
    pub deliveries: u32,
    pub reason: String,
    pub parked_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_round_trip_their_spelling() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse_sql(s.as_sql()), Some(s));
        }
        assert_eq!(Strategy::parse_sql("fastest"), None);
    }

    #[test]
    fn retry_delay_doubles_per_delivery_up_to_the_maximum() {
        let settings = GroupSettings {
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(500),
            ..GroupSettings::default()
        };
        let delays: Vec<u128> = (1..=5)
            .map(|n| settings.retry_delay(n).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }
}
