//! The per-request and per-connection limits ([`Limits`]): from the flags, checked before the
//! port is bound, shared by the runtime, the server and the exchanges.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;

use super::{Cli, GuestLimits, ServeArgs};

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
    /// `None`: no pings.
    #[serde(serialize_with = "serialize_optional_secs")]
    pub h2_keepalive_interval: Option<Duration>,
    #[serde(serialize_with = "serialize_secs")]
    pub h2_keepalive_timeout: Duration,
    /// What a guest may make the host hold and log (`--max-guest-*`).
    pub guest: GuestLimits,
}

pub fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn serialize_optional_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.map_or(0.0, |d| d.as_secs_f64()))
}

impl Default for Limits {
    /// The defaults the flags document; handy for tests and embedding.
    fn default() -> Self {
        let cli = Cli::parse_from(["echo-host"]);
        cli.serve.limits()
    }
}

impl Limits {
    /// Refuses values no server can run with, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("`--concurrency` must be at least 1");
        }
        if self.max_connections == 0 {
            bail!("`--max-connections` must be at least 1");
        }
        if self.request_timeout.is_zero() {
            bail!("`--request-timeout` must be more than 0s");
        }
        for (flag, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            ("--write-timeout", self.write_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--h2-keepalive-timeout", self.h2_keepalive_timeout),
        ] {
            if value.is_zero() {
                bail!("`{flag}` must be more than 0s");
            }
        }
        if self.h2_max_streams == 0 {
            bail!("`--h2-max-streams` must be at least 1");
        }
        if self.max_memory_bytes < 64 * 1024 {
            bail!("`--max-memory` must be at least 64KiB (one wasm page)");
        }
        if self.max_memory_bytes > 4 * 1024 * 1024 * 1024 {
            bail!("`--max-memory` must be at most 4GiB (32-bit wasm memories)");
        }
        if self.max_headers == 0 || self.max_header_bytes < 1024 {
            bail!("`--max-headers` must be at least 1 and `--max-header-bytes` at least 1KiB");
        }
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
            h2_keepalive_interval: Some(self.h2_keepalive_interval).filter(|d| !d.is_zero()),
            h2_keepalive_timeout: self.h2_keepalive_timeout,
            guest: self.guest.limits(),
        }
    }
}
