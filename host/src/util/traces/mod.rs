//! OTLP traces with the OpenTelemetry SDK ([`Traces`]), configured by the standard `OTEL_*`
//! variables only ([`config`]) and off when they name no endpoint: then the host holds no
//! `Traces` at all and a request pays a few `Option` checks (no span object, no allocation).
//!
//! - [`config`]: the variables, checked at start-up.
//! - [`export`]: the bounded queue and the exporter thread (a slow collector costs spans, never
//!   a request's time), and the counters on `/metrics`.
//! - [`otlp`]: a batch of spans as OTLP protobuf; [`send`]: over gRPC or HTTP.
//! - [`propagate`]: `traceparent` / `X-Cloud-Trace-Context` in, `traceparent` out.
//!
//! The spans themselves are made where their work is: the server span by the serve layer's
//! exchange, the instantiation span by the proxy, the outbound spans by the engine's outbound
//! policy, all through [`Traces::start_span`].

pub mod config;
pub mod export;
pub mod otlp;
pub mod propagate;
pub mod send;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};

pub use config::TraceConfig;
pub use export::TraceCounters;

/// Where this process runs, for the resource every span carries: Cloud Run's `K_SERVICE` and
/// `K_REVISION`, the project, and this instance's id and region when the host knows them (the
/// metadata server's).
#[derive(Debug, Clone, Default)]
pub struct Platform {
    pub service: Option<String>,
    pub revision: Option<String>,
    pub project: Option<String>,
    pub instance: Option<String>,
    pub region: Option<String>,
}

impl Platform {
    /// `K_SERVICE`, `K_REVISION` and `GOOGLE_CLOUD_PROJECT` from `lookup` (instance and region
    /// unknown).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        Self {
            service: get("K_SERVICE"),
            revision: get("K_REVISION"),
            project: get("GOOGLE_CLOUD_PROJECT"),
            instance: None,
            region: None,
        }
    }

    /// On Cloud Run: `K_SERVICE` is set.
    pub fn is_cloud_run(&self) -> bool {
        self.service.is_some()
    }
}

/// The tracer and its provider, shared by every layer that makes spans.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Starts the exporter thread and the tracer for `config`.
    pub fn start(
        config: &TraceConfig,
        platform: &Platform,
        counters: TraceCounters,
    ) -> anyhow::Result<Arc<Self>> {
        let resource = resource(config, platform);
        let processor = export::QueueProcessor::start(config, resource.clone(), counters)?;
        let ratio = Sampler::TraceIdRatioBased(config.sampling.ratio);
        let sampler =
            if config.sampling.parent_based { Sampler::ParentBased(Box::new(ratio)) } else { ratio };
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler)
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("echo-host");
        tracing::info!(
            endpoint = %config.endpoint,
            protocol = config.protocol.name(),
            sampler_ratio = config.sampling.ratio,
            parent_based = config.sampling.parent_based,
            "exporting traces over OTLP to `{}`",
            config.endpoint
        );
        Ok(Arc::new(Self { provider, tracer }))
    }

    /// A span named `name`, child of `parent` (a new trace without one), started now.
    pub fn start_span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let builder = self.tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
        match parent {
            Some(parent) => builder
                .start_with_context(&self.tracer, &Context::new().with_remote_span_context(parent.clone())),
            None => builder.start_with_context(&self.tracer, &Context::new()),
        }
    }

    /// Sends the spans still queued, for at most `within`; later spans are dropped. Blocks: call
    /// it off the runtime's workers.
    pub fn shutdown(&self, within: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(within) {
            tracing::warn!(error = %error, "trace spans still queued at shutdown were not all sent within {within:?}");
        }
    }
}

/// Ends `span` as failed when `error` is one.
pub fn end_span<E: std::fmt::Display>(mut span: Span, error: Option<E>) {
    use opentelemetry::trace::Span as _;
    if let Some(error) = error {
        span.set_status(Status::error(error.to_string()));
    }
    span.end();
}

/// The resource on every span: the SDK's own attributes, Cloud Run's, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` (the later wins).
fn resource(config: &TraceConfig, platform: &Platform) -> Resource {
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    let service = platform.service.clone().unwrap_or_else(|| "echo-host".to_string());
    attributes.push(KeyValue::new("service.name", service));
    if let Some(service) = &platform.service {
        attributes.push(KeyValue::new("cloud.provider", "gcp"));
        attributes.push(KeyValue::new("cloud.platform", "gcp_cloud_run"));
        attributes.push(KeyValue::new("faas.name", service.clone()));
    }
    let optional = [
        ("faas.version", &platform.revision),
        ("cloud.account.id", &platform.project),
        ("cloud.region", &platform.region),
        ("faas.instance", &platform.instance),
        ("service.instance.id", &platform.instance),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value.clone()));
        }
    }
    attributes.extend(config.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    if let Some(name) = &config.service_name {
        attributes.push(KeyValue::new("service.name", name.clone()));
    }
    Resource::builder_empty()
        .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
        .with_attributes(attributes)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(resource: &Resource, key: &'static str) -> Option<String> {
        resource.get(&opentelemetry::Key::from_static_str(key)).map(|v| v.to_string())
    }

    #[test]
    fn the_resource_names_cloud_run_and_lets_the_variables_override() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "faas.version=mine,team=edge"),
        ];
        let config =
            TraceConfig::from_env(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
                .unwrap()
                .unwrap();
        let platform = Platform {
            service: Some("echo".into()),
            revision: Some("echo-00001".into()),
            project: None,
            instance: Some("00abc".into()),
            region: Some("europe-west1".into()),
        };
        let resource = resource(&config, &platform);
        assert_eq!(value(&resource, "service.name").as_deref(), Some("echo"));
        assert_eq!(value(&resource, "cloud.platform").as_deref(), Some("gcp_cloud_run"));
        assert_eq!(value(&resource, "faas.instance").as_deref(), Some("00abc"));
        assert_eq!(value(&resource, "cloud.region").as_deref(), Some("europe-west1"));
        assert_eq!(value(&resource, "faas.version").as_deref(), Some("mine"));
        assert_eq!(value(&resource, "team").as_deref(), Some("edge"));
        assert_eq!(value(&resource, "telemetry.sdk.language").as_deref(), Some("rust"));
        assert_eq!(value(&resource, "cloud.account.id"), None);

        let named = TraceConfig { service_name: Some("named".into()), ..config };
        assert_eq!(value(&resource_of(&named), "service.name").as_deref(), Some("named"));
        assert_eq!(value(&resource_of(&named), "cloud.provider"), None, "not on Cloud Run");
    }

    fn resource_of(config: &TraceConfig) -> Resource {
        resource(config, &Platform::default())
    }
}
