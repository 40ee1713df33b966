//! Outbound HTTP from the guest: denied unless `--allow-outbound` lists the destination; with
//! traces on, each call gets a client span, child of the request's server span, and carries a
//! `traceparent` naming it so that the service called joins the trace.

use std::net::IpAddr;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status};
use opentelemetry_sdk::trace::Span;
use wasmtime_wasi_http::{DEFAULT_FORBIDDEN_HEADERS, Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::util::traces::{Traces, propagate};

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// One `--allow-outbound` entry: a host name, and a port or any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub host: String,
    pub port: Option<u16>,
}

impl OutboundRule {
    /// Whether a request to `host` (a name, or an IP address without brackets) on `port` may go.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let same_host = match host.parse::<IpAddr>() {
            // Addresses compare by value (`::1` is `0:0:0:0:0:0:0:1`); the rule holds the canonical form.
            Ok(ip) => ip.to_string() == self.host,
            Err(_) => self.host.eq_ignore_ascii_case(host),
        };
        same_host && self.port.is_none_or(|p| p == port)
    }
}

/// The `wasi:http` hooks of one request: checks each outgoing request against the allowlist.
pub struct OutboundPolicy {
    rules: Arc<[OutboundRule]>,
    request_id: Arc<str>,
    /// The tracer, when traces are on.
    traces: Option<Arc<Traces>>,
    /// The span the guest's calls are children of: the request's server span (for a reused p3
    /// instance, that of the request it took last).
    parent: Option<SpanContext>,
}

impl OutboundPolicy {
    pub fn new(rules: Arc<[OutboundRule]>, request_id: &str, traces: Option<Arc<Traces>>) -> Self {
        Self { rules, request_id: request_id.into(), traces, parent: None }
    }

    /// The guest's next calls are the request `request_id`'s (a reused p2 instance).
    pub fn relabel(&mut self, request_id: &str) {
        self.request_id = request_id.into();
    }

    /// Makes the guest's next calls children of `parent`.
    pub fn trace_under(&mut self, parent: Option<SpanContext>) {
        self.parent = parent;
    }

    /// The client span of a call to `request`, when traces are on and the request has a span.
    fn span(&self, request: &http::Request<WasiBody>) -> Option<Span> {
        let (traces, parent) = (self.traces.as_ref()?, self.parent.as_ref()?);
        let uri = request.uri();
        let method = request.method().as_str().to_owned();
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.full", uri.to_string()),
            KeyValue::new("echo_host.request_id", self.request_id.to_string()),
        ];
        if let Some(host) = uri.host() {
            attributes.push(KeyValue::new("server.address", host.trim_matches(['[', ']']).to_owned()));
        }
        if let Some(port) = uri.port_u16() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        Some(traces.start_span(method, SpanKind::Client, Some(parent), attributes))
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        self.rules.iter().any(|rule| rule.allows(host, port))
    }
}

impl WasiHttpHooks for OutboundPolicy {
    /// wasmtime's own rule, without the `Arc` closure the trait's default builds for every header
    /// checked (four allocations per echoed GET).
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let mut span = self.span(&request);
        if !self.allows(request.uri()) {
            tracing::warn!(
                request_id = %self.request_id,
                uri = %request.uri(),
                "outbound request denied: add its host to `--allow-outbound` to permit it"
            );
            if let Some(mut span) = span.take() {
                span.set_attribute(KeyValue::new("error.type", "HttpRequestDenied"));
                span.set_status(Status::error("denied: the host is not in `--allow-outbound`"));
                span.end();
            }
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let mut request = request;
        if let Some(span) = &span {
            propagate::inject(request.headers_mut(), span.span_context());
        }
        let default = wasmtime_wasi_http::default_hooks();
        let sent = default.send_request(request, options, fut);
        match span {
            None => sent,
            Some(span) => Box::new(async move {
                let result = Box::into_pin(sent).await;
                end_client_span(span, &result);
                result
            }),
        }
    }
}

/// Ends a call's span when its response head came (or the call failed): 4xx and 5xx are errors
/// on a client span.
fn end_client_span(mut span: Span, result: &SendResult) {
    match result {
        Ok((response, _)) => {
            let status = response.status();
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            if status.is_client_error() || status.is_server_error() {
                span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                span.set_status(Status::error(status.to_string()));
            }
        }
        Err(error) => {
            let cause = format!("{error:?}");
            span.set_attribute(KeyValue::new("error.type", cause.clone()));
            span.set_status(Status::error(cause));
        }
    }
    span.end();
}
