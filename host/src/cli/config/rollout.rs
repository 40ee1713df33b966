//! The canary analysis flags: the window, the three failure thresholds a canary must cross, all
//! of them, to be rolled back, and the two latency thresholds that roll it back too.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::parse_duration;
use crate::release::rollout::Thresholds;

const WINDOW_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
const LATENCY_FLOOR_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Args, Clone)]
pub struct RolloutArgs {
    /// The sliding window over which a canary's failure rate is compared with stable's.
    #[arg(long, env = "ECHO_HOST_CANARY_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub canary_window: Duration,

    /// Canary requests within the window before it can be judged.
    #[arg(long, env = "ECHO_HOST_CANARY_MIN_REQUESTS", default_value_t = 50)]
    pub canary_min_requests: u64,

    /// The canary is rolled back only above this failure rate (percent of its requests: 5xx
    /// from the component, traps, timeouts)...
    #[arg(long, env = "ECHO_HOST_CANARY_MAX_FAILURE_RATE", default_value_t = 5.0)]
    pub canary_max_failure_rate: f64,

    /// ...and above this multiple of stable's rate over the same window.
    #[arg(long, env = "ECHO_HOST_CANARY_FAILURE_RATIO", default_value_t = 2.0)]
    pub canary_failure_ratio: f64,

    /// The canary is also rolled back when its p95 latency over the window is over this multiple
    /// of stable's (0: never on latency)...
    #[arg(long, env = "ECHO_HOST_CANARY_MAX_LATENCY_RATIO", default_value_t = 2.0)]
    pub canary_max_latency_ratio: f64,

    /// ...and over this floor, so that two fast versions do not trip on noise.
    #[arg(long, env = "ECHO_HOST_CANARY_LATENCY_FLOOR", default_value = "100ms", value_parser = parse_duration)]
    pub canary_latency_floor: Duration,
}

impl RolloutArgs {
    pub fn validate(&self) -> anyhow::Result<Thresholds> {
        let (low, high) = WINDOW_RANGE;
        if !(low..=high).contains(&self.canary_window) {
            bail!("`--canary-window` must be between {low:?} and {high:?}, not {:?}", self.canary_window);
        }
        if !(1..=1_000_000).contains(&self.canary_min_requests) {
            bail!("`--canary-min-requests` must be between 1 and 1000000, not {}", self.canary_min_requests);
        }
        if !(0.0..100.0).contains(&self.canary_max_failure_rate) {
            bail!(
                "`--canary-max-failure-rate` is a percent from 0 up to (not including) 100, not {}",
                self.canary_max_failure_rate
            );
        }
        if !(1.0..=1000.0).contains(&self.canary_failure_ratio) {
            bail!("`--canary-failure-ratio` must be between 1 and 1000, not {}", self.canary_failure_ratio);
        }
        let ratio = self.canary_max_latency_ratio;
        if ratio != 0.0 && !(1.0..=1000.0).contains(&ratio) {
            bail!("`--canary-max-latency-ratio` must be 0 (off) or between 1 and 1000, not {ratio}");
        }
        if self.canary_latency_floor > LATENCY_FLOOR_MAX {
            bail!(
                "`--canary-latency-floor` must be between 0ns and {LATENCY_FLOOR_MAX:?}, not {:?}",
                self.canary_latency_floor
            );
        }
        Ok(Thresholds {
            window: self.canary_window,
            min_requests: self.canary_min_requests,
            max_failure_rate: self.canary_max_failure_rate,
            failure_ratio: self.canary_failure_ratio,
            max_latency_ratio: ratio,
            latency_floor: self.canary_latency_floor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> anyhow::Result<Thresholds> {
        let mut argv = vec!["echo-host"];
        argv.extend_from_slice(extra);
        <crate::cli::config::Cli as clap::Parser>::try_parse_from(argv)?.serve.rollout.validate()
    }

    #[test]
    fn the_latency_rule_is_on_by_default_and_its_flags_are_range_checked() {
        let t = args(&[]).unwrap();
        assert_eq!((t.max_latency_ratio, t.latency_floor), (2.0, Duration::from_millis(100)));
        let t = args(&["--canary-max-latency-ratio", "0", "--canary-latency-floor", "0s"]).unwrap();
        assert_eq!((t.max_latency_ratio, t.latency_floor), (0.0, Duration::ZERO));
        let t = args(&["--canary-max-latency-ratio", "1.5", "--canary-latency-floor", "250ms"]).unwrap();
        assert_eq!((t.max_latency_ratio, t.latency_floor), (1.5, Duration::from_millis(250)));
        for (flag, value) in [
            ("--canary-max-latency-ratio", "0.5"),
            ("--canary-max-latency-ratio", "1001"),
            ("--canary-max-latency-ratio", "NaN"),
            ("--canary-latency-floor", "2h"),
        ] {
            let error = args(&[flag, value]).unwrap_err().to_string();
            assert!(error.contains(&format!("`{flag}` must be")), "{flag} {value}: {error}");
        }
    }
}
