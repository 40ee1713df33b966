//! Cloud Run's default CPU allocation freezes an idle instance between requests (issue #27). A
//! host frozen with `SIGSTOP` (the kernel still takes connections and request bytes) while the
//! release changes through another host, then thawed with requests already on the wire: nothing
//! the fleet revoked serves a request, plain, sticky or pinned; the store down at wake-up costs
//! one bounded wait (503 in strict mode); the fleet view shows a frozen host as asleep, and
//! `push --wait` says so.
//!
//! The store is the emulator behind a proxy that adds 150 ms to every call, as a bucket some
//! tens of ms away would. The one sleep here waits out `--max-staleness` while a host is frozen:
//! time passing is the condition under test, and nothing else can show it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::fleet::{
    ADMIN, PATIENCE, Store, TOKEN, echo, eventually, get_json, http, info, metric, misbehave, push, serving,
    sha256, variant, version, wait_all_serve,
};
use crate::util::gcs::{Mode, StorageProxy};
use crate::util::wire::{Answer, Wire};
use crate::util::{HostProcess, run_cli};

const RELEASE: &str = "/.well-known/echo-host/admin/release";
/// The hosts' `--max-staleness` (twice their 500 ms poll).
const STALENESS: Duration = Duration::from_secs(1);
const KEY: &str = "echo-host-version-key";
const PIN: &str = "echo-host-version";

/// A host frozen with `SIGSTOP` until dropped (or thawed).
struct Frozen<'a> {
    host: &'a HostProcess,
    at: Instant,
    thawed: bool,
}

impl<'a> Frozen<'a> {
    fn freeze(host: &'a HostProcess) -> Frozen<'a> {
        host.signal("STOP");
        Frozen { host, at: Instant::now(), thawed: false }
    }

    /// Waits until the host's view is older than `--max-staleness` (with a margin), whatever
    /// it last confirmed before the freeze.
    fn wait_stale(&self) {
        let due = self.at + STALENESS + Duration::from_millis(700);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }

    fn thaw(&mut self) -> Instant {
        self.host.signal("CONT");
        self.thawed = true;
        Instant::now()
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if !self.thawed {
            self.host.signal("CONT");
        }
    }
}

/// The kinds of request a woken host gets: plain, with a sticky key, pinned to `pin`.
fn headers(i: usize, pin: &str) -> Vec<String> {
    match i % 3 {
        0 => vec![],
        1 => vec![format!("{KEY}: user-{i}")],
        _ => vec![format!("{PIN}: {pin}")],
    }
}

/// What a woken host answered: on-the-wire requests (20: half on keep-alive connections opened
/// before the freeze, half on new ones, written while it was frozen) and 180 more after.
struct Woken {
    answers: Vec<Answer>,
    /// From `SIGCONT` to each on-the-wire request's response, in ms.
    first_ms: Vec<u128>,
}

impl Woken {
    fn count(&self, version: &str) -> usize {
        self.answers.iter().filter(|a| a.version == version).count()
    }

    fn assert_none_from(&self, revoked: &str, what: &str) {
        let by_version =
            self.answers.iter().fold(std::collections::BTreeMap::<&str, usize>::new(), |mut m, a| {
                *m.entry(a.version.as_str()).or_default() += 1;
                m
            });
        assert_eq!(self.count(revoked), 0, "{what}: the woken host routed to {revoked}: {by_version:?}");
        assert!(self.answers.iter().all(|a| a.status == 200), "{what}: {:?}", self.answers);
    }
}

/// Freezes `host`, makes `change` through the others, waits until the store shows it (`done`)
/// and the host's view is stale, writes requests to the frozen host, thaws it and reads them,
/// then sends 180 more. `pin` is what the pinned requests name.
fn through_a_freeze(
    store: &Store,
    host: &HostProcess,
    pin: &str,
    change: impl FnOnce(),
    done: impl Fn(&Value) -> bool,
) -> Woken {
    let mut kept: Vec<Wire> = (0..10).map(|_| Wire::connect(host.addr)).collect();
    for wire in &mut kept {
        assert_eq!(wire.get("/", &[]).status, 200, "a keep-alive connection before the freeze");
    }
    let mut frozen = Frozen::freeze(host);
    change();
    eventually("the change in the store's manifest", PATIENCE, || {
        let manifest = store.manifest().unwrap_or_default();
        if done(&manifest) { Ok(()) } else { Err(manifest.to_string()) }
    });
    frozen.wait_stale();
    let mut wires: Vec<Wire> = kept;
    wires.extend((0..10).map(|_| Wire::connect(host.addr)));
    for (i, wire) in wires.iter_mut().enumerate() {
        wire.send("/", &headers(i, pin));
    }
    let thawed = frozen.thaw();
    let mut answers = Vec::new();
    let mut first_ms = Vec::new();
    for wire in &mut wires {
        answers.push(wire.receive());
        first_ms.push(thawed.elapsed().as_millis());
    }
    for i in 0..180 {
        let wire = &mut wires[i % 20];
        answers.push(wire.get("/", &headers(i, pin)));
    }
    Woken { answers, first_ms }
}

fn post(
    http: &reqwest::blocking::Client,
    host: &HostProcess,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut request = http.post(host.url(&format!("{RELEASE}{path}"))).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Starts a canary of `bytes` at 50 % through `hosts[0]` and waits until `hosts[1]` routes to it.
fn start_canary(http: &reqwest::blocking::Client, hosts: &[HostProcess], bytes: &[u8]) {
    let (status, body) = post(http, &hosts[0], "?weight=50", Some(bytes.to_vec()));
    assert_eq!(status, 200, "{body}");
    let want = sha256(bytes);
    eventually(&format!("{} routing 50% to {}", hosts[1].addr, &want[..12]), PATIENCE, || {
        let (_, status) = get_json(http, &hosts[1].url(RELEASE));
        let canary = &status["canary"];
        let routing = canary["sha256"] == want.as_str()
            && canary["routing"] == true
            && canary["weight"].as_f64() == Some(50.0);
        if routing { Ok(()) } else { Err(status.to_string()) }
    });
}

/// Two hosts on a store 150 ms away; the second is frozen through four release changes made on
/// the first: a canary aborted, a canary rolled back for failing, a canary's weight moved down,
/// a new stable pushed over a canary. After each, the woken host routes nothing to a version the
/// fleet revoked, by any kind of request, including those already on the wire.
#[test]
fn a_host_frozen_through_release_changes_routes_nothing_revoked_when_it_wakes() {
    let store = Store::new("wake");
    let proxy = StorageProxy::start(&store.gcs.url());
    proxy.set_mode(Mode::Delay(150));
    let endpoint = proxy.url();
    let flags = ["--canary-window", "30s", "--canary-min-requests", "10", "--staleness-wait", "5s"];
    let hosts = store.start_hosts(2, &["--storage-emulator-host", &endpoint], &flags);
    let http = http();
    let (status, body) = push(&http, &hosts[0], &echo(), "");
    assert_eq!(status, 200, "{body}");
    wait_all_serve(&http, &hosts, &echo(), "stable");
    let (stable, bad) = (version(&echo()), version(&misbehave()));
    let mut first_ms = Vec::new();

    // 1. A canary aborted while the host slept.
    start_canary(&http, &hosts, &misbehave());
    let woken = through_a_freeze(
        &store,
        &hosts[1],
        &bad,
        || assert_eq!(post(&http, &hosts[0], "/abort", None).0, 200),
        |m| m["canary"].is_null(),
    );
    woken.assert_none_from(&bad, "canary aborted");
    first_ms.extend(woken.first_ms);

    // 2. A canary rolled back by the first host for failing, while the second slept.
    start_canary(&http, &hosts, &misbehave());
    let woken = through_a_freeze(
        &store,
        &hosts[1],
        &bad,
        || {
            // Half of these reach the canary, which fails every one of them.
            for _ in 0..40 {
                let _ = http.get(hosts[0].url("/flaky?percent=100")).send();
            }
        },
        |m| m["canary"].is_null() && m["last_decision"]["action"] == "auto_rollback",
    );
    woken.assert_none_from(&bad, "canary rolled back for failing");
    first_ms.extend(woken.first_ms);

    // 3. A canary's weight moved from 50 % to 10 % while the host slept.
    let canary = variant(&echo(), 1);
    start_canary(&http, &hosts, &canary);
    let woken = through_a_freeze(
        &store,
        &hosts[1],
        "sha256:0000",
        || assert_eq!(post(&http, &hosts[0], "/promote?weight=10", None).0, 200),
        |m| m["canary"]["weight"].as_f64() == Some(10.0),
    );
    // 200 requests: about 20 on the canary at 10 %, about 100 at 50 %. Pins name no version.
    let on_canary = woken.count(&version(&canary));
    assert!((5..=40).contains(&on_canary), "{on_canary} of 200 on the canary after its weight went to 10%");
    first_ms.extend(woken.first_ms);

    // 4. A new stable pushed over the canary while the host slept: the canary is revoked at
    //    once; the new stable serves once compiled, the old one until then.
    let next = variant(&echo(), 2);
    let woken = through_a_freeze(
        &store,
        &hosts[1],
        &version(&canary),
        || assert_eq!(push(&http, &hosts[0], &next, "").0, 200),
        |m| m["canary"].is_null() && m["stable"] == format!("sha256:{}", sha256(&next)).as_str(),
    );
    woken.assert_none_from(&version(&canary), "canary ended by a push");
    assert!(
        woken.answers.iter().all(|a| a.version == stable || a.version == version(&next)),
        "{:?}",
        woken.answers
    );
    wait_all_serve(&http, &hosts, &next, "the pushed stable");

    let rechecks = metric(&http, &hosts[1], "echo_host_release_rechecks_total");
    assert!(rechecks >= 4.0, "the woken host re-checked the store before routing: {rechecks}");
    first_ms.sort_unstable();
    eprintln!(
        "first responses after SIGCONT (store 150 ms away, 80 requests on the wire over 4 wakes): median {} ms, max {} ms",
        first_ms[first_ms.len() / 2],
        first_ms.last().unwrap()
    );
}

/// The store hangs when two frozen hosts wake: the lenient one serves on its last view after
/// one `--staleness-wait` and counts it; the strict one answers 503 with `Retry-After`, and
/// serves again once the store answers.
#[test]
fn a_store_that_hangs_at_wake_up_costs_one_bounded_wait() {
    let store = Store::new("wake-down");
    let proxy = StorageProxy::start(&store.gcs.url());
    let endpoint = proxy.url();
    let storage = ["--storage-emulator-host", endpoint.as_str()];
    // A store call that hangs ends at `--fetch-timeout` (30 s by default): 5 s here, still five
    // times the wait under test, so that the strict host's recovery at the end does not take 30 s.
    let flags = ["--staleness-wait", "1s", "--fetch-timeout", "5s"];
    let mut hosts = store.start_hosts(1, &storage, &flags);
    hosts.extend(store.start_hosts(1, &storage, &[&flags[..], &["--staleness-strict"]].concat()));
    let http = http();
    assert_eq!(push(&http, &hosts[0], &echo(), "").0, 200);
    wait_all_serve(&http, &hosts, &echo(), "stable");

    let mut frozen: Vec<Frozen> = hosts.iter().map(Frozen::freeze).collect();
    proxy.set_mode(Mode::Hang);
    frozen[1].wait_stale();
    let mut wires: Vec<Wire> = hosts.iter().map(|h| Wire::connect(h.addr)).collect();
    for wire in &mut wires {
        wire.send("/", &[]);
    }
    let thawed: Vec<Instant> = frozen.iter_mut().map(Frozen::thaw).collect();
    let lenient = wires[0].receive();
    let lenient_ms = thawed[0].elapsed().as_millis();
    let strict = wires[1].receive();
    let strict_ms = thawed[1].elapsed().as_millis();
    eprintln!(
        "store hanging at wake-up: lenient {} after {lenient_ms} ms, strict {} after {strict_ms} ms",
        lenient.status, strict.status
    );
    assert_eq!(lenient.status, 200, "{lenient:?}");
    assert_eq!(lenient.version, version(&echo()));
    assert_eq!(strict.status, 503, "{strict:?}");
    assert!(strict.headers.iter().any(|(n, _)| n == "retry-after"), "{strict:?}");
    // Bounded by the wait (1 s), whatever the store does; generous for a busy machine.
    assert!(lenient_ms < 10_000 && strict_ms < 10_000, "{lenient_ms} ms, {strict_ms} ms");
    // The next requests do not wait on the hanging store again.
    assert_eq!(wires[0].get("/", &[]).status, 200);
    assert!(metric(&http, &hosts[0], "echo_host_release_unconfirmed_requests_total") >= 1.0);
    assert!(metric(&http, &hosts[1], "echo_host_release_stale_refused_total") >= 1.0);

    proxy.set_mode(Mode::Pass);
    eventually("the strict host to serve once the store answers", PATIENCE, || {
        let answer = wires[1].get("/", &[]);
        if answer.status == 200 { Ok(()) } else { Err(format!("{answer:?}")) }
    });
}

/// A frozen host stays in the fleet view as asleep (not gone), bound to re-check before it
/// serves; `push --wait` succeeds over the awake ones and names the asleep one; woken, it
/// serves the push.
#[test]
fn push_wait_names_a_frozen_host_as_asleep() {
    let store = Store::new("wake-wait");
    let hosts = store.start_direct(2);
    let http = http();
    assert_eq!(push(&http, &hosts[0], &echo(), "").0, 200);
    wait_all_serve(&http, &hosts, &echo(), "stable");
    let asleep_id = info(&http, &hosts[1])["store"]["instance"].as_str().unwrap().to_string();

    let mut frozen = Frozen::freeze(&hosts[1]);
    eventually("the fleet view to show the frozen host asleep", PATIENCE, || {
        let (_, view) = get_json(&http, &hosts[0].url(&format!("{ADMIN}/fleet")));
        let row =
            view["instances"].as_array().into_iter().flatten().find(|i| i["instance"] == asleep_id.as_str());
        match row {
            Some(row) if row["state"] == "asleep" && row["rechecks_before_serving"] == true => Ok(()),
            _ => Err(view.to_string()),
        }
    });
    let next = variant(&echo(), 3);
    let file = crate::util::write_file(store.dir.path(), "next.wasm", &next);
    let token_file = store.token_file();
    let (status, stdout, stderr) = run_cli(
        &[
            "push",
            &format!("http://{}", hosts[0].addr),
            file.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
            "--wait",
            "--wait-timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    let output = format!("{stdout}\n{stderr}");
    eprintln!("push --wait with a frozen host:\n{output}");
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("1 asleep") && output.contains("re-check"), "{output}");
    assert!(output.contains(&asleep_id) && output.contains("asleep+recheck"), "{output}");
    frozen.thaw();
    assert_eq!(serving(&http, &hosts[0]), version(&next));
    wait_all_serve(&http, &hosts, &next, "the push, on the woken host too");
}
