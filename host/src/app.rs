//! The state every request shares ([`App`]): runtime, registry, metrics, the release store, the
//! `--concurrency` permits ([`Permit`]) and request ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Limits, SwapPolicy};
use crate::registry::Registry;
use crate::rollout::{Rollout, Thresholds};
use crate::runtime::Runtime;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Shared by every connection and request.
pub struct App {
    pub runtime: Runtime,
    pub registry: Registry,
    pub metrics: Metrics,
    /// One permit per request the component is serving: `--concurrency`.
    concurrency: Arc<Semaphore>,
    pub started_at: SystemTime,
    /// For trace names in logs (`GOOGLE_CLOUD_PROJECT`).
    pub project_id: Option<String>,
    /// How candidates are checked before a swap.
    pub swap_policy: SwapPolicy,
    /// The admin API's bearer token; `None` means the API does not exist.
    pub admin_token: Option<String>,
    /// The fleet's release store (`--store`), when there is one.
    pub store: Option<Arc<Store>>,
    /// The release's canary: routing, analysis, automatic rollback and steps.
    pub rollout: Rollout,
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
            store: None,
            rollout: Rollout::new(Thresholds::default()),
            request_ids: RequestIds::new(),
        }
    }

    /// Follows the release store `store`.
    pub fn with_store(self, store: Option<Arc<Store>>) -> Self {
        Self { store, ..self }
    }

    /// Judges canaries with `thresholds` (`--canary-*`).
    pub fn with_thresholds(self, thresholds: Thresholds) -> Self {
        Self { rollout: Rollout::new(thresholds), ..self }
    }

    /// A swap or a rejection happened: the heartbeat says so now rather than at its next tick.
    pub fn tell_fleet(&self) {
        if let Some(store) = &self.store {
            store.heartbeat_now.notify_one();
        }
    }

    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }

    pub fn next_request_id(&self) -> String {
        self.request_ids.next()
    }

    /// A `--concurrency` permit, if one is free.
    pub fn try_permit(&self) -> Option<Permit> {
        let permit = self.concurrency.clone().try_acquire_owned().ok()?;
        self.metrics.in_flight.inc();
        Some(Permit { _permit: permit, in_flight: self.metrics.in_flight.clone() })
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

/// One `--concurrency` permit. `requests_in_flight` counts exactly the permits held.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}
