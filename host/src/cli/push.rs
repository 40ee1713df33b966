//! `echo-host push URL FILE|oci://…`: uploads a component to a running host's admin API (or, for
//! a registry reference, has the host pull it) and prints what the host answered (the release or swap, or why the candidate was rejected); with `--wait`,
//! then follows the fleet view until every live instance serves it. `echo-host fleet URL`
//! prints that view as a table.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::config::{FleetArgs, PushArgs};
use crate::util::signing::{SIGNATURE_HEADER, sibling};

/// How often `--wait` reads the fleet view.
const WAIT_POLL: Duration = Duration::from_millis(250);

pub async fn push(args: &PushArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token_file)?;
    let component = Component::read(&args.file, args.signature.as_deref())?;
    let endpoint = format!(
        "{}/.well-known/echo-host/admin/component{}",
        args.url.trim_end_matches('/'),
        component.query('?')
    );
    let client = client(Duration::from_secs(300))?;
    let request = component.attach(client.put(&endpoint).bearer_auth(&token));
    let (status, body) = send(request, &endpoint).await?;
    if !status.is_success() {
        print_json(&body);
        return Err(host_error(status, &body, &endpoint));
    }
    println!("{}", body.trim_end());
    if !args.wait {
        return Ok(());
    }
    let answer: Value = serde_json::from_str(&body).context("the host's answer is not JSON")?;
    if answer["released"] != Value::Bool(true) {
        eprintln!("the host has no `--store`: it swapped on its own and there is no fleet to wait for");
        return Ok(());
    }
    let sha256 = answer["sha256"].as_str().context("the host's answer names no `sha256`")?.to_string();
    wait(&client, &args.url, &token, &sha256, args.wait_timeout).await
}

/// `echo-host fleet URL`: the fleet view as a table.
pub async fn fleet(args: &FleetArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token_file)?;
    let view = read_fleet(&client(Duration::from_secs(30))?, &args.url, &token).await?;
    print!("{}", table(&view));
    Ok(())
}

/// Follows the fleet view until every awake instance serves `sha256` and every asleep one is
/// bound to re-check the store before it serves again, every awake one that does not serve it
/// has rejected it, or `timeout` passes.
async fn wait(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    sha256: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let version = short(sha256);
    eprintln!("waiting up to {timeout:?} for every awake instance to serve {version}");
    loop {
        // A failed read (the store briefly unavailable) is retried until the timeout.
        let view = read_fleet(client, url, token).await;
        if let Ok(view) = &view {
            let instances = view["instances"].as_array().cloned().unwrap_or_default();
            let asleep = |i: &&Value| i["state"] == "asleep";
            let awake: Vec<&Value> = instances.iter().filter(|i| !asleep(i)).collect();
            let sleeping: Vec<&Value> = instances.iter().filter(asleep).collect();
            let behind: Vec<&Value> = awake.iter().copied().filter(|i| i["sha256"] != sha256).collect();
            let unbound: Vec<&Value> =
                sleeping.iter().copied().filter(|i| i["rechecks_before_serving"] != true).collect();
            if !awake.is_empty() && behind.is_empty() && unbound.is_empty() {
                print!("{}", table(view));
                eprintln!(
                    "every awake instance ({}) serves {version} after {:.1} s{}",
                    awake.len(),
                    started.elapsed().as_secs_f64(),
                    asleep_note(sleeping.len())
                );
                return Ok(());
            }
            let rejected = |i: &&Value| i["last_rejection"]["sha256"] == sha256;
            if !behind.is_empty() && behind.iter().all(rejected) {
                print!("{}", table(view));
                bail!(
                    "{} of {} awake instances rejected {version}:\n{}",
                    behind.len(),
                    awake.len(),
                    describe(&behind)
                );
            }
            if started.elapsed() >= timeout {
                print!("{}", table(view));
                let late: Vec<&Value> = behind.iter().chain(&unbound).copied().collect();
                bail!(
                    "after {timeout:?}, {} of {} awake instances do not serve {version} and {} asleep ones have not been silent long enough to re-check first:\n{}",
                    behind.len(),
                    awake.len(),
                    unbound.len(),
                    describe(&late)
                );
            }
        } else if started.elapsed() >= timeout {
            view?;
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// What `--wait` says of the asleep instances when it succeeds.
fn asleep_note(asleep: usize) -> String {
    match asleep {
        0 => String::new(),
        n => format!(
            "; {n} asleep (frozen between requests or late) will re-check the store before they serve a request: none routes to a version the release revoked, and each serves the new version once it has compiled it (see `echo-host fleet`)"
        ),
    }
}

fn describe(instances: &[&Value]) -> String {
    instances
        .iter()
        .map(|i| {
            let rejection = match &i["last_rejection"]["reason"] {
                Value::Null => "no rejection recorded".to_string(),
                reason => text(reason),
            };
            format!("  {} serves {} (last rejection: {rejection})", text(&i["instance"]), text(&i["version"]))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn read_fleet(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let endpoint = format!("{}/.well-known/echo-host/admin/fleet", url.trim_end_matches('/'));
    get_json(client, &endpoint, token).await
}

/// Sends an admin request to `endpoint`: the status and body of the host's answer, or an error
/// asking whether echo-host runs there.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    endpoint: &str,
) -> anyhow::Result<(reqwest::StatusCode, String)> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach `{endpoint}`: is echo-host running at that URL?"))?;
    let status = response.status();
    Ok((status, response.text().await.unwrap_or_default()))
}

/// `GET endpoint` with the admin token: its JSON, or an error naming the host's answer.
pub(crate) async fn get_json(client: &reqwest::Client, endpoint: &str, token: &str) -> anyhow::Result<Value> {
    let (status, body) = send(client.get(endpoint).bearer_auth(token), endpoint).await?;
    if !status.is_success() {
        return Err(host_error(status, &body, endpoint));
    }
    serde_json::from_str(&body).with_context(|| format!("`{endpoint}` answered {status}, not JSON"))
}

/// Prints an error answer that is the admin API's JSON (a rejection's details, a `409`'s
/// manifest) for scripts; anything else (a `404` page) only goes into the error.
pub(crate) fn print_json(body: &str) {
    if serde_json::from_str::<Value>(body).is_ok() {
        println!("{}", body.trim_end());
    }
}

/// What an admin call's error answer means, and what to do about it: a `404` that is not the
/// admin API's own JSON is a host without the admin API (or not echo-host at all); a `401` is the
/// wrong token; otherwise the host's error and its kind.
pub(crate) fn host_error(status: reqwest::StatusCode, body: &str, endpoint: &str) -> anyhow::Error {
    let error: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = error["error"].as_str().map(crate::util::redact::printable);
    match (status.as_u16(), message, error["kind"].as_str()) {
        (404, None, _) => anyhow::anyhow!(
            "`{endpoint}` answered {status}: that host has no admin API. Start it with `--admin-token-file FILE` (or the token in `ECHO_HOST_ADMIN_TOKEN`), or check the URL"
        ),
        (401, _, _) => anyhow::anyhow!(
            "`{endpoint}` answered {status}: the token in `--token-file` is not this host's admin token (its `--admin-token-file` or `ECHO_HOST_ADMIN_TOKEN`)"
        ),
        (_, Some(message), Some(kind)) => anyhow::anyhow!("the host answered {status} ({kind}): {message}"),
        (_, Some(message), None) => anyhow::anyhow!("the host answered {status}: {message}"),
        (_, None, _) => anyhow::anyhow!("`{endpoint}` answered {status}, not the admin API's JSON"),
    }
}

/// The fleet view as text: a header line, then one row per live instance.
pub fn table(view: &Value) -> String {
    let release = view["manifest"]["stable"].as_str().map_or("none".to_string(), short);
    let mut out = format!(
        "store {}  release {}  manifest generation {}  {}\n",
        text(&view["store"]),
        release,
        text(&view["manifest_generation"]),
        if view["converged"] == true { "converged" } else { "not converged" }
    );
    let header = [
        "INSTANCE",
        "REVISION",
        "VERSION",
        "STATE",
        "AGE",
        "MANIFEST",
        "REQUESTS",
        "ERRORS",
        "LAST-REJECTION",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for i in view["instances"].as_array().into_iter().flatten() {
        let rejection = match &i["last_rejection"] {
            Value::Null => "-".to_string(),
            r => format!("{} {}", short(r["sha256"].as_str().unwrap_or("?")), text(&r["reason"])),
        };
        rows.push(vec![
            text(&i["instance"]),
            text(&i["revision"]),
            text(&i["version"]),
            state(i),
            format!("{}s", text(&i["age_s"])),
            text(&i["manifest_generation"]),
            text(&i["requests"]),
            text(&i["errors"]),
            rejection.chars().take(100).collect(),
        ]);
    }
    out.push_str(&columns(&rows));
    let counts = &view["counts"];
    if counts.is_object() {
        out.push_str(&format!(
            "{} serving, {} behind, {} rejected, {} asleep ({} bound to re-check before serving){}\n",
            text(&counts["serving"]),
            text(&counts["behind"]),
            text(&counts["rejected"]),
            text(&counts["asleep"]),
            text(&counts["asleep_rechecking"]),
            match view["omitted"].as_u64() {
                Some(n) if n > 0 => format!("; {n} more heartbeats not read"),
                _ => String::new(),
            }
        ));
    }
    out
}

/// An instance's state as the table shows it: `asleep+recheck` when it will re-check the store
/// before it serves again.
fn state(instance: &Value) -> String {
    match (text(&instance["state"]).as_str(), instance["rechecks_before_serving"] == true) {
        ("asleep", true) => "asleep+recheck".to_string(),
        (state, _) => state.to_string(),
    }
}

/// Rows of cells as left-aligned columns two spaces apart, one line each (the first row is
/// usually the header); control characters in a cell are shown as `?`.
pub(crate) fn columns(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| crate::util::redact::printable(cell)).collect())
        .collect();
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn short(version: &str) -> String {
    let hex: String = version.trim_start_matches("sha256:").chars().take(12).collect();
    format!("sha256:{}", crate::util::redact::printable(&hex))
}

/// A JSON value as terminal text: a string unquoted, `-` for null; control characters as `?`.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => crate::util::redact::printable(s),
        other => other.to_string(),
    }
}

/// What a `push` or `release start` sends: a file's bytes (and its detached signature), or a
/// registry reference the host pulls (`?from=oci://…`, no body).
pub(crate) enum Component {
    File { bytes: Vec<u8>, signature: Option<String> },
    Reference(String),
}

impl Component {
    /// `file` read with its signature, or an `oci://` reference checked here first.
    pub(crate) fn read(file: &Path, signature: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(text) = file.to_str().filter(|t| t.starts_with("oci://")) {
            crate::util::oci::Reference::parse("FILE", text)?;
            return Ok(Self::Reference(text.to_string()));
        }
        let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
        Ok(Self::File { bytes, signature: read_signature(file, signature)? })
    }

    /// `?from=…` (`&from=…` after another parameter) for a reference; nothing for a file.
    pub(crate) fn query(&self, separator: char) -> String {
        match self {
            Self::File { .. } => String::new(),
            Self::Reference(text) => format!("{separator}from={}", encode_query_value(text)),
        }
    }

    /// The body and signature header of a file; nothing for a reference.
    pub(crate) fn attach(self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::File { bytes, signature: Some(signature) } => {
                request.header(SIGNATURE_HEADER, signature).body(bytes)
            }
            Self::File { bytes, signature: None } => request.body(bytes),
            Self::Reference(_) => request,
        }
    }
}

/// Every byte but letters, digits and `-._~` as `%XX`.
fn encode_query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The detached signature to send with `file`: `signature` when given (an error when it cannot
/// be read), else `FILE.sig` when it exists, else none.
/// Ours is base64 text and goes as it is; a binary one (wasmsign2's detached signature) goes as
/// base64 of its bytes, since a header is text.
pub(crate) fn read_signature(file: &Path, signature: Option<&Path>) -> anyhow::Result<Option<String>> {
    let path = signature.map_or_else(|| sibling(file, "sig"), Path::to_path_buf);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(header_value(&bytes))),
        Err(_) if signature.is_none() => Ok(None),
        Err(e) => bail!("cannot read the signature `{}`: {e}", path.display()),
    }
}

/// A signature file's bytes as the `echo-host-signature` header's value.
fn header_value(bytes: &[u8]) -> String {
    let is_base64_text = |text: &str| {
        text.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b) || b.is_ascii_whitespace())
    };
    match std::str::from_utf8(bytes) {
        Ok(text) if is_base64_text(text) => text.trim().to_string(),
        _ => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    }
}

pub(crate) fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read the token file `{}` (`--token-file`: the host's admin token)", path.display())
    })?;
    Ok(token.trim().to_string())
}

pub(crate) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(timeout).build().context("cannot build the HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host without the admin API answers `404 not found` in plain text: the error says how to
    /// enable it, not that the answer was not JSON. A wrong token names the token file.
    #[test]
    fn admin_errors_say_what_to_do() {
        let endpoint = "http://h/.well-known/echo-host/admin/release";
        let error = host_error(reqwest::StatusCode::NOT_FOUND, "not found\n", endpoint).to_string();
        assert_eq!(
            error,
            "`http://h/.well-known/echo-host/admin/release` answered 404 Not Found: that host has no admin API. Start it with `--admin-token-file FILE` (or the token in `ECHO_HOST_ADMIN_TOKEN`), or check the URL"
        );
        let body = r#"{"error":"missing or wrong `Authorization: Bearer` token","kind":"unauthorized"}"#;
        let error = host_error(reqwest::StatusCode::UNAUTHORIZED, body, endpoint).to_string();
        assert!(
            error.contains("401 Unauthorized: the token in `--token-file` is not this host's admin token"),
            "{error}"
        );
        // The admin API's own 404 (an unknown version) is passed on as it is.
        let body = r#"{"error":"no kept version `sha256:ab`","kind":"not_found"}"#;
        let error = host_error(reqwest::StatusCode::NOT_FOUND, body, endpoint).to_string();
        assert_eq!(error, "the host answered 404 Not Found (not_found): no kept version `sha256:ab`");
    }

    #[test]
    fn a_binary_signature_goes_as_base64_and_ours_as_it_is() {
        assert_eq!(header_value(b"AAEC+/8=\n"), "AAEC+/8=");
        assert_eq!(header_value(&[0x01, 0xff, 0x00, b'\n']), "Af8ACg==");
    }

    #[test]
    fn the_table_has_a_row_per_instance_and_names_rejections() {
        let view = serde_json::json!({
            "store": "gs://b/p/", "manifest": {"stable": format!("sha256:{}", "a".repeat(64))},
            "manifest_generation": "17", "converged": false,
            "instances": [
                {"instance": "i-1", "revision": "echo-00001", "version": "sha256:aaaaaaaaaaaa", "age_s": 1.5,
                 "manifest_generation": "17", "requests": 10, "errors": 0, "last_rejection": null},
                {"instance": "i-2", "revision": null, "version": "sha256:bbbbbbbbbbbb", "age_s": 0.2,
                 "manifest_generation": "17", "requests": 3, "errors": 1,
                 "last_rejection": {"sha256": "a".repeat(64), "reason": "invalid component: bad magic"}}
            ]
        });
        let table = table(&view);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].contains("release sha256:aaaaaaaaaaaa") && lines[0].contains("not converged"),
            "{table}"
        );
        assert!(lines[1].starts_with("INSTANCE"), "{table}");
        assert!(lines[3].contains("i-2") && lines[3].contains("bad magic"), "{table}");
    }
}
