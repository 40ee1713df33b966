//! The echo component under upstream `wasmtime serve` (the pinned CLI, no `-S` flags, so nothing but
//! the `wasi:http/proxy` world): every echo behaviour, checked over real HTTP with reqwest (and one
//! request head written by hand, [`Wire`], for a 413 that must come before the body is sent).
//!
//! Each test starts its own server (they run in parallel threads) and kills it when it ends. The
//! component answers on any path, so the tests use a few.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::peers::WasmtimeServe;
use crate::util::wire::{Answer, Wire};

const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";
/// The largest body the component renders as JSON (larger ones get 413).
const JSON_BODY_CAP: usize = 1 << 20;

fn echo_component() -> &'static Path {
    Path::new(env!("ECHO_GUEST_WASM"))
}

/// `wasmtime serve` running the echo component.
fn serve() -> WasmtimeServe {
    WasmtimeServe::start(echo_component())
}

fn client() -> reqwest::Client {
    // Never route 127.0.0.1 through an HTTP(S)_PROXY from the environment.
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

/// A response read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header value"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| v.parse().expect("numeric content-length"))
    }
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Reply {
        let mut headers = HeaderMap::new();
        for (name, value) in &answer.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            headers.append(name, value.parse().expect("a header value"));
        }
        let status = StatusCode::from_u16(answer.status).expect("a status code");
        Reply { status, headers, body: answer.body }
    }
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request failed");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("reading the response body failed").to_vec();
    Reply { status, headers, body }
}

/// Sends `body` with `method` (Content-Length set) and checks the echo: 200, `prefix` + the body
/// byte for byte, and a Content-Length that adds up.
async fn assert_body_echo(
    server: &WasmtimeServe,
    method: Method,
    content_type: &str,
    body: &[u8],
    prefix: &str,
) {
    let reply = send(
        client()
            .request(method.clone(), server.url("/echo/body"))
            .header(CONTENT_TYPE, content_type)
            // Explicit, because hyper leaves it out for an empty body.
            .header(CONTENT_LENGTH, body.len())
            .body(body.to_vec()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{method} {content_type}: {}", reply.text());
    let mut expected = prefix.as_bytes().to_vec();
    expected.extend_from_slice(body);
    assert!(
        reply.body == expected,
        "{method} {content_type}: expected {:?}, got {:?}",
        String::from_utf8_lossy(&expected),
        reply.text()
    );
    assert_eq!(
        reply.content_length(),
        Some((prefix.len() + body.len()) as u64),
        "{method} {content_type}: the request had a Content-Length, so the response should have prefix + body"
    );
}

fn all_byte_values() -> Vec<u8> {
    (0..=255u8).collect()
}

#[tokio::test]
async fn seed_get_answers_like_the_seed() {
    let server = serve();
    let reply = send(client().get(server.url("/?name=world"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some(TEXT_PLAIN_UTF8));
    assert_eq!(reply.text(), "Received GET request. Query params: ImmutableMultiDict([('name', 'world')])");
}

#[tokio::test]
async fn seed_post_as_curl_sends_it_echoes_the_raw_body() {
    // `curl -X POST -d "hello data"` sends application/x-www-form-urlencoded. The seed *promises*
    // `Received POST data: hello data`, but Flask actually answers with an empty body here (it moves
    // form bodies into `request.form`, leaving `request.data` empty; see flask_parity.rs). We echo
    // the raw body whatever the content type, which is what the seed promised.
    let server = serve();
    assert_body_echo(
        &server,
        Method::POST,
        "application/x-www-form-urlencoded",
        b"hello data",
        "Received POST data: ",
    )
    .await;
}

#[tokio::test]
async fn text_and_binary_bodies_are_echoed_byte_for_byte() {
    let server = serve();
    assert_body_echo(&server, Method::POST, "text/plain", b"hello data", "Received POST data: ").await;
    assert_body_echo(
        &server,
        Method::POST,
        "text/plain; charset=utf-8",
        "caf\u{e9} \u{540d}\u{524d} \u{1F600}\n".as_bytes(),
        "Received POST data: ",
    )
    .await;
    // Every byte value, most of them not UTF-8 on their own: raw bytes after the prefix.
    assert_body_echo(
        &server,
        Method::POST,
        "application/octet-stream",
        &all_byte_values(),
        "Received POST data: ",
    )
    .await;
    assert_body_echo(&server, Method::POST, "text/plain", b"", "Received POST data: ").await;
}

#[tokio::test]
async fn put_and_patch_echo_their_bodies() {
    let server = serve();
    assert_body_echo(&server, Method::PUT, "text/plain", b"put data", "Received PUT data: ").await;
    assert_body_echo(&server, Method::PATCH, "text/plain", b"patch data", "Received PATCH data: ").await;
    assert_body_echo(
        &server,
        Method::PUT,
        "application/octet-stream",
        &all_byte_values(),
        "Received PUT data: ",
    )
    .await;
}

#[tokio::test]
async fn queries_render_like_werkzeug() {
    let server = serve();
    let cases = [
        ("/?a=1&a=2&b=it%27s", r#"ImmutableMultiDict([('a', '1'), ('a', '2'), ('b', "it's")])"#),
        // MultiDict groups the values of a key at the key's first appearance.
        ("/?a=1&b=2&a=3", "ImmutableMultiDict([('a', '1'), ('a', '3'), ('b', '2')])"),
        ("/?q=a+b", "ImmutableMultiDict([('q', 'a b')])"),
        ("/?q=a%2Bb", "ImmutableMultiDict([('q', 'a+b')])"),
        ("/?q=a%20b", "ImmutableMultiDict([('q', 'a b')])"),
        ("/", "ImmutableMultiDict([])"),
        ("/some/other/path?name=world", "ImmutableMultiDict([('name', 'world')])"),
    ];
    let mut mismatches = Vec::new();
    for (path_and_query, params) in cases {
        let reply = send(client().get(server.url(path_and_query))).await;
        let expected = format!("Received GET request. Query params: {params}");
        if reply.status != StatusCode::OK || reply.text() != expected {
            mismatches.push(format!(
                "GET {path_and_query}\n  expected 200 {expected}\n  got      {} {}",
                reply.status,
                reply.text()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} queries answered wrongly:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn delete_and_options_answer_like_get() {
    let server = serve();
    for method in [Method::DELETE, Method::OPTIONS] {
        let reply = send(client().request(method.clone(), server.url("/?x=1&y=it%27s"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(
            reply.text(),
            format!(
                r#"Received {method} request. Query params: ImmutableMultiDict([('x', '1'), ('y', "it's")])"#
            )
        );
    }
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let server = serve();
    let get = send(client().get(server.url("/?name=world"))).await;
    let head = send(client().head(server.url("/?name=world"))).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-type"), Some(TEXT_PLAIN_UTF8));
    assert_eq!(head.header("content-type"), get.header("content-type"));
    assert_eq!(get.content_length(), Some(get.body.len() as u64), "GET should say how long its body is");
    assert_eq!(head.content_length(), get.content_length(), "HEAD must announce the length GET sends");
    assert!(head.body.is_empty(), "HEAD must have no body, got {:?}", head.text());
}

// ---------------------------------------------------------------------------------------------
// JSON mode
// ---------------------------------------------------------------------------------------------

fn assert_json_content_type(reply: &Reply) {
    let content_type = reply.header("content-type").unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    assert_eq!(media_type, "application/json", "content-type {content_type:?}");
}

fn header_value<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers.as_array().expect("`headers` is an array").iter().find_map(|pair| {
        let pair = pair.as_array().expect("each header is a [name, value] array");
        assert_eq!(pair.len(), 2, "each header is a [name, value] pair: {pair:?}");
        pair[0]
            .as_str()
            .expect("header name is a string")
            .eq_ignore_ascii_case(name)
            .then(|| pair[1].as_str().expect("header value is a string"))
    })
}

#[tokio::test]
async fn json_mode_describes_the_request() {
    let server = serve();
    let reply = send(
        client()
            .post(server.url("/json/path?b=2&a=1&b=3"))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "text/plain")
            .header("x-echo-test", "yes")
            .body("hello json"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_json_content_type(&reply);
    let v = reply.json();
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["path"], "/json/path", "{v}");
    // Raw order, not grouped like MultiDict.
    assert_eq!(v["query"], json!([["b", "2"], ["a", "1"], ["b", "3"]]), "{v}");
    assert_eq!(header_value(&v["headers"], "x-echo-test"), Some("yes"), "{v}");
    assert_eq!(header_value(&v["headers"], "content-type"), Some("text/plain"), "{v}");
    assert_eq!(header_value(&v["headers"], "accept"), Some("application/json"), "{v}");
    assert_eq!(v["body"], "hello json", "{v}");
    assert_eq!(v["body_base64"], false, "{v}");
    assert_eq!(v["body_length"], 10, "{v}");

    let reply = send(client().get(server.url("/?name=world")).header(ACCEPT, "application/json")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_json_content_type(&reply);
    let v = reply.json();
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["path"], "/", "{v}");
    assert_eq!(v["query"], json!([["name", "world"]]), "{v}");
    assert_eq!(v["body_length"], 0, "{v}");
}

#[tokio::test]
async fn json_mode_base64_encodes_non_utf8_bodies() {
    let server = serve();
    let body = all_byte_values();
    let reply = send(
        client()
            .put(server.url("/bin"))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_json_content_type(&reply);
    let v = reply.json();
    assert_eq!(v["method"], "PUT", "{v}");
    assert_eq!(v["body_base64"], true, "{v}");
    assert_eq!(v["body"], base64_standard(&body), "{v}");
    assert_eq!(v["body_length"], 256, "{v}");
}

#[tokio::test]
async fn json_mode_caps_bodies_at_one_mebibyte() {
    let server = serve();
    let json_post = |len: usize| {
        client()
            .post(server.url("/cap"))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "text/plain")
            .body(vec![b'a'; len])
    };

    let at_cap = send(json_post(JSON_BODY_CAP)).await;
    assert_eq!(at_cap.status, StatusCode::OK, "exactly 1 MiB must be accepted: {:.200}", at_cap.text());
    assert_json_content_type(&at_cap);
    let v = at_cap.json();
    assert_eq!(v["body_length"], JSON_BODY_CAP, "{:.200}", at_cap.text());
    assert_eq!(v["body"].as_str().map(str::len), Some(JSON_BODY_CAP));

    // One byte over, declared: refused before a byte of the body is read, so the head alone gets
    // the answer. (Sending the body too would race `wasmtime serve` closing the connection it
    // left unread against the client's write, which then fails with EPIPE.)
    let port = server.port();
    let over_cap = tokio::task::spawn_blocking(move || {
        let mut wire = Wire::connect(SocketAddr::from(([127, 0, 0, 1], port)));
        let headers = ["accept: application/json", "content-type: text/plain"].map(String::from);
        let length = format!("content-length: {}", JSON_BODY_CAP + 1);
        wire.send_head("POST", "/cap", &[&headers[..], &[length]].concat());
        wire.receive()
    })
    .await
    .expect("the raw client");
    let over_cap = Reply::from(over_cap);
    assert_eq!(over_cap.status, StatusCode::PAYLOAD_TOO_LARGE, "{:.200}", over_cap.text());
    assert_json_content_type(&over_cap);
    let v = over_cap.json();
    assert!(v["error"].is_string(), "413 should explain itself in {{\"error\": ...}}: {v}");
}

/// RFC 4648 base64 with padding (no base64 crate among the test dependencies).
fn base64_standard(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_helper_matches_rfc4648() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_standard(input.as_bytes()), output);
    }
}

// ---------------------------------------------------------------------------------------------
// Big streamed bodies
// ---------------------------------------------------------------------------------------------

const STREAM_TOTAL: usize = 256 << 20;
const STREAM_CHUNK: usize = 64 << 10;
/// Distinct chunk contents, cycled; a prime count so a dropped, repeated or reordered chunk changes
/// the hash.
const STREAM_BLOCKS: usize = 17;

/// Deterministic pseudo-random blocks (xorshift64), made once and then only cloned (cheaply).
fn stream_blocks() -> Vec<Bytes> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..STREAM_BLOCKS)
        .map(|_| {
            let mut block = Vec::with_capacity(STREAM_CHUNK);
            while block.len() < STREAM_CHUNK {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                block.extend_from_slice(&state.to_le_bytes());
            }
            Bytes::from(block)
        })
        .collect()
}

/// `STREAM_TOTAL` bytes as a stream of chunks, fed into `sent` as they are handed to reqwest.
fn streamed_body(sent: Arc<Mutex<Sha256>>) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let blocks = stream_blocks();
    futures::stream::iter(0..STREAM_TOTAL / STREAM_CHUNK).map(move |i| {
        let chunk = blocks[i % STREAM_BLOCKS].clone();
        sent.lock().unwrap().update(&chunk);
        Ok(chunk)
    })
}

/// POSTs 256 MiB as a stream (never held in memory) to the echo at `base` and hashes the echo as
/// it streams back.
pub async fn assert_streamed_echo(base: &str, with_content_length: bool) {
    let prefix = "Received POST data: ";
    let sent = Arc::new(Mutex::new(Sha256::new()));
    sent.lock().unwrap().update(prefix.as_bytes());

    let started = Instant::now();
    let mut request = client()
        .post(format!("{base}/stream"))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(streamed_body(sent.clone())));
    if with_content_length {
        request = request.header(CONTENT_LENGTH, STREAM_TOTAL);
    }
    let response = request.send().await.expect("request failed");
    assert_eq!(response.status(), StatusCode::OK);
    let announced =
        response.headers().get(CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    if with_content_length {
        assert_eq!(announced, Some(prefix.len() + STREAM_TOTAL), "the request had a Content-Length");
    }

    let mut received = Sha256::new();
    let mut received_len = 0usize;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("response body failed after {received_len} bytes: {e}"));
        received_len += chunk.len();
        received.update(&chunk);
    }
    assert_eq!(received_len, prefix.len() + STREAM_TOTAL, "echoed length");
    // The whole request body was handed over before the echo could end.
    let expected = sent.lock().unwrap().clone().finalize();
    assert!(
        received.finalize() == expected,
        "the echo of the 256 MiB body differs from prefix + body (sha256)"
    );
    eprintln!("256 MiB echo (content-length: {with_content_length}) took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_256_mib_body_with_content_length() {
    assert_streamed_echo(&serve().base_url(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_256_mib_chunked_body() {
    assert_streamed_echo(&serve().base_url(), false).await;
}
