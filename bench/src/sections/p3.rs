//! p3: the echo built for `wasi:http/service@0.3.0`, closed-loop GET on echo-host and on
//! `wasmtime serve -Sp3` with the same instance reuse, native hyper as the ceiling; then both
//! hosts again on a third-party p3 component built unoptimised.

use std::path::Path;

use super::throughput::{closed_loop, record};
use super::*;
use crate::wrk;

/// The reuse settings both p3 hosts run with: echo-host's defaults (`--instance-max-requests`,
/// `--instance-max-concurrent`, `--instance-idle-timeout`), which are `wasmtime serve`'s p3
/// defaults too; passed to `wasmtime serve` explicitly so a change of its defaults shows here.
pub const P3_MAX_REQUESTS: &str = "128";
pub const P3_MAX_CONCURRENT: &str = "16";
pub const P3_IDLE_TIMEOUT: &str = "1s";

/// The servers of the p3 table: the p3 echo on both wasm hosts, and native hyper.
pub fn p3_specs(paths: &Paths) -> Vec<Spec> {
    let mut specs = wasm_hosts(paths, &paths.echo_p3_wasm, [ECHO_HOST_P3, WASMTIME_P3], &[]);
    specs.push(Spec::new(NATIVE, &paths.native_echo, &["{port}"]));
    specs
}

/// The third-party table's servers: the wasip3 example on both wasm hosts. It is built with
/// `std`, so it also imports WASI 0.2's `wasi:cli` interfaces: `wasmtime serve` links them with
/// `-Scli` (echo-host links all of WASI 0.2 for every component).
pub fn third_party_specs(paths: &Paths) -> Vec<Spec> {
    wasm_hosts(paths, &paths.third_party_p3_wasm, [ECHO_HOST_P3_THIRD, WASMTIME_P3_THIRD], &["-Scli"])
}

/// echo-host (its defaults) and `wasmtime serve -Sp3` (the same reuse, `extra` flags) serving
/// `component`, named `names`.
fn wasm_hosts(paths: &Paths, component: &Path, names: [&str; 2], extra: &[&str]) -> Vec<Spec> {
    let component = component.display().to_string();
    let mut wasmtime_args = vec!["serve", "-Wcomponent-model-async", "-Sp3"];
    wasmtime_args.extend_from_slice(extra);
    wasmtime_args.extend_from_slice(&[
        "--max-instance-reuse-count",
        P3_MAX_REQUESTS,
        "--max-instance-concurrent-reuse-count",
        P3_MAX_CONCURRENT,
        "--idle-instance-timeout",
        P3_IDLE_TIMEOUT,
        "--addr",
        "127.0.0.1:{port}",
        &component,
    ]);
    vec![
        Spec::new(
            names[0],
            &paths.echo_host,
            &["--listen-addr", "127.0.0.1", "--port", "{port}", "--component", &component],
        ),
        Spec::new(names[1], &paths.wasmtime, &wasmtime_args),
    ]
}

/// Closed-loop `GET /?name=world` as in the throughput table (warm-up, then `--duration` per
/// server and round, alternating), recorded as `p3.*`; then the third-party component's runs,
/// recorded as `p3_third_party.*`.
pub fn p3(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    get_rounds(paths, opts, &p3_specs(paths), "p3", samples)?;
    get_rounds(paths, opts, &third_party_specs(paths), "p3_third_party", samples)
}

/// Starts `specs` on the server core, warms each up, then runs closed-loop `GET /?name=world`
/// on each for `--duration` per round, alternating, recorded as `{workload}.*`.
pub(super) fn get_rounds(
    paths: &Paths,
    opts: &Opts,
    specs: &[Spec],
    workload: &str,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let mut servers = Vec::new();
    for spec in specs {
        progress(&format!("starting {}", spec.name));
        servers.push(start(paths, spec, SERVER_CORES)?);
    }
    for server in &servers {
        // Warm-up: pool slots, instances to reuse, caches.
        wrk::run(&paths.wrk, server.addr, GET_PATH, opts.connections, opts.warmup, None, LOAD_CORES)?;
    }
    for round in 0..opts.rounds {
        for server in order(&servers, round) {
            let run = closed_loop(paths, opts, server, GET_PATH, None)?;
            record(samples, round, workload, &server.name, &run);
        }
    }
    for server in servers {
        server.stop();
    }
    Ok(())
}
