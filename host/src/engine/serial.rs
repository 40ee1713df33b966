//! Serial reuse of p2 (`wasi:http/proxy`) instances, opt-in (`--instance-max-requests` above 1;
//! [`SerialPool`]): an instance that returned cleanly from its request waits idle for the next
//! one, up to `--instance-max-requests` in its life and `--instance-idle-timeout` idle. One
//! request at a time per instance (p2 exports are not concurrent).
//!
//! The pool only holds idle instances; whoever serves a request decides whether the instance
//! goes back ([`SerialPool::give_back`]: after a clean return only) and re-arms it for the next
//! request ([`crate::engine::runtime::Stores::rearm`]). All pools together keep at most
//! `--concurrency` instances idle ([`IdleBudget`]): with the `--concurrency` busy ones they fit
//! in wasmtime's pool, however many versions a burst of swaps leaves behind.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::engine::state::RequestState;

/// One instance between requests: its store, its exports and how many requests it served.
pub struct IdleInstance {
    pub store: Store<RequestState>,
    pub proxy: Proxy,
    /// Requests served so far.
    pub served: usize,
}

/// How many p2 instances may wait idle in all the pools of a process together.
pub struct IdleBudget {
    max: usize,
    idle: AtomicUsize,
}

impl IdleBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, idle: AtomicUsize::new(0) })
    }

    /// Room for one more idle instance, held until the claim is dropped.
    fn claim(self: &Arc<Self>) -> Option<IdleClaim> {
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |idle| (idle < self.max).then_some(idle + 1));
        claimed.is_ok().then(|| IdleClaim(self.clone()))
    }

    /// Instances idle now, in every pool.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }
}

/// One idle instance's share of the [`IdleBudget`].
struct IdleClaim(Arc<IdleBudget>);

impl Drop for IdleClaim {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One p2 version's idle instances. Cloning shares them; the last clone's drop retires them.
#[derive(Clone)]
pub struct SerialPool {
    pre: ProxyPre<RequestState>,
    shared: Arc<Shared>,
}

struct Shared {
    max_requests: usize,
    idle_timeout: Duration,
    idle: Mutex<Idle>,
    started: AtomicU64,
    budget: Arc<IdleBudget>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first, each with the time it was given back and its share of the budget.
    instances: Vec<(Instant, IdleInstance, IdleClaim)>,
    /// A task retires the instances that idle past the timeout while this is set.
    reaping: bool,
}

impl SerialPool {
    /// A pool for `pre`'s instances: `max_requests` (at least 2) each, `idle_timeout` idle, the
    /// idle ones counted in `budget`.
    pub fn new(
        pre: ProxyPre<RequestState>,
        max_requests: usize,
        idle_timeout: Duration,
        budget: Arc<IdleBudget>,
    ) -> Self {
        debug_assert!(max_requests > 1, "a limit of 1 is a fresh instance per request");
        let started = AtomicU64::new(0);
        let shared = Shared { max_requests, idle_timeout, idle: Mutex::default(), started, budget };
        Self { pre, shared: Arc::new(shared) }
    }

    /// What a fresh instance is made from.
    pub fn pre(&self) -> &ProxyPre<RequestState> {
        &self.pre
    }

    /// A fresh instance of this version is being started (for `info`).
    pub fn starting(&self) {
        self.shared.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Instances started so far.
    pub fn instances_started(&self) -> u64 {
        self.shared.started.load(Ordering::Relaxed)
    }

    /// The instance given back last, if one is idle and has not waited past the timeout.
    pub fn take(&self) -> Option<IdleInstance> {
        let mut idle = self.shared.lock();
        let (since, instance, _claim) = idle.instances.pop()?;
        if since.elapsed() < self.shared.idle_timeout {
            return Some(instance);
        }
        // The newest is past the timeout, so are all the others.
        let expired = std::mem::take(&mut idle.instances);
        drop(idle);
        drop((instance, expired));
        None
    }

    /// `instance` served one more request and returned cleanly: it waits for the next one, or is
    /// retired when it has served `--instance-max-requests` or `--concurrency` instances are
    /// idle already.
    pub fn give_back(&self, mut instance: IdleInstance) {
        instance.served += 1;
        if instance.served >= self.shared.max_requests {
            return;
        }
        let Some(claim) = self.shared.budget.claim() else { return };
        let mut idle = self.shared.lock();
        idle.instances.push((Instant::now(), instance, claim));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(&self.shared)));
        }
    }

    /// Instances idle now (tests).
    pub fn idle(&self) -> usize {
        self.shared.lock().instances.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Retires the instances idle past the timeout, until none is idle or the pool is gone.
async fn reap(shared: Weak<Shared>) {
    let mut next = match shared.upgrade() {
        Some(shared) => Instant::now() + shared.idle_timeout,
        None => return,
    };
    loop {
        tokio::time::sleep_until(next).await;
        let Some(shared) = shared.upgrade() else { return };
        let mut idle = shared.lock();
        let now = Instant::now();
        let fresh =
            idle.instances.partition_point(|(since, ..)| now.duration_since(*since) >= shared.idle_timeout);
        let expired: Vec<_> = idle.instances.drain(..fresh).collect();
        match idle.instances.first() {
            Some((since, ..)) => next = *since + shared.idle_timeout,
            None => idle.reaping = false,
        }
        let done = !idle.reaping;
        drop(idle);
        drop(expired);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_budget_holds_at_most_its_max_and_frees_on_drop() {
        let budget = IdleBudget::new(2);
        let (first, second) = (budget.claim(), budget.claim());
        assert!(first.is_some() && second.is_some());
        assert!(budget.claim().is_none(), "a third idle instance past the max");
        assert_eq!(budget.idle(), 2);
        drop(first);
        assert_eq!(budget.idle(), 1);
        let third = budget.claim();
        assert!(third.is_some(), "room again once one went");
        drop((second, third));
        assert_eq!(budget.idle(), 0);
    }
}
