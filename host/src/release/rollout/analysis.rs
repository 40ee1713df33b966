//! The canary analysis: over the last `--canary-window`, is the canary clearly worse than
//! stable? Two rules, either enough to roll it back. Failures ([`judge`]): enough canary
//! requests, a failure rate over the absolute limit, and over a multiple of stable's. Latency
//! ([`judge_latency`]): enough timed requests of both, and the canary's p95 over a multiple of
//! stable's and over an absolute floor.

use std::time::Duration;

use crate::versions::latency::Latencies;
use crate::versions::window::Counts;

/// The quantile of request durations the latency rule compares.
pub const LATENCY_QUANTILE: f64 = 0.95;

/// The thresholds (`--canary-*` flags).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Thresholds {
    #[serde(rename = "window_ms", serialize_with = "millis")]
    pub window: Duration,
    pub min_requests: u64,
    /// Percent.
    pub max_failure_rate: f64,
    pub failure_ratio: f64,
    /// The canary's p95 over this multiple of stable's (and over the floor) rolls it back; 0:
    /// the latency rule is off.
    pub max_latency_ratio: f64,
    #[serde(rename = "latency_floor_ms", serialize_with = "millis")]
    pub latency_floor: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_requests: 50,
            max_failure_rate: 5.0,
            failure_ratio: 2.0,
            max_latency_ratio: 2.0,
            latency_floor: Duration::from_millis(100),
        }
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

/// Judges the canary's request durations against stable's over the same window: clearly slower
/// when both have at least `min_requests` timed requests and the canary's p95 is over
/// `max_latency_ratio` times stable's and over `latency_floor`.
pub fn judge_latency(canary: &Latencies, stable: &Latencies, thresholds: &Thresholds) -> Verdict {
    let enough = |l: &Latencies| l.count() >= thresholds.min_requests;
    if thresholds.max_latency_ratio == 0.0 || !enough(canary) || !enough(stable) {
        return Verdict::Inconclusive;
    }
    let (Some(slow), Some(base)) = (canary.quantile(LATENCY_QUANTILE), stable.quantile(LATENCY_QUANTILE))
    else {
        return Verdict::Inconclusive;
    };
    let floor = thresholds.latency_floor.as_secs_f64();
    if slow > floor && slow > thresholds.max_latency_ratio * base {
        Verdict::Failing(format!(
            "canary p95 latency {} ({} requests) over {:?} is over {}x stable's p95 {} ({} requests) and over the {} floor",
            millis_text(slow),
            canary.count(),
            thresholds.window,
            thresholds.max_latency_ratio,
            millis_text(base),
            stable.count(),
            millis_text(floor),
        ))
    } else {
        Verdict::Healthy
    }
}

/// `212 ms`, `3.1 ms`, `0.42 ms`: a duration in seconds as a reader compares them.
pub fn millis_text(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    match ms {
        ms if ms >= 100.0 => format!("{ms:.0} ms"),
        ms if ms >= 1.0 => format!("{ms:.1} ms"),
        ms => format!("{ms:.2} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(n: u64, seconds: f64) -> Latencies {
        let mut latencies = Latencies::default();
        for i in 0..n {
            // A little spread, as real durations have.
            latencies.record(seconds * (1.0 + (i % 10) as f64 / 100.0));
        }
        latencies
    }

    #[test]
    fn slower_means_over_the_ratio_and_the_floor_with_enough_requests_of_both() {
        let t = Thresholds::default();
        let fast = latencies(500, 0.003);
        // 200 ms against 3 ms: over 2x and over 100 ms.
        let Verdict::Failing(reason) = judge_latency(&latencies(60, 0.2), &fast, &t) else { panic!() };
        assert!(
            reason.starts_with("canary p95 latency ") && reason.contains(" ms (60 requests) over 60s"),
            "{reason}"
        );
        assert!(
            reason.contains("over 2x stable's p95 ") && reason.contains(" ms (500 requests)"),
            "{reason}"
        );
        assert!(reason.ends_with("and over the 100 ms floor"), "{reason}");
        // Too few canary requests, or too few of stable's.
        assert_eq!(judge_latency(&latencies(49, 0.2), &fast, &t), Verdict::Inconclusive);
        assert_eq!(judge_latency(&latencies(60, 0.2), &latencies(49, 0.003), &t), Verdict::Inconclusive);
        // 10x slower but under the floor: two fast versions.
        assert_eq!(judge_latency(&latencies(60, 0.03), &fast, &t), Verdict::Healthy);
        // Over the floor but within the ratio.
        assert_eq!(judge_latency(&latencies(60, 0.22), &latencies(500, 0.2), &t), Verdict::Healthy);
        assert!(matches!(judge_latency(&latencies(60, 0.8), &latencies(500, 0.2), &t), Verdict::Failing(_)));
        // Off.
        let off = Thresholds { max_latency_ratio: 0.0, ..t };
        assert_eq!(judge_latency(&latencies(60, 5.0), &fast, &off), Verdict::Inconclusive);
        // A lower floor catches a smaller regression.
        let low = Thresholds { latency_floor: Duration::from_millis(10), ..t };
        assert!(matches!(judge_latency(&latencies(60, 0.03), &fast, &low), Verdict::Failing(_)));
    }

    #[test]
    fn durations_read_as_milliseconds() {
        assert_eq!(millis_text(0.2123), "212 ms");
        assert_eq!(millis_text(0.0031), "3.1 ms");
        assert_eq!(millis_text(0.00042), "0.42 ms");
    }

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
