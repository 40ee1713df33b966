//! The OTLP trace settings, read from the standard OpenTelemetry variables only
//! ([`TraceConfig::from_env`]): off when no endpoint is set, and a start-up error that names the
//! variable and what to set for a value that cannot be used.

use std::time::Duration;

use anyhow::{Context, bail};

/// How spans reach the collector (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`), the Cloud Run collector sidecar's `localhost:4317`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`, the specification's default).
    HttpProtobuf,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which spans are recorded (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Follow the caller's sampled flag when a request carries a trace context.
    pub parent_based: bool,
    /// The share of root traces recorded (`always_on` 1, `always_off` 0).
    pub ratio: f64,
}

/// The batching of exported spans (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Spans held while the collector is slow; past it, new spans are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub delay: Duration,
}

/// Everything the trace exporter is set up from.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's URL: for `http/protobuf` the full traces URL (`…/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, values percent-decoded).
    pub headers: Vec<(String, String)>,
    /// How long one export may take before its spans are given up.
    pub timeout: Duration,
    pub sampling: Sampling,
    pub batching: Batching,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, in order (values percent-decoded).
    pub resource: Vec<(String, String)>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BATCHING: Batching =
    Batching { max_queue: 2048, max_batch: 512, delay: Duration::from_secs(5) };

impl TraceConfig {
    /// The settings from the environment `lookup` reads; `None` when tracing is off: no
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env(lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let get = |key: &str| lookup(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => bail!(
                "`OTEL_TRACES_EXPORTER` is `{other}`: this host exports traces over OTLP only; set it to `otlp` or `none`, or unset it"
            ),
        }
        let signal = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if signal.is_none() && base.is_none() {
            return Ok(None);
        }
        let protocol = protocol(&get)?;
        let endpoint = match (signal, base) {
            (Some(url), _) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url, protocol)?,
            (None, Some(url)) => {
                let url = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url, protocol)?;
                match protocol {
                    // The base URL gets the signal's path (the specification's rule for OTLP/HTTP).
                    Protocol::HttpProtobuf => format!("{}/v1/traces", url.trim_end_matches('/')),
                    Protocol::Grpc => url,
                }
            }
            (None, None) => unreachable!("checked above"),
        };
        let compression =
            get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION").or(get("OTEL_EXPORTER_OTLP_COMPRESSION"));
        if let Some(compression) = compression.filter(|c| c != "none") {
            bail!(
                "`OTEL_EXPORTER_OTLP_COMPRESSION` is `{compression}`: this host sends traces uncompressed; set it to `none` or unset it"
            );
        }
        let (headers_var, headers) = signal_or_base(&get, "HEADERS");
        let headers = match headers {
            Some(text) => key_values(headers_var, &text, "KEY=VALUE,KEY=VALUE")?,
            None => Vec::new(),
        };
        for (name, value) in &headers {
            http::HeaderName::try_from(name.as_str())
                .ok()
                .zip(http::HeaderValue::try_from(value.as_str()).ok())
                .with_context(|| format!("`{headers_var}` has `{name}`, which is not a valid HTTP header"))?;
        }
        let (timeout_var, timeout) = signal_or_base(&get, "TIMEOUT");
        let timeout = match timeout {
            Some(text) => millis(timeout_var, &text, 1)?,
            None => DEFAULT_TIMEOUT,
        };
        let resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(text) => key_values("OTEL_RESOURCE_ATTRIBUTES", &text, "key=value,key=value")?,
            None => Vec::new(),
        };
        Ok(Some(TraceConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            sampling: sampling(&get)?,
            batching: batching(&get)?,
            service_name: get("OTEL_SERVICE_NAME"),
            resource,
        }))
    }
}

/// The per-signal variable `OTEL_EXPORTER_OTLP_TRACES_{suffix}` when set, else the shared one.
fn signal_or_base(get: &impl Fn(&str) -> Option<String>, suffix: &str) -> (&'static str, Option<String>) {
    let (signal, base) = match suffix {
        "HEADERS" => ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        "TIMEOUT" => ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        _ => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    };
    match get(signal) {
        Some(value) => (signal, Some(value)),
        None => (base, get(base)),
    }
}

fn protocol(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Protocol> {
    match signal_or_base(get, "PROTOCOL") {
        (_, None) => Ok(Protocol::HttpProtobuf),
        (_, Some(p)) if p == "grpc" => Ok(Protocol::Grpc),
        (_, Some(p)) if p == "http/protobuf" => Ok(Protocol::HttpProtobuf),
        (var, Some(other)) => {
            bail!("`{var}` is `{other}`: set it to `grpc` or `http/protobuf` (`http/json` is not supported)")
        }
    }
}

/// An `http://` or `https://` URL with a host. gRPC goes over plaintext HTTP/2 only (the
/// collector sidecar on `localhost`); a TLS collector is reached with `http/protobuf`.
fn checked_url(var: &str, url: &str, protocol: Protocol) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.host().is_some_and(|h| !h.is_empty()))
        .with_context(|| format!("`{var}` is `{url}`, not a URL: set it to `http://HOST:PORT` (e.g. `http://localhost:4317` for the collector sidecar)"))?;
    match (uri.scheme_str(), protocol) {
        (Some("http"), _) | (Some("https"), Protocol::HttpProtobuf) => Ok(url.to_string()),
        (Some("https"), Protocol::Grpc) => bail!(
            "`{var}` is `{url}`: gRPC export is plaintext only in this host; use an `http://` collector (the sidecar's `http://localhost:4317`) or set `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` for an `https://` one"
        ),
        _ => bail!("`{var}` is `{url}`: the URL must start with `http://` or `https://`"),
    }
}

fn sampling(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Sampling> {
    let sampler = get("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    let ratio = || -> anyhow::Result<f64> {
        let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG") else { return Ok(1.0) };
        arg.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).with_context(|| {
            format!("`OTEL_TRACES_SAMPLER_ARG` is `{arg}`: set it to the share of traces to record, from `0` to `1` (e.g. `0.1`)")
        })
    };
    let (parent_based, ratio) = match sampler.as_str() {
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        "traceidratio" => (false, ratio()?),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "parentbased_traceidratio" => (true, ratio()?),
        other => bail!(
            "`OTEL_TRACES_SAMPLER` is `{other}`: set it to one of `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`"
        ),
    };
    Ok(Sampling { parent_based, ratio })
}

fn batching(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Batching> {
    let count = |var: &str, default: usize| -> anyhow::Result<usize> {
        let Some(text) = get(var) else { return Ok(default) };
        text.parse::<usize>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .with_context(|| format!("`{var}` is `{text}`: set it to a number of spans from 1 to 1000000"))
    };
    let max_queue = count("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_BATCHING.max_queue)?;
    let max_batch = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCHING.max_batch.min(max_queue))?;
    if max_batch > max_queue {
        bail!(
            "`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` ({max_batch}) is over `OTEL_BSP_MAX_QUEUE_SIZE` ({max_queue}): set it to at most the queue size"
        );
    }
    let delay = match get("OTEL_BSP_SCHEDULE_DELAY") {
        Some(text) => millis("OTEL_BSP_SCHEDULE_DELAY", &text, 1)?,
        None => DEFAULT_BATCHING.delay,
    };
    Ok(Batching { max_queue, max_batch, delay })
}

/// Milliseconds, at least `min` and at most an hour.
fn millis(var: &str, text: &str, min: u64) -> anyhow::Result<Duration> {
    text.parse::<u64>()
        .ok()
        .filter(|ms| (min..=3_600_000).contains(ms))
        .map(Duration::from_millis)
        .with_context(|| {
            format!("`{var}` is `{text}`: set it to a whole number of milliseconds (e.g. `10000`)")
        })
}

/// `key=value` pairs separated by commas, values percent-decoded (the W3C Baggage form the
/// specification uses for headers and resource attributes).
fn key_values(var: &str, text: &str, form: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(key, value)| {
            let key = key.trim();
            let valid_key = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic());
            Some((key.to_string(), percent_decode(value.trim())?)).filter(|_| valid_key)
        });
        let pair =
            parsed.with_context(|| format!("`{var}` has `{entry}`, not `key=value`: set it as `{form}`"))?;
        pairs.push(pair);
    }
    Ok(pairs)
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Option<TraceConfig>> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TraceConfig::from_env(&|key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    fn error(vars: &[(&str, &str)]) -> String {
        format!("{:#}", config(vars).expect_err("an error"))
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_TRACES_SAMPLER", "nonsense")]).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        assert_eq!(config(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(config(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_for_http_only() {
        let http = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap().unwrap();
        assert_eq!(
            (http.endpoint.as_str(), http.protocol),
            ("http://collector:4318/v1/traces", Protocol::HttpProtobuf)
        );
        let grpc = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((grpc.endpoint.as_str(), grpc.protocol), ("http://localhost:4317", Protocol::Grpc));
        let signal = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c.example/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(signal.endpoint, "https://c.example/custom");
    }

    #[test]
    fn defaults_follow_the_specification() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")]).unwrap().unwrap();
        assert_eq!(c.sampling, Sampling { parent_based: true, ratio: 1.0 });
        assert_eq!(c.batching, DEFAULT_BATCHING);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.headers.is_empty() && c.resource.is_empty() && c.service_name.is_none());
    }

    #[test]
    fn headers_resource_sampler_and_batching_are_read() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=a%20b, tenant=t1"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=edge%2Cweb"),
            ("OTEL_SERVICE_NAME", "echo"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.headers, [("x-api-key".into(), "a b".into()), ("tenant".into(), "t1".into())]);
        assert_eq!(c.resource[1], ("team".into(), "edge,web".into()));
        assert_eq!(c.service_name.as_deref(), Some("echo"));
        assert_eq!(c.sampling, Sampling { parent_based: true, ratio: 0.25 });
        assert_eq!(c.batching, Batching { max_queue: 100, max_batch: 100, delay: Duration::from_millis(50) });
        assert_eq!(c.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn bad_values_say_what_to_set() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")], "must start with `http://`"),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")], "set it to `http://HOST:PORT`"),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "set it to `grpc` or `http/protobuf`",
            ),
            (&[endpoint, ("OTEL_TRACES_SAMPLER", "xray")], "`OTEL_TRACES_SAMPLER` is `xray`"),
            (
                &[endpoint, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "from `0` to `1`",
            ),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")], "not `key=value`"),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "bad header=1")], "not `key=value`"),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz")],
                "`OTEL_EXPORTER_OTLP_HEADERS` has `k=%zz`",
            ),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")], "whole number of milliseconds"),
            (&[endpoint, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5000")], "at most the queue size"),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")], "uncompressed"),
            (&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")], "set it to `otlp` or `none`"),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "plaintext only",
            ),
        ];
        for (vars, expected) in cases {
            let message = error(vars);
            assert!(message.contains(expected), "{vars:?}: {message}");
        }
    }
}
