//! What a version costs (issue #31): guest CPU per request (the time its task was polled, not
//! the time it waited), instantiation time and peak linear memory per instance, by version, in
//! `/metrics`, the release status (`admin/release`, which the status page and `release status`
//! show) for a p2 and a p3 component.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{self, TestServer};

const TOKEN: &str = "version-cost-test-token-0123456789";
const RELEASE: &str = "/.well-known/echo-host/admin/release";

async fn start(component: &std::path::Path, dir: &std::path::Path) -> TestServer {
    let token = util::write_file(dir, "token", TOKEN.as_bytes());
    TestServer::start(&[
        "--component",
        component.to_str().unwrap(),
        "--admin-token-file",
        token.to_str().unwrap(),
        "--instance-idle-timeout",
        "200ms",
    ])
    .await
}

/// The stable version's `cost` in the release status.
async fn cost(server: &TestServer) -> Value {
    let status: Value = util::client()
        .get(server.url(RELEASE))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["versions"][0]["cost"].clone()
}

/// Sends `n` GETs for `path`, each answered 200.
async fn send(server: &TestServer, path: &str, n: usize) {
    for _ in 0..n {
        let reply = util::get(&util::client(), server.url(path)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
}

/// The count of `family` for the server's version in `/metrics`.
async fn count(server: &TestServer, family: &str) -> f64 {
    let version = server.app.registry.active().version().to_string();
    server.metric(&format!("echo_host_{family}_count{{version=\"{version}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p2_version_costs_cpu_per_request_not_wall_time_and_its_memory_per_instance() {
    let dir = util::scratch_dir();
    let server = start(util::misbehave_wasm(), dir.path()).await;
    assert!(cost(&server).await.is_null(), "no cost before the first request");
    // Waiting 300 ms: the guest is polled for a fraction of that.
    send(&server, "/sleep?ms=300", 3).await;
    let waiting = cost(&server).await;
    let waiting_cpu = waiting["cpu_ms"].as_f64().unwrap();
    assert_eq!(waiting["cpu_samples"], 3, "{waiting}");
    assert!(waiting_cpu < 100.0, "300 ms of waiting cost {waiting_cpu} ms of CPU: {waiting}");
    let small = waiting["memory_bytes"].as_u64().unwrap();
    // Touching 48 MiB: the mean peak memory (of 6 requests, 3 of them allocating) grows by ~24 MiB, and
    // filling it is work.
    send(&server, "/alloc?mb=48", 3).await;
    let busy = cost(&server).await;
    let memory = busy["memory_bytes"].as_u64().unwrap();
    assert!(memory >= small + (20 << 20), "mean peak memory {memory} bytes after 48 MiB allocations: {busy}");
    assert!(
        busy["cpu_ms"].as_f64().unwrap() > waiting_cpu,
        "filling memory costs more CPU than waiting: {busy}"
    );
    assert_eq!(busy["instances"], 6, "one instantiation per p2 request: {busy}");
    assert!(busy["instantiation_ms"].as_f64().unwrap() > 0.0, "{busy}");
    for family in
        ["version_guest_cpu_seconds", "version_instantiation_seconds", "version_instance_memory_bytes"]
    {
        assert_eq!(count(&server, family).await, 6.0, "{family}");
    }
    eprintln!("p2 cost: waiting {waiting}, allocating {busy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p3_version_reports_instantiation_and_memory_per_instance() {
    let dir = util::scratch_dir();
    let server = start(util::misbehave_p3_wasm(), dir.path()).await;
    send(&server, "/alloc?mb=16", 2).await;
    // The instance reports its peak memory when it is retired (idle for 200 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    let cost = loop {
        let cost = cost(&server).await;
        if !cost["memory_bytes"].is_null() || Instant::now() > deadline {
            break cost;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let memory = cost["memory_bytes"].as_u64().unwrap_or_else(|| panic!("no memory reported: {cost}"));
    assert!(memory >= 16 << 20, "an instance that allocated 16 MiB peaked at {memory} bytes: {cost}");
    assert!(cost["instances"].as_u64().unwrap() >= 1, "{cost}");
    assert!(cost["instantiation_ms"].as_f64().unwrap() > 0.0, "{cost}");
    assert!(cost["cpu_ms"].is_null(), "p3 requests share their instance's task: not measured: {cost}");
    assert!(count(&server, "version_instantiation_seconds").await >= 1.0);
    eprintln!("p3 cost: {cost}");
}
