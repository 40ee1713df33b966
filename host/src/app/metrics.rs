//! The host's `/metrics` ([`Metrics`]): each layer's metrics, registered by that layer in one
//! registry, in the order the endpoint has always listed them, written as OpenMetrics or, for a
//! client that asks for it, Prometheus's classic text format ([`Exposition`]).

use std::fmt::Write as _;

use prometheus_client::registry::Registry;

use crate::engine::guest_log;
use crate::release::metrics::DeliveryMetrics;
use crate::release::store::metrics::ReleaseMetrics;
use crate::serve::metrics::ServeMetrics;
use crate::util::log_writer;
use crate::util::metrics::register_process_counter;
use crate::util::traces::TraceCounters;
use crate::versions::metrics::VersionMetrics;

/// The format `/metrics` is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0 (`# EOF`, counter families named without `_total`): the default.
    OpenMetrics,
    /// Prometheus's text format 0.0.4, where a counter's `# HELP`/`# TYPE` name its samples
    /// (`_total`) and nothing closes the text: what `promtool check metrics` and older scrapers
    /// read.
    Text,
}

impl Exposition {
    /// The format a request's `Accept` asks for: the classic text format when it names
    /// `text/plain` and not OpenMetrics (q-values are not weighed), OpenMetrics otherwise.
    pub fn negotiate(accept: Option<&http::HeaderValue>) -> Self {
        let accept = accept.and_then(|value| value.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
        if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
            Self::Text
        } else {
            Self::OpenMetrics
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Every layer's metrics, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Per component version, and the canary's own.
    pub versions: VersionMetrics,
    /// The release store's view: re-checks, unconfirmed requests, problems.
    pub release: ReleaseMetrics,
    /// Requests, responses, limits, connections.
    pub serve: ServeMetrics,
    /// Versions published and rejected, source and store polls.
    pub delivery: DeliveryMetrics,
    /// Trace spans exported and dropped (0 while traces are off).
    pub traces: TraceCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("echo_host");
        let versions = VersionMetrics::new(&mut registry);
        let release = ReleaseMetrics::new(&mut registry);
        let serve = ServeMetrics::new(&mut registry, release.refused.clone());
        let delivery = DeliveryMetrics::new(&mut registry);
        let traces = TraceCounters::new(&mut registry);
        register_process_counter(
            &mut registry,
            "log_lines_dropped",
            "Log lines dropped because stdout did not take them fast enough (`--log-buffer-lines` full)",
            log_writer::dropped_lines,
        );
        register_process_counter(
            &mut registry,
            "guest_log_dropped",
            "Guest stdout/stderr lines dropped past `--max-guest-log-lines` or `--max-guest-log-bytes`",
            guest_log::dropped_lines,
        );
        // Collectors are listed after the metrics, in the order registered: the serve layer's
        // labelled families after the process counters, as `/metrics` has always listed them.
        serve.register_families(&mut registry);
        Self { registry, versions, release, serve, delivery, traces }
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

    /// `/metrics` in `format`.
    pub fn render_as(&self, format: Exposition) -> String {
        let open_metrics = self.render();
        match format {
            Exposition::OpenMetrics => open_metrics,
            Exposition::Text => to_text_format(&open_metrics),
        }
    }
}

/// OpenMetrics text as Prometheus's text format 0.0.4: a counter family's `# HELP` and `# TYPE`
/// take its samples' `_total` name, and `# EOF` goes. Samples, labels and escaping are the same
/// in both for what the host writes (no exemplars, units or `_created`).
fn to_text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "].into_iter().find(|prefix| line.starts_with(prefix));
        match comment.and_then(|prefix| Some((prefix, line[prefix.len()..].split_once(' ')?))) {
            Some((prefix, (name, rest))) if counters.contains(name) => {
                let _ = writeln!(out, "{prefix}{name}_total {rest}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn metrics_render_counts() {
        let metrics = Metrics::new();
        metrics.serve.record_response(http::StatusCode::OK, Duration::from_millis(2));
        metrics.serve.record_response(http::StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(1));
        metrics.serve.overloaded.inc();
        let text = metrics.render();
        assert!(text.contains("echo_host_requests_total{class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("echo_host_requests_total{class=\"5xx\"} 1"), "{text}");
        assert!(text.contains("echo_host_overloaded_total 1"), "{text}");
        assert!(text.contains("echo_host_request_duration_seconds_count 2"), "{text}");
    }

    #[test]
    fn the_text_format_names_counter_families_by_their_samples() {
        let metrics = Metrics::new();
        metrics.serve.record_response(http::StatusCode::OK, Duration::from_millis(2));
        let text = metrics.render_as(Exposition::Text);
        assert!(text.contains("# TYPE echo_host_requests_total counter\n"), "{text}");
        assert!(
            text.contains("# HELP echo_host_requests_total Responses sent, by status class.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE echo_host_requests_in_flight gauge\n"), "{text}");
        assert!(text.contains("# TYPE echo_host_request_duration_seconds histogram\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let accept = http::HeaderValue::from_static("text/plain; version=0.0.4");
        assert_eq!(Exposition::negotiate(Some(&accept)), Exposition::Text);
        let prometheus = http::HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        assert_eq!(Exposition::negotiate(Some(&prometheus)), Exposition::OpenMetrics);
        assert_eq!(Exposition::negotiate(None), Exposition::OpenMetrics);
    }
}
