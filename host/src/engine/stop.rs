//! When a guest must stop: its request deadline, moved earlier once its response is over. Read by
//! the store's epoch callback (a computing guest) and by the guest task (a waiting one).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The instant a guest must stop by.
pub struct StopSignal {
    base: Instant,
    deadline: Instant,
    /// Nanoseconds after `base`; only ever moves earlier.
    at: AtomicU64,
    /// Set by the epoch callback when it interrupted the guest, so the trap that follows is
    /// read as a stop, not a crash.
    interrupted: AtomicBool,
    changed: Notify,
}

impl StopSignal {
    pub fn new(deadline: Instant) -> Self {
        let base = Instant::now();
        Self {
            base,
            deadline,
            at: AtomicU64::new(nanos(deadline.saturating_duration_since(base))),
            interrupted: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    pub fn at(&self) -> Instant {
        self.base + Duration::from_nanos(self.at.load(Ordering::Acquire))
    }

    /// Moves the stop to `at` if that is earlier.
    pub fn stop_by(&self, at: Instant) {
        let at = nanos(at.saturating_duration_since(self.base));
        if self.at.fetch_min(at, Ordering::AcqRel) > at {
            self.changed.notify_one();
        }
    }

    pub fn stop_now(&self) {
        self.stop_by(Instant::now());
    }

    /// For the epoch callback: whether the guest must stop now (and remember it was stopped).
    pub fn interrupt_now(&self) -> bool {
        let stop = Instant::now() >= self.at();
        if stop {
            self.interrupted.store(true, Ordering::Release);
        }
        stop
    }

    /// Whether the epoch callback stopped the guest.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    /// Whether the stop, once reached, was the request deadline (rather than the host ending
    /// the guest early because the response was over).
    pub fn is_deadline(&self) -> bool {
        self.at() >= self.deadline
    }

    /// Resolves when the stop is reached, following it when it moves earlier.
    pub async fn reached(&self) {
        loop {
            let at = self.at();
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_stop_only_moves_earlier_and_wakes_its_waiter() {
        let deadline = Instant::now() + Duration::from_secs(300);
        let stop = std::sync::Arc::new(StopSignal::new(deadline));
        assert_eq!(stop.at(), deadline);
        stop.stop_by(deadline + Duration::from_secs(5));
        assert_eq!(stop.at(), deadline, "a later stop changes nothing");

        let waiter = tokio::spawn({
            let stop = stop.clone();
            async move { stop.reached().await }
        });
        tokio::task::yield_now().await;
        let grace = Instant::now() + Duration::from_secs(1);
        stop.stop_by(grace);
        waiter.await.unwrap();
        assert!(Instant::now() >= grace, "reached before the moved stop");
        assert!(!stop.is_deadline(), "stopped early, not by the deadline");
        assert!(stop.interrupt_now());
        assert!(stop.interrupted());
    }
}
