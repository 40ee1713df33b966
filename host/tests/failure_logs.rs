//! Every guest failure is one ERROR log line naming its cause (issue #31): a trap, a guest that
//! returns without a response, the request deadline (before the head and while streaming), the
//! memory limit and a `wasi:http` error code, for a p2 and a p3 component; and a p2 guest that
//! traps after its response was complete. The real binary logs
//! JSON on stdout; the test reads every line once the host has stopped (SIGTERM: every request
//! and guest done, every line written), so a second line would be seen.

use std::time::Duration;

use serde_json::Value;

use crate::util::{self, HostProcess};

/// A request that fails, what its ERROR line says, and its status.
struct Case {
    path: &'static str,
    status: u16,
    outcome: &'static str,
    /// Words the line's `cause` must contain.
    cause: &'static [&'static str],
}

const P2: &[Case] = &[
    Case { path: "/trap", status: 500, outcome: "trapped", cause: &["the component trapped", "unreachable"] },
    Case {
        path: "/never-respond",
        status: 500,
        outcome: "never_responded",
        cause: &["returned without a response", "response-outparam::set"],
    },
    Case {
        path: "/sleep?ms=60000",
        status: 504,
        outcome: "timed_out",
        cause: &["no response within the request timeout of 2s"],
    },
    Case {
        path: "/loop",
        status: 504,
        outcome: "timed_out",
        cause: &["no response within the request timeout"],
    },
    Case {
        path: "/stream?chunks=1000&ms=100",
        status: 200,
        outcome: "timed_out",
        cause: &["the response was not complete within the request timeout of 2s"],
    },
    Case {
        path: "/alloc",
        status: 500,
        outcome: "trapped",
        cause: &["out of memory", "over `--max-memory` (32 MiB)"],
    },
    Case {
        path: "/error-code",
        status: 500,
        outcome: "error_code",
        cause: &["error code", "misbehave: deliberate error code"],
    },
    // The response was complete 300 ms before the trap: the request did not fail, its guest did.
    Case {
        path: "/finish-then-trap?ms=300",
        status: 200,
        outcome: "responded",
        cause: &["the component trapped", "unreachable"],
    },
];

/// p3 has no "never responded": `handle` returns a response or an error code.
const P3: &[Case] = &[
    Case { path: "/trap", status: 500, outcome: "trapped", cause: &["the component trapped", "unreachable"] },
    // Loads outside linear memory: the p3 engine has no bounds checks in code, its guard region
    // faults and the signal becomes the trap (wasmtime names the faulting address only then);
    // just past the end, and at the last 32-bit address.
    Case {
        path: "/oob",
        status: 500,
        outcome: "trapped",
        cause: &["the component trapped", "memory fault at wasm address", "out of bounds memory access"],
    },
    Case {
        path: "/oob?past=4294967295",
        status: 500,
        outcome: "trapped",
        cause: &["the component trapped", "memory fault at wasm address", "out of bounds memory access"],
    },
    Case {
        path: "/sleep?ms=60000",
        status: 504,
        outcome: "timed_out",
        cause: &["no response within the request timeout of 2s"],
    },
    Case {
        path: "/loop",
        status: 504,
        outcome: "timed_out",
        cause: &["no response within the request timeout"],
    },
    Case {
        path: "/stream?chunks=1000&ms=100",
        status: 200,
        outcome: "timed_out",
        cause: &["the response was not complete within the request timeout of 2s"],
    },
    Case {
        path: "/alloc?mb=64",
        status: 500,
        outcome: "trapped",
        cause: &["out of memory", "over `--max-memory` (32 MiB)"],
    },
    Case {
        path: "/error-code",
        status: 500,
        outcome: "error_code",
        cause: &["error code", "misbehave-p3: deliberate error code"],
    },
];

#[test]
fn every_p2_guest_failure_is_one_error_line_naming_its_cause() {
    check(util::misbehave_wasm(), P2, "/ok");
}

#[test]
fn every_p3_guest_failure_is_one_error_line_naming_its_cause() {
    check(util::misbehave_p3_wasm(), P3, "/");
}

/// Sends each case's request (and a healthy one after each) to a host of `component`, stops the
/// host, and checks its log: one ERROR line per failed request, none for the others.
fn check(component: &std::path::Path, cases: &[Case], ok_path: &str) {
    let args = [
        "--component",
        component.to_str().unwrap(),
        "--log-format",
        "json",
        "--request-timeout",
        "2s",
        "--max-memory",
        "32MiB",
    ];
    let mut host = HostProcess::start(&args, &[("RUST_LOG", "info")]);
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut failed = Vec::new();
    let mut healthy = Vec::new();
    for case in cases {
        let response = http.get(host.url(case.path)).send().unwrap_or_else(|e| panic!("{}: {e}", case.path));
        assert_eq!(response.status().as_u16(), case.status, "{}", case.path);
        let id = response.headers()["echo-host-request-id"].to_str().unwrap().to_string();
        // A streamed body is cut at the deadline: reading it fails, which is the point.
        let _ = response.bytes();
        failed.push((id, case));
        let ok = http.get(host.url(ok_path)).send().unwrap();
        assert_eq!(ok.status(), 200, "{ok_path} after {}", case.path);
        healthy.push(ok.headers()["echo-host-request-id"].to_str().unwrap().to_string());
    }
    let version = util::fleet::version(&std::fs::read(component).unwrap());
    // A guest still running after its response (the trap after `finish`) holds its permit until
    // it ends; a stop would not wait for it.
    let metrics = host.url("/.well-known/echo-host/metrics");
    let in_flight =
        util::poll_metric_until(&metrics, "echo_host_requests_in_flight", Duration::from_secs(30), |n| {
            n == 0.0
        });
    assert_eq!(in_flight, 0.0, "a guest is still running");
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(30)).expect("the host exits on SIGTERM");
    assert!(status.success(), "{status}");

    let lines: Vec<Value> = host
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let errors: Vec<&Value> = lines.iter().filter(|l| l["severity"] == "ERROR").collect();
    for (id, case) in &failed {
        let mine: Vec<&&Value> = errors.iter().filter(|l| l["request_id"] == id.as_str()).collect();
        let all: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id.as_str()).collect();
        assert_eq!(
            mine.len(),
            1,
            "{}: one ERROR line for request {id}, got {mine:?}; its lines: {all:?}",
            case.path
        );
        let line = mine[0];
        eprintln!("{}: {}", case.path, line["message"]);
        assert_eq!(line["outcome"], case.outcome, "{}: {line}", case.path);
        assert_eq!(line["version"], version.as_str(), "{}: {line}", case.path);
        let cause = line["cause"].as_str().unwrap_or_else(|| panic!("{}: no cause in {line}", case.path));
        for words in case.cause {
            assert!(cause.contains(words), "{}: the cause lacks {words:?}: {line}", case.path);
        }
        assert!(
            line["message"].as_str().unwrap().contains(cause),
            "{}: the message names the cause: {line}",
            case.path
        );
    }
    assert_eq!(errors.len(), failed.len(), "no other ERROR line: {errors:#?}");
    for id in &healthy {
        assert!(!errors.iter().any(|l| l["request_id"] == id.as_str()), "an ERROR line for healthy {id}");
    }
}
