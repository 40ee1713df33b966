//! The command line: every flag, its env var and default, and validation into a [`ServeConfig`].
//!
//! Everything is checked here, before the port is bound, so a typo fails the start with a message
//! instead of a half-working server (Cloud Run would route traffic to it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

mod commands;
mod guest;
mod limits;
mod parse;
mod range;
mod registry;
mod reuse;
mod rollout;
mod storage;
pub use crate::app::config::ServeConfig;
pub use crate::engine::limits::{GuestLimits, Limits};
pub use crate::engine::outbound::OutboundRule;
pub use crate::release::gate::SwapPolicy;
pub use crate::release::source::ComponentSource;
pub use crate::release::store::FollowSettings;
pub use crate::serve::proxy::SwapProbe;
pub use crate::util::logging::{DEFAULT_LOG_BUFFER_LINES, LogFormat};
pub use crate::util::units::{parse_duration, parse_size};
pub use commands::{
    CompileArgs, FleetArgs, KeygenArgs, PushArgs, ReleaseArgs, ReleaseCommand, ReleaseHostArgs,
    ReleasePromoteArgs, ReleaseStartArgs, SignArgs, SignatureFormat, Steps, parse_steps,
};
pub use guest::GuestArgs;
pub use parse::parse_outbound;
use parse::{parse_env_pair, parse_probe};
pub use registry::RegistryArgs;
pub use reuse::ReuseArgs;
pub use rollout::RolloutArgs;
pub use storage::{DEFAULT_HEARTBEAT_INTERVAL, StorageArgs};

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_REQUEST_TIMEOUT: &str = "300s";
pub const DEFAULT_MAX_MEMORY: &str = "128MiB";
pub const DEFAULT_MAX_BODY: &str = "32MiB";
pub const DEFAULT_CONCURRENCY: usize = 80;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_BODY_READ_TIMEOUT: &str = "60s";
pub const DEFAULT_WRITE_TIMEOUT: &str = "60s";
pub const DEFAULT_IDLE_TIMEOUT: &str = "620s";
pub const DEFAULT_AFTER_RESPONSE_GRACE: &str = "1s";
pub const DEFAULT_H2_MAX_STREAMS: u32 = 250;
/// What h2's own send buffers let one connection hold at the default stream limit (250 × 64 KiB).
pub const DEFAULT_MAX_UNSENT_PER_CONNECTION: &str = "16MiB";
/// `--max-unsent` unless `--concurrency` × [`UNSENT_PER_REQUEST`] is more: an eighth of Cloud
/// Run's default 512 MiB instance.
pub const DEFAULT_MAX_UNSENT: u64 = 64 << 20;
/// What `--max-unsent` allows per `--concurrency` slot by default.
pub const UNSENT_PER_REQUEST: u64 = 256 << 10;
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: &str = "60s";
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: &str = "20s";
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: &str = "64KiB";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_GRACE: &str = "9s";
pub const DEFAULT_POLL_INTERVAL: &str = "2s";
pub const DEFAULT_KEEP_VERSIONS: usize = 4;
pub const DEFAULT_MAX_COMPONENT_SIZE: &str = "64MiB";
pub const DEFAULT_SWAP_PROBE_TIMEOUT: &str = "5s";
pub const DEFAULT_FETCH_TIMEOUT: &str = "30s";
/// The store's manifest is never polled more often than this (a busy loop of storage calls).
const MIN_STORE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The env var holding the admin token itself (Cloud Run exposes Secret Manager secrets as env vars).
pub const ADMIN_TOKEN_ENV: &str = "ECHO_HOST_ADMIN_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "echo-host",
    args_conflicts_with_subcommands = true,
    version,
    about = "Serve a wasi:http/proxy component on $PORT (Cloud Run ready).",
    long_about = "Serve a wasi:http/proxy component on $PORT (Cloud Run ready).\n\n\
        Without a subcommand, `serve` runs. Every flag can also be set with the environment \
        variable shown in its help."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a component over HTTP/1.1 and h2c (the default).
    Serve(Box<ServeArgs>),
    /// Precompile a component for this host's exact engine configuration (`.cwasm`).
    Compile(CompileArgs),
    /// Upload a component to a running host's admin API and print the result (with a release
    /// store: release it to the whole fleet; `--wait` until every instance serves it).
    Push(PushArgs),
    /// Print the fleet (a host with `--store`): the release and every live instance's version.
    Fleet(FleetArgs),
    /// Canary releases through a running host's admin API: `start` a canary at a weight,
    /// `promote` it, `abort` it, or print the release's `status`.
    Release(ReleaseArgs),
    /// Make an ed25519 key pair for signing components (`KEY` and `KEY.pub`).
    Keygen(KeygenArgs),
    /// Sign a component with a private key from `keygen`, writing `FILE.sig` (or, with `--format
    /// wasmsign2`, the format `wasmsign2` writes: embedded in a new file, or detached).
    Sign(SignArgs),
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Port to listen on (Cloud Run sets `PORT`).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "ECHO_HOST_LISTEN_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// The component to serve: a file (`.wasm`, or a `.cwasm` from `echo-host compile` with
    /// `--allow-precompiled`), an `http(s)://` URL, a Cloud Storage object `gs://BUCKET/OBJECT`
    /// or an OCI reference `oci://REGISTRY/REPOSITORY:TAG` (a tag is followed; `…@sha256:DIGEST`
    /// is pinned). Each is watched and swapped in when it changes (with `--store`: see there).
    /// Default: the built-in echo component.
    #[arg(long, env = "ECHO_HOST_COMPONENT")]
    pub component: Option<String>,

    /// How often `--component` is checked for a new version (file: also watched with inotify
    /// where the filesystem supports it; Cloud Storage FUSE does not). `0s` turns watching off.
    #[arg(long, env = "ECHO_HOST_POLL_INTERVAL", default_value = DEFAULT_POLL_INTERVAL, value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Time limit for fetching a URL component.
    #[arg(long, env = "ECHO_HOST_FETCH_TIMEOUT", default_value = DEFAULT_FETCH_TIMEOUT, value_parser = parse_duration)]
    pub fetch_timeout: Duration,

    /// File holding the bearer token that enables the admin API
    /// (`/.well-known/echo-host/admin/`). Or set the token itself in `ECHO_HOST_ADMIN_TOKEN`.
    /// Without either, the admin API does not exist (404).
    #[arg(long, env = "ECHO_HOST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Only ever serve a component with this sha256 (hex, optionally `sha256:`-prefixed).
    #[arg(long, env = "ECHO_HOST_REQUIRE_SHA256")]
    pub require_sha256: Option<String>,

    /// An ed25519 public key: from `echo-host keygen`, an OpenSSH `ssh-ed25519` public key
    /// (`ssh-keygen -t ed25519`), or a wasmsign2 public key (raw, PEM or DER). Every new
    /// component must carry a valid signature made with it: a wasmsign2 signature embedded in
    /// the component, or a detached one (ours or wasmsign2's): `PATH.sig` beside a file,
    /// `URL.sig` beside a URL, or the `echo-host-signature` header of an upload (there a
    /// wasmsign2 signature is base64 of its binary).
    #[arg(long, env = "ECHO_HOST_TRUSTED_KEY")]
    pub trusted_key: Option<PathBuf>,

    /// A smoke request every candidate must answer with 2xx before it goes live, e.g. `GET /`.
    #[arg(long, env = "ECHO_HOST_SWAP_PROBE")]
    pub swap_probe: Option<String>,

    /// Time the smoke request gets.
    #[arg(long, env = "ECHO_HOST_SWAP_PROBE_TIMEOUT", default_value = DEFAULT_SWAP_PROBE_TIMEOUT, value_parser = parse_duration)]
    pub swap_probe_timeout: Duration,

    /// Compiled versions kept for instant rollback (including the active one).
    #[arg(long, env = "ECHO_HOST_KEEP_VERSIONS", default_value_t = DEFAULT_KEEP_VERSIONS)]
    pub keep_versions: usize,

    /// Largest component accepted from any source.
    #[arg(long, env = "ECHO_HOST_MAX_COMPONENT_SIZE", default_value = DEFAULT_MAX_COMPONENT_SIZE, value_parser = parse_size)]
    pub max_component_size: u64,

    /// Accept a precompiled `.cwasm` for `--component`. Loading one runs native code from the
    /// file without validation: use it only for files made by your own build.
    #[arg(long, env = "ECHO_HOST_ALLOW_PRECOMPILED")]
    pub allow_precompiled: bool,

    /// Longest a request may take in wall-clock time, from its head to the last byte of its
    /// response (e.g. `300s`, `1m`; Cloud Run's default). At the deadline the guest is stopped
    /// and its slot freed whatever the client does: 504 if no response head was sent, otherwise
    /// the h2 stream is reset or the HTTP/1.1 connection closed.
    #[arg(long, env = "ECHO_HOST_REQUEST_TIMEOUT", default_value = DEFAULT_REQUEST_TIMEOUT, value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Guest memory limit per request (e.g. `128MiB`); exceeding it traps (500).
    #[arg(long, env = "ECHO_HOST_MAX_MEMORY", default_value = DEFAULT_MAX_MEMORY, value_parser = parse_size)]
    pub max_memory: u64,

    /// Largest request body accepted (e.g. `32MiB`); larger gets 413.
    #[arg(long, env = "ECHO_HOST_MAX_BODY", default_value = DEFAULT_MAX_BODY, value_parser = parse_size)]
    pub max_body: u64,

    /// Requests served at once; past it, 503 with `Retry-After`. Match Cloud Run's
    /// `containerConcurrency`.
    #[arg(long, env = "ECHO_HOST_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,

    /// Open connections allowed at once; further connections wait in the kernel's backlog.
    #[arg(long, env = "ECHO_HOST_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Time a client has to send a request head (slowloris protection): from connecting to the
    /// first request (for h2c: the preface and the first HEADERS), and on an HTTP/1.1 keep-alive
    /// connection from the first byte of each later head. Past it the connection is closed.
    #[arg(long, env = "ECHO_HOST_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest the request body may make no progress while the component waits for it; then
    /// 408 (or, if the response had started, a cut) and the connection is closed. 60 s, like
    /// nginx's `client_body_timeout`: Cloud Run's front end forwards the body as the client sends
    /// it, and no legitimate client pauses a minute mid-body.
    #[arg(long, env = "ECHO_HOST_BODY_READ_TIMEOUT", default_value = DEFAULT_BODY_READ_TIMEOUT, value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Longest a client may take no response bytes (a full HTTP/2 flow-control window, or a
    /// socket nobody reads); then the response is cut and its slot freed. 60 s, like nginx's
    /// `send_timeout`: Cloud Run's front end reads as fast as its client, which never stalls a
    /// minute.
    #[arg(long, env = "ECHO_HOST_WRITE_TIMEOUT", default_value = DEFAULT_WRITE_TIMEOUT, value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// A connection with no request in flight is closed after this (h2c: GOAWAY first). The
    /// default outlasts Google front ends' 600 s keep-alive, so the front end closes first and
    /// never sends a request into a connection being closed.
    #[arg(long, env = "ECHO_HOST_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time a component may go on after its response ended (p2 allows work after the body's
    /// `finish`; a `HEAD` answer ends with the head); then it is stopped. Its `--concurrency`
    /// slot is held until then. A cut response stops the component at once.
    #[arg(long, env = "ECHO_HOST_AFTER_RESPONSE_GRACE", default_value = DEFAULT_AFTER_RESPONSE_GRACE, value_parser = parse_duration)]
    pub after_response_grace: Duration,

    /// Concurrent streams one h2c connection may carry. With the 64 KiB send buffer per stream
    /// this bounds what one connection can pin (250 streams: 16 MiB, plus its 1 MiB receive
    /// window).
    #[arg(long, env = "ECHO_HOST_H2_MAX_STREAMS", default_value_t = DEFAULT_H2_MAX_STREAMS)]
    pub h2_max_streams: u32,

    /// Response bytes one connection may hold unsent (handed to hyper, not yet taken by the
    /// socket: a zero h2 window, an unread socket); past it the connection is closed gracefully
    /// (h2c: GOAWAY, new streams refused) and counted in `echo_host_unsent_limit_total`.
    #[arg(long, env = "ECHO_HOST_MAX_UNSENT_PER_CONNECTION", default_value = DEFAULT_MAX_UNSENT_PER_CONNECTION, value_parser = parse_size)]
    pub max_unsent_per_connection: u64,

    /// The same for all connections together, each undelivered response also counting 16 KiB
    /// (its stream and head); past it new requests are refused (h2: stream reset; HTTP/1.1:
    /// closed) and the connection adding more closed gracefully. Default: 64MiB, or
    /// `--concurrency` × 256 KiB when that is more.
    #[arg(long, env = "ECHO_HOST_MAX_UNSENT", value_parser = parse_size)]
    pub max_unsent: Option<u64>,

    /// How often an idle h2c connection is pinged; `0s` turns pings off.
    #[arg(long, env = "ECHO_HOST_H2_KEEPALIVE_INTERVAL", default_value = DEFAULT_H2_KEEPALIVE_INTERVAL, value_parser = parse_duration)]
    pub h2_keepalive_interval: Duration,

    /// An h2c connection whose ping is not answered within this is closed.
    #[arg(long, env = "ECHO_HOST_H2_KEEPALIVE_TIMEOUT", default_value = DEFAULT_H2_KEEPALIVE_TIMEOUT, value_parser = parse_duration)]
    pub h2_keepalive_timeout: Duration,

    /// Most header fields in a request; more gets 431.
    #[arg(long, env = "ECHO_HOST_MAX_HEADERS", default_value_t = DEFAULT_MAX_HEADERS)]
    pub max_headers: usize,

    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, env = "ECHO_HOST_MAX_HEADER_BYTES", default_value = DEFAULT_MAX_HEADER_BYTES, value_parser = parse_size)]
    pub max_header_bytes: u64,

    /// Time in-flight requests get to finish after SIGTERM/SIGINT (Cloud Run kills at 10 s).
    #[arg(long, env = "ECHO_HOST_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// A host the component may send HTTP requests to, as `HOST` or `HOST:PORT`; repeat the flag
    /// or separate with commas. Outbound HTTP is denied to every other host.
    #[arg(long = "allow-outbound", env = "ECHO_HOST_ALLOW_OUTBOUND", value_delimiter = ',', value_parser = parse_outbound)]
    pub allow_outbound: Vec<OutboundRule>,

    /// An environment variable for the component, as `KEY=VALUE`; repeat the flag. The component
    /// sees these plus `K_SERVICE`, `K_REVISION`, `K_CONFIGURATION` and nothing else.
    #[arg(long = "env", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,

    /// Log format on stdout.
    #[arg(long, env = "ECHO_HOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log lines held in memory while stdout is slow to take them. When they are full, further
    /// lines are dropped and counted (`echo_host_log_lines_dropped_total`) instead of making
    /// requests wait; logging resumes as stdout drains. 2048 lines are ~1 MiB of access-log
    /// lines, at most 32 MiB of the guest's longest (16 KiB) lines.
    #[arg(long, env = "ECHO_HOST_LOG_BUFFER_LINES", default_value_t = DEFAULT_LOG_BUFFER_LINES)]
    pub log_buffer_lines: usize,

    #[command(flatten)]
    pub storage: StorageArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub rollout: RolloutArgs,

    #[command(flatten)]
    pub reuse: ReuseArgs,

    #[command(flatten)]
    pub guest: GuestArgs,
}

/// Environment variables the host passes through to the component (Cloud Run's own).
const PASSED_THROUGH_ENV: &[&str] = &["K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

impl ServeArgs {
    /// Checks the flags against each other and the file system, reading the process environment
    /// for the variables passed through to the component.
    pub fn validate(&self) -> anyhow::Result<ServeConfig> {
        self.validate_with_env(|key| std::env::var(key).ok())
    }

    pub fn validate_with_env(&self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<ServeConfig> {
        let limits = self.limits();
        limits.validate()?;
        let component = match &self.component {
            Some(text) => ComponentSource::parse(text)?,
            None => ComponentSource::Builtin,
        };
        self.check_ranges()?;
        let (store, storage) = self.storage.validate()?;
        let registry = self.registry.validate(&component, &storage, self.fetch_timeout)?;
        let thresholds = self.rollout.validate()?;
        let reuse = self.reuse.validate()?;
        if store.is_some() && self.poll_interval < MIN_STORE_POLL_INTERVAL {
            bail!(
                "`--poll-interval` must be at least {MIN_STORE_POLL_INTERVAL:?} with `--store`: it is how often every instance reads the manifest"
            );
        }
        let follow = self.storage.follow_settings(self.poll_interval)?;
        let admin_token = self.admin_token(&lookup)?;
        let traces = crate::util::traces::TraceConfig::from_env(&lookup)?;
        let swap = self.swap_policy()?;
        let mut guest_env: Vec<(String, String)> = PASSED_THROUGH_ENV
            .iter()
            .filter_map(|key| lookup(key).map(|value| (key.to_string(), value)))
            .collect();
        for (key, value) in &self.env {
            guest_env.retain(|(k, _)| k != key);
            guest_env.push((key.clone(), value.clone()));
        }
        Ok(ServeConfig {
            addr: SocketAddr::new(self.listen_addr, self.port),
            component,
            poll_interval: self.poll_interval,
            fetch_timeout: self.fetch_timeout,
            admin_token,
            swap,
            allow_precompiled: self.allow_precompiled,
            limits,
            shutdown_grace: self.shutdown_grace,
            allow_outbound: self.allow_outbound.clone(),
            guest_env,
            log_format: self.log_format,
            log_buffer_lines: self.log_buffer_lines,
            store,
            heartbeat_interval: self.storage.heartbeat_interval,
            follow,
            storage,
            registry,
            thresholds,
            reuse,
            traces,
        })
    }

    /// The admin API's token: `--admin-token-file`, else the environment; at least 16 characters.
    fn admin_token(&self, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<String>> {
        let admin_token = match &self.admin_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read `--admin-token-file` `{}`", path.display()))?;
                Some(token.trim().to_string())
            }
            None => lookup(ADMIN_TOKEN_ENV).map(|t| t.trim().to_string()),
        };
        if let Some(token) = &admin_token
            && token.len() < 16
        {
            bail!("the admin token must be at least 16 characters (try `openssl rand -hex 32`)");
        }
        Ok(admin_token)
    }

    /// How candidates are checked: `--require-sha256`, `--trusted-key`, `--swap-probe`, sizes.
    fn swap_policy(&self) -> anyhow::Result<SwapPolicy> {
        let require_sha256 = match &self.require_sha256 {
            Some(pin) => {
                let hex = pin.trim().trim_start_matches("sha256:").to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("`--require-sha256` `{pin}` is not 64 hex digits");
                }
                Some(hex)
            }
            None => None,
        };
        let trusted_key = match &self.trusted_key {
            Some(path) => Some(crate::util::signing::read_public_key(path)?),
            None => None,
        };
        let probe = match &self.swap_probe {
            Some(text) => Some(parse_probe(text, self.swap_probe_timeout)?),
            None => None,
        };
        Ok(SwapPolicy {
            require_sha256,
            trusted_key,
            probe,
            keep_versions: self.keep_versions,
            max_component_size: self.max_component_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["echo-host"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn guest_env_is_cloud_run_vars_plus_explicit_ones_only() {
        let config = args(&["--env", "GREETING=hi", "--env", "K_REVISION=override"])
            .validate_with_env(|key| match key {
                "K_SERVICE" => Some("echo".into()),
                "K_REVISION" => Some("echo-00001".into()),
                "HOME" => Some("/root".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.guest_env,
            vec![
                ("K_SERVICE".to_string(), "echo".to_string()),
                ("GREETING".to_string(), "hi".to_string()),
                ("K_REVISION".to_string(), "override".to_string()),
            ]
        );
    }

    #[test]
    fn validation_rejects_nonsense_before_binding() {
        let err = args(&["--concurrency", "0"]).validate().unwrap_err();
        assert!(err.to_string().contains("--concurrency"), "{err}");
        let err = args(&["--component", "/definitely/not/here.wasm"]).validate().unwrap_err();
        assert!(format!("{err:#}").contains("/definitely/not/here.wasm"), "{err:#}");
        assert!(args(&["--max-memory", "1KiB"]).validate().is_err());
        let err = args(&["--log-buffer-lines", "0"]).validate().unwrap_err();
        assert!(err.to_string().contains("--log-buffer-lines"), "{err}");
        let err = args(&["--store", "gs://bucket/p/", "--poll-interval", "0s"]).validate().unwrap_err();
        assert!(err.to_string().contains("--poll-interval"), "{err}");
    }

    #[test]
    fn defaults_match_cloud_run() {
        let limits = Limits::default();
        assert_eq!(limits.request_timeout, Duration::from_secs(300));
        assert_eq!(limits.concurrency, 80);
        assert_eq!(limits.max_body_bytes, 32 << 20);
        assert_eq!(limits.max_memory_bytes, 128 << 20);
    }
}
