//! The host's fuzzed properties: flag value parsers, what admin API callers send, and the
//! release store's manifest, heartbeats and Cloud Storage metadata.
//!
//! Each `pub fn` is one fuzz target's whole check: it must not panic on any input, and panics
//! (through `assert!`) when a property breaks. Compiled into `echo-fuzz` (feature `host`) and
//! into echo-host's corpus replay test.

use echo_host::cli::config::{parse_duration, parse_outbound, parse_size};
use echo_host::release::store::heartbeat::Heartbeat;
use echo_host::release::store::manifest::{Manifest, parse_version};
use echo_host::util::gcs::{GsObject, GsPrefix, ObjectMeta};
use echo_host::versions::Weight;

/// `--max-body`-style sizes, `--request-timeout`-style durations and `--allow-outbound` rules.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_size(text);
    check_duration(text);
    check_outbound(text);
}

/// Sizes: the unit is case-insensitive, and a parsed size written in bytes or in any unit that
/// divides it parses back to itself.
fn check_size(text: &str) {
    let Ok(size) = parse_size(text) else { return };
    assert_eq!(parse_size(&text.to_ascii_uppercase()).ok(), Some(size), "case of {text:?}");
    let units =
        [(1, ""), (1 << 10, "KiB"), (1 << 20, "MiB"), (1 << 30, "GiB"), (1_000, "KB"), (1_000_000, "MB")];
    for (multiplier, unit) in units {
        if size % multiplier == 0 {
            let formatted = format!("{}{unit}", size / multiplier);
            assert_eq!(parse_size(&formatted), Ok(size), "{text:?} as {formatted:?}");
        }
    }
}

/// Durations: whole seconds and whole milliseconds (while an f64 holds them exactly) written
/// back parse to the same duration.
fn check_duration(text: &str) {
    let Ok(duration) = parse_duration(text) else { return };
    if duration.subsec_nanos() == 0 && duration.as_secs() < 1 << 53 {
        let formatted = format!("{}s", duration.as_secs());
        assert_eq!(parse_duration(&formatted), Ok(duration), "{text:?} as {formatted:?}");
    }
    if duration.subsec_nanos() % 1_000_000 == 0 && duration.as_millis() < 1 << 32 {
        let formatted = format!("{}ms", duration.as_millis());
        assert_eq!(parse_duration(&formatted), Ok(duration), "{text:?} as {formatted:?}");
    }
    assert_eq!(parse_duration(&format!(" {text}\t")), Ok(duration), "padded {text:?}");
}

/// Outbound rules: a rule written back as `HOST`, `[HOST]` or `HOST:PORT` parses to itself, and
/// a rule allows a request to the authority it was written as.
fn check_outbound(text: &str) {
    let Ok(rule) = parse_outbound(text) else { return };
    let formatted = match rule.port {
        Some(port) if rule.host.contains(':') => format!("[{}]:{port}", rule.host),
        Some(port) => format!("{}:{port}", rule.host),
        None if rule.host.contains(':') => format!("[{}]", rule.host),
        None => rule.host.clone(),
    };
    assert!(!rule.host.is_empty() && rule.host == rule.host.trim(), "{text:?} gives host {:?}", rule.host);
    assert_eq!(parse_outbound(&formatted), Ok(rule.clone()), "{text:?} as {formatted:?}");
    // The request the rule was meant for: `http://TEXT/`, as `OutboundPolicy` reads its URI (for
    // names and IPv4 addresses: `http` accepts odd bracketed authorities such as `[]!`).
    if text.contains(['[', ']']) {
        return;
    }
    let Ok(uri) = http::Uri::try_from(format!("http://{}/", text.trim())) else { return };
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else { return };
    if authority.as_str() != text.trim() {
        return;
    }
    let port = uri.port_u16().unwrap_or(80);
    assert!(rule.allows(host.trim_matches(['[', ']']), port), "{rule:?} from {text:?} denies {uri}");
}

/// The token check, the query values (`?to=`, `?weight=`, `?steps=`, `?step_interval=`,
/// `?if_generation=`) and the weights the release API reads from them.
pub fn admin(data: &[u8]) {
    check_authorization(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_weight(text);
    let Ok(uri) = http::Uri::try_from(format!("/.well-known/echo-host/admin/release?{text}")) else { return };
    for name in ["to", "weight", "steps", "step_interval", "if_generation"] {
        if let Some(value) = echo_host::app::answers::query_value(&uri, name) {
            assert!(!value.contains("%3A") && !value.contains("%3a"), "`{name}` {value:?} in {text:?}");
            let _ = parse_duration(&value);
            let _ = value.parse::<i64>();
        }
    }
    if let Ok(Some(weight)) = echo_host::app::release_api::weight(&uri, "weight") {
        assert_eq!(weight.to_string().parse::<Weight>(), Ok(weight), "weight in {text:?}");
    }
    if let Ok(steps) = echo_host::app::release_api::steps(&uri) {
        assert!(steps.iter().all(|step| *step > Weight::ZERO), "steps in {text:?}");
    }
}

/// `Authorization` is accepted exactly when it is `Bearer ` and the token (spaces around it
/// allowed).
fn check_authorization(data: &[u8]) {
    const TOKEN: &str = "s3cret-token";
    let Ok(value) = http::HeaderValue::from_bytes(data) else { return };
    // `SCHEME TOKEN`: the scheme `Bearer` in any case (RFC 9110 §11.1), spaces around the token.
    let expected = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && t.trim() == TOKEN);
    let request = http::Request::builder().header(http::header::AUTHORIZATION, value).body(()).unwrap();
    assert_eq!(echo_host::app::admin::authorized(&request, TOKEN), expected, "authorization {data:?}");
    let presented = format!("Bearer {}", String::from_utf8_lossy(data));
    if let Ok(value) = http::HeaderValue::from_str(&presented) {
        let request = http::Request::builder().header(http::header::AUTHORIZATION, value).body(()).unwrap();
        let expected = presented["Bearer ".len()..].trim() == TOKEN;
        assert_eq!(echo_host::app::admin::authorized(&request, TOKEN), expected, "token {data:?}");
    }
}

/// Weights: written back (`12.5%`) and through JSON (a percent as a number) they stay the same.
fn check_weight(text: &str) {
    let Ok(weight) = text.parse::<Weight>() else { return };
    assert!(weight <= Weight::FULL, "{text:?} is over 100%");
    assert_eq!(weight.to_string().parse::<Weight>(), Ok(weight), "{text:?} as {weight}");
    let json = serde_json::to_string(&weight).expect("a weight serializes");
    assert_eq!(serde_json::from_str::<Weight>(&json).ok(), Some(weight), "{text:?} as JSON {json}");
}

/// The manifest, heartbeats, object metadata and `gs://` locations: whatever parses is written
/// back (where the host writes it) and parses to the same value.
pub fn store(data: &[u8]) {
    if let Ok(manifest) = Manifest::parse(data) {
        let bytes = manifest.to_bytes();
        let again = Manifest::parse(&bytes).expect("a written manifest parses");
        let (before, after) = (serde_json::to_value(&manifest).ok(), serde_json::to_value(&again).ok());
        assert!(
            before.zip(after).is_some_and(|(before, after)| same_json(&before, &after)),
            "manifest round trip of {:?}: {manifest:?} became {again:?}",
            String::from_utf8_lossy(data)
        );
        let _ = (manifest.canary_sha256(), manifest.previous_stable(), manifest.stable_sha256());
    }
    if let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(data) {
        let written = serde_json::to_value(&heartbeat).expect("a heartbeat serializes");
        let again: Heartbeat = serde_json::from_value(written.clone()).expect("a written heartbeat parses");
        assert_eq!(serde_json::to_value(&again).ok(), Some(written), "heartbeat round trip");
    }
    if let Ok(meta) = serde_json::from_slice::<ObjectMeta>(data) {
        let _ = echo_host::util::gcs::verify("fuzz", &meta, data);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(hex) = parse_version(text) {
        assert_eq!(parse_version(&format!("sha256:{hex}")).ok().as_ref(), Some(&hex), "version {text:?}");
    }
    if let Ok(object) = GsObject::parse("--component", text) {
        assert_eq!(GsObject::parse("--component", &object.to_string()).ok(), Some(object), "{text:?}");
    }
    if let Ok(prefix) = GsPrefix::parse("--store", text) {
        assert_eq!(GsPrefix::parse("--store", &prefix.to_string()).ok(), Some(prefix), "{text:?}");
    }
}

/// Equal JSON, but numbers that are not integers only within a relative 1e-15: serde_json
/// (without its `float_roundtrip` feature) may read a float one ULP off, so a manifest's unknown
/// float fields can move by one ULP when a host rewrites it (reported, not fixed here).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, x)| y.get(key).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}
