//! Windows and their assignment: [`Window`] is a half-open `[start, end)` interval;
//! [`WindowSpec`] assigns an event time to its windows the way Flink's
//! `TumblingEventTimeWindows`, `SlidingEventTimeWindows` and `EventTimeSessionWindows` do
//! (epoch-aligned, no offset).

use super::{DurationMs, TimeMs, WindowingError, MAX_DURATION};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most windows one event may belong to (a sliding window's `ceil(size / slide)`): every
/// window is a row to write per event.
pub const MAX_WINDOWS_PER_EVENT: i64 = 1_000;

/// `[start, end)` in milliseconds: `start` is in the window, `end` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start: TimeMs,
    pub end: TimeMs,
}

impl Window {
    pub fn new(start: TimeMs, end: TimeMs) -> Self {
        Window { start, end }
    }

    pub fn contains(&self, t: TimeMs) -> bool {
        self.start <= t && t < self.end
    }

    /// Do the two windows share an instant? Windows that only touch (`a.end == b.start`) do
    /// not: Flink's `TimeWindow.intersects` says they do; see `docs/windowing.md`.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The smallest window covering both.
    pub fn span(&self, other: &Window) -> Window {
        Window::new(self.start.min(other.start), self.end.max(other.end))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// How events are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WindowSpec {
    /// Back-to-back windows of `size`, aligned to the epoch: `t` is in
    /// `[t - t mod size, t - t mod size + size)` (mod rounding towards minus infinity).
    Tumbling { size: DurationMs },
    /// Hopping windows of `size` starting every `slide` (aligned to the epoch). `t` is in every
    /// window whose start is a multiple of `slide` in `(t - size, t]`: `size / slide` windows
    /// when `slide` divides `size`, otherwise `floor` or `ceil` of it depending on `t`
    /// (Flink's rule). `slide` must not exceed `size`.
    Sliding { size: DurationMs, slide: DurationMs },
    /// Per-key sessions: an event at `t` opens `[t, t + gap)`; windows that overlap merge, so a
    /// session is `[first, last + gap)` and ends after `gap` without events.
    Session { gap: DurationMs },
}

impl WindowSpec {
    pub fn validate(&self) -> Result<(), WindowingError> {
        match *self {
            WindowSpec::Tumbling { size } => positive("window size", size),
            WindowSpec::Sliding { size, slide } => {
                positive("window size", size)?;
                positive("window slide", slide)?;
                if slide > size {
                    return Err(WindowingError::SlideLongerThanSize { size, slide });
                }
                let windows = (size + slide - 1) / slide;
                if windows > MAX_WINDOWS_PER_EVENT {
                    return Err(WindowingError::TooManyWindowsPerEvent {
                        size,
                        slide,
                        windows,
                        max: MAX_WINDOWS_PER_EVENT,
                    });
                }
                Ok(())
            }
            WindowSpec::Session { gap } => positive("session gap", gap),
        }
    }

    /// Session windows merge; the others are fixed.
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }

    /// The windows `t` belongs to, by ascending start. For sessions, the event's own
    /// `[t, t + gap)` before merging. The spec must be valid.
    pub fn assign(&self, t: TimeMs) -> Vec<Window> {
        match *self {
            WindowSpec::Tumbling { size } => {
                let start = window_start(t, size);
                vec![Window::new(start, start + size)]
            }
            WindowSpec::Sliding { size, slide } => {
                // Flink: from the last start at or before t, step back while the window
                // still contains t.
                let mut windows = Vec::with_capacity(((size + slide - 1) / slide) as usize);
                let mut start = window_start(t, slide);
                while start > t - size {
                    windows.push(Window::new(start, start + size));
                    start -= slide;
                }
                windows.reverse();
                windows
            }
            WindowSpec::Session { gap } => vec![Window::new(t, t + gap)],
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowSpec::Tumbling { size } => write!(f, "tumbling windows of {size} ms"),
            WindowSpec::Sliding { size, slide } => {
                write!(f, "sliding windows of {size} ms every {slide} ms")
            }
            WindowSpec::Session { gap } => write!(f, "session windows with a {gap} ms gap"),
        }
    }
}

/// The start of the epoch-aligned window of `size` containing `t` (Flink's
/// `TimeWindow.getWindowStartWithOffset` with offset 0, correct for negative times too).
pub fn window_start(t: TimeMs, size: DurationMs) -> TimeMs {
    t - t.rem_euclid(size)
}

pub(crate) fn positive(what: &'static str, value: DurationMs) -> Result<(), WindowingError> {
    if value <= 0 {
        Err(WindowingError::NotPositive { what, value })
    } else if value > MAX_DURATION {
        Err(WindowingError::TooLong { what, value })
    } else {
        Ok(())
    }
}

pub(crate) fn non_negative(what: &'static str, value: DurationMs) -> Result<(), WindowingError> {
    if value < 0 {
        Err(WindowingError::Negative { what, value })
    } else if value > MAX_DURATION {
        Err(WindowingError::TooLong { what, value })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: TimeMs, end: TimeMs) -> Window {
        Window::new(start, end)
    }

    #[test]
    fn tumbling_windows_are_epoch_aligned_and_half_open() {
        let spec = WindowSpec::Tumbling { size: 1000 };
        assert_eq!(spec.assign(0), vec![w(0, 1000)]);
        assert_eq!(spec.assign(999), vec![w(0, 1000)]);
        assert_eq!(spec.assign(1000), vec![w(1000, 2000)]);
        assert_eq!(spec.assign(-1), vec![w(-1000, 0)]);
        assert_eq!(spec.assign(-1000), vec![w(-1000, 0)]);
        assert_eq!(spec.assign(-1001), vec![w(-2000, -1000)]);
    }

    #[test]
    fn sliding_windows_follow_flinks_rule() {
        let spec = WindowSpec::Sliding {
            size: 100,
            slide: 50,
        };
        assert_eq!(spec.assign(120), vec![w(50, 150), w(100, 200)]);
        assert_eq!(spec.assign(100), vec![w(50, 150), w(100, 200)]);
        assert_eq!(spec.assign(-1), vec![w(-100, 0), w(-50, 50)]);
        // A slide that does not divide the size: 3 or 4 windows depending on t.
        let spec = WindowSpec::Sliding {
            size: 100,
            slide: 30,
        };
        assert_eq!(
            spec.assign(0),
            vec![w(-90, 10), w(-60, 40), w(-30, 70), w(0, 100)]
        );
        assert_eq!(spec.assign(15), vec![w(-60, 40), w(-30, 70), w(0, 100)]);
        for t in -500..500 {
            let windows = spec.assign(t);
            assert!(windows.iter().all(|x| x.contains(t) && x.start % 30 == 0));
            assert!((3..=4).contains(&windows.len()), "{t}: {windows:?}");
        }
        // A slide equal to the size is a tumbling window.
        let spec = WindowSpec::Sliding {
            size: 100,
            slide: 100,
        };
        assert_eq!(spec.assign(-1), vec![w(-100, 0)]);
    }

    #[test]
    fn sessions_start_with_the_events_own_window() {
        assert_eq!(WindowSpec::Session { gap: 30 }.assign(-5), vec![w(-5, 25)]);
        assert!(WindowSpec::Session { gap: 30 }.is_merging());
        assert!(!WindowSpec::Tumbling { size: 30 }.is_merging());
    }

    #[test]
    fn overlap_is_half_open() {
        assert!(w(0, 10).overlaps(&w(9, 20)));
        assert!(!w(0, 10).overlaps(&w(10, 20)));
        assert!(!w(10, 20).overlaps(&w(0, 10)));
        assert_eq!(w(0, 10).span(&w(15, 20)), w(0, 20));
    }

    #[test]
    fn invalid_specs_are_refused() {
        let err = |spec: WindowSpec| spec.validate().unwrap_err();
        assert!(matches!(
            err(WindowSpec::Tumbling { size: 0 }),
            WindowingError::NotPositive { .. }
        ));
        assert!(matches!(
            err(WindowSpec::Session {
                gap: MAX_DURATION + 1
            }),
            WindowingError::TooLong { .. }
        ));
        assert_eq!(
            err(WindowSpec::Sliding {
                size: 10,
                slide: 20
            }),
            WindowingError::SlideLongerThanSize {
                size: 10,
                slide: 20
            }
        );
        assert!(matches!(
            err(WindowSpec::Sliding {
                size: 100_000,
                slide: 99
            }),
            WindowingError::TooManyWindowsPerEvent { windows: 1011, .. }
        ));
        assert!(WindowSpec::Sliding {
            size: 100_000,
            slide: 100
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn specs_serialise_with_a_kind_tag() {
        let spec = WindowSpec::Sliding {
            size: 60_000,
            slide: 10_000,
        };
        let json = serde_json::to_value(spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "sliding", "size": 60000, "slide": 10000})
        );
        assert_eq!(serde_json::from_value::<WindowSpec>(json).unwrap(), spec);
    }
}
