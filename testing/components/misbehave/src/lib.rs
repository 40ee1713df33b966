//! `misbehave`: a `wasi:http/proxy` component that fails on purpose, for the host's integration tests.
//!
//! The request path picks the behaviour (query parameters are split on `&` and `=` and
//! percent-decoded; `+` is left alone so URLs survive):
//!
//! | path | behaviour |
//! |---|---|
//! | `/`, `/ok` | 200 `misbehave ok` |
//! | `/trap` | executes `unreachable` before any response |
//! | `/panic` | `panic!` (an abort, hence a trap, under `panic = "abort"`) |
//! | `/loop` | busy loop forever, never yielding: only epoch interruption stops it |
//! | `/loop-after-response` | 200 with a streaming body, writes `started\n`, then busy loops |
//! | `/finish-then-loop` | 200 `finished\n`, the body finished (`OutgoingBody::finish`), then busy loops (any method, `HEAD` too) |
//! | `/finish-then-trap?ms=N` | 200 `finished\n`, the body finished, then waits N ms and executes `unreachable` |
//! | `/finish-then-sleep?ms=N` | 200 `finished\n`, the body finished, then waits N ms on a monotonic-clock pollable |
//! | `/read-body` | reads the whole request body (blocking reads), then 200 `read N bytes`; 500 `body error` if reading fails |
//! | `/alloc` | allocates 1 MiB blocks forever until the memory limit makes it trap |
//! | `/alloc?mb=N` | allocates and touches N MiB once, then 200 `allocated N MiB` |
//! | `/recurse` | unbounded recursion: a stack overflow trap |
//! | `/never-respond` | returns without ever setting a response |
//! | `/error-code` | sets the response to the error code `internal-error("misbehave: deliberate error code")` |
//! | `/set-twice` | sets a response (200, nothing written yet), then sets the same outparam again: traps |
//! | `/sleep?ms=N` | waits N ms on a monotonic-clock pollable, then 200 `slept N ms` |
//! | `/stream?chunks=N&ms=M` | 200 at once, then lines `chunk 0\n` .. `chunk N-1\n`, one every M ms (defaults 5, 100) |
//! | `/log` | `misbehave stdout line` on stdout, `misbehave stderr line` on stderr, 200 `logged` |
//! | `/env?key=K` | 200 with the value of env var K, or 404 `unset` |
//! | `/env-all` | 200 with every `KEY=VALUE` on its own line, sorted |
//! | `/fetch?url=U` | outgoing GET to U: 200 `upstream STATUS\n` + upstream body, or 502 `outbound error: {code:?}` |
//! | `/fs` | `std::fs::read_dir("/")` then `read_to_string("/etc/passwd")`: one line each, `ok` or `err: {e}` |
//! | `/fields?n=N&per=P` | appends N header fields (`x-f<i>: v`), P to each `fields` resource (default: all to one), keeping every resource alive; then 200 `created N fields in K resources`, 500 `refused after I fields: E` when an append is refused (p2 hosts trap instead) |
//! | `/forbidden` | for each of wasmtime's forbidden header names and `x-allowed`, a line `NAME: set A, append B, from-list C`, each `ok` or the `header-error` (`HeaderError::Forbidden`…), then 200 |
//! | `/resources?n=N` | holds N empty `fields` resources at once, then 200 `held N resources` |
//! | `/log-flood?lines=N` | prints N lines `misbehave flood line <i>` on stdout, then 200 `printed N lines` |
//! | `/flaky?percent=N` | 500 `flaky failure` with probability N % (`wasi:random`), else 200 `flaky ok`; N in 0..=100 (default 0) |
//! | `/count` | 200 `<instance-id> <n>`: the instance's id, a random u64 in 16 hex digits drawn on its first request, and how many requests this instance has received, this one included (1 on every request of a fresh instance per request) |
//! | `/leak` | creates a `fields` resource and never drops it, then 200 `leaked a fields resource`: the instance returns holding it |
//! | `/leak-body` | 200, writes `partial\n`, then returns holding the response body and its stream (never finished, never dropped) |
//! | anything else | 404 `unknown misbehave path` |
//!
//! Every response this component sets carries `content-type: text/plain` and `x-component: misbehave`
//! (so swap tests can tell it from the echo component). A malformed numeric parameter gives 400.
//! Every request counts for `/count`, whatever its path.

use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use exports::wasi::http::incoming_handler::Guest;
use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};
use wasi::io::streams::{OutputStream, StreamError};

wit_bindgen::generate!({
    world: "echo",
    path: "../../../wit",
    generate_all,
});

struct Misbehave;

export!(Misbehave);

const MIB: usize = 1 << 20;

/// This instance's id for `/count`: drawn once, on the instance's first request.
static INSTANCE_ID: OnceLock<u64> = OnceLock::new();
/// Requests this instance has received (a p2 export is never entered twice at once).
static REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Guest for Misbehave {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let id = *INSTANCE_ID.get_or_init(wasi::random::random::get_random_u64);
        let count = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        match path {
            "/trap" => trap(),
            "/panic" => panic!("misbehave: deliberate panic"),
            "/loop" => busy_loop(),
            "/loop-after-response" => {
                let body = start_response(out, 200);
                if let Ok(stream) = body.write() {
                    let _ = write_all(&stream, b"started\n");
                }
                busy_loop()
            }
            "/finish-then-loop" => {
                respond(out, 200, b"finished\n");
                busy_loop()
            }
            // The response is complete; the guest goes on waiting (p2 allows work after `finish`).
            "/finish-then-sleep" => match number(query, "ms", 0) {
                Ok(ms) => {
                    respond(out, 200, b"finished\n");
                    sleep_ms(ms);
                }
                Err(bad) => respond(out, 400, bad.as_bytes()),
            },
            // A guest that fails after its response was complete (within `--after-response-grace`).
            "/finish-then-trap" => match number(query, "ms", 0) {
                Ok(ms) => {
                    respond(out, 200, b"finished\n");
                    sleep_ms(ms);
                    trap()
                }
                Err(bad) => respond(out, 400, bad.as_bytes()),
            },
            "/read-body" => match read_body(request) {
                Ok(bytes) => respond(out, 200, format!("read {bytes} bytes").as_bytes()),
                Err(()) => respond(out, 500, b"body error"),
            },
            "/alloc" if param(query, "mb").is_none() => alloc_forever(),
            "/recurse" => {
                black_box(recurse(0));
            }
            // Dropping the outparam unset is exactly the misbehaviour: the host must answer by itself.
            "/never-respond" => drop(out),
            "/error-code" => ResponseOutparam::set(
                out,
                Err(ErrorCode::InternalError(Some("misbehave: deliberate error code".into()))),
            ),
            "/set-twice" => set_twice(out),
            "/count" => respond(out, 200, format!("{id:016x} {count}").as_bytes()),
            "/leak" => {
                std::mem::forget(Fields::new());
                respond(out, 200, b"leaked a fields resource");
            }
            "/leak-body" => {
                let body = start_response(out, 200);
                if let Ok(stream) = body.write() {
                    let _ = write_all(&stream, b"partial\n");
                    std::mem::forget(stream);
                }
                std::mem::forget(body);
            }
            "/stream" => match (number(query, "chunks", 5), number(query, "ms", 100)) {
                (Ok(chunks), Ok(ms)) => stream(out, chunks, ms),
                (Err(bad), _) | (_, Err(bad)) => respond(out, 400, bad.as_bytes()),
            },
            _ => {
                let (status, body) = simple(path, query);
                respond(out, status, &body);
            }
        }
    }
}

/// The paths that compute a whole answer, then send it.
fn simple(path: &str, query: &str) -> (u16, Vec<u8>) {
    match path {
        "/" | "/ok" => (200, "misbehave ok".into()),
        "/alloc" => match number(query, "mb", 0) {
            Ok(mb) => match usize::try_from(mb).ok().and_then(|mb| mb.checked_mul(MIB)) {
                Some(bytes) => {
                    // A non-zero fill writes every byte, so the pages are really committed.
                    let block = vec![0x5a_u8; bytes];
                    black_box(&block);
                    (200, format!("allocated {mb} MiB").into())
                }
                None => (400, "mb too large".into()),
            },
            Err(bad) => (400, bad.into()),
        },
        "/sleep" => match number(query, "ms", 0) {
            Ok(ms) => {
                sleep_ms(ms);
                (200, format!("slept {ms} ms").into())
            }
            Err(bad) => (400, bad.into()),
        },
        "/log" => {
            println!("misbehave stdout line");
            eprintln!("misbehave stderr line");
            (200, "logged".into())
        }
        "/env" => match param(query, "key").and_then(std::env::var_os) {
            Some(value) => (200, value.to_string_lossy().into_owned().into()),
            None => (404, "unset".into()),
        },
        "/env-all" => {
            let mut vars: Vec<String> = std::env::vars_os()
                .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            vars.sort();
            (200, vars.concat().into())
        }
        "/fetch" => match param(query, "url") {
            Some(url) => fetch(&url),
            None => (400, "missing url".into()),
        },
        "/fs" => {
            let dir = outcome(std::fs::read_dir("/"));
            let file = outcome(std::fs::read_to_string("/etc/passwd"));
            (200, format!("{dir}\n{file}\n").into())
        }
        // What a guest can make the host hold through headers (`--max-guest-header-bytes`,
        // `--max-guest-resources`).
        "/fields" => match (number(query, "n", 0), number(query, "per", u64::MAX)) {
            (Ok(n), Ok(per)) => many_fields(n, per.max(1)),
            (Err(bad), _) | (_, Err(bad)) => (400, bad.into()),
        },
        // Which header names the host lets a guest set, by each of the three ways to set one.
        "/forbidden" => (200, forbidden_headers().into()),
        // What a guest can make the host's resource table hold (`--max-guest-resources`).
        "/resources" => match number(query, "n", 0) {
            Ok(n) => {
                let held: Vec<Fields> = (0..n).map(|_| Fields::new()).collect();
                (200, format!("held {} resources", held.len()).into())
            }
            Err(bad) => (400, bad.into()),
        },
        // What a guest can make the host log (`--max-guest-log-lines`).
        "/log-flood" => match number(query, "lines", 0) {
            Ok(lines) => {
                for i in 0..lines {
                    println!("misbehave flood line {i}");
                }
                (200, format!("printed {lines} lines").into())
            }
            Err(bad) => (400, bad.into()),
        },
        // A failure rate for the canary analysis tests: each request draws on its own.
        "/flaky" => match number(query, "percent", 0) {
            Ok(percent) if percent <= 100 => {
                if wasi::random::random::get_random_u64() % 100 < percent {
                    (500, "flaky failure".into())
                } else {
                    (200, "flaky ok".into())
                }
            }
            Ok(percent) => (400, format!("bad percent: {percent} is over 100").into()),
            Err(bad) => (400, bad.into()),
        },
        _ => (404, "unknown misbehave path".into()),
    }
}

/// Appends `n` fields, `per` to each `fields` resource, and holds every resource until the end.
fn many_fields(n: u64, per: u64) -> (u16, Vec<u8>) {
    let mut held: Vec<Fields> = Vec::new();
    for i in 0..n {
        if i % per == 0 {
            held.push(Fields::new());
        }
        let fields = held.last().expect("pushed above");
        if let Err(e) = fields.append(&format!("x-f{i}"), b"v") {
            return (500, format!("refused after {i} fields: {e:?}").into());
        }
    }
    (200, format!("created {n} fields in {} resources", held.len()).into())
}

fn forbidden_headers() -> String {
    const NAMES: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
        "http2-settings",
        "x-allowed",
    ];
    let said = |result: Result<(), wasi::http::types::HeaderError>| match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}"),
    };
    let mut lines = String::new();
    for name in NAMES {
        let set = said(Fields::new().set(name, &[b"v".to_vec()]));
        let append = said(Fields::new().append(name, b"v"));
        let from_list = said(Fields::from_list(&[(name.to_string(), b"v".to_vec())]).map(drop));
        lines.push_str(&format!("{name}: set {set}, append {append}, from-list {from_list}\n"));
    }
    lines
}

fn outcome<T>(result: std::io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("err: {e}"),
    }
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    // Only so that the crate compiles natively (`cargo clippy --all-targets` at the root).
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Spins without ever calling into the host. `black_box` keeps the optimiser from deleting the loop.
fn busy_loop() -> ! {
    loop {
        black_box(());
    }
}

/// Keeps every block reachable, so only the host's memory limit ends this (allocation failure aborts,
/// which is a trap).
fn alloc_forever() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5_u8; MIB]);
        black_box(&hoard);
    }
}

/// The result goes through `black_box` before it is used, so this is neither a tail call nor an
/// accumulator loop LLVM could rewrite; the opaque exit test keeps rustc's `unconditional_recursion`
/// lint quiet without ever being true.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    black_box(recurse(depth + 1)).wrapping_add(depth)
}

/// Sets a response, then sets the same outparam again. `set` takes the handle by ownership, so the
/// second call lowers a handle the component no longer owns: the canonical ABI traps on it.
fn set_twice(out: ResponseOutparam) {
    let handle = out.take_handle();
    // SAFETY: `take_handle` released `out`'s ownership of the handle, so `first` is its only owner.
    let first = unsafe { ResponseOutparam::from_handle(handle) };
    // The second `set` comes before a byte of the first response is written: the host can
    // still turn this misuse into a 500 instead of a 200 with a body cut short.
    let _body = start_response(first, 200);
    // SAFETY: not memory-unsafe, only wrong on purpose: `handle` was given away by the first `set`.
    let second = unsafe { ResponseOutparam::from_handle(handle) };
    ResponseOutparam::set(second, Ok(new_response(200)));
}

fn stream(out: ResponseOutparam, chunks: u64, ms: u64) {
    let body = start_response(out, 200);
    let Ok(stream) = body.write() else { return };
    for i in 0..chunks {
        if i > 0 {
            sleep_ms(ms);
        }
        if write_all(&stream, format!("chunk {i}\n").as_bytes()).is_err() {
            return; // the client went away; the unfinished body tells the host so
        }
    }
    drop(stream); // a child of `body`: must go before `finish`
    let _ = OutgoingBody::finish(body, None);
}

/// Outgoing GET; the upstream body is read whole.
fn fetch(url: &str) -> (u16, Vec<u8>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (400, format!("bad url: {url}").into());
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let request = OutgoingRequest::new(Fields::new());
    let valid = request.set_method(&Method::Get).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(&path)).is_ok();
    if !valid {
        return (400, format!("bad url: {url}").into());
    }
    // The body is never taken, so the request goes out with an empty one.
    let future = match outgoing_handler::handle(request, None) {
        Ok(future) => future,
        Err(code) => return (502, format!("outbound error: {code:?}").into()),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return (502, format!("outbound error: {code:?}").into()),
        Some(Err(())) | None => return (502, "outbound error: no response".into()),
    };
    let status = response.status();
    let Ok(body) = response.consume() else {
        return (502, "outbound error: body already consumed".into());
    };
    let Ok(stream) = body.stream() else {
        return (502, "outbound error: no body stream".into());
    };
    let mut answer = format!("upstream {status}\n").into_bytes();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(bytes) => answer.extend(bytes),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return (502, format!("outbound error: body: {}", e.to_debug_string()).into());
            }
        }
    }
    drop(stream); // a child of `body`
    drop(IncomingBody::finish(body));
    (200, answer)
}

/// Reads the request body to its end with blocking reads, before any response: how many bytes
/// came, or `Err` if the body could not be taken or a read failed (the host cut it).
fn read_body(request: IncomingRequest) -> Result<u64, ()> {
    let body = request.consume()?;
    let stream = body.stream()?;
    let mut total = 0u64;
    let outcome = loop {
        match stream.blocking_read(64 * 1024) {
            Ok(bytes) => total += bytes.len() as u64,
            Err(StreamError::Closed) => break Ok(total),
            Err(StreamError::LastOperationFailed(_)) => break Err(()),
        }
    };
    drop(stream); // a child of `body`
    drop(IncomingBody::finish(body));
    outcome
}

fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
}

fn new_response(status: u16) -> OutgoingResponse {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("x-component".to_string(), b"misbehave".to_vec()),
    ])
    .expect("static headers are valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("status codes used here are valid");
    response
}

/// Sends the head of a response and returns its body, still open.
fn start_response(out: ResponseOutparam, status: u16) -> OutgoingBody {
    let response = new_response(status);
    // Taken before `set`, which consumes the response.
    let body = response.body().expect("first call to body()");
    ResponseOutparam::set(out, Ok(response));
    body
}

fn respond(out: ResponseOutparam, status: u16, text: &[u8]) {
    let body = start_response(out, status);
    if let Ok(stream) = body.write() {
        let _ = write_all(&stream, text);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Writes and flushes everything (`blocking-write-and-flush` takes at most 4096 bytes per call).
fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    bytes.chunks(4096).try_for_each(|chunk| stream.blocking_write_and_flush(chunk))
}

/// The first value of `key` in `query`, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

/// `key` as a number, `default` when absent, or an error text for a 400.
fn number(query: &str, key: &str, default: u64) -> Result<u64, String> {
    match param(query, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("bad {key}: {v:?}")),
    }
}

/// Decodes `%XX`; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
