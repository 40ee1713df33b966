//! The guest resource flags ([`GuestLimits`]): what one request's guest may make the host hold
//! (resource-table entries, header bytes) and log (lines, bytes), with their ranges.

use clap::Args;

use super::parse_size;
use super::range::{check, check_size};
use crate::engine::limits::GuestLimits;

/// `wasmtime serve` allows 1M entries (`-Smax-resources`); a request of our components holds a
/// few dozen at most (request, headers, bodies, streams, pollables, outbound calls), and a p3
/// instance serving `--instance-max-concurrent` (16) requests a few hundred. 1024 leaves room and
/// bounds what the entries can pin: with `--max-guest-header-bytes`, 1024 × 64 KiB of headers.
pub const DEFAULT_MAX_GUEST_RESOURCES: usize = 1024;
/// Like the largest request head the host accepts (`--max-header-bytes`); wasmtime allows
/// 128 KiB (`-Smax-http-fields-size`).
pub const DEFAULT_MAX_GUEST_HEADER_BYTES: &str = "64KiB";
/// Half of `--log-buffer-lines` (2048): one request cannot fill the log queue by itself.
pub const DEFAULT_MAX_GUEST_LOG_LINES: u64 = 1000;
/// About what the queue's 2048 access-log lines take: one request's output is never more.
pub const DEFAULT_MAX_GUEST_LOG_BYTES: &str = "1MiB";

const RESOURCES_RANGE: (usize, usize) = (64, 1_000_000);
const HEADER_BYTES_RANGE: (u64, u64) = (1 << 10, 16 << 20);
const LOG_LINES_RANGE: (u64, u64) = (0, 10_000_000);
const LOG_BYTES_RANGE: (u64, u64) = (0, 1 << 30);

#[derive(Debug, Args, Clone)]
pub struct GuestArgs {
    /// Resource-table entries (headers, bodies, streams, pollables, ...) a guest may hold at once,
    /// per request (p2) or per reused instance (p3); one more traps (500). Like `wasmtime
    /// serve`'s `-Smax-resources`.
    #[arg(long, env = "ECHO_HOST_MAX_GUEST_RESOURCES", default_value_t = DEFAULT_MAX_GUEST_RESOURCES)]
    pub max_guest_resources: usize,

    /// Header bytes a guest may build in all its `fields` (headers and trailers: from a list,
    /// appended, set, cloned), per request (p3: since the instance took its latest request),
    /// counted like `wasmtime serve`'s `-Smax-http-fields-size`: names and values plus ~70 bytes
    /// per entry. Past it a p2 guest traps (500), a p3 guest gets `size-exceeded`.
    #[arg(long, env = "ECHO_HOST_MAX_GUEST_HEADER_BYTES", default_value = DEFAULT_MAX_GUEST_HEADER_BYTES, value_parser = parse_size)]
    pub max_guest_header_bytes: u64,

    /// Lines of guest stdout/stderr logged per request (p3: per request the instance takes);
    /// further lines are dropped, counted (`echo_host_guest_log_dropped_total`) and summed up
    /// in one line. `0` drops all guest output.
    #[arg(long, env = "ECHO_HOST_MAX_GUEST_LOG_LINES", default_value_t = DEFAULT_MAX_GUEST_LOG_LINES)]
    pub max_guest_log_lines: u64,

    /// Bytes of guest stdout/stderr logged per request, like `--max-guest-log-lines`.
    #[arg(long, env = "ECHO_HOST_MAX_GUEST_LOG_BYTES", default_value = DEFAULT_MAX_GUEST_LOG_BYTES, value_parser = parse_size)]
    pub max_guest_log_bytes: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            max_resources: DEFAULT_MAX_GUEST_RESOURCES,
            max_header_bytes: 64 << 10,
            max_log_lines: DEFAULT_MAX_GUEST_LOG_LINES,
            max_log_bytes: 1 << 20,
        }
    }
}

impl GuestArgs {
    pub(super) fn limits(&self) -> GuestLimits {
        GuestLimits {
            max_resources: self.max_guest_resources,
            max_header_bytes: self.max_guest_header_bytes,
            max_log_lines: self.max_guest_log_lines,
            max_log_bytes: self.max_guest_log_bytes,
        }
    }
}

impl GuestLimits {
    /// Checks each limit against its range, naming the flag (before the port is bound).
    pub fn validate(&self) -> anyhow::Result<()> {
        let ((low, high), value) = (RESOURCES_RANGE, self.max_resources);
        check("--max-guest-resources", value, low, high)?;
        let (low, high) = HEADER_BYTES_RANGE;
        check_size("--max-guest-header-bytes", self.max_header_bytes, low, high)?;
        let (low, high) = LOG_LINES_RANGE;
        check("--max-guest-log-lines", self.max_log_lines, low, high)?;
        let (low, high) = LOG_BYTES_RANGE;
        check_size("--max-guest-log-bytes", self.max_log_bytes, low, high)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::GuestLimits;
    use crate::cli::config::Cli;

    fn guest(args: &[&str]) -> anyhow::Result<GuestLimits> {
        let cli = Cli::try_parse_from(["echo-host"].iter().chain(args)).unwrap();
        let limits = cli.serve.guest.limits();
        limits.validate().map(|()| limits)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(guest(&[]).unwrap(), GuestLimits::default());
        let limits = GuestLimits::default();
        assert_eq!((limits.max_resources, limits.max_header_bytes), (1024, 64 << 10));
        assert_eq!((limits.max_log_lines, limits.max_log_bytes), (1000, 1 << 20));
    }

    #[test]
    fn values_in_range_are_taken() {
        let limits = guest(&[
            "--max-guest-resources",
            "64",
            "--max-guest-header-bytes",
            "1KiB",
            "--max-guest-log-lines",
            "0",
            "--max-guest-log-bytes",
            "1GiB",
        ])
        .unwrap();
        assert_eq!(
            limits,
            GuestLimits {
                max_resources: 64,
                max_header_bytes: 1024,
                max_log_lines: 0,
                max_log_bytes: 1 << 30
            }
        );
    }

    #[test]
    fn out_of_range_values_name_the_flag_and_the_range() {
        let error = guest(&["--max-guest-resources", "10"]).unwrap_err().to_string();
        assert_eq!(error, "`--max-guest-resources` must be between 64 and 1000000, not 10");
        let error = guest(&["--max-guest-resources", "18446744073709551615"]).unwrap_err().to_string();
        assert!(error.starts_with("`--max-guest-resources` must be between 64 and 1000000"), "{error}");
        let error = guest(&["--max-guest-header-bytes", "100"]).unwrap_err().to_string();
        assert_eq!(error, "`--max-guest-header-bytes` must be between 1 KiB and 16 MiB, not 100 bytes");
        let error = guest(&["--max-guest-header-bytes", "1GiB"]).unwrap_err().to_string();
        assert!(error.starts_with("`--max-guest-header-bytes` must be between"), "{error}");
        let error = guest(&["--max-guest-log-lines", "20000000"]).unwrap_err().to_string();
        assert_eq!(error, "`--max-guest-log-lines` must be between 0 and 10000000, not 20000000");
        let error = guest(&["--max-guest-log-bytes", "2GiB"]).unwrap_err().to_string();
        assert_eq!(error, "`--max-guest-log-bytes` must be between 0 bytes and 1 GiB, not 2 GiB");
    }
}
