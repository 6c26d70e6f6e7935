//! Every metric Tidemark exports, with its type, labels and `HELP` text: the one list the
//! recorder describes at start (so `/metrics` has `HELP` on every metric and the unlabeled
//! counters at 0 before anything happens), that docs and dashboards are checked against.
//! A tidy test fails when code emits a metric that is not listed here.

/// How a metric is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// A histogram with buckets (combinable across processes), never a summary.
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter, Gauge, Histogram};

/// The catalog.
pub const METRICS: &[Metric] = &[
    metric("tidemark_build_info", Gauge, &["version"], "Always 1; the running Tidemark version in its label."),
    metric("tidemark_events_appended_total", Counter, &[], "Events written to the log by this process."),
    metric("tidemark_append_seconds", Histogram, &[], "Time from an append request to its answer, queue wait included."),
    metric("tidemark_append_batch_seconds", Histogram, &[], "Time the writer took for one batch transaction."),
    metric("tidemark_append_batch_requests", Histogram, &[], "Append requests written per batch transaction (group commit)."),
    metric("tidemark_append_batch_events", Histogram, &[], "Events written per batch transaction (group commit)."),
    metric("tidemark_append_queue_depth", Gauge, &[], "Append requests waiting for the writer."),
    metric("tidemark_append_errors_total", Counter, &["kind"], "Appends that failed, by kind of error."),
    metric("tidemark_append_overloaded_total", Counter, &[], "Appends refused because the store was overloaded (nothing written)."),
    metric("tidemark_append_queue_full_total", Counter, &[], "Appends refused because the append queue was full."),
    metric("tidemark_append_writer_panics_total", Counter, &[], "Panics of the append writer task (it is restarted)."),
    metric("tidemark_command_duplicates_total", Counter, &[], "Commands answered with their first outcome because they were retried after taking effect."),
    metric("tidemark_command_retries_total", Counter, &[], "Command attempts retried after a concurrent write to their stream."),
    metric("tidemark_head_position", Gauge, &[], "Position of the last committed event."),
    metric("tidemark_replica_up", Gauge, &[], "1 when the last measurement of the read replica (--read-database-url) succeeded, 0 when it failed."),
    metric("tidemark_replica_position", Gauge, &[], "Position of the last event the read replica has replayed."),
    metric("tidemark_replica_lag_events", Gauge, &[], "Events committed on the primary that the read replica has not replayed yet."),
    metric("tidemark_replica_lag_seconds", Gauge, &[], "Age of the oldest event the read replica has not replayed yet (0 when it has them all)."),
    metric("tidemark_replica_lag_bytes", Gauge, &[], "WAL written on the primary that the read replica has not replayed, in bytes."),
    metric("tidemark_db_pool_connections", Gauge, &["state"], "Database connections of this process's pool: open (size), idle (available), max, and callers waiting for one."),
    metric("tidemark_http_requests_total", Counter, &["route", "method", "status"], "HTTP requests answered, by route, method and status."),
    metric("tidemark_http_request_seconds", Histogram, &["route"], "Time to answer an HTTP request, by route."),
    metric("tidemark_http_requests_shed_total", Counter, &[], "HTTP requests refused with 503 because too many were in flight."),
    metric("tidemark_api_errors_total", Counter, &["code"], "GraphQL errors returned, by stable error code."),
    metric("tidemark_ws_connections", Gauge, &[], "Open GraphQL WebSocket connections."),
    metric("tidemark_projection_lag_events", Gauge, &["projection"], "Matching events a projection has not applied yet, all partitions."),
    metric("tidemark_projection_lag_seconds", Gauge, &["projection"], "Age of the oldest event a projection has not applied yet."),
    metric("tidemark_projection_partition_lag_events", Gauge, &["projection", "partition"], "Matching events not applied yet, per partition."),
    metric("tidemark_projection_partition_lag_seconds", Gauge, &["projection", "partition"], "Age of the oldest event not applied yet, per partition."),
    metric("tidemark_projection_checkpoint", Gauge, &["projection", "partition"], "Last committed checkpoint position, per partition."),
    metric("tidemark_projection_events_per_second", Gauge, &["projection"], "Rate at which a projection's lanes applied events recently."),
    metric("tidemark_projection_events_applied_total", Counter, &["projection"], "Events this process's lanes applied and committed (live lanes and builds)."),
    metric("tidemark_projection_apply_seconds", Histogram, &["projection"], "Time a lane took to apply and commit one batch."),
    metric("tidemark_projection_build_progress", Gauge, &["projection"], "The latest rebuild, replay or as-of build: events done over events to do, 0 to 1."),
    metric("tidemark_projection_parked", Gauge, &["projection"], "Parked events (dead letters) not replayed yet."),
    metric("tidemark_projection_parked_total", Counter, &["projection"], "Events parked as dead letters by this process."),
    metric("tidemark_projection_errors_total", Counter, &["projection", "kind"], "Projection failures: transient (retried), failed (an event's attempt), lane (a lane restarted after an error), panic (a lane restarted after a panic)."),
    metric("tidemark_projection_fenced_total", Counter, &["projection"], "Commits refused because the lane lost its partition lease."),
    metric("tidemark_projection_unowned_partitions", Gauge, &["projection"], "Partitions no live worker has owned for longer than a lease period."),
    metric("tidemark_projection_watermark_seconds", Gauge, &["projection"], "Windowed projections: the lowest shard watermark, in Unix seconds."),
    metric("tidemark_projection_late_dropped", Gauge, &["projection"], "Windowed projections: events too late to update their windows."),
    metric("tidemark_projection_late_parked", Gauge, &["projection"], "Windowed projections: events too late, parked."),
    metric("tidemark_projection_open_windows", Gauge, &["projection"], "Windowed projections: windows whose result may still change."),
    metric("tidemark_live_workers", Gauge, &["pool"], "Workers of the pool with a recent heartbeat."),
    metric("tidemark_desired_workers", Gauge, &["pool"], "Workers the pool should have for its lag (the autoscaling signal)."),
    metric("tidemark_pool_lag_events", Gauge, &["pool"], "Unapplied events over the pool's projections."),
    metric("tidemark_worker_concurrency", Gauge, &["pool"], "Partitions this worker lets apply at once (adaptive)."),
    metric("tidemark_relay_lag_events", Gauge, &[], "Relay: events committed to the log that the broker has not acknowledged yet."),
    metric("tidemark_relay_events_published_total", Counter, &[], "Relay: events of batches the broker acknowledged (re-publishes included)."),
    metric("tidemark_relay_duplicates_total", Counter, &[], "Relay: re-published batches the broker dropped as duplicates — their acknowledged last event was already stored (its dedup window at work after a retry or crash)."),
    metric("tidemark_relay_batch_failures_total", Counter, &[], "Relay: batches not wholly acknowledged; retried from the checkpoint."),
    metric("tidemark_relay_publish_batch_seconds", Histogram, &[], "Relay: time from a batch's first publish to its acknowledgement (the last event's, which covers the batch)."),
    metric("tidemark_embedded_postgres_up", Gauge, &[], "1 while the embedded PostgreSQL server runs, 0 while it is down."),
    metric("tidemark_embedded_postgres_exits_total", Counter, &[], "Unexpected exits of the embedded PostgreSQL server."),
    metric("tidemark_embedded_postgres_restarts_total", Counter, &["outcome"], "Restarts of the embedded PostgreSQL server, by outcome."),
    metric("tidemark_consumer_group_lag_events", Gauge, &["group"], "Consumer groups: matching events not settled yet (in flight, waiting, and not yet taken from the log). Group-wide, from the database."),
    metric("tidemark_consumer_group_lag_seconds", Gauge, &["group"], "Consumer groups: age of the oldest unsettled matching event, in seconds."),
    metric("tidemark_consumer_group_in_flight", Gauge, &["group"], "Consumer groups: messages delivered and not yet acked or nacked."),
    metric("tidemark_consumer_group_waiting", Gauge, &["group"], "Consumer groups: messages taken from the log and waiting for a consumer or a retry's backoff."),
    metric("tidemark_consumer_group_parked", Gauge, &["group"], "Consumer groups: parked messages (past max deliveries or parked by a consumer), not replayed."),
    metric("tidemark_consumer_group_delivered_total", Counter, &["group"], "Consumer groups: deliveries since the group was created (group-wide, from the database; every process reports the same)."),
    metric("tidemark_consumer_group_redeliveries_total", Counter, &["group"], "Consumer groups: deliveries of a message delivered before (after an ack timeout or a retry), since the group was created."),
    metric("tidemark_consumer_group_metrics_panics_total", Counter, &[], "Panics of the consumer group metrics reporter (it carries on)."),
    metric("tidemark_embedded_supervisor_panics_total", Counter, &[], "Panics of the embedded PostgreSQL supervisor (it is restarted)."),
];

/// Bucket bounds of the latency histograms (seconds): 0.5 ms to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of `tidemark_append_batch_requests`.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Describes every metric to the installed recorder and puts the unlabeled counters and
/// `tidemark_build_info` in place, so dashboards see them (at 0) from the start.
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            Counter => {
                metrics::describe_counter!(m.name, m.help);
                if m.labels.is_empty() {
                    metrics::counter!(m.name).absolute(0);
                }
            }
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    metrics::gauge!("tidemark_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_unique_prefixed_and_typed_by_suffix() {
        let mut seen = BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("tidemark_"), "{}", m.name);
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Counter,
                "{}: counters and only counters end in _total",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help", m.name);
        }
    }
}
