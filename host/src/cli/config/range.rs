//! The range every numeric `serve` flag must fall in ([`check`]), checked before the port is
//! bound: a value outside it fails the start naming the flag, the range and what was given,
//! rather than overflowing a deadline or a buffer later.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::bail;

use super::ServeArgs;

/// Shortest timeout or interval a flag accepts (where `0s` does not mean "off").
pub(super) const MIN_TIME: Duration = Duration::from_millis(1);
/// Longest timeout or interval any flag accepts: a day. Far beyond any sensible setting (Cloud Run
/// ends a request at 60 min), and small enough that `now + it` can never overflow.
pub(super) const MAX_TIME: Duration = Duration::from_secs(24 * 3600);
/// Largest size any byte flag accepts: 1 TiB.
pub(super) const MAX_BYTES: u64 = 1 << 40;

/// `value` must be in `low..=high`; the error names `flag`, the range and `value`.
pub(super) fn check<T: PartialOrd + Debug>(flag: &str, value: T, low: T, high: T) -> anyhow::Result<()> {
    if value < low || value > high {
        bail!("`{flag}` must be between {low:?} and {high:?}, not {value:?}");
    }
    Ok(())
}

/// A size flag: like [`check`], with the range and the value printed as sizes (`64 KiB`, not
/// `65536`).
pub(super) fn check_size(flag: &str, value: u64, low: u64, high: u64) -> anyhow::Result<()> {
    use crate::util::units::format_size;
    if value < low || value > high {
        let (low, high, value) = (format_size(low), format_size(high), format_size(value));
        bail!("`{flag}` must be between {low} and {high}, not {value}");
    }
    Ok(())
}

/// A duration flag where `0s` turns the feature off: `0s`, or within `MIN_TIME..=MAX_TIME`.
pub(super) fn check_or_off(flag: &str, value: Duration) -> anyhow::Result<()> {
    if value.is_zero() {
        return Ok(());
    }
    if value < MIN_TIME || value > MAX_TIME {
        bail!("`{flag}` must be `0s` (off) or between {MIN_TIME:?} and {MAX_TIME:?}, not {value:?}");
    }
    Ok(())
}

impl ServeArgs {
    /// The ranges of the numeric flags [`Limits`] does not hold (those are [`Limits::validate`]'s).
    pub(super) fn check_ranges(&self) -> anyhow::Result<()> {
        check_or_off("--poll-interval", self.poll_interval)?;
        check("--fetch-timeout", self.fetch_timeout, MIN_TIME, MAX_SETTLE_TIME)?;
        check("--swap-probe-timeout", self.swap_probe_timeout, MIN_TIME, MAX_SETTLE_TIME)?;
        check("--shutdown-grace", self.shutdown_grace, Duration::ZERO, MAX_SETTLE_TIME)?;
        // Each kept version holds its compiled code (and, for p3, its idle instances).
        check("--keep-versions", self.keep_versions, 1, MAX_KEEP_VERSIONS)?;
        // A component is read into memory whole before it is checked.
        check_size("--max-component-size", self.max_component_size, 1, MAX_COMPONENT_SIZE)?;
        check("--log-buffer-lines", self.log_buffer_lines, 1, MAX_LOG_BUFFER_LINES)?;
        debug_assert!(MAX_SETTLE_TIME <= MAX_TIME);
        Ok(())
    }
}

/// Fetches, probes and the shutdown wait: an hour is already far more than any needs.
const MAX_SETTLE_TIME: Duration = Duration::from_secs(3600);
const MAX_KEEP_VERSIONS: usize = 64;
const MAX_COMPONENT_SIZE: u64 = 4 << 30;
/// A million lines held while stdout is slow: up to ~0.5 GiB of access-log lines.
const MAX_LOG_BUFFER_LINES: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["echo-host"];
        argv.extend_from_slice(extra);
        <super::super::Cli as clap::Parser>::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn names_the_flag_and_the_range() {
        let err = check("--max-connections", usize::MAX, 1, 1_000_000).unwrap_err().to_string();
        assert_eq!(err, format!("`--max-connections` must be between 1 and 1000000, not {}", usize::MAX));
        assert!(check("--x", 5u32, 1, 5).is_ok() && check("--x", 1u32, 1, 5).is_ok());
        assert!(check("--x", 0u32, 1, 5).is_err());
        assert!(check_or_off("--t", Duration::ZERO).is_ok());
        assert!(check_or_off("--t", Duration::from_secs(1)).is_ok());
        let err = check_or_off("--t", MAX_TIME + Duration::from_nanos(1)).unwrap_err().to_string();
        assert!(err.contains("`--t` must be `0s` (off)"), "{err}");
    }

    /// Byte ranges read as the flags are written, not as raw byte counts.
    #[test]
    fn size_ranges_print_as_sizes() {
        let err = args(&["--max-memory", "8GiB"]).validate().map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "`--max-memory` must be between 64 KiB and 4 GiB, not 8 GiB");
        let err = args(&["--max-component-size", "0"]).validate().map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "`--max-component-size` must be between 1 byte and 4 GiB, not 0 bytes");
        let err = args(&["--max-body", "2TiB"]).validate().map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, "`--max-body` must be between 0 bytes and 1 TiB, not 2 TiB");
    }

    /// Every numeric flag refuses a value past its range with an error naming it, before the port
    /// is bound: nothing later can overflow a deadline (`now + 1e19 s`) or a semaphore.
    #[test]
    fn every_numeric_flag_is_range_checked() {
        let huge = "10000000000000000000";
        for (flag, value) in [
            ("--max-connections", "18446744073709551615"),
            ("--concurrency", huge),
            ("--request-timeout", huge),
            ("--header-read-timeout", huge),
            ("--body-read-timeout", huge),
            ("--write-timeout", huge),
            ("--idle-timeout", huge),
            ("--after-response-grace", huge),
            ("--h2-keepalive-interval", huge),
            ("--h2-keepalive-timeout", huge),
            ("--h2-max-streams", "4294967295"),
            ("--max-headers", huge),
            ("--max-header-bytes", "1GiB"),
            ("--max-body", "2048GiB"),
            ("--max-memory", "8GiB"),
            ("--poll-interval", huge),
            ("--fetch-timeout", huge),
            ("--swap-probe-timeout", huge),
            ("--shutdown-grace", huge),
            ("--keep-versions", huge),
            ("--max-component-size", "8GiB"),
            ("--log-buffer-lines", huge),
            ("--heartbeat-interval", huge),
            ("--canary-window", huge),
            ("--canary-latency-floor", huge),
            ("--canary-max-latency-ratio", huge),
            ("--instance-max-requests", huge),
            ("--instance-idle-timeout", huge),
        ] {
            let err = args(&[flag, value]).validate().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{flag}`")) && err.contains("between"), "{flag} {value}: {err}");
        }
        for (flag, value) in
            [("--fetch-timeout", "0s"), ("--max-component-size", "0"), ("--keep-versions", "0")]
        {
            let err = args(&[flag, value]).validate().map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{flag}`")), "{flag} {value}: {err}");
        }
    }
}
