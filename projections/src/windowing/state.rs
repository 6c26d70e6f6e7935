//! The window operator's persisted state: per key, its windows and their accumulators
//! ([`KeyState`]); per operator, the watermark and counters ([`OperatorMeta`]). An engine can
//! store the whole [`OperatorSnapshot`], or one row per key and apply each batch's
//! [`StateDelta`] (the keys it changed) in the batch's transaction.

use super::watermark::WatermarkState;
use super::window::{Window, WindowSpec};
use super::DurationMs;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Where a window is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The watermark has not reached the window's end: more events are expected.
    Open,
    /// The watermark passed the end but not the end plus the allowed lateness: late events
    /// still update the result.
    Complete,
    /// The watermark passed the end plus the allowed lateness. Kept only for
    /// [`LatePolicy::Revise`](super::LatePolicy::Revise), until its retention ends.
    Final,
}

/// One window of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "A: Serialize", deserialize = "A: DeserializeOwned"))]
pub struct WindowSlot<A> {
    pub window: Window,
    pub stage: Stage,
    /// Events folded in.
    pub events: u64,
    /// How many times the window changed after it was final.
    pub revision: u32,
    pub acc: A,
}

/// The windows of one key, by window. Serialised as a list of [`WindowSlot`]s (JSON object
/// keys must be strings).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState<A> {
    pub(crate) windows: BTreeMap<Window, WindowSlot<A>>,
}

impl<A> Default for KeyState<A> {
    fn default() -> Self {
        KeyState {
            windows: BTreeMap::new(),
        }
    }
}

impl<A> KeyState<A> {
    pub fn windows(&self) -> impl Iterator<Item = &WindowSlot<A>> {
        self.windows.values()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }
}

impl<A: Serialize> Serialize for KeyState<A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.windows.values())
    }
}

impl<'de, A: DeserializeOwned> Deserialize<'de> for KeyState<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let slots = Vec::<WindowSlot<A>>::deserialize(deserializer)?;
        Ok(KeyState {
            windows: slots.into_iter().map(|s| (s.window, s)).collect(),
        })
    }
}

/// The operator-wide part of the state. Changes with every event (the watermark clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorMeta {
    /// What the windows were built with; a restore under another spec or lateness is
    /// refused.
    pub spec: WindowSpec,
    pub allowed_lateness: DurationMs,
    pub watermark: WatermarkState,
    /// Events that could not update at least one of their windows because it was past its
    /// allowed lateness (dropped, or beyond a revise retention).
    pub late_dropped: u64,
    /// Events returned as [`ParkReason::TooLate`](super::ParkReason::TooLate).
    pub late_parked: u64,
}

/// The whole state: what [`WindowOperator::restore`](super::WindowOperator::restore) takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "A: Serialize", deserialize = "A: DeserializeOwned"))]
pub struct OperatorSnapshot<A> {
    pub meta: OperatorMeta,
    /// Keys with at least one window. A key whose windows were all evicted is absent.
    pub keys: BTreeMap<String, KeyState<A>>,
}

/// What changed since the last delta was taken: the meta (always) and each changed key's new
/// state, or `None` when the key has no windows left and its stored row should be deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "A: Serialize", deserialize = "A: DeserializeOwned"))]
pub struct StateDelta<A> {
    pub meta: OperatorMeta,
    pub keys: Vec<(String, Option<KeyState<A>>)>,
}

impl<A> StateDelta<A> {
    /// Applies this delta to a stored copy of the keyed state (what the engine does with
    /// rows, done on a map).
    pub fn apply_to(self, keys: &mut BTreeMap<String, KeyState<A>>) -> OperatorMeta {
        for (key, state) in self.keys {
            match state {
                Some(state) => {
                    keys.insert(key, state);
                }
                None => {
                    keys.remove(&key);
                }
            }
        }
        self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_state_serialises_as_a_list_of_slots() {
        let mut state = KeyState::<u64>::default();
        for (start, stage) in [(0, Stage::Final), (10, Stage::Open)] {
            let window = Window::new(start, start + 10);
            state.windows.insert(
                window,
                WindowSlot {
                    window,
                    stage,
                    events: 2,
                    revision: 1,
                    acc: 7,
                },
            );
        }
        let value = serde_json::to_value(&state).unwrap();
        assert_eq!(
            value,
            json!([
                {"window": {"start": 0, "end": 10}, "stage": "final", "events": 2, "revision": 1, "acc": 7},
                {"window": {"start": 10, "end": 20}, "stage": "open", "events": 2, "revision": 1, "acc": 7},
            ])
        );
        assert_eq!(
            serde_json::from_value::<KeyState<u64>>(value).unwrap(),
            state
        );
        assert_eq!(state.len(), 2);
        assert!(!state.is_empty());
    }
}
