//! The checked settings `serve` runs with ([`ServeConfig`]), as the command line leaves them.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::limits::Limits;
use crate::engine::outbound::OutboundRule;
use crate::release::gate::SwapPolicy;
use crate::release::source::ComponentSource;
use crate::release::store::FollowSettings;
use crate::util::logging::LogFormat;

/// The checked settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub component: ComponentSource,
    pub poll_interval: Duration,
    pub fetch_timeout: Duration,
    /// The admin API's bearer token; `None` disables the API.
    pub admin_token: Option<String>,
    pub swap: SwapPolicy,
    pub allow_precompiled: bool,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub allow_outbound: Vec<OutboundRule>,
    /// What the component sees as its environment.
    pub guest_env: Vec<(String, String)>,
    pub log_format: LogFormat,
    /// Lines the log queue holds before it drops (`--log-buffer-lines`).
    pub log_buffer_lines: usize,
    /// The release store (`--store`), when there is one.
    pub store: Option<crate::util::gcs::GsPrefix>,
    pub heartbeat_interval: Duration,
    /// The staleness bound on the store's view and the fleet view's memory (`--max-staleness`,
    /// `--staleness-*`, `--fleet-forget-after`).
    pub follow: FollowSettings,
    /// Where Cloud Storage is and how to authenticate (for `--store` and `gs://` components).
    pub storage: crate::util::gcs::StorageConfig,
    /// How OCI registries are reached and logged in to (`oci://` components and releases).
    pub registry: crate::util::oci::RegistryConfig,
    /// When a canary is rolled back (`--canary-*`).
    pub thresholds: crate::release::rollout::Thresholds,
    /// How p3 instances are reused (`--instance-*`).
    pub reuse: crate::engine::runtime::Reuse,
    /// OTLP traces, from the `OTEL_*` variables; `None` when off.
    pub traces: Option<crate::util::traces::TraceConfig>,
}
