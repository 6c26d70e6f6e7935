//! [`WindowOperator`]: keyed windows driven by event time. Events go in through
//! [`WindowOperator::apply`], watermark progress through
//! [`WindowOperator::advance_watermark`]; both return the [`WindowChange`]s to write. The
//! operator keeps the windows that can still change and evicts the others, so its state is
//! bounded by the keys with open windows (plus, under [`LatePolicy::Revise`], final windows
//! inside their retention).

use super::aggregate::WindowFold;
use super::change::{ParkReason, WindowChange, WindowResult};
use super::state::{KeyState, OperatorMeta, OperatorSnapshot, Stage, StateDelta, WindowSlot};
use super::watermark::{WatermarkConfig, WatermarkTracker};
use super::window::{non_negative, Window, WindowSpec};
use super::{DurationMs, TimeMs, WindowingError, MAX_TIME, MIN_TIME};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What happens to an event that arrives after a window's end plus the allowed lateness
/// (the window is final). Events that are merely late (below the watermark, within the
/// allowed lateness) always update their window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count it ([`WindowChange::Dropped`]) and ignore it, as Flink and Kafka Streams do.
    #[default]
    Drop,
    /// Update the final window and emit [`WindowChange::Revised`]. Final windows are kept for
    /// `retention` after they became final (until the watermark reaches `end + allowed
    /// lateness + retention`); later events are dropped.
    Revise { retention: DurationMs },
    /// Return [`WindowChange::Park`] so the lane parks the event as a dead letter.
    Park,
}

/// Everything that decides a windowed projection's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    pub spec: WindowSpec,
    /// How long after a window's end (in event time, measured by the watermark) late events
    /// still update it. Flink's `allowedLateness`, Kafka Streams' grace period.
    pub allowed_lateness: DurationMs,
    pub late_policy: LatePolicy,
    pub watermark: WatermarkConfig,
}

impl WindowConfig {
    /// `spec` with no lateness, no out-of-orderness, dropping late events.
    pub fn new(spec: WindowSpec) -> Self {
        WindowConfig {
            spec,
            allowed_lateness: 0,
            late_policy: LatePolicy::Drop,
            watermark: WatermarkConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), WindowingError> {
        self.spec.validate()?;
        non_negative("allowed lateness", self.allowed_lateness)?;
        if let LatePolicy::Revise { retention } = self.late_policy {
            non_negative("revise retention", retention)?;
        }
        self.watermark.validate()
    }
}

/// One event, as the operator sees it.
#[derive(Debug, Clone, Copy)]
pub struct WindowInput<'a> {
    /// The partition the event came from: each partition has its own watermark.
    pub partition: i16,
    pub key: &'a str,
    /// The event time ([`event_time`](super::event_time)).
    pub time: TimeMs,
    /// What the fold reads (usually the payload).
    pub value: &'a Value,
}

/// Keyed event-time windows with a fold per window.
pub struct WindowOperator<F: WindowFold> {
    config: WindowConfig,
    fold: F,
    tracker: WatermarkTracker,
    keys: BTreeMap<String, KeyState<F::Acc>>,
    /// (watermark at which the window needs attention, key, window): derived from the
    /// slots, rebuilt on restore.
    timers: BTreeSet<(TimeMs, String, Window)>,
    /// Keys changed since the last [`WindowOperator::take_delta`].
    dirty: BTreeSet<String>,
    late_dropped: u64,
    late_parked: u64,
}

impl<F: WindowFold> std::fmt::Debug for WindowOperator<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOperator")
            .field("config", &self.config)
            .field("watermark", &self.watermark())
            .field("keys", &self.keys.len())
            .field("open_windows", &self.open_windows())
            .field("retained_windows", &self.retained_windows())
            .field("late_dropped", &self.late_dropped)
            .field("late_parked", &self.late_parked)
            .finish()
    }
}

impl<F: WindowFold> WindowOperator<F> {
    pub fn new(config: WindowConfig, fold: F) -> Result<Self, WindowingError> {
        config.validate()?;
        Ok(WindowOperator {
            tracker: WatermarkTracker::new(config.watermark),
            config,
            fold,
            keys: BTreeMap::new(),
            timers: BTreeSet::new(),
            dirty: BTreeSet::new(),
            late_dropped: 0,
            late_parked: 0,
        })
    }

    /// Continues from a saved state. Refused when the window spec or the allowed lateness
    /// changed (the stored windows would be wrong); the watermark settings and the late
    /// policy may change (final windows the new policy does not keep are evicted).
    pub fn restore(
        config: WindowConfig,
        fold: F,
        snapshot: OperatorSnapshot<F::Acc>,
    ) -> Result<Self, WindowingError> {
        Self::restore_parts(config, fold, snapshot.meta, snapshot.keys)
    }

    /// [`WindowOperator::restore`] from the meta and the keyed rows stored separately.
    pub fn restore_parts(
        config: WindowConfig,
        fold: F,
        meta: OperatorMeta,
        keys: impl IntoIterator<Item = (String, KeyState<F::Acc>)>,
    ) -> Result<Self, WindowingError> {
        let mut operator = WindowOperator::new(config, fold)?;
        if meta.spec != operator.config.spec {
            return Err(WindowingError::ConfigChanged {
                stored: meta.spec.to_string(),
                configured: operator.config.spec.to_string(),
            });
        }
        if meta.allowed_lateness != operator.config.allowed_lateness {
            return Err(WindowingError::ConfigChanged {
                stored: format!("an allowed lateness of {} ms", meta.allowed_lateness),
                configured: format!(
                    "an allowed lateness of {} ms",
                    operator.config.allowed_lateness
                ),
            });
        }
        operator.tracker = WatermarkTracker::restore(operator.config.watermark, meta.watermark);
        operator.late_dropped = meta.late_dropped;
        operator.late_parked = meta.late_parked;
        for (key, state) in keys {
            if state.is_empty() {
                continue;
            }
            for slot in state.windows() {
                let due = operator.due(slot);
                operator.timers.insert((due, key.clone(), slot.window));
            }
            operator.keys.insert(key, state);
        }
        // Final windows that the (possibly changed) late policy no longer keeps go now.
        // Nothing else is due in a state this operator saved (it fires everything up to its
        // watermark, and ends and lateness are unchanged); if something were, it would fire
        // with the next event or advance rather than be lost.
        if let Some(watermark) = operator.watermark() {
            let evict: Vec<(String, Window)> = operator
                .timers
                .iter()
                .take_while(|(due, _, _)| *due <= watermark)
                .filter(|(_, key, window)| operator.keys[key].windows[window].stage == Stage::Final)
                .map(|(_, key, window)| (key.clone(), *window))
                .collect();
            for (key, window) in evict {
                operator.take_slot(&key, &window);
                operator.dirty.insert(key);
            }
        }
        Ok(operator)
    }

    /// Adds keys to an operator restored with only some of its keys, and fires what the
    /// watermark makes due in them. An engine keeping one row per key loads the keys a batch
    /// touches, applies the batch, then loads the keys whose [`WindowOperator::next_due`]
    /// the new watermark has reached: the result equals a run with every key loaded, since
    /// an untouched key changes only when one of its windows falls due. Keys already held
    /// are left as they are.
    pub fn restore_more_keys(
        &mut self,
        keys: impl IntoIterator<Item = (String, KeyState<F::Acc>)>,
    ) -> Vec<WindowChange> {
        for (key, state) in keys {
            if state.is_empty() || self.keys.contains_key(&key) {
                continue;
            }
            for slot in state.windows() {
                let due = self.due(slot);
                self.timers.insert((due, key.clone(), slot.window));
            }
            self.keys.insert(key, state);
        }
        let mut changes = Vec::new();
        self.fire(&mut changes);
        changes
    }

    /// The watermark at which something next happens to `key`'s windows (one becomes
    /// complete, final, or is evicted); `None` when it has none. Stored beside the key's
    /// state, it tells an engine when to load the key although no event touches it.
    pub fn next_due(&self, key: &str) -> Option<TimeMs> {
        self.keys
            .get(key)?
            .windows()
            .map(|slot| self.due(slot))
            .min()
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn fold(&self) -> &F {
        &self.fold
    }

    /// Events below it are late. `None` until every active partition delivered an event.
    pub fn watermark(&self) -> Option<TimeMs> {
        self.tracker.watermark()
    }

    pub fn tracker(&self) -> &WatermarkTracker {
        &self.tracker
    }

    /// Keys that have at least one window in the state.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Windows that are not final yet.
    pub fn open_windows(&self) -> usize {
        self.slots().filter(|s| s.stage != Stage::Final).count()
    }

    /// Final windows kept for [`LatePolicy::Revise`].
    pub fn retained_windows(&self) -> usize {
        self.slots().filter(|s| s.stage == Stage::Final).count()
    }

    fn slots(&self) -> impl Iterator<Item = &WindowSlot<F::Acc>> {
        self.keys.values().flat_map(KeyState::windows)
    }

    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    pub fn late_parked(&self) -> u64 {
        self.late_parked
    }

    pub fn meta(&self) -> OperatorMeta {
        OperatorMeta {
            spec: self.config.spec,
            allowed_lateness: self.config.allowed_lateness,
            watermark: self.tracker.state().clone(),
            late_dropped: self.late_dropped,
            late_parked: self.late_parked,
        }
    }

    /// The whole state.
    pub fn snapshot(&self) -> OperatorSnapshot<F::Acc> {
        OperatorSnapshot {
            meta: self.meta(),
            keys: self.keys.clone(),
        }
    }

    /// The meta and the keys changed since the previous call (or since creation/restore), by
    /// key. Storing these in the batch's transaction keeps the stored state equal to
    /// [`WindowOperator::snapshot`].
    pub fn take_delta(&mut self) -> StateDelta<F::Acc> {
        let keys = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| {
                let state = self.keys.get(&key).cloned();
                (key, state)
            })
            .collect();
        StateDelta {
            meta: self.meta(),
            keys,
        }
    }

    /// Makes `partition` hold the watermark back from now on, before its first event (for
    /// a lane that knows its partitions up front). See [`WatermarkTracker::register`].
    pub fn register_partition(&mut self, partition: i16, processing_time: TimeMs) {
        self.tracker.register(partition, processing_time);
    }

    /// Applies one event, then moves the watermark past it and fires what it closes.
    /// `processing_time` only serves idleness (see `docs/windowing.md` for what to pass).
    /// When the result holds a [`WindowChange::Park`], nothing else is in it and the state
    /// is unchanged.
    pub fn apply(&mut self, input: WindowInput<'_>, processing_time: TimeMs) -> Vec<WindowChange> {
        if !(MIN_TIME..=MAX_TIME).contains(&input.time) {
            return vec![WindowChange::Park {
                reason: ParkReason::TimeOutOfRange {
                    event_time: input.time,
                },
            }];
        }
        let value = match self.fold.extract(input.value) {
            Ok(value) => value,
            Err(e) => {
                return vec![WindowChange::Park {
                    reason: ParkReason::Value(e),
                }]
            }
        };
        let mut changes = Vec::new();
        let applied = if self.config.spec.is_merging() {
            self.apply_session(input.key, input.time, &value, &mut changes)
        } else {
            self.apply_fixed(input.key, input.time, &value, &mut changes)
        };
        if applied {
            self.tracker
                .observe(input.partition, input.time, processing_time);
            self.tracker.update(processing_time);
            self.fire(&mut changes);
        }
        changes
    }

    /// Recomputes the watermark at `processing_time` (partitions may have gone idle) and
    /// fires what it closes. Call it when no events arrive, e.g. after a caught-up batch.
    pub fn advance_watermark(&mut self, processing_time: TimeMs) -> Vec<WindowChange> {
        self.tracker.update(processing_time);
        let mut changes = Vec::new();
        self.fire(&mut changes);
        changes
    }

    /// Raises the watermark to at least `watermark` from outside (another lane's progress, or
    /// `i64::MAX` at the end of a bounded input to make every window final).
    pub fn advance_watermark_to(&mut self, watermark: TimeMs) -> Vec<WindowChange> {
        self.tracker.advance_to(Some(watermark));
        let mut changes = Vec::new();
        self.fire(&mut changes);
        changes
    }

    /// When the window's result cannot change any more, except by a revision.
    fn final_at(&self, window: &Window) -> TimeMs {
        window.end.saturating_add(self.config.allowed_lateness)
    }

    fn too_late(&self, window: &Window) -> bool {
        self.watermark().is_some_and(|w| w >= self.final_at(window))
    }

    /// Is a final window still inside the revise retention?
    fn revisable(&self, window: &Window) -> bool {
        match self.config.late_policy {
            LatePolicy::Revise { retention } => self
                .watermark()
                .is_none_or(|w| w < self.final_at(window).saturating_add(retention)),
            LatePolicy::Drop | LatePolicy::Park => false,
        }
    }

    /// The stage of a window that is not too late.
    fn live_stage(&self, window: &Window) -> Stage {
        match self.watermark() {
            Some(w) if w >= window.end => Stage::Complete,
            _ => Stage::Open,
        }
    }

    fn due(&self, slot: &WindowSlot<F::Acc>) -> TimeMs {
        match slot.stage {
            Stage::Open => slot.window.end,
            Stage::Complete => self.final_at(&slot.window),
            Stage::Final => match self.config.late_policy {
                LatePolicy::Revise { retention } => {
                    self.final_at(&slot.window).saturating_add(retention)
                }
                LatePolicy::Drop | LatePolicy::Park => self.final_at(&slot.window),
            },
        }
    }

    fn result(&self, key: &str, slot: &WindowSlot<F::Acc>) -> WindowResult {
        WindowResult {
            key: key.to_owned(),
            window: slot.window,
            aggregate: self.fold.output(&slot.acc),
            events: slot.events,
            revision: slot.revision,
        }
    }

    fn late_park(&mut self, key: &str, time: TimeMs, windows: Vec<Window>) -> WindowChange {
        self.late_parked += 1;
        WindowChange::Park {
            reason: ParkReason::TooLate {
                key: key.to_owned(),
                event_time: time,
                watermark: self.watermark().unwrap_or(TimeMs::MIN),
                windows,
            },
        }
    }

    fn late_drop(&mut self, key: &str, time: TimeMs, windows: Vec<Window>) -> WindowChange {
        self.late_dropped += 1;
        WindowChange::Dropped {
            key: key.to_owned(),
            event_time: time,
            windows,
            total: self.late_dropped,
        }
    }

    /// Takes a slot out of the state and its timer out of the schedule.
    fn take_slot(&mut self, key: &str, window: &Window) -> Option<WindowSlot<F::Acc>> {
        let state = self.keys.get_mut(key)?;
        let slot = state.windows.remove(window)?;
        if state.is_empty() {
            self.keys.remove(key);
        }
        let due = self.due(&slot);
        self.timers.remove(&(due, key.to_owned(), *window));
        Some(slot)
    }

    /// Puts a slot (back) and schedules it.
    fn put_slot(&mut self, key: &str, slot: WindowSlot<F::Acc>) {
        let due = self.due(&slot);
        self.timers.insert((due, key.to_owned(), slot.window));
        self.keys
            .entry(key.to_owned())
            .or_default()
            .windows
            .insert(slot.window, slot);
        self.dirty.insert(key.to_owned());
    }

    fn new_slot(&self, window: Window, stage: Stage) -> WindowSlot<F::Acc> {
        WindowSlot {
            window,
            stage,
            events: 0,
            revision: 0,
            acc: self.fold.init(),
        }
    }

    /// Tumbling and sliding windows. Returns false when the event is parked.
    fn apply_fixed(
        &mut self,
        key: &str,
        time: TimeMs,
        value: &F::Input,
        changes: &mut Vec<WindowChange>,
    ) -> bool {
        let mut accept = Vec::new();
        let mut revise = Vec::new();
        let mut too_late = Vec::new();
        for window in self.config.spec.assign(time) {
            if !self.too_late(&window) {
                accept.push(window);
            } else if self.revisable(&window) {
                revise.push(window);
            } else {
                too_late.push(window);
            }
        }
        if accept.is_empty() && revise.is_empty() && self.config.late_policy == LatePolicy::Park {
            changes.push(self.late_park(key, time, too_late));
            return false;
        }
        for window in accept {
            let mut slot = self
                .take_slot(key, &window)
                .unwrap_or_else(|| self.new_slot(window, self.live_stage(&window)));
            self.fold.add(&mut slot.acc, value);
            slot.events += 1;
            changes.push(WindowChange::Upsert {
                result: self.result(key, &slot),
                complete: slot.stage == Stage::Complete,
            });
            self.put_slot(key, slot);
        }
        for window in revise {
            let mut slot = self
                .take_slot(key, &window)
                .unwrap_or_else(|| self.new_slot(window, Stage::Final));
            self.fold.add(&mut slot.acc, value);
            slot.events += 1;
            slot.revision += 1;
            changes.push(WindowChange::Revised(self.result(key, &slot)));
            self.put_slot(key, slot);
        }
        if !too_late.is_empty() {
            let change = self.late_drop(key, time, too_late);
            changes.push(change);
        }
        true
    }

    /// Session windows (Flink's merging assigner). Returns false when the event is parked.
    fn apply_session(
        &mut self,
        key: &str,
        time: TimeMs,
        value: &F::Input,
        changes: &mut Vec<WindowChange>,
    ) -> bool {
        let own = self.config.spec.assign(time)[0];
        // Sessions that are not final never overlap one another, so one pass finds every
        // session the merged window covers.
        let open_hits = self.overlapping(key, &own, |stage| stage != Stage::Final);
        let merged = open_hits.iter().fold(own, |span, w| span.span(w));
        if !self.too_late(&merged) {
            let stage = self.live_stage(&merged);
            self.merge_into(key, &open_hits, merged, stage, changes, |fold, slot| {
                fold.add(&mut slot.acc, value);
                slot.events += 1;
            });
            let slot = &self.keys[key].windows[&merged];
            changes.push(WindowChange::Upsert {
                result: self.result(key, slot),
                complete: slot.stage == Stage::Complete,
            });
            return true;
        }
        // Too late: there are no open hits (an open hit would make the merge not too late).
        match self.config.late_policy {
            LatePolicy::Park => {
                changes.push(self.late_park(key, time, vec![own]));
                false
            }
            LatePolicy::Drop => {
                changes.push(self.late_drop(key, time, vec![own]));
                true
            }
            LatePolicy::Revise { .. } => {
                // Final sessions may touch or overlap one another (each was closed on its
                // own), so grow the span until it covers no more of them.
                let mut span = own;
                let mut hits: Vec<Window> = Vec::new();
                loop {
                    let more: Vec<Window> = self
                        .overlapping(key, &span, |stage| stage == Stage::Final)
                        .into_iter()
                        .filter(|w| !hits.contains(w))
                        .collect();
                    if more.is_empty() {
                        break;
                    }
                    for w in more {
                        span = span.span(&w);
                        hits.push(w);
                    }
                }
                if hits.is_empty() && !self.revisable(&own) {
                    changes.push(self.late_drop(key, time, vec![own]));
                    return true;
                }
                hits.sort();
                self.merge_into(key, &hits, span, Stage::Final, changes, |fold, slot| {
                    fold.add(&mut slot.acc, value);
                    slot.events += 1;
                    slot.revision += 1;
                });
                let slot = &self.keys[key].windows[&span];
                changes.push(WindowChange::Revised(self.result(key, slot)));
                true
            }
        }
    }

    /// The windows of `key` in a stage accepted by `stage_filter` that overlap `window`, by
    /// window.
    fn overlapping(
        &self,
        key: &str,
        window: &Window,
        stage_filter: impl Fn(Stage) -> bool,
    ) -> Vec<Window> {
        self.keys.get(key).map_or_else(Vec::new, |state| {
            state
                .windows()
                .filter(|s| stage_filter(s.stage) && s.window.overlaps(window))
                .map(|s| s.window)
                .collect()
        })
    }

    /// Replaces the sessions `hits` (by window order) with one slot at `into`, whose
    /// accumulator merges theirs, and applies `update` to it. Reports the replaced rows.
    fn merge_into(
        &mut self,
        key: &str,
        hits: &[Window],
        into: Window,
        stage: Stage,
        changes: &mut Vec<WindowChange>,
        update: impl FnOnce(&F, &mut WindowSlot<F::Acc>),
    ) {
        let mut slot = if hits == [into] {
            self.take_slot(key, &into)
                .expect("a hit is a slot of the key")
        } else {
            let mut slot = self.new_slot(into, stage);
            for window in hits {
                let old = self
                    .take_slot(key, window)
                    .expect("a hit is a slot of the key");
                self.fold.merge(&mut slot.acc, old.acc);
                slot.events += old.events;
                slot.revision = slot.revision.max(old.revision);
            }
            if !hits.is_empty() {
                changes.push(WindowChange::SessionMerged {
                    key: key.to_owned(),
                    removed: hits.to_vec(),
                    into,
                });
            }
            slot
        };
        update(&self.fold, &mut slot);
        self.put_slot(key, slot);
    }

    /// Handles every window whose due time the watermark has reached: an open window becomes
    /// complete or final, a complete one final, and a final one past its retention is
    /// evicted. In due order, then by key and window, so the output is deterministic.
    fn fire(&mut self, changes: &mut Vec<WindowChange>) {
        let Some(watermark) = self.watermark() else {
            return;
        };
        while self
            .timers
            .first()
            .is_some_and(|(due, _, _)| *due <= watermark)
        {
            let Some((_, key, window)) = self.timers.pop_first() else {
                break;
            };
            let Some(mut slot) = self
                .keys
                .get_mut(&key)
                .and_then(|s| s.windows.remove(&window))
            else {
                continue;
            };
            self.dirty.insert(key.clone());
            match slot.stage {
                // Past its retention (or kept by an earlier late policy): evicted.
                Stage::Final => {}
                _ if watermark >= self.final_at(&window) => {
                    changes.push(WindowChange::Final(self.result(&key, &slot)));
                    if matches!(self.config.late_policy, LatePolicy::Revise { .. }) {
                        slot.stage = Stage::Final;
                        self.put_slot(&key, slot);
                    }
                }
                // An open window reached its end: the on-time result, still amendable.
                _ => {
                    slot.stage = Stage::Complete;
                    changes.push(WindowChange::Upsert {
                        result: self.result(&key, &slot),
                        complete: true,
                    });
                    self.put_slot(&key, slot);
                }
            }
            if self.keys.get(&key).is_some_and(KeyState::is_empty) {
                self.keys.remove(&key);
            }
        }
    }
}
