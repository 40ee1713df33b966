//! p3: the echo built for `wasi:http/service@0.3.0`, closed-loop GET on echo-host and on
//! `wasmtime serve -Sp3` with the same instance reuse, native hyper as the ceiling.

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
    let echo = paths.echo_p3_wasm.display().to_string();
    vec![
        Spec::new(
            ECHO_HOST_P3,
            &paths.echo_host,
            &["--listen-addr", "127.0.0.1", "--port", "{port}", "--component", &echo],
        ),
        Spec::new(
            WASMTIME_P3,
            &paths.wasmtime,
            &[
                "serve",
                "-Wcomponent-model-async",
                "-Sp3",
                "--max-instance-reuse-count",
                P3_MAX_REQUESTS,
                "--max-instance-concurrent-reuse-count",
                P3_MAX_CONCURRENT,
                "--idle-instance-timeout",
                P3_IDLE_TIMEOUT,
                "--addr",
                "127.0.0.1:{port}",
                &echo,
            ],
        ),
        Spec::new(NATIVE, &paths.native_echo, &["{port}"]),
    ]
}

/// Closed-loop `GET /?name=world` as in the throughput table (warm-up, then `--duration` per
/// server and round, alternating), recorded as `p3.*`.
pub fn p3(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    get_rounds(paths, opts, &p3_specs(paths), "p3", samples)
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
