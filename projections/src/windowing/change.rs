//! What the operator emits ([`WindowChange`]) and [`row_ops`], which nets a batch of changes
//! into the writes a read-model table needs (one row per key and window).

use super::aggregate::FoldError;
use super::key::KeyError;
use super::time::TimeError;
use super::window::Window;
use super::TimeMs;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A window's result as of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowResult {
    pub key: String,
    pub window: Window,
    /// The fold's output.
    pub aggregate: Value,
    pub events: u64,
    /// Changes after the window was final (0 until a late event revises it).
    pub revision: u32,
}

/// One consequence of an event or a watermark advance, in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowChange {
    /// A window that is not final changed: `complete` is false while the watermark is below
    /// its end, true once it passed the end (the on-time result, which a late event within
    /// the allowed lateness may still change).
    Upsert {
        result: WindowResult,
        complete: bool,
    },
    /// The watermark passed the window's end plus the allowed lateness: the result will not
    /// change again (except by [`LatePolicy::Revise`](super::LatePolicy::Revise)).
    Final(WindowResult),
    /// A too-late event changed a final window ([`LatePolicy::Revise`](super::LatePolicy::Revise)).
    Revised(WindowResult),
    /// A too-late event did not update `windows` (all of its windows, or the part of a sliding
    /// event's windows that were past their lateness). `total` counts such events so far.
    Dropped {
        key: String,
        event_time: TimeMs,
        windows: Vec<Window>,
        total: u64,
    },
    /// The event was not applied; the lane parks it as a dead letter.
    Park { reason: ParkReason },
    /// Session windows of `key` were replaced by `into` (merged, or one grew); their rows go.
    SessionMerged {
        key: String,
        removed: Vec<Window>,
        into: Window,
    },
}

/// Why an event is parked rather than applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkReason {
    /// Every window of the event was past its allowed lateness, under
    /// [`LatePolicy::Park`](super::LatePolicy::Park).
    TooLate {
        key: String,
        event_time: TimeMs,
        watermark: TimeMs,
        windows: Vec<Window>,
    },
    /// The event time is outside the supported range (see [`MIN_TIME`](super::MIN_TIME)).
    TimeOutOfRange { event_time: TimeMs },
    /// The fold refused the event's value.
    Value(FoldError),
    /// No usable event time (from [`event_time`](super::event_time), for the lane's use).
    Time(TimeError),
    /// No usable key (from [`KeySource::key_of`](super::KeySource::key_of)).
    Key(KeyError),
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::TooLate {
                key,
                event_time,
                watermark,
                windows,
            } => {
                write!(
                    f,
                    "event time {event_time} of key '{key}' is too late: the watermark is {watermark} and its windows "
                )?;
                for (i, window) in windows.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{window}")?;
                }
                f.write_str(" are past their allowed lateness")
            }
            ParkReason::TimeOutOfRange { event_time } => write!(
                f,
                "event time {event_time} is outside 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z"
            ),
            ParkReason::Value(e) => e.fmt(f),
            ParkReason::Time(e) => e.fmt(f),
            ParkReason::Key(e) => e.fmt(f),
        }
    }
}

impl From<FoldError> for ParkReason {
    fn from(e: FoldError) -> Self {
        ParkReason::Value(e)
    }
}

impl From<TimeError> for ParkReason {
    fn from(e: TimeError) -> Self {
        ParkReason::Time(e)
    }
}

impl From<KeyError> for ParkReason {
    fn from(e: KeyError) -> Self {
        ParkReason::Key(e)
    }
}

/// The status column of a read-model row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    Open,
    Complete,
    Final,
    Revised,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Open => "open",
            RowStatus::Complete => "complete",
            RowStatus::Final => "final",
            RowStatus::Revised => "revised",
        }
    }

    /// The status spelled `s` (as [`RowStatus::as_str`] writes it).
    pub fn parse(s: &str) -> Option<RowStatus> {
        [
            RowStatus::Open,
            RowStatus::Complete,
            RowStatus::Final,
            RowStatus::Revised,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

/// A write to a read-model table keyed by (key, window start, window end).
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    Upsert {
        status: RowStatus,
        result: WindowResult,
    },
    Delete {
        key: String,
        window: Window,
    },
}

/// The net writes of `changes`: the last state of each (key, window) they touch, by key and
/// window. A batch writes each row once however many events changed it. `Dropped` and `Park`
/// are not rows; the lane counts or parks them as they come.
pub fn row_ops(changes: &[WindowChange]) -> Vec<RowOp> {
    let mut rows: BTreeMap<(&str, Window), Option<(RowStatus, &WindowResult)>> = BTreeMap::new();
    for change in changes {
        match change {
            WindowChange::Upsert { result, complete } => {
                let status = if *complete {
                    RowStatus::Complete
                } else {
                    RowStatus::Open
                };
                rows.insert((&result.key, result.window), Some((status, result)));
            }
            WindowChange::Final(result) => {
                rows.insert(
                    (&result.key, result.window),
                    Some((RowStatus::Final, result)),
                );
            }
            WindowChange::Revised(result) => {
                rows.insert(
                    (&result.key, result.window),
                    Some((RowStatus::Revised, result)),
                );
            }
            WindowChange::SessionMerged { key, removed, .. } => {
                for window in removed {
                    rows.insert((key, *window), None);
                }
            }
            WindowChange::Dropped { .. } | WindowChange::Park { .. } => {}
        }
    }
    rows.into_iter()
        .map(|((key, window), row)| match row {
            Some((status, result)) => RowOp::Upsert {
                status,
                result: result.clone(),
            },
            None => RowOp::Delete {
                key: key.to_owned(),
                window,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(key: &str, start: TimeMs, end: TimeMs, n: u64) -> WindowResult {
        WindowResult {
            key: key.into(),
            window: Window::new(start, end),
            aggregate: json!(n),
            events: n,
            revision: 0,
        }
    }

    #[test]
    fn row_ops_keep_the_last_state_of_each_row() {
        let changes = vec![
            WindowChange::Upsert {
                result: result("a", 0, 10, 1),
                complete: false,
            },
            WindowChange::Upsert {
                result: result("a", 20, 30, 1),
                complete: false,
            },
            WindowChange::Upsert {
                result: result("a", 0, 10, 2),
                complete: true,
            },
            WindowChange::Final(result("b", 0, 10, 5)),
            WindowChange::SessionMerged {
                key: "a".into(),
                removed: vec![Window::new(20, 30), Window::new(40, 50)],
                into: Window::new(20, 50),
            },
            WindowChange::Upsert {
                result: result("a", 20, 50, 3),
                complete: false,
            },
            WindowChange::Dropped {
                key: "a".into(),
                event_time: 1,
                windows: vec![Window::new(0, 10)],
                total: 1,
            },
            WindowChange::Revised(result("b", 0, 10, 6)),
        ];
        let ops = row_ops(&changes);
        assert_eq!(
            ops,
            vec![
                RowOp::Upsert {
                    status: RowStatus::Complete,
                    result: result("a", 0, 10, 2)
                },
                RowOp::Delete {
                    key: "a".into(),
                    window: Window::new(20, 30)
                },
                RowOp::Upsert {
                    status: RowStatus::Open,
                    result: result("a", 20, 50, 3)
                },
                RowOp::Delete {
                    key: "a".into(),
                    window: Window::new(40, 50)
                },
                RowOp::Upsert {
                    status: RowStatus::Revised,
                    result: result("b", 0, 10, 6)
                },
            ]
        );
        assert_eq!(RowStatus::Revised.as_str(), "revised");
    }

    #[test]
    fn park_reasons_read_well() {
        let reason = ParkReason::TooLate {
            key: "k".into(),
            event_time: 5,
            watermark: 100,
            windows: vec![Window::new(0, 10), Window::new(5, 15)],
        };
        assert_eq!(
            reason.to_string(),
            "event time 5 of key 'k' is too late: the watermark is 100 and its windows [0, 10), [5, 15) are past their allowed lateness"
        );
    }
}
