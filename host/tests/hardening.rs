//! What a careless operator or a hostile caller can send: flags past their range (refused before
//! the port is bound, never a panic), requests without a usable `Host` (400, logged at info), the
//! admin token's scheme and length, and admin calls with huge user agents (the provenance and
//! history stay bounded, and the public `info` names no caller).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::swap::{sha12, start_with_admin, upload};
use crate::util::{self, HostProcess, client};

const TOKEN: &str = "test-admin-token-0123456789";
const ADMIN: &str = "/.well-known/echo-host/admin";

/// Each out-of-range value makes the real binary exit at once with an error naming the flag and
/// its range; none panics, none starts serving.
#[test]
fn flags_past_their_range_fail_the_start_naming_the_flag() {
    let huge = "10000000000000000000";
    let cases = [
        ("--max-connections", "18446744073709551615"),
        ("--request-timeout", huge),
        ("--header-read-timeout", huge),
        ("--idle-timeout", huge),
        ("--concurrency", huge),
    ];
    let mut children: Vec<_> = cases
        .iter()
        .map(|(flag, value)| {
            let child = Command::new(env!("CARGO_BIN_EXE_echo-host"))
                .args([*flag, *value])
                .env("PORT", util::peers::free_port().to_string())
                .env("ECHO_HOST_LISTEN_ADDR", "127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("failed to start echo-host");
            (*flag, child)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (flag, child) in &mut children {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("echo-host {flag} {huge} is still running: the value was accepted");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{flag}: exited with {status}");
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
        assert!(stderr.contains(&format!("`{flag}` must be between")), "{flag}: {stderr}");
    }
}

/// `--max-memory 64KiB` is inside the flag's range but below what the echo component's memory
/// starts at: the start fails naming the flag and a value that works (was wasmtime's "module
/// memory does not fit in pooling allocator requirements … exceeds the limit of 0x10000 bytes").
#[tokio::test]
async fn a_max_memory_below_the_components_memory_names_the_flag_and_the_size_needed() {
    the_memory_floor_is_named(&[]).await;
}

/// The same for a p3 component, whose instances are not pooled: the host checks the floor itself
/// (without the check it would start and fail every request).
#[tokio::test]
async fn a_max_memory_below_a_p3_components_memory_names_the_flag_and_the_size_needed() {
    the_memory_floor_is_named(&["--component", util::echo_p3_wasm().to_str().unwrap()]).await;
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn the_memory_floor_is_named(component: &[&str]) {
    let args = |max_memory: &str| -> Vec<String> {
        component.iter().copied().chain(["--max-memory", max_memory]).map(String::from).collect()
    };
    let error = util::TestServer::try_start(&refs(&args("64KiB"))).await.err().expect("it started");
    let error = format!("{error:#}");
    assert!(
        error.contains("the component's memory starts at ")
            && error.contains("more than `--max-memory` (64 KiB) allows: set `--max-memory` (or `ECHO_HOST_MAX_MEMORY`) to at least `"),
        "{error}"
    );
    // The floor it names is the real one: the component loads with it, and not with less.
    let at_least = error.split("to at least `").nth(1).and_then(|r| r.split('`').next()).unwrap();
    let server = util::TestServer::try_start(&refs(&args(at_least))).await;
    assert!(server.is_ok(), "--max-memory {at_least}: {:#}", server.err().unwrap());
    let below = (echo_host::util::units::parse_size(at_least).unwrap() - 64 * 1024).to_string();
    let error = util::TestServer::try_start(&refs(&args(&below))).await.err().expect("it started below");
    assert!(format!("{error:#}").contains(&format!("to at least `{at_least}`")), "{error:#}");
}

/// Without an authority in the URI, a request needs exactly one `Host` of visible ASCII; the
/// host answers 400 with the reason (never a 500 from the guest path) and logs it at info.
#[test]
fn a_request_without_a_usable_host_gets_400_saying_why() {
    let host = HostProcess::start(&[], &[]);
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "no `Host` header"),
        (b"GET / HTTP/1.1\r\nHost: ex\xffample\r\nConnection: close\r\n\r\n", "not `host[:port]`"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", "more than one `Host`"),
        (b"GET / HTTP/1.1\r\nHost: user@example\r\nConnection: close\r\n\r\n", "not `host[:port]`"),
    ];
    for (request, reason) in cases {
        let response = util::raw_exchange(host.addr, request, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&response);
        assert_eq!(util::raw_status(&response), 400, "{text}");
        assert!(text.contains(reason), "{reason}: {text}");
        let line = host
            .wait_for_line(reason, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no log line for `{reason}`: {:?}", host.lines()));
        assert!(line.contains("\"INFO\""), "{line}");
    }
    // A good request on the same host still works; so do an absolute URI and HTTP/1.0 with a Host.
    for request in [
        &b"GET /?x=1 HTTP/1.1\r\nHost: example:8080\r\nConnection: close\r\n\r\n"[..],
        b"GET http://example/ HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: example\r\n\r\n",
    ] {
        let response = util::raw_exchange(host.addr, request, Duration::from_secs(30));
        assert_eq!(util::raw_status(&response), 200, "{}", String::from_utf8_lossy(&response));
    }
}

/// `Bearer` matches in any case (RFC 9110 §11.1); the token itself must match exactly, whatever
/// its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
    let dir = util::scratch_dir();
    let server = start_with_admin(dir.path(), &[]).await;
    let status = |authorization: String| {
        let request =
            client().get(server.url(&format!("{ADMIN}/history"))).header("authorization", authorization);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(status(format!("{scheme} {TOKEN}")).await, 200, "{scheme}");
    }
    for wrong in [
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        "Bearer ".to_string(),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
    ] {
        assert_eq!(status(wrong.clone()).await, 401, "{wrong}");
    }
}

/// 40 rollbacks, each with a 20 KB user agent: the public `info` stays small and names no caller
/// (neither the IP nor the user agent); the admin history keeps who did what, truncated, in a
/// bounded list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_provenance_is_bounded_and_info_names_no_caller() {
    let dir = util::scratch_dir();
    let server = start_with_admin(dir.path(), &[]).await;
    let agent = format!("UA-MARKER-{}", "x".repeat(20_000));
    let misbehave = std::fs::read(util::misbehave_wasm()).unwrap();
    let (status, _) = upload(&server, misbehave.clone(), &[("user-agent", &agent)]).await;
    assert_eq!(status, 200);
    for _ in 0..40 {
        let response = client()
            .post(server.url(&format!("{ADMIN}/rollback")))
            .bearer_auth(TOKEN)
            .header("user-agent", &agent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // 40 rollbacks from misbehave: back on it after an even number.
    let info =
        client().get(server.url("/.well-known/echo-host/info")).send().await.unwrap().text().await.unwrap();
    assert!(info.len() < 8 * 1024, "info is {} bytes", info.len());
    assert!(!info.contains("127.0.0.1") && !info.contains("UA-MARKER"), "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["component"]["version"], format!("sha256:{}", sha12(&misbehave)));
    assert_eq!(info["component"]["source"], "rollback (was admin upload)");

    let history = client()
        .get(server.url(&format!("{ADMIN}/history")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(history.len() < 16 * 1024, "history is {} bytes", history.len());
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let events = history["admin_events"].as_array().unwrap();
    assert_eq!(events.len(), 32, "the most recent 32 admin calls");
    let by = events[0]["by"].as_str().unwrap();
    assert!(by.starts_with("admin:127.0.0.1 (UA-MARKER-xxx") && by.len() < 200, "{by}");
    assert_eq!(events[0]["call"], "POST rollback");
}
