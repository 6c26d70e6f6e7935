//! Prometheus figures for projections (through the `metrics` facade).

use crate::status::ProjectionStatus;

/// Puts the projection's counters in place at 0 (a dashboard shows "No data" for a series
/// that does not exist yet, not 0). Adding 0 leaves an existing counter as it is.
pub(crate) fn register_counters(projection: &str) {
    let name = projection.to_string();
    metrics::counter!("tidemark_projection_parked_total", "projection" => name.clone())
        .increment(0);
    metrics::counter!("tidemark_projection_fenced_total", "projection" => name.clone())
        .increment(0);
    metrics::counter!("tidemark_projection_errors_total", "projection" => name.clone(), "kind" => "transient").increment(0);
    metrics::counter!("tidemark_projection_errors_total", "projection" => name.clone(), "kind" => "failed").increment(0);
    metrics::counter!("tidemark_projection_errors_total", "projection" => name.clone(), "kind" => "lane").increment(0);
    metrics::counter!("tidemark_projection_errors_total", "projection" => name.clone(), "kind" => "panic")
        .increment(0);
    metrics::counter!("tidemark_projection_events_applied_total", "projection" => name)
        .increment(0);
}

/// Counts a batch a lane committed: its events and how long applying and committing took.
pub(crate) fn record_batch(projection: &str, events: usize, took: std::time::Duration) {
    let name = projection.to_string();
    metrics::counter!("tidemark_projection_events_applied_total", "projection" => name.clone())
        .increment(events as u64);
    metrics::histogram!("tidemark_projection_apply_seconds", "projection" => name)
        .record(took.as_secs_f64());
}

/// Publishes the connection figures of the process's database pool.
pub(crate) fn publish_pool(store: &tidemark_store::EventStore) {
    let status = store.pool().status();
    for (state, value) in [
        ("open", status.size),
        ("idle", status.available),
        ("max", status.max_size),
        ("waiting", status.waiting),
    ] {
        metrics::gauge!("tidemark_db_pool_connections", "state" => state).set(value as f64);
    }
}

/// Publishes lag gauges for every projection and partition.
pub(crate) fn publish(statuses: &[ProjectionStatus]) {
    for status in statuses {
        let name = status.name.clone();
        metrics::gauge!("tidemark_projection_lag_events", "projection" => name.clone())
            .set(status.lag_events() as f64);
        metrics::gauge!("tidemark_projection_lag_seconds", "projection" => name.clone())
            .set(status.lag_seconds());
        metrics::gauge!("tidemark_projection_events_per_second", "projection" => name.clone())
            .set(status.events_per_second());
        metrics::gauge!("tidemark_projection_parked", "projection" => name.clone())
            .set(status.parked as f64);
        metrics::gauge!("tidemark_projection_unowned_partitions", "projection" => name.clone())
            .set(status.unowned_partitions.len() as f64);
        metrics::gauge!("tidemark_head_position").set(status.head as f64);
        if let Some(build) = &status.last_rebuild {
            metrics::gauge!("tidemark_projection_build_progress", "projection" => name.clone())
                .set(build.fraction());
        }
        if let Some(window) = &status.window {
            if let Some(watermark) = window.watermark {
                metrics::gauge!("tidemark_projection_watermark_seconds", "projection" => name.clone())
                    .set(watermark.timestamp_millis() as f64 / 1000.0);
            }
            metrics::gauge!("tidemark_projection_late_dropped", "projection" => name.clone())
                .set(window.late_dropped as f64);
            metrics::gauge!("tidemark_projection_late_parked", "projection" => name.clone())
                .set(window.late_parked as f64);
            metrics::gauge!("tidemark_projection_open_windows", "projection" => name.clone())
                .set(window.open_windows as f64);
        }
        for partition in &status.partitions {
            let labels = [
                ("projection", name.clone()),
                ("partition", partition.partition.to_string()),
            ];
            metrics::gauge!("tidemark_projection_checkpoint", &labels)
                .set(partition.checkpoint as f64);
            metrics::gauge!("tidemark_projection_partition_lag_events", &labels)
                .set(partition.lag_events as f64);
            metrics::gauge!("tidemark_projection_partition_lag_seconds", &labels)
                .set(partition.lag_seconds);
        }
    }
}
