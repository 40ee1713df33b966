//! The fleet release store on Cloud Storage, against the real emulator (`fake-gcs-server`) and
//! real `echo-host` processes on loopback: a `gs://` component source, pushes and rollbacks
//! through one host reaching every host, the fleet view and the CLI, concurrent pushes, the store
//! failing for 30 s under load (and down at start), garbage in the store and downloads corrupted
//! in flight, manifests edited by hand, signed releases.
//!
//! Every test has its own emulator and bucket. Tests wait for what they need by polling an
//! endpoint (the served version, info, the fleet view, the proxy's record) against a deadline.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::fleet::{
    ADMIN, PATIENCE, Store, TOKEN, answer, echo, eventually, get_json, http, info, metric, misbehave, push,
    rfc3339_now, serving, sha256, variant, version, wait_all_serve,
};
use crate::util::gcs::{FakeGcs, MetadataStub, Mode, StorageProxy};
use crate::util::{self, HostProcess, run_cli};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fleet(http: &reqwest::blocking::Client, host: &HostProcess) -> Value {
    let (status, body) = get_json(http, &host.url(&format!("{ADMIN}/fleet")));
    assert_eq!(status, 200, "GET {ADMIN}/fleet on {}: {body}", host.addr);
    body
}

fn rollback(http: &reqwest::blocking::Client, host: &HostProcess, query: &str) -> (u16, Value) {
    let url = host.url(&format!("{ADMIN}/rollback{query}"));
    let response = http.post(&url).bearer_auth(TOKEN).send().unwrap();
    answer(response)
}

/// Waits until `GET admin/fleet` on `host` shows `n` live instances that all serve `bytes` and
/// says `converged`; returns the view.
fn wait_converged(http: &reqwest::blocking::Client, host: &HostProcess, n: usize, bytes: &[u8]) -> Value {
    let want = sha256(bytes);
    eventually(
        &format!("the fleet view to show {n} instances converged on {}", &want[..12]),
        PATIENCE,
        || {
            let view = fleet(http, host);
            let instances = view["instances"].as_array().cloned().unwrap_or_default();
            let all = instances.len() == n
                && instances.iter().all(|i| i["sha256"] == want.as_str() && i["serves_release"] == true);
            if all && view["converged"] == true { Ok(view) } else { Err(view.to_string()) }
        },
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// a. A gs:// component source
// ---------------------------------------------------------------------------------------------

/// `--component gs://B/O`: served at start, polled by metadata GETs, downloaded (by generation)
/// only when the generation changes; a download that fails its checksum changes nothing.
#[test]
fn gs_source_downloads_only_new_generations_and_checks_them() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("src");
    let object = "app/c.wasm";
    let first = gcs.put("src", object, &echo());
    let proxy = StorageProxy::start(&gcs.url());
    let source = format!("gs://src/{object}");
    let dir = util::scratch_dir();
    let token = util::write_file(dir.path(), "token", TOKEN.as_bytes());
    let host = HostProcess::start(
        &[
            "--component",
            &source,
            "--poll-interval",
            "300ms",
            "--storage-emulator-host",
            &proxy.url(),
            "--admin-token-file",
            path_str(&token),
        ],
        &[],
    );
    let http = http();
    assert_eq!(serving(&http, &host), version(&echo()));
    // A source is not a store.
    assert_eq!(info(&http, &host)["store"], Value::Null);
    let (status, body) = get_json(&http, &host.url(&format!("{ADMIN}/fleet")));
    assert_eq!((status, body["kind"].as_str()), (404, Some("no_store")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("start every instance with `--store gs://"), "{body}");

    let of_object = |s: &crate::util::gcs::Seen| s.object().as_deref() == Some(object);
    let downloads = || proxy.seen().into_iter().filter(|s| of_object(s) && s.is_media()).collect::<Vec<_>>();
    let polls = || proxy.seen().iter().filter(|s| of_object(s) && !s.is_media() && !s.is_write()).count();
    let wait_polls = |more: usize| {
        let target = polls() + more;
        eventually(&format!("{more} more metadata polls of {object}"), PATIENCE, || {
            let n = polls();
            if n >= target { Ok(()) } else { Err(format!("{n} polls")) }
        });
    };

    // Polls without a change are metadata GETs only.
    wait_polls(5);
    let seen = downloads();
    assert_eq!(seen.len(), 1, "one download at start:\n{:#?}", seen);
    assert!(seen[0].query_has("generation", &first), "downloaded by generation {first}: {}", seen[0].target);

    // A new generation: one download, by that generation, and the swap.
    let second = gcs.put("src", object, &misbehave());
    eventually("the new object to be served", PATIENCE, || {
        let now = serving(&http, &host);
        if now == version(&misbehave()) { Ok(()) } else { Err(now) }
    });
    wait_polls(5);
    let seen = downloads();
    assert_eq!(seen.len(), 2, "one download per generation:\n{seen:#?}");
    assert!(
        seen[1].query_has("generation", &second),
        "downloaded by generation {second}: {}",
        seen[1].target
    );

    // A download corrupted in flight fails its checksum: nothing changes, and it is visible.
    let lines_before = host.lines().len();
    proxy.set_mode(Mode::CorruptMedia);
    gcs.put("src", object, &variant(&echo(), 1));
    eventually("a corrupted download", PATIENCE, || {
        if proxy.corrupted() > 0 { Ok(()) } else { Err("none yet".into()) }
    });
    let mentions_checksum =
        |text: &str| ["crc32c", "md5", "checksum"].iter().any(|word| text.to_lowercase().contains(word));
    eventually("the checksum failure to show in info or the logs", PATIENCE, || {
        let state = info(&http, &host);
        let logged = host.lines()[lines_before..].iter().any(|l| mentions_checksum(l));
        if mentions_checksum(&state.to_string()) || logged { Ok(()) } else { Err(format!("info: {state}")) }
    });
    assert_eq!(serving(&http, &host), version(&misbehave()), "a corrupted download went live");

    // The corruption was in flight, not in the object: once downloads are clean, it is taken.
    proxy.set_mode(Mode::Pass);
    eventually("the clean download of the third generation to be served", PATIENCE, || {
        let now = serving(&http, &host);
        if now == version(&variant(&echo(), 1)) { Ok(()) } else { Err(now) }
    });
}

// ---------------------------------------------------------------------------------------------
// b. Credentials from the metadata server
// ---------------------------------------------------------------------------------------------

/// A metadata server that says its token lives `u64::MAX` seconds (a bug, or a hostile one on
/// the path) does not overflow the host's clock: the token is used, the host serves on.
#[test]
fn a_token_lifetime_past_the_end_of_time_is_capped() {
    let store = Store::new("forever");
    let proxy = StorageProxy::start(&store.gcs.url());
    let stub = MetadataStub::start("instance-forever", u64::MAX);
    let (endpoint, metadata) = (proxy.url(), stub.host());
    let hosts = store.start_hosts(1, &["--storage-endpoint", &endpoint, "--metadata-host", &metadata], &[]);
    let http = http();
    eventually("a storage request with the token", PATIENCE, || {
        let used = proxy.seen().iter().any(|s| s.authorization.as_deref() == Some("Bearer tok-1"));
        if used { Ok(()) } else { Err(format!("{:?}", proxy.seen().last())) }
    });
    assert_eq!(info(&http, &hosts[0])["store"]["instance"], "instance-forever");
}

/// `--storage-endpoint` + `--metadata-host`: every storage request carries a current token from
/// the metadata server (asked with `Metadata-Flavor: Google`), refreshed before it expires and
/// after a 401; the instance id comes from the metadata server too.
#[test]
fn storage_requests_carry_fresh_tokens_from_the_metadata_server() {
    let store = Store::new("creds");
    let proxy = StorageProxy::start(&store.gcs.url());
    let stub = MetadataStub::start("instance-from-metadata-42", 3);
    let (endpoint, metadata) = (proxy.url(), stub.host());
    let hosts = store.start_hosts(1, &["--storage-endpoint", &endpoint, "--metadata-host", &metadata], &[]);
    let host = &hosts[0];
    let http = http();

    // Tokens live 3 s: wait for two refreshes, with storage traffic after each.
    eventually("three tokens fetched", PATIENCE, || {
        let n = stub.token_requests();
        if n >= 3 { Ok(()) } else { Err(format!("{n} token requests")) }
    });
    eventually("a storage request with the third token", PATIENCE, || {
        let used = proxy.seen().iter().any(|s| s.authorization.as_deref() == Some("Bearer tok-3"));
        if used { Ok(()) } else { Err(format!("{:?}", proxy.seen().last())) }
    });
    assert!(
        stub.refused().is_empty(),
        "metadata requests without `Metadata-Flavor: Google`: {:?}",
        stub.refused()
    );

    let issued = stub.with(|s| s.tokens.clone());
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    for request in &seen {
        let auth = request.authorization.as_deref().unwrap_or_else(|| {
            panic!("a storage request without Authorization: {} {}", request.method, request.target)
        });
        let token = auth.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a bearer token: {auth:?}"));
        let (_, at) = issued.iter().find(|(t, _)| t == token).unwrap_or_else(|| {
            panic!("{} {} carries `{token}`, never issued", request.method, request.target)
        });
        assert!(
            request.at < *at + Duration::from_secs(3),
            "{} {} carries `{token}` {:?} after it was issued, past its 3 s life",
            request.method,
            request.target,
            request.at - *at
        );
    }

    // The instance id is the metadata server's, and the heartbeat is written under it.
    let state = info(&http, host);
    assert_eq!(state["store"]["instance"], "instance-from-metadata-42", "{state}");
    eventually("the heartbeat under the metadata server's instance id", PATIENCE, || {
        let names = store.gcs.list(&store.bucket, &Store::object("instances/"));
        if names.contains(&Store::object("instances/instance-from-metadata-42.json")) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    });

    // A long-lived token, then a 401 from storage: a new token is fetched at once.
    let short_lived = stub.set_expires_in(3600);
    let long = format!("Bearer tok-{}", short_lived + 1);
    eventually("the long-lived token in use", PATIENCE, || {
        let last = proxy.seen().last().and_then(|s| s.authorization.clone());
        if last.as_deref() == Some(long.as_str()) { Ok(()) } else { Err(format!("{last:?}")) }
    });
    let before = stub.token_requests();
    proxy.set_mode(Mode::Status(401));
    eventually("a new token after a 401 from storage", PATIENCE, || {
        let n = stub.token_requests();
        if n > before { Ok(()) } else { Err(format!("{n} token requests")) }
    });
    proxy.set_mode(Mode::Pass);
    let newest = format!("Bearer tok-{}", stub.token_requests());
    eventually("a storage request answered 200 with the token fetched after the 401", PATIENCE, || {
        let ok =
            proxy.seen().iter().any(|s| s.authorization.as_deref() == Some(&newest) && s.status == Some(200));
        if ok { Ok(()) } else { Err(format!("{:?}", proxy.seen().last())) }
    });
}

// ---------------------------------------------------------------------------------------------
// c. A fleet of processes: push through one, the fleet view, the CLI
// ---------------------------------------------------------------------------------------------

/// Three real hosts on one store: a push to one reaches all; every host's fleet view lists the
/// three, converged; `echo-host push --wait` returns once all serve it; `echo-host fleet` names
/// them; a host stopped gracefully deletes its heartbeat.
#[test]
fn a_push_to_one_host_reaches_the_fleet_and_the_cli_sees_it() {
    let store = Store::new("fleet-c");
    let url = store.gcs.url();
    let revision = [("K_REVISION", "echo-00042-xyz")];
    let mut hosts = store.start_hosts_with_env(3, &["--storage-emulator-host", &url], &[], &revision);
    let http = http();
    wait_all_serve(&http, &hosts, &echo(), "the start-up component");

    let (status, body) = push(&http, &hosts[0], &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"], true, "{body}");
    assert_eq!(body["sha256"], sha256(&misbehave()), "{body}");
    assert_eq!(body["version"], version(&misbehave()), "{body}");
    // The first release records the version the fleet served before it (issue #27).
    assert_eq!(body["previous_sha256"], sha256(&echo()), "the first release's previous: {body}");
    let generation = body["manifest_generation"].as_str().expect("a manifest generation").to_string();
    assert!(generation.chars().all(|c| c.is_ascii_digit()), "{body}");
    assert_eq!(store.manifest_generation().as_deref(), Some(generation.as_str()));
    let manifest = store.manifest().expect("a manifest in the store");
    assert_eq!(manifest["schema"], 1, "{manifest}");
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&misbehave())), "{manifest}");
    assert_eq!(manifest["history"][0]["action"], "push", "{manifest}");
    let component =
        store.gcs.get(&store.bucket, &Store::object(&format!("components/{}.wasm", sha256(&misbehave()))));
    assert_eq!(
        component.as_deref(),
        Some(&misbehave()[..]),
        "the component is in the store under its sha256"
    );

    wait_all_serve(&http, &hosts, &misbehave(), "the pushed component");
    for host in &hosts {
        let view = wait_converged(&http, host, 3, &misbehave());
        assert_eq!(view["store"], store.url(), "{view}");
        assert_eq!(view["manifest_generation"], generation.as_str(), "{view}");
        assert_eq!(view["heartbeat_interval_s"].as_f64(), Some(1.0), "{view}");
        for instance in view["instances"].as_array().unwrap() {
            assert_eq!(instance["revision"], "echo-00042-xyz", "{instance}");
            assert_eq!(instance["manifest_generation"], generation.as_str(), "{instance}");
            assert!(instance["age_s"].as_f64().unwrap() < 3.0, "{instance}");
            assert_eq!(instance["last_rejection"], Value::Null, "{instance}");
        }
    }
    let ids: BTreeSet<String> =
        hosts.iter().map(|h| info(&http, h)["store"]["instance"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3, "three distinct instance ids: {ids:?}");
    for id in &ids {
        // Without a metadata server, ids are random 16-hex strings.
        assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "instance id {id:?}");
        let beat = store.gcs.get_json(&store.bucket, &Store::object(&format!("instances/{id}.json")));
        let beat = beat.unwrap_or_else(|| panic!("no heartbeat object for {id}"));
        assert_eq!(beat["schema"], 1, "{beat}");
        assert_eq!(beat["instance"], id.as_str(), "{beat}");
        assert_eq!(beat["active"]["sha256"], sha256(&misbehave()), "{beat}");
    }

    // The CLI: push with --wait returns once every instance serves it.
    let url = format!("http://{}", hosts[1].addr);
    let token_file = store.token_file();
    let echo_file = store.echo_file();
    let (status, stdout, stderr) = run_cli(
        &[
            "push",
            &url,
            path_str(&echo_file),
            "--token-file",
            path_str(&token_file),
            "--wait",
            "--wait-timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    assert!(status.success(), "push --wait failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(&sha256(&echo())), "push prints the host's answer:\n{stdout}");
    for host in &hosts {
        assert_eq!(
            serving(&http, host),
            version(&echo()),
            "push --wait returned before {} served it",
            host.addr
        );
    }

    let (status, stdout, stderr) =
        run_cli(&["fleet", &url, "--token-file", path_str(&token_file)], Duration::from_secs(60));
    assert!(status.success(), "fleet failed ({status}):\n{stdout}\n{stderr}");
    eprintln!("echo-host fleet:\n{stdout}");
    assert!(stdout.contains("echo-00042-xyz"), "the fleet table shows the revision:\n{stdout}");
    assert!(stdout.contains(&store.url()), "the fleet table names the store:\n{stdout}");
    for header in ["INSTANCE", "REVISION", "VERSION", "AGE", "MANIFEST", "LAST-REJECTION"] {
        assert!(stdout.contains(header), "the fleet table has a {header} column:\n{stdout}");
    }
    for id in &ids {
        assert!(stdout.contains(id.as_str()), "the fleet table names {id}:\n{stdout}");
    }

    // A graceful stop deletes the heartbeat; the others see two live instances.
    let gone = info(&http, &hosts[2])["store"]["instance"].as_str().unwrap().to_string();
    hosts[2].signal("TERM");
    let exit = hosts[2].wait_exit(PATIENCE).expect("the host did not exit after SIGTERM");
    assert!(exit.success(), "{exit}");
    let heartbeat = Store::object(&format!("instances/{gone}.json"));
    assert_eq!(store.gcs.get(&store.bucket, &heartbeat), None, "the heartbeat of a stopped host stays");
    hosts.pop();
    wait_converged(&http, &hosts[0], 2, &echo());

    // A host that dies leaves its heartbeat behind: after 3 intervals it is listed as asleep
    // (as a frozen one is, issue #27) until `--fleet-forget-after`, and bound to re-check.
    let dead = info(&http, &hosts[1])["store"]["instance"].as_str().unwrap().to_string();
    hosts[1].signal("KILL");
    hosts[1].wait_exit(PATIENCE).expect("the host did not die");
    let heartbeat = Store::object(&format!("instances/{dead}.json"));
    assert!(store.gcs.get(&store.bucket, &heartbeat).is_some(), "a killed host cannot delete its heartbeat");
    hosts.pop();
    eventually("the killed host listed as asleep", PATIENCE, || {
        let view = wait_converged(&http, &hosts[0], 2, &echo());
        let row =
            view["instances"].as_array().unwrap().iter().find(|i| i["instance"] == dead.as_str()).cloned();
        match row {
            Some(row) if row["state"] == "asleep" && row["rechecks_before_serving"] == true => Ok(()),
            _ => Err(view.to_string()),
        }
    });
}

/// `push --wait` gives up at once when every instance that does not serve the push rejected it
/// (here two hosts with a smaller `--max-component-size`), naming them and why.
#[test]
fn push_wait_fails_fast_when_the_other_instances_reject_the_push() {
    let store = Store::new("fleet-reject");
    let url = store.gcs.url();
    let storage = ["--storage-emulator-host", url.as_str()];
    // echo (~75 KB) fits under 100 KiB; misbehave (~140 KB) does not.
    assert!(echo().len() < 100 << 10 && misbehave().len() > 100 << 10);
    let mut hosts = store.start_hosts(1, &storage, &[]);
    hosts.extend(store.start_hosts(2, &storage, &["--max-component-size", "100KiB"]));
    let http = http();
    eventually("the fleet view to list 3 instances", PATIENCE, || {
        let view = fleet(&http, &hosts[0]);
        let n = view["instances"].as_array().map_or(0, Vec::len);
        if n == 3 { Ok(()) } else { Err(view.to_string()) }
    });
    let small: Vec<String> = hosts[1..]
        .iter()
        .map(|h| info(&http, h)["store"]["instance"].as_str().unwrap().to_string())
        .collect();

    let file = util::write_file(store.dir.path(), "misbehave.wasm", &misbehave());
    let token_file = store.token_file();
    let started = Instant::now();
    let (status, stdout, stderr) = run_cli(
        &[
            "push",
            &format!("http://{}", hosts[0].addr),
            path_str(&file),
            "--token-file",
            path_str(&token_file),
            "--wait",
            "--wait-timeout",
            "120s",
        ],
        Duration::from_secs(150),
    );
    let took = started.elapsed();
    let output = format!("{stdout}\n{stderr}");
    eprintln!("push --wait, rejected by two instances ({took:.1?}, {status}):\n{output}");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(took < Duration::from_secs(60), "push --wait took {took:?}: it should fail fast, not time out");
    for id in &small {
        assert!(output.contains(id.as_str()), "the output names the rejecting instance {id}:\n{output}");
    }
    assert_eq!(serving(&http, &hosts[0]), version(&misbehave()));
    for host in &hosts[1..] {
        assert_eq!(serving(&http, host), version(&echo()), "a too-large release went live on {}", host.addr);
    }
}

// ---------------------------------------------------------------------------------------------
// d. Concurrent pushes
// ---------------------------------------------------------------------------------------------

/// Two pushes with `?if_generation=G` from the same G: one wins, the other gets 409 with the
/// current manifest. Two pushes without it at once: no lost update.
#[test]
fn concurrent_pushes_never_lose_an_update() {
    let store = Store::new("race");
    let hosts = store.start_direct(2);
    let http = http();
    // Only if there is no manifest yet: there is none, then there is one.
    let (status, body) = push(&http, &hosts[0], &variant(&echo(), 1), "?if_generation=0");
    assert_eq!(status, 200, "{body}");
    let base = body["manifest_generation"].as_str().unwrap().to_string();
    let (status, body) = push(&http, &hosts[1], &variant(&echo(), 9), "?if_generation=0");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["kind"], "conflict", "{body}");
    assert_eq!(body["manifest_generation"], base.as_str(), "{body}");
    assert_eq!(body["manifest"]["stable"], format!("sha256:{}", sha256(&variant(&echo(), 1))), "{body}");

    let race = |candidates: [Vec<u8>; 2], query: String| -> Vec<(Vec<u8>, u16, Value)> {
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            let tasks: Vec<_> = candidates
                .into_iter()
                .zip(&hosts)
                .map(|(bytes, host)| {
                    let (barrier, query, http) = (&barrier, &query, &http);
                    scope.spawn(move || {
                        barrier.wait();
                        let (status, body) = push(http, host, &bytes, query);
                        (bytes, status, body)
                    })
                })
                .collect();
            tasks.into_iter().map(|t| t.join().unwrap()).collect()
        })
    };

    // From the same generation: exactly one 200 and one 409.
    let outcomes = race([misbehave(), variant(&echo(), 2)], format!("?if_generation={base}"));
    let statuses: BTreeSet<u16> = outcomes.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, BTreeSet::from([200, 409]), "{outcomes:#?}");
    let (winner, _, won) = outcomes.iter().find(|(_, s, _)| *s == 200).unwrap();
    let (_, _, lost) = outcomes.iter().find(|(_, s, _)| *s == 409).unwrap();
    assert_eq!(lost["kind"], "conflict", "{lost}");
    assert_eq!(
        lost["manifest"]["stable"],
        format!("sha256:{}", sha256(winner)),
        "the 409 carries the winner: {lost}"
    );
    assert_eq!(lost["manifest_generation"], won["manifest_generation"], "{lost}");
    assert!(!lost["error"].as_str().unwrap_or_default().is_empty(), "{lost}");
    wait_all_serve(&http, &hosts, winner, "the winner");

    // Without a precondition, at once: whatever each got, nothing it was told is lost.
    let outcomes = race([variant(&echo(), 3), variant(&echo(), 4)], String::new());
    for (_, status, body) in &outcomes {
        assert!(matches!(status, 200 | 409), "{status}: {body}");
    }
    let released: Vec<String> = outcomes
        .iter()
        .filter(|(_, s, _)| *s == 200)
        .map(|(b, _, _)| format!("sha256:{}", sha256(b)))
        .collect();
    assert!(!released.is_empty(), "neither push succeeded: {outcomes:#?}");
    let manifest = store.manifest().unwrap();
    let stable = manifest["stable"].as_str().unwrap().to_string();
    assert!(released.contains(&stable), "the final stable {stable} is none of the 200'd pushes {released:?}");
    let history: Vec<&str> =
        manifest["history"].as_array().unwrap().iter().map(|e| e["stable"].as_str().unwrap()).collect();
    for sha in &released {
        assert!(history.contains(&sha.as_str()), "the 200'd push {sha} is not in the history {history:?}");
    }
    let final_bytes =
        outcomes.iter().find(|(b, _, _)| format!("sha256:{}", sha256(b)) == stable).unwrap().0.clone();
    wait_all_serve(&http, &hosts, &final_bytes, "the final stable");
}

// ---------------------------------------------------------------------------------------------
// e. Rollback through the store
// ---------------------------------------------------------------------------------------------

/// Push A, push B, roll back on a third host: every host serves A again and the history says
/// so; `?to=` picks a version, an unknown one is 404. Heartbeats are hourly here, so a fleet
/// view that converges shows they are also written right after each swap.
#[test]
fn a_rollback_on_any_host_rolls_the_fleet_back() {
    let store = Store::new("rollback");
    let url = store.gcs.url();
    let hosts = store.start_hosts(3, &["--storage-emulator-host", &url], &["--heartbeat-interval", "1h"]);
    let http = http();
    let (a, b) = (misbehave(), variant(&echo(), 1));

    // Nothing to roll back to yet.
    let (status, body) = rollback(&http, &hosts[2], "");
    assert_eq!((status, body["kind"].as_str()), (409, Some("no_previous")), "{body}");

    let (status, body) = push(&http, &hosts[0], &a, "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &a, "A");
    let (status, body) = push(&http, &hosts[1], &b, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous_sha256"], sha256(&a), "{body}");
    wait_all_serve(&http, &hosts, &b, "B");

    let (status, body) = rollback(&http, &hosts[2], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sha256"], sha256(&a), "{body}");
    assert_eq!(body["previous_sha256"], sha256(&b), "{body}");
    wait_all_serve(&http, &hosts, &a, "A again");
    let manifest = store.manifest().unwrap();
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&a)), "{manifest}");
    let history = manifest["history"].as_array().unwrap();
    let entries: Vec<(&str, &str)> =
        history.iter().map(|e| (e["action"].as_str().unwrap(), e["stable"].as_str().unwrap())).collect();
    let (sha_a, sha_b) = (format!("sha256:{}", sha256(&a)), format!("sha256:{}", sha256(&b)));
    assert_eq!(
        entries[..3],
        [("rollback", sha_a.as_str()), ("push", sha_b.as_str()), ("push", sha_a.as_str())],
        "history newest first: {manifest}"
    );
    for entry in history {
        assert!(entry["at"].is_string() && entry["by"].is_string(), "{entry}");
    }

    // To a named version (a prefix of its sha256), and to one the store does not have.
    let (status, body) = rollback(&http, &hosts[0], &format!("?to=sha256:{}", &sha256(&b)[..12]));
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &b, "B again");
    let (status, body) = rollback(&http, &hosts[0], "?to=sha256:000000000000");
    assert_eq!((status, body["kind"].as_str()), (404, Some("not_found")), "{body}");
    let view = wait_converged(&http, &hosts[1], 3, &b);
    assert_eq!(view["heartbeat_interval_s"].as_f64(), Some(3600.0), "{view}");
}

// ---------------------------------------------------------------------------------------------
// f. The store down for 30 s under load
// ---------------------------------------------------------------------------------------------

/// The store answers 503 for 10 s, then 403 for 10 s, then hangs for 10 s, while clients keep
/// requesting: not one request fails, the hosts show the store errors, and once the store is
/// back a push converges.
#[test]
fn thirty_seconds_of_store_outage_under_load_fail_no_request() {
    let store = Store::new("outage");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &endpoint], &["--fetch-timeout", "3s"]);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &misbehave(), "the release");

    // Two clients per host, each with its own keep-alive connection.
    let stop = Arc::new(AtomicBool::new(false));
    let want = version(&misbehave());
    let clients: Vec<_> = hosts
        .iter()
        .flat_map(|h| [h.url("/"), h.url("/")])
        .map(|url| {
            let (stop, want) = (stop.clone(), want.clone());
            std::thread::spawn(move || {
                let client = self::http();
                let (mut ok, mut failures) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send() {
                        Ok(r) if r.status() == 200 && r.headers()["echo-host-component"] == want.as_str() => {
                            match r.bytes() {
                                Ok(_) => ok += 1,
                                Err(e) => failures.push(format!("reading a body: {e:#}")),
                            }
                        }
                        Ok(r) => failures.push(format!(
                            "{} {:?}",
                            r.status(),
                            r.headers().get("echo-host-component")
                        )),
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (ok, failures)
            })
        })
        .collect();

    let errors_before: Vec<f64> =
        hosts.iter().map(|h| metric(&http, h, "echo_host_store_errors_total")).collect();
    let phases = [Mode::Status(503), Mode::Status(403), Mode::Hang];
    for mode in phases {
        let started = Instant::now();
        proxy.set_mode(mode);
        let count_before = proxy.count();
        let errors_at_start: Vec<f64> =
            hosts.iter().map(|h| metric(&http, h, "echo_host_store_errors_total")).collect();
        // Each host notices (its error counter moves and info says why) within the phase.
        for (host, before) in hosts.iter().zip(&errors_at_start) {
            eventually(
                &format!("{} to count a store error under {mode:?}", host.addr),
                Duration::from_secs(10),
                || {
                    let now = metric(&http, host, "echo_host_store_errors_total");
                    let state = info(&http, host);
                    let error = &state["store"]["last_error"];
                    if now > *before
                        && error.is_object()
                        && state["store"]["consecutive_failures"].as_u64() > Some(0)
                    {
                        Ok(())
                    } else {
                        Err(format!("errors {now}, store {}", state["store"]))
                    }
                },
            );
        }
        if mode == Mode::Status(503) {
            // A push while the store is down is refused as such; nothing changes.
            let (status, body) = push(&http, &hosts[1], &echo(), "");
            assert_eq!((status, body["kind"].as_str()), (503, Some("store_unavailable")), "{body}");
        }
        assert!(proxy.count() > count_before, "no storage request met {mode:?}");
        while started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for (host, before) in hosts.iter().zip(&errors_before) {
        assert!(metric(&http, host, "echo_host_store_errors_total") > *before);
    }

    proxy.set_mode(Mode::Pass);
    for host in &hosts {
        eventually(&format!("{} to reach the store again", host.addr), PATIENCE, || {
            let state = info(&http, host);
            if state["store"]["consecutive_failures"] == 0 { Ok(()) } else { Err(state["store"].to_string()) }
        });
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, f) = client.join().unwrap();
        ok += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests during the outage, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests in 30 s");
    eprintln!("store outage (503, 403, hang; 10 s each): {ok} requests, 0 failed");

    let (status, body) = push(&http, &hosts[1], &variant(&echo(), 1), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &variant(&echo(), 1), "the push after the outage");
    wait_converged(&http, &hosts[0], 2, &variant(&echo(), 1));
}

// ---------------------------------------------------------------------------------------------
// g. Garbage in the store
// ---------------------------------------------------------------------------------------------

/// Writes a manifest by hand naming `sha` as stable, on top of the current one.
fn release_by_hand(store: &Store, sha: &str) -> String {
    let mut manifest =
        store.manifest().unwrap_or_else(|| json!({ "schema": 1, "canary": null, "history": [] }));
    let now = rfc3339_now();
    manifest["stable"] = json!(format!("sha256:{sha}"));
    manifest["updated_at"] = json!(now);
    manifest["updated_by"] = json!("hand");
    let mut history = manifest["history"].as_array().cloned().unwrap_or_default();
    history
        .insert(0, json!({ "stable": format!("sha256:{sha}"), "at": now, "by": "hand", "action": "push" }));
    history.truncate(20);
    manifest["history"] = json!(history);
    store.write_manifest(manifest.to_string().as_bytes())
}

/// Garbage, and a truncated copy of a real component, released by hand: every host keeps
/// serving, rejects each once per manifest generation and says so in its heartbeat. A manifest
/// that is not JSON, and one naming a missing component, change nothing and show in info.
#[test]
fn garbage_in_the_store_is_rejected_and_nothing_changes() {
    let store = Store::new("garbage");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    // Hourly heartbeats: the rejections below reach the fleet view only if a heartbeat is
    // written right after each.
    let hosts =
        store.start_hosts(2, &["--storage-emulator-host", &endpoint], &["--heartbeat-interval", "1h"]);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &misbehave(), "the release");

    let garbage = b"this is not a wasm component, only bytes in a bucket".to_vec();
    let real = variant(&echo(), 5);
    let cases = [
        // Bytes that hash to their name but fail the gate.
        ("garbage", sha256(&garbage), garbage.clone()),
        // A real component's name, but half its bytes: they do not hash to the name.
        ("truncated", sha256(&real), real[..real.len() / 2].to_vec()),
    ];
    for (what, sha, bytes) in cases {
        store.write_component(&sha, &bytes);
        release_by_hand(&store, &sha);
        let object = Store::object(&format!("components/{sha}.wasm"));
        let view =
            eventually(&format!("every instance to report rejecting the {what} component"), PATIENCE, || {
                let view = fleet(&http, &hosts[1]);
                let instances = view["instances"].as_array().cloned().unwrap_or_default();
                let all = instances.len() == 2
                    && instances.iter().all(|i| {
                        let rejection = &i["last_rejection"];
                        let named =
                            rejection["sha256"] == sha.as_str() || rejection["sha256"] == sha256(&bytes);
                        named && !rejection["reason"].as_str().unwrap_or_default().is_empty()
                    });
                if all { Ok(view) } else { Err(view.to_string()) }
            });
        eprintln!("{what}: {}", view["instances"][0]["last_rejection"]);
        assert_eq!(
            view["converged"], false,
            "{what}: a fleet that rejected the release is not converged: {view}"
        );
        for host in &hosts {
            assert_eq!(serving(&http, host), version(&misbehave()), "{what} went live on {}", host.addr);
        }
        // Rejected once per manifest generation: more polls, no more downloads.
        let polls_now = proxy.count();
        eventually("a few more polls", PATIENCE, || {
            let n = proxy.count();
            if n > polls_now + 12 { Ok(()) } else { Err(format!("{n}")) }
        });
        let downloads = proxy
            .seen()
            .iter()
            .filter(|s| s.is_media() && s.object().as_deref() == Some(object.as_str()))
            .count();
        assert_eq!(downloads, 2, "{what}: one download per host for this manifest generation");
    }

    // A manifest that is not JSON.
    let errors_before: Vec<Value> =
        hosts.iter().map(|h| info(&http, h)["store"]["last_error"].clone()).collect();
    store.write_manifest(b"{\"schema\": 1, \"stable\": \"sha256:");
    for (host, before) in hosts.iter().zip(&errors_before) {
        eventually("info to show the unreadable manifest", PATIENCE, || {
            let error = info(&http, host)["store"]["last_error"].clone();
            if error.is_object() && error != *before { Ok(()) } else { Err(error.to_string()) }
        });
        assert_eq!(serving(&http, host), version(&misbehave()));
    }
    // A manifest naming a component the store does not have.
    let missing = sha256(b"a component nobody uploaded");
    let errors_before: Vec<Value> =
        hosts.iter().map(|h| info(&http, h)["store"]["last_error"].clone()).collect();
    let mut manifest = json!({ "schema": 1, "canary": null, "history": [] });
    manifest["stable"] = json!(format!("sha256:{missing}"));
    manifest["updated_at"] = json!(rfc3339_now());
    manifest["updated_by"] = json!("hand");
    store.write_manifest(manifest.to_string().as_bytes());
    for (host, before) in hosts.iter().zip(&errors_before) {
        let error = eventually("info to show the missing component", PATIENCE, || {
            let error = info(&http, host)["store"]["last_error"].clone();
            if error.is_object() && error["message"] != before["message"] {
                Ok(error)
            } else {
                Err(error.to_string())
            }
        });
        eprintln!("missing component: {error}");
        assert_eq!(serving(&http, host), version(&misbehave()));
    }
    for host in &hosts {
        assert!(metric(&http, host, "echo_host_store_errors_total") > 0.0);
    }
}

// ---------------------------------------------------------------------------------------------
// h. A manifest edited by hand
// ---------------------------------------------------------------------------------------------

/// A component uploaded and a manifest written by hand (`gcloud storage cp`): every host
/// converges, whether it names the emulator by flag or by `STORAGE_EMULATOR_HOST` (without a
/// scheme) and whatever the store URL's trailing slash; a push through a host afterwards keeps
/// the manifest's unknown fields and at most 20 history entries.
#[test]
fn a_manifest_written_by_hand_is_followed() {
    let store = Store::new("by-hand");
    let mut hosts = store.start_direct(1);
    let mut args = store.host_args(&[], &[]);
    let at = args.iter().position(|a| a == "--store").unwrap();
    args[at + 1] = format!("gs://{}/fleet", store.bucket);
    let emulator = store.gcs.url().trim_start_matches("http://").to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hosts.push(HostProcess::start(&args, &[("STORAGE_EMULATOR_HOST", &emulator)]));
    let http = http();
    wait_all_serve(&http, &hosts, &echo(), "the start-up component");
    assert_eq!(info(&http, &hosts[1])["store"]["url"], store.url(), "a trailing `/` is added");

    let sha = sha256(&misbehave());
    let object = Store::object(&format!("components/{sha}.wasm"));
    assert_eq!(store.gcs.put_if(&store.bucket, &object, &misbehave(), "0"), 200);
    let now = rfc3339_now();
    let mut history = vec![
        json!({ "stable": format!("sha256:{sha}"), "at": now, "by": "ops@example.com", "action": "push", "x-ticket": "OPS-1234" }),
    ];
    // 19 older releases: the history is full.
    history.extend((1..20).map(|n| {
        json!({ "stable": format!("sha256:{}", sha256(&[n])), "at": "2026-01-01T00:00:00Z", "by": "ops@example.com", "action": "push" })
    }));
    let manifest = json!({
        "schema": 1,
        "stable": format!("sha256:{sha}"),
        "canary": null,
        "updated_at": now,
        "updated_by": "ops@example.com",
        "history": history,
        "x-ticket": "OPS-1234",
    });
    let written = manifest.to_string();
    assert_eq!(
        store.gcs.put_if(&store.bucket, &Store::object("manifest.json"), written.as_bytes(), "0"),
        200
    );
    wait_all_serve(&http, &hosts, &misbehave(), "the release written by hand");
    let generation = store.manifest_generation().unwrap();
    let view = wait_converged(&http, &hosts[0], 2, &misbehave());
    assert_eq!(view["manifest_generation"], generation.as_str(), "{view}");
    for host in &hosts {
        let state = info(&http, host)["store"].clone();
        assert_eq!(state["url"], store.url(), "{state}");
        assert_eq!(state["manifest_generation"], generation.as_str(), "{state}");
        assert_eq!(state["stable"], format!("sha256:{sha}"), "{state}");
        assert!(state["last_ok_at"].is_string() && state["instance"].is_string(), "{state}");
        assert_eq!(state["consecutive_failures"], 0, "{state}");
        assert!(metric(&http, host, "echo_host_store_polls_total") > 0.0);
    }

    let next = variant(&echo(), 3);
    let (status, body) = push(&http, &hosts[1], &next, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous_sha256"], sha.as_str(), "{body}");
    assert!(body["elapsed_ms"].is_number(), "{body}");
    let rewritten = store.manifest().unwrap();
    assert_eq!(rewritten["x-ticket"], "OPS-1234", "unknown fields are kept: {rewritten}");
    let history = rewritten["history"].as_array().unwrap();
    assert_eq!(history.len(), 20, "at most 20 entries: {rewritten}");
    assert_eq!(history[0]["stable"], format!("sha256:{}", sha256(&next)), "{rewritten}");
    assert_eq!(history[1], manifest["history"][0], "{rewritten}");
    wait_all_serve(&http, &hosts, &next, "the push after the hand edit");

    // A push of a component the store already has (its write meets ifGenerationMatch=0's 412).
    let (status, body) = push(&http, &hosts[0], &misbehave(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &misbehave(), "a component the store already had");
}

// ---------------------------------------------------------------------------------------------
// i. A store that is down when a host starts
// ---------------------------------------------------------------------------------------------

/// A host whose store does not answer at start serves `--component`, says why, and follows the
/// store's release as soon as it answers.
#[test]
fn a_host_started_while_the_store_is_down_follows_it_once_it_answers() {
    let store = Store::new("late");
    store.write_component(&sha256(&misbehave()), &misbehave());
    release_by_hand(&store, &sha256(&misbehave()));
    let proxy = StorageProxy::start(&store.gcs.url());
    proxy.set_mode(Mode::Refuse);
    let endpoint = proxy.url();
    let hosts = store.start_hosts(1, &["--storage-emulator-host", &endpoint], &[]);
    let http = http();
    assert_eq!(
        serving(&http, &hosts[0]),
        version(&echo()),
        "the start-up component, while the store is down"
    );
    let state = eventually("info to show the store error", PATIENCE, || {
        let state = info(&http, &hosts[0])["store"].clone();
        if state["last_error"].is_object() { Ok(state) } else { Err(state.to_string()) }
    });
    eprintln!("store down at start: {state}");
    let warned =
        hosts[0].lines().iter().any(|l| l.to_lowercase().contains("warn") && l.contains("gs://late/"));
    assert!(warned, "no warning naming the store in the logs:\n{}", hosts[0].lines().join("\n"));

    proxy.set_mode(Mode::Pass);
    wait_all_serve(&http, &hosts, &misbehave(), "the store's release once the store answers");
    eventually("the store to count as reachable", PATIENCE, || {
        let state = info(&http, &hosts[0])["store"].clone();
        if state["consecutive_failures"] == 0 { Ok(()) } else { Err(state.to_string()) }
    });
}

// ---------------------------------------------------------------------------------------------
// j. Signed releases
// ---------------------------------------------------------------------------------------------

/// With `--trusted-key`, a signed push stores its signature beside the component and every
/// host verifies it; an unsigned component released by hand is rejected everywhere, and taken
/// once its signature is uploaded and the manifest rewritten (a new generation).
#[test]
fn signed_releases_carry_their_signature_through_the_store() {
    let store = Store::new("signed");
    let dir = store.dir.path();
    let key = dir.join("release.key");
    let cli = |args: &[&str]| {
        let (status, stdout, stderr) = run_cli(args, Duration::from_secs(60));
        assert!(status.success(), "echo-host {args:?} failed ({status}):\n{stdout}\n{stderr}");
    };
    cli(&["keygen", path_str(&key)]);
    let public = format!("{}.pub", key.display());
    let sign = |file: &Path| {
        cli(&["sign", "--key", path_str(&key), path_str(file)]);
        std::fs::read_to_string(format!("{}.sig", file.display())).unwrap()
    };
    sign(&store.echo_file()); // the start-up component must be signed too
    let url = store.gcs.url();
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &url], &["--trusted-key", &public]);
    let http = http();
    wait_all_serve(&http, &hosts, &echo(), "the signed start-up component");

    let (status, body) = push(&http, &hosts[0], &misbehave(), "");
    assert_eq!((status, body["kind"].as_str()), (403, Some("missing_signature")), "{body}");
    assert_eq!(store.manifest(), None, "a refused push wrote a manifest");

    let file = util::write_file(dir, "misbehave.wasm", &misbehave());
    let signature = sign(&file);
    cli(&[
        "push",
        &format!("http://{}", hosts[0].addr),
        path_str(&file),
        "--token-file",
        path_str(&store.token_file()),
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    wait_all_serve(&http, &hosts, &misbehave(), "the signed push");
    let stored = Store::object(&format!("components/{}.wasm.sig", sha256(&misbehave())));
    let stored = store.gcs.get(&store.bucket, &stored).expect("the signature in the store");
    assert_eq!(String::from_utf8_lossy(&stored).trim(), signature.trim());

    let unsigned = variant(&echo(), 8);
    let sha = sha256(&unsigned);
    store.write_component(&sha, &unsigned);
    release_by_hand(&store, &sha);
    eventually("every instance to reject the unsigned release", PATIENCE, || {
        let view = fleet(&http, &hosts[1]);
        let instances = view["instances"].as_array().cloned().unwrap_or_default();
        let all = instances.len() == 2
            && instances.iter().all(|i| {
                i["last_rejection"]["sha256"] == sha.as_str()
                    && i["last_rejection"]["reason"].as_str().unwrap_or_default().contains("signature")
            });
        if all { Ok(()) } else { Err(view.to_string()) }
    });
    for host in &hosts {
        assert_eq!(serving(&http, host), version(&misbehave()), "an unsigned release went live");
    }

    // The signature arrives; the manifest is written again (same content, new generation).
    let file = util::write_file(dir, "unsigned.wasm", &unsigned);
    let signature = sign(&file);
    let object = Store::object(&format!("components/{sha}.wasm.sig"));
    store.gcs.put(&store.bucket, &object, signature.as_bytes());
    let manifest = store.gcs.get(&store.bucket, &Store::object("manifest.json")).unwrap();
    store.write_manifest(&manifest);
    wait_all_serve(&http, &hosts, &unsigned, "the release once signed");
}

// ---------------------------------------------------------------------------------------------
// k. A store download corrupted in flight
// ---------------------------------------------------------------------------------------------

/// A release whose download is corrupted in flight (the object itself is sound) is not served,
/// and is taken once downloads are clean again, without anyone rewriting the manifest: a
/// transport fault is retried, unlike a bad object.
#[test]
fn a_store_download_corrupted_in_flight_is_retried() {
    let store = Store::new("corrupt");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &endpoint], &[]);
    let http = http();
    let release = variant(&echo(), 11);
    let object = Store::object(&format!("components/{}.wasm", sha256(&release)));
    store.write_component(&sha256(&release), &release);
    proxy.corrupt_only("/components/");
    proxy.set_mode(Mode::CorruptMedia);
    release_by_hand(&store, &sha256(&release));
    eventually("both hosts to download the release corrupted", PATIENCE, || {
        let corrupted = proxy
            .seen()
            .iter()
            .filter(|s| {
                s.mode == Mode::CorruptMedia && s.is_media() && s.object().as_deref() == Some(&object)
            })
            .count();
        if corrupted >= 2 { Ok(()) } else { Err(format!("{corrupted} corrupted downloads")) }
    });
    for host in &hosts {
        assert_eq!(serving(&http, host), version(&echo()), "a corrupted download went live");
    }
    let views: Vec<Value> = hosts.iter().map(|h| info(&http, h)).collect();
    eprintln!("after corrupted downloads: {}", views[0]["store"]);
    proxy.set_mode(Mode::Pass);
    wait_all_serve(&http, &hosts, &release, "the release once downloads are clean");
    let view = wait_converged(&http, &hosts[0], 2, &release);
    for instance in view["instances"].as_array().unwrap() {
        assert_eq!(instance["last_rejection"], Value::Null, "a transport fault is no rejection: {instance}");
    }
}
