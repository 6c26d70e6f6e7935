//! Logs (tracing to stderr), traces (the same spans, exported over OTLP when asked, see
//! `otlp`) and metrics (a process-wide Prometheus recorder behind the `metrics` facade,
//! which the store and the engine already report through). `catalog` lists every metric
//! with its `HELP` text.

pub mod catalog;
#[cfg(feature = "otlp")]
mod otlp;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Logs at `default_level` unless `TIDEMARK_LOG` or `RUST_LOG` says otherwise. Safe to call
/// twice (the second call does nothing).
pub fn init_tracing(default_level: &str) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(default_level))
        .try_init();
}

/// Logs to stderr, filtered by `TIDEMARK_LOG` / `RUST_LOG` (default `default_level`).
fn log_layer<S>(default_level: &str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let filter = EnvFilter::try_from_env("TIDEMARK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a terminal: in a log file or a collector they are escape codes
    // (and formatting them is a measurable part of every request's span).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(filter)
}

/// Sets the `tidemark_replica_*` gauges from one measurement of the read replica.
pub(crate) fn publish_replica_lag(lag: &tidemark_store::ReplicaLag) {
    metrics::gauge!("tidemark_replica_up").set(1.0);
    metrics::gauge!("tidemark_replica_lag_events").set(lag.events as f64);
    metrics::gauge!("tidemark_replica_lag_seconds").set(lag.seconds);
    metrics::gauge!("tidemark_replica_lag_bytes").set(lag.bytes.unwrap_or(0) as f64);
    metrics::gauge!("tidemark_replica_position").set(lag.replica_head as f64);
}

/// What [`init_telemetry`] set up; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "call shutdown() before the process exits, or buffered spans are lost"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    traces: Option<otlp::Traces>,
}

impl Telemetry {
    /// Flushes and stops the trace exporter (if any). Call it off the async runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(traces) = self.traces {
            traces.shutdown();
        }
    }
}

/// Logs as [`init_tracing`] does and, with `otlp_endpoint`, exports the spans at INFO and
/// above (GraphQL operations, append batches, projection batches) to that OTLP/HTTP
/// collector as `service_name`. Call it before starting an async runtime. Fails when an
/// endpoint is given that cannot be used, or the binary was built without the `otlp`
/// feature.
pub fn init_telemetry(
    default_level: &str,
    otlp_endpoint: Option<&str>,
    service_name: &str,
) -> Result<Telemetry, TelemetryError> {
    let Some(endpoint) = otlp_endpoint else {
        init_tracing(default_level);
        return Ok(Telemetry {
            #[cfg(feature = "otlp")]
            traces: None,
        });
    };
    #[cfg(feature = "otlp")]
    {
        let traces = otlp::Traces::start(endpoint, service_name)?;
        let _ = tracing_subscriber::registry()
            .with(log_layer(default_level))
            .with(traces.layer())
            .try_init();
        tracing::info!(endpoint, "exporting traces over OTLP/HTTP");
        Ok(Telemetry {
            traces: Some(traces),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (endpoint, service_name);
        Err(TelemetryError::NotBuilt)
    }
}

/// Why traces cannot be exported as asked.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP endpoint {endpoint:?} cannot be used: {reason}; give a URL such as http://127.0.0.1:4318")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("this binary was built without trace export; build it with the `otlp` feature of tidemark-api (on by default) or drop --otlp-endpoint")]
    NotBuilt,
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
        )?
        .set_buckets_for_metric(
            Matcher::Full("tidemark_append_batch_events".into()),
            catalog::BATCH_BUCKETS,
        )
}
