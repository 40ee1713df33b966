//! A canary judged on latency (issue #31), with real hosts on one store (the emulator): a canary
//! that answers every request correctly but takes 300 ms where stable takes a few is rolled back
//! fleet-wide, the decision's reason naming both p95s; a canary as slow as stable (both over the
//! floor, within the ratio) steps up to stable.
//!
//! The versions are told apart by the path they are all sent: `misbehave` and `misbehave-p3`
//! sleep on `/sleep?ms=N`, the echo component echoes it at once.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::fleet::{
    Load, PATIENCE, Store, TOKEN, auto_rollbacks, echo, eventually, get_json, http, misbehave, push, sha256,
    summed, version, wait_all_serve,
};
use crate::util::{self, HostProcess};

const RELEASE: &str = "/.well-known/echo-host/admin/release";

fn release(http: &reqwest::blocking::Client, host: &HostProcess) -> Value {
    let (status, body) = get_json(http, &host.url(RELEASE));
    assert_eq!(status, 200, "GET admin/release on {}: {body}", host.addr);
    body
}

/// Starts a canary of `bytes` through `host` with `query`; panics unless 200.
fn start_canary(http: &reqwest::blocking::Client, host: &HostProcess, bytes: Vec<u8>, query: &str) {
    let response =
        http.post(host.url(&format!("{RELEASE}{query}"))).bearer_auth(TOKEN).body(bytes).send().unwrap();
    let (status, body) = (response.status(), response.text().unwrap());
    assert_eq!(status, 200, "POST admin/release{query}: {body}");
}

/// The milliseconds in `… {what} 212 ms …` of a reason.
fn millis_after(reason: &str, what: &str) -> f64 {
    let rest = reason.split(what).nth(1).unwrap_or_else(|| panic!("no `{what}` in {reason:?}"));
    let number = rest.trim_start().split(' ').next().unwrap();
    number.parse().unwrap_or_else(|_| panic!("`{what}` is not followed by a number in {reason:?}"))
}

/// Three hosts, stable echo; a canary of `misbehave` at 50% while every host takes traffic to
/// `/sleep?ms=300`: no request fails, the canary's p95 (~300 ms) is over twice stable's and
/// over the 100 ms floor, and the fleet is off it within the window and a poll; one automatic
/// rollback in the manifest, its reason naming both p95s.
#[test]
fn a_slow_canary_is_rolled_back_fleet_wide_on_latency() {
    let store = Store::new("canary-slow");
    let url = store.gcs.url();
    let flags = ["--canary-window", "5s", "--canary-min-requests", "30"];
    let hosts = store.start_hosts(3, &["--storage-emulator-host", &url], &flags);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &echo(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &echo(), "stable");
    let (stable, canary) = (version(&echo()), version(&misbehave()));

    let urls: Vec<String> = hosts.iter().map(|h| h.url("/sleep?ms=300")).collect();
    let load = Load::start(&urls, 3, Duration::from_millis(10));
    load.wait_answered(20, PATIENCE);
    let started = Instant::now();
    start_canary(&http, &hosts[1], misbehave(), "?weight=50");

    let statuses = eventually("every host to follow the latency rollback", PATIENCE, || {
        let statuses: Vec<Value> = hosts.iter().map(|h| release(&http, h)).collect();
        let done =
            statuses.iter().all(|s| s["canary"].is_null() && s["last_decision"]["action"] == "auto_rollback");
        if done { Ok(statuses) } else { Err(format!("{statuses:?}")) }
    });
    let all_off = started.elapsed();
    let followed = Instant::now();
    load.wait_answered(30, PATIENCE);
    let (tally, errors) = load.finish();
    let sums = summed(&tally, &errors, &stable);
    let on_canary = sums.get(&canary).copied().unwrap_or_default();
    assert!(on_canary.0 >= 30, "the canary served requests: {sums:?}");
    assert_eq!(on_canary.1, 0, "the canary failed no request, it was only slow: {sums:?}");
    for served in &tally {
        let last = served.get(&canary).and_then(|s| s.last_sent);
        assert!(last.is_none_or(|t| t < followed), "a host served the canary after the fleet followed");
    }

    let manifest = store.manifest().unwrap();
    assert_eq!(manifest["canary"], Value::Null, "{manifest:#}");
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&echo())), "{manifest:#}");
    assert_eq!(auto_rollbacks(&manifest).len(), 1, "one automatic rollback: {manifest:#}");
    let decision = &manifest["last_decision"];
    assert_eq!(decision["action"], "auto_rollback", "{decision}");
    assert_eq!(decision["version"], format!("sha256:{}", sha256(&misbehave())), "{decision}");
    assert_eq!(decision["canary"]["failures"], 0, "{decision}");
    let reason = decision["reason"].as_str().unwrap();
    let slow = millis_after(reason, "canary p95 latency");
    let base = millis_after(reason, "stable's p95");
    assert!(slow > 200.0 && slow < 600.0, "the canary's p95 is its 300 ms sleep: {reason}");
    assert!(base < slow / 2.0, "stable's p95 under half the canary's: {reason}");
    assert!(reason.contains("over 2x stable's") && reason.ends_with("over the 100 ms floor"), "{reason}");
    for status in &statuses {
        assert_eq!(status["last_decision"], *decision, "{status}");
    }
    eprintln!(
        "latency rollback: canary started -> every host on stable in {} ms; served {sums:?}; decision by {}: {reason}",
        all_off.as_millis(),
        decision["by"]
    );
}

/// Two hosts, stable `misbehave` (p2), a canary of `misbehave-p3` with steps 50,100 every 2 s,
/// all traffic to `/sleep?ms=150`: both versions' p95 are over the 100 ms floor and within 2x
/// of each other, so the latency rule judges (and passes) the canary at each step, and it
/// becomes stable. The promotions' reasons carry both p95s.
#[test]
fn a_canary_within_the_latency_ratio_steps_up_to_stable() {
    let store = Store::new("canary-as-slow");
    let url = store.gcs.url();
    let flags = ["--canary-window", "5s", "--canary-min-requests", "20"];
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &url], &flags);
    let http = http();
    let p2 = misbehave();
    let p3 = std::fs::read(util::misbehave_p3_wasm()).unwrap();
    let (status, body) = push(&http, &hosts[0], &p2, "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &p2, "stable");

    let urls: Vec<String> = hosts.iter().map(|h| h.url("/sleep?ms=150")).collect();
    let load = Load::start(&urls, 4, Duration::from_millis(5));
    load.wait_answered(20, PATIENCE);
    let started = Instant::now();
    start_canary(&http, &hosts[0], p3.clone(), "?weight=50&steps=50,100&step_interval=2s");
    let manifest = eventually("the canary to become stable", PATIENCE + PATIENCE, || {
        let manifest = store.manifest().unwrap();
        let done = manifest["canary"].is_null() && manifest["stable"] == format!("sha256:{}", sha256(&p3));
        if done { Ok(manifest) } else { Err(manifest.to_string()) }
    });
    let took = started.elapsed();
    let (tally, errors) = load.finish();
    let sums = summed(&tally, &errors, &version(&p2));
    assert_eq!(sums.values().map(|s| s.1).sum::<u64>(), 0, "no request failed: {sums:?}");
    assert!(auto_rollbacks(&manifest).is_empty(), "rolled back: {manifest:#}");
    let history = manifest["history"].as_array().unwrap();
    let promotions: Vec<&str> = history
        .iter()
        .filter(|h| h["action"] == "auto_promote")
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert!(!promotions.is_empty(), "{manifest:#}");
    // The step that made it stable judged both p95s: each its 150 ms sleep.
    let reason = promotions[0];
    let latency = reason.split("; p95 latency").nth(1).unwrap_or_else(|| panic!("no p95s in {reason:?}"));
    let (canary_p95, stable_p95) = (millis_after(latency, "canary"), millis_after(latency, "stable"));
    assert!(canary_p95 > 100.0 && stable_p95 > 100.0, "both over the floor: {reason}");
    assert!(canary_p95 < 2.0 * stable_p95, "within the ratio: {reason}");
    eprintln!("canary as slow as stable promoted in {took:.1?}; served {sums:?}; steps: {promotions:?}");
}
