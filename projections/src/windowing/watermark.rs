//! Watermarks: how far event time has progressed. Each partition's watermark is the largest
//! event time it has delivered minus the allowed out-of-orderness; the projection's is the
//! minimum over partitions, skipping partitions idle for longer than the idle timeout
//! (Flink's `WatermarkStrategy.forBoundedOutOfOrderness(..).withIdleness(..)`). It never goes
//! backwards.
//!
//! A watermark `W` here means "events with a time below `W` are late"; Flink's watermark is
//! one less ("no more events at or before `W`"). Idleness is measured on a processing time
//! that the caller passes in; the largest one seen is the tracker's clock, so a clock that
//! steps back cannot make a partition active again.

use super::window::non_negative;
use super::{DurationMs, TimeMs, WindowingError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How watermarks are derived from event times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen an event may be without being late.
    pub out_of_orderness: DurationMs,
    /// A partition without events for longer than this (in processing time) no longer holds
    /// the watermark back. `None`: partitions never go idle.
    pub idle_timeout: Option<DurationMs>,
}

impl WatermarkConfig {
    pub fn validate(&self) -> Result<(), WindowingError> {
        non_negative("out-of-orderness", self.out_of_orderness)?;
        if let Some(timeout) = self.idle_timeout {
            non_negative("idle timeout", timeout)?;
        }
        Ok(())
    }
}

/// One partition's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// The largest event time delivered; `None` before the first event.
    pub max_event_time: Option<TimeMs>,
    /// The processing time of the last event (or of the registration).
    pub last_active: TimeMs,
}

/// The serialisable part of a [`WatermarkTracker`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatermarkState {
    pub partitions: BTreeMap<i16, PartitionClock>,
    /// The current watermark; `None` until every active partition has delivered an event.
    pub watermark: Option<TimeMs>,
    /// The largest processing time passed in.
    pub clock: Option<TimeMs>,
}

/// Tracks per-partition progress and derives the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkTracker {
    config: WatermarkConfig,
    state: WatermarkState,
}

impl WatermarkTracker {
    pub fn new(config: WatermarkConfig) -> Self {
        WatermarkTracker::restore(config, WatermarkState::default())
    }

    pub fn restore(config: WatermarkConfig, state: WatermarkState) -> Self {
        WatermarkTracker { config, state }
    }

    pub fn state(&self) -> &WatermarkState {
        &self.state
    }

    pub fn config(&self) -> &WatermarkConfig {
        &self.config
    }

    pub fn watermark(&self) -> Option<TimeMs> {
        self.state.watermark
    }

    /// Makes `partition` hold the watermark back before its first event (until it is idle).
    /// Without this, a partition counts from its first event on.
    pub fn register(&mut self, partition: i16, processing_time: TimeMs) {
        self.tick(processing_time);
        self.state
            .partitions
            .entry(partition)
            .or_insert(PartitionClock {
                max_event_time: None,
                last_active: processing_time,
            });
    }

    /// Records an event of `partition` at `event_time`, delivered at `processing_time`.
    /// Call [`WatermarkTracker::update`] to move the watermark.
    pub fn observe(&mut self, partition: i16, event_time: TimeMs, processing_time: TimeMs) {
        self.tick(processing_time);
        let clock = self
            .state
            .partitions
            .entry(partition)
            .or_insert(PartitionClock {
                max_event_time: None,
                last_active: processing_time,
            });
        clock.max_event_time = Some(
            clock
                .max_event_time
                .map_or(event_time, |m| m.max(event_time)),
        );
        clock.last_active = clock.last_active.max(processing_time);
    }

    /// Is `partition` idle at the tracker's clock? Unknown partitions are.
    pub fn is_idle(&self, partition: i16) -> bool {
        match self.state.partitions.get(&partition) {
            Some(clock) => self.idle(clock),
            None => true,
        }
    }

    fn idle(&self, clock: &PartitionClock) -> bool {
        match (self.config.idle_timeout, self.state.clock) {
            (Some(timeout), Some(now)) => now.saturating_sub(clock.last_active) > timeout,
            _ => false,
        }
    }

    fn tick(&mut self, processing_time: TimeMs) {
        self.state.clock = Some(
            self.state
                .clock
                .map_or(processing_time, |c| c.max(processing_time)),
        );
    }

    /// Recomputes the watermark at `processing_time`: the minimum over active partitions of
    /// `max event time - out-of-orderness`, never lower than before. Unchanged while an active
    /// partition has no event yet, or when every partition is idle.
    pub fn update(&mut self, processing_time: TimeMs) -> Option<TimeMs> {
        self.tick(processing_time);
        let mut candidate: Option<TimeMs> = None;
        let mut any_active = false;
        for clock in self.state.partitions.values() {
            if self.idle(clock) {
                continue;
            }
            any_active = true;
            let Some(max) = clock.max_event_time else {
                return self.state.watermark;
            };
            let mark = max.saturating_sub(self.config.out_of_orderness);
            candidate = Some(candidate.map_or(mark, |c| c.min(mark)));
        }
        if any_active {
            self.advance_to(candidate);
        }
        self.state.watermark
    }

    /// Raises the watermark to at least `watermark` (an external source of progress, such as
    /// the end of the input). Returns the watermark.
    pub fn advance_to(&mut self, watermark: Option<TimeMs>) -> Option<TimeMs> {
        if let Some(w) = watermark {
            self.state.watermark = Some(self.state.watermark.map_or(w, |c| c.max(w)));
        }
        self.state.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windowing::testing::XorShift;

    fn tracker(ooo: DurationMs, idle: Option<DurationMs>) -> WatermarkTracker {
        WatermarkTracker::new(WatermarkConfig {
            out_of_orderness: ooo,
            idle_timeout: idle,
        })
    }

    #[test]
    fn the_minimum_over_partitions_minus_out_of_orderness() {
        let mut t = tracker(10, None);
        assert_eq!(t.update(0), None);
        t.observe(0, 100, 0);
        assert_eq!(t.update(0), Some(90));
        t.observe(1, 50, 1);
        // Never backwards, even though partition 1 is behind.
        assert_eq!(t.update(1), Some(90));
        t.observe(1, 300, 2);
        t.observe(0, 200, 2);
        assert_eq!(t.update(2), Some(190));
        // Out-of-order events do not lower a partition's maximum.
        t.observe(0, 120, 3);
        assert_eq!(t.update(3), Some(190));
    }

    #[test]
    fn an_idle_partition_does_not_hold_the_watermark_back() {
        for idle in [None, Some(1_000)] {
            let mut t = tracker(0, idle);
            t.observe(0, 10, 0);
            t.observe(1, 10, 0);
            assert_eq!(t.update(0), Some(10));
            // Partition 1 goes quiet; partition 0 goes on.
            for (i, pt) in (100..=3_000).step_by(100).enumerate() {
                t.observe(0, 20 + i as TimeMs, pt);
                t.update(pt);
            }
            if idle.is_some() {
                assert!(t.is_idle(1) && !t.is_idle(0));
                assert_eq!(t.watermark(), Some(49));
            } else {
                assert!(!t.is_idle(1));
                assert_eq!(t.watermark(), Some(10));
            }
        }
        // Idle exactly at the timeout is not idle yet: idle means longer than the timeout.
        let mut t = tracker(0, Some(1_000));
        t.observe(0, 10, 0);
        t.observe(1, 5, 0);
        t.observe(0, 20, 1_000);
        assert_eq!(t.update(1_000), Some(5));
        assert_eq!(t.update(1_001), Some(20));
    }

    #[test]
    fn a_reactivated_partition_cannot_pull_the_watermark_back() {
        let mut t = tracker(0, Some(100));
        t.observe(0, 1_000, 0);
        t.observe(1, 10, 0);
        t.observe(0, 2_000, 500);
        assert_eq!(t.update(500), Some(2_000));
        t.observe(1, 20, 600);
        assert!(!t.is_idle(1));
        assert_eq!(t.update(600), Some(2_000));
        // Partition 1 now holds the watermark until it passes partition 0.
        t.observe(0, 5_000, 650);
        assert_eq!(t.update(650), Some(2_000));
        t.observe(1, 3_000, 660);
        assert_eq!(t.update(660), Some(3_000));
    }

    #[test]
    fn registered_partitions_hold_back_until_their_first_event_or_idleness() {
        let mut t = tracker(0, Some(100));
        t.register(0, 0);
        t.register(1, 0);
        t.observe(0, 500, 10);
        assert_eq!(t.update(10), None);
        assert_eq!(t.update(100), None);
        assert_eq!(t.update(101), Some(500));
        // Every partition idle: the watermark stays where it is.
        assert_eq!(t.update(10_000), Some(500));
        assert!(t.is_idle(0) && t.is_idle(1) && t.is_idle(7));
    }

    #[test]
    fn a_clock_stepping_back_does_not_reactivate_a_partition() {
        let mut t = tracker(0, Some(100));
        t.observe(0, 10, 0);
        t.observe(1, 50, 1_000);
        assert_eq!(t.update(1_000), Some(50));
        assert_eq!(t.update(5), Some(50));
        assert!(t.is_idle(0));
    }

    #[test]
    fn the_watermark_is_monotonic_under_random_input() {
        let mut rng = XorShift::new(7);
        for round in 0..50 {
            let idle = if round % 2 == 0 { Some(200) } else { None };
            let mut t = tracker(rng.below(50) as DurationMs, idle);
            let mut last = None;
            let mut pt = 0;
            for _ in 0..500 {
                pt += rng.below(40) as TimeMs;
                match rng.below(10) {
                    0 => {
                        t.advance_to(Some(rng.below(5_000) as TimeMs));
                    }
                    1 => t.register(rng.below(4) as i16, pt),
                    _ => t.observe(rng.below(4) as i16, rng.below(5_000) as TimeMs, pt),
                }
                let now = t.update(pt.saturating_sub(rng.below(50) as TimeMs));
                assert!(now >= last, "{now:?} < {last:?}");
                last = now;
            }
        }
    }

    #[test]
    fn state_round_trips() {
        let mut t = tracker(5, Some(10));
        t.observe(3, 100, 7);
        t.register(-1, 8);
        t.update(8);
        let json = serde_json::to_string(t.state()).unwrap();
        let back = WatermarkTracker::restore(*t.config(), serde_json::from_str(&json).unwrap());
        assert_eq!(back, t);
    }
}
