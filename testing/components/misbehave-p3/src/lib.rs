//! `misbehave-p3`: a `wasi:http/service@0.3.0` component that fails on purpose, for the host's p3
//! integration tests. `handle` is an `async func` here, so one instance can serve several requests
//! at once and be reused across requests: `/count` and `/sleep` make both visible.
//!
//! The request path picks the behaviour (query parameters are split on `&` and `=`, no decoding):
//!
//! | path | behaviour |
//! |---|---|
//! | `/` | 200 `misbehave-p3 ok` |
//! | `/count` | 200 `<instance-id> <n>`: the instance's id, a random u64 in 16 hex digits drawn on its first request, and how many requests this instance has received, this one included |
//! | `/sleep?ms=N` | waits N ms (`wasi:clocks/monotonic-clock.wait-for`, so other requests on the instance go on meanwhile), then 200 `slept N ms on <instance-id>` |
//! | `/trap` | executes `unreachable` before any response |
//! | `/oob?past=N` | loads a byte N bytes past the end of linear memory (default 0; capped at the last 32-bit address) before any response: a trap, whether the engine checks bounds in code or with a guard region |
//! | `/error-code` | returns the error code `internal-error("misbehave-p3: deliberate error code")` instead of a response |
//! | `/loop` | busy loop forever, never yielding: only epoch interruption (or a fuel limit) stops it |
//! | `/alloc?mb=N` | allocates and touches N MiB once, then 200 `allocated N MiB` |
//! | `/stream?chunks=N&ms=M` | 200 at once, then lines `chunk 0\n` .. `chunk N-1\n`, one every M ms, waited asynchronously (defaults 5, 100) |
//! | `/fields?n=N&per=P` | appends N header fields (`x-f<i>: v`), P to each `fields` resource (default: all to one), keeping every resource alive; then 200 `created N fields in K resources`, or 500 `refused after I fields: E` when an append is refused |
//! | `/resources?n=N` | holds N empty `fields` resources at once, then 200 `held N resources` |
//! | `/log-flood?lines=N` | prints N lines `misbehave-p3 flood line <i>` on stdout, then 200 `printed N lines` |
//! | `/flaky?percent=P` | 500 `flaky failure` with probability P % (`wasi:random`), else 200 `flaky ok`; P in 0..=100 (default 0) |
//! | anything else | 404 `unknown misbehave-p3 path` |
//!
//! Every response carries `content-type: text/plain` and `x-component: misbehave-p3` (so tests can
//! tell it from the echo components and from `misbehave`). A malformed numeric parameter gives 400.
//! Every request counts for `/count`, whatever its path.

use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use exports::wasi::http::handler::Guest;
use wasi::clocks::monotonic_clock;
use wasi::http::types::{ErrorCode, Fields, Request, Response};
use wit_bindgen::{StreamWriter, spawn_local};

wit_bindgen::generate!({
    world: "echo-p3",
    path: "../../../wit/p3",
    generate_all,
});

struct MisbehaveP3;

export!(MisbehaveP3);

const MIB: usize = 1 << 20;

/// This instance's id for `/count`: drawn once, on the instance's first request.
static INSTANCE_ID: OnceLock<u64> = OnceLock::new();
/// Requests this instance has received. An instance runs one thread; concurrent requests
/// interleave only at `await`s, so the atomic is for `static`'s sake, not for ordering.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

impl Guest for MisbehaveP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let id = *INSTANCE_ID.get_or_init(wasi::random::random::get_random_u64);
        let count = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let path_with_query = request.get_path_with_query().unwrap_or_else(|| "/".to_string());
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        match path {
            "/trap" => trap(),
            "/oob" => match number(query, "past", 0) {
                Ok(past) => out_of_bounds(past),
                Err(bad) => respond(400, bad),
            },
            "/error-code" => {
                Err(ErrorCode::InternalError(Some("misbehave-p3: deliberate error code".into())))
            }
            "/loop" => busy_loop(),
            "/sleep" => match number(query, "ms", 0) {
                Ok(ms) => {
                    sleep_ms(ms).await;
                    respond(200, format!("slept {ms} ms on {id:016x}"))
                }
                Err(bad) => respond(400, bad),
            },
            "/stream" => match (number(query, "chunks", 5), number(query, "ms", 100)) {
                (Ok(chunks), Ok(ms)) => stream(chunks, ms),
                (Err(bad), _) | (_, Err(bad)) => respond(400, bad),
            },
            "/count" => respond(200, format!("{id:016x} {count}")),
            _ => {
                let (status, body) = simple(path, query);
                respond(status, body)
            }
        }
    }
}

/// The paths that compute a whole answer at once.
fn simple(path: &str, query: &str) -> (u16, String) {
    match path {
        "/" => (200, "misbehave-p3 ok".into()),
        "/alloc" => match number(query, "mb", 0) {
            Ok(mb) => match usize::try_from(mb).ok().and_then(|mb| mb.checked_mul(MIB)) {
                Some(bytes) => {
                    // A non-zero fill writes every byte, so the pages are really committed.
                    let block = vec![0x5a_u8; bytes];
                    black_box(&block);
                    (200, format!("allocated {mb} MiB"))
                }
                None => (400, "mb too large".into()),
            },
            Err(bad) => (400, bad),
        },
        // What a guest can make the host hold through headers (`--max-guest-header-bytes`,
        // `--max-guest-resources`).
        "/fields" => match (number(query, "n", 0), number(query, "per", u64::MAX)) {
            (Ok(n), Ok(per)) => many_fields(n, per.max(1)),
            (Err(bad), _) | (_, Err(bad)) => (400, bad),
        },
        // What a guest can make the host's resource table hold (`--max-guest-resources`).
        "/resources" => match number(query, "n", 0) {
            Ok(n) => {
                let held: Vec<Fields> = (0..n).map(|_| Fields::new()).collect();
                (200, format!("held {} resources", held.len()))
            }
            Err(bad) => (400, bad),
        },
        // What a guest can make the host log (`--max-guest-log-lines`).
        "/log-flood" => match number(query, "lines", 0) {
            Ok(lines) => {
                for i in 0..lines {
                    println!("misbehave-p3 flood line {i}");
                }
                (200, format!("printed {lines} lines"))
            }
            Err(bad) => (400, bad),
        },
        // A failure rate for the canary tests: each request draws on its own.
        "/flaky" => match number(query, "percent", 0) {
            Ok(percent) if percent <= 100 => {
                if wasi::random::random::get_random_u64() % 100 < percent {
                    (500, "flaky failure".into())
                } else {
                    (200, "flaky ok".into())
                }
            }
            Ok(percent) => (400, format!("bad percent: {percent} is over 100")),
            Err(bad) => (400, bad),
        },
        _ => (404, "unknown misbehave-p3 path".into()),
    }
}

/// Appends `n` fields, `per` to each `fields` resource, and holds every resource until the end.
fn many_fields(n: u64, per: u64) -> (u16, String) {
    let mut held: Vec<Fields> = Vec::new();
    for i in 0..n {
        if i % per == 0 {
            held.push(Fields::new());
        }
        let fields = held.last().expect("pushed above");
        if let Err(e) = fields.append(&format!("x-f{i}"), b"v") {
            return (500, format!("refused after {i} fields: {e:?}"));
        }
    }
    (200, format!("created {n} fields in {} resources", held.len()))
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    // Only so that the crate compiles natively (`cargo clippy --all-targets` at the root).
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Loads the byte `past` bytes beyond linear memory's end: wasm traps on it (an out-of-bounds
/// access), whichever way the engine finds it.
fn out_of_bounds(past: u64) -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        let end = core::arch::wasm32::memory_size(0) as u64 * 65_536;
        let address = end.saturating_add(past).min(u64::from(u32::MAX)) as usize;
        // SAFETY: not safe, on purpose: the address is outside linear memory, so the load traps
        // and nothing reads the result.
        let byte = unsafe { core::ptr::read_volatile(address as *const u8) };
        black_box(byte);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = past;
    trap()
}

/// Spins without ever calling into the host or yielding. `black_box` keeps the optimiser from
/// deleting the loop.
fn busy_loop() -> ! {
    loop {
        black_box(());
    }
}

/// Waits without blocking the instance: other requests' tasks run meanwhile.
async fn sleep_ms(ms: u64) {
    monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
}

/// 200 at once; the lines follow from a task that outlives `handle`.
fn stream(chunks: u64, ms: u64) -> Result<Response, ErrorCode> {
    let (mut body, response) = new_response(200)?;
    spawn_local(async move {
        for i in 0..chunks {
            if i > 0 {
                sleep_ms(ms).await;
            }
            if !body.write_all(format!("chunk {i}\n").into_bytes()).await.is_empty() {
                return; // the client went away
            }
        }
    });
    Ok(response)
}

fn respond(status: u16, text: String) -> Result<Response, ErrorCode> {
    let (mut body, response) = new_response(status)?;
    spawn_local(async move {
        // Left over only when the reader went away (HEAD, a client gone): nothing to do.
        let _unsent = body.write_all(text.into_bytes()).await;
    });
    Ok(response)
}

/// A response with this component's headers, and the writer of its body. The body's result
/// future is left to its default ("ended well") and the transmission result unread.
fn new_response(status: u16) -> Result<(StreamWriter<u8>, Response), ErrorCode> {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("x-component".to_string(), b"misbehave-p3".to_vec()),
    ])
    .map_err(|e| ErrorCode::InternalError(Some(format!("headers: {e:?}"))))?;
    let (body, contents) = wit_stream::new();
    let (_, trailers) = wit_future::new(|| Ok(None));
    let (response, _transmitted) = Response::new(headers, Some(contents), trailers);
    response.set_status_code(status).map_err(|()| ErrorCode::InternalError(Some("status".into())))?;
    Ok((body, response))
}

/// The first value of `key` in `query`.
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then_some(v)
    })
}

/// `key` as a number, `default` when absent, or an error text for a 400.
fn number(query: &str, key: &str, default: u64) -> Result<u64, String> {
    match param(query, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("bad {key}: {v:?}")),
    }
}
