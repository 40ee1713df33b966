//! OTLP traces (#31) against a real receiver (`testing/otlp/receiver.py`: the official
//! `opentelemetry-proto` protobufs, over gRPC and over HTTP): each request's server span with its
//! parent, attributes and status, the instantiation and outbound spans under it, the downstream
//! service seeing the `traceparent`; what the guest cost on the server span, which still ends
//! with the response when the guest runs on; p3's `instantiate` span on the request that started
//! the instance only; collectors that are down, blackholed, slow or refusing
//! change no response and cost counted spans only; the flush at shutdown, bounded; bad variables
//! refused at start-up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::gcs::MetadataStub;
use crate::util::otlp::{Blackhole, Receiver, down_endpoint};
use crate::util::{HostProcess, misbehave_p3_wasm, misbehave_wasm, poll_metric_until};

/// Generous: spans are exported every 20 ms here, but the suite may share the machine.
const PATIENCE: Duration = Duration::from_secs(30);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A host serving the misbehaving component (unless `extra_args` names another) with
/// `extra_args`, exporting to `endpoint` over `protocol`.
fn traced_host(
    endpoint: &str,
    protocol: &str,
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
) -> HostProcess {
    let mut args = vec![];
    if !extra_args.contains(&"--component") {
        args.extend(["--component", misbehave_wasm().to_str().unwrap()]);
    }
    args.extend_from_slice(extra_args);
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "20"),
        ("K_SERVICE", "echo-traced"),
        ("K_REVISION", "echo-traced-00007"),
        // On "Cloud Run" the host asks the metadata server for its id and region: nobody listens
        // on the discard port (refused at once), unless a test names its stub.
        ("GCE_METADATA_HOST", "127.0.0.1:9"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
    ];
    env.extend_from_slice(extra_env);
    HostProcess::start(&args, &env)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// The server span whose `url.path` is `path`.
fn server_span<'a>(spans: &'a [Value], path: &str) -> Option<&'a Value> {
    spans.iter().find(|s| s["kind"] == "SPAN_KIND_SERVER" && s["attributes"]["url.path"] == path)
}

fn children<'a>(spans: &'a [Value], parent: &Value) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["parent_span_id"] == parent["span_id"] && s["trace_id"] == parent["trace_id"])
        .collect()
}

/// A loopback HTTP/1.1 server that answers `200 upstream-ok` and keeps every request head.
struct Upstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream-ok",
                );
            }
        });
        Upstream { addr, heads }
    }

    /// The `traceparent` of the request it received last.
    fn traceparent(&self) -> Option<String> {
        let heads = self.heads.lock().unwrap();
        let head = heads.last()?;
        head.lines().find_map(|line| line.strip_prefix("traceparent:").map(|v| v.trim().to_string()))
    }
}

/// A plain request under a caller's `traceparent` and an outbound call, over `protocol`: the
/// server span is the caller's child with the HTTP attributes and the resource; instantiation and
/// the call are its children; the upstream got a `traceparent` naming the call's span.
fn plain_and_outbound(protocol: &str) {
    let receiver = Receiver::start();
    let endpoint = if protocol == "grpc" { receiver.grpc_endpoint() } else { receiver.http_endpoint() };
    let upstream = Upstream::start();
    let allow = upstream.addr.to_string();
    let metadata = MetadataStub::start("0087244a80be6d6ebd", 3600);
    let metadata_host = metadata.host();
    // A header the collector requires (percent-encoded, as the specification has it).
    let env = [
        ("GCE_METADATA_HOST", metadata_host.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%20key"),
    ];
    let host = traced_host(&endpoint, protocol, &env, &["--allow-outbound", &allow]);
    let http = client();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let ok = http.get(host.url("/ok?x=1")).header("traceparent", &traceparent).send().unwrap();
    assert_eq!(ok.status(), 200);
    let version = ok.headers()["echo-host-component"].to_str().unwrap().to_string();
    let fetch = format!("/fetch?url=http://{}/down", upstream.addr);
    let fetched = http.get(host.url(&fetch)).send().unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().unwrap(), "upstream 200\nupstream-ok");

    let spans =
        receiver.wait_for("the server spans of /ok and /fetch with their children", PATIENCE, |spans| {
            [("/ok", 1), ("/fetch", 2)].iter().all(|(path, kids)| {
                server_span(spans, path).is_some_and(|server| children(spans, server).len() == *kids)
            })
        });
    assert!(spans.iter().all(|s| s["transport"] == if protocol == "grpc" { "grpc" } else { "http" }));
    assert!(
        spans.iter().all(|s| s["headers"]["x-api-key"] == "s3cret key"),
        "every export carries the header"
    );
    let server = server_span(&spans, "/ok").unwrap();
    assert_eq!((server["trace_id"].as_str(), server["parent_span_id"].as_str()), (Some(TRACE), Some(PARENT)));
    assert_eq!(server["name"], "GET");
    assert_eq!(server["status_code"], "STATUS_CODE_UNSET", "{server}");
    let attributes = &server["attributes"];
    for (key, expected) in [
        ("http.request.method", Value::from("GET")),
        ("url.query", Value::from("x=1")),
        ("url.scheme", Value::from("http")),
        ("server.address", Value::from("127.0.0.1")),
        ("network.protocol.version", Value::from("1.1")),
        ("http.response.status_code", Value::from(200)),
        ("echo_host.outcome", Value::from("responded")),
        ("echo_host.component.version", Value::from(version.as_str())),
        ("echo_host.component.role", Value::from("stable")),
    ] {
        assert_eq!(attributes[key], expected, "{key} in {server}");
    }
    assert_eq!(
        attributes["echo_host.request_id"].as_str(),
        ok.headers()["echo-host-request-id"].to_str().ok()
    );
    let resource = &server["resource"];
    assert_eq!(resource["service.name"], "echo-traced");
    assert_eq!(resource["faas.version"], "echo-traced-00007");
    assert_eq!(resource["cloud.platform"], "gcp_cloud_run");
    assert_eq!(resource["deployment.environment"], "test");
    assert_eq!(resource["cloud.region"], "europe-west1", "the metadata server's region: {resource}");
    assert_eq!(resource["faas.instance"], "0087244a80be6d6ebd", "the metadata server's id: {resource}");
    let instantiate = children(&spans, server);
    assert_eq!(instantiate[0]["name"], "instantiate");
    assert!(instantiate[0]["start_ns"].as_u64() >= server["start_ns"].as_u64());

    let fetch_server = server_span(&spans, "/fetch").unwrap();
    assert_eq!(fetch_server["parent_span_id"], "", "no caller: a root span");
    // Its access-log line names the trace it started, as Cloud Logging joins them.
    let fetch_id = fetch_server["attributes"]["echo_host.request_id"].as_str().unwrap();
    let access = host.wait_for_line(&format!("\"request_id\":\"{fetch_id}\""), PATIENCE).unwrap();
    let access: Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["logging.googleapis.com/trace"], fetch_server["trace_id"], "{access}");
    let client_span =
        *children(&spans, fetch_server).iter().find(|s| s["kind"] == "SPAN_KIND_CLIENT").unwrap();
    assert_eq!(client_span["attributes"]["http.response.status_code"], 200);
    assert_eq!(client_span["attributes"]["server.port"], upstream.addr.port());
    assert_eq!(client_span["attributes"]["url.full"], format!("http://{}/down", upstream.addr));
    let sent = upstream.traceparent().expect("the upstream saw a traceparent");
    let expected = format!(
        "00-{}-{}-01",
        fetch_server["trace_id"].as_str().unwrap(),
        client_span["span_id"].as_str().unwrap()
    );
    assert_eq!(sent, expected, "the downstream joins the trace under the call's span");
}

#[test]
fn grpc_spans_have_their_parent_attributes_and_outbound_children() {
    plain_and_outbound("grpc");
}

#[test]
fn http_protobuf_spans_have_their_parent_attributes_and_outbound_children() {
    plain_and_outbound("http/protobuf");
}

/// A trap and a deadline are errors on their spans, naming the outcome; Cloud Run's
/// `X-Cloud-Trace-Context` is a parent too; a caller that did not sample gets no span.
#[test]
fn failing_requests_are_error_spans_and_unsampled_callers_are_respected() {
    let receiver = Receiver::start();
    let host = traced_host(&receiver.grpc_endpoint(), "grpc", &[], &["--request-timeout", "1s"]);
    let http = client();
    let cloud = "105445aa7843bc8bf206b12000100000/123;o=1";
    let trap = http.get(host.url("/trap")).header("x-cloud-trace-context", cloud).send().unwrap();
    assert_eq!(trap.status(), 500);
    assert_eq!(http.get(host.url("/sleep?ms=5000")).send().unwrap().status(), 504);
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    assert_eq!(
        http.get(host.url("/ok?unsampled")).header("traceparent", unsampled).send().unwrap().status(),
        200
    );
    // Sent last: once its span is in, the earlier ones were exported too (one queue, in order).
    assert_eq!(http.get(host.url("/ok?last")).send().unwrap().status(), 200);

    let spans = receiver.wait_for("the spans of /trap, /sleep and the last /ok", PATIENCE, |spans| {
        ["/trap", "/sleep"].iter().all(|p| server_span(spans, p).is_some())
            && spans.iter().any(|s| s["attributes"]["url.query"] == "last")
    });
    let trap = server_span(&spans, "/trap").unwrap();
    assert_eq!(trap["trace_id"], "105445aa7843bc8bf206b12000100000");
    assert_eq!(trap["parent_span_id"], format!("{:016x}", 123), "the decimal span id of Cloud Run's header");
    assert_eq!(trap["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(trap["status_message"], "trapped");
    assert_eq!(trap["attributes"]["echo_host.outcome"], "trapped");
    assert_eq!(trap["attributes"]["http.response.status_code"], 500);
    let timeout = server_span(&spans, "/sleep").unwrap();
    assert_eq!(timeout["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(timeout["attributes"]["echo_host.outcome"], "timed_out");
    assert_eq!(timeout["attributes"]["error.type"], "timed_out");
    assert_eq!(timeout["attributes"]["http.response.status_code"], 504);
    assert!(
        !spans.iter().any(|s| s["attributes"]["url.query"] == "unsampled" || s["trace_id"] == TRACE),
        "a caller that did not sample its trace gets no span (parent-based sampling)"
    );
}

/// A server span's attribute as a number (the receiver decodes doubles and ints alike).
fn number(span: &Value, key: &str) -> Option<f64> {
    span["attributes"][key].as_f64()
}

fn duration_ns(span: &Value) -> u64 {
    span["end_ns"].as_u64().unwrap() - span["start_ns"].as_u64().unwrap()
}

/// A p2 request's server span carries what its guest cost: CPU, peak memory, instantiation. A
/// guest that runs on after its complete response (`--after-response-grace`) gets its cost on the
/// span, whose duration is still the request's, not the guest's.
#[test]
fn p2_server_spans_carry_the_guest_cost_and_end_with_the_response() {
    let receiver = Receiver::start();
    let host = traced_host(&receiver.grpc_endpoint(), "grpc", &[], &["--after-response-grace", "10s"]);
    let http = client();
    assert_eq!(http.get(host.url("/ok")).send().unwrap().status(), 200);
    let asked = Instant::now();
    let finished = http.get(host.url("/finish-then-sleep?ms=1500")).send().unwrap();
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.text().unwrap(), "finished\n");
    let latency = asked.elapsed();

    let spans = receiver.wait_for("the server spans of /ok and /finish-then-sleep", PATIENCE, |spans| {
        ["/ok", "/finish-then-sleep"].iter().all(|p| server_span(spans, p).is_some())
    });
    for path in ["/ok", "/finish-then-sleep"] {
        let server = server_span(&spans, path).unwrap();
        let cpu = number(server, "echo_host.guest.cpu_ms").unwrap_or_else(|| panic!("no CPU time: {server}"));
        assert!(cpu > 0.0 && cpu < 10_000.0, "{server}");
        let memory = number(server, "echo_host.instance.memory_peak_bytes").expect("a peak memory");
        assert!(memory >= 65536.0, "{server}");
        let instantiation =
            number(server, "echo_host.instance.instantiation_ms").expect("an instantiation time");
        assert!(instantiation > 0.0 && instantiation < 10_000.0, "{server}");
    }
    let after = server_span(&spans, "/finish-then-sleep").unwrap();
    assert!(
        duration_ns(after) <= latency.as_nanos() as u64,
        "the span lasts {} ns, the client waited {latency:?}: {after}",
        duration_ns(after)
    );
}

/// The p3 request that starts an instance has its `instantiate` span (and the instantiation time
/// on its server span); the next request, on the same instance, has neither. Both carry the
/// instance's peak memory, neither a CPU time (a reused instance's guest is not one request's).
#[test]
fn p3_the_request_that_starts_an_instance_has_its_instantiate_span() {
    let receiver = Receiver::start();
    let component = misbehave_p3_wasm().to_str().unwrap();
    let host = traced_host(&receiver.http_endpoint(), "http/protobuf", &[], &["--component", component]);
    let http = client();
    let first = http.get(host.url("/count?first")).send().unwrap().text().unwrap();
    let second = http.get(host.url("/count?second")).send().unwrap().text().unwrap();
    let instance = |body: &str| body.split(' ').next().unwrap().to_string();
    assert_eq!(instance(&first), instance(&second), "{first} then {second}: not one instance");
    // The second server span is exported after the first's spans and its own instantiate span
    // (one queue, in the order they end).
    let by_query = |spans: &[Value], query: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == "SPAN_KIND_SERVER" && s["attributes"]["url.query"] == query)
            .cloned()
    };
    let spans = receiver.wait_for("the server spans of both /count", PATIENCE, |spans| {
        by_query(spans, "first").is_some() && by_query(spans, "second").is_some()
    });
    let first = by_query(&spans, "first").unwrap();
    let kids = children(&spans, &first);
    assert_eq!(kids.len(), 1, "{spans:?}");
    let instantiate = kids[0];
    assert_eq!(instantiate["name"], "instantiate");
    assert_eq!(instantiate["kind"], "SPAN_KIND_INTERNAL");
    assert_eq!(instantiate["status_code"], "STATUS_CODE_UNSET");
    assert!(instantiate["start_ns"].as_u64() >= first["start_ns"].as_u64(), "{instantiate}");
    assert!(instantiate["end_ns"].as_u64() <= first["end_ns"].as_u64(), "{instantiate}");
    let instantiation = number(&first, "echo_host.instance.instantiation_ms").expect("an instantiation time");
    assert!(instantiation > 0.0, "{first}");
    let second = by_query(&spans, "second").unwrap();
    assert!(children(&spans, &second).is_empty(), "{spans:?}");
    assert_eq!(second["attributes"].get("echo_host.instance.instantiation_ms"), None, "{second}");
    for server in [&first, &second] {
        assert!(
            number(server, "echo_host.instance.memory_peak_bytes").is_some_and(|b| b >= 65536.0),
            "{server}"
        );
        assert_eq!(server["attributes"].get("echo_host.guest.cpu_ms"), None, "{server}");
    }
}

/// A p3 component's requests get their server spans too, a trap among them in error.
#[test]
fn p3_requests_get_server_spans() {
    let receiver = Receiver::start();
    let component = misbehave_p3_wasm().to_str().unwrap();
    let host = traced_host(&receiver.http_endpoint(), "http/protobuf", &[], &["--component", component]);
    let http = client();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(http.get(host.url("/?p3")).header("traceparent", &traceparent).send().unwrap().status(), 200);
    assert_eq!(http.get(host.url("/trap")).send().unwrap().status(), 500);
    let spans = receiver.wait_for("the p3 spans", PATIENCE, |spans| {
        server_span(spans, "/").is_some() && server_span(spans, "/trap").is_some()
    });
    let ok = server_span(&spans, "/").unwrap();
    assert_eq!((ok["trace_id"].as_str(), ok["parent_span_id"].as_str()), (Some(TRACE), Some(PARENT)));
    assert_eq!(ok["attributes"]["echo_host.outcome"], "responded");
    let kids = children(&spans, ok);
    assert!(
        kids.len() == 1 && kids[0]["name"] == "instantiate",
        "the first request starts the instance: {spans:?}"
    );
    let trap = server_span(&spans, "/trap").unwrap();
    assert_eq!(trap["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(trap["attributes"]["echo_host.outcome"], "trapped");
}

/// A request loop against `host`: every response must be 200; returns how many took longer
/// than `slow`.
fn run_requests(host: &HostProcess, count: usize, slow: Duration) -> usize {
    let http = client();
    let mut slow_ones = 0;
    for i in 0..count {
        let started = Instant::now();
        let response = http.get(host.url(&format!("/ok?i={i}"))).send().unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().unwrap(), "misbehave ok");
        if started.elapsed() > slow {
            slow_ones += 1;
        }
    }
    slow_ones
}

/// Collectors that are down, blackholed (accept, never answer), slow (answer after the export
/// timeout) or refusing (gRPC `UNAVAILABLE`, HTTP 503): every response is a 200, no more requests
/// are slow than with traces off, and the spans lost are counted.
#[test]
fn a_failing_collector_changes_no_response_and_its_spans_are_counted_as_dropped() {
    const REQUESTS: usize = 300;
    // An export waits up to a second before it is given up: a request that waited on one
    // would take that long, far past the noise of a busy machine.
    const SLOW: Duration = Duration::from_millis(900);
    let env = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
    ];
    let baseline = HostProcess::start(&["--component", misbehave_wasm().to_str().unwrap()], &[]);
    let baseline_slow = run_requests(&baseline, REQUESTS, SLOW);
    drop(baseline);

    let blackhole = Blackhole::start();
    let slow = Receiver::start_with(&["--delay", "3"]);
    let refusing = Receiver::start_with(&["--refuse"]);
    let collectors = [
        ("down", down_endpoint(), "http/protobuf"),
        ("blackholed", blackhole.endpoint(), "grpc"),
        ("slow", slow.http_endpoint(), "http/protobuf"),
        ("refusing over gRPC", refusing.grpc_endpoint(), "grpc"),
        ("refusing over HTTP", refusing.http_endpoint(), "http/protobuf"),
    ];
    for (what, endpoint, protocol) in collectors {
        let host = traced_host(&endpoint, protocol, &env, &[]);
        let slow_ones = run_requests(&host, REQUESTS, SLOW);
        assert!(
            slow_ones <= baseline_slow,
            "{what}: {slow_ones} requests over {SLOW:?}, {baseline_slow} with traces off"
        );
        let metrics = host.url("/.well-known/echo-host/metrics");
        // Spans are exported, dropped, queued (64 at most) or in the batch being sent (64 at
        // most): with nothing exported, the rest were dropped as soon as the requests were done.
        let dropped = poll_metric_until(&metrics, "echo_host_trace_spans_dropped_total", PATIENCE, |n| {
            n >= (REQUESTS - 128) as f64
        });
        assert!(dropped >= (REQUESTS - 128) as f64, "{what}: only {dropped} spans counted as dropped");
        let exported = crate::util::metric_value(
            &client().get(&metrics).send().unwrap().text().unwrap(),
            "echo_host_trace_spans_exported_total",
        );
        assert_eq!(exported, 0.0, "{what}: spans counted as exported");
        assert!(
            host.lines().iter().any(|l| l.contains("trace spans dropped")),
            "{what}: no warning about the drops"
        );
    }
    assert!(blackhole.connections() > 0, "the blackholed collector was never tried");
    assert!(refusing.spans().is_empty(), "the refusing collector kept spans");
}

/// At SIGTERM the spans still queued are sent; with a collector that never answers, the host
/// still exits within the flush bound rather than the export timeout.
#[test]
fn shutdown_flushes_the_queue_within_a_bound() {
    let receiver = Receiver::start();
    // The timer never fires here: only the shutdown sends.
    let mut host =
        traced_host(&receiver.grpc_endpoint(), "grpc", &[("OTEL_BSP_SCHEDULE_DELAY", "3600000")], &[]);
    assert_eq!(run_requests(&host, 3, Duration::MAX), 0);
    assert!(receiver.spans().is_empty(), "exported before the shutdown");
    host.signal("TERM");
    assert!(host.wait_exit(PATIENCE).is_some_and(|status| status.success()));
    let spans = receiver.spans();
    assert_eq!(spans.iter().filter(|s| s["kind"] == "SPAN_KIND_SERVER").count(), 3, "{spans:?}");

    let blackhole = Blackhole::start();
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "3600000"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")];
    let mut host = traced_host(&blackhole.endpoint(), "grpc", &env, &[]);
    assert_eq!(run_requests(&host, 3, Duration::MAX), 0);
    let stopping = Instant::now();
    host.signal("TERM");
    let exited = host.wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some_and(|status| status.success()),
        "not exited {:?} after SIGTERM",
        stopping.elapsed()
    );
    let warned =
        host.lines().iter().any(|l| l.contains("trace spans dropped") || l.contains("were not all sent"));
    assert!(warned, "no warning about the spans lost");
}

/// A variable that cannot be used stops the start, naming it and what to set.
#[test]
fn bad_otel_variables_are_refused_at_start() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
            "`OTEL_EXPORTER_OTLP_ENDPOINT` is `localhost:4317`",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ],
            "set it to `grpc` or `http/protobuf`",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://localhost:4318"),
                ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ],
            "`OTEL_TRACES_SAMPLER_ARG` is `half`",
        ),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(crate::util::host_binary());
        command.args(["--component", misbehave_wasm().to_str().unwrap()]).env("PORT", "0");
        for (key, value) in *env {
            command.env(key, value);
        }
        let out = command.stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?}: started");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
}
