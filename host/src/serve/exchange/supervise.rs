//! The supervisor's part of an exchange: watching its response until it finishes, cutting it at
//! the deadline or when the client stops taking it.

use std::time::Duration;

use tokio::time::Instant;

use super::{Exchange, Outcome, Phase};

impl Exchange {
    /// Watches the response until the exchange finishes (its last byte written): cuts it at the
    /// deadline, or when the client took nothing for `--write-timeout` (hyper stops polling a
    /// body its client does not read, so the body itself cannot notice).
    pub async fn supervise(&self) {
        loop {
            let Some(next) = self.check(Instant::now()) else { return };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.supervisor.notified() => {}
            }
        }
    }

    /// Acts on what is due at `now`; returns when to look again, `None` once finished.
    fn check(&self, now: Instant) -> Option<Instant> {
        let (phase, answered) = {
            let state = self.state();
            (state.lifecycle.phase(), state.lifecycle.outcome())
        };
        match phase {
            Phase::Finished => return None,
            // The request path answers the deadline itself before the head; look again when it
            // should have (it wakes this task when the head goes out).
            Phase::Waiting => return Some(now.max(self.deadline) + Duration::from_secs(1)),
            Phase::Streaming(_) => {}
        }
        // The host's 504, sent at the deadline, is bound by the write timeout alone; its answers
        // before it (503, 413, 431 …) by the deadline too, like the guest's.
        let by_deadline = answered != Some(Outcome::TimedOut);
        if by_deadline && now >= self.deadline {
            if answered.is_some() {
                self.cut_off(Outcome::TimedOut);
            } else {
                self.fault(Outcome::TimedOut);
            }
            return None;
        }
        let write_timeout = self.limits().write_timeout;
        let next = match self.progress.handed_at() {
            // hyper waits for the guest: the client is not behind. A stall cannot complete
            // before `now + write_timeout`.
            None => now + write_timeout,
            Some(handed) if now >= handed + write_timeout => {
                self.cut_off(Outcome::WriteStalled);
                return None;
            }
            Some(handed) => handed + write_timeout,
        };
        Some(if by_deadline { next.min(self.deadline) } else { next })
    }

    /// Cuts a response on its way out, even one answering an earlier fault.
    fn cut_off(&self, outcome: Outcome) {
        if self.state().lifecycle.cut_off(outcome) {
            if let Some(scope) = &self.scope {
                scope.cut();
            }
            self.stop.stop_now();
            self.finish();
        }
    }
}
