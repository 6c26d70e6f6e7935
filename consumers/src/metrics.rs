//! Prometheus figures for consumer groups (through the `metrics` facade), published by
//! `ConsumerGroups::spawn_metrics_reporter`. The figures are the group's, read from the
//! database, so every process reports the same values.

use crate::model::GroupStatus;

pub(crate) fn publish(statuses: &[GroupStatus]) {
    for status in statuses {
        let group = status.spec.name.clone();
        metrics::gauge!("tidemark_consumer_group_lag_events", "group" => group.clone())
            .set(status.lag_events as f64);
        metrics::gauge!("tidemark_consumer_group_lag_seconds", "group" => group.clone())
            .set(status.lag_seconds);
        metrics::gauge!("tidemark_consumer_group_in_flight", "group" => group.clone())
            .set(status.in_flight as f64);
        metrics::gauge!("tidemark_consumer_group_waiting", "group" => group.clone())
            .set(status.waiting as f64);
        metrics::gauge!("tidemark_consumer_group_parked", "group" => group.clone())
            .set(status.parked as f64);
        metrics::counter!("tidemark_consumer_group_delivered_total", "group" => group.clone())
            .absolute(status.delivered_total.max(0) as u64);
        metrics::counter!("tidemark_consumer_group_redeliveries_total", "group" => group)
            .absolute(status.redelivered_total.max(0) as u64);
    }
}
