//! Why a request's guest failed, and the one ERROR line that says so. Whoever sees the cause (the
//! guest task, the pool's answer, the response body) records it with [`Exchange::guest_failed`];
//! the exchange writes the line when it finishes, so a request that fails writes exactly one,
//! whichever party saw it first. A guest that fails after its request finished (a trap after a
//! complete response) gets its line when it fails.

use std::fmt::Display;
use std::sync::Arc;

use crate::engine::memory::MemoryWatch;
use crate::engine::pool::InstanceRecord;
use crate::util::units::format_size;

use super::lifecycle::Outcome;
use super::{Exchange, Kind, Phase};

impl Outcome {
    /// Whether the request failed because of its guest: trap, no response, error code, deadline.
    pub fn is_guest_failure(self) -> bool {
        matches!(self, Self::Trapped | Self::NeverResponded | Self::ErrorCode | Self::TimedOut)
    }
}

impl Exchange {
    /// Records why the guest failed (the first cause wins). When the exchange has finished
    /// already, writes its ERROR line now.
    pub fn guest_failed(&self, cause: String) {
        let finished = {
            let mut state = self.state();
            match state.lifecycle.phase() {
                Phase::Finished if !state.failure_logged && self.kind == Kind::Request => {
                    state.failure_logged = true;
                    state.lifecycle.outcome()
                }
                Phase::Finished => return,
                _ => {
                    state.failure.get_or_insert(cause);
                    return;
                }
            }
        };
        self.log_failure(finished.unwrap_or(Outcome::Responded), &cause);
    }

    /// The cause recorded for this exchange's guest, if it failed.
    pub fn failure_cause(&self) -> Option<String> {
        self.state().failure.clone()
    }

    /// The reused (p3) instance this request was passed to.
    pub fn attach_instance(&self, instance: &Arc<InstanceRecord>) {
        let _ = self.instance.set(instance.clone());
    }

    pub fn instance(&self) -> Option<&Arc<InstanceRecord>> {
        self.instance.get()
    }

    /// Why a guest that failed with `error` failed: out of memory when its instance was refused a
    /// growth, otherwise `what` (`the component trapped`) and the error.
    pub fn cause_of(&self, what: &str, error: &dyn Display, memory: Option<&MemoryWatch>) -> String {
        let memory = memory.or_else(|| self.instance.get().map(|i| &*i.memory));
        match memory.and_then(MemoryWatch::refused) {
            Some(asked) => format!(
                "out of memory: the component asked for {} of linear memory, over `--max-memory` ({}), then failed: {error:#}",
                format_size(asked as u64),
                format_size(self.limits().max_memory_bytes)
            ),
            None => format!("{what}: {error:#}"),
        }
    }

    /// At the end of a request: writes its ERROR line when its guest failed (the outcome says so,
    /// or a cause was recorded), once.
    pub(super) fn report_failure(&self, outcome: Outcome, cut: bool) {
        if self.kind != Kind::Request {
            return;
        }
        let cause = {
            let mut state = self.state();
            if state.failure_logged || !(outcome.is_guest_failure() || state.failure.is_some()) {
                return;
            }
            state.failure_logged = true;
            state.failure.take()
        };
        let cause = match (outcome, cause) {
            (Outcome::TimedOut, recorded) => {
                let timeout = (self.deadline - self.ctx.started).as_secs_f64();
                let what = if cut {
                    format!(
                        "the response was not complete within the request timeout of {timeout}s (`--request-timeout`)"
                    )
                } else {
                    format!("no response within the request timeout of {timeout}s (`--request-timeout`)")
                };
                match recorded {
                    Some(recorded) => format!("{what}; {recorded}"),
                    None => what,
                }
            }
            (_, Some(recorded)) => recorded,
            (Outcome::NeverResponded, None) => {
                "the component returned without a response (it never called `response-outparam::set`)".into()
            }
            (Outcome::ErrorCode, None) => "the component answered with an error code".into(),
            (_, None) => "the component failed".into(),
        };
        self.log_failure(outcome, &cause);
    }

    fn log_failure(&self, outcome: Outcome, cause: &str) {
        let version = self.served.get().map(|(component, _)| component.version());
        let id = &self.ctx.id;
        let what = if outcome.is_guest_failure() {
            format!("request {id} failed ({})", outcome.name())
        } else {
            format!("the component of request {id} failed after the request ended ({})", outcome.name())
        };
        tracing::error!(request_id = %id, outcome = outcome.name(), version, cause, "{what}: {cause}");
    }
}
