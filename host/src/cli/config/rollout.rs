//! The canary analysis flags: the window and the three thresholds a canary must cross, all of
//! them, to be rolled back.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::parse_duration;
use crate::release::rollout::Thresholds;

const WINDOW_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

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
        Ok(Thresholds {
            window: self.canary_window,
            min_requests: self.canary_min_requests,
            max_failure_rate: self.canary_max_failure_rate,
            failure_ratio: self.canary_failure_ratio,
        })
    }
}
