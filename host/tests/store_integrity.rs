//! The release store under races and bad contents (issue #33): two rollbacks at once, a manifest
//! a rewrite would make unreadable, a write whose reply is lost, a manifest replaced while it is
//! read, and what hand-written contents may do to terminals, prefixes, admin bodies and answers.
//!
//! Every test has its own emulator and bucket and real `echo-host` processes; faults come from
//! the [`StorageProxy`] or from objects written by hand. Tests wait for what they need by polling
//! an endpoint against a deadline, never by sleeping.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::fleet::{
    ADMIN, PATIENCE, Store, TOKEN, answer, echo, eventually, get_json, http, info, misbehave, push,
    rfc3339_now, serving, sha256, variant, version, wait_all_serve,
};
use crate::util::gcs::{Mode, StorageProxy};
use crate::util::{self, HostProcess, run_cli};

/// Largest manifest every host reads (`MAX_MANIFEST_SIZE`).
const MAX_MANIFEST_SIZE: usize = 1 << 20;

fn post(http: &reqwest::blocking::Client, host: &HostProcess, path_and_query: &str) -> (u16, Value) {
    let url = host.url(&format!("{ADMIN}/{path_and_query}"));
    answer(http.post(&url).bearer_auth(TOKEN).send().unwrap_or_else(|e| panic!("POST {url}: {e}")))
}

/// Waits until `host` has read the manifest of generation `generation`.
fn wait_followed(http: &reqwest::blocking::Client, host: &HostProcess, generation: &str) {
    eventually(&format!("{} to read manifest generation {generation}", host.addr), PATIENCE, || {
        let seen = info(http, host)["store"]["manifest_generation"].clone();
        if seen == generation { Ok(()) } else { Err(seen.to_string()) }
    });
}

/// The manifest as it is, with `change` applied, written by hand; returns its generation.
fn edit_manifest(store: &Store, change: impl FnOnce(&mut Value)) -> String {
    let mut manifest = store.manifest().expect("a manifest to edit");
    change(&mut manifest);
    store.write_manifest(manifest.to_string().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// 4. Two rollbacks at once
// ---------------------------------------------------------------------------------------------

/// Stable A, previous B; two rollbacks sent at once to two hosts, five times: exactly one
/// answers 200 and the fleet ends on B (before: often both, one undoing the other, back on A).
/// `?if_generation=` is honoured: another generation is a 409 with the current manifest; naming
/// it (or the target) undoes a recent rollback on purpose.
#[test]
fn two_rollbacks_at_once_roll_back_once() {
    let store = Store::new("rollbacks");
    let hosts = store.start_direct(2);
    let http = http();
    let (a, b) = (misbehave(), variant(&echo(), 1));
    for bytes in [&b, &a] {
        let (status, body) = push(&http, &hosts[0], bytes, "");
        assert_eq!(status, 200, "{body}");
    }

    for trial in 0..5 {
        let barrier = Barrier::new(2);
        let outcomes: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let racers: Vec<_> = hosts
                .iter()
                .map(|host| {
                    let (barrier, http) = (&barrier, &http);
                    scope.spawn(move || {
                        barrier.wait();
                        post(http, host, "rollback")
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won: Vec<&(u16, Value)> = outcomes.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(won.len(), 1, "trial {trial}: exactly one rollback succeeds: {outcomes:#?}");
        let (_, lost) = outcomes.iter().find(|(s, _)| *s != 200).unwrap();
        assert!(
            matches!(lost["kind"].as_str(), Some("conflict" | "recent_rollback")),
            "trial {trial}: the other is refused as a conflict: {outcomes:#?}"
        );
        assert_eq!(won[0].1["sha256"], sha256(&b), "{outcomes:#?}");
        let manifest = store.manifest().unwrap();
        assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&b)), "trial {trial}: {manifest}");
        let rollbacks =
            manifest["history"].as_array().unwrap().iter().take_while(|e| e["action"] == "rollback");
        assert_eq!(rollbacks.count(), 1, "trial {trial}: one rollback entry on top: {manifest}");
        // Stable A, previous B again.
        let (status, body) = push(&http, &hosts[trial % 2], &a, "");
        assert_eq!(status, 200, "{body}");
    }
    wait_all_serve(&http, &hosts, &a, "A");

    let current = store.manifest_generation().unwrap();
    let (status, body) = post(&http, &hosts[1], "rollback?if_generation=1");
    assert_eq!((status, body["kind"].as_str()), (409, Some("conflict")), "{body}");
    assert_eq!(body["manifest_generation"], current.as_str(), "{body}");
    assert_eq!(body["manifest"]["stable"], format!("sha256:{}", sha256(&a)), "{body}");
    assert_eq!(body["released"], false, "{body}");
    assert_eq!(store.manifest_generation().unwrap(), current, "a refused rollback writes nothing");

    // A rollback that names its target, or the generation it saw, is never refused as an undo.
    let (status, body) = post(&http, &hosts[0], "rollback");
    assert_eq!(status, 200, "{body}");
    let generation = store.manifest_generation().unwrap();
    let (status, body) = post(&http, &hosts[1], "rollback");
    assert_eq!((status, body["kind"].as_str()), (409, Some("recent_rollback")), "{body}");
    assert!(body["error"].as_str().unwrap().contains(&generation), "names the generation: {body}");
    let (status, body) = post(&http, &hosts[1], &format!("rollback?if_generation={generation}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sha256"], sha256(&a), "{body}");
}

// ---------------------------------------------------------------------------------------------
// 5. A write that would make the manifest unreadable
// ---------------------------------------------------------------------------------------------

/// A manifest carrying a large unknown field (kept for newer hosts): a push rewrites it compact,
/// so it stays readable and B reaches every host. One that a push would take over the limit every
/// host reads is refused with 413 naming the size, and the manifest is left as it was.
#[test]
fn a_push_never_makes_the_manifest_unreadable() {
    let store = Store::new("large");
    let hosts = store.start_direct(2);
    let http = http();
    let (a, b, c) = (misbehave(), variant(&echo(), 1), variant(&echo(), 2));
    let (status, body) = push(&http, &hosts[0], &a, "");
    assert_eq!(status, 200, "{body}");

    // ~120 KB compact, over 1 MiB pretty-printed: deeply nested arrays.
    let nested: Value = serde_json::from_str(&format!("{}0{}", "[".repeat(24), "]".repeat(24))).unwrap();
    let future = json!(vec![nested; 2400]);
    edit_manifest(&store, |m| m["future"] = future.clone());
    let before = store.gcs.get(&store.bucket, &Store::object("manifest.json")).unwrap().len();
    assert!((100_000..MAX_MANIFEST_SIZE / 4).contains(&before), "{before} bytes");
    assert!(
        serde_json::to_vec_pretty(&future).unwrap().len() > MAX_MANIFEST_SIZE,
        "pretty is over the limit"
    );

    let (status, body) = push(&http, &hosts[1], &b, "");
    assert_eq!(status, 200, "{body}");
    let after = store.gcs.get(&store.bucket, &Store::object("manifest.json")).unwrap();
    assert!(after.len() < before + 2048, "rewritten compact: {before} -> {} bytes", after.len());
    let manifest = store.manifest().unwrap();
    assert_eq!(manifest["future"], future, "the unknown field is kept");
    wait_all_serve(&http, &hosts, &b, "B");

    // Just under the limit: a push would add a history entry and go over it.
    let current = store.gcs.get(&store.bucket, &Store::object("manifest.json")).unwrap().len();
    let padding = MAX_MANIFEST_SIZE - 100 - current;
    let generation = edit_manifest(&store, |m| m["padding"] = json!("x".repeat(padding)));
    let size = store.gcs.get(&store.bucket, &Store::object("manifest.json")).unwrap().len();
    assert!(size <= MAX_MANIFEST_SIZE, "{size} bytes: still readable");
    wait_followed(&http, &hosts[0], &generation);
    let (status, body) = push(&http, &hosts[0], &c, "");
    assert_eq!((status, body["kind"].as_str()), (413, Some("too_large")), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&MAX_MANIFEST_SIZE.to_string()) && error.contains("bytes"),
        "names the sizes: {body}"
    );
    assert_eq!(body["released"], false, "{body}");
    assert_eq!(store.manifest_generation().unwrap(), generation, "nothing written");
    for host in &hosts {
        assert_eq!(serving(&http, host), version(&b));
    }
}

// ---------------------------------------------------------------------------------------------
// 7. A write whose reply is lost
// ---------------------------------------------------------------------------------------------

/// The proxy forwards every manifest write and drops its reply: a push, a rollback, a canary start
/// and an abort each read the manifest back and answer what happened (made: 200, the generation
/// written), never a 503 that says nothing was released while the fleet follows.
#[test]
fn a_write_whose_reply_is_lost_is_resolved_by_reading_back() {
    let store = Store::new("lost");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &endpoint], &[]);
    let http = http();
    let (a, b, c) = (misbehave(), variant(&echo(), 1), variant(&echo(), 2));
    let (status, body) = push(&http, &hosts[0], &a, "");
    assert_eq!(status, 200, "{body}");

    proxy.set_mode(Mode::DropReplyToWrites("manifest.json"));
    // Writes met in this mode and never answered.
    let dropped = || {
        let seen = proxy.seen();
        seen.iter()
            .filter(|s| matches!(s.mode, Mode::DropReplyToWrites(_)) && s.is_write() && s.status.is_none())
            .count()
    };
    let (status, body) = push(&http, &hosts[1], &b, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"], true, "{body}");
    assert_eq!(body["manifest_generation"], store.manifest_generation().unwrap().as_str(), "{body}");
    assert_eq!(store.manifest().unwrap()["stable"], format!("sha256:{}", sha256(&b)));
    assert!(dropped() >= 1, "the proxy saw the write");
    wait_all_serve(&http, &hosts, &b, "B");

    let (status, body) = post(&http, &hosts[0], "rollback");
    assert_eq!((status, &body["sha256"]), (200, &json!(sha256(&a))), "{body}");
    assert_eq!(body["manifest_generation"], store.manifest_generation().unwrap().as_str(), "{body}");

    // The canary changes in `rollout/change.rs`.
    let url = hosts[1].url(&format!("{ADMIN}/release?weight=10"));
    let (status, body) = answer(http.post(&url).bearer_auth(TOKEN).body(c.clone()).send().unwrap());
    assert_eq!(status, 200, "{body}");
    assert_eq!(store.manifest().unwrap()["canary"]["version"], format!("sha256:{}", sha256(&c)));
    let (status, body) = post(&http, &hosts[0], "release/abort");
    assert_eq!(status, 200, "{body}");
    assert_eq!(store.manifest().unwrap()["canary"], Value::Null);
    let writes = dropped();
    assert!(writes >= 4, "four manifest writes, each reply dropped: {writes}");
    proxy.set_mode(Mode::Pass);
    wait_all_serve(&http, &hosts, &a, "A");
}

/// The store takes the manifest write, drops the reply and then answers nothing but 503: the push
/// cannot tell, and says so (503 `outcome_unknown`, `"released": null`) instead of "nothing was
/// released"; once the store is back the fleet follows the write that was made.
#[test]
fn a_write_that_cannot_be_read_back_is_reported_unknown() {
    let store = Store::new("unknown");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let hosts = store.start_hosts(1, &["--storage-emulator-host", &endpoint], &[]);
    let (host, http) = (&hosts[0], http());
    let (status, body) = push(&http, host, &misbehave(), "");
    assert_eq!(status, 200, "{body}");

    let b = variant(&echo(), 1);
    proxy.set_mode(Mode::DropReplyThenStatus("manifest.json", 503));
    let (status, body) = push(&http, host, &b, "");
    assert_eq!((status, body["kind"].as_str()), (503, Some("outcome_unknown")), "{body}");
    assert_eq!(body["released"], Value::Null, "{body}");
    assert!(!body["error"].as_str().unwrap().contains("nothing was released"), "{body}");
    assert_eq!(proxy.mode(), Mode::Status(503), "the write's reply was dropped");
    assert_eq!(store.manifest().unwrap()["stable"], format!("sha256:{}", sha256(&b)), "it was made");
    proxy.set_mode(Mode::Pass);
    wait_all_serve(&http, &hosts, &b, "B");
}

// ---------------------------------------------------------------------------------------------
// 8. A manifest replaced while it is read
// ---------------------------------------------------------------------------------------------

/// An admin call on a host: its status and JSON answer.
type AdminCall = fn(&reqwest::blocking::Client, &HostProcess) -> (u16, Value);

/// The generation just read from the metadata is replaced before its download (a concurrent
/// write): admin calls read the metadata again instead of answering 503.
#[test]
fn a_manifest_replaced_mid_read_is_read_again() {
    let store = Store::new("replaced");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let hosts = store.start_hosts(1, &["--storage-emulator-host", &endpoint], &[]);
    let (host, http) = (&hosts[0], http());
    let (status, body) = push(&http, host, &misbehave(), "");
    assert_eq!(status, 200, "{body}");

    let calls: [(&str, AdminCall); 3] = [
        ("POST release/abort", |http, host| post(http, host, "release/abort")),
        ("GET fleet", |http, host| get_json(http, &host.url(&format!("{ADMIN}/fleet")))),
        ("POST rollback", |http, host| post(http, host, "rollback")),
    ];
    for (name, call) in calls {
        // The follower is done with the last generation, so the call is the one that downloads.
        wait_followed(&http, host, &store.manifest_generation().unwrap());
        let from = proxy.count();
        proxy.set_mode(Mode::ReplaceOnceBeforeDownload("manifest.json"));
        let (status, body) = call(&http, host);
        assert_ne!(status, 503, "{name}: {body}");
        assert!(matches!(status, 200 | 409), "{name}: {status} {body}");
        let missed = proxy.seen()[from..].iter().any(|s| s.is_media() && s.status == Some(404));
        assert!(missed, "{name}: the download of the replaced generation was a 404");
        assert_eq!(proxy.mode(), Mode::Pass);
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Smaller: terminals, prefixes, admin bodies, history
// ---------------------------------------------------------------------------------------------

/// A heartbeat and a history entry carrying terminal escape sequences: `echo-host fleet` and
/// `echo-host release status` print them without a control character.
#[test]
fn terminal_output_has_no_control_characters() {
    let store = Store::new("escapes");
    let url = store.gcs.url();
    let hosts = store.start_hosts(1, &["--storage-emulator-host", &url], &["--heartbeat-interval", "1h"]);
    let (host, http) = (&hosts[0], http());
    let (status, body) = push(&http, host, &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    let evil = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m";
    let beat = json!({
        "schema": 1, "instance": evil, "revision": evil, "service": null,
        "active": { "sha256": format!("{}{evil}", sha256(&misbehave())), "version": evil },
        "manifest_generation": evil, "last_swap": null,
        "last_rejection": { "sha256": evil, "reason": evil }, "store_error": evil,
        "requests": 1, "errors": 0, "at": rfc3339_now(), "interval_s": 3600.0,
    });
    store.gcs.put(&store.bucket, &Store::object("instances/evil.json"), beat.to_string().as_bytes());
    let generation = edit_manifest(&store, |m| {
        m["history"][0]["by"] = json!(evil);
        m["history"][0]["reason"] = json!(evil);
    });
    wait_followed(&http, host, &generation);

    let token = store.token_file();
    let base = host.url("");
    for command in [&["fleet"][..], &["release", "status"][..]] {
        let mut args = command.to_vec();
        args.extend([base.as_str(), "--token-file", token.to_str().unwrap()]);
        let (exit, stdout, stderr) = run_cli(&args, Duration::from_secs(60));
        assert!(exit.success(), "{command:?}: {stderr}");
        assert!(stdout.contains("evil"), "{command:?} shows the entry:\n{stdout}");
        let control: Vec<char> = stdout.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(control.is_empty(), "{command:?} printed control characters {control:?}:\n{stdout:?}");
    }
}

/// `?to=` with a 12-hex prefix two history entries share is refused (409 naming both), not
/// resolved to the newest.
#[test]
fn an_ambiguous_prefix_is_refused() {
    let store = Store::new("prefix");
    let hosts = store.start_direct(1);
    let (host, http) = (&hosts[0], http());
    let (status, body) = push(&http, host, &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    let shared = "abcdef012345";
    let (one, two) = (format!("{shared}{}", "1".repeat(52)), format!("{shared}{}", "2".repeat(52)));
    for sha in [&one, &two] {
        store.write_component(sha, &echo());
    }
    edit_manifest(&store, |m| {
        let history = m["history"].as_array_mut().unwrap();
        for sha in [&one, &two] {
            history.push(json!({ "stable": format!("sha256:{sha}"), "at": rfc3339_now(), "by": "hand", "action": "push" }));
        }
    });
    let generation = store.manifest_generation().unwrap();
    let (status, body) = post(&http, host, &format!("rollback?to=sha256:{shared}"));
    assert_eq!((status, body["kind"].as_str()), (409, Some("ambiguous")), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&one) && error.contains(&two), "names both: {body}");
    assert_eq!(store.manifest_generation().unwrap(), generation, "nothing written");
}

/// An admin upload trickled a byte every 200 ms is cut at `--request-timeout` (408), not held
/// open for as long as the client keeps trickling.
#[test]
fn a_trickled_admin_upload_ends_at_the_request_deadline() {
    let dir = util::scratch_dir();
    let token = util::write_file(dir.path(), "token", TOKEN.as_bytes());
    let host = HostProcess::start(
        &[
            "--admin-token-file",
            token.to_str().unwrap(),
            "--request-timeout",
            "2s",
            "--body-read-timeout",
            "30s",
        ],
        &[],
    );
    let mut stream = TcpStream::connect(host.addr).unwrap();
    let head = format!(
        "PUT {ADMIN}/component HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // Stops when the host closes the connection, or after 100 s.
        for _ in 0..500 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer after {:?}: {e}", started.elapsed()),
        }
    }
    let took = started.elapsed();
    assert_eq!(util::raw_status(&response), 408, "{}", String::from_utf8_lossy(&response));
    // 2 s, plus whatever a busy machine adds; the trickle alone would last 100 s.
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    // The trickle ends when its writes fail; the test need not wait for it.
    drop((stream, trickle));
}

/// A manifest with 3,000 history entries (written by another tool): `GET admin/release` and the
/// fleet view answer the newest 20, as documented.
#[test]
fn history_in_answers_is_bounded() {
    let store = Store::new("history");
    let hosts = store.start_direct(1);
    let (host, http) = (&hosts[0], http());
    let (status, body) = push(&http, host, &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    let stable = format!("sha256:{}", sha256(&misbehave()));
    let generation = edit_manifest(&store, |m| {
        let entry = json!({ "stable": stable, "at": rfc3339_now(), "by": "another tool", "action": "push" });
        m["history"] = json!(vec![entry; 3000]);
    });
    wait_followed(&http, host, &generation);
    let (status, release) = get_json(&http, &host.url(&format!("{ADMIN}/release")));
    assert_eq!(status, 200, "{release}");
    assert_eq!(release["history"].as_array().map(Vec::len), Some(20), "GET admin/release");
    let (status, fleet) = get_json(&http, &host.url(&format!("{ADMIN}/fleet")));
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["manifest"]["history"].as_array().map(Vec::len), Some(20), "GET admin/fleet");
}
