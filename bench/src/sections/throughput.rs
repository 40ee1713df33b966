//! Throughput and latency: requests/s, p50 and p99 of `GET /?name=world` and a 1 KiB POST, closed
//! loop (wrk) and open loop at a fixed rate, with each server's RSS and CPU share during the runs.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::http1;
use crate::openloop;
use crate::procfs::Memory;
use crate::servers::RssSampler;
use crate::wrk::{self, WrkResult};

/// Requests/s and latency, closed loop (wrk) and open loop, GET and 1 KiB POST, one server core.
pub fn throughput(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let script = paths.work.join("post.lua");
    let body = post_body();
    wrk::write_post_script(&script, &body)?;
    let post = http1::post_request("/", &body);
    let get = http1::get_request(GET_PATH);
    let specs = specs(paths);
    let mut servers = Vec::new();
    for spec in &specs {
        progress(&format!("starting {}", spec.name));
        servers.push(start(paths, spec, SERVER_CORES)?);
    }
    for server in &servers {
        samples.add("rss.idle_started_mib", &server.name, server.memory().rss_kib as f64 / MIB);
        // Warm-up: pool slots, caches, Python's first requests.
        wrk::run(&paths.wrk, server.addr, GET_PATH, opts.connections, opts.warmup, None, LOAD_CORES)?;
        wrk::run(&paths.wrk, server.addr, "/", opts.connections, opts.warmup, Some(&script), LOAD_CORES)?;
    }
    let mut rates: std::collections::HashMap<(String, &str), f64> = std::collections::HashMap::new();
    for round in 0..opts.rounds {
        for server in order(&servers, round) {
            for (workload, script) in [("get", None), ("post", Some(script.as_path()))] {
                let path = if workload == "get" { GET_PATH } else { "/" };
                let run = closed_loop(paths, opts, server, path, script)?;
                record(samples, round, workload, &server.name, &run);
            }
        }
        // Open loop at a fixed rate, fixed after the first round's closed-loop runs: the same rate
        // for echo-host, wasmtime serve and native (half the slower wasm host's throughput, at most
        // `--rate`), so their p99s compare; the Flask servers get half of their own.
        if rates.is_empty() {
            for server in &servers {
                let common = [ECHO_HOST, WASMTIME, NATIVE].contains(&server.name.as_str());
                for workload in ["get", "post"] {
                    let own = |name: &str| {
                        samples.median(&format!("{workload}.rps"), name).unwrap_or(opts.rate) * 0.5
                    };
                    let half = if common { own(ECHO_HOST).min(own(WASMTIME)) } else { own(&server.name) };
                    rates.insert((server.name.clone(), workload), opts.rate.min(half.floor()).max(10.0));
                }
            }
        }
        for server in order(&servers, round) {
            for (workload, request) in [("get", &get), ("post", &post)] {
                let rate = rates[&(server.name.clone(), workload)];
                let result = openloop::run(
                    server.addr,
                    request,
                    opts.connections,
                    rate,
                    Duration::from_millis(500),
                    opts.open_duration,
                    None,
                )?;
                progress(&format!(
                    "round {} open-loop {workload} {} at {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors",
                    round + 1,
                    server.name,
                    result.p50_ms,
                    result.p99_ms,
                    result.p999_ms,
                    result.errors
                ));
                samples.add(&format!("open_{workload}.rate"), &server.name, rate);
                samples.add(&format!("open_{workload}.p50_ms"), &server.name, result.p50_ms);
                samples.add(&format!("open_{workload}.p99_ms"), &server.name, result.p99_ms);
                samples.add(&format!("open_{workload}.p999_ms"), &server.name, result.p999_ms);
                samples.add(&format!("open_{workload}.errors"), &server.name, result.errors as f64);
            }
        }
    }
    for server in servers {
        server.stop();
    }
    Ok(())
}

/// One closed-loop run and what the server did meanwhile.
pub(super) struct ClosedLoop {
    pub result: WrkResult,
    /// The sample with the highest RSS (every 50 ms).
    pub memory: Memory,
    /// The server's CPU time over the run's wall time (1.0 = all of its core).
    pub cpu: f64,
}

/// `wrk` on `path` for `--duration` (a POST when `script` is given), with the server's peak RSS
/// and CPU share during the run.
pub(super) fn closed_loop(
    paths: &Paths,
    opts: &Opts,
    server: &Server,
    path: &str,
    script: Option<&Path>,
) -> anyhow::Result<ClosedLoop> {
    let cpu_before = server.cpu_time();
    let sampler = RssSampler::start(server.pid, Duration::from_millis(50));
    let result =
        wrk::run(&paths.wrk, server.addr, path, opts.connections, opts.duration, script, LOAD_CORES)?;
    let memory = sampler.finish();
    let cpu = (server.cpu_time() - cpu_before).as_secs_f64() / opts.duration.as_secs_f64();
    Ok(ClosedLoop { result, memory, cpu })
}

/// Records a run as `{workload}.rps`, `.p50_ms`, `.p99_ms`, `.errors`, `.rss_mib`, `.anon_mib`,
/// `.cpu` and `.rps_per_cpu` of `server`, and prints it.
pub(super) fn record(samples: &mut Samples, round: usize, workload: &str, server: &str, run: &ClosedLoop) {
    let ClosedLoop { result, memory, cpu } = run;
    progress(&format!(
        "round {} {workload} {server}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, RSS {:.1} MiB, server CPU {:.0}%",
        round + 1,
        result.requests_per_sec,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        memory.rss_kib as f64 / MIB,
        cpu * 100.0
    ));
    samples.add(&format!("{workload}.rps"), server, result.requests_per_sec);
    samples.add(&format!("{workload}.p50_ms"), server, result.p50_ms);
    samples.add(&format!("{workload}.p99_ms"), server, result.p99_ms);
    samples.add(&format!("{workload}.errors"), server, result.errors as f64);
    samples.add(&format!("{workload}.rss_mib"), server, memory.rss_kib as f64 / MIB);
    samples.add(&format!("{workload}.anon_mib"), server, memory.anon_kib as f64 / MIB);
    samples.add(&format!("{workload}.cpu"), server, *cpu);
    if *cpu > 0.0 {
        samples.add(&format!("{workload}.rps_per_cpu"), server, result.requests_per_sec / cpu);
    }
}
