//! The measurements, one module per section, and what they share: the server names, [`Opts`],
//! the servers of the throughput table, starting a server, and the order of visits. Every section
//! runs its servers on [`SERVER_CORES`] and its load on [`LOAD_CORES`], repeats `rounds` times
//! alternating between the servers, and records one value per round in [`Samples`].
//!
//! - [`throughput`]: requests/s and latency, closed and open loop.
//! - [`p3`]: closed-loop GET on the p3 echo, echo-host against `wasmtime serve -Sp3`.
//! - [`reuse`]: closed-loop GET on the p2 echo with instances reused up to 128 requests, echo-host
//!   against `wasmtime serve --max-instance-reuse-count 128`.
//! - [`cold`]: process exec to the first 200, and [`docker_run`]: `docker run` of the image to it.
//! - [`memory`]: RSS idle, under load, with many idle connections.
//! - [`stream`]: a large POST echoed back on one connection.
//! - [`swap`]: swap latency and failed requests during swaps under load.
//! - [`scaling`]: requests/s on one and two server cores.
//! - [`fleet`]: three instances following one release store on the Cloud Storage emulator: push
//!   to one, until every one serves it.
//! - [`canary`]: requests/s with a 50/50 canary split; [`rollback`]: a failing canary's first
//!   failure, and a slow canary's start, to every instance of a fleet back on stable.
//! - [`oci`]: three instances following one tag in a registry on loopback: tag moved, until
//!   every one serves it; a 10 MiB component's start-up pulled by digest against from a file.
//! - [`counts`]: instructions, allocations (callgrind) and syscalls (strace) per GET, counts
//!   that do not drift, for echo-host and its peers.
//! - [`traces`]: what OTLP traces cost: traces off, on at 100% sampling, on with the collector
//!   down.
//! - [`wake`]: the first request's added latency after a frozen instance on a store wakes up
//!   (bounded staleness), and the staleness check's cost on a busy instance.

mod canary;
mod cold;
mod counts;
mod docker_run;
mod fleet;
mod memory;
mod oci;
mod p3;
mod reuse;
mod rollback;
mod scaling;
mod stream;
mod swap;
mod throughput;
mod traces;
mod wake;

pub use canary::{CANARY_ONE, CANARY_SPLIT, SPLIT_SAMPLE, canary};
pub use cold::{
    COLD_CONTAINER, COLD_CWASM, COLD_WASM, COLD_WASMTIME_CACHE, COLD_WASMTIME_NOCACHE, cold_start,
};
pub use counts::{counts, with_counts_table};
pub use docker_run::ContainerOutcome;
pub use fleet::{FLEET_INSTANCES, FLEET_POLLS, FLEET_SLACK_MS, fleet, fleet_label};
pub use memory::memory;
pub use oci::{oci, with_oci_table};
pub use p3::{P3_IDLE_TIMEOUT, P3_MAX_CONCURRENT, P3_MAX_REQUESTS, p3};
pub use reuse::{P2_REUSE_REQUESTS, reuse};
pub use rollback::{
    CANARY_LATENCY_ROLLBACK, CANARY_POLL, CANARY_ROLLBACK, CANARY_SLACK_MS, CANARY_WINDOW, FAIL_PATH,
    ROLLBACKS, SLOW_PATH,
};
pub use scaling::scaling;
pub use stream::streaming;
pub use swap::{ADMIN_TOKEN, swap, upload_request};
pub use throughput::throughput;
pub use traces::{traces, with_traces_table};
pub use wake::{wake, with_wake_table};

use std::time::Duration;

use crate::report::group_thousands;
use crate::samples::Samples;
use crate::servers::{Server, Spec};
use crate::setup::Paths;

/// The server's core, and the load generator's (wrk, the open-loop client, this process).
pub const SERVER_CORES: &[usize] = &[0];
pub const LOAD_CORES: &[usize] = &[1];
pub const BOTH_CORES: &[usize] = &[0, 1];

pub const ECHO_HOST: &str = "echo-host";
pub const WASMTIME: &str = "wasmtime serve";
pub const NATIVE: &str = "native hyper";
pub const FLASK: &str = "Flask (dev server)";
pub const GUNICORN: &str = "Flask (gunicorn, 1 worker)";
/// The p3 table's wasm hosts, both serving `echo_guest_p3.wasm`.
pub const ECHO_HOST_P3: &str = "echo-host (p3)";
pub const WASMTIME_P3: &str = "wasmtime serve -Sp3";
/// The same two hosts serving a third-party p3 component built unoptimised (the `wasip3` crate's
/// `http-proxy` example, `Paths::third_party_p3_wasm`).
pub const ECHO_HOST_P3_THIRD: &str = "echo-host (p3, wasip3 example)";
pub const WASMTIME_P3_THIRD: &str = "wasmtime serve -Sp3 (wasip3 example)";
/// The p2 reuse table's wasm hosts, both serving `echo_guest.wasm` with instances reused.
pub const ECHO_HOST_REUSE: &str = "echo-host (p2, reuse 128)";
pub const WASMTIME_REUSE: &str = "wasmtime serve (reuse 128)";

/// The GET the seed's README shows, and the 1 KiB POST body (text: Flask decodes it).
pub const GET_PATH: &str = "/?name=world";
pub const POST_BODY_LEN: usize = 1024;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: f64 = 1024.0;

/// How long and how hard to measure.
#[derive(Debug, Clone)]
pub struct Opts {
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// The open-loop rate (requests/s), lowered per server to half of what it sustains.
    pub rate: f64,
    /// Length of each open-loop run and of each scaling run.
    pub open_duration: Duration,
    pub idle_connections: usize,
    pub stream_bytes: u64,
    pub swaps_under_load: usize,
    /// Pushes per poll interval in the fleet section.
    pub fleet_pushes: usize,
}

/// The servers of the throughput table, all serving the echo.
pub fn specs(paths: &Paths) -> Vec<Spec> {
    let echo = paths.echo_wasm.display().to_string();
    vec![
        Spec::new(
            ECHO_HOST,
            &paths.echo_host,
            &["--listen-addr", "127.0.0.1", "--port", "{port}", "--component", &echo],
        ),
        Spec::new(WASMTIME, &paths.wasmtime, &["serve", "--addr", "127.0.0.1:{port}", &echo]),
        Spec::new(NATIVE, &paths.native_echo, &["{port}"]),
        Spec::new(FLASK, &paths.python, &["run_seed.py", "{port}"]).cwd(&paths.flask_dir),
        Spec::new(GUNICORN, &paths.gunicorn, &["-w", "1", "-b", "127.0.0.1:{port}", "app:app"])
            .cwd(&paths.flask_dir),
    ]
}

pub fn post_body() -> Vec<u8> {
    let pattern = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
    pattern.iter().copied().cycle().take(POST_BODY_LEN).collect()
}

fn log_path(paths: &Paths, name: &str) -> std::path::PathBuf {
    let file: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    paths.work.join(format!("{file}.log"))
}

pub fn start(paths: &Paths, spec: &Spec, cores: &[usize]) -> anyhow::Result<Server> {
    let mut server = spec.spawn(cores, &log_path(paths, &spec.name))?;
    server.wait_ready(GET_PATH, STARTUP_TIMEOUT)?;
    Ok(server)
}

fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// Round `round` visits the servers forwards, the next one backwards, so drift in the machine's
/// load does not always favour the same server.
fn order<T>(items: &[T], round: usize) -> Vec<&T> {
    let mut order: Vec<&T> = items.iter().collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Shared by the sections' own tables: a duration, a count, a sample's range.
pub(super) fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.2} ms"),
        _ => "–".into(),
    }
}

pub(super) fn count(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => group_thousands(v.round() as i64),
        _ => "–".into(),
    }
}

pub(super) fn range(s: &Samples, metric: &str, server: &str) -> (Option<f64>, Option<f64>) {
    let values = s.get(metric, server).unwrap_or_default().iter().copied().filter(|v| v.is_finite());
    (values.clone().reduce(f64::min), values.reduce(f64::max))
}
