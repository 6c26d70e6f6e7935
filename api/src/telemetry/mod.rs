//! Logs (tracing to stderr) and metrics (a process-wide Prometheus recorder behind the
//! `metrics` facade, which the store and the engine already report through). `catalog`
//! lists every metric with its `HELP` text.

pub mod catalog;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// Logs at `default_level` unless `TIDEMARK_LOG` or `RUST_LOG` says otherwise. Safe to call
/// twice (the second call does nothing).
pub fn init_tracing(default_level: &str) {
    let filter = EnvFilter::try_from_env("TIDEMARK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use. `None` when
/// another metrics recorder was installed first (then `/metrics` says so).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| match recorder().and_then(|b| b.install_recorder()) {
            Ok(handle) => {
                catalog::describe_all();
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "could not install the Prometheus recorder; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// The recorder: latencies and batch sizes as histograms with buckets, so they can be
/// combined across processes (summaries cannot).
fn recorder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), catalog::SECONDS_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("tidemark_append_batch_requests".into()),
            catalog::BATCH_BUCKETS,
        )
}
