//! Trace export over OTLP/HTTP (protobuf): the `tracing` spans at INFO and above become
//! OpenTelemetry spans, batched on the SDK's own thread and posted to
//! `<endpoint>/v1/traces`. Span names: `graphql` (one request, with its operation names and
//! correlation id), `append_batch` (one writer transaction: requests, events, queue wait),
//! `lane_batch` (one projection batch: projection, partition, target, events).

use super::TelemetryError;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::Layer;

/// The running exporter.
pub(super) struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// An exporter to `endpoint` (scheme, host and port; `/v1/traces` is added).
    pub(super) fn start(endpoint: &str, service_name: &str) -> Result<Traces, TelemetryError> {
        let base = endpoint.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TelemetryError::BadEndpoint {
                endpoint: endpoint.to_string(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|error| TelemetryError::BadEndpoint {
                endpoint: endpoint.to_string(),
                reason: error.to_string(),
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        Ok(Traces { provider })
    }

    /// The `tracing` layer that turns spans into exported ones.
    pub(super) fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("tidemark");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(LevelFilter::INFO)
    }

    /// Sends what is buffered and stops the exporter's thread.
    pub(super) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: could not send the last traces: {error}");
        }
    }
}
