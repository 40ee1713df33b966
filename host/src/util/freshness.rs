//! How old this instance's view of the fleet's release may be when a request is routed on it:
//! when the store last confirmed the view, the bound past which a request waits (with every
//! request that arrives meanwhile) on one re-check, and what a request does when the store does
//! not answer within the wait.
//!
//! Why: on Cloud Run's default (request-based) billing an instance is frozen between requests:
//! its follower neither polls nor writes a heartbeat, and the request that wakes it is already
//! waiting. A view learned before the freeze is of unknown age at the moment it matters most.
//! This module knows nothing of the store: the re-check is a future its caller supplies.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
// tokio's clock: the same monotonic clock in production (it runs on through a SIGSTOP or a
// cgroup freeze), and one the unit tests can pause.
use tokio::time::Instant;

/// `--max-staleness`, `--staleness-wait`, `--staleness-strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalenessPolicy {
    /// A view confirmed longer ago than this is re-checked before a request is routed on it.
    pub max_age: Duration,
    /// How long a request waits for that re-check.
    pub wait: Duration,
    /// When the re-check does not confirm the view in time: answer 503 instead of routing on it.
    pub strict: bool,
}

/// What a request may do, from [`Freshness::ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The view was confirmed within `max_age`: route at once.
    Fresh,
    /// The view was stale; a re-check confirmed it (and applied what changed) while it waited.
    Rechecked,
    /// The store did not confirm the view within the wait: route on the last view.
    Unconfirmed,
    /// As `Unconfirmed`, with `--staleness-strict`: answer 503.
    Refused,
}

/// The age of this instance's view of the release, and the one re-check stale requests share.
pub struct Freshness {
    policy: StalenessPolicy,
    origin: Instant,
    /// When the view was last confirmed: milliseconds since `origin`, plus one (0: never).
    confirmed: AtomicU64,
    check: Mutex<Check>,
}

#[derive(Default)]
struct Check {
    /// The re-check under way; its value turns `Some(confirmed)` when it ends.
    running: Option<watch::Receiver<Option<bool>>>,
    /// A request gave up waiting on the running re-check: later ones do not wait on it too.
    overdue: bool,
    /// When the last re-check failed: until `wait` has passed, requests do not wait again.
    failed_at: Option<Instant>,
}

impl Freshness {
    pub fn new(policy: StalenessPolicy) -> Self {
        Self { policy, origin: Instant::now(), confirmed: AtomicU64::new(0), check: Mutex::default() }
    }

    pub fn policy(&self) -> StalenessPolicy {
        self.policy
    }

    fn state(&self) -> MutexGuard<'_, Check> {
        self.check.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store confirmed the view as it was at `at` (when the confirming read started).
    pub fn confirm(&self, at: Instant) {
        let millis = u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX);
        self.confirmed.fetch_max(millis.saturating_add(1), Ordering::Relaxed);
        self.state().failed_at = None;
    }

    /// How long ago the view was confirmed; `None`: never.
    pub fn age(&self) -> Option<Duration> {
        let confirmed = self.confirmed.load(Ordering::Relaxed).checked_sub(1)?;
        Some(self.origin.elapsed().saturating_sub(Duration::from_millis(confirmed)))
    }

    /// Whether a request may be routed on the view without a re-check.
    pub fn is_fresh(&self) -> bool {
        self.age().is_some_and(|age| age <= self.policy.max_age)
    }

    /// Makes sure the view is fresh enough to route on: at once if it is; else waits up to the
    /// wait bound on one re-check (started by `check`, which resolves `true` once the store
    /// confirmed the view and whatever it changed among compiled versions is applied). Requests
    /// that arrive meanwhile wait on the same re-check; a request that gives up does not cancel
    /// it. After a re-check failed or ran past the wait, requests do not wait again until `wait`
    /// has passed (a store that is down costs one wait, not one per request).
    pub async fn ensure<F, Fut>(self: &Arc<Self>, check: F) -> Verdict
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        if self.is_fresh() {
            return Verdict::Fresh;
        }
        let Some(mut running) = self.join_or_start(check) else { return self.unconfirmed() };
        let ended = tokio::time::timeout(self.policy.wait, running.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(confirmed)) if *confirmed == Some(true) => Verdict::Rechecked,
            Ok(_) => self.unconfirmed(),
            Err(_) => {
                self.state().overdue = true;
                self.unconfirmed()
            }
        }
    }

    fn unconfirmed(&self) -> Verdict {
        if self.policy.strict { Verdict::Refused } else { Verdict::Unconfirmed }
    }

    /// The running re-check to wait on (started now if none runs), or `None` when requests are
    /// not to wait: the running one is overdue, or the last one failed within the wait bound.
    fn join_or_start<F, Fut>(self: &Arc<Self>, check: F) -> Option<watch::Receiver<Option<bool>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let mut state = self.state();
        if let Some(running) = &state.running
            && running.borrow().is_none()
        {
            return (!state.overdue).then(|| running.clone());
        }
        if state.failed_at.is_some_and(|at| at.elapsed() < self.policy.wait) {
            return None;
        }
        let (sender, receiver) = watch::channel(None);
        state.running = Some(receiver.clone());
        state.overdue = false;
        let started = Instant::now();
        let checking = check();
        let this = self.clone();
        tokio::spawn(async move {
            let confirmed = checking.await;
            if confirmed {
                this.confirm(started);
            } else {
                this.state().failed_at = Some(Instant::now());
            }
            let _ = sender.send(Some(confirmed));
        });
        Some(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn freshness(strict: bool) -> Arc<Freshness> {
        Arc::new(Freshness::new(StalenessPolicy {
            max_age: Duration::from_secs(4),
            wait: Duration::from_millis(300),
            strict,
        }))
    }

    #[tokio::test]
    async fn a_view_never_confirmed_is_stale_and_one_check_serves_every_waiter() {
        let fresh = freshness(false);
        assert_eq!(fresh.age(), None);
        let checks = Arc::new(AtomicU32::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (fresh, checks, released) = (fresh.clone(), checks.clone(), released.clone());
            waiters.spawn(async move {
                fresh
                    .ensure(|| {
                        checks.fetch_add(1, Ordering::SeqCst);
                        let gate = released.lock().unwrap().take().expect("the check starts once");
                        async move { gate.await.is_ok() }
                    })
                    .await
            });
        }
        // Every waiter is parked on the one check before it ends.
        while fresh.state().running.is_none() {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        while let Some(verdict) = waiters.join_next().await {
            assert_eq!(verdict.unwrap(), Verdict::Rechecked);
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        assert!(fresh.is_fresh());
        assert_eq!(fresh.ensure(|| async { unreachable!("fresh: no check") }).await, Verdict::Fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_costs_one_wait_then_none() {
        for strict in [false, true] {
            let fresh = freshness(strict);
            let expected = if strict { Verdict::Refused } else { Verdict::Unconfirmed };
            let started = Instant::now();
            assert_eq!(fresh.ensure(std::future::pending::<bool>).await, expected);
            assert_eq!(started.elapsed(), Duration::from_millis(300), "waited the wait bound");
            // The check still runs, overdue: the next request does not wait on it.
            let again = Instant::now();
            assert_eq!(fresh.ensure(|| async { unreachable!("one runs") }).await, expected);
            assert_eq!(again.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_check_is_not_retried_within_the_wait_bound() {
        let fresh = freshness(false);
        assert_eq!(fresh.ensure(|| async { false }).await, Verdict::Unconfirmed);
        assert_eq!(fresh.ensure(|| async { unreachable!("failed just now") }).await, Verdict::Unconfirmed);
        tokio::time::advance(Duration::from_millis(301)).await;
        assert_eq!(fresh.ensure(|| async { true }).await, Verdict::Rechecked);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!fresh.is_fresh(), "older than max_age again");
    }
}
