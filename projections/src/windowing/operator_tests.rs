//! Tests of the window operator: every window kind against a brute-force reference, late
//! events under each policy, session merges, idle partitions, and continuing exactly from a
//! restored state.

use super::testing::XorShift;
use super::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Ev {
    partition: i16,
    key: String,
    time: TimeMs,
    amount: i64,
    processing_time: TimeMs,
}

/// `n` events over `keys` keys and 4 partitions. Event times rise by up to `step` (with an
/// occasional pause, so sessions end) and each is up to `jitter` before that rising base,
/// starting before the epoch.
fn generate(seed: u64, n: usize, keys: u64, step: u64, jitter: u64) -> Vec<Ev> {
    let mut rng = XorShift::new(seed);
    let mut base = -5_000 + rng.below(1_000) as TimeMs;
    (0..n)
        .map(|i| {
            base += if rng.below(12) == 0 {
                rng.below(600)
            } else {
                rng.below(step)
            } as TimeMs;
            let key = format!("k{}", rng.below(keys));
            Ev {
                partition: key_partition(&key, 4),
                time: base - rng.below(jitter + 1) as TimeMs,
                amount: rng.below(200) as i64 - 100,
                processing_time: i as TimeMs * 10,
                key,
            }
        })
        .collect()
}

fn apply_one<F: WindowFold>(op: &mut WindowOperator<F>, e: &Ev) -> Vec<WindowChange> {
    let value = json!({ "amount": e.amount });
    op.apply(
        WindowInput {
            partition: e.partition,
            key: &e.key,
            time: e.time,
            value: &value,
        },
        e.processing_time,
    )
}

fn run<F: WindowFold>(op: &mut WindowOperator<F>, events: &[Ev]) -> Vec<WindowChange> {
    let mut changes = Vec::new();
    let mut last = op.watermark();
    for e in events {
        changes.extend(apply_one(op, e));
        assert!(op.watermark() >= last, "the watermark went back");
        last = op.watermark();
    }
    changes
}

type Table = BTreeMap<(String, Window), (Value, u64)>;

/// The windows of every event, computed without the operator: by division for fixed windows,
/// by sorting and splitting at gaps for sessions.
fn reference(spec: WindowSpec, events: &[Ev], aggregate: &Aggregate) -> Table {
    let mut groups: BTreeMap<(String, Window), Vec<i64>> = BTreeMap::new();
    match spec {
        WindowSpec::Tumbling { size } => {
            for e in events {
                let start = e.time.div_euclid(size) * size;
                groups
                    .entry((e.key.clone(), Window::new(start, start + size)))
                    .or_default()
                    .push(e.amount);
            }
        }
        WindowSpec::Sliding { size, slide } => {
            for e in events {
                for k in (e.time - size).div_euclid(slide)..=e.time.div_euclid(slide) {
                    let window = Window::new(k * slide, k * slide + size);
                    if window.start <= e.time && e.time < window.end {
                        groups
                            .entry((e.key.clone(), window))
                            .or_default()
                            .push(e.amount);
                    }
                }
            }
        }
        WindowSpec::Session { gap } => {
            let mut by_key: BTreeMap<&str, Vec<(TimeMs, i64)>> = BTreeMap::new();
            for e in events {
                by_key.entry(&e.key).or_default().push((e.time, e.amount));
            }
            for (key, mut points) in by_key {
                points.sort();
                let mut session: Vec<(TimeMs, i64)> = Vec::new();
                for point in points {
                    if let Some(last) = session.last() {
                        if point.0 - last.0 >= gap {
                            let window = Window::new(session[0].0, last.0 + gap);
                            let amounts = session.drain(..).map(|p| p.1).collect();
                            groups.insert((key.to_owned(), window), amounts);
                        }
                    }
                    session.push(point);
                }
                let window = Window::new(session[0].0, session[session.len() - 1].0 + gap);
                groups.insert(
                    (key.to_owned(), window),
                    session.into_iter().map(|p| p.1).collect(),
                );
            }
        }
    }
    groups
        .into_iter()
        .map(|(k, amounts)| {
            let n = amounts.len() as u64;
            (k, (expected_output(aggregate, &amounts), n))
        })
        .collect()
}

fn expected_output(aggregate: &Aggregate, amounts: &[i64]) -> Value {
    let sum: i64 = amounts.iter().sum();
    match aggregate {
        Aggregate::Count => json!(amounts.len()),
        Aggregate::Sum(_) => json!(sum),
        Aggregate::Min(_) => json!(amounts.iter().min()),
        Aggregate::Max(_) => json!(amounts.iter().max()),
        Aggregate::Average(_) => json!(sum as f64 / amounts.len() as f64),
    }
}

/// The `Final` results; a window is final once.
fn finals(changes: &[WindowChange]) -> Table {
    let mut table = Table::new();
    for change in changes {
        if let WindowChange::Final(r) = change {
            let previous = table.insert((r.key.clone(), r.window), (r.aggregate.clone(), r.events));
            assert!(previous.is_none(), "{} {} final twice", r.key, r.window);
        }
    }
    table
}

/// The read-model table the changes produce when written with [`row_ops`].
fn table(changes: &[WindowChange]) -> BTreeMap<(String, Window), (RowStatus, Value, u64)> {
    let mut rows = BTreeMap::new();
    for op in row_ops(changes) {
        match op {
            RowOp::Upsert { status, result } => {
                rows.insert(
                    (result.key, result.window),
                    (status, result.aggregate, result.events),
                );
            }
            RowOp::Delete { key, window } => {
                rows.remove(&(key, window));
            }
        }
    }
    rows
}

fn amount() -> FieldPath {
    FieldPath::field("amount")
}

fn aggregates() -> Vec<Aggregate> {
    vec![
        Aggregate::Count,
        Aggregate::Sum(amount()),
        Aggregate::Min(amount()),
        Aggregate::Max(amount()),
        Aggregate::Average(amount()),
    ]
}

fn specs() -> Vec<WindowSpec> {
    vec![
        WindowSpec::Tumbling { size: 100 },
        WindowSpec::Tumbling { size: 1_000 },
        WindowSpec::Sliding {
            size: 300,
            slide: 100,
        },
        WindowSpec::Sliding {
            size: 250,
            slide: 60,
        },
        WindowSpec::Session { gap: 150 },
        WindowSpec::Session { gap: 40 },
    ]
}

fn config(
    spec: WindowSpec,
    ooo: DurationMs,
    lateness: DurationMs,
    policy: LatePolicy,
) -> WindowConfig {
    WindowConfig {
        spec,
        allowed_lateness: lateness,
        late_policy: policy,
        watermark: WatermarkConfig {
            out_of_orderness: ooo,
            idle_timeout: None,
        },
    }
}

#[test]
fn every_window_kind_matches_a_brute_force_reference() {
    // (out-of-orderness, jitter, allowed lateness): events are never later than the
    // out-of-orderness, or late but always within the allowed lateness. Either way every
    // event counts, so the final results are the reference's.
    for (ooo, jitter, lateness) in [(30, 30, 0), (20, 60, 50)] {
        for seed in 1..=3 {
            let events = generate(seed, 400, 5, 30, jitter);
            for spec in specs() {
                for aggregate in aggregates() {
                    for policy in [LatePolicy::Drop, LatePolicy::Revise { retention: 100 }] {
                        let mut op = WindowOperator::new(
                            config(spec, ooo, lateness, policy),
                            aggregate.clone(),
                        )
                        .unwrap();
                        let mut changes = run(&mut op, &events);
                        changes.extend(op.advance_watermark_to(TimeMs::MAX));
                        let context = format!("{spec} {aggregate:?} seed {seed} ooo {ooo} jitter {jitter} lateness {lateness}");
                        assert!(
                            !changes.iter().any(|c| matches!(
                                c,
                                WindowChange::Dropped { .. }
                                    | WindowChange::Park { .. }
                                    | WindowChange::Revised(_)
                            )),
                            "{context}"
                        );
                        let expected = reference(spec, &events, &aggregate);
                        assert_eq!(finals(&changes), expected, "{context}");
                        let rows = table(&changes);
                        assert!(rows.values().all(|r| r.0 == RowStatus::Final), "{context}");
                        let rows: Table = rows
                            .into_iter()
                            .map(|(k, (_, value, n))| (k, (value, n)))
                            .collect();
                        assert_eq!(rows, expected, "{context}");
                        // Everything is final: nothing is kept.
                        assert_eq!(op.key_count(), 0, "{context}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_reference_sees_merges_and_late_updates() {
    // Guards the test above against degenerate input: sessions did merge, late events did
    // update complete windows.
    let events = generate(3, 400, 5, 30, 60);
    let mut op = WindowOperator::new(
        config(WindowSpec::Session { gap: 150 }, 20, 50, LatePolicy::Drop),
        Aggregate::Count,
    )
    .unwrap();
    let changes = run(&mut op, &events);
    let merges = changes
        .iter()
        .filter(|c| matches!(c, WindowChange::SessionMerged { removed, .. } if removed.len() > 1))
        .count();
    let late_updates = changes
        .iter()
        .filter(|c| matches!(c, WindowChange::Upsert { complete: true, .. }))
        .count();
    assert!(merges > 0 && late_updates > 0, "{merges} {late_updates}");
    let sessions = reference(WindowSpec::Session { gap: 150 }, &events, &Aggregate::Count);
    assert!(sessions.len() > 20, "{}", sessions.len());
}

/// Applies `amount: 1` for `key` at `time` on partition 0, at processing time 0.
fn ev<F: WindowFold>(op: &mut WindowOperator<F>, key: &str, time: TimeMs) -> Vec<WindowChange> {
    apply_one(
        op,
        &Ev {
            partition: 0,
            key: key.into(),
            time,
            amount: 1,
            processing_time: 0,
        },
    )
}

fn result(key: &str, start: TimeMs, end: TimeMs, n: u64, revision: u32) -> WindowResult {
    WindowResult {
        key: key.into(),
        window: Window::new(start, end),
        aggregate: json!(n),
        events: n,
        revision,
    }
}

fn upsert(key: &str, start: TimeMs, end: TimeMs, n: u64, complete: bool) -> WindowChange {
    WindowChange::Upsert {
        result: result(key, start, end, n, 0),
        complete,
    }
}

fn tumbling(lateness: DurationMs, policy: LatePolicy) -> WindowOperator<Aggregate> {
    WindowOperator::new(
        config(WindowSpec::Tumbling { size: 100 }, 0, lateness, policy),
        Aggregate::Sum(amount()),
    )
    .unwrap()
}

#[test]
fn a_too_late_event_is_dropped_and_counted() {
    let mut op = tumbling(0, LatePolicy::Drop);
    assert_eq!(ev(&mut op, "a", 10), vec![upsert("a", 0, 100, 1, false)]);
    assert_eq!(ev(&mut op, "a", 20), vec![upsert("a", 0, 100, 2, false)]);
    assert_eq!(
        ev(&mut op, "a", 150),
        vec![
            upsert("a", 100, 200, 1, false),
            WindowChange::Final(result("a", 0, 100, 2, 0))
        ]
    );
    assert_eq!(
        ev(&mut op, "a", 30),
        vec![WindowChange::Dropped {
            key: "a".into(),
            event_time: 30,
            windows: vec![Window::new(0, 100)],
            total: 1
        }]
    );
    assert_eq!(op.late_dropped(), 1);
    assert_eq!((op.open_windows(), op.retained_windows()), (1, 0));
}

#[test]
fn a_late_event_within_the_allowed_lateness_updates_the_complete_window() {
    let mut op = tumbling(100, LatePolicy::Drop);
    ev(&mut op, "a", 10);
    assert_eq!(
        ev(&mut op, "a", 150),
        vec![
            upsert("a", 100, 200, 1, false),
            // The on-time result.
            upsert("a", 0, 100, 1, true),
        ]
    );
    assert_eq!(ev(&mut op, "a", 30), vec![upsert("a", 0, 100, 2, true)]);
    // A late event for a window that had no events yet creates it, complete.
    assert_eq!(ev(&mut op, "b", 99), vec![upsert("b", 0, 100, 1, true)]);
    assert_eq!(
        ev(&mut op, "a", 250),
        vec![
            upsert("a", 200, 300, 1, false),
            WindowChange::Final(result("a", 0, 100, 2, 0)),
            upsert("a", 100, 200, 1, true),
            WindowChange::Final(result("b", 0, 100, 1, 0)),
        ]
    );
    assert_eq!(op.late_dropped(), 0);
}

#[test]
fn revise_updates_final_windows_during_the_retention() {
    let mut op = tumbling(0, LatePolicy::Revise { retention: 500 });
    ev(&mut op, "a", 10);
    ev(&mut op, "a", 150);
    assert_eq!(op.retained_windows(), 1);
    assert_eq!(
        ev(&mut op, "a", 30),
        vec![WindowChange::Revised(result("a", 0, 100, 2, 1))]
    );
    assert_eq!(
        ev(&mut op, "a", 31),
        vec![WindowChange::Revised(result("a", 0, 100, 3, 2))]
    );
    // A final window that had no events is created revised.
    assert_eq!(
        ev(&mut op, "b", 40),
        vec![WindowChange::Revised(result("b", 0, 100, 1, 1))]
    );
    // The retention of [0, 100) ends at 600: both are evicted silently.
    assert_eq!(
        ev(&mut op, "a", 650),
        vec![
            upsert("a", 600, 700, 1, false),
            WindowChange::Final(result("a", 100, 200, 1, 0)),
        ]
    );
    assert_eq!((op.open_windows(), op.retained_windows()), (1, 1));
    assert_eq!(
        ev(&mut op, "a", 50),
        vec![WindowChange::Dropped {
            key: "a".into(),
            event_time: 50,
            windows: vec![Window::new(0, 100)],
            total: 1
        }]
    );
    assert_eq!(
        ev(&mut op, "a", 199),
        vec![WindowChange::Revised(result("a", 100, 200, 2, 1))]
    );
}

#[test]
fn park_returns_the_event_and_leaves_the_state_alone() {
    let mut op = tumbling(0, LatePolicy::Park);
    ev(&mut op, "a", 10);
    ev(&mut op, "a", 150);
    op.take_delta();
    let before = op.snapshot();
    assert_eq!(
        ev(&mut op, "a", 30),
        vec![WindowChange::Park {
            reason: ParkReason::TooLate {
                key: "a".into(),
                event_time: 30,
                watermark: 150,
                windows: vec![Window::new(0, 100)]
            }
        }]
    );
    let after = op.snapshot();
    assert_eq!(after.keys, before.keys);
    assert_eq!(after.meta.watermark, before.meta.watermark);
    assert_eq!((op.late_parked(), op.late_dropped()), (1, 0));
    assert!(op.take_delta().keys.is_empty());
}

#[test]
fn a_sliding_event_late_for_some_windows_updates_the_others() {
    for policy in [LatePolicy::Drop, LatePolicy::Park] {
        let mut op = WindowOperator::new(
            config(
                WindowSpec::Sliding {
                    size: 100,
                    slide: 50,
                },
                0,
                0,
                policy,
            ),
            Aggregate::Count,
        )
        .unwrap();
        ev(&mut op, "a", 60);
        let fired = ev(&mut op, "a", 120);
        assert!(fired.contains(&WindowChange::Final(result("a", 0, 100, 1, 0))));
        // [0, 100) is final, [50, 150) is not: the event counts in [50, 150) only, under
        // either policy (an event is parked whole or not at all).
        assert_eq!(
            ev(&mut op, "a", 70),
            vec![
                upsert("a", 50, 150, 3, false),
                WindowChange::Dropped {
                    key: "a".into(),
                    event_time: 70,
                    windows: vec![Window::new(0, 100)],
                    total: 1
                }
            ]
        );
        let all_late = ev(&mut op, "a", 10);
        let windows = vec![Window::new(-50, 50), Window::new(0, 100)];
        match policy {
            LatePolicy::Park => assert_eq!(
                all_late,
                vec![WindowChange::Park {
                    reason: ParkReason::TooLate {
                        key: "a".into(),
                        event_time: 10,
                        watermark: 120,
                        windows
                    }
                }]
            ),
            _ => assert_eq!(
                all_late,
                vec![WindowChange::Dropped {
                    key: "a".into(),
                    event_time: 10,
                    windows,
                    total: 2
                }]
            ),
        }
    }
}

fn sessions(ooo: DurationMs, policy: LatePolicy) -> WindowOperator<Aggregate> {
    WindowOperator::new(
        config(WindowSpec::Session { gap: 10 }, ooo, 0, policy),
        Aggregate::Count,
    )
    .unwrap()
}

fn merged(key: &str, removed: &[(TimeMs, TimeMs)], into: (TimeMs, TimeMs)) -> WindowChange {
    WindowChange::SessionMerged {
        key: key.into(),
        removed: removed.iter().map(|&(s, e)| Window::new(s, e)).collect(),
        into: Window::new(into.0, into.1),
    }
}

#[test]
fn an_event_bridging_two_sessions_merges_them() {
    let mut op = sessions(100, LatePolicy::Drop);
    let mut all = Vec::new();
    let mut step = |op: &mut WindowOperator<Aggregate>, t| {
        let changes = ev(op, "a", t);
        all.extend(changes.clone());
        changes
    };
    assert_eq!(step(&mut op, 0), vec![upsert("a", 0, 10, 1, false)]);
    assert_eq!(step(&mut op, 15), vec![upsert("a", 15, 25, 1, false)]);
    assert_eq!(
        step(&mut op, 7),
        vec![
            merged("a", &[(0, 10), (15, 25)], (0, 25)),
            upsert("a", 0, 25, 3, false)
        ]
    );
    // Extending a session replaces its row too.
    assert_eq!(
        step(&mut op, 24),
        vec![
            merged("a", &[(0, 25)], (0, 34)),
            upsert("a", 0, 34, 4, false)
        ]
    );
    // Inside the session: same window.
    assert_eq!(step(&mut op, 3), vec![upsert("a", 0, 34, 5, false)]);
    // Exactly `gap` after the last event: a new session (half-open windows only touch).
    assert_eq!(step(&mut op, 34), vec![upsert("a", 34, 44, 1, false)]);
    assert_eq!(step(&mut op, 5), vec![upsert("a", 0, 34, 6, false)]);
    all.extend(op.advance_watermark_to(TimeMs::MAX));
    assert_eq!(
        table(&all)
            .into_iter()
            .map(|((_, w), (status, _, n))| (w.start, w.end, status, n))
            .collect::<Vec<_>>(),
        vec![(0, 34, RowStatus::Final, 6), (34, 44, RowStatus::Final, 1)]
    );
}

#[test]
fn a_late_event_may_extend_an_open_session_backwards() {
    let mut op = sessions(0, LatePolicy::Drop);
    ev(&mut op, "a", 30);
    // Late (below the watermark 30) but its merged session [25, 40) is not final.
    assert_eq!(
        ev(&mut op, "a", 25),
        vec![
            merged("a", &[(30, 40)], (25, 40)),
            upsert("a", 25, 40, 2, false)
        ]
    );
}

#[test]
fn too_late_session_events_under_each_policy() {
    for policy in [
        LatePolicy::Drop,
        LatePolicy::Park,
        LatePolicy::Revise { retention: 1_000 },
    ] {
        let mut op = sessions(0, policy);
        ev(&mut op, "a", 0);
        assert!(ev(&mut op, "a", 12).contains(&WindowChange::Final(result("a", 0, 10, 1, 0))));
        assert!(ev(&mut op, "a", 30).contains(&WindowChange::Final(result("a", 12, 22, 1, 0))));
        // [9, 19) is final at watermark 30; it overlaps both final sessions.
        let changes = ev(&mut op, "a", 9);
        match policy {
            LatePolicy::Drop => assert_eq!(
                changes,
                vec![WindowChange::Dropped {
                    key: "a".into(),
                    event_time: 9,
                    windows: vec![Window::new(9, 19)],
                    total: 1
                }]
            ),
            LatePolicy::Park => assert!(matches!(
                &changes[..],
                [WindowChange::Park {
                    reason: ParkReason::TooLate { .. }
                }]
            )),
            LatePolicy::Revise { .. } => {
                assert_eq!(
                    changes,
                    vec![
                        merged("a", &[(0, 10), (12, 22)], (0, 22)),
                        WindowChange::Revised(result("a", 0, 22, 3, 1))
                    ]
                );
                // A too-late session touching nothing is created revised.
                assert_eq!(
                    ev(&mut op, "b", 1),
                    vec![WindowChange::Revised(result("b", 1, 11, 1, 1))]
                );
                assert_eq!(op.retained_windows(), 2);
            }
        }
    }
}

#[test]
fn an_idle_partition_stops_holding_windows_open() {
    for idle_timeout in [None, Some(1_000)] {
        let mut cfg = config(WindowSpec::Tumbling { size: 100 }, 0, 0, LatePolicy::Drop);
        cfg.watermark.idle_timeout = idle_timeout;
        let mut op = WindowOperator::new(cfg, Aggregate::Count).unwrap();
        // Both partitions hold the watermark back from the start.
        op.register_partition(0, 0);
        op.register_partition(1, 0);
        let at = |op: &mut WindowOperator<Aggregate>, partition, key: &str, time, pt| {
            let value = json!({});
            op.apply(
                WindowInput {
                    partition,
                    key,
                    time,
                    value: &value,
                },
                pt,
            )
        };
        at(&mut op, 0, "a", 50, 0);
        assert_eq!(op.watermark(), None);
        at(&mut op, 1, "b", 10, 0);
        assert!(at(&mut op, 0, "a", 500, 100)
            .iter()
            .all(|c| !matches!(c, WindowChange::Final(_))));
        assert_eq!(op.watermark(), Some(10));
        let changes = op.advance_watermark(1_100);
        match idle_timeout {
            Some(_) => {
                assert_eq!(op.watermark(), Some(500));
                assert_eq!(
                    changes,
                    vec![
                        WindowChange::Final(result("a", 0, 100, 1, 0)),
                        WindowChange::Final(result("b", 0, 100, 1, 0)),
                    ]
                );
                // Partition 1 comes back with an old event: too late, and the watermark
                // stays.
                assert!(matches!(
                    &at(&mut op, 1, "b", 20, 1_200)[..],
                    [WindowChange::Dropped { .. }]
                ));
                assert_eq!(op.watermark(), Some(500));
            }
            None => {
                assert!(changes.is_empty());
                assert_eq!(op.watermark(), Some(10));
            }
        }
    }
}

#[test]
fn unusable_events_are_parked_without_touching_the_state() {
    let mut op = tumbling(0, LatePolicy::Drop);
    ev(&mut op, "a", 10);
    op.take_delta();
    let before = op.snapshot();
    let value = json!({"amount": "ten"});
    let changes = op.apply(
        WindowInput {
            partition: 0,
            key: "a",
            time: 500,
            value: &value,
        },
        0,
    );
    assert!(matches!(
        &changes[..],
        [WindowChange::Park {
            reason: ParkReason::Value(FoldError::NotANumber { .. })
        }]
    ));
    let value = json!({"amount": 1});
    let changes = op.apply(
        WindowInput {
            partition: 0,
            key: "a",
            time: MAX_TIME + 1,
            value: &value,
        },
        0,
    );
    assert_eq!(
        changes,
        vec![WindowChange::Park {
            reason: ParkReason::TimeOutOfRange {
                event_time: MAX_TIME + 1
            }
        }]
    );
    assert_eq!(op.snapshot(), before);
    assert!(op.take_delta().keys.is_empty());
}

#[test]
fn configurations_are_validated_and_restores_checked() {
    let bad = config(WindowSpec::Tumbling { size: 100 }, 0, -1, LatePolicy::Drop);
    assert!(matches!(
        WindowOperator::new(bad, Aggregate::Count),
        Err(WindowingError::Negative { .. })
    ));
    let bad = config(
        WindowSpec::Tumbling { size: 100 },
        0,
        0,
        LatePolicy::Revise { retention: -5 },
    );
    assert!(WindowOperator::new(bad, Aggregate::Count).is_err());

    let mut op = tumbling(0, LatePolicy::Revise { retention: 1_000 });
    ev(&mut op, "a", 10);
    ev(&mut op, "a", 150);
    let snapshot = op.snapshot();
    let changed_spec = config(WindowSpec::Tumbling { size: 50 }, 0, 0, LatePolicy::Drop);
    assert!(matches!(
        WindowOperator::restore(changed_spec, Aggregate::Sum(amount()), snapshot.clone()),
        Err(WindowingError::ConfigChanged { .. })
    ));
    let changed_lateness = config(WindowSpec::Tumbling { size: 100 }, 0, 10, LatePolicy::Drop);
    assert!(
        WindowOperator::restore(changed_lateness, Aggregate::Sum(amount()), snapshot.clone())
            .is_err()
    );
    // Another late policy is fine; final windows it does not keep are evicted.
    let mut restored = WindowOperator::restore(
        config(WindowSpec::Tumbling { size: 100 }, 50, 0, LatePolicy::Drop),
        Aggregate::Sum(amount()),
        snapshot,
    )
    .unwrap();
    assert_eq!(
        (restored.open_windows(), restored.retained_windows()),
        (1, 0)
    );
    assert_eq!(restored.take_delta().keys.len(), 1);
}

/// Runs `events` in batches of random sizes, storing each batch's delta in a map through
/// JSON as an engine would, and checks that the stored state ends up as the operator's.
fn run_with_deltas(
    op: &mut WindowOperator<Aggregate>,
    events: &[Ev],
    stored: &mut BTreeMap<String, Value>,
    rng: &mut XorShift,
) -> (Vec<Vec<WindowChange>>, Value) {
    let mut out = Vec::new();
    let mut meta = Value::Null;
    let mut i = 0;
    while i < events.len() {
        let end = (i + 1 + rng.below(7) as usize).min(events.len());
        for e in &events[i..end] {
            out.push(apply_one(op, e));
        }
        let delta = op.take_delta();
        for (key, state) in delta.keys {
            match state {
                Some(state) => stored.insert(key, serde_json::to_value(state).unwrap()),
                None => stored.remove(&key),
            };
        }
        meta = serde_json::to_value(delta.meta).unwrap();
        i = end;
    }
    let live = serde_json::to_value(op.snapshot().keys).unwrap();
    assert_eq!(serde_json::to_value(&*stored).unwrap(), live);
    (out, meta)
}

#[test]
fn a_restored_operator_continues_exactly_like_an_uninterrupted_one() {
    let policies = [
        LatePolicy::Drop,
        LatePolicy::Park,
        LatePolicy::Revise { retention: 200 },
    ];
    let mut too_late_seen = BTreeMap::new();
    for seed in 1..=3 {
        // Jitter beyond out-of-orderness plus lateness: some events are too late, so the
        // late policies take part. Seed 1 uses one partition, where the watermark follows
        // the events closely and more of them are too late.
        let mut events = generate(seed, 300, 4, 30, 300);
        if seed == 1 {
            events.iter_mut().for_each(|e| e.partition = 0);
        }
        for spec in specs() {
            for policy in policies {
                let mut cfg = config(spec, 20, 40, policy);
                cfg.watermark.idle_timeout = Some(200);
                let aggregate = Aggregate::Average(amount());
                let new = || WindowOperator::new(cfg.clone(), aggregate.clone()).unwrap();

                let mut whole = new();
                let mut expected: Vec<Vec<WindowChange>> =
                    events.iter().map(|e| apply_one(&mut whole, e)).collect();
                expected.push(whole.advance_watermark(10_000));
                expected.push(whole.advance_watermark_to(TimeMs::MAX));
                let late = expected.iter().flatten().any(|c| {
                    matches!(
                        c,
                        WindowChange::Dropped { .. }
                            | WindowChange::Park { .. }
                            | WindowChange::Revised(_)
                    )
                });
                *too_late_seen
                    .entry(format!("{spec} {policy:?}"))
                    .or_insert(false) |= late;

                let mut rng = XorShift::new(seed * 31);
                for _ in 0..3 {
                    let split = rng.below(events.len() as u64) as usize;
                    let context = format!("{spec} {policy:?} seed {seed} split {split}");

                    // Whole snapshot, through a JSON string.
                    let mut first = new();
                    let mut got: Vec<Vec<WindowChange>> = events[..split]
                        .iter()
                        .map(|e| apply_one(&mut first, e))
                        .collect();
                    let text = serde_json::to_string(&first.snapshot()).unwrap();
                    let mut second = WindowOperator::restore(
                        cfg.clone(),
                        aggregate.clone(),
                        serde_json::from_str(&text).unwrap(),
                    )
                    .unwrap();
                    assert_eq!(second.snapshot(), first.snapshot(), "{context}");
                    got.extend(events[split..].iter().map(|e| apply_one(&mut second, e)));
                    got.push(second.advance_watermark(10_000));
                    got.push(second.advance_watermark_to(TimeMs::MAX));
                    assert_eq!(got, expected, "{context}");

                    // Per-key deltas stored batch by batch.
                    let mut stored = BTreeMap::new();
                    let mut first = new();
                    let (mut got, meta) =
                        run_with_deltas(&mut first, &events[..split], &mut stored, &mut rng);
                    let meta: OperatorMeta = match meta {
                        Value::Null => first.meta(),
                        meta => serde_json::from_value(meta).unwrap(),
                    };
                    let keys = stored
                        .clone()
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::from_value(v).unwrap()));
                    let mut second =
                        WindowOperator::restore_parts(cfg.clone(), aggregate.clone(), meta, keys)
                            .unwrap();
                    let (rest, _) =
                        run_with_deltas(&mut second, &events[split..], &mut stored, &mut rng);
                    got.extend(rest);
                    got.push(second.advance_watermark(10_000));
                    got.push(second.advance_watermark_to(TimeMs::MAX));
                    assert_eq!(got, expected, "{context} (deltas)");
                }
            }
        }
    }
    for (case, seen) in too_late_seen {
        assert!(seen, "{case}: no too-late events");
    }
}

/// An engine that keeps one row per key may load, per batch, only the keys the batch
/// touches, then the keys whose `next_due` the new watermark has reached
/// (`restore_more_keys`): the rows written batch by batch equal those of an operator that
/// held every key throughout, for every window kind and late policy, with many keys and
/// out-of-order events.
#[test]
fn loading_only_touched_and_due_keys_writes_the_same_rows_as_holding_every_key() {
    let policies = [
        LatePolicy::Drop,
        LatePolicy::Park,
        LatePolicy::Revise { retention: 200 },
    ];
    let mut partial_loads = 0usize;
    let mut due_loads = 0usize;
    for seed in 1..=3 {
        let events = generate(seed, 400, 40, 30, 300);
        for spec in specs() {
            for policy in policies {
                let cfg = config(spec, 20, 40, policy);
                let aggregate = Aggregate::Sum(amount());
                let context = format!("{spec} {policy:?} seed {seed}");
                let mut whole = WindowOperator::new(cfg.clone(), aggregate.clone()).unwrap();
                let mut expected: Vec<WindowChange> = Vec::new();
                let mut got: Vec<WindowChange> = Vec::new();
                // The stored rows: state and next_due per key; the meta.
                let mut stored: BTreeMap<String, (Value, Option<TimeMs>)> = BTreeMap::new();
                let mut meta: Option<OperatorMeta> = None;
                let mut rng = XorShift::new(seed * 17);
                let mut i = 0;
                while i < events.len() {
                    let end = (i + 1 + rng.below(9) as usize).min(events.len());
                    let batch = &events[i..end];
                    for e in batch {
                        let out = apply_one(&mut whole, e);
                        if !matches!(out.first(), Some(WindowChange::Park { .. })) {
                            expected.extend(out);
                        }
                    }

                    let mut touched: Vec<&str> = batch.iter().map(|e| e.key.as_str()).collect();
                    touched.sort_unstable();
                    touched.dedup();
                    let load = |keys: &mut dyn Iterator<Item = &String>| {
                        keys.map(|k| {
                            (
                                k.clone(),
                                serde_json::from_value(stored[k].0.clone()).unwrap(),
                            )
                        })
                        .collect::<Vec<(String, KeyState<NumericAcc>)>>()
                    };
                    let mut op = match &meta {
                        None => WindowOperator::new(cfg.clone(), aggregate.clone()).unwrap(),
                        Some(meta) => {
                            let keys =
                                load(&mut stored.keys().filter(|k| touched.contains(&k.as_str())));
                            partial_loads += usize::from(keys.len() < stored.len());
                            WindowOperator::restore_parts(
                                cfg.clone(),
                                aggregate.clone(),
                                meta.clone(),
                                keys,
                            )
                            .unwrap()
                        }
                    };
                    for e in batch {
                        let out = apply_one(&mut op, e);
                        if !matches!(out.first(), Some(WindowChange::Park { .. })) {
                            got.extend(out);
                        }
                    }
                    if let Some(watermark) = op.watermark() {
                        let due = load(&mut stored.iter().filter_map(|(k, (_, due))| {
                            (!touched.contains(&k.as_str())
                                && due.is_some_and(|due| due <= watermark))
                            .then_some(k)
                        }));
                        due_loads += due.len();
                        got.extend(op.restore_more_keys(due));
                    }
                    let delta = op.take_delta();
                    for (key, state) in delta.keys {
                        match state {
                            Some(state) => {
                                let next_due = op.next_due(&key);
                                stored.insert(key, (serde_json::to_value(state).unwrap(), next_due))
                            }
                            None => stored.remove(&key),
                        };
                    }
                    meta = Some(delta.meta);
                    // After each batch the rows written so far are the same.
                    assert_eq!(table(&got), table(&expected), "{context} after event {end}");
                    i = end;
                }
                let held: BTreeMap<String, Value> = stored
                    .into_iter()
                    .map(|(k, (state, _))| (k, state))
                    .collect();
                assert_eq!(
                    serde_json::to_value(held).unwrap(),
                    serde_json::to_value(whole.snapshot().keys).unwrap(),
                    "{context}: the stored state"
                );
            }
        }
    }
    assert!(partial_loads > 100, "batches loaded only some keys");
    assert!(
        due_loads > 100,
        "untouched keys were loaded because they fell due"
    );
}
