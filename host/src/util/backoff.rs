//! How long to wait before polling again after failures: the poll interval, then doubling.

use std::time::Duration;

/// Repeated failures back off up to this (or the poll interval, if longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Failures in a row polled at the normal interval before backing off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;

/// The wait before the next poll after `failures` failed polls in a row: the poll interval, then
/// doubling up to 30 s (or the poll interval, if longer).
pub fn backoff(poll_interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll_interval);
    match failures.checked_sub(FAILURES_BEFORE_BACKOFF) {
        None | Some(0) => poll_interval,
        Some(extra) => poll_interval.saturating_mul(1 << extra.min(16)).min(cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_a_few_failures_and_is_capped() {
        let poll = Duration::from_secs(2);
        assert_eq!(backoff(poll, 0), poll);
        assert_eq!(backoff(poll, 3), poll);
        assert_eq!(backoff(poll, 4), poll * 2);
        assert_eq!(backoff(poll, 5), poll * 4);
        assert_eq!(backoff(poll, 100), MAX_BACKOFF);
        // A poll interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(60), 100), Duration::from_secs(60));
    }
}
