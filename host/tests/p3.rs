//! WASI 0.3 (`wasi:http/service`) components: the p3 echo answers like the p2 echo under upstream
//! `wasmtime serve -Sp3` and under echo-host; instances are reused up to `--instance-max-requests`
//! and never past it, serve requests concurrently, and are retired on a trap or an overrun while
//! their siblings finish; a swap between a p2 and a p3 component under load fails no request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::differential::{CASES, compare};
use crate::swap::{Kind, SwapLoad, sha12, start_with_admin, upload};
use crate::util::peers::WasmtimeServe;
use crate::util::{self, TestServer, client, echo_p3_wasm, get, misbehave_p3_wasm};

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Instances the active (p3) version's pool has started.
fn instances_started(server: &TestServer) -> u64 {
    match &server.app.registry.active().handler {
        echo_host::versions::registry::Handler::Reused(pool) => pool.instances_started(),
        _ => panic!("the active component is not a p3 one"),
    }
}

/// `/count` on misbehave-p3: (instance id, requests that instance has seen, this one included).
async fn count(client: &reqwest::Client, server: &TestServer) -> (String, u64) {
    let reply = get(client, server.url("/count")).await;
    assert_eq!(reply.status, StatusCode::OK, "/count: {:?}", reply.body);
    let (id, n) =
        reply.body.trim().split_once(' ').unwrap_or_else(|| panic!("/count answered {:?}", reply.body));
    (id.to_string(), n.parse().unwrap_or_else(|_| panic!("/count answered {:?}", reply.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_echo_answers_like_the_p2_echo_under_wasmtime_serve_and_echo_host() {
    let reference = tokio::task::spawn_blocking(|| WasmtimeServe::start(util::echo_wasm())).await.unwrap();
    let upstream = tokio::task::spawn_blocking(|| WasmtimeServe::start_p3(echo_p3_wasm())).await.unwrap();
    let ours = TestServer::start(&["--component", path(echo_p3_wasm())]).await;
    let info: serde_json::Value =
        client().get(ours.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["component"]["world"], "p3", "{info}");

    let ours_base = format!("http://{}", ours.addr);
    let mismatches = compare(
        &reference.base_url(),
        &[("wasmtime serve -Sp3", &upstream.base_url()), ("echo-host", &ours_base)],
    )
    .await;
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        CASES.len(),
        mismatches.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p3_echo_streams_256_mib_by_hash_under_both_servers() {
    let upstream = tokio::task::spawn_blocking(|| WasmtimeServe::start_p3(echo_p3_wasm())).await.unwrap();
    crate::interop::assert_streamed_echo(&upstream.base_url(), true).await;
    let ours = TestServer::start(&["--component", path(echo_p3_wasm()), "--max-body", "512MiB"]).await;
    crate::interop::assert_streamed_echo(&format!("http://{}", ours.addr), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_up_to_its_request_limit_and_never_past_it() {
    let server =
        TestServer::start(&["--component", path(misbehave_p3_wasm()), "--instance-max-requests", "5"]).await;
    let client = client();
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..12 {
        let (id, n) = count(&client, &server).await;
        seen.entry(id).or_default().push(n);
    }
    for (id, counts) in &seen {
        assert!(counts.len() <= 5, "instance {id} served {} requests (limit 5): {seen:?}", counts.len());
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts, &expected,
            "instance {id}: its global counter should count its own requests: {seen:?}"
        );
    }
    assert!(seen.values().any(|c| c.len() == 5), "no instance was reused up to the limit: {seen:?}");
    assert!(seen.len() >= 3, "12 requests at 5 per instance need 3 instances: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_serves_concurrent_requests_up_to_its_concurrency_limit() {
    let server =
        TestServer::start(&["--component", path(misbehave_p3_wasm()), "--instance-max-concurrent", "3"])
            .await;
    let client = client();
    count(&client, &server).await;
    // Nine requests that each wait 1.5 s: all in flight at once.
    let replies = futures::future::join_all((0..9).map(|_| get(&client, server.url("/sleep?ms=1500")))).await;
    let mut per_instance: HashMap<String, usize> = HashMap::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let id = reply.body.rsplit(' ').next().unwrap().trim().to_string();
        *per_instance.entry(id).or_default() += 1;
    }
    assert!(per_instance.values().all(|&n| n <= 3), "an instance took more than 3 at once: {per_instance:?}");
    assert!(
        per_instance.values().any(|&n| n >= 2),
        "no instance served two requests at once: {per_instance:?}"
    );
    assert!(per_instance.len() >= 3, "nine requests at 3 per instance need 3 instances: {per_instance:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_retires_the_instance_and_the_next_request_is_served() {
    let server = TestServer::start(&["--component", path(misbehave_p3_wasm())]).await;
    let client = client();
    let (first, _) = count(&client, &server).await;
    let traps_before = server.metric("echo_host_guest_traps_total").await;
    let trapped = get(&client, server.url("/trap")).await;
    assert_eq!(trapped.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", trapped.body);
    trapped.assert_names_request_id();
    assert_eq!(server.metric("echo_host_guest_traps_total").await, traps_before + 1.0);
    // The trap went to the one idle instance, which is gone: a fresh one counts from 1.
    for expected in 1..=3 {
        let (id, n) = count(&client, &server).await;
        assert_ne!(id, first, "the instance that trapped served again");
        assert_eq!(n, expected, "instance {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_ends_in_504_while_its_siblings_on_the_instance_finish() {
    let server =
        TestServer::start(&["--component", path(misbehave_p3_wasm()), "--request-timeout", "4s"]).await;
    let client = client();
    count(&client, &server).await;
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/sleep?ms=60000"));
        async move { get(&client, url).await }
    });
    // Siblings that start 1.5 s into the slow one and end 0.5 s after its 4 s deadline, 1 s before
    // their own.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let siblings =
        futures::future::join_all((0..3).map(|_| get(&client, server.url("/sleep?ms=3000")))).await;
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", slow.body);
    slow.assert_names_request_id();
    let mut instances = HashMap::<String, usize>::new();
    for reply in &siblings {
        assert_eq!(reply.status, StatusCode::OK, "a sibling failed: {:?}", reply.body);
        *instances.entry(reply.body.rsplit(' ').next().unwrap().trim().to_string()).or_default() += 1;
    }
    assert!(instances.values().any(|&n| n >= 2), "the siblings never shared an instance: {instances:?}");

    // A guest that computes forever is stopped the same way, and the host serves on.
    let looped = get(&client, server.url("/loop")).await;
    assert_eq!(looped.status, StatusCode::GATEWAY_TIMEOUT, "{:?}", looped.body);
    let (_, n) = count(&client, &server).await;
    assert!(n >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_holds_per_instance() {
    let server =
        TestServer::start(&["--component", path(misbehave_p3_wasm()), "--max-memory", "32MiB"]).await;
    let client = client();
    let within = get(&client, server.url("/alloc?mb=8")).await;
    assert_eq!(within.status, StatusCode::OK, "{:?}", within.body);
    let over = get(&client, server.url("/alloc?mb=64")).await;
    assert_eq!(over.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", over.body);
    let (_, n) = count(&client, &server).await;
    assert!(n >= 1);
    assert!(instances_started(&server) >= 2, "the instance that ran out of memory was not retired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_between_p2_and_p3_under_load_fail_no_request() {
    let dir = util::scratch_dir();
    let server = Arc::new(start_with_admin(dir.path(), &["--concurrency", "1000"]).await);
    let p2 = std::fs::read(util::echo_wasm()).unwrap();
    let p3 = std::fs::read(echo_p3_wasm()).unwrap();
    // Both answer `GET /` the same way: every version that serves is an echo.
    let known = HashMap::from([(sha12(&p2), Kind::Echo), (sha12(&p3), Kind::Echo)]);
    let load = SwapLoad::start(server.clone(), Arc::new(std::sync::Mutex::new(known)));
    for (i, bytes) in [&p3, &p2, &p3, &p2, &p3, &p2].into_iter().enumerate() {
        let expected = sha12(bytes);
        let started = Instant::now();
        let (status, outcome) = upload(&server, bytes.clone(), &[]).await;
        assert_eq!(status, 200, "swap {i}: {outcome}");
        loop {
            let reply = get(&client(), server.url("/")).await;
            if reply.header("echo-host-component").ends_with(&expected) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "swap {i} never served");
        }
        // Serve a while on each version.
        load.serve_more(200).await;
    }
    let total = load.finish_without_failures().await;
    eprintln!("requests served across 6 swaps between p2 and p3: {total}, failed: 0");
}
