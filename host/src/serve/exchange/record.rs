//! What the access log and the error responses know about a request ([`RequestContext`]), and
//! the access-log line an exchange writes when it finishes.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tokio::time::Instant;

use super::lifecycle::Outcome;
use crate::serve::serving::Serving;
use crate::versions::Role;
use crate::versions::metrics::Ending;
use crate::versions::registry::ActiveComponent;

/// Who hears how each client request ended (the rollout: per-version counts, the canary's
/// analysis). The composition root's [`Host`](crate::serve::host::Host) is one.
pub trait Observer: Send + Sync + 'static {
    /// A request `served` answered ended so, after `seconds`.
    fn observe(&self, served: &ActiveComponent, role: Role, ending: Ending, seconds: f64);
}

/// The parts of a request that outlive it: for the access log and error responses.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub started: Instant,
    pub method: http::Method,
    pub url: String,
    pub version: http::Version,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub remote_ip: String,
    pub request_size: Option<u64>,
    pub trace: Option<String>,
}

impl RequestContext {
    pub fn new<B>(serving: &Serving, req: &Request<B>, remote: SocketAddr) -> Self {
        let header =
            |name: http::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            id: serving.next_request_id(),
            started: Instant::now(),
            method: req.method().clone(),
            url: absolute_url(req),
            version: req.version(),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            remote_ip: remote.ip().to_string(),
            request_size: declared_length(req),
            trace: trace_name(req.headers(), serving.project_id()),
        }
    }

    pub fn id_header(&self) -> HeaderValue {
        HeaderValue::try_from(self.id.as_str()).expect("request ids are hex")
    }

    fn protocol(&self) -> &'static str {
        match self.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    }

    /// Writes the access-log line (Cloud Logging's `httpRequest`) for an exchange that ended,
    /// naming the component `version` that served it; a warning when its response was cut.
    pub fn log(
        &self,
        outcome: Outcome,
        cut: bool,
        status: StatusCode,
        bytes: u64,
        latency: Duration,
        version: Option<&str>,
    ) {
        // The log formatter splices this JSON in as `httpRequest`.
        let http_request = self.http_request_json(status, bytes, latency);
        let trace = self.trace.as_deref();
        let status = status.as_u16();
        if cut {
            tracing::warn!(
                request_id = %self.id, http_request, trace, status, bytes, outcome = outcome.name(), version,
                "response cut before its end ({})", outcome.name()
            );
        } else {
            tracing::info!(
                request_id = %self.id, http_request, trace, outcome = outcome.name(), version,
                "{} {} {}", self.method, self.url, status
            );
        }
    }

    /// Cloud Logging's `httpRequest` object as JSON, byte for byte what `serde_json` wrote for
    /// the struct this replaced (same keys, order, escaping and number forms; the unit test
    /// keeps that struct as the reference), written into one buffer without a serializer or a
    /// string per field (`serde_json` escapes the strings).
    fn http_request_json(&self, status: StatusCode, bytes: u64, latency: Duration) -> String {
        use std::io::Write as _;
        let optional_len = |value: &Option<String>| value.as_ref().map_or(0, String::len);
        let mut out = Vec::with_capacity(
            224 + self.url.len() + optional_len(&self.user_agent) + optional_len(&self.referer),
        );
        out.extend_from_slice(b"{\"requestMethod\":");
        push_json(&mut out, Some(self.method.as_str()));
        out.extend_from_slice(b",\"requestUrl\":");
        push_json(&mut out, Some(&self.url));
        out.extend_from_slice(b",\"requestSize\":");
        let _ = match self.request_size {
            Some(size) => write!(out, "\"{size}\""),
            None => out.write_all(b"null"),
        };
        let _ = write!(out, ",\"status\":{},\"responseSize\":\"{bytes}\",\"userAgent\":", status.as_u16());
        push_json(&mut out, self.user_agent.as_deref());
        out.extend_from_slice(b",\"referer\":");
        push_json(&mut out, self.referer.as_deref());
        out.extend_from_slice(b",\"remoteIp\":");
        push_json(&mut out, Some(&self.remote_ip));
        let _ = write!(
            out,
            ",\"latency\":\"{:.6}s\",\"protocol\":\"{}\"}}",
            latency.as_secs_f64(),
            self.protocol()
        );
        // Only UTF-8 went in: the fields are `&str`, serde_json escapes nothing into invalid bytes.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `value` as a JSON string (escaped by `serde_json`), or `null`.
fn push_json(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => {
            let _ = serde_json::to_writer(&mut *out, value);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The request's `Content-Length`, when it has a valid one.
pub fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// HTTP/1 requests carry only the path; Cloud Logging wants the whole URL.
fn absolute_url<B>(req: &Request<B>) -> String {
    let uri = req.uri();
    if uri.scheme().is_some() {
        return uri.to_string();
    }
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = match req.headers().get("x-forwarded-proto").map(|v| v.as_bytes()) {
        Some(b"https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}{uri}")
}

/// The Cloud Logging trace name for a request: `projects/PROJECT/traces/TRACE_ID` from a W3C
/// `traceparent` or Cloud Run's `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`. Without a
/// project id (`GOOGLE_CLOUD_PROJECT`) the bare trace id is returned.
pub fn trace_name(headers: &HeaderMap, project: Option<&str>) -> Option<String> {
    let from_traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(|v| {
        let mut parts = v.trim().split('-');
        let (_version, trace) = (parts.next()?, parts.next()?);
        let valid = trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace.bytes().any(|b| b != b'0');
        valid.then(|| trace.to_ascii_lowercase())
    });
    let trace = from_traceparent.or_else(|| {
        let value = headers.get("x-cloud-trace-context")?.to_str().ok()?;
        let trace = value.split('/').next()?.trim();
        let valid = !trace.is_empty() && trace.len() <= 32 && trace.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| trace.to_ascii_lowercase())
    })?;
    Some(match project {
        Some(project) => format!("projects/{project}/traces/{trace}"),
        None => trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cloud Logging's `httpRequest` object as the access log serialized it with `serde_json`
    /// before it was written by hand: the reference the hand-written bytes are checked against.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct HttpRequestLog<'a> {
        request_method: &'a str,
        request_url: &'a str,
        request_size: Option<String>,
        status: u16,
        response_size: String,
        user_agent: Option<&'a str>,
        referer: Option<&'a str>,
        remote_ip: &'a str,
        latency: String,
        protocol: &'a str,
    }

    fn context(
        url: &str,
        user_agent: Option<&str>,
        referer: Option<&str>,
        size: Option<u64>,
    ) -> RequestContext {
        RequestContext {
            id: "0123456789abcdef".into(),
            started: Instant::now(),
            method: http::Method::from_bytes(b"PATCH").unwrap(),
            url: url.into(),
            version: http::Version::HTTP_2,
            user_agent: user_agent.map(str::to_owned),
            referer: referer.map(str::to_owned),
            remote_ip: "::1".into(),
            request_size: size,
            trace: None,
        }
    }

    #[test]
    fn the_http_request_json_is_what_serde_json_wrote() {
        let odd = "q=\"a\"\\b/\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}é€😀<>&'";
        let cases = [
            context("http://localhost/?name=world", Some("curl/8.5"), None, None),
            context(&format!("http://h/{odd}"), Some(odd), Some(odd), Some(1 << 40)),
            context("", Some(""), Some("https://example.com/a?b=c"), Some(0)),
        ];
        let latencies = [
            Duration::ZERO,
            Duration::from_nanos(632_500),
            Duration::from_micros(1_234_567),
            Duration::from_secs(301),
        ];
        for (ctx, latency) in cases.iter().zip(latencies.iter().cycle()) {
            for (status, bytes) in [(StatusCode::OK, 0u64), (StatusCode::GATEWAY_TIMEOUT, u64::MAX)] {
                let reference = serde_json::to_string(&HttpRequestLog {
                    request_method: ctx.method.as_str(),
                    request_url: &ctx.url,
                    request_size: ctx.request_size.map(|s| s.to_string()),
                    status: status.as_u16(),
                    response_size: bytes.to_string(),
                    user_agent: ctx.user_agent.as_deref(),
                    referer: ctx.referer.as_deref(),
                    remote_ip: &ctx.remote_ip,
                    latency: format!("{:.6}s", latency.as_secs_f64()),
                    protocol: ctx.protocol(),
                })
                .unwrap();
                assert_eq!(ctx.http_request_json(status, bytes, *latency), reference);
            }
        }
    }

    #[test]
    fn trace_name_prefers_traceparent_and_adds_project() {
        let mut headers = HeaderMap::new();
        headers.insert("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1".parse().unwrap());
        assert_eq!(
            trace_name(&headers, Some("proj")).as_deref(),
            Some("projects/proj/traces/105445aa7843bc8bf206b12000100000")
        );
        headers.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        assert_eq!(trace_name(&headers, None).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        headers.insert("traceparent", "garbage".parse().unwrap());
        headers.insert("x-cloud-trace-context", "not hex/1".parse().unwrap());
        assert_eq!(trace_name(&headers, None), None);
    }
}
