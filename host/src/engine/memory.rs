//! A store's memory limit (`--max-memory`, per linear memory, as wasmtime's `StoreLimits` holds
//! it) that remembers what it saw: the linear memory its instance reached, and the first growth
//! it refused. A refused growth is why an instance that traps right after it failed ("out of
//! memory"); the peak is what the version costs in memory.
//!
//! A reused (p3) instance's requests read the same record through a shared [`MemoryWatch`]: any
//! of them may see the instance trap. A p2 store is one request: its record stays in the store
//! (no allocation per request).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What one store's memories did, readable from outside the store.
#[derive(Debug, Default)]
pub struct MemoryWatch {
    /// Bytes of linear memory the instance holds (all its memories; they never shrink).
    bytes: AtomicUsize,
    /// The size a refused growth asked for (0: none refused).
    refused: AtomicUsize,
}

impl MemoryWatch {
    /// Bytes of linear memory the instance reached.
    pub fn peak_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// A reused p2 instance survived a refused growth: its next request starts with none.
    pub(crate) fn forget_refusal(&self) {
        self.refused.store(0, Ordering::Relaxed);
    }

    /// The size (in bytes) of the first growth that was refused, if any was.
    pub fn refused(&self) -> Option<usize> {
        Some(self.refused.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

/// The limiter a store runs under (`Store::limiter`).
pub struct MemoryLimiter {
    /// Largest size of one linear memory, in bytes.
    limit: usize,
    watch: Watch,
}

enum Watch {
    /// A p2 store's: read when the request's guest ended.
    Own(MemoryWatch),
    /// A reused instance's: read by its requests too.
    Shared(Arc<MemoryWatch>),
}

impl MemoryLimiter {
    /// For a store of one request.
    pub fn new(limit: usize) -> Self {
        Self { limit, watch: Watch::Own(MemoryWatch::default()) }
    }

    /// For a store whose record its requests share.
    pub fn shared(limit: usize) -> Self {
        Self { limit, watch: Watch::Shared(Arc::default()) }
    }

    /// The record, to read after the instance ended.
    pub fn watch(&self) -> &MemoryWatch {
        match &self.watch {
            Watch::Own(watch) => watch,
            Watch::Shared(watch) => watch,
        }
    }

    /// The record its requests share ([`Self::shared`] only).
    pub fn shared_watch(&self) -> Option<&Arc<MemoryWatch>> {
        match &self.watch {
            Watch::Own(_) => None,
            Watch::Shared(watch) => Some(watch),
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allow = desired <= self.limit && maximum.is_none_or(|max| desired <= max);
        let watch = self.watch();
        if allow {
            watch.bytes.fetch_add(desired.saturating_sub(current), Ordering::Relaxed);
        } else {
            let _ = watch.refused.compare_exchange(0, desired, Ordering::Relaxed, Ordering::Relaxed);
        }
        Ok(allow)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn counts_what_it_grants_and_remembers_the_first_refusal() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.memory_growing(1 << 20, 3 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 64 << 10, Some(1 << 30)).unwrap(), "a second memory");
        assert_eq!(limiter.watch().peak_bytes(), (3 << 20) + (64 << 10));
        assert_eq!(limiter.watch().refused(), None);
        assert!(!limiter.memory_growing(3 << 20, 5 << 20, None).unwrap());
        assert!(!limiter.memory_growing(3 << 20, 9 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 << 20, Some(1 << 20)).unwrap(), "over its own maximum");
        assert_eq!(limiter.watch().refused(), Some(5 << 20), "the first refusal");
        assert_eq!(limiter.watch().peak_bytes(), (3 << 20) + (64 << 10), "refusals take nothing");
        assert!(limiter.shared_watch().is_none());
        let mut shared = MemoryLimiter::shared(4 << 20);
        assert!(shared.memory_growing(0, 1 << 20, None).unwrap());
        assert_eq!(shared.shared_watch().unwrap().peak_bytes(), 1 << 20);
    }
}
