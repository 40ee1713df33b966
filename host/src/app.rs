//! The state every request shares ([`App`]) and what one request carries through the host
//! ([`RequestContext`], [`RequestGuard`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Request, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Completion;
use crate::config::{Limits, SwapPolicy};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::telemetry::{self, Metrics};

/// Shared by every connection and request.
pub struct App {
    pub runtime: Runtime,
    pub registry: Registry,
    pub metrics: Metrics,
    /// One permit per request being served: `--concurrency`.
    pub concurrency: Arc<Semaphore>,
    pub started_at: SystemTime,
    /// For trace names in logs (`GOOGLE_CLOUD_PROJECT`).
    pub project_id: Option<String>,
    /// How candidates are checked before a swap.
    pub swap_policy: SwapPolicy,
    /// The admin API's bearer token; `None` means the API does not exist.
    pub admin_token: Option<String>,
    request_ids: RequestIds,
}

impl App {
    pub fn new(
        runtime: Runtime,
        registry: Registry,
        project_id: Option<String>,
        swap_policy: SwapPolicy,
        admin_token: Option<String>,
    ) -> Self {
        Self {
            swap_policy,
            admin_token,
            concurrency: Arc::new(Semaphore::new(runtime.limits().concurrency)),
            runtime,
            registry,
            metrics: Metrics::new(),
            started_at: SystemTime::now(),
            project_id,
            request_ids: RequestIds::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }

    pub fn next_request_id(&self) -> String {
        self.request_ids.next()
    }
}

/// Request ids unique across instances and restarts: a random per-process prefix and a counter.
struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        Self { prefix: seed ^ std::process::id().rotate_left(16), counter: AtomicU64::new(0) }
    }

    fn next(&self) -> String {
        format!("{:08x}{:08x}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// What the access log and the error responses need to know about a request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    pub started: Instant,
    pub method: http::Method,
    pub url: String,
    pub protocol: &'static str,
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
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            remote_ip: remote.ip().to_string(),
            request_size: header(http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            trace: telemetry::trace_name(req.headers(), app.project_id.as_deref()),
        }
    }

    pub fn id_header(&self) -> HeaderValue {
        HeaderValue::try_from(self.id.as_str()).expect("request ids are hex")
    }
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

/// Held from the moment a request is accepted until its response body ends: keeps the in-flight
/// gauge and the concurrency permit, and writes the access log and metrics when dropped.
pub struct RequestGuard {
    app: Arc<App>,
    ctx: RequestContext,
    status: StatusCode,
    _permit: Option<OwnedSemaphorePermit>,
    /// The guest task still running for this request: stopped if the response is cut.
    guest_task: Option<tokio::task::AbortHandle>,
}

impl RequestGuard {
    pub fn new(app: Arc<App>, ctx: RequestContext, permit: Option<OwnedSemaphorePermit>) -> Self {
        app.metrics.in_flight.inc();
        Self { app, ctx, status: StatusCode::OK, _permit: permit, guest_task: None }
    }

    pub fn ctx(&self) -> &RequestContext {
        &self.ctx
    }

    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    pub fn set_guest_task(&mut self, task: tokio::task::AbortHandle) {
        self.guest_task = Some(task);
    }
}

impl Completion for RequestGuard {
    fn finish(&mut self, bytes: u64, complete: bool, cut_by_deadline: bool) {
        let latency = self.ctx.started.elapsed();
        let app = &self.app;
        app.metrics.in_flight.dec();
        app.metrics.record_response(self.status, latency);
        // HEAD responses never have their body polled: that is not a cut.
        let cut = !complete && self.ctx.method != http::Method::HEAD;
        // A guest may go on after its response ended (p2 allows work after `finish`); it only
        // has to stop when the response was cut.
        let task = self.guest_task.take();
        if cut {
            if let Some(task) = task {
                task.abort();
            }
            if cut_by_deadline {
                app.metrics.timeouts.inc();
            }
        }
        // Serialized straight from a struct (no `Value` map); the log formatter splices it in.
        let http_request = serde_json::to_string(&HttpRequestLog {
            request_method: self.ctx.method.as_str(),
            request_url: &self.ctx.url,
            request_size: self.ctx.request_size.map(|s| s.to_string()),
            status: self.status.as_u16(),
            response_size: bytes.to_string(),
            user_agent: self.ctx.user_agent.as_deref(),
            referer: self.ctx.referer.as_deref(),
            remote_ip: &self.ctx.remote_ip,
            latency: format!("{:.6}s", latency.as_secs_f64()),
            protocol: self.ctx.protocol,
        })
        .unwrap_or_default();
        let trace = self.ctx.trace.as_deref();
        let status = self.status.as_u16();
        if cut {
            let reason = if cut_by_deadline { "request deadline" } else { "client gone or stream error" };
            tracing::warn!(request_id = %self.ctx.id, http_request, trace, status, bytes, "response cut before its end ({reason})");
        } else {
            tracing::info!(request_id = %self.ctx.id, http_request, trace, "{} {} {}", self.ctx.method, self.ctx.url, status);
        }
    }
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

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Streams are stopped by the guard; a guest task left over from a cut response must
        // not run on to its deadline.
        if let Some(task) = self.guest_task.take() {
            task.abort();
        }
    }
}
