//! A windowed projection over the API: its results by key and finality, and a subscription
//! that sends each window when it becomes final.

use crate::common;

use common::*;
use serde_json::json;
use tidemark_api::TidemarkApp;
use tidemark_projections::windowing::{
    key_partition, Aggregate, EventTimeSource, FieldPath, KeySource, LatePolicy, MissingTimePolicy,
    WatermarkConfig, WindowConfig, WindowSpec,
};
use tidemark_projections::WindowedProjection;

/// 10-second tumbling sums of `value` per `site`, on the `at` field (epoch ms), no lateness.
pub fn sums() -> WindowedProjection<Aggregate> {
    WindowedProjection::new(
        "site_sums",
        WindowConfig {
            spec: WindowSpec::Tumbling { size: 10_000 },
            allowed_lateness: 0,
            late_policy: LatePolicy::Drop,
            watermark: WatermarkConfig {
                out_of_orderness: 0,
                idle_timeout: None,
            },
        },
        Aggregate::Sum(FieldPath::field("value")),
    )
    .expect("a valid configuration")
    .with_key(KeySource::Payload(FieldPath::field("site")))
    .with_event_time(
        EventTimeSource::Payload(FieldPath::field("at")),
        MissingTimePolicy::Park,
    )
}

const WINDOWS: &str = "query($key: String, $finalOnly: Boolean!) {
    windows(projection: \"site_sums\", key: $key, finalOnly: $finalOnly) {
        key start end status aggregate events revision
    }
}";

#[tokio::test]
async fn window_results_are_read_by_key_and_finality_and_final_windows_are_pushed() {
    let app = spawn_app_with(TidemarkApp::builder().projection(sums()).build(), |_| {}).await;
    let mut finals = app
        .subscribe(
            "subscription { windowChanges(projection: \"site_sums\", key: \"A\", intervalMs: 50) { key start end status aggregate } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    // One sensor stream (one partition): its watermark is the latest reading time, so the
    // reading at 12 s closes the window [0 s, 10 s) of site A.
    app.append(
        "sensor-1",
        json!([
            { "type": "Reading", "data": { "site": "A", "at": 1_000, "value": 5 } },
            { "type": "Reading", "data": { "site": "B", "at": 2_000, "value": 100 } },
            { "type": "Reading", "data": { "site": "A", "at": 5_000, "value": 7 } },
        ]),
    )
    .await;
    app.append(
        "sensor-1",
        json!([{ "type": "Reading", "data": { "site": "A", "at": 12_000, "value": 1 } }]),
    )
    .await;

    let pushed = finals.next().await;
    assert_eq!(
        pushed["windowChanges"],
        json!({
            "key": "A",
            "start": "1970-01-01T00:00:00+00:00",
            "end": "1970-01-01T00:00:10+00:00",
            "status": "final",
            "aggregate": 12
        }),
        "{pushed}"
    );
    finals.close().await;

    let site_a = eventually("site A's windows", WAIT, || async {
        let data = app
            .graphql_data(
                WINDOWS,
                json!({ "key": "A", "finalOnly": false }),
                Some(READ_KEY),
            )
            .await;
        let rows = data["windows"].as_array().cloned().unwrap_or_default();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(
        site_a
            .iter()
            .map(|r| (
                r["status"].as_str().unwrap(),
                r["aggregate"].as_i64().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("final", 12), ("open", 1)]
    );
    let final_only = app
        .graphql_data(WINDOWS, json!({ "finalOnly": true }), Some(READ_KEY))
        .await;
    // Each shard (the partition a key hashes to) has its own watermark: B's window is final
    // only if B shares A's shard.
    let same_shard = key_partition("A", 16) == key_partition("B", 16);
    assert_eq!(
        final_only["windows"].as_array().map(Vec::len),
        Some(if same_shard { 2 } else { 1 }),
        "{final_only}"
    );

    let unknown = app
        .graphql(
            "{ windows(projection: \"nope\") { key } }",
            json!({}),
            Some(READ_KEY),
        )
        .await;
    assert_error(&unknown, "NOT_FOUND");
    let refused = app
        .graphql(
            "{ windows(projection: \"site_sums\") { key } }",
            json!({}),
            None,
        )
        .await;
    assert_error(&refused, "UNAUTHENTICATED");
}
