//! A client request's server span (only when traces are on): started with the exchange, child of
//! the caller's `traceparent` or `X-Cloud-Trace-Context`, with the HTTP semantic-convention
//! attributes; ended with the exchange, naming its status, the version that served it and the
//! [`Outcome`], in error when the outcome is a failure, and what its guest cost ([`GuestCost`]).
//! Its context parents the spans of the request's guest work ([`super::Exchange::child_span`],
//! the outbound calls).
//!
//! The span ends when the exchange finishes (its last byte written). A p2 guest may run on past
//! that (`--after-response-grace`) and its cost is known only when it ends: the span, its end
//! time taken at the finish, waits for it ([`EndedSpan`]), so its duration stays the request's
//! latency and its cost is exact.

use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status};
use opentelemetry_sdk::trace::Span;

use super::lifecycle::Outcome;
use super::record::RequestContext;
use super::{Exchange, Guest};
use crate::util::traces::{Traces, propagate};
use crate::versions::Role;
use crate::versions::registry::ActiveComponent;

/// What a request's guest cost, as its server span says: the guest's CPU time (p2: its own
/// task), the peak linear memory of its instance (p3: so far) and the time its instance took to
/// start, when it was started for this request. Recorded only when traces are on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GuestCost {
    /// The time the guest's task spent being polled (p2 only).
    pub cpu: Option<Duration>,
    pub memory_peak_bytes: Option<usize>,
    pub instantiation: Option<Duration>,
}

impl GuestCost {
    fn record(&self, span: &mut Span) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if let Some(cpu) = self.cpu {
            span.set_attribute(KeyValue::new("echo_host.guest.cpu_ms", ms(cpu)));
        }
        if let Some(bytes) = self.memory_peak_bytes {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            span.set_attribute(KeyValue::new("echo_host.instance.memory_peak_bytes", bytes));
        }
        if let Some(took) = self.instantiation {
            span.set_attribute(KeyValue::new("echo_host.instance.instantiation_ms", ms(took)));
        }
    }
}

/// A server span whose exchange has finished, waiting for its guest's cost. It ends at the
/// exchange's finish whatever happens: with the cost when the guest reports it, without it when
/// dropped first (the exchange gone with the guest's task).
pub struct EndedSpan {
    span: Span,
    at: SystemTime,
}

impl EndedSpan {
    pub(super) fn end(mut self, cost: &GuestCost) {
        cost.record(&mut self.span);
    }
}

impl Drop for EndedSpan {
    fn drop(&mut self) {
        self.span.end_with_timestamp(self.at);
    }
}

impl Exchange {
    /// Ends the server span of a finished exchange, or, while its guest runs on, keeps it (ended
    /// as of now) for [`Exchange::guest_ended`] to end with the guest's cost.
    pub(super) fn end_span(
        &self,
        mut span: Span,
        outcome: Outcome,
        status: StatusCode,
        bytes: u64,
        served: Option<(&ActiveComponent, Role)>,
    ) {
        describe(&mut span, outcome, status, bytes, served);
        let ended = EndedSpan { span, at: SystemTime::now() };
        let mut cost = {
            let mut state = self.state();
            if state.guest == Guest::Running {
                state.ended_span = Some(ended);
                return;
            }
            state.cost
        };
        if let Some(instance) = self.instance.get() {
            cost.memory_peak_bytes = Some(instance.memory.peak_bytes());
        }
        ended.end(&cost);
    }

    /// A reused instance was started for this request in `took` (traces on only).
    pub fn record_instantiation(&self, took: Duration) {
        self.state().cost.instantiation = Some(took);
    }

    /// The server span's context (traces on only): the parent of what the guest's work traces.
    pub fn span_context(&self) -> Option<&SpanContext> {
        self.trace.as_ref()
    }

    /// A span for part of this request's work (`name`), child of its server span; `None` when
    /// traces are off.
    pub fn child_span(&self, name: &'static str) -> Option<Span> {
        let parent = self.trace.as_ref()?;
        let traces = self.serving.traces()?;
        Some(traces.start_span(name, SpanKind::Internal, Some(parent), Vec::new()))
    }
}

/// Starts the server span of `req`.
pub fn start<B>(traces: &Traces, req: &Request<B>, ctx: &RequestContext) -> Span {
    let parent = propagate::remote_parent(req.headers());
    let uri = req.uri();
    let method = known_method(req.method());
    // Room for the attributes added at the end too (status, size, outcome, version, role, the
    // cost): the vector is not grown while the request runs.
    let mut attributes = Vec::with_capacity(24);
    attributes.push(KeyValue::new("http.request.method", method.unwrap_or("_OTHER")));
    if method.is_none() {
        attributes.push(KeyValue::new("http.request.method_original", req.method().as_str().to_owned()));
    }
    attributes.push(KeyValue::new("url.path", uri.path().to_owned()));
    if let Some(query) = uri.query() {
        attributes.push(KeyValue::new("url.query", query.to_owned()));
    }
    let https = req.headers().get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
    attributes.push(KeyValue::new("url.scheme", if https { "https" } else { "http" }));
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()));
    if let Some((host, port)) = authority.and_then(host_and_port) {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    attributes.push(KeyValue::new("network.protocol.version", protocol_version(ctx.version)));
    attributes.push(KeyValue::new("client.address", ctx.remote_ip.clone()));
    if let Some(agent) = &ctx.user_agent {
        attributes.push(KeyValue::new("user_agent.original", agent.clone()));
    }
    attributes.push(KeyValue::new("echo_host.request_id", ctx.id.clone()));
    traces.start_span(method.unwrap_or("HTTP"), SpanKind::Server, parent.as_ref(), attributes)
}

/// The access log's trace for a request whose server span is `span`: Cloud Logging's
/// `projects/PROJECT/traces/TRACE_ID` (the bare id without `GOOGLE_CLOUD_PROJECT`).
pub fn trace_name(span: &SpanContext, project: Option<&str>) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(64);
    if let Some(project) = project {
        name.push_str("projects/");
        name.push_str(project);
        name.push_str("/traces/");
    }
    // By hand: `fmt`'s padded hex of a u128 costs more than the rest of the line (callgrind).
    for byte in span.trace_id().to_bytes() {
        name.push(char::from(HEX[usize::from(byte >> 4)]));
        name.push(char::from(HEX[usize::from(byte & 15)]));
    }
    name
}

/// `server.address` and `server.port` from a request's authority (`host`, `host:port`,
/// `[v6]:port`), as `http::uri::Authority` reads them, without parsing it into one (a copy of
/// the text per request); `None` when the text is not a plain host with an optional port.
fn host_and_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            (&authority[..colon], Some(&authority[colon + 1..]))
        }
        _ => (authority, None),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b);
    let valid = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|v6| v6.bytes().all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))),
        None => !host.is_empty() && host.bytes().all(plain),
    };
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    valid.then_some((host, port))
}

/// Describes the server span of an exchange that ended with `outcome` and `status` after sending
/// `bytes` of body, served by `served` (none when the host answered before routing).
fn describe(
    span: &mut Span,
    outcome: Outcome,
    status: StatusCode,
    bytes: u64,
    served: Option<(&ActiveComponent, Role)>,
) {
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    span.set_attribute(KeyValue::new("http.response.body.size", i64::try_from(bytes).unwrap_or(i64::MAX)));
    span.set_attribute(KeyValue::new("echo_host.outcome", outcome.name()));
    if let Some((component, role)) = served {
        span.set_attribute(KeyValue::new("echo_host.component.version", component.version().to_owned()));
        let role = match role {
            Role::Stable => "stable",
            Role::Canary => "canary",
        };
        span.set_attribute(KeyValue::new("echo_host.component.role", role));
    }
    if let Some(cause) = failure(outcome, status) {
        span.set_attribute(KeyValue::new("error.type", cause));
        span.set_status(Status::error(cause));
    }
}

/// Why an exchange counts as failed on its span, when it does: the guest failed or ran out of
/// time, or the answer was a 5xx (the semantic conventions' rule for server spans).
fn failure(outcome: Outcome, status: StatusCode) -> Option<&'static str> {
    match outcome {
        Outcome::Trapped | Outcome::NeverResponded | Outcome::ErrorCode | Outcome::TimedOut => {
            Some(outcome.name())
        }
        _ if status.is_server_error() => {
            Some(if outcome == Outcome::Responded { status_class(status) } else { outcome.name() })
        }
        _ => None,
    }
}

/// `error.type` for a 5xx the guest answered with: its status code.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "5xx",
    }
}

/// The method's name when it is one of HTTP's; other methods are `_OTHER` on the span.
fn known_method(method: &http::Method) -> Option<&'static str> {
    use http::Method;
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_read_as_http_reads_them() {
        for text in ["example.com", "example.com:8080", "127.0.0.1:9", "[::1]:8443", "[::1]", "a-b.c_d"] {
            let authority: http::uri::Authority = text.parse().unwrap();
            assert_eq!(host_and_port(text), Some((authority.host(), authority.port_u16())), "{text}");
        }
        for bad in ["", ":80", "host:port", "host:99999", "[::1", "a b", "h/x", "user@host"] {
            assert_eq!(host_and_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn trace_names_are_lowercase_hex_with_the_project() {
        let id = opentelemetry::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let context = SpanContext::new(
            id,
            opentelemetry::SpanId::from(1),
            Default::default(),
            false,
            Default::default(),
        );
        assert_eq!(trace_name(&context, None), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace_name(&context, Some("p")), "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736");
        let small = SpanContext::new(
            opentelemetry::TraceId::from(1),
            opentelemetry::SpanId::from(1),
            Default::default(),
            false,
            Default::default(),
        );
        assert_eq!(trace_name(&small, None), format!("{:032x}", 1));
    }

    #[test]
    fn failing_outcomes_and_5xx_are_errors() {
        assert_eq!(failure(Outcome::Responded, StatusCode::OK), None);
        assert_eq!(failure(Outcome::Responded, StatusCode::NOT_FOUND), None);
        assert_eq!(failure(Outcome::Responded, StatusCode::BAD_GATEWAY), Some("502"));
        assert_eq!(failure(Outcome::Trapped, StatusCode::INTERNAL_SERVER_ERROR), Some("trapped"));
        // A deadline after the head: the status is the guest's 200, the span still failed.
        assert_eq!(failure(Outcome::TimedOut, StatusCode::OK), Some("timed_out"));
        assert_eq!(failure(Outcome::Overloaded, StatusCode::SERVICE_UNAVAILABLE), Some("overloaded"));
        assert_eq!(failure(Outcome::ClientGone, Outcome::ClientGone.status()), None);
        assert_eq!(failure(Outcome::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE), None);
    }
}
