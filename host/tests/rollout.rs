//! Progressive delivery (issue #12): a release of a stable version and a canary with a weight.
//!
//! In process, without a store (the admin API sets this instance's release): the weight's split,
//! sticky keys, pins, per-version telemetry, promotion by steps, abort. With real hosts on one
//! store (the emulator): a canary failing 30 % of its requests rolled back fleet-wide, two hosts
//! racing to write that rollback, and manifests naming an unknown or an invalid canary.
//!
//! Stable is the echo component (200 on any path), the canary is `misbehave`: `/` is its healthy
//! path, `/flaky?percent=N` fails N % of its requests. Every response names the version that
//! served it (`echo-host-component`), which is how the tests count. They wait by polling
//! observable state (the release status, the manifest, responses) against a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::util::fleet::{
    Load, PATIENCE, Store, TOKEN, assert_rolled_back_once, auto_rollbacks, echo, eventually, get_json, http,
    info, metric, misbehave, off_canary, push, rfc3339_now, sha256, summed, version, wait_all_serve,
};
use crate::util::{self, HostProcess, TestServer};

const RELEASE: &str = "/.well-known/echo-host/admin/release";
const KEY: &str = "echo-host-version-key";
const PIN: &str = "echo-host-version";

// ---------------------------------------------------------------------------------------------
// One instance without a store, in process
// ---------------------------------------------------------------------------------------------

/// Requests and failures (status ≥ 500) per serving version, as the client saw them.
type Seen = BTreeMap<String, (u64, u64)>;

/// A host in this process (builtin echo as stable) with the admin API, and a keep-alive client.
struct Instance {
    server: TestServer,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(extra: &[&str]) -> Instance {
        let dir = util::scratch_dir();
        let token = util::write_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes());
        let mut flags = vec!["--admin-token-file", token.to_str().unwrap()];
        flags.extend_from_slice(extra);
        let server = TestServer::start(&flags).await;
        Instance { server, client: util::client(), _dir: dir }
    }

    /// `POST admin/release{path}` (with `body`): status and JSON.
    async fn post(&self, path: &str, body: Option<Vec<u8>>) -> (u16, Value) {
        let mut request = self.client.post(self.server.url(&format!("{RELEASE}{path}"))).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Starts a canary of `bytes` (`query` = `?weight=W...`); panics unless 200.
    async fn start_canary(&self, bytes: &[u8], query: &str) -> Value {
        let (status, body) = self.post(query, Some(bytes.to_vec())).await;
        assert_eq!(status, 200, "POST admin/release{query}: {body}");
        body
    }

    /// `POST admin/release/promote{query}`; panics unless 200.
    async fn promote(&self, query: &str) -> Value {
        let (status, body) = self.post(&format!("/promote{query}"), None).await;
        assert_eq!(status, 200, "POST admin/release/promote{query}: {body}");
        body
    }

    /// `GET admin/release`.
    async fn status(&self) -> Value {
        let response = self.client.get(self.server.url(RELEASE)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The stable version's short name, from the release status.
    async fn stable(&self) -> String {
        self.status().await["stable"]["version"].as_str().expect("stable.version").to_string()
    }

    /// `GET path` with `headers`: status and the version that served it.
    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.client.get(self.server.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let served = response
            .headers()
            .get("echo-host-component")
            .unwrap_or_else(|| panic!("GET {path}: {status} without a version"))
            .to_str()
            .unwrap()
            .to_string();
        response.bytes().await.unwrap();
        (status, served)
    }

    /// `n` requests for `path` (`concurrency` at a time on the keep-alive pool), counted.
    async fn drive(&self, path: &str, n: usize, concurrency: usize) -> Seen {
        let answers: Vec<(u16, String)> = futures::stream::iter(0..n)
            .map(|_| self.send(path, &[]))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut seen = Seen::new();
        for (status, served) in answers {
            let entry = seen.entry(served).or_default();
            entry.0 += 1;
            entry.1 += u64::from(status >= 500);
        }
        seen
    }

    /// The version serving each key (a request with `echo-host-version-key`), 8 at a time.
    async fn versions_of(&self, keys: &[String]) -> Vec<String> {
        futures::stream::iter(keys)
            .map(|key| async move {
                let (status, served) = self.send("/", &[(KEY, key)]).await;
                assert_eq!(status, 200, "key {key}");
                served
            })
            .buffered(8)
            .collect()
            .await
    }

    async fn metrics(&self) -> String {
        self.server.metrics().await
    }
}

/// Requests `served` by `version` in `seen`.
fn on(seen: &Seen, version: &str) -> u64 {
    seen.get(version).map_or(0, |s| s.0)
}

/// A labelled sample's value, 0 when the series does not exist (yet).
fn sample(text: &str, name: &str, version: &str) -> f64 {
    let series = format!("{name}{{version=\"{version}\"}}");
    text.lines()
        .find_map(|line| line.strip_prefix(&series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A canary at 10 % serves 8-12 % of 10,000 requests without a key; at 0 % none of 1,000, at
/// 100 % all of 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_10_percent_within_8_to_12_and_0_and_100_exactly() {
    let host = Instance::start(&[]).await;
    let (stable, canary) = (host.stable().await, version(&misbehave()));
    assert_ne!(stable, canary);

    let started = host.start_canary(&misbehave(), "?weight=10").await;
    assert_eq!(started["canary"]["version"], canary.as_str(), "{started}");
    assert_eq!(started["canary"]["weight"].as_f64(), Some(10.0), "{started}");
    assert_eq!(started["canary"]["routing"], true, "{started}");
    let began = Instant::now();
    let seen = host.drive("/", 10_000, 8).await;
    eprintln!("weight 10 %: {seen:?} over 10,000 requests in {:.1?}", began.elapsed());
    assert_eq!(
        on(&seen, &stable) + on(&seen, &canary),
        10_000,
        "only the release's versions serve: {seen:?}"
    );
    assert!(seen.values().all(|s| s.1 == 0), "no request failed: {seen:?}");
    let share = on(&seen, &canary);
    assert!((800..=1200).contains(&share), "the canary at 10 % served {share} of 10,000: {seen:?}");

    let at_zero = host.promote("?weight=0").await;
    assert_eq!(at_zero["canary"]["weight"].as_f64(), Some(0.0), "{at_zero}");
    let seen = host.drive("/", 1_000, 8).await;
    assert_eq!(on(&seen, &stable), 1_000, "the canary at 0 % served some: {seen:?}");

    let (status, aborted) = host.post("/abort", None).await;
    assert_eq!(status, 200, "{aborted}");
    let full = host.start_canary(&misbehave(), "?weight=100").await;
    assert_eq!(full["canary"]["weight"].as_f64(), Some(100.0), "{full}");
    assert_eq!(full["stable"]["version"], stable.as_str(), "a canary at 100 % is still a canary: {full}");
    let seen = host.drive("/", 1_000, 8).await;
    assert_eq!(on(&seen, &canary), 1_000, "stable served some beside a canary at 100 %: {seen:?}");
}

/// Asks for every key twice; asserts each met one version both times; the keys on `canary`.
async fn on_canary_asked_twice(
    host: &Instance,
    keys: &[String],
    canary: &str,
    label: &str,
) -> BTreeSet<String> {
    let first = host.versions_of(keys).await;
    let second = host.versions_of(keys).await;
    let moved: Vec<_> = keys.iter().zip(first.iter().zip(&second)).filter(|(_, (a, b))| a != b).collect();
    assert!(moved.is_empty(), "at {label}, keys served by two versions: {:?}", &moved[..moved.len().min(5)]);
    keys.iter().zip(first).filter(|(_, v)| v == canary).map(|(k, _)| k.clone()).collect()
}

/// 1,000 keys, each asked twice, always meet the same version; raising the weight from 10 to 50
/// keeps every key that was on the canary there, and moves others over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keys_stay_on_their_version_and_on_the_canary_as_it_grows() {
    let host = Instance::start(&[]).await;
    let canary = version(&misbehave());
    host.start_canary(&misbehave(), "?weight=10").await;
    let keys: Vec<String> = (0..1000).map(|n| format!("user-{n:04}")).collect();

    let at_10 = on_canary_asked_twice(&host, &keys, &canary, "10 %").await;
    assert!((50..=150).contains(&at_10.len()), "{} of 1,000 keys on the canary at 10 %", at_10.len());

    host.promote("?weight=50").await;
    let at_50 = on_canary_asked_twice(&host, &keys, &canary, "50 %").await;
    let left: Vec<_> = at_10.difference(&at_50).collect();
    assert!(left.is_empty(), "keys that left the canary when it grew from 10 to 50 %: {left:?}");
    assert!((400..=600).contains(&at_50.len()), "{} of 1,000 keys on the canary at 50 %", at_50.len());
    eprintln!("sticky keys: {} on the canary at 10 %, {} at 50 %, none left it", at_10.len(), at_50.len());
}

/// A pin serves a 0 % canary (by any prefix of 4 hex digits or more, in any case) and stable;
/// a pin to a version outside the release, or not a version at all, is routed by weight and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_reach_a_zero_percent_canary_and_others_are_ignored_and_counted() {
    let host = Instance::start(&[]).await;
    let stable = host.stable().await;
    let canary = version(&misbehave());
    let sha = sha256(&misbehave());
    host.start_canary(&misbehave(), "?weight=0").await;
    let ignored = |text: &str| util::metric_value(text, "echo_host_version_pin_ignored_total");
    let before = ignored(&host.metrics().await);

    let pins =
        [canary.clone(), format!("sha256:{}", sha[..8].to_uppercase()), format!("sha256:{}", &sha[..4])];
    for pin in &pins {
        for _ in 0..20 {
            assert_eq!(host.send("/", &[(PIN, pin)]).await, (200, canary.clone()), "pinned to {pin}");
        }
    }
    assert_eq!(host.send("/", &[(PIN, &stable)]).await, (200, stable.clone()), "pinned to stable");
    assert_eq!(host.send("/", &[]).await, (200, stable.clone()), "unpinned, at 0 %");
    assert_eq!(ignored(&host.metrics().await), before, "a pin inside the release was counted as ignored");

    let outside = ["sha256:deadbeef0000", "sha256:abc", "latest"];
    for pin in outside {
        for _ in 0..10 {
            assert_eq!(host.send("/", &[(PIN, pin)]).await, (200, stable.clone()), "pinned to {pin}, at 0 %");
        }
    }
    assert_eq!(ignored(&host.metrics().await), before + 30.0, "30 pins outside the release");
}

/// After traffic to a canary failing half of it, every version's request and guest-5xx counts
/// in the metrics and in `GET admin/release` are the client's, and the latency histogram
/// counted each request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_version_telemetry_matches_what_the_client_saw() {
    // No verdict: this test counts, it does not roll back.
    let host = Instance::start(&["--canary-min-requests", "1000000"]).await;
    let stable = host.stable().await;
    let canary = version(&misbehave());
    host.start_canary(&misbehave(), "?weight=30").await;
    let metrics_before = host.metrics().await;
    let status_before = host.status().await;

    let seen = host.drive("/flaky?percent=50", 600, 4).await;
    eprintln!("telemetry: {seen:?}");
    let (on_stable, on_canary) = (seen[&stable], seen[&canary]);
    assert_eq!(on_stable.1, 0, "stable failed: {seen:?}");
    assert!(on_canary.1 > 0 && on_canary.1 < on_canary.0, "the canary fails some, not all: {seen:?}");

    let metrics = host.metrics().await;
    let delta =
        |name: &str, version: &str| sample(&metrics, name, version) - sample(&metrics_before, name, version);
    for (served, (requests, failures)) in [(&stable, on_stable), (&canary, on_canary)] {
        assert_eq!(
            delta("echo_host_version_requests_total", served),
            requests as f64,
            "{served}:\n{metrics}"
        );
        assert_eq!(
            delta("echo_host_version_guest_5xx_total", served),
            failures as f64,
            "{served}:\n{metrics}"
        );
        assert_eq!(
            delta("echo_host_version_request_duration_seconds_count", served),
            requests as f64,
            "{served}:\n{metrics}"
        );
        assert_eq!(delta("echo_host_version_traps_total", served), 0.0, "{served}");
        assert_eq!(delta("echo_host_version_timeouts_total", served), 0.0, "{served}");
    }
    assert_eq!(util::metric_value(&metrics, "echo_host_canary_weight_permille"), 300.0);

    let status = host.status().await;
    let row = |status: &Value, served: &str| -> Value {
        status["versions"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["version"] == served))
            .cloned()
            .unwrap_or_else(|| panic!("no versions[] row for {served}: {status}"))
    };
    let roles: Vec<&str> =
        status["versions"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["stable", "canary"], "{status}");
    for (served, (requests, failures)) in [(&stable, on_stable), (&canary, on_canary)] {
        let (now, then) = (row(&status, served), row(&status_before, served));
        let totals =
            |r: &Value, k: &str| r["totals"][k].as_u64().unwrap_or_else(|| panic!("totals.{k}: {r}"));
        assert_eq!(totals(&now, "requests") - totals(&then, "requests"), requests, "{now}");
        assert_eq!(totals(&now, "guest_5xx") - totals(&then, "guest_5xx"), failures, "{now}");
        assert_eq!(now["fleet"], now["totals"], "without a store, the fleet is this instance: {now}");
        assert!(now["window"]["requests"].as_u64() >= Some(requests), "{now}");
    }
    assert_eq!(row(&status, &canary)["weight"].as_f64(), Some(30.0), "{status}");
    assert_eq!(row(&status, &stable)["weight"].as_f64(), Some(70.0), "{status}");
    let series = &status["series"]["versions"][canary.as_str()];
    let total: u64 = series["requests"].as_array().expect("series").iter().filter_map(Value::as_u64).sum();
    assert!(total >= on_canary.0, "the chart's series counts the canary's requests: {series}");
}

/// A healthy canary with `steps=10,50,100&step_interval=2s`, under traffic, steps up to 50 and
/// then becomes stable on its own; the history records each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_its_steps() {
    let host = Instance::start(&["--canary-window", "5s", "--canary-min-requests", "10"]).await;
    let stable = host.stable().await;
    let canary = version(&misbehave());
    let began = Instant::now();
    let started = host.start_canary(&misbehave(), "?weight=10&steps=10,50,100&step_interval=2s").await;
    assert_eq!(started["canary"]["steps"], json!([10.0, 50.0, 100.0]), "{started}");
    assert_eq!(started["canary"]["step_interval_ms"], 2000, "{started}");

    let mut weights = BTreeSet::new();
    let mut seen = Seen::new();
    let promoted = loop {
        for (served, (requests, failures)) in host.drive("/", 50, 2).await {
            let entry = seen.entry(served).or_default();
            entry.0 += requests;
            entry.1 += failures;
        }
        let status = host.status().await;
        if let Some(weight) = status["canary"]["weight"].as_f64() {
            weights.insert(weight as u64);
        }
        if status["canary"].is_null() {
            break status;
        }
        assert!(began.elapsed() < PATIENCE, "not promoted after {PATIENCE:?}: {status}");
    };
    eprintln!("promoted through {weights:?} in {:.1?}: {seen:?}", began.elapsed());
    assert_eq!(promoted["stable"]["version"], canary.as_str(), "{promoted}");
    assert!(began.elapsed() >= Duration::from_secs(4), "two steps of 2 s took {:?}", began.elapsed());
    assert!(weights.contains(&50), "the canary was never seen at 50 %: {weights:?}");
    assert!(seen.values().all(|s| s.1 == 0), "failed requests: {seen:?}");
    assert!(on(&seen, &canary) > 0 && on(&seen, &stable) > 0, "{seen:?}");
    assert_eq!(host.send("/", &[]).await, (200, canary.clone()), "the promoted canary serves");
    assert_eq!(promoted["last_decision"]["action"], "auto_promote", "{promoted}");

    let history = promoted["history"].as_array().expect("history");
    let actions: Vec<&str> = history.iter().map(|h| h["action"].as_str().unwrap()).collect();
    eprintln!("history after the promotion: {actions:?}");
    let start = actions.iter().position(|a| *a == "canary_start").expect("a canary_start entry");
    let steps = &history[..start];
    assert!(steps.len() >= 2, "a step to 50 and one to stable, newest first: {history:?}");
    assert!(steps.iter().all(|h| h["action"] == "auto_promote"), "{history:?}");
    assert_eq!(steps[0]["stable"], format!("sha256:{}", sha256(&misbehave())), "{history:?}");
    assert!(
        util::metric_value(&host.metrics().await, "echo_host_canary_promotions_total") >= 2.0,
        "two automatic steps counted"
    );
}

/// A canary rolled back and started again (same version, a new plan) is judged on its own
/// requests only: it serves, and its second rollback counts none of the first start's failures
/// (CI, 12-06: a restart within the window was rolled back 93 ms after it started, on the
/// previous start's 6 failures, before one request reached it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_started_again_is_judged_on_its_own_requests() {
    const MIN: u64 = 20;
    let host = Instance::start(&["--canary-window", "60s", "--canary-min-requests", &MIN.to_string()]).await;
    let canary = version(&misbehave());
    host.start_canary(&misbehave(), "?weight=100").await;
    let first = host.drive("/flaky?percent=100", 2 * MIN as usize, 1).await;
    assert!(on(&first, &canary) >= MIN, "the first start served its minimum: {first:?}");
    let status = host.status().await;
    assert!(status["canary"].is_null(), "the first start was rolled back: {status}");
    assert_eq!(status["last_decision"]["action"], "auto_rollback", "{status}");

    // Started again: nothing against it yet, it serves every request (no failure in them).
    host.start_canary(&misbehave(), "?weight=100").await;
    let healthy = host.drive("/", 10, 1).await;
    assert_eq!(on(&healthy, &canary), 10, "the new start serves: {healthy:?}");
    // Failing now: rolled back again once its own requests reach the minimum, not before.
    let failing = host.drive("/flaky?percent=100", 2 * MIN as usize, 1).await;
    let (served, failed) = failing.get(&canary).copied().unwrap_or_default();
    let status = host.status().await;
    assert!(status["canary"].is_null(), "the second start was rolled back: {status}");
    let counted = &status["last_decision"]["canary"];
    let (requests, failures) = (counted["requests"].as_u64().unwrap(), counted["failures"].as_u64().unwrap());
    assert!(
        requests <= 10 + served && failures <= failed,
        "the decision counts requests of the first start: {counted} (since the restart the canary served \
         {} requests, {failed} of them failed)",
        10 + served
    );
    assert!(requests >= MIN, "judged before its minimum of requests: {counted}");
    assert!(failed + 1 >= MIN - 10, "rolled back after {failed} failures of its own: {failing:?}");
}

/// `POST admin/release/abort` removes the canary at once; after it, abort and promote are 409
/// `no_canary`; a second start while one runs is 409 `canary_running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_removes_the_canary_and_then_there_is_none() {
    let host = Instance::start(&[]).await;
    let stable = host.stable().await;
    let (status, body) = host.post("/abort", None).await;
    assert_eq!((status, body["kind"].as_str()), (409, Some("no_canary")), "{body}");

    host.start_canary(&misbehave(), "?weight=100").await;
    assert_eq!(host.send("/", &[]).await.1, version(&misbehave()));
    let (status, body) = host.post("?weight=5", Some(util::fleet::variant(&echo(), 1))).await;
    assert_eq!((status, body["kind"].as_str()), (409, Some("canary_running")), "{body}");

    let (status, aborted) = host.post("/abort", None).await;
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(aborted["canary"], Value::Null, "{aborted}");
    let seen = host.drive("/", 200, 4).await;
    assert_eq!(on(&seen, &stable), 200, "after the abort, stable serves every request: {seen:?}");
    assert_eq!(aborted["history"][0]["action"], "abort", "{aborted}");
    for path in ["/abort", "/promote", "/promote?weight=50"] {
        let (status, body) = host.post(path, None).await;
        assert_eq!((status, body["kind"].as_str()), (409, Some("no_canary")), "{path}: {body}");
    }
    assert_eq!(util::metric_value(&host.metrics().await, "echo_host_canary_weight_permille"), 0.0);
}

/// The misbehave component's failure knob (the canary tests rest on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehave_flaky_fails_the_asked_share() {
    let server = TestServer::start(&["--component", util::misbehave_wasm().to_str().unwrap()]).await;
    let client = util::client();
    let get = |path: &'static str| {
        let (client, url) = (&client, server.url(path));
        async move { util::get(client, url).await }
    };
    for _ in 0..20 {
        let (ok, fail) = (get("/flaky?percent=0").await, get("/flaky?percent=100").await);
        assert_eq!((ok.status.as_u16(), ok.body.as_str()), (200, "flaky ok"));
        assert_eq!((fail.status.as_u16(), fail.body.as_str()), (500, "flaky failure"));
    }
    for bad in ["/flaky?percent=101", "/flaky?percent=x", "/flaky?percent=-1"] {
        assert_eq!(util::get(&client, server.url(bad)).await.status, 400, "{bad}");
    }
    let answers: Vec<u16> = futures::stream::iter(0..400)
        .map(|_| get("/flaky?percent=30"))
        .buffer_unordered(4)
        .map(|r| r.status.as_u16())
        .collect()
        .await;
    let failed = answers.iter().filter(|s| **s == 500).count();
    assert!((80..=160).contains(&failed), "{failed} of 400 failed at 30 %");
}

// ---------------------------------------------------------------------------------------------
// Real hosts on one store
// ---------------------------------------------------------------------------------------------

/// `GET admin/release` on `host`.
fn release(http: &reqwest::blocking::Client, host: &HostProcess) -> Value {
    let (status, body) = get_json(http, &host.url(RELEASE));
    assert_eq!(status, 200, "GET admin/release on {}: {body}", host.addr);
    body
}

/// Three real hosts on one store, stable = echo; a canary of `misbehave` at 50 % started through
/// one host while all three take traffic to `/flaky?percent=30`: the fleet is off the canary
/// within the window and a poll, the manifest records one automatic rollback (whoever tripped
/// first), stable fails no request, and none reaches the canary afterwards. The time from the
/// first failed canary request to the last host off it is printed.
#[test]
fn a_failing_canary_is_rolled_back_fleet_wide() {
    const WINDOW: Duration = Duration::from_secs(5);
    const POLL: Duration = Duration::from_millis(500);
    let store = Store::new("canary-fleet");
    let url = store.gcs.url();
    let flags = ["--canary-window", "5s", "--canary-min-requests", "30"];
    let hosts = store.start_hosts(3, &["--storage-emulator-host", &url], &flags);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &echo(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &echo(), "stable");
    let (stable, canary) = (version(&echo()), version(&misbehave()));

    let urls: Vec<String> = hosts.iter().map(|h| h.url("/flaky?percent=30")).collect();
    let load = Load::start(&urls, 2, Duration::from_millis(10));
    load.wait_answered(20, PATIENCE);
    let url = hosts[1].url(&format!("{RELEASE}?weight=50"));
    let response = http.post(&url).bearer_auth(TOKEN).body(misbehave()).send().unwrap();
    let (status, started) = (response.status(), response.text().unwrap());
    assert_eq!(status, 200, "{started}");

    // Off the canary: each host's status says so, once it had the canary (it served some of
    // the load, or it follows the rollback already).
    let mut off: Vec<Option<Instant>> = vec![None; hosts.len()];
    eventually("every host off the canary", WINDOW + POLL + PATIENCE, || {
        let tally = load.tally();
        for (i, host) in hosts.iter().enumerate() {
            let status = release(&http, host);
            let had_it =
                tally[i].contains_key(&canary) || status["last_decision"]["action"] == "auto_rollback";
            if off[i].is_none() && had_it && off_canary(&status) {
                off[i] = Some(Instant::now());
            }
        }
        if off.iter().all(Option::is_some) { Ok(()) } else { Err(format!("{off:?}")) }
    });
    let all_off = off.iter().flatten().max().copied().unwrap();
    eventually("the rollback in the manifest", PATIENCE, || {
        let manifest = store.manifest().unwrap();
        if manifest["canary"].is_null() { Ok(()) } else { Err(manifest.to_string()) }
    });
    let followed = eventually("every host to follow the rollback", PATIENCE, || {
        let statuses: Vec<Value> = hosts.iter().map(|h| release(&http, h)).collect();
        let done =
            statuses.iter().all(|s| s["canary"].is_null() && s["last_decision"]["action"] == "auto_rollback");
        if done { Ok(statuses) } else { Err(format!("{statuses:?}")) }
    });
    // Traffic goes on: none of it reaches the canary.
    load.wait_answered(100, PATIENCE);
    let (tally, errors) = load.finish();
    let sums = summed(&tally, &errors, &stable);
    let on_canary = sums.get(&canary).copied().unwrap_or_default();
    assert!(on_canary.1 > 0, "the canary served and failed some requests: {sums:?}");
    let first_failure = tally.iter().filter_map(|t| t.get(&canary)?.first_failure).min().unwrap();
    for (i, served) in tally.iter().enumerate() {
        let last = served.get(&canary).and_then(|s| s.last_sent);
        assert!(last.is_none_or(|t| t <= off[i].unwrap()), "host {i} served the canary after it was off it");
    }
    // The fleet's per-version counts, from the heartbeats: the sum of every host's own.
    let stable_row = |status: &Value| status["versions"][0].clone();
    eventually("stable's fleet-wide count to be the sum of the hosts' counts", PATIENCE, || {
        let statuses: Vec<Value> = hosts.iter().map(|h| release(&http, h)).collect();
        let sum: u64 = statuses.iter().map(|s| stable_row(s)["totals"]["requests"].as_u64().unwrap()).sum();
        let fleet = stable_row(&statuses[0])["fleet"]["requests"].as_u64();
        if fleet == Some(sum) { Ok(()) } else { Err(format!("fleet {fleet:?}, sum of totals {sum}")) }
    });
    let manifest = store.manifest().unwrap();
    assert_rolled_back_once(&manifest, &echo(), &misbehave(), 30);
    for status in &followed {
        assert_eq!(status["last_decision"], manifest["last_decision"], "{status}");
        assert_eq!(auto_rollbacks(status).len(), 1, "{status}");
    }
    let rollbacks: f64 = hosts.iter().map(|h| metric(&http, h, "echo_host_canary_rollbacks_total")).sum();
    assert!(rollbacks >= 1.0, "no host counted the rollback");
    for host in &hosts {
        assert_eq!(metric(&http, host, "echo_host_canary_weight_permille"), 0.0);
    }

    // Per host, relative to the first failed canary request: when it first and last served the
    // canary (by the send time of the requests), and when its status showed it off the canary.
    let since = |t: Instant| {
        t.saturating_duration_since(first_failure).as_millis() as i128
            - first_failure.saturating_duration_since(t).as_millis() as i128
    };
    let per_host: Vec<String> = tally
        .iter()
        .zip(&off)
        .map(|(served, off)| {
            let c = served.get(&canary);
            format!(
                "canary {}: sent {:?}..{:?} ms, off at {} ms",
                c.map_or(0, |c| c.requests),
                c.and_then(|c| c.first_sent).map(since),
                c.and_then(|c| c.last_sent).map(since),
                since(off.unwrap())
            )
        })
        .collect();
    let last_canary = tally.iter().filter_map(|t| t.get(&canary)?.last_sent).max().unwrap();
    let slowest = all_off.saturating_duration_since(first_failure);
    eprintln!(
        "fleet rollback (window {WINDOW:?}, poll {POLL:?}, min 30 requests): first canary failure -> every host \
         off the canary (status) in {} ms, -> last request any host sent to the canary {} ms; per host: \
         {per_host:?}; {rollbacks} tripped; served {sums:?}; decision by {}: {}",
        slowest.as_millis(),
        since(last_canary),
        manifest["last_decision"]["by"],
        manifest["last_decision"]["reason"]
    );
    assert!(slowest < WINDOW + POLL + Duration::from_secs(10), "onset -> all off took {slowest:?}");
}

/// The manifest of a release of stable echo with a canary `sha` at `weight`, written by hand.
fn write_canary_by_hand(store: &Store, sha: &str, weight: f64) -> String {
    let mut manifest = store.manifest().unwrap_or_else(
        || json!({ "schema": 1, "stable": format!("sha256:{}", sha256(&echo())), "history": [] }),
    );
    let now = rfc3339_now();
    manifest["canary"] = json!({
        "version": format!("sha256:{sha}"), "weight": weight, "steps": [], "step_interval_ms": 0,
        "step_started_at": now, "started_at": now, "started_by": "hand",
    });
    manifest["updated_at"] = json!(now);
    manifest["updated_by"] = json!("hand");
    store.write_manifest(manifest.to_string().as_bytes())
}

/// Two hosts that read the same canary (written by hand) and poll only every 30 s, loaded at
/// once: both trip on their own and race to write the rollback; the store ends with one
/// manifest with one `auto_rollback`.
#[test]
fn two_hosts_tripping_at_once_write_one_rollback() {
    let store = Store::new("canary-race");
    for bytes in [echo(), misbehave()] {
        store.write_component(&sha256(&bytes), &bytes);
    }
    let mut manifest = json!({ "schema": 1, "stable": format!("sha256:{}", sha256(&echo())), "history": [] });
    manifest["updated_at"] = json!(rfc3339_now());
    store.write_manifest(manifest.to_string().as_bytes());
    write_canary_by_hand(&store, &sha256(&misbehave()), 50.0);
    let url = store.gcs.url();
    let flags = ["--poll-interval", "30s", "--canary-window", "5s", "--canary-min-requests", "30"];
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &url], &flags);
    let http = http();
    for host in &hosts {
        eventually("the canary written by hand to be routed", PATIENCE, || {
            let status = release(&http, host);
            if status["canary"]["routing"] == true { Ok(()) } else { Err(status.to_string()) }
        });
    }

    let urls: Vec<String> = hosts.iter().map(|h| h.url("/flaky?percent=30")).collect();
    let load = Load::start(&urls, 2, Duration::from_millis(5));
    let started = Instant::now();
    eventually("both hosts to stop routing to the canary", PATIENCE, || {
        let statuses: Vec<Value> = hosts.iter().map(|h| release(&http, h)).collect();
        if statuses.iter().all(off_canary) { Ok(()) } else { Err(format!("{statuses:?}")) }
    });
    let took = started.elapsed();
    let (tally, errors) = load.finish();
    let sums = summed(&tally, &errors, &version(&echo()));
    // Both tripped by themselves: neither polled the other's rollback in time.
    assert!(took < Duration::from_secs(25), "the hosts took {took:?}: one may have followed a poll");
    let tripped: Vec<f64> =
        hosts.iter().map(|h| metric(&http, h, "echo_host_canary_rollbacks_total")).collect();
    assert_eq!(tripped, [1.0, 1.0], "each host judged the canary itself");
    let manifest = eventually("the rollback in the manifest", PATIENCE, || {
        let manifest = store.manifest().unwrap();
        if manifest["canary"].is_null() { Ok(manifest) } else { Err(manifest.to_string()) }
    });
    assert_rolled_back_once(&manifest, &echo(), &misbehave(), 30);
    eprintln!(
        "two hosts tripping at once: both off in {took:.1?}; served {sums:?}; one manifest: {}",
        manifest["last_decision"]
    );
}

/// A manifest naming as canary a version the store does not have, then bytes that are not a
/// component stored under their sha256: each rejected, visible in `info` or `admin/release`,
/// and stable serves every request throughout.
#[test]
fn a_canary_that_is_unknown_or_invalid_is_rejected_and_stable_serves() {
    let store = Store::new("canary-bad");
    let hosts = store.start_direct(1);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &echo(), "");
    assert_eq!(status, 200, "{body}");
    let stable = version(&echo());
    let load = Load::start(&[hosts[0].url("/")], 2, Duration::from_millis(10));

    // Unknown: nobody uploaded it.
    let unknown = sha256(b"a canary nobody uploaded");
    write_canary_by_hand(&store, &unknown, 50.0);
    let error = eventually("info to name the missing canary", PATIENCE, || {
        let error = info(&http, &hosts[0])["store"]["last_error"].clone();
        if error.to_string().contains(&unknown[..12]) { Ok(error) } else { Err(error.to_string()) }
    });
    eprintln!("unknown canary: {error}");
    let status = release(&http, &hosts[0]);
    assert!(off_canary(&status), "{status}");

    // Invalid: stored under its own sha256, but not a component.
    let garbage = b"not a component, only bytes stored under their sha256".to_vec();
    let invalid = sha256(&garbage);
    store.write_component(&invalid, &garbage);
    write_canary_by_hand(&store, &invalid, 50.0);
    let rejection = eventually("the rejection of the invalid canary", PATIENCE, || {
        let status = release(&http, &hosts[0]);
        let rejection = status["last_rejection"].clone();
        if rejection["sha256"] == invalid.as_str() { Ok(rejection) } else { Err(status.to_string()) }
    });
    eprintln!("invalid canary: {rejection}");
    assert!(rejection["reason"].as_str().is_some_and(|r| !r.is_empty()), "{rejection}");
    assert!(off_canary(&release(&http, &hosts[0])));

    load.wait_answered(50, PATIENCE);
    let (tally, errors) = load.finish();
    let sums = summed(&tally, &errors, &stable);
    assert_eq!(sums.keys().collect::<Vec<_>>(), [&stable], "only stable served: {sums:?}");
}
