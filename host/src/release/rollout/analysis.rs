//! The canary analysis: over the last `--canary-window`, is the canary clearly worse than
//! stable? Clearly means all three: enough canary requests, a failure rate over the absolute
//! limit, and over a multiple of stable's.

use std::time::Duration;

use crate::versions::window::Counts;

/// The thresholds (`--canary-*` flags).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Thresholds {
    #[serde(rename = "window_ms", serialize_with = "millis")]
    pub window: Duration,
    pub min_requests: u64,
    /// Percent.
    pub max_failure_rate: f64,
    pub failure_ratio: f64,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { window: Duration::from_secs(60), min_requests: 50, max_failure_rate: 5.0, failure_ratio: 2.0 }
    }
}

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few canary requests to say.
    Inconclusive,
    Healthy,
    /// Roll it back; the reason names the numbers.
    Failing(String),
}

/// Judges the canary's counts against stable's over the same window.
pub fn judge(canary: Counts, stable: Counts, thresholds: &Thresholds) -> Verdict {
    if canary.requests < thresholds.min_requests {
        return Verdict::Inconclusive;
    }
    let (canary_rate, stable_rate) = (canary.rate() * 100.0, stable.rate() * 100.0);
    if canary_rate > thresholds.max_failure_rate && canary_rate > thresholds.failure_ratio * stable_rate {
        Verdict::Failing(format!(
            "canary failure rate {canary_rate:.1}% ({} of {}) over {:?} is over {}% and over {}x stable's {stable_rate:.1}% ({} of {})",
            canary.failures,
            canary.requests,
            thresholds.window,
            thresholds.max_failure_rate,
            thresholds.failure_ratio,
            stable.failures,
            stable.requests,
        ))
    } else {
        Verdict::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, failures: u64) -> Counts {
        Counts { requests, failures }
    }

    #[test]
    fn clearly_worse_means_all_three_thresholds() {
        let t = Thresholds::default();
        assert_eq!(judge(counts(49, 49), counts(100, 0), &t), Verdict::Inconclusive);
        assert!(matches!(judge(counts(100, 30), counts(1000, 0), &t), Verdict::Failing(_)));
        // Under the absolute rate.
        assert_eq!(judge(counts(100, 5), counts(1000, 0), &t), Verdict::Healthy);
        // Stable fails as much: the canary is not the cause.
        assert_eq!(judge(counts(100, 30), counts(1000, 200), &t), Verdict::Healthy);
        let Verdict::Failing(reason) = judge(counts(200, 62), counts(1800, 0), &t) else { panic!() };
        assert!(reason.contains("31.0% (62 of 200)") && reason.contains("0.0% (0 of 1800)"), "{reason}");
    }
}
