//! Windowed projections in the engine (docs/windowing.md): event-time windows per key over
//! events of many streams, with out-of-order times and late events, give exactly the results
//! of a fresh fold of the log — after batches that crash between their writes and their
//! commit, after the engine is stopped and started again half-way, and after a rebuild.

use crate::common;

use async_trait::async_trait;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tidemark_projections::windowing::{
    Aggregate, EventTimeSource, FieldPath, KeySource, LatePolicy, MissingTimePolicy,
    WatermarkConfig, WindowConfig, WindowSpec,
};
use tidemark_projections::{
    ApplyContext, EventSelector, Grouping, Projection, ProjectionError, RecordedEvent, Registry,
    WindowedProjection,
};
use tidemark_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use tidemark_testkit::TestDatabase;

fn config(spec: WindowSpec, late_policy: LatePolicy) -> WindowConfig {
    WindowConfig {
        spec,
        allowed_lateness: 1_000,
        late_policy,
        watermark: WatermarkConfig {
            out_of_orderness: 2_000,
            idle_timeout: Some(5_000),
        },
    }
}

/// The two windowed projections under test: 10 s tumbling sums per site, and per-site
/// sessions (3 s gap) counting readings, revising closed sessions for late readings.
fn projections() -> (WindowedProjection<Aggregate>, WindowedProjection<Aggregate>) {
    let site = KeySource::Payload(FieldPath::field("site"));
    let at = EventTimeSource::Payload(FieldPath::field("at"));
    let tumbling = WindowedProjection::new(
        "site_sums",
        config(WindowSpec::Tumbling { size: 10_000 }, LatePolicy::Drop),
        Aggregate::Sum(FieldPath::field("value")),
    )
    .expect("a valid configuration")
    .with_selector(EventSelector::categories(["sensor"]))
    .with_key(site.clone())
    .with_event_time(at.clone(), MissingTimePolicy::Park);
    let sessions = WindowedProjection::new(
        "site_sessions",
        config(
            WindowSpec::Session { gap: 3_000 },
            LatePolicy::Revise { retention: 60_000 },
        ),
        Aggregate::Count,
    )
    .expect("a valid configuration")
    .with_selector(EventSelector::categories(["sensor"]))
    .with_key(site)
    .with_event_time(at, MissingTimePolicy::Park);
    (tumbling, sessions)
}

/// A projection that fails, now and then, after its writes and before the commit: the
/// batch's transaction rolls back and the lane retries it from the checkpoint.
struct Crashing<P> {
    inner: P,
    rng: Mutex<StdRng>,
    crashes: Arc<AtomicUsize>,
}

#[async_trait]
impl<P: Projection> Projection for Crashing<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn selector(&self) -> EventSelector {
        self.inner.selector()
    }

    fn grouping(&self) -> Grouping {
        self.inner.grouping()
    }

    fn kind(&self) -> tidemark_projections::ProjectionKind {
        self.inner.kind()
    }

    async fn setup(&self, ctx: &ApplyContext<'_>) -> Result<(), ProjectionError> {
        self.inner.setup(ctx).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        self.inner.apply(ctx, events).await?;
        if self.rng.lock().unwrap().random_bool(0.2) {
            self.crashes.fetch_add(1, Ordering::SeqCst);
            return Err(ProjectionError::transient(
                "injected: crashed after the window writes, before the commit",
            ));
        }
        Ok(())
    }
}

fn registry(seed: u64, crashes: &Arc<AtomicUsize>) -> Registry {
    let (tumbling, sessions) = projections();
    let crashing = |inner, salt| Crashing {
        inner,
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ salt)),
        crashes: crashes.clone(),
    };
    Registry::new()
        .projection(crashing(tumbling, 1))
        .projection(crashing(sessions, 2))
}

/// Readings from 40 sensors (streams) at 3 sites (keys), times roughly increasing with
/// jitter of up to ±4 s and one in 25 held back 20-40 s (late), in appends of a few events;
/// one in 97 has no `at` and is parked.
async fn append_readings(store: &EventStore, rng: &mut StdRng, from: i64, count: i64) {
    let base = 1_800_000_000_000_i64;
    let mut i = from;
    while i < from + count {
        let stream = format!("sensor-{}", rng.random_range(0..40));
        let events: Vec<NewEvent> = (0..rng.random_range(1..=4))
            .map(|_| {
                i += 1;
                // A few sensors buffered their reading for 20-40 s: late by any measure.
                let buffered = if rng.random_bool(0.04) {
                    rng.random_range(20_000..40_000)
                } else {
                    0
                };
                let at = base + i * 700 + rng.random_range(-4_000..=4_000) - buffered;
                let mut payload = json!({
                    "site": format!("site-{}", rng.random_range(0..3)),
                    "value": rng.random_range(1..50),
                });
                if i % 97 != 0 {
                    payload["at"] = json!(at);
                }
                NewEvent::new("Reading", payload)
            })
            .collect();
        store
            .append(AppendRequest::new(stream, ExpectedVersion::Any, events))
            .await
            .expect("appending readings");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windowed_results_equal_a_fresh_fold_after_crashes_restarts_and_a_rebuild() {
    let seed = seed(0x0d0d_0001);
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDatabase::create().await;
    let store = open_store(&db).await;
    let crashes = Arc::new(AtomicUsize::new(0));

    // A backlog, then more while the engine runs, then a restart half-way, then the rest.
    append_readings(&store, &mut rng, 0, 400).await;
    let engine = engine(&store, registry(seed, &crashes));
    engine.start().await.expect("the engine starts");
    append_readings(&store, &mut rng, 400, 200).await;
    engine.shutdown().await;
    let engine = common::engine(&store, registry(seed ^ 7, &crashes));
    engine.start().await.expect("the engine starts again");
    append_readings(&store, &mut rng, 600, 200).await;
    caught_up(&engine, "site_sums", BACKLOG_DEADLINE).await;
    caught_up(&engine, "site_sessions", BACKLOG_DEADLINE).await;
    assert!(crashes.load(Ordering::SeqCst) > 0, "some batches crashed");

    let log = read_all(&store).await;
    let client = connect(&db).await;
    let sensors = EventSelector::categories(["sensor"]);
    let site = KeySource::Payload(FieldPath::field("site"));
    let at = EventTimeSource::Payload(FieldPath::field("at"));
    let (sums, unwindowed) = fold_windows(
        &log,
        WindowedBy {
            selector: &sensors,
            key: &site,
            time: &at,
        },
        &config(WindowSpec::Tumbling { size: 10_000 }, LatePolicy::Drop),
        Aggregate::Sum(FieldPath::field("value")),
        store.partitions(),
    );
    let (session_counts, _) = fold_windows(
        &log,
        WindowedBy {
            selector: &sensors,
            key: &site,
            time: &at,
        },
        &config(
            WindowSpec::Session { gap: 3_000 },
            LatePolicy::Revise { retention: 60_000 },
        ),
        Aggregate::Count,
        store.partitions(),
    );
    assert!(
        sums.values().any(|(status, ..)| status == "final"),
        "some windows closed"
    );
    assert!(
        session_counts
            .values()
            .any(|(status, ..)| status == "revised"),
        "some late readings revised closed sessions"
    );
    assert_same_rows(
        "tumbling sums after crashes and a restart",
        &read_windows(&client, "rm_site_sums").await,
        &sums,
    );
    assert_same_rows(
        "sessions after crashes and a restart",
        &read_windows(&client, "rm_site_sessions").await,
        &session_counts,
    );
    let late: i64 = client
        .query_one(
            "SELECT coalesce(sum(late_dropped), 0)::bigint FROM rm_site_sums.window_meta",
            &[],
        )
        .await
        .expect("late counters")
        .get(0);
    assert!(late > 0, "some readings came too late for their window");
    let parked = engine
        .dead_letters(Some("site_sums"), false)
        .await
        .expect("dead letters");
    assert_eq!(
        parked.len(),
        unwindowed,
        "readings without a time are parked"
    );
    let status = engine.projection_status("site_sums").await.expect("status");
    let window = status
        .window
        .expect("a windowed projection reports its watermark");
    assert_eq!(window.late_dropped, late, "status reads the late counters");
    assert!(window.watermark.is_some(), "{window:?}");
    assert_eq!(
        window.open_windows,
        sums.values()
            .filter(|(s, ..)| s == "open" || s == "complete")
            .count() as i64
    );

    // A rebuild folds the same log through one build lane and swaps in the same rows.
    engine
        .rebuild("site_sums", None)
        .await
        .expect("the rebuild");
    engine
        .rebuild("site_sessions", None)
        .await
        .expect("the rebuild");
    assert_same_rows(
        "tumbling sums after a rebuild",
        &read_windows(&client, "rm_site_sums").await,
        &sums,
    );
    assert_same_rows(
        "sessions after a rebuild",
        &read_windows(&client, "rm_site_sessions").await,
        &session_counts,
    );
    engine.shutdown().await;
    store.shutdown().await;
}
