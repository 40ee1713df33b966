//! Retrying a candidate that was turned away for a transient reason ([`Retry::Later`]: a smoke
//! probe that hit overload or a timeout, a compile task that did not run), with capped
//! exponential backoff, each attempt counted in `echo_host_swap_retries_total`. A deterministic
//! rejection ([`Retry::Never`]) is not retried: the watcher remembers what it submitted and only a
//! change of the source (`touch`, a new upload, a new generation) submits it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::release::gate::{Artifacts, Candidate, Gate, Rejection, Retry, SwapOutcome};

/// The longest wait between two attempts (or the poll interval, if longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The candidate a watcher will submit again, if any.
#[derive(Default)]
pub struct Retries {
    pending: Option<Pending>,
}

struct Pending {
    candidate: Candidate,
    artifacts: Artifacts,
    /// Attempts so far (the first submission included).
    attempts: u32,
    due: Instant,
}

impl Retries {
    /// Submits `candidate`, replacing any pending retry: a transient rejection is kept to be
    /// retried after `poll_interval` (doubling per attempt, capped).
    pub async fn submit(
        &mut self,
        gate: &Arc<Gate>,
        candidate: Candidate,
        artifacts: Artifacts,
        poll_interval: Duration,
    ) -> Result<SwapOutcome, Rejection> {
        self.pending = None;
        self.attempt(gate, candidate, artifacts, 1, poll_interval).await
    }

    /// Submits the pending candidate again if its time has come; `None` when nothing was due.
    pub async fn run_due(
        &mut self,
        gate: &Arc<Gate>,
        poll_interval: Duration,
    ) -> Option<Result<SwapOutcome, Rejection>> {
        if self.pending.as_ref().is_none_or(|p| Instant::now() < p.due) {
            return None;
        }
        let Pending { candidate, artifacts, attempts, .. } = self.pending.take()?;
        gate.metrics().swap_retries.inc();
        tracing::info!(
            source = %candidate.source,
            attempt = attempts + 1,
            "submitting the candidate from {} again after a transient rejection",
            candidate.source
        );
        Some(self.attempt(gate, candidate, artifacts, attempts + 1, poll_interval).await)
    }

    /// Forgets the pending retry (the source changed, or serves the active version again).
    pub fn clear(&mut self) {
        self.pending = None;
    }

    async fn attempt(
        &mut self,
        gate: &Arc<Gate>,
        candidate: Candidate,
        artifacts: Artifacts,
        attempts: u32,
        poll_interval: Duration,
    ) -> Result<SwapOutcome, Rejection> {
        let kept = candidate.clone();
        let result = gate.submit_as(candidate, artifacts).await;
        if let Err(rejection) = &result
            && rejection.retry() == Retry::Later
        {
            let delay = retry_delay(poll_interval, attempts);
            tracing::info!(
                source = %kept.source,
                attempts,
                retry_in_ms = delay.as_millis() as u64,
                "the rejection of the candidate from {} may be transient; retrying in {delay:?}",
                kept.source
            );
            self.pending =
                Some(Pending { candidate: kept, artifacts, attempts, due: Instant::now() + delay });
        }
        result
    }
}

/// The wait after `attempts` failed attempts: the poll interval, doubling, capped at 30 s (or the
/// poll interval, if longer).
pub fn retry_delay(poll_interval: Duration, attempts: u32) -> Duration {
    let cap = MAX_RETRY_DELAY.max(poll_interval);
    let doublings = attempts.saturating_sub(1).min(16);
    poll_interval.saturating_mul(1 << doublings).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_the_poll_interval_up_to_a_cap() {
        let poll = Duration::from_secs(2);
        assert_eq!(retry_delay(poll, 1), poll);
        assert_eq!(retry_delay(poll, 2), poll * 2);
        assert_eq!(retry_delay(poll, 3), poll * 4);
        assert_eq!(retry_delay(poll, 100), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(Duration::from_secs(60), 5), Duration::from_secs(60));
    }
}
