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
