//! What the access log and the error responses know about a request ([`RequestContext`]), and
//! the access-log line an exchange writes when it finishes.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode};
use tokio::time::Instant;

use super::lifecycle::Outcome;
use crate::app::App;
use crate::telemetry;

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
    pub fn new<B>(app: &App, req: &Request<B>, remote: SocketAddr) -> Self {
        let header =
            |name: http::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            id: app.next_request_id(),
            started: Instant::now(),
            method: req.method().clone(),
            url: absolute_url(req),
            version: req.version(),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            remote_ip: remote.ip().to_string(),
            request_size: declared_length(req),
            trace: telemetry::trace_name(req.headers(), app.project_id.as_deref()),
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
        // Serialized straight from a struct (no `Value` map); the log formatter splices it in.
        let http_request = serde_json::to_string(&HttpRequestLog {
            request_method: self.method.as_str(),
            request_url: &self.url,
            request_size: self.request_size.map(|s| s.to_string()),
            status: status.as_u16(),
            response_size: bytes.to_string(),
            user_agent: self.user_agent.as_deref(),
            referer: self.referer.as_deref(),
            remote_ip: &self.remote_ip,
            latency: format!("{:.6}s", latency.as_secs_f64()),
            protocol: self.protocol(),
        })
        .unwrap_or_default();
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

/// Cloud Logging's `httpRequest` object of the access log.
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
