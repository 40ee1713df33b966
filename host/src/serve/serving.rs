//! What every connection and exchange of one server shares ([`Serving`]): the guests' stores and
//! limits and tracer, the serve metrics, the `--concurrency` permits ([`Permit`]) and request ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::limits::Limits;
use crate::engine::runtime::Stores;
use crate::serve::metrics::ServeMetrics;
use crate::util::traces::Traces;
use crate::versions::cost::CostFamilies;

/// The serve layer's own state, shared by every connection and request (and by swap probes).
pub struct Serving {
    stores: Arc<Stores>,
    pub metrics: ServeMetrics,
    /// The versions' cost histograms, bound by each version on its first request.
    pub cost: CostFamilies,
    /// One permit per request the component is serving: `--concurrency`.
    concurrency: Arc<Semaphore>,
    /// For trace names in logs (`GOOGLE_CLOUD_PROJECT`).
    project_id: Option<String>,
    request_ids: RequestIds,
    /// Set when the shutdown grace ran out: the requests still in flight are being cut by the
    /// server, so a request path or body dropped from now on ends as [`Outcome::Shutdown`], not
    /// as a client that went away.
    ///
    /// [`Outcome::Shutdown`]: crate::serve::exchange::Outcome::Shutdown
    shutdown_cut: AtomicBool,
}

impl Serving {
    pub fn new(
        stores: Arc<Stores>,
        metrics: ServeMetrics,
        cost: CostFamilies,
        project_id: Option<String>,
    ) -> Self {
        Self {
            cost,
            concurrency: Arc::new(Semaphore::new(stores.limits().concurrency)),
            stores,
            metrics,
            project_id,
            request_ids: RequestIds::new(),
            shutdown_cut: AtomicBool::new(false),
        }
    }

    /// Where guests' stores come from.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    pub fn limits(&self) -> &Limits {
        self.stores.limits()
    }

    /// The tracer, when traces are on (`OTEL_EXPORTER_OTLP_*`).
    pub fn traces(&self) -> Option<&Traces> {
        self.stores.traces()
    }

    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    pub fn next_request_id(&self) -> String {
        self.request_ids.next()
    }

    /// The shutdown grace ran out: what is still in flight is cut by the server.
    pub fn cut_for_shutdown(&self) {
        self.shutdown_cut.store(true, Ordering::Release);
    }

    /// Whether the server is cutting the requests still in flight at shutdown.
    pub fn is_cut_for_shutdown(&self) -> bool {
        self.shutdown_cut.load(Ordering::Acquire)
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
