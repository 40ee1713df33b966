//! Logs (Cloud Logging's structured JSON on stdout, or text) and Prometheus metrics.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Duration;

use http::HeaderMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{DEFAULT_LOG_BUFFER_LINES, LogFormat};
use crate::connection::CloseReason;
use crate::exchange::Outcome;
use crate::log_writer;
use crate::rollout::metrics::VersionMetrics;

fn close_reason_label(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::HeaderTimeout => "header_timeout",
        CloseReason::Idle => "idle",
    }
}

/// The `limit` labels of `echo_host_unsent_limit_total`.
const UNSENT_LIMITS: [&str; 2] = ["connection", "total"];

/// Installs the global logger with the default `--log-buffer-lines`.
pub fn init_logging(format: LogFormat) {
    init_logging_buffered(format, DEFAULT_LOG_BUFFER_LINES);
}

/// Installs the global logger, writing to stdout through a queue of `buffer_lines` lines
/// ([`log_writer`]). `RUST_LOG` narrows or widens it (default `info`).
pub fn init_logging_buffered(format: LogFormat, buffer_lines: usize) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(log_writer::stdout(buffer_lines));
    // A second init (tests start several servers in one process) keeps the first logger.
    let _ = match format {
        LogFormat::Json => builder.event_format(CloudLoggingFormat).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Writes out the queued log lines before the process exits (bounded: stdout may be stalled).
pub fn flush_logs() {
    log_writer::flush();
}

/// One JSON object per line as Cloud Logging reads it: `severity`, `message`, `time`,
/// `httpRequest` (from an `http_request` field holding JSON), the trace under
/// `logging.googleapis.com/trace`, and every other field as is.
pub struct CloudLoggingFormat;

impl<S, N> FormatEvent<S, N> for CloudLoggingFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let mut entry = Map::new();
        let severity = match *metadata.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
        };
        entry.insert("severity".into(), severity.into());
        entry.insert("message".into(), fields.0.remove("message").unwrap_or(Value::String(String::new())));
        let now = time::OffsetDateTime::now_utc();
        if let Ok(stamp) = now.format(&time::format_description::well_known::Rfc3339) {
            entry.insert("time".into(), stamp.into());
        }
        // `http_request` is JSON the access log serialized: spliced in below as is rather than
        // parsed back into a `Value` (measured +10% requests per CPU-second on the echo).
        let http_request = match fields.0.remove("http_request") {
            Some(Value::String(raw)) if raw.starts_with('{') && raw.ends_with('}') => Some(raw),
            _ => None,
        };
        if let Some(trace) = fields.0.remove("trace") {
            entry.insert("logging.googleapis.com/trace".into(), trace);
        }
        if metadata.target() != "echo_host" && !metadata.target().starts_with("echo_host::") {
            entry.insert("target".into(), metadata.target().into());
        }
        entry.extend(fields.0);
        let mut line = serde_json::to_string(&entry).map_err(|_| fmt::Error)?;
        if let Some(raw) = http_request {
            line.pop();
            line.push_str(",\"httpRequest\":");
            line.push_str(&raw);
            line.push('}');
        }
        writeln!(writer, "{line}")
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
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

/// What the host counts. Cheap to update from the request path (atomics only).
pub struct Metrics {
    registry: Registry,
    /// Responses by status class, indexed 1xx..5xx as 0..4.
    responses: [Counter; 5],
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub traps: Counter,
    pub timeouts: Counter,
    pub body_too_large: Counter,
    pub body_read_timeouts: Counter,
    pub write_timeouts: Counter,
    pub overloaded: Counter,
    /// Connections the host closed, by [`CloseReason`] (header timeout, idle).
    connections_closed: [Counter; 2],
    /// Response bytes handed to hyper and not yet written to a socket, in the whole process.
    unsent: Gauge,
    /// Responses whose head went to hyper and whose last byte no socket has taken yet.
    undelivered: Gauge,
    /// Connections shed for holding too much unsent response data: over
    /// `--max-unsent-per-connection`, or while the process was over `--max-unsent`.
    unsent_limits: [Counter; 2],
    pub instantiation: Histogram,
    pub swaps: Counter,
    pub swap_rejections: Counter,
    /// Candidates submitted again by a watcher after a transient rejection (`source::Retries`).
    pub swap_retries: Counter,
    /// Failed polls of a `--component` URL or `gs://` object (each retried with backoff).
    pub source_errors: Counter,
    /// Polls of the release store's manifest, and store calls that failed (polls, heartbeats).
    pub store_polls: Counter,
    pub store_errors: Counter,
    /// Per component version, and the canary's own (`rollout::metrics`).
    pub versions: VersionMetrics,
    /// The release store's view: re-checks, unconfirmed requests, problems (`store::metrics`).
    pub release: crate::store::metrics::ReleaseMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("echo_host");
        let responses: [Counter; 5] = Default::default();
        for (i, counter) in responses.iter().enumerate() {
            let class = format!("{}xx", i + 1);
            registry.sub_registry_with_label((Cow::Borrowed("class"), Cow::Owned(class))).register(
                "requests",
                "Responses sent, by status class",
                counter.clone(),
            );
        }
        // 100 µs .. ~100 s.
        let request_duration = Histogram::new(exponential_buckets(0.0001, 2.5, 16));
        let instantiation = Histogram::new(exponential_buckets(0.00001, 2.5, 14));
        let versions = VersionMetrics::new(&mut registry);
        let release = crate::store::metrics::ReleaseMetrics::new(&mut registry);
        let metrics = Self {
            responses,
            request_duration,
            in_flight: Gauge::default(),
            traps: Counter::default(),
            timeouts: Counter::default(),
            body_too_large: Counter::default(),
            body_read_timeouts: Counter::default(),
            write_timeouts: Counter::default(),
            overloaded: Counter::default(),
            connections_closed: Default::default(),
            unsent: Gauge::default(),
            undelivered: Gauge::default(),
            unsent_limits: Default::default(),
            instantiation,
            swaps: Counter::default(),
            swap_rejections: Counter::default(),
            swap_retries: Counter::default(),
            source_errors: Counter::default(),
            store_polls: Counter::default(),
            store_errors: Counter::default(),
            versions,
            release,
            registry: Registry::default(),
        };
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            metrics.request_duration.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests holding a `--concurrency` permit: guest running or response on its way",
            metrics.in_flight.clone(),
        );
        registry.register(
            "guest_traps",
            "Requests whose guest trapped (including memory and stack exhaustion)",
            metrics.traps.clone(),
        );
        registry.register(
            "request_timeouts",
            "Requests stopped at `--request-timeout`",
            metrics.timeouts.clone(),
        );
        registry.register(
            "body_too_large",
            "Requests refused or cut for exceeding `--max-body` (413)",
            metrics.body_too_large.clone(),
        );
        registry.register(
            "body_read_timeouts",
            "Requests whose body made no progress for `--body-read-timeout` (408 or cut)",
            metrics.body_read_timeouts.clone(),
        );
        registry.register(
            "write_timeouts",
            "Responses cut because the client took no bytes for `--write-timeout`",
            metrics.write_timeouts.clone(),
        );
        for (reason, counter) in
            [CloseReason::HeaderTimeout, CloseReason::Idle].iter().zip(&metrics.connections_closed)
        {
            let label = (Cow::Borrowed("reason"), Cow::Borrowed(close_reason_label(*reason)));
            registry.sub_registry_with_label(label).register(
                "connections_closed",
                "Connections the host closed: no request head within `--header-read-timeout`, or idle for `--idle-timeout`",
                counter.clone(),
            );
        }
        registry.register(
            "unsent_response_bytes",
            "Response bytes handed to the HTTP stack and not yet written to a socket (a client that does not read holds them)",
            metrics.unsent.clone(),
        );
        registry.register(
            "responses_undelivered",
            "Responses whose head went to the HTTP stack and whose last byte the client has not taken yet",
            metrics.undelivered.clone(),
        );
        for (limit, counter) in UNSENT_LIMITS.iter().zip(&metrics.unsent_limits) {
            registry.sub_registry_with_label((Cow::Borrowed("limit"), Cow::Borrowed(*limit))).register(
                "unsent_limit",
                "Connections closed gracefully (GOAWAY) for the response bytes their clients did not read: over `--max-unsent-per-connection`, or while the process was over `--max-unsent`",
                counter.clone(),
            );
        }
        registry.register(
            "overloaded",
            "Requests refused at `--concurrency` (503)",
            metrics.overloaded.clone(),
        );
        registry.register(
            "instantiation_seconds",
            "Time to instantiate the component for a request",
            metrics.instantiation.clone(),
        );
        registry.register("swaps", "Component versions published", metrics.swaps.clone());
        registry.register(
            "swap_rejections",
            "Candidate components rejected by validation",
            metrics.swap_rejections.clone(),
        );
        registry.register(
            "swap_retries",
            "Candidates submitted again after a transient rejection (probe overload, timeout)",
            metrics.swap_retries.clone(),
        );
        registry.register(
            "source_errors",
            "Failed polls of a `--component` URL or gs:// object (fetch error, timeout, bad answer), retried with backoff",
            metrics.source_errors.clone(),
        );
        registry.register(
            "store_polls",
            "Polls of the release store's manifest (`--store`)",
            metrics.store_polls.clone(),
        );
        registry.register(
            "store_errors",
            "Release store calls that failed: polls, fetches, heartbeats",
            metrics.store_errors.clone(),
        );
        registry.register_collector(Box::new(ProcessCounter {
            name: "log_lines_dropped",
            help: "Log lines dropped because stdout did not take them fast enough (`--log-buffer-lines` full)",
            read: log_writer::dropped_lines,
        }));
        registry.register_collector(Box::new(ProcessCounter {
            name: "guest_log_dropped",
            help: "Guest stdout/stderr lines dropped past `--max-guest-log-lines` or `--max-guest-log-bytes`",
            read: crate::guest_log::dropped_lines,
        }));
        Self { registry, ..metrics }
    }

    /// Response bytes handed to hyper.
    pub fn unsent_added(&self, bytes: u64) {
        self.unsent.inc_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Response bytes handed to hyper and not yet written, in the whole process.
    pub fn unsent(&self) -> u64 {
        u64::try_from(self.unsent.get()).unwrap_or(0)
    }

    /// Responses whose head went to hyper and whose last byte no socket has taken yet.
    pub fn undelivered(&self) -> u64 {
        u64::try_from(self.undelivered.get()).unwrap_or(0)
    }

    /// A response head went to hyper (`+1`), or its exchange finished (`-1`).
    pub fn undelivered_changed(&self, by: i64) {
        self.undelivered.inc_by(by);
    }

    /// Response bytes hyper let go of.
    pub fn unsent_sent(&self, bytes: u64) {
        self.unsent.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A connection shed at an unsent limit: `"connection"` or `"total"`.
    pub fn unsent_limit_reached(&self, limit: &str) {
        if let Some(i) = UNSENT_LIMITS.iter().position(|l| *l == limit) {
            self.unsent_limits[i].inc();
        }
    }

    /// Counts an exchange that ended: its status class, its duration, and the limit it hit.
    pub fn record_outcome(&self, outcome: Outcome, status: http::StatusCode, duration: Duration) {
        self.record_response(status, duration);
        let counter = match outcome {
            Outcome::TimedOut => &self.timeouts,
            Outcome::BodyTooLarge => &self.body_too_large,
            Outcome::BodyStalled => &self.body_read_timeouts,
            Outcome::WriteStalled => &self.write_timeouts,
            Outcome::Overloaded => &self.overloaded,
            // Traps are counted where the guest ends (a trap after a complete response too).
            Outcome::ReleaseUnconfirmed => &self.release.refused,
            Outcome::Responded
            | Outcome::HeadTooLarge
            | Outcome::BadHost(_)
            | Outcome::Trapped
            | Outcome::NeverResponded
            | Outcome::ErrorCode
            | Outcome::ClientGone => return,
        };
        counter.inc();
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        let index = match reason {
            CloseReason::HeaderTimeout => 0,
            CloseReason::Idle => 1,
        };
        self.connections_closed[index].inc();
    }

    pub fn record_response(&self, status: http::StatusCode, duration: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// Responses sent, of every status.
    pub fn responses_total(&self) -> u64 {
        self.responses.iter().map(Counter::get).sum()
    }

    /// 5xx responses sent.
    pub fn server_errors_total(&self) -> u64 {
        self.responses[4].get()
    }

    /// The OpenMetrics text that Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

/// A counter kept per process (the log writer's, the guest output's), read at each scrape: those
/// counts are made where no [`Metrics`] is at hand, and metrics are per [`App`](crate::app::App).
#[derive(Debug)]
struct ProcessCounter {
    name: &'static str,
    help: &'static str,
    read: fn() -> u64,
}

impl Collector for ProcessCounter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.read)());
        let metric = encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn metrics_render_counts() {
        let metrics = Metrics::new();
        metrics.record_response(http::StatusCode::OK, Duration::from_millis(2));
        metrics.record_response(http::StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(1));
        metrics.overloaded.inc();
        let text = metrics.render();
        assert!(text.contains("echo_host_requests_total{class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("echo_host_requests_total{class=\"5xx\"} 1"), "{text}");
        assert!(text.contains("echo_host_overloaded_total 1"), "{text}");
        assert!(text.contains("echo_host_request_duration_seconds_count 2"), "{text}");
    }
}
