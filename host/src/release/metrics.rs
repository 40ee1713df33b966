//! What the release layer counts as versions arrive ([`DeliveryMetrics`]): versions published,
//! candidates rejected and retried, failed source polls, store polls and store errors.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    pub swaps: Counter,
    pub swap_rejections: Counter,
    /// Candidates submitted again by a watcher after a transient rejection (`source::Retries`).
    pub swap_retries: Counter,
    /// Failed polls of a `--component` URL or `gs://` object (each retried with backoff).
    pub source_errors: Counter,
    /// Polls of the release store's manifest, and store calls that failed (polls, heartbeats).
    pub store_polls: Counter,
    pub store_errors: Counter,
}

impl DeliveryMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        metrics.register(registry);
        metrics
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("swaps", "Component versions published", self.swaps.clone());
        registry.register(
            "swap_rejections",
            "Candidate components rejected by validation",
            self.swap_rejections.clone(),
        );
        registry.register(
            "swap_retries",
            "Candidates submitted again after a transient rejection (probe overload, timeout)",
            self.swap_retries.clone(),
        );
        registry.register(
            "source_errors",
            "Failed polls of a `--component` URL or gs:// object (fetch error, timeout, bad answer), retried with backoff",
            self.source_errors.clone(),
        );
        registry.register(
            "store_polls",
            "Polls of the release store's manifest (`--store`)",
            self.store_polls.clone(),
        );
        registry.register(
            "store_errors",
            "Release store calls that failed: polls, fetches, heartbeats",
            self.store_errors.clone(),
        );
    }
}
