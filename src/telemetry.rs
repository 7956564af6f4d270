//! Logs to stderr (text or JSON), and traces by OTLP/HTTP when
//! `telemetry.otlp_endpoint` is set (nothing is sent otherwise).

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// Exports what is left of the traces when dropped (at exit).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("kiln: exporting the last traces failed: {e}");
        }
    }
}

/// Logs go to stderr, as text or JSON (`RUST_LOG` overrides the level);
/// spans go to the OTLP endpoint when one is set.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = matches!(log.format, LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    let text =
        matches!(log.format, LogFormat::Text).then(|| fmt::layer().with_writer(std::io::stderr));
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, telemetry)?),
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("kiln")));
    if let Err(e) = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(traces)
        .try_init()
    {
        eprintln!("kiln: logging already initialised: {e}");
    }
    Ok(Telemetry { provider })
}

/// Spans in batches to `<endpoint>/v1/traces` as OTLP/HTTP JSON.
fn tracer_provider(
    endpoint: &str,
    telemetry: &TelemetrySettings,
) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_timeout(std::time::Duration::from_millis(
            telemetry.export_timeout_ms,
        ))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
