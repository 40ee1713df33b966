//! A store's memory limit (`--max-memory`, per linear memory, as wasmtime's `StoreLimits` holds
//! it) that remembers what it saw: the linear memory its instance reached, and the first growth
//! it refused. A refused growth is why an instance that traps right after it failed ("out of
//! memory"); the peak is what the version costs in memory.
//!
//! A reused (p3) instance's requests read the same record through a [`MemoryWatch`]: any of them
//! may see the instance trap.

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

    /// The size (in bytes) of the first growth that was refused, if any was.
    pub fn refused(&self) -> Option<usize> {
        Some(self.refused.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }
}

/// The limiter a store runs under (`Store::limiter`).
pub struct MemoryLimiter {
    /// Largest size of one linear memory, in bytes.
    limit: usize,
    watch: Arc<MemoryWatch>,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        Self { limit, watch: Arc::default() }
    }

    /// The record, to read after the instance ended or from one of its requests.
    pub fn watch(&self) -> &Arc<MemoryWatch> {
        &self.watch
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
        if allow {
            self.watch.bytes.fetch_add(desired.saturating_sub(current), Ordering::Relaxed);
        } else {
            let _ = self.watch.refused.compare_exchange(0, desired, Ordering::Relaxed, Ordering::Relaxed);
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
    }
}
