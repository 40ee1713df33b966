//! What a guest can make the host hold or log is bounded (`--max-guest-*`), in both worlds: too
//! many resources or header bytes end the request with an error while the host's memory stays
//! bounded and the next request is served; a log flood is cut at the limit and counted.

use std::time::Duration;

use reqwest::StatusCode;

use crate::util::{
    HostProcess, TestServer, client, get, misbehave_p3_wasm, misbehave_wasm, poll_metric_until,
};

/// The host's memory bound while a guest floods it with headers. An idle host is ~40 MiB (its
/// code, the compiled components, the pool's first slots); a request's guest may hold
/// `--max-memory` (128 MiB) of its own, but these guests hold a few MiB: what is left is the
/// header budget (64 KiB) and the resource table (1024 entries). Without the limits a million
/// fields take several hundred MiB.
const MAX_RSS_KIB: u64 = 200 << 10;
/// Generous: every request here takes well under a second with the limits in place.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn path(wasm: &std::path::Path) -> &str {
    wasm.to_str().expect("UTF-8 path")
}

/// Both misbehaving components, with their names for messages.
fn components() -> [(&'static str, &'static str); 2] {
    [("p2", path(misbehave_wasm())), ("p3", path(misbehave_p3_wasm()))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_its_resource_limit_gets_a_500_and_the_host_serves_on() {
    for (world, component) in components() {
        let server = TestServer::start(&["--component", component]).await;
        let client = client();
        // Under the limit (1024 entries): 500 resources held at once.
        let reply = get(&client, server.url("/resources?n=500")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "held 500 resources"), "{world}");
        // Over it: 5000 at once.
        let reply = get(&client, server.url("/resources?n=5000")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{world}: {}", reply.body);
        let reply = get(&client, server.url("/")).await;
        assert_eq!(reply.status, StatusCode::OK, "{world}: the next request: {}", reply.body);
        server.stop().await.unwrap();
    }
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn blocking_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap()
}

#[test]
fn a_million_header_fields_get_an_error_and_the_host_stays_within_its_memory() {
    let client = blocking_client();
    for (world, component) in components() {
        let host = HostProcess::start(&["--component", component], &[]);
        // All in one `fields` (refused at its size), then spread over many (refused at the total).
        for query in ["n=1000000", "n=1000000&per=500"] {
            let reply = client.get(host.url(&format!("/fields?{query}"))).send().unwrap();
            let status = reply.status();
            let body = reply.text().unwrap();
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{world} {query}: {body}");
            let (rss, peak) = rss_kib(host.child.id());
            eprintln!("{world} /fields?{query}: {status}, {body:?}; VmRSS {rss} KiB, VmHWM {peak} KiB");
            assert!(peak < MAX_RSS_KIB, "{world} {query}: the host peaked at {peak} KiB of RSS");
            let next = client.get(host.url("/")).send().unwrap();
            assert_eq!(next.status(), StatusCode::OK, "{world}: the request after {query}");
        }
    }
}

/// A guest that prints 100k lines gets `--max-guest-log-lines` of them logged, the rest counted.
#[test]
fn a_log_flood_is_cut_at_the_limit_counted_and_the_request_answered() {
    const LINES: u64 = 100_000;
    const LIMIT: u64 = 1000;
    let client = blocking_client();
    for (world, component) in components() {
        let host = HostProcess::start(&["--component", component], &[]);
        let reply = client.get(host.url(&format!("/log-flood?lines={LINES}"))).send().unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{world}");
        assert_eq!(reply.text().unwrap(), format!("printed {LINES} lines"), "{world}");
        let metrics = host.url("/.well-known/echo-host/metrics");
        let dropped =
            poll_metric_until(&metrics, "echo_host_guest_log_dropped_total", REQUEST_TIMEOUT, |v| {
                v >= (LINES - LIMIT) as f64
            });
        assert_eq!(dropped, (LINES - LIMIT) as f64, "{world}: lines dropped");
        // One line says how many: at the end of the request (p2), or when the instance takes its
        // next request or retires (p3: idle for `--instance-idle-timeout`, 1 s).
        let summary = host.wait_for_line("guest log lines dropped", REQUEST_TIMEOUT);
        let summary = summary.unwrap_or_else(|| panic!("{world}: no summary line"));
        assert!(
            summary.contains(&format!("{} guest log lines dropped", LINES - LIMIT)),
            "{world}: {summary}"
        );
        let logged = host.lines().iter().filter(|line| line.contains(" flood line ")).count();
        assert!(logged as u64 <= LIMIT, "{world}: {logged} guest lines logged, limit {LIMIT}");
        assert!(logged > 0, "{world}: the lines under the limit are logged");
    }
}

/// The header names wasmtime forbids a guest to set stay forbidden, by `set`, `append` and
/// `from-list` alike (the host implements the check itself), and any other name is allowed.
#[tokio::test]
async fn a_p2_guest_may_not_set_the_forbidden_header_names() {
    let server = TestServer::start(&["--component", misbehave_wasm().to_str().unwrap()]).await;
    let reply = get(&client(), server.url("/forbidden")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let lines: Vec<&str> = reply.body.lines().collect();
    assert_eq!(lines.len(), 10, "{}", reply.body);
    for line in &lines[..9] {
        let (name, outcomes) = line.split_once(": ").expect("`NAME: outcomes`");
        assert_eq!(
            outcomes,
            "set HeaderError::Forbidden, append HeaderError::Forbidden, from-list HeaderError::Forbidden",
            "`{name}` must be refused every way"
        );
    }
    assert_eq!(lines[9], "x-allowed: set ok, append ok, from-list ok");
}
