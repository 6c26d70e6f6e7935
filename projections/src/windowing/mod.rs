//! Event-time windowed aggregation: the pure core of windowed projections.
//!
//! Nothing here does I/O or reads a clock: times are passed in, every decision is a function
//! of the inputs and the state, and the state is serde-serialisable so a lane can store it
//! in the transaction that writes the results and advances the checkpoint. Semantics and the
//! wiring are described in `docs/windowing.md`. Read in this order:
//!
//! - [`time`]: where an event's time comes from ([`EventTimeSource`]) and [`event_time`].
//! - [`key`]: grouping ([`KeySource`]) and [`key_partition`] to route a key to one lane.
//! - [`window`]: [`Window`] (`[start, end)`) and [`WindowSpec`] (tumbling, sliding, session).
//! - [`aggregate`]: the [`WindowFold`] trait and the built-in numeric [`Aggregate`]s.
//! - [`watermark`]: per-partition watermarks, their minimum, idleness ([`WatermarkTracker`]).
//! - [`state`]: what is persisted ([`OperatorSnapshot`], [`StateDelta`]).
//! - [`operator`]: [`WindowOperator`], which turns events and watermarks into
//!   [`WindowChange`]s (defined in [`change`], with [`row_ops`] to net them into writes).
//! - [`field`]: [`FieldPath`], the validated JSON pointer used by the other modules.
//!
//! All times are `i64` milliseconds since the Unix epoch (UTC), like Flink's timestamps:
//! arithmetic on them is exact and cheap, and [`to_datetime`] converts for display or
//! `timestamptz` columns.

pub mod aggregate;
pub mod change;
pub mod field;
pub mod key;
pub mod operator;
pub mod state;
pub mod time;
pub mod watermark;
pub mod window;

#[cfg(test)]
mod operator_tests;
#[cfg(test)]
mod testing;

pub use aggregate::{Aggregate, FoldError, NumericAcc, WindowFold};
pub use change::{row_ops, ParkReason, RowOp, RowStatus, WindowChange, WindowResult};
pub use field::FieldPath;
pub use key::{key_partition, KeyError, KeySource};
pub use operator::{LatePolicy, WindowConfig, WindowInput, WindowOperator};
pub use state::{KeyState, OperatorMeta, OperatorSnapshot, Stage, StateDelta, WindowSlot};
pub use time::{
    event_time, parse_time_value, EventTimeSource, MissingTimePolicy, TimeError, TimeValueProblem,
};
pub use watermark::{WatermarkConfig, WatermarkState, WatermarkTracker};
pub use window::{Window, WindowSpec};

use chrono::{DateTime, Utc};

/// An instant: milliseconds since 1970-01-01T00:00:00Z.
pub type TimeMs = i64;

/// A length of time in milliseconds.
pub type DurationMs = i64;

/// The earliest accepted event time, 0000-01-01T00:00:00Z: the range of RFC 3339 years, well
/// inside PostgreSQL's `timestamptz`, and far enough from `i64::MIN` that window arithmetic
/// cannot overflow.
pub const MIN_TIME: TimeMs = -62_167_219_200_000;

/// The latest accepted event time, 9999-12-31T23:59:59.999Z.
pub const MAX_TIME: TimeMs = 253_402_300_799_999;

/// The longest accepted duration (window size, gap, lateness, retention, out-of-orderness,
/// idle timeout): 36 525 days, about a century.
pub const MAX_DURATION: DurationMs = 36_525 * 86_400_000;

/// `t` as a `DateTime<Utc>`. Every time in [`MIN_TIME`, `MAX_TIME`] converts; times outside
/// (only a window end past `MAX_TIME` can be) saturate to chrono's range.
pub fn to_datetime(t: TimeMs) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or(if t < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `dt` in milliseconds since the epoch (sub-millisecond parts are floored).
pub fn from_datetime(dt: DateTime<Utc>) -> TimeMs {
    dt.timestamp_millis()
}

/// A windowing configuration or a stored state that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowingError {
    #[error("{what} must be positive, not {value} ms")]
    NotPositive {
        what: &'static str,
        value: DurationMs,
    },
    #[error("{what} must not be negative, not {value} ms")]
    Negative {
        what: &'static str,
        value: DurationMs,
    },
    #[error("{what} of {value} ms is longer than the maximum of {MAX_DURATION} ms")]
    TooLong {
        what: &'static str,
        value: DurationMs,
    },
    /// Flink accepts a slide longer than the size and silently ignores the events between
    /// windows; here that is refused so that every event lands in a window.
    #[error("a sliding window's slide ({slide} ms) must not exceed its size ({size} ms)")]
    SlideLongerThanSize { size: DurationMs, slide: DurationMs },
    #[error("a sliding window of size {size} ms and slide {slide} ms puts each event in up to {windows} windows; the maximum is {max}")]
    TooManyWindowsPerEvent {
        size: DurationMs,
        slide: DurationMs,
        windows: i64,
        max: i64,
    },
    #[error("'{path}' is not a JSON pointer: {reason}")]
    InvalidFieldPath { path: String, reason: &'static str },
    /// The stored state was built with another window spec or allowed lateness; it must be
    /// rebuilt from the log rather than continued.
    #[error("the stored window state was built with {stored}, the configuration says {configured}; rebuild the projection")]
    ConfigChanged { stored: String, configured: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_are_the_rfc3339_years() {
        let min = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z").unwrap();
        let max = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z").unwrap();
        assert_eq!(min.timestamp_millis(), MIN_TIME);
        assert_eq!(max.timestamp_millis(), MAX_TIME);
        assert_eq!(from_datetime(to_datetime(MIN_TIME)), MIN_TIME);
        assert_eq!(from_datetime(to_datetime(MAX_TIME)), MAX_TIME);
        assert_eq!(to_datetime(i64::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
