//! What running and new instances do with what the store holds (issue #33, items 1, 2, 3, 6, 9):
//! a release is applied whole or not at all and a canary no manifest names gets no request; a
//! new instance checks a component against its name and never becomes ready on another
//! application when the store's release is unusable; problems stay reported until resolved; the
//! fleet view stays bounded however many heartbeats the store holds.
//!
//! Manifests and objects are written by hand into the emulator, as an operator (or a fault)
//! would; every test waits on what it can observe (logs, info, metrics, responses).

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::fleet::{
    ADMIN, PATIENCE, Store, TOKEN, echo, eventually, get_json, http, info, metric, misbehave, rfc3339_now,
    serving, sha256, variant, version, wait_all_serve,
};
use crate::util::{HostProcess, run_cli};

const RELEASE: &str = "/.well-known/echo-host/admin/release";

/// A manifest by hand: `stable`, and a canary at `weight` % when given.
fn manifest(stable: &str, canary: Option<(&str, f64)>) -> Value {
    let now = rfc3339_now();
    let canary = canary.map(|(sha, weight)| {
        json!({ "version": format!("sha256:{sha}"), "weight": weight, "steps": [], "step_interval_ms": 0,
                "step_started_at": now, "started_at": now, "started_by": "hand" })
    });
    json!({ "schema": 1, "stable": format!("sha256:{stable}"), "canary": canary,
            "history": [{ "stable": format!("sha256:{stable}"), "at": now, "by": "hand", "action": "push" }] })
}

fn put_component(store: &Store, bytes: &[u8]) -> String {
    let sha = sha256(bytes);
    store.write_component(&sha, bytes);
    sha
}

/// The versions that answered `n` requests to `host`'s `/`.
fn served(
    http: &reqwest::blocking::Client,
    host: &HostProcess,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let response = http.get(host.url("/")).send().unwrap();
        assert_eq!(response.status(), 200);
        let version = response.headers()["echo-host-component"].to_str().unwrap().to_string();
        *seen.entry(version).or_insert(0) += 1;
    }
    seen
}

/// Waits until `info`'s `store.release_problem` on `host` contains `needle`; returns the store part.
fn wait_problem(http: &reqwest::blocking::Client, host: &HostProcess, needle: &str) -> Value {
    eventually(&format!("info to report a release problem naming `{needle}`"), PATIENCE, || {
        let store = info(http, host)["store"].clone();
        let problem = store["release_problem"]["message"].as_str().unwrap_or_default();
        if problem.contains(needle) { Ok(store) } else { Err(store.to_string()) }
    })
}

/// Item 1: a release whose canary is missing from the store is not applied at all, and the
/// canary of the release before it (which it no longer names) gets no request meanwhile.
#[test]
fn a_canary_the_manifest_no_longer_names_gets_no_request() {
    let store = Store::new("whole");
    let (a, b) = (put_component(&store, &echo()), put_component(&store, &misbehave()));
    let e = put_component(&store, &variant(&echo(), 4));
    let d_bytes = variant(&echo(), 5);
    let d = sha256(&d_bytes);
    store.write_manifest(manifest(&a, Some((&b, 50.0))).to_string().as_bytes());
    let hosts = store.start_direct(2);
    let http = http();
    for host in &hosts {
        eventually("the host to route to canary B", PATIENCE, || {
            let seen = served(&http, host, 10);
            if seen.contains_key(&version(&misbehave())) { Ok(()) } else { Err(format!("{seen:?}")) }
        });
    }

    store.write_manifest(manifest(&e, Some((&d, 50.0))).to_string().as_bytes());
    for host in &hosts {
        wait_problem(&http, host, &d);
        let seen = served(&http, host, 40);
        // Not B (no longer named), not D (missing), not E alone (that is half the release).
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), [version(&echo())], "{}: {seen:?}", host.addr);
        assert_eq!(metric(&http, host, "echo_host_release_problem"), 1.0);
    }
    let (_, fleet) = get_json(&http, &hosts[0].url(&format!("{ADMIN}/fleet")));
    eventually("the heartbeats to carry the problem", PATIENCE, || {
        let (_, fleet) = get_json(&http, &hosts[0].url(&format!("{ADMIN}/fleet")));
        let rows = fleet["instances"].as_array().cloned().unwrap_or_default();
        let all =
            rows.len() == 2 && rows.iter().all(|r| r["store_error"].as_str().is_some_and(|s| s.contains(&d)));
        if all { Ok(()) } else { Err(fleet.to_string()) }
    });
    assert!(fleet["converged"] != true, "{fleet}");

    // The missing canary arrives: the whole release goes live, the problem clears.
    store.write_component(&d, &d_bytes);
    for host in &hosts {
        eventually("the whole release: E stable, D canary", PATIENCE, || {
            let seen = served(&http, host, 20);
            let whole = seen.len() == 2
                && seen.contains_key(&version(&variant(&echo(), 4)))
                && seen.contains_key(&version(&d_bytes));
            if whole { Ok(()) } else { Err(format!("{seen:?}")) }
        });
        assert!(info(&http, host)["store"]["release_problem"].is_null());
        assert_eq!(metric(&http, host, "echo_host_release_problem"), 0.0);
    }
}

/// Item 2: a component stored under a name its bytes do not hash to is refused by a new host
/// as by a running one: the new host does not become ready (and serves nothing else); once the
/// manifest names a good release it starts on that.
#[test]
fn a_new_host_checks_a_component_against_its_name() {
    let store = Store::new("names");
    let liar = "e".repeat(64);
    store.write_component(&liar, &misbehave());
    store.write_manifest(manifest(&liar, None).to_string().as_bytes());
    let args = store.host_args(&["--storage-emulator-host", &store.gcs.url()], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = HostProcess::spawn(&args, &[]);
    let line = host.wait_for_line("not ready", PATIENCE).expect("a `not ready` line");
    assert!(line.contains("hash to") && line.contains(&sha256(&misbehave())), "{line}");
    assert!(!host.listening(), "the host listens although the store's release is unusable");

    let good = variant(&echo(), 6);
    let sha = put_component(&store, &good);
    store.write_manifest(manifest(&sha, None).to_string().as_bytes());
    eventually("the host to start on the good release", PATIENCE, || {
        if host.listening() { Ok(()) } else { Err("not listening".into()) }
    });
    assert_eq!(serving(&http(), &host), version(&good));
}

/// Item 3: a new host never becomes ready on another application while the store names a
/// release it cannot read: a manifest over the size limit (the running host keeps its release
/// and its fleet view still answers), a manifest deleted while the fleet serves it; a bucket
/// that does not exist stops the host at once with a message saying what to do.
#[test]
fn a_new_host_does_not_serve_another_application_when_the_release_is_unreadable() {
    let store = Store::new("unreadable");
    let good = variant(&echo(), 7);
    let sha = put_component(&store, &good);
    store.write_manifest(manifest(&sha, None).to_string().as_bytes());
    let running = store.start_direct(1);
    let http = http();
    wait_all_serve(&http, &running, &good, "the release");
    let args = store.host_args(&["--storage-emulator-host", &store.gcs.url()], &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Over the 1 MiB every host reads.
    let mut huge = manifest(&sha, None);
    huge["padding"] = json!("x".repeat(1_200_000));
    store.write_manifest(huge.to_string().as_bytes());
    wait_problem(&http, &running[0], "limit");
    let (status, fleet) = get_json(&http, &running[0].url(&format!("{ADMIN}/fleet")));
    assert_eq!(status, 200, "{fleet}");
    assert!(fleet["manifest_error"].as_str().is_some_and(|e| e.contains("limit")), "{fleet}");
    assert_eq!(fleet["instances"].as_array().map(Vec::len), Some(1), "{fleet}");
    let late = HostProcess::spawn(&args, &[]);
    let line = late.wait_for_line("not ready", PATIENCE).expect("a `not ready` line");
    assert!(line.contains("limit"), "{line}");
    assert!(!late.listening());
    drop(late);
    assert_eq!(serving(&http, &running[0]), version(&good), "the running host keeps its release");

    // Deleted while the fleet serves it (the heartbeat of the running host says so).
    store.write_manifest(manifest(&sha, None).to_string().as_bytes());
    eventually("the running host's heartbeat to name a manifest generation", PATIENCE, || {
        let (_, fleet) = get_json(&http, &running[0].url(&format!("{ADMIN}/fleet")));
        let generation = &fleet["instances"][0]["manifest_generation"];
        if generation.is_string() && fleet["instances"][0]["store_error"].is_null() {
            Ok(())
        } else {
            Err(fleet.to_string())
        }
    });
    assert!(store.gcs.delete(&store.bucket, &Store::object("manifest.json")));
    wait_problem(&http, &running[0], "deleted");
    let late = HostProcess::spawn(&args, &[]);
    let line = late.wait_for_line("not ready", PATIENCE).expect("a `not ready` line");
    assert!(line.contains("was deleted"), "{line}");
    assert!(!late.listening());
    assert_eq!(serving(&http, &running[0]), version(&good));

    // No such bucket: a clear error at start, no port.
    let mut missing = args.clone();
    let at = missing.iter().position(|a| *a == "--store").unwrap();
    missing[at + 1] = "gs://no-such-bucket/fleet/";
    let (status, stdout, stderr) = run_cli(&missing, Duration::from_secs(60));
    assert!(!status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("`gs://no-such-bucket` does not exist") && stderr.contains("buckets create"),
        "{stderr}"
    );
}

/// Item 9: an invalid manifest stays reported (info, heartbeat, fleet view, metric) poll after
/// poll until a valid one replaces it; a deleted bucket is reported as such, not as "no release".
#[test]
fn store_problems_stay_reported_until_resolved() {
    let store = Store::new("problems");
    let sha = put_component(&store, &echo());
    store.write_manifest(manifest(&sha, None).to_string().as_bytes());
    let hosts = store.start_direct(1);
    let http = http();
    store.write_manifest(b"{ not json");
    wait_problem(&http, &hosts[0], "not valid JSON");
    let polls = metric(&http, &hosts[0], "echo_host_store_polls_total");
    eventually("three more polls", PATIENCE, || {
        let now = metric(&http, &hosts[0], "echo_host_store_polls_total");
        if now >= polls + 3.0 { Ok(()) } else { Err(format!("{now}")) }
    });
    let state = info(&http, &hosts[0])["store"].clone();
    assert!(
        state["release_problem"]["message"].as_str().is_some_and(|m| m.contains("not valid JSON")),
        "{state}"
    );
    assert_eq!(metric(&http, &hosts[0], "echo_host_release_problem"), 1.0);
    eventually("the fleet view to show the problem", PATIENCE, || {
        let (_, fleet) = get_json(&http, &hosts[0].url(&format!("{ADMIN}/fleet")));
        let error = fleet["instances"][0]["store_error"].as_str().unwrap_or_default().to_string();
        if error.contains("not valid JSON") { Ok(()) } else { Err(fleet.to_string()) }
    });
    store.write_manifest(manifest(&sha, None).to_string().as_bytes());
    eventually("the problem to clear", PATIENCE, || {
        let state = info(&http, &hosts[0])["store"].clone();
        if state["release_problem"].is_null() { Ok(()) } else { Err(state.to_string()) }
    });
    assert_eq!(metric(&http, &hosts[0], "echo_host_release_problem"), 0.0);

    store.gcs.delete_bucket(&store.bucket);
    let state = wait_problem(&http, &hosts[0], "does not exist");
    assert!(state["release_problem"]["message"].as_str().unwrap().contains("gs://problems"), "{state}");
    assert_eq!(serving(&http, &hosts[0]), version(&echo()), "the release keeps serving");
}

/// Item 6: 600 heartbeats of 60 KB in the store: the fleet view reads the newest 500 a few at a
/// time, says how many it left out, keeps its answer small, and the host's sockets and memory
/// stay bounded.
#[test]
fn the_fleet_view_is_bounded() {
    let store = Store::new("crowd");
    let hosts = store.start_direct(1);
    let http = http();
    let filler = "x".repeat(60_000);
    std::thread::scope(|scope| {
        for part in 0..4 {
            let (store, filler) = (&store, &filler);
            scope.spawn(move || {
                for i in (part..600).step_by(4) {
                    let beat = json!({
                        "schema": 1, "instance": format!("ghost-{i:04}"), "revision": null, "service": null,
                        "active": { "sha256": "0".repeat(64), "version": "sha256:000000000000" },
                        "manifest_generation": null, "last_swap": null, "last_rejection": null,
                        "store_error": filler, "requests": 0, "errors": 0, "at": rfc3339_now(), "interval_s": 1.0,
                    });
                    store.gcs.put(&store.bucket, &Store::object(&format!("instances/ghost-{i:04}.json")), beat.to_string().as_bytes());
                }
            });
        }
    });
    let rss = |host: &HostProcess| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", host.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse::<u64>()
            .unwrap()
    };
    let before = rss(&hosts[0]);
    let started = std::time::Instant::now();
    let response = http.get(hosts[0].url(&format!("{ADMIN}/fleet"))).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().unwrap();
    let took = started.elapsed();
    let view: Value = serde_json::from_slice(&body).unwrap();
    let listed = view["instances"].as_array().unwrap().len();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", hosts[0].child.id())).unwrap().count();
    let after = rss(&hosts[0]);
    eprintln!(
        "fleet view of 601 heartbeats: {listed} listed, {} omitted, {} bytes in {took:?}; RSS {before} -> {after} kB; {fds} fds",
        view["omitted"],
        body.len()
    );
    assert_eq!(listed, 500, "the newest 500");
    assert_eq!(view["omitted"], 101);
    assert!(body.len() < 2 << 20, "{} bytes", body.len());
    assert!(fds < 200, "{fds} open fds after the view");
    assert!(after < before + 200 * 1024, "RSS {before} -> {after} kB");
    let _ = get_json(&http, &hosts[0].url(RELEASE));
}

/// The first release (issue #27): on a store without one, a canary starts beside the version
/// the fleet serves (its `--component`, written to the store as the release's stable), and a
/// rollback after the first push returns to that version.
#[test]
fn the_first_release_remembers_what_the_fleet_served() {
    let store = Store::new("first");
    let hosts = store.start_direct(2);
    let http = http();
    let start = http.post(hosts[0].url(&format!("{RELEASE}?weight=50"))).bearer_auth(TOKEN).body(misbehave());
    let started = start.send().unwrap();
    assert_eq!(started.status(), 200, "a canary on a store without a release: {}", started.text().unwrap());
    let manifest = store.manifest().expect("a manifest");
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&echo())), "{manifest}");
    assert_eq!(manifest["canary"]["version"], format!("sha256:{}", sha256(&misbehave())), "{manifest}");
    let seeded = manifest["history"].as_array().unwrap().last().cloned().unwrap();
    assert!(seeded["reason"].as_str().is_some_and(|r| r.contains("before its first release")), "{manifest}");
    assert!(
        store
            .gcs
            .get(&store.bucket, &Store::object(&format!("components/{}.wasm", sha256(&echo()))))
            .is_some()
    );
    for host in &hosts {
        eventually("both versions served", PATIENCE, || {
            let seen = served(&http, host, 20);
            if seen.len() == 2 { Ok(()) } else { Err(format!("{seen:?}")) }
        });
    }
    let aborted = http.post(hosts[1].url(&format!("{RELEASE}/abort"))).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(aborted.status(), 200);

    // A fresh store: the first push, then a rollback to what served before it.
    let other = Store::new("first-push");
    let hosts = other.start_direct(2);
    let next = variant(&echo(), 8);
    assert_eq!(crate::util::fleet::push(&http, &hosts[0], &next, "").0, 200);
    wait_all_serve(&http, &hosts, &next, "the first push");
    let back = http.post(hosts[1].url(&format!("{ADMIN}/rollback"))).bearer_auth(TOKEN).send().unwrap();
    let (status, body) = (back.status(), back.text().unwrap());
    assert_eq!(status, 200, "a rollback after the first push: {body}");
    wait_all_serve(&http, &hosts, &echo(), "the version served before the first push");
}
