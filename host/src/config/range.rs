//! The range every numeric `serve` flag must fall in ([`check`]), checked before the port is
//! bound: a value outside it fails the start naming the flag, the range and what was given,
//! rather than overflowing a deadline or a buffer later.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::bail;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
