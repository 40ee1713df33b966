//! The per-request and per-connection limits ([`Limits`]) and what one guest may make the host
//! hold and log ([`GuestLimits`]), as the runtime and the server read them (the command line
//! fills and validates them).

use std::time::Duration;

use crate::util::time::{serialize_optional_secs, serialize_secs};

/// The per-request and per-connection limits, shared by the runtime and the server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    #[serde(serialize_with = "serialize_secs")]
    pub request_timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_body_bytes: u64,
    pub concurrency: usize,
    pub max_connections: usize,
    #[serde(serialize_with = "serialize_secs")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub body_read_timeout: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub write_timeout: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "serialize_secs")]
    pub after_response_grace: Duration,
    pub max_headers: usize,
    pub max_header_bytes: u64,
    pub h2_max_streams: u32,
    /// Unsent response bytes one connection, and all together, may hold (`--max-unsent*`).
    pub max_unsent_per_connection: u64,
    pub max_unsent: u64,
    /// `None`: no pings.
    #[serde(serialize_with = "serialize_optional_secs")]
    pub h2_keepalive_interval: Option<Duration>,
    #[serde(serialize_with = "serialize_secs")]
    pub h2_keepalive_timeout: Duration,
    /// What a guest may make the host hold and log (`--max-guest-*`).
    pub guest: GuestLimits,
}

/// What one guest may make the host hold and log (`--max-guest-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GuestLimits {
    pub max_resources: usize,
    pub max_header_bytes: u64,
    pub max_log_lines: u64,
    pub max_log_bytes: u64,
}

impl GuestLimits {
    /// `--max-guest-header-bytes` for wasi-http (at most 16 MiB once validated).
    pub fn header_bytes(&self) -> usize {
        usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX)
    }
}
