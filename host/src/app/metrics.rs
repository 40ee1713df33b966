//! The host's `/metrics` ([`Metrics`]): each layer's metrics, registered by that layer in one
//! registry, in the order the endpoint has always listed them.

use std::fmt::Write as _;

use prometheus_client::registry::Registry;

use crate::engine::guest_log;
use crate::release::metrics::DeliveryMetrics;
use crate::release::store::metrics::ReleaseMetrics;
use crate::serve::metrics::ServeMetrics;
use crate::util::log_writer;
use crate::util::metrics::register_process_counter;
use crate::versions::metrics::VersionMetrics;

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
        Self { registry, versions, release, serve, delivery }
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
}
