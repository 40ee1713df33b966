//! What a version costs: the guest's CPU time per request (the time its task spends being
//! polled), instantiation time and peak linear memory per instance, as histograms by version
//! ([`CostFamilies`]). Each version keeps its own handles ([`VersionCost`]), bound once on its
//! first request: recording one is an observation, with no label built or looked up.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::pool::InstanceCost;

/// The label of every per-version family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabel {
    /// `sha256:<first 12 hex>`.
    pub version: String,
}

type Histograms = Family<VersionLabel, Histogram, fn() -> Histogram>;

fn cpu_histogram() -> Histogram {
    // 10 µs .. ~6 s
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

fn instantiation_histogram() -> Histogram {
    // 10 µs .. ~6 s
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

fn memory_histogram() -> Histogram {
    // 64 KiB .. 4 GiB
    Histogram::new(exponential_buckets(65536.0, 2.0, 17))
}

/// The three cost families; cloning shares them.
#[derive(Clone)]
pub struct CostFamilies {
    cpu: Histograms,
    instantiation: Histograms,
    memory: Histograms,
}

impl Default for CostFamilies {
    fn default() -> Self {
        Self {
            cpu: Family::new_with_constructor(cpu_histogram),
            instantiation: Family::new_with_constructor(instantiation_histogram),
            memory: Family::new_with_constructor(memory_histogram),
        }
    }
}

impl CostFamilies {
    pub fn register(&self, registry: &mut Registry) {
        let families = self;
        registry.register(
            "version_guest_cpu_seconds",
            "Time the guest's task spent being polled per request (p2 components), by version",
            families.cpu.clone(),
        );
        registry.register(
            "version_instantiation_seconds",
            "Time to instantiate the component (p2: per request, p3: per instance), by version",
            families.instantiation.clone(),
        );
        registry.register(
            "version_instance_memory_bytes",
            "Peak linear memory of an instance (p2: per request, p3: per instance), by version",
            families.memory.clone(),
        );
    }
}

/// One version's cost histograms.
pub struct CostHandles {
    pub cpu: Measure,
    pub instantiation: Measure,
    pub memory: Measure,
}

/// A histogram handle, and the sum and count it holds kept beside it for the status (the
/// client library reads them back only in its tests).
pub struct Measure {
    histogram: Histogram,
    /// The sum in units of `1 / scale` (nanoseconds for seconds, bytes for bytes).
    sum: AtomicU64,
    count: AtomicU64,
    scale: f64,
}

impl Measure {
    fn new(histogram: Histogram, scale: f64) -> Self {
        Self { histogram, sum: AtomicU64::new(0), count: AtomicU64::new(0), scale }
    }

    pub fn observe(&self, value: f64) {
        self.histogram.observe(value);
        self.sum.fetch_add((value * self.scale) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The mean of what was observed, `None` before the first.
    pub fn mean(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum.load(Ordering::Relaxed) as f64 / self.scale / count as f64)
    }
}

/// One version's handles, bound on its first request (shared by its reactivations and its p3
/// pool).
#[derive(Default)]
pub struct VersionCost {
    handles: OnceLock<CostHandles>,
}

impl VersionCost {
    /// The handles, made from `families` for `version` the first time.
    pub fn bind(&self, families: &CostFamilies, version: &str) -> &CostHandles {
        self.handles.get_or_init(|| {
            let label = VersionLabel { version: version.to_string() };
            let seconds = |family: &Histograms| Measure::new(family.get_or_create(&label).clone(), 1e9);
            CostHandles {
                cpu: seconds(&families.cpu),
                instantiation: seconds(&families.instantiation),
                memory: Measure::new(families.memory.get_or_create(&label).clone(), 1.0),
            }
        })
    }

    /// The handles, once bound.
    pub fn handles(&self) -> Option<&CostHandles> {
        self.handles.get()
    }

    /// Means for the status: CPU ms per request, instantiation ms, peak memory bytes per
    /// instance, and how many of each were measured.
    pub fn summary(&self) -> serde_json::Value {
        let Some(handles) = self.handles() else { return serde_json::Value::Null };
        // Milliseconds to the microsecond.
        let ms = |m: &Measure| m.mean().map(|s| (s * 1e6).round() / 1000.0);
        serde_json::json!({
            "cpu_ms": ms(&handles.cpu),
            "cpu_samples": handles.cpu.count(),
            "instantiation_ms": ms(&handles.instantiation),
            "instances": handles.instantiation.count(),
            "memory_bytes": handles.memory.mean().map(|b| b.round() as u64),
        })
    }
}

impl InstanceCost for VersionCost {
    fn instantiated(&self, seconds: f64) {
        if let Some(handles) = self.handles() {
            handles.instantiation.observe(seconds);
        }
    }

    fn retired(&self, peak_bytes: usize) {
        if let Some(handles) = self.handles() {
            handles.memory.observe(peak_bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_bound_once_and_summarised_as_means() {
        let mut registry = Registry::default();
        let families = CostFamilies::default();
        families.register(&mut registry);
        let cost = VersionCost::default();
        assert!(cost.summary().is_null());
        cost.instantiated(1.0);
        let handles = cost.bind(&families, "sha256:aaaaaaaaaaaa");
        assert_eq!(handles.instantiation.count(), 0, "nothing is kept before the binding");
        handles.cpu.observe(0.002);
        handles.cpu.observe(0.004);
        cost.instantiated(0.001);
        cost.retired(2 << 20);
        let again = cost.bind(&families, "sha256:bbbbbbbbbbbb");
        assert_eq!(again.cpu.count(), 2, "the first binding stays");
        let summary = cost.summary();
        assert_eq!(summary["cpu_ms"], 3.0);
        assert_eq!(summary["cpu_samples"], 2);
        assert_eq!(summary["instantiation_ms"], 1.0);
        assert_eq!(summary["memory_bytes"], 2 << 20);
    }
}
