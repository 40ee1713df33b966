//! The per-request and per-connection limits ([`Limits`]): from the flags, checked before the
//! port is bound, shared by the runtime, the server and the exchanges.

use std::time::Duration;

use clap::Parser;

use super::range::{MAX_BYTES, MAX_TIME, MIN_TIME, check, check_or_off, check_size};
use super::{Cli, ServeArgs};
use crate::engine::limits::Limits;

/// Cloud Run allows at most 1000 concurrent requests per instance; ten times that is room enough.
const MAX_CONCURRENCY: usize = 10_000;
/// Each connection is a file descriptor; no instance has more than a million.
const MAX_CONNECTIONS: usize = 1_000_000;
const MAX_GRACE: Duration = Duration::from_secs(3600);
const MAX_H2_STREAMS: u32 = 10_000;
const MAX_HEADERS: usize = 10_000;
/// A request head is buffered whole before the component sees it.
const MAX_HEADER_BYTES: u64 = 16 << 20;

impl Default for Limits {
    /// The defaults the flags document; handy for tests and embedding.
    fn default() -> Self {
        let cli = Cli::parse_from(["echo-host"]);
        cli.serve.limits()
    }
}

impl Limits {
    /// Refuses values no server can run with, naming the flag and its range.
    pub fn validate(&self) -> anyhow::Result<()> {
        check("--concurrency", self.concurrency, 1, MAX_CONCURRENCY)?;
        check("--max-connections", self.max_connections, 1, MAX_CONNECTIONS)?;
        for (flag, value) in [
            ("--request-timeout", self.request_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--write-timeout", self.write_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--h2-keepalive-timeout", self.h2_keepalive_timeout),
        ] {
            check(flag, value, MIN_TIME, MAX_TIME)?;
        }
        check("--after-response-grace", self.after_response_grace, Duration::ZERO, MAX_GRACE)?;
        check_or_off("--h2-keepalive-interval", self.h2_keepalive_interval.unwrap_or_default())?;
        check("--h2-max-streams", self.h2_max_streams, 1, MAX_H2_STREAMS)?;
        // At least one wasm page; at most what a 32-bit wasm memory can address.
        check_size("--max-memory", self.max_memory_bytes, 64 << 10, 4 << 30)?;
        check_size("--max-body", self.max_body_bytes, 0, MAX_BYTES)?;
        check("--max-headers", self.max_headers, 1, MAX_HEADERS)?;
        check_size("--max-header-bytes", self.max_header_bytes, 1 << 10, MAX_HEADER_BYTES)?;
        check_size("--max-unsent-per-connection", self.max_unsent_per_connection, 64 << 10, MAX_BYTES)?;
        check_size("--max-unsent", self.max_unsent, 1 << 20, MAX_BYTES)?;
        self.guest.validate()
    }
}

impl ServeArgs {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            request_timeout: self.request_timeout,
            max_memory_bytes: self.max_memory,
            max_body_bytes: self.max_body,
            concurrency: self.concurrency,
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            write_timeout: self.write_timeout,
            idle_timeout: self.idle_timeout,
            after_response_grace: self.after_response_grace,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            h2_max_streams: self.h2_max_streams,
            max_unsent_per_connection: self.max_unsent_per_connection,
            max_unsent: self.max_unsent.unwrap_or_else(|| {
                let per_request = (self.concurrency as u64).saturating_mul(super::UNSENT_PER_REQUEST);
                super::DEFAULT_MAX_UNSENT.max(per_request)
            }),
            h2_keepalive_interval: Some(self.h2_keepalive_interval).filter(|d| !d.is_zero()),
            h2_keepalive_timeout: self.h2_keepalive_timeout,
            guest: self.guest.limits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(extra: &[&str]) -> Limits {
        let mut argv = vec!["echo-host"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().serve.limits()
    }

    #[test]
    fn max_unsent_grows_with_concurrency_unless_set() {
        assert_eq!(limits(&[]).max_unsent, 64 << 20);
        assert_eq!(limits(&["--concurrency", "1000"]).max_unsent, 1000 * (256 << 10));
        assert_eq!(limits(&["--concurrency", "1000", "--max-unsent", "8MiB"]).max_unsent, 8 << 20);
        let error = limits(&["--max-unsent", "512KiB"]).validate().unwrap_err();
        assert!(error.to_string().contains("`--max-unsent` must be between"), "{error}");
        let error = limits(&["--max-unsent-per-connection", "1KiB"]).validate().unwrap_err();
        assert!(error.to_string().contains("`--max-unsent-per-connection` must be between"), "{error}");
    }
}
