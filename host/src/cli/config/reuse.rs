//! The instance-reuse flags: how many requests one instance serves in its life and at once, and
//! how long it waits idle. p3 (`wasi:http/service`) components reuse instances by default
//! (`wasmtime serve`'s figures); p2 ones only when `--instance-max-requests` is given.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::parse_duration;
use crate::engine::runtime::Reuse;

const MAX_REQUESTS_RANGE: (usize, usize) = (1, 1_000_000);
const MAX_CONCURRENT_RANGE: (usize, usize) = (1, 1024);
const IDLE_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));

#[derive(Debug, Args, Clone)]
pub struct ReuseArgs {
    /// Requests one instance serves before it is retired (`wasmtime serve`'s
    /// `--max-instance-reuse-count`). Unset: 128 for p3 (`wasi:http/service`) components and 1
    /// (a fresh instance per request) for p2 (`wasi:http/proxy`) ones. Given, it holds for both: a
    /// p2 instance then serves up to N requests one after another, reused only after a clean
    /// return. Globals survive between the requests of one instance.
    #[arg(long, env = "ECHO_HOST_INSTANCE_MAX_REQUESTS")]
    pub instance_max_requests: Option<usize>,

    /// Requests one p3 instance serves at the same time
    /// (`wasmtime serve`'s `--max-instance-concurrent-reuse-count`).
    #[arg(long, env = "ECHO_HOST_INSTANCE_MAX_CONCURRENT", default_value_t = Reuse::default().max_concurrent)]
    pub instance_max_concurrent: usize,

    /// How long an idle instance (p3, or p2 with `--instance-max-requests`) is kept for another
    /// request before it is retired.
    #[arg(long, env = "ECHO_HOST_INSTANCE_IDLE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub instance_idle_timeout: Duration,
}

impl ReuseArgs {
    pub fn validate(&self) -> anyhow::Result<Reuse> {
        let defaults = Reuse::default();
        let max_requests = self.instance_max_requests.unwrap_or(defaults.max_requests);
        for (flag, value, (low, high)) in [
            ("--instance-max-requests", max_requests, MAX_REQUESTS_RANGE),
            ("--instance-max-concurrent", self.instance_max_concurrent, MAX_CONCURRENT_RANGE),
        ] {
            if !(low..=high).contains(&value) {
                bail!("`{flag}` must be between {low} and {high}, not {value}");
            }
        }
        let (low, high) = IDLE_TIMEOUT_RANGE;
        if !(low..=high).contains(&self.instance_idle_timeout) {
            bail!(
                "`--instance-idle-timeout` must be between {low:?} and {high:?}, not {:?}",
                self.instance_idle_timeout
            );
        }
        Ok(Reuse {
            max_requests,
            p2_max_requests: self.instance_max_requests.unwrap_or(defaults.p2_max_requests),
            max_concurrent: self.instance_max_concurrent,
            idle_timeout: self.instance_idle_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::config::Cli;

    fn reuse(args: &[&str]) -> anyhow::Result<crate::engine::runtime::Reuse> {
        let cli = Cli::try_parse_from(["echo-host"].iter().chain(args)).unwrap();
        cli.serve.reuse.validate()
    }

    #[test]
    fn defaults_are_wasmtime_serves() {
        let reuse = reuse(&[]).unwrap();
        assert_eq!((reuse.max_requests, reuse.max_concurrent), (128, 16));
        assert_eq!(reuse.idle_timeout, std::time::Duration::from_secs(1));
        assert_eq!(reuse.p2_max_requests, 1, "p2: a fresh instance per request unless asked");
    }

    #[test]
    fn a_request_limit_given_holds_for_p2_and_p3() {
        let given = reuse(&["--instance-max-requests", "64"]).unwrap();
        assert_eq!((given.max_requests, given.p2_max_requests), (64, 64));
        let one = reuse(&["--instance-max-requests", "1"]).unwrap();
        assert_eq!((one.max_requests, one.p2_max_requests), (1, 1));
    }

    #[test]
    fn out_of_range_values_name_the_flag_and_the_range() {
        let error = reuse(&["--instance-max-requests", "0"]).unwrap_err().to_string();
        assert_eq!(error, "`--instance-max-requests` must be between 1 and 1000000, not 0");
        let error = reuse(&["--instance-max-concurrent", "5000"]).unwrap_err().to_string();
        assert_eq!(error, "`--instance-max-concurrent` must be between 1 and 1024, not 5000");
        let error = reuse(&["--instance-idle-timeout", "2h"]).unwrap_err().to_string();
        assert!(error.starts_with("`--instance-idle-timeout` must be between 1ms and 3600s"), "{error}");
    }
}
