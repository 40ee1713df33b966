//! Golden files for what operators read: the `/.well-known/echo-host/metrics` text and the JSON
//! access-log lines are byte-identical, for the same requests, to the files in `tests/golden/`.
//!
//! This guards the promise of the layering refactor of `host/src` (modules moved, nothing a user
//! sees changed): every metric name, `# HELP`/`# TYPE` line, label name and value, series order
//! and deterministic count, and every access-log field name, key order and value stays as it was
//! when the files were captured. Three real `echo-host` processes, JSON logs, fixed flags:
//! - `echo`: the built-in echo component over HTTP/1.1, h2c and hand-written HTTP/1.0 and
//!   HTTP/1.1 (no `Host`, absolute form, a `Content-Length` over `--max-body`), a chunked body,
//!   `HEAD`, `x-forwarded-proto`, both trace headers, the host's endpoints (health, info, an
//!   unknown one, a wrong method, the admin API without a token) and a head over
//!   `--max-header-bytes`;
//! - `misbehave`: the test component's 200 (HTTP/1.1 and h2c), its own 404, a trap, no response,
//!   a request timeout, guest output and a body read by the guest;
//! - `overload`: `--concurrency 2` held by two streaming responses, a third request refused (503).
//!
//! Each request waits for its access-log line before the next is sent, so the lines are in the
//! order they were written (the overload's lines are listed in the order the requests were sent).
//! The counters and gauges are compared as they are, `echo_host_requests_in_flight` included (see
//! [`check_golden`] for the one moment it could catch a guest still returning).
//!
//! Only what differs from run to run is replaced, each by one named rule that first checks the
//! value's shape (so the format is still guarded):
//! - access log: `time` (the clock) → `<ts>`; `request_id` (a random per-process prefix; checked to
//!   be the response's `echo-host-request-id`) → `<request-id>`; `httpRequest.latency` → `<dur>`;
//!   the listening port, in URLs and messages → `<port>`; the `responseSize` of `info` and
//!   `metrics` (their bodies hold timestamps and durations) → `<size>`;
//! - metrics: the `_sum` and the per-bucket counts of the `*_seconds` histograms (timings; the
//!   `le` labels, the `+Inf` bucket and `_count` are kept, and the buckets are checked to be
//!   cumulative up to `_count`) → `<sum>`, `<n>`;
//! - both: the component's version `sha256:<12 hex>` → `sha256:<component>`, after checking it is
//!   the digest of the `.wasm` served (a build in another directory may embed other paths).
//!
//! Not compared: the other log lines (start-up, guest output, trap reports: timings and wasm
//! backtraces) and the response bodies. `ECHO_HOST_TEST_BIN` runs another `echo-host` binary
//! against the same files (an older build, say).
//!
//! To accept a deliberate change: `ECHO_GOLDEN_UPDATE=1 cargo test -p echo-host --test tests --
//! golden::` rewrites the files; review them with `git diff host/tests/golden`.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use sha2::Digest;

use crate::util::{self, HostProcess};

/// Set to rewrite the golden files instead of comparing with them.
const UPDATE_ENV: &str = "ECHO_GOLDEN_UPDATE";
const UPDATE_COMMAND: &str = "ECHO_GOLDEN_UPDATE=1 cargo test -p echo-host --test tests -- golden::";
const USER_AGENT: &str = "echo-golden/1";
/// Generous: every request here is answered in milliseconds, but the suite may share the machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn builtin_echo_metrics_and_access_log_are_unchanged() {
    let flags = ["--max-body", "1KiB", "--max-header-bytes", "4KiB"];
    check_golden("echo", util::echo_wasm(), &flags, echo_requests);
}

fn echo_requests(run: &mut Run) {
    let referer = ("referer", "https://golden.test/from");
    let cloud_trace = ("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1");
    let traceparent = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    let get = run.h1.get(run.url("/?name=world&lang=en")).header(referer.0, referer.1);
    run.exchange("GET with a query and a Cloud trace", get.header(cloud_trace.0, cloud_trace.1), 200);
    let get = run.h2.get(run.url("/h2?name=h2c")).header(traceparent.0, traceparent.1);
    run.exchange("h2c GET with a traceparent", get, 200);
    run.exchange("POST with a body", run.h1.post(run.url("/submit")).body("hello golden"), 200);
    let chunked = reqwest::blocking::Body::new(Cursor::new(b"chunked golden body".to_vec()));
    run.exchange("PUT with a chunked body", run.h1.put(run.url("/chunked")).body(chunked), 200);
    run.exchange("HEAD", run.h1.head(run.url("/?name=head")), 200);
    let forwarded = run.h1.get(run.url("/forwarded?x=1")).header("x-forwarded-proto", "https");
    run.exchange("GET behind TLS (x-forwarded-proto)", forwarded, 200);
    run.exchange("health", run.h1.get(run.url("/.well-known/echo-host/health")), 200);
    run.exchange("info", run.h1.get(run.url("/.well-known/echo-host/info")), 200);
    run.exchange("unknown host endpoint", run.h1.get(run.url("/.well-known/echo-host/nope")), 404);
    run.exchange("POST to health", run.h1.post(run.url("/.well-known/echo-host/health")), 405);
    let history = run.h1.get(run.url("/.well-known/echo-host/admin/history"));
    run.exchange("admin API without a token", history, 404);
    let big = run.h1.get(run.url("/?big=1")).header("x-big", "a".repeat(5000));
    run.exchange("a head over --max-header-bytes", big, 431);
    run.raw(
        "a Content-Length over --max-body",
        "POST /upload HTTP/1.1\r\nHost: golden.test\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n",
        413,
    );
    run.raw("no Host header", "GET /?q=nohost HTTP/1.1\r\nConnection: close\r\n\r\n", 400);
    run.raw(
        "HTTP/1.0",
        "GET /?v=1.0 HTTP/1.0\r\nHost: golden.test\r\nUser-Agent: echo-golden/raw\r\n\r\n",
        200,
    );
    run.raw(
        "absolute-form request target",
        "GET http://golden.test/abs?x=1 HTTP/1.1\r\nHost: golden.test\r\nConnection: close\r\n\r\n",
        200,
    );
}

#[test]
fn misbehave_metrics_and_access_log_are_unchanged() {
    let misbehave = util::misbehave_wasm();
    let flags = ["--component", misbehave.to_str().unwrap(), "--request-timeout", "2s"];
    check_golden("misbehave", misbehave, &flags, misbehave_requests);
}

fn misbehave_requests(run: &mut Run) {
    run.exchange("200 from the component", run.h1.get(run.url("/ok")), 200);
    run.exchange("404 from the component", run.h1.get(run.url("/nope?x=1")), 404);
    run.exchange("a trap", run.h1.get(run.url("/trap")), 500);
    run.exchange("no response", run.h1.get(run.url("/never-respond")), 500);
    run.exchange("past --request-timeout", run.h1.get(run.url("/sleep?ms=30000")), 504);
    run.exchange("guest stdout and stderr", run.h1.get(run.url("/log")), 200);
    run.exchange("a body the guest reads", run.h1.post(run.url("/read-body")).body("0123456789"), 200);
    run.exchange("h2c to the component", run.h2.get(run.url("/ok?via=h2c")), 200);
}

#[test]
fn overload_metrics_and_access_log_are_unchanged() {
    let misbehave = util::misbehave_wasm();
    let flags = ["--component", misbehave.to_str().unwrap(), "--concurrency", "2"];
    check_golden("overload", misbehave, &flags, overload_requests);
}

fn overload_requests(run: &mut Run) {
    // Both permits held: the heads of two streams are here, their second chunks 2 s away. These
    // are the host's first requests to the component, so no earlier guest holds a permit.
    let stream = "/stream?chunks=2&ms=2000";
    let first = run.start_request("a stream holding a permit", run.h1.get(run.url(stream)), 200);
    let second = run.start_request("a second stream holding a permit", run.h1.get(run.url(stream)), 200);
    run.exchange("refused at --concurrency", run.h1.get(run.url("/ok?overloaded=1")), 503);
    for (response, id) in [first, second] {
        let body = response.text().expect("reading a stream");
        assert_eq!(body, "chunk 0\nchunk 1\n");
        run.wait_access_line(&id);
    }
}

/// Runs `requests` against a new host serving `component` with `flags`, then compares the
/// normalised metrics and access log with `tests/golden/<name>/` (or rewrites them).
///
/// A guest gives its `--concurrency` permit back when its task returns, which may come a moment
/// after its response ended and its access-log line was written: a scrape right then would count
/// it in `echo_host_requests_in_flight`. Rather than hide that gauge, a scrape that sees a request
/// in flight is thrown away and the whole run made again, once, on a new host; a host that still
/// holds a permit then is compared as it is (and fails).
fn check_golden(name: &str, component: &Path, flags: &[&str], requests: fn(&mut Run)) {
    for attempt in 1..=2 {
        let mut run = Run::start(component, flags);
        requests(&mut run);
        let (metrics, log) = run.capture();
        if attempt == 1 && util::metric_value(&metrics, "echo_host_requests_in_flight") != 0.0 {
            eprintln!(
                "golden::{name}: a request was still in flight at the scrape; running again on a new host"
            );
            continue;
        }
        let dir = golden_dir().join(name);
        let mismatches: Vec<String> = [("metrics.txt", metrics), ("access_log.jsonl", log)]
            .into_iter()
            .filter_map(|(file, now)| compare_or_update(&dir.join(file), &now))
            .collect();
        assert!(
            mismatches.is_empty(),
            "{}\nIf the change is intended (a refactor should have none), regenerate the files with\n    \
             {UPDATE_COMMAND}\nand review `git diff host/tests/golden`.",
            mismatches.join("\n")
        );
        return;
    }
}

/// One host process, the requests sent to it (by request id, in order) and their log lines.
struct Run {
    host: HostProcess,
    h1: Client,
    h2: Client,
    /// `sha256:<12 hex>` of the component served.
    version: String,
    /// The request ids in the order the requests were sent.
    ids: Vec<String>,
}

impl Run {
    fn start(component: &Path, flags: &[&str]) -> Run {
        let mut args = vec!["--log-format", "json"];
        args.extend_from_slice(flags);
        // An inherited `RUST_LOG` must not hide the access log; the project id names traces.
        let host =
            HostProcess::start(&args, &[("RUST_LOG", "info"), ("GOOGLE_CLOUD_PROJECT", "golden-project")]);
        let bytes = std::fs::read(component).unwrap();
        let version = format!("sha256:{}", &hex::encode(sha2::Sha256::digest(&bytes))[..12]);
        let client = |h2: bool| {
            let builder = Client::builder().user_agent(USER_AGENT).timeout(PATIENCE);
            let builder = if h2 { builder.http2_prior_knowledge() } else { builder };
            builder.build().unwrap()
        };
        Run { host, h1: client(false), h2: client(true), version, ids: Vec::new() }
    }

    fn url(&self, path: &str) -> String {
        self.host.url(path)
    }

    /// Sends `request`, checks its status and records its id; the body is left to the caller.
    fn start_request(&mut self, what: &str, request: RequestBuilder, status: u16) -> (Response, String) {
        let response = request.send().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        let id = response.headers()["echo-host-request-id"].to_str().unwrap().to_string();
        let version = response.headers()["echo-host-component"].to_str().unwrap();
        assert_eq!(version, self.version, "{what}: the version served is not the component's digest");
        self.ids.push(id.clone());
        (response, id)
    }

    /// Sends `request`, reads its response and waits for its access-log line.
    fn exchange(&mut self, what: &str, request: RequestBuilder, status: u16) {
        let (response, id) = self.start_request(what, request, status);
        response.bytes().unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        self.wait_access_line(&id);
    }

    /// Sends `request` as is on a new connection, reads until the host closes it and waits for
    /// its access-log line.
    fn raw(&mut self, what: &str, request: &str, status: u16) {
        let response = util::raw_exchange(self.host.addr, request.as_bytes(), PATIENCE);
        let text = String::from_utf8_lossy(&response);
        assert_eq!(util::raw_status(&response), status, "{what}: {text}");
        let id = text
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("echo-host-request-id").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{what}: no request id in {text}"));
        self.ids.push(id.clone());
        self.wait_access_line(&id);
    }

    /// The access-log line of request `id`, waiting for it.
    fn wait_access_line(&self, id: &str) -> String {
        let needle = format!("\"request_id\":\"{id}\"");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found =
                self.host.lines().into_iter().find(|l| l.contains(&needle) && l.contains("\"httpRequest\":"));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line for request {id} in {:#?}",
                self.host.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Scrapes the metrics and waits for that request's own line; returns both files' text,
    /// normalised.
    fn capture(mut self) -> (String, String) {
        let metrics_url = self.url("/.well-known/echo-host/metrics");
        let (response, id) = self.start_request("metrics", self.h1.get(metrics_url), 200);
        let metrics = response.text().unwrap();
        self.wait_access_line(&id);

        let port = self.host.addr.port();
        let mut log = String::new();
        for id in &self.ids {
            log.push_str(&normalise_access_line(&self.wait_access_line(id), id, port, &self.version));
            log.push('\n');
        }
        (normalise_metrics(&metrics, &self.version), log)
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// With `ECHO_GOLDEN_UPDATE` set, writes `now` to `path`; otherwise compares and returns the
/// diff when they differ.
fn compare_or_update(path: &Path, now: &str) -> Option<String> {
    let shown = path.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap_or(path);
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, now).unwrap();
        eprintln!("{UPDATE_ENV}: wrote {}", shown.display());
        return None;
    }
    let golden = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("cannot read the golden file {} ({e}); create it with\n    {UPDATE_COMMAND}", shown.display())
    });
    (golden != now).then(|| {
        format!(
            "{} differs (- golden, + now):\n{}\n{}",
            shown.display(),
            diff(&golden, now),
            first_difference(&golden, now)
        )
    })
}

/// Where the first differing line first differs: its number, column and a few characters of both
/// (access-log lines are long).
fn first_difference(old: &str, new: &str) -> String {
    let mut lines = old.lines().zip(new.lines()).enumerate();
    let Some((index, (a, b))) = lines.find(|(_, (a, b))| a != b) else {
        return "  (one file has more lines than the other)".to_string();
    };
    let column = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let around = |line: &str| -> String { line.chars().skip(column.saturating_sub(20)).take(60).collect() };
    format!(
        "  first difference: line {}, column {}:\n  - …{}…\n  + …{}…",
        index + 1,
        column + 1,
        around(a),
        around(b)
    )
}

// ------------------------------------------------------------------------------------------------
// Normalisation: each rule replaces one value that differs from run to run, after checking its shape.
// ------------------------------------------------------------------------------------------------

/// Placeholder for the component version in both files.
const VERSION_PLACEHOLDER: &str = "sha256:<component>";

fn normalise_access_line(line: &str, id: &str, port: u16, version: &str) -> String {
    // The clock.
    let line = replace_json_string(line, "time", "<ts>", is_rfc3339_utc);
    // A random per-process prefix and a counter: checked to be this request's.
    let line = replace_json_string(&line, "request_id", "<request-id>", |v| v == id);
    // The request's duration.
    let line = replace_json_string(&line, "latency", "<dur>", is_latency);
    // The bodies of `info` and `metrics` hold timestamps and durations, so their size varies.
    let varying_body = ["/.well-known/echo-host/info\"", "/.well-known/echo-host/metrics\""]
        .iter()
        .any(|p| line.contains(p));
    let line = if varying_body {
        replace_json_string(&line, "responseSize", "<size>", |v| v.bytes().all(|b| b.is_ascii_digit()))
    } else {
        line
    };
    // The free port the host listened on (in `requestUrl` and the message).
    let line = line.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:<port>");
    // The component's digest (a build elsewhere may embed other paths).
    line.replace(version, VERSION_PLACEHOLDER)
}

/// Replaces the string value of `"key":"…"` (exactly one occurrence) with `placeholder`, after
/// checking it with `shape`.
fn replace_json_string(line: &str, key: &str, placeholder: &str, shape: impl Fn(&str) -> bool) -> String {
    let open = format!("\"{key}\":\"");
    let mut found = line.match_indices(&open);
    let (at, _) = found.next().unwrap_or_else(|| panic!("no `{key}` string in {line}"));
    assert!(found.next().is_none(), "`{key}` twice in {line}");
    let start = at + open.len();
    let end = start + line[start..].find('"').unwrap_or_else(|| panic!("unterminated `{key}` in {line}"));
    let value = &line[start..end];
    assert!(shape(value), "`{key}` has an unexpected form `{value}` in {line}");
    format!("{}{placeholder}{}", &line[..start], &line[end..])
}

/// `2025-01-31T12:34:56.123456789Z`: RFC 3339 in UTC, with or without a fraction.
fn is_rfc3339_utc(value: &str) -> bool {
    let bytes = value.as_bytes();
    let fixed = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    value.len() >= 20
        && value.ends_with('Z')
        && fixed.iter().all(|&(i, c)| bytes[i] == c)
        && value[..value.len() - 1].bytes().enumerate().all(|(i, b)| {
            fixed.iter().any(|&(at, _)| at == i) || b.is_ascii_digit() || (i == 19 && b == b'.')
        })
}

/// `0.001234s`: seconds with six decimals.
fn is_latency(value: &str) -> bool {
    value.strip_suffix('s').and_then(|v| v.split_once('.')).is_some_and(|(whole, frac)| {
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == 6
            && frac.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The metrics text with the timing histograms' sums and bucket counts replaced (after checking
/// that the buckets are cumulative and end at `_count`), and the component's version.
fn normalise_metrics(text: &str, version: &str) -> String {
    assert!(text.ends_with("# EOF\n"), "the metrics text should end with `# EOF`:\n{text}");
    let timings: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        // Timings vary from run to run; so do the bytes a guest's memory reached (allocator).
        .filter(|name| name.ends_with("_seconds") || name.ends_with("_bytes"))
        .collect();
    assert!(!timings.is_empty(), "no timing histogram in:\n{text}");
    let mut out = String::with_capacity(text.len());
    // The last bucket count seen of the current series, to check they are cumulative.
    let mut previous_bucket: Option<u64> = None;
    for line in text.lines() {
        let normalised = match sample(line) {
            Some((series, value)) => {
                let name = series.split('{').next().unwrap();
                let family = timings.iter().find(|h| {
                    name.strip_prefix(**h)
                        .is_some_and(|suffix| ["_sum", "_count", "_bucket"].contains(&suffix))
                });
                match (family, name.rsplit('_').next()) {
                    (Some(_), Some("sum")) => {
                        let sum: f64 = value.parse().unwrap_or_else(|_| panic!("bad sum: {line}"));
                        assert!(sum >= 0.0, "{line}");
                        format!("{series} <sum>")
                    }
                    (Some(_), Some("bucket")) => {
                        let count: u64 = value.parse().unwrap_or_else(|_| panic!("bad bucket: {line}"));
                        assert!(
                            previous_bucket.is_none_or(|p| p <= count),
                            "buckets not cumulative at {line}"
                        );
                        previous_bucket = Some(count);
                        if series.contains("le=\"+Inf\"") {
                            previous_bucket = None;
                            line.to_string()
                        } else {
                            format!("{series} <n>")
                        }
                    }
                    (Some(_), Some("count")) => {
                        let count: u64 = value.parse().unwrap_or_else(|_| panic!("bad count: {line}"));
                        let inf = inf_bucket(text, &series.replacen("_count", "_bucket", 1));
                        assert_eq!(Some(count), inf, "`_count` and the +Inf bucket differ at {line}");
                        line.to_string()
                    }
                    _ => line.to_string(),
                }
            }
            None => line.to_string(),
        };
        out.push_str(&normalised.replace(version, VERSION_PLACEHOLDER));
        out.push('\n');
    }
    out
}

/// `series value` of a sample line (`None` for comments).
fn sample(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    line.rsplit_once(' ')
}

/// The `+Inf` bucket count of the histogram series `bucket` (`name_bucket` or `name_bucket{labels}`).
fn inf_bucket(text: &str, bucket: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (series, value) = sample(line)?;
        (series.contains("le=\"+Inf\"") && without_le(series) == bucket).then(|| value.parse().ok())?
    })
}

/// A bucket's series without its `le` label (the encoder puts `le` first; labels here hold no
/// commas).
fn without_le(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else { return series.to_string() };
    let kept: Vec<&str> =
        labels.trim_end_matches('}').split(',').filter(|label| !label.starts_with("le=")).collect();
    if kept.is_empty() { name.to_string() } else { format!("{name}{{{}}}", kept.join(",")) }
}

// ------------------------------------------------------------------------------------------------
// A line diff for the failure message.
// ------------------------------------------------------------------------------------------------

/// The changed lines of `old` → `new` with their line numbers and a line of context (from a
/// longest common subsequence; the files are a few hundred lines), the first 60 lines of it.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // common[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] =
                if a[i] == b[j] { common[i + 1][j + 1] + 1 } else { common[i + 1][j].max(common[i][j + 1]) };
        }
    }
    // (kind, line number in its file, text)
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', j + 1, a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            ops.push(('-', i + 1, a[i]));
            i += 1;
        } else {
            ops.push(('+', j + 1, b[j]));
            j += 1;
        }
    }
    let changed = |k: usize| ops.get(k).is_some_and(|op| op.0 != ' ');
    let mut out = Vec::new();
    let mut last_shown: Option<usize> = None;
    for (k, (kind, number, text)) in ops.iter().enumerate() {
        if !(changed(k) || (k > 0 && changed(k - 1)) || changed(k + 1)) {
            continue;
        }
        if out.len() >= 60 {
            out.push("  … (more differences)".to_string());
            break;
        }
        if last_shown.is_some_and(|last| last + 1 != k) {
            out.push("  …".to_string());
        }
        out.push(format!("{kind}{number:>5}: {text}"));
        last_shown = Some(k);
    }
    if old.ends_with('\n') != new.ends_with('\n') {
        out.push("  (the final newline differs)".to_string());
    }
    out.join("\n")
}

#[test]
fn the_diff_names_changed_lines() {
    assert_eq!(
        first_difference("same\nabcdef\n", "same\nabcXef\n"),
        "  first difference: line 2, column 4:\n  - …abcdef…\n  + …abcXef…"
    );
    assert_eq!(
        diff("a\nb\nc\nd\ne\n", "a\nb\nC\nd\ne\nf\n"),
        "     2: b\n-    3: c\n+    3: C\n     4: d\n     5: e\n+    6: f"
    );
    assert_eq!(
        diff("a\nb\nc\nd\ne\nf\ng\n", "a\nB\nc\nd\ne\nf\nG\n"),
        "     1: a\n-    2: b\n+    2: B\n     3: c\n  …\n     6: f\n-    7: g\n+    7: G"
    );
}
