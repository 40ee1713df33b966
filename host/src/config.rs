//! The command line: every flag, its env var and default, and validation into a [`ServeConfig`].
//!
//! Everything is checked here, before the port is bound, so a typo fails the start with a message
//! instead of a half-working server (Cloud Run would route traffic to it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_REQUEST_TIMEOUT: &str = "300s";
pub const DEFAULT_MAX_MEMORY: &str = "128MiB";
pub const DEFAULT_MAX_BODY: &str = "32MiB";
pub const DEFAULT_CONCURRENCY: usize = 80;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: &str = "64KiB";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_GRACE: &str = "9s";

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
    Serve(ServeArgs),
    /// Precompile a component for this host's exact engine configuration (`.cwasm`).
    Compile(CompileArgs),
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The component to compile (`.wasm`).
    pub input: PathBuf,
    /// Where to write the precompiled component.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line in Cloud Logging's structured format.
    Json,
    /// Human-readable lines for a terminal.
    Text,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Port to listen on (Cloud Run sets `PORT`).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "ECHO_HOST_LISTEN_ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub listen_addr: IpAddr,

    /// The component to serve: a `.wasm` component, or a `.cwasm` made by `echo-host compile`
    /// (needs `--allow-precompiled`). Default: the built-in echo component.
    #[arg(long, env = "ECHO_HOST_COMPONENT")]
    pub component: Option<PathBuf>,

    /// Accept a precompiled `.cwasm` for `--component`. Loading one runs native code from the
    /// file without validation: use it only for files made by your own build.
    #[arg(long, env = "ECHO_HOST_ALLOW_PRECOMPILED")]
    pub allow_precompiled: bool,

    /// Longest a request may run (e.g. `300s`, `1m`); past it the guest is stopped and the
    /// client gets 504, or the connection is closed if the response had started.
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

    /// Time a client has to send a request's headers (slowloris protection).
    #[arg(long, env = "ECHO_HOST_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = parse_duration)]
    pub header_read_timeout: Duration,

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
}

/// One `--allow-outbound` entry: a host name, and a port or any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub host: String,
    pub port: Option<u16>,
}

impl OutboundRule {
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

/// The checked settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub component: Option<PathBuf>,
    pub allow_precompiled: bool,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub allow_outbound: Vec<OutboundRule>,
    /// What the component sees as its environment.
    pub guest_env: Vec<(String, String)>,
    pub log_format: LogFormat,
}

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
    pub max_headers: usize,
    pub max_header_bytes: u64,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Limits {
    /// The defaults the flags document; handy for tests and embedding.
    fn default() -> Self {
        let cli = Cli::parse_from(["echo-host"]);
        cli.serve.limits()
    }
}

/// Environment variables the host passes through to the component (Cloud Run's own).
const PASSED_THROUGH_ENV: &[&str] = &["K_SERVICE", "K_REVISION", "K_CONFIGURATION"];

impl ServeArgs {
    fn limits(&self) -> Limits {
        Limits {
            request_timeout: self.request_timeout,
            max_memory_bytes: self.max_memory,
            max_body_bytes: self.max_body,
            concurrency: self.concurrency,
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
        }
    }

    /// Checks the flags against each other and the file system, reading the process environment
    /// for the variables passed through to the component.
    pub fn validate(&self) -> anyhow::Result<ServeConfig> {
        self.validate_with_env(|key| std::env::var(key).ok())
    }

    pub fn validate_with_env(&self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<ServeConfig> {
        let limits = self.limits();
        if limits.concurrency == 0 {
            bail!("`--concurrency` must be at least 1");
        }
        if limits.max_connections == 0 {
            bail!("`--max-connections` must be at least 1");
        }
        if limits.request_timeout.is_zero() {
            bail!("`--request-timeout` must be more than 0s");
        }
        if limits.header_read_timeout.is_zero() {
            bail!("`--header-read-timeout` must be more than 0s");
        }
        if limits.max_memory_bytes < 64 * 1024 {
            bail!("`--max-memory` must be at least 64KiB (one wasm page)");
        }
        if limits.max_memory_bytes > 4 * 1024 * 1024 * 1024 {
            bail!("`--max-memory` must be at most 4GiB (32-bit wasm memories)");
        }
        if limits.max_headers == 0 || limits.max_header_bytes < 1024 {
            bail!("`--max-headers` must be at least 1 and `--max-header-bytes` at least 1KiB");
        }
        if let Some(path) = &self.component {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read `--component` `{}`", path.display()))?;
            if !meta.is_file() {
                bail!("`--component` `{}` is not a file", path.display());
            }
        }
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
            component: self.component.clone(),
            allow_precompiled: self.allow_precompiled,
            limits,
            shutdown_grace: self.shutdown_grace,
            allow_outbound: self.allow_outbound.clone(),
            guest_env,
            log_format: self.log_format,
        })
    }
}

/// Parses `300s`, `1.5s`, `250ms`, `5m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (try `30s`, `250ms`, `5m`)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` in `{text}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// Parses `32MiB`, `64KiB`, `1GiB`, `1000` (bytes); `KB`/`MB`/`GB` are powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a size (try `32MiB`, `64KiB`, `1000`)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{text}` (use KiB, MiB or GiB)")),
    };
    value.checked_mul(multiplier).ok_or_else(|| format!("`{text}` is too large"))
}

fn parse_outbound(text: &str) -> Result<OutboundRule, String> {
    let text = text.trim();
    if text.is_empty() || text.contains('/') || text.contains('@') {
        return Err(format!("`{text}` is not `HOST` or `HOST:PORT`"));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port.parse().map_err(|_| format!("bad port in `{text}` (expected `HOST:PORT`)"))?;
            Ok(OutboundRule { host: host.to_string(), port: Some(port) })
        }
        _ => Ok(OutboundRule { host: text.trim_matches(['[', ']']).to_string(), port: None }),
    }
}

fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not `KEY=VALUE`")),
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
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 days").is_err());
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn outbound_rules_match_host_and_port() {
        let any_port = parse_outbound("example.com").unwrap();
        assert!(any_port.allows("EXAMPLE.com", 443));
        let one_port = parse_outbound("127.0.0.1:9000").unwrap();
        assert!(one_port.allows("127.0.0.1", 9000));
        assert!(!one_port.allows("127.0.0.1", 9001));
        assert!(parse_outbound("http://x").is_err());
        assert!(parse_outbound("x:notaport").is_err());
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
