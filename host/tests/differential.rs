//! `echo-host` and upstream `wasmtime serve` side by side on the same component: for a table of
//! requests, the same status, content type and body. Our host may add headers of its own
//! (`echo-host-*`); everything the component decides must come through unchanged.

use crate::util::peers::WasmtimeServe;
use crate::util::{self, TestServer};

pub struct Case {
    method: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
}

const fn case(method: &'static str, target: &'static str) -> Case {
    Case { method, target, headers: &[], body: b"" }
}

pub const CASES: &[Case] = &[
    case("GET", "/?name=world"),
    case("GET", "/"),
    case("GET", "/deep/path?a=1&a=2&b=it%27s"),
    case("GET", "/?a=1&b=2&a=3"),
    case("GET", "/?q=hello+world&plus=%2B&pct=%zz&bare&empty="),
    case("GET", "/?caf%C3%A9=%E2%82%AC&bad=%FF&nl=%0A&tab=%09"),
    case("GET", "/?quote=%22&both=%22%27&backslash=%5C"),
    case("HEAD", "/?name=world"),
    case("DELETE", "/?id=7"),
    case("OPTIONS", "/"),
    Case {
        method: "POST",
        target: "/",
        headers: &[("content-type", "application/x-www-form-urlencoded")],
        body: b"hello data",
    },
    Case { method: "POST", target: "/", headers: &[("content-type", "text/plain")], body: b"hello data" },
    Case { method: "PUT", target: "/x", headers: &[], body: b"\x00\x01\xfe\xffbinary" },
    Case { method: "PATCH", target: "/x", headers: &[], body: b"" },
    Case {
        method: "POST",
        target: "/json?a=1",
        headers: &[("accept", "application/json"), ("x-custom", "v")],
        body: b"{\"k\": \"v\"}",
    },
    Case { method: "GET", target: "/json?x=%FF", headers: &[("accept", "application/json")], body: b"" },
    Case { method: "POST", target: "/bin", headers: &[("accept", "application/json")], body: b"\xff\xfe" },
];

#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    content_type: Option<String>,
    content_length: Option<String>,
    body: Vec<u8>,
}

async fn observe(client: &reqwest::Client, base: &str, case: &Case) -> Observed {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut request = client.request(method, format!("{base}{}", case.target)).body(case.body.to_vec());
    for (name, value) in case.headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{} {}: {e}", case.method, case.target));
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (content_type, content_length) = (header("content-type"), header("content-length"));
    Observed {
        status: response.status().as_u16(),
        content_type,
        content_length,
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// JSON mode echoes the request's headers, and the two servers see different `host` ports: compare
/// JSON bodies with the `host` header's value blanked.
fn normalise(mut observed: Observed) -> Observed {
    if observed.content_type.as_deref() == Some("application/json")
        && let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&observed.body)
    {
        if let Some(headers) = json.get_mut("headers").and_then(|h| h.as_array_mut()) {
            for pair in headers.iter_mut() {
                if pair[0] == "host" {
                    pair[1] = serde_json::Value::String("<host>".into());
                }
            }
        }
        observed.body = serde_json::to_vec(&json).unwrap();
        observed.content_length = None;
    }
    observed
}

/// Every case where a server in `others` (name, base URL) answers differently from `reference`,
/// as one line each.
pub async fn compare(reference: &str, others: &[(&str, &str)]) -> Vec<String> {
    let client = util::client();
    let mut mismatches = Vec::new();
    for case in CASES {
        let expected = normalise(observe(&client, reference, case).await);
        for (name, base) in others {
            let actual = normalise(observe(&client, base, case).await);
            if expected != actual {
                mismatches.push(format!(
                    "{} {}\n  reference: {:?} {:?} {:?} {:?}\n  {name}: {:?} {:?} {:?} {:?}",
                    case.method,
                    case.target,
                    expected.status,
                    expected.content_type,
                    expected.content_length,
                    String::from_utf8_lossy(&expected.body),
                    actual.status,
                    actual.content_type,
                    actual.content_length,
                    String::from_utf8_lossy(&actual.body),
                ));
            }
        }
    }
    mismatches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_host_answers_exactly_like_wasmtime_serve() {
    let component = util::echo_wasm();
    let upstream = tokio::task::spawn_blocking(move || WasmtimeServe::start(component)).await.unwrap();
    let ours = TestServer::start(&["--component", component.to_str().unwrap()]).await;
    let ours_base = format!("http://{}", ours.addr);
    let mismatches = compare(&upstream.base_url(), &[("echo-host", &ours_base)]).await;
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ (reference: wasmtime serve):\n{}",
        mismatches.len(),
        CASES.len(),
        mismatches.join("\n")
    );
}
