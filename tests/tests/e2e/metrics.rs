//! `/metrics` as a dashboard needs it: every exported metric is in the catalog with `HELP`
//! text and its type, latencies are histograms (combinable across processes), and the
//! unlabeled counters and `tidemark_build_info` are there before anything happened to them.

use crate::common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use tidemark_api::telemetry::catalog::{MetricKind, METRICS};

#[tokio::test]
async fn every_exported_metric_has_help_and_its_catalog_type_and_counters_start_present() {
    let app = spawn_app().await;
    app.append("metrics-1", json!([{ "type": "E", "data": {} }]))
        .await;
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);

    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name.to_string(), kind.to_string());
            }
            (Some("#"), Some("HELP"), Some(name), Some(help)) => {
                helps.insert(name.to_string(), help.to_string());
            }
            _ => {}
        }
    }
    assert!(types.contains_key("tidemark_append_seconds"), "{text}");
    for (name, kind) in &types {
        let entry = METRICS
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} is exported but not in the catalog"));
        let expected = match entry.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert_eq!(kind, expected, "{name}");
        assert!(
            helps.get(name).is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
    }
    for counter in METRICS
        .iter()
        .filter(|m| m.kind == MetricKind::Counter && m.labels.is_empty())
    {
        assert!(
            types.contains_key(counter.name),
            "{} is missing before it was ever incremented",
            counter.name
        );
    }
    assert!(
        text.contains(&format!(
            "tidemark_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains("tidemark_append_seconds_bucket{le=\"0.005\"}"),
        "latencies have buckets: {text}"
    );
}

/// The committed Grafana dashboard (`docs/grafana/tidemark.json`) queries only metrics a
/// running server exports: each name in its expressions (a histogram's `_bucket` series
/// included) is in the catalog and appears on `/metrics` of a server with a projection and
/// a read replica (a standby of its own primary, for the `tidemark_replica_*` panels).
#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/tidemark.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard file"))
            .expect("the dashboard is JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            for (at, _) in expr.match_indices("tidemark_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() > 10, "{queried:?}");

    let cluster = tidemark_testkit::replica::ReplicatedCluster::start().await;
    let app = spawn_app_replicated(
        &cluster,
        tidemark_api::TidemarkApp::builder()
            .projection(crate::windows::sums())
            .build(),
        |config| config.metrics_interval = std::time::Duration::from_millis(100),
    )
    .await;
    app.append(
        "sensor-9",
        json!([{ "type": "Reading", "data": { "site": "A", "at": 1, "value": 1 } }]),
    )
    .await;
    let _ = app.graphql("{ nope }", json!({}), Some(READ_KEY)).await;
    // A rebuild, for the build-progress gauge.
    let rebuild = app
        .graphql(
            "mutation { rebuildProjection(name: \"site_sums\") { projection } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await;
    assert_no_errors(&rebuild);
    // A consumer group, so its per-group figures are exported.
    assert_no_errors(
        &app.graphql(
            "mutation { createConsumerGroup(name: \"dash\") { name } }",
            json!({}),
            Some(ADMIN_KEY),
        )
        .await,
    );
    let text = eventually(
        "the projection, build, pool and consumer group figures",
        WAIT,
        || async {
            let (_, text) = app.get("/metrics").await;
            (text.contains("tidemark_projection_lag_events")
                && text.contains("tidemark_db_pool_connections")
                && text.contains("tidemark_projection_apply_seconds_bucket")
                && text.contains("tidemark_projection_build_progress")
                && text.contains("tidemark_consumer_group_redeliveries_total")
                && text.contains("tidemark_replica_lag_seconds")
                // Published by the lease observer once the lease loop has ticked.
                && text.contains("tidemark_desired_workers"))
            .then_some(text)
        },
    )
    .await;
    for name in &queried {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            METRICS.iter().any(|m| m.name == base),
            "the dashboard queries {name}, which is not in the catalog"
        );
        assert!(
            text.lines().any(|l| l.starts_with(name.as_str())),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
    }
    let mut app = app;
    app.stop().await;
    cluster.stop().await;
}
