//! Per-version telemetry: requests, guest 5xx, traps, timeouts and latency by `version` label,
//! and the canary's own counters (pins ignored, rollbacks, promotions, weight).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::versions::cost::CostFamilies;
pub use crate::versions::cost::VersionLabel;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// How one version's request ended, for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Ok,
    /// The guest answered a status of 500 or more.
    Guest5xx,
    Trapped,
    TimedOut,
    /// Anything else (the client left, a limit hit): counted as a request only.
    Other,
}

impl Ending {
    /// Whether the canary analysis counts it against the version.
    pub fn is_failure(self) -> bool {
        matches!(self, Ending::Guest5xx | Ending::Trapped | Ending::TimedOut)
    }
}

/// A version's counts since this process started.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub guest_5xx: u64,
    pub traps: u64,
    pub timeouts: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.guest_5xx += other.guest_5xx;
        self.traps += other.traps;
        self.timeouts += other.timeouts;
    }
}

#[derive(Clone)]
pub struct VersionMetrics {
    requests: Family<VersionLabel, Counter>,
    guest_5xx: Family<VersionLabel, Counter>,
    traps: Family<VersionLabel, Counter>,
    timeouts: Family<VersionLabel, Counter>,
    duration: Family<VersionLabel, Histogram, fn() -> Histogram>,
    pub pin_ignored: Counter,
    pub canary_rollbacks: Counter,
    pub canary_promotions: Counter,
    pub canary_weight: Gauge,
    /// What each version costs (CPU, instantiation, memory).
    pub cost: CostFamilies,
}

impl VersionMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            guest_5xx: Family::default(),
            traps: Family::default(),
            timeouts: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            pin_ignored: Counter::default(),
            canary_rollbacks: Counter::default(),
            canary_promotions: Counter::default(),
            canary_weight: Gauge::default(),
            cost: CostFamilies::default(),
        };
        registry.register(
            "version_requests",
            "Requests served, by component version",
            metrics.requests.clone(),
        );
        registry.register(
            "version_guest_5xx",
            "Responses of 500 or more set by the component, by version",
            metrics.guest_5xx.clone(),
        );
        registry.register(
            "version_traps",
            "Requests whose component trapped or ended without a response, by version",
            metrics.traps.clone(),
        );
        registry.register(
            "version_timeouts",
            "Requests stopped at `--request-timeout`, by version",
            metrics.timeouts.clone(),
        );
        registry.register(
            "version_request_duration_seconds",
            "Time from request head to the end of the response body, by version",
            metrics.duration.clone(),
        );
        registry.register(
            "version_pin_ignored",
            "Requests whose `echo-host-version` named no version of the release (routed by weight)",
            metrics.pin_ignored.clone(),
        );
        registry.register(
            "canary_rollbacks",
            "Canaries this instance rolled back on its own",
            metrics.canary_rollbacks.clone(),
        );
        registry.register(
            "canary_promotions",
            "Canary steps and promotions this instance made on its own",
            metrics.canary_promotions.clone(),
        );
        registry.register(
            "canary_weight_permille",
            "The weight of the canary requests are routed to, in per-mille (0: none)",
            metrics.canary_weight.clone(),
        );
        metrics.cost.register(registry);
        metrics
    }

    pub fn record(&self, version: &str, ending: Ending, seconds: f64) {
        let label = VersionLabel { version: version.to_string() };
        self.requests.get_or_create(&label).inc();
        self.duration.get_or_create(&label).observe(seconds);
        let counter = match ending {
            Ending::Guest5xx => &self.guest_5xx,
            Ending::Trapped => &self.traps,
            Ending::TimedOut => &self.timeouts,
            Ending::Ok | Ending::Other => return,
        };
        counter.get_or_create(&label).inc();
    }

    pub fn totals(&self, version: &str) -> Totals {
        let label = VersionLabel { version: version.to_string() };
        let read = |family: &Family<VersionLabel, Counter>| family.get(&label).map(|c| c.get()).unwrap_or(0);
        Totals {
            requests: read(&self.requests),
            guest_5xx: read(&self.guest_5xx),
            traps: read(&self.traps),
            timeouts: read(&self.timeouts),
        }
    }
}
