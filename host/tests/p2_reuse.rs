//! Opt-in serial reuse of p2 (`wasi:http/proxy`) instances (`--instance-max-requests` above 1):
//! without it every request gets a fresh instance (globals never survive a request); with it an
//! instance serves up to N requests one after another and never more, and is retired by a trap,
//! a deadline, a guest that runs on after its response or one that returns holding a response
//! open (a `fields` or the stdout stream kept do not retire it); its guest's log lines carry each
//! request's id and its budgets are per request; a swap under load moves new requests
//! to the new version and fails none.
//!
//! Each request here waits for the host to count no request in flight before the next is sent:
//! an instance goes back to its pool before its request's permit is released, so the next
//! request finds it idle (or, when it was retired, finds none).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::swap::{Kind, SwapLoad, sha12, start_with_admin, upload};
use crate::util::{self, HostProcess, TestServer, client, get, misbehave_wasm};

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Waits until the host counts no request in flight: every guest before has stopped.
async fn settled(server: &TestServer) {
    let started = Instant::now();
    while server.metric("echo_host_requests_in_flight").await != 0.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "a request stayed in flight for 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `GET path` and the reply, once the host has settled.
async fn request(client: &reqwest::Client, server: &TestServer, path: &str) -> util::Reply {
    let reply = get(client, server.url(path)).await;
    settled(server).await;
    reply
}

/// `/count` on misbehave: (instance id, requests that instance has seen, this one included).
async fn count(client: &reqwest::Client, server: &TestServer) -> (String, u64) {
    let reply = request(client, server, "/count").await;
    assert_eq!(reply.status, StatusCode::OK, "/count: {:?}", reply.body);
    let (id, n) =
        reply.body.trim().split_once(' ').unwrap_or_else(|| panic!("/count answered {:?}", reply.body));
    (id.to_string(), n.parse().unwrap_or_else(|_| panic!("/count answered {:?}", reply.body)))
}

async fn reusing(max_requests: &str, extra: &[&str]) -> TestServer {
    let mut flags = vec!["--component", path(misbehave_wasm()), "--instance-max-requests", max_requests];
    flags.extend_from_slice(extra);
    TestServer::start(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_every_p2_request_gets_a_fresh_instance() {
    let server = TestServer::start(&["--component", path(misbehave_wasm())]).await;
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (id, n) = count(&client, &server).await;
        assert_eq!(n, 1, "a global survived a request without reuse (instance {id})");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 5, "instance ids repeat: {ids:?}");
    assert_eq!(server.app.registry.active().handler.instances_started(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2_instance_serves_up_to_its_request_limit_and_never_past_it() {
    let server = reusing("5", &[]).await;
    let client = client();
    let mut replies = Vec::new();
    for _ in 0..12 {
        replies.push(count(&client, &server).await);
    }
    // One request at a time: one instance until its limit, then a fresh one.
    let counts: Vec<u64> = replies.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], "{replies:?}");
    let mut per_instance: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, _) in &replies {
        *per_instance.entry(id).or_default() += 1;
    }
    assert_eq!(per_instance.len(), 3, "12 requests at 5 per instance: {replies:?}");
    assert_eq!(server.app.registry.active().handler.instances_started(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_an_instance_of_their_own() {
    let server = reusing("100", &[]).await;
    let client = client();
    let replies = futures::future::join_all((0..8).map(|_| get(&client, server.url("/sleep?ms=500")))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    settled(&server).await;
    let started = server.app.registry.active().handler.instances_started().unwrap();
    assert_eq!(started, 8, "eight requests at once need eight instances (one request each at a time)");
    // Each of the eight now serves its second request.
    let (_, n) = count(&client, &server).await;
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_retires_a_reused_p2_instance_and_the_next_request_is_served() {
    let server = reusing("100", &[]).await;
    let client = client();
    let (first, _) = count(&client, &server).await;
    let traps_before = server.metric("echo_host_guest_traps_total").await;
    let trapped = request(&client, &server, "/trap").await;
    assert_eq!(trapped.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", trapped.body);
    trapped.assert_names_request_id();
    assert_eq!(server.metric("echo_host_guest_traps_total").await, traps_before + 1.0);
    // The trap went to the one idle instance, which is gone: a fresh one counts from 1.
    let mut next = None;
    for expected in 1..=3 {
        let (id, n) = count(&client, &server).await;
        assert_ne!(id, first, "the instance that trapped served again");
        assert_eq!(n, expected, "instance {id}");
        assert!(next.get_or_insert(id.clone()) == &id, "the fresh instance was not reused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2_request_past_its_deadline_ends_in_504_and_its_instance_is_retired() {
    let server = reusing("100", &["--request-timeout", "1s"]).await;
    let client = client();
    for stuck in ["/sleep?ms=60000", "/loop"] {
        let (before, _) = count(&client, &server).await;
        let reply = request(&client, &server, stuck).await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{stuck}: {:?}", reply.body);
        reply.assert_names_request_id();
        let (after, n) = count(&client, &server).await;
        assert_ne!(after, before, "{stuck}: the instance stopped at the deadline served again");
        assert_eq!(n, 1, "{stuck}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2_instance_that_runs_on_or_keeps_a_response_open_is_retired() {
    let server = reusing("100", &["--after-response-grace", "200ms", "--instance-idle-timeout", "60s"]).await;
    let client = client();
    // A guest still computing after its response: stopped after the grace, never reused.
    let (before, _) = count(&client, &server).await;
    let reply = request(&client, &server, "/finish-then-loop").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "finished\n"));
    let (after, n) = count(&client, &server).await;
    assert_ne!(after, before, "the instance stopped after its response served again");
    assert_eq!(n, 1);
    // A guest that returns holding its response body open: the instance goes, and with it the
    // body, which ends (cut) instead of staying open for as long as the instance would live.
    let response = client
        .get(server.url("/leak-body"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the head of /leak-body");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await;
    assert!(
        !body.as_ref().is_err_and(|e| e.is_timeout()),
        "the body of a response the guest kept open never ended: {body:?}"
    );
    settled(&server).await;
    let (fresh, n) = count(&client, &server).await;
    assert_ne!(fresh, after, "the instance that kept its response body served again");
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2_instance_that_keeps_other_resources_or_logs_is_reused() {
    let server = reusing("100", &["--after-response-grace", "1s"]).await;
    let client = client();
    let (id, _) = count(&client, &server).await;
    // A `fields` kept in the instance, the stdout stream its libc keeps open, a wait after the
    // response that ends within the grace: none holds a client's exchange open.
    for path in ["/leak", "/log", "/finish-then-sleep?ms=10"] {
        let reply = request(&client, &server, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
    }
    assert_eq!(count(&client, &server).await, (id, 5), "one instance served the five requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_and_budgets_hold_per_request_on_a_reused_p2_instance() {
    let server = reusing("100", &["--max-memory", "32MiB", "--max-guest-log-lines", "5"]).await;
    let client = client();
    let (first, _) = count(&client, &server).await;
    // The log budget is per request: each of three requests may print its five lines.
    for _ in 0..3 {
        let reply = request(&client, &server, "/log-flood?lines=5").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    assert_eq!(server.metric("echo_host_guest_log_dropped_total").await, 0.0);
    let reply = request(&client, &server, "/log-flood?lines=6").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(server.metric("echo_host_guest_log_dropped_total").await, 1.0);
    assert_eq!(count(&client, &server).await, (first.clone(), 6), "one instance served all");
    // Past the memory limit: a trap, out of memory, and the instance is retired.
    let over = request(&client, &server, "/alloc?mb=64").await;
    assert_eq!(over.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", over.body);
    let (id, n) = count(&client, &server).await;
    assert_ne!(id, first);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_concurrency_instances_wait_idle_across_versions() {
    let dir = util::scratch_dir();
    let flags = ["--concurrency", "3", "--instance-max-requests", "100", "--instance-idle-timeout", "60s"];
    let server = start_with_admin(dir.path(), &flags).await;
    let client = client();
    let misbehave = std::fs::read(misbehave_wasm()).unwrap();
    let idle = || server.app.runtime.stores().idle_p2().idle();
    for (i, bytes) in [misbehave.clone(), crate::util::fleet::variant(&misbehave, 1)].into_iter().enumerate()
    {
        let (status, outcome) = upload(&server, bytes, &[]).await;
        assert_eq!(status, 200, "{outcome}");
        // Three requests at once: three instances of this version.
        let replies =
            futures::future::join_all((0..3).map(|_| get(&client, server.url("/sleep?ms=300")))).await;
        let statuses: Vec<StatusCode> = replies.iter().map(|r| r.status).collect();
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
        settled(&server).await;
        assert_eq!(idle(), 3, "version {i}: the idle instances of every version together");
    }
    // The second version's three found no room (the first version's wait in its history, one of
    // the four `--keep-versions`): gone.
    let (_, n) = count(&client, &server).await;
    assert_eq!(n, 1, "an instance of the second version was kept past the budget");
    assert_eq!(idle(), 3);
}

#[test]
fn a_reused_p2_instance_logs_under_each_request_id() {
    let host =
        HostProcess::start(&["--component", path(misbehave_wasm()), "--instance-max-requests", "10"], &[]);
    let client = reqwest::blocking::Client::new();
    // Each request once the one before has left the host (its instance is back in the pool).
    let settled = || {
        let started = Instant::now();
        loop {
            let metrics =
                client.get(host.url("/.well-known/echo-host/metrics")).send().unwrap().text().unwrap();
            if util::metric_value(&metrics, "echo_host_requests_in_flight") == 0.0 {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "a request stayed in flight for 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let get = |path: &str| {
        let response = client.get(host.url(path)).send().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let id = response.headers()["echo-host-request-id"].to_str().unwrap().to_string();
        let body = response.text().unwrap();
        settled();
        (id, body)
    };
    let (_, first) = get("/count");
    let logged = [get("/log").0, get("/log").0];
    let (_, last) = get("/count");
    let instance = first.split_once(' ').unwrap().0;
    assert_eq!(last, format!("{instance} 4"), "one instance served the four requests (first: {first})");
    for request_id in &logged {
        let stdout_of = |l: &String| l.contains("misbehave stdout line") && l.contains(request_id.as_str());
        let started = Instant::now();
        let line = loop {
            if let Some(line) = host.lines().into_iter().find(stdout_of) {
                break line;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no stdout line under {request_id}: {:#?}",
                host.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["request_id"], request_id.as_str(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swap_under_load_moves_new_requests_to_the_new_version_and_fails_none() {
    let dir = util::scratch_dir();
    let server = Arc::new(
        start_with_admin(dir.path(), &["--concurrency", "1000", "--instance-max-requests", "64"]).await,
    );
    let echo = std::fs::read(util::echo_wasm()).unwrap();
    let misbehave = std::fs::read(misbehave_wasm()).unwrap();
    let known = HashMap::from([(sha12(&echo), Kind::Echo), (sha12(&misbehave), Kind::Misbehave)]);
    let load = SwapLoad::start(server.clone(), Arc::new(std::sync::Mutex::new(known)));
    let probe = client();
    for (i, bytes) in [&misbehave, &echo, &misbehave, &echo].into_iter().enumerate() {
        let (status, outcome) = upload(&server, bytes.clone(), &[]).await;
        assert_eq!(status, 200, "swap {i}: {outcome}");
        // Every request sent after the swap answered goes to the new version.
        for _ in 0..20 {
            let reply = get(&probe, server.url("/")).await;
            assert!(
                reply.header("echo-host-component").ends_with(&sha12(bytes)),
                "swap {i}: an old version answered"
            );
        }
        load.serve_more(200).await;
        assert!(
            server.app.registry.active().handler.instances_started().unwrap() < 200,
            "swap {i}: the instances were not reused"
        );
    }
    let total = load.finish_without_failures().await;
    eprintln!("requests served across 4 swaps with p2 reuse: {total}, failed: 0");
}
