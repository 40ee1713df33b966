//! The release store's metrics: how often a stale view was re-checked before routing, requests
//! served on a view the store did not confirm in time (or refused for it), and whether the
//! store's release is applied here.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct ReleaseMetrics {
    /// Re-checks of the store that a request waited on (`--max-staleness`).
    pub rechecks: Counter,
    /// Re-checks that did not confirm the view (store error or past `--staleness-wait`).
    pub recheck_failures: Counter,
    /// Requests routed on a view the store did not confirm within `--staleness-wait`.
    pub unconfirmed: Counter,
    /// Requests answered 503 for that reason (`--staleness-strict`).
    pub refused: Counter,
    /// 1 while the store's release cannot be applied here whole (see `info`'s `store`).
    pub problem: Gauge,
}

impl ReleaseMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "release_rechecks",
            "Re-checks of the release store made before routing a request on a view older than `--max-staleness`",
            metrics.rechecks.clone(),
        );
        registry.register(
            "release_recheck_failures",
            "Re-checks of the release store that did not confirm the view (store error or slower than `--staleness-wait`)",
            metrics.recheck_failures.clone(),
        );
        registry.register(
            "release_unconfirmed_requests",
            "Requests routed on a view of the release the store did not confirm within `--staleness-wait`",
            metrics.unconfirmed.clone(),
        );
        registry.register(
            "release_stale_refused",
            "Requests answered 503 because the store did not confirm the view in time (`--staleness-strict`)",
            metrics.refused.clone(),
        );
        registry.register(
            "release_problem",
            "1 while the store's release cannot be applied on this instance whole (invalid manifest, missing or refused component, deleted manifest or bucket)",
            metrics.problem.clone(),
        );
        metrics
    }
}
