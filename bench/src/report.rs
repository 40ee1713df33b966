//! The markdown report: one table per section (medians of the rounds) and the targets,
//! each met or missed with the ratio measured in this run.

use std::fmt::Write as _;

use crate::samples::Samples;
use crate::sections::*;

/// How the run went, for the report's header.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub date: String,
    pub command: String,
    pub commit: String,
    pub echo_host: String,
    pub cpu: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub wall_seconds: f64,
    pub rounds: usize,
    pub duration_s: f64,
    pub open_duration_s: f64,
    pub connections: usize,
    pub rate: f64,
    pub idle_connections: usize,
    pub stream_bytes: u64,
    pub swaps_under_load: usize,
    pub fleet_pushes: usize,
    /// What became of the container cold start (`None` when the cold-start section did not run).
    pub container: Option<ContainerOutcome>,
}

/// One of the targets.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub const THROUGHPUT_SERVERS: [&str; 5] = [ECHO_HOST, WASMTIME, NATIVE, FLASK, GUNICORN];
pub const P3_SERVERS: [&str; 3] = [ECHO_HOST_P3, WASMTIME_P3, NATIVE];
pub const P3_THIRD_SERVERS: [&str; 2] = [ECHO_HOST_P3_THIRD, WASMTIME_P3_THIRD];
pub const REUSE_SERVERS: [&str; 3] = [ECHO_HOST_REUSE, WASMTIME_REUSE, NATIVE];
pub const COLD_VARIANTS: [&str; 8] = [
    COLD_WASM,
    COLD_CWASM,
    COLD_WASMTIME_NOCACHE,
    COLD_WASMTIME_CACHE,
    NATIVE,
    FLASK,
    GUNICORN,
    COLD_CONTAINER,
];
pub const MEMORY_SERVERS: [&str; 3] = [ECHO_HOST, WASMTIME, NATIVE];
pub const MEMORY_TABLE: [&str; 4] = [ECHO_HOST, COLD_CWASM, WASMTIME, NATIVE];

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => {
            if decimals == 0 {
                group_thousands(v.round() as i64)
            } else {
                format!("{v:.decimals$}")
            }
        }
        _ => "–".into(),
    }
}

pub fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v < 10.0 => format!("{v:.2} ms"),
        Some(v) if v.is_finite() && v < 100.0 => format!("{v:.1} ms"),
        Some(v) if v.is_finite() => format!("{} ms", group_thousands(v.round() as i64)),
        _ => "–".into(),
    }
}

fn mib(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.1} MiB"),
        _ => "–".into(),
    }
}

/// `RSS (anon)`: the resident total and its anonymous part (the rest is clean file-backed pages
/// of the executable and libraries, which the kernel can drop and re-read).
fn mib_anon(total: Option<f64>, anon: Option<f64>) -> String {
    match (total, anon) {
        (Some(t), Some(a)) if t.is_finite() && a.is_finite() => format!("{t:.1} MiB ({a:.1} anon)"),
        (t, _) => mib(t),
    }
}

/// A closed-loop GET table of `workload`'s runs (`p3`, `reuse`) for `servers`, with native
/// hyper's req/s as the ratio's base.
fn get_table(w: &mut String, s: &Samples, workload: &str, servers: &[&str]) {
    let metric = |name: &str| format!("{workload}.{name}");
    let _ = writeln!(
        w,
        "| server | GET req/s | GET p50 | GET p99 | GET req per CPU-s | server CPU | RSS under load | req/s ÷ native |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let native = s.median(&metric("rps"), NATIVE);
    for server in servers {
        if s.get(&metric("rps"), server).is_none() {
            continue;
        }
        let rps = s.median(&metric("rps"), server);
        let _ = writeln!(
            w,
            "| {server} | {} | {} | {} | {} | {}% | {} | {}× |",
            num(rps, 0),
            ms(s.median(&metric("p50_ms"), server)),
            ms(s.median(&metric("p99_ms"), server)),
            num(s.median(&metric("rps_per_cpu"), server), 0),
            num(s.median(&metric("cpu"), server).map(|c| c * 100.0), 0),
            mib(s.median(&metric("rss_mib"), server)),
            num(ratio(rps, native), 3),
        );
    }
}

/// A closed-loop GET section of `workload`'s runs, when there are any: `heading`, the table,
/// then `caption` and the errors over the runs.
fn get_section(w: &mut String, s: &Samples, workload: &str, servers: &[&str], heading: &str, caption: &str) {
    let rps = format!("{workload}.rps");
    if !servers.iter().any(|srv| s.get(&rps, srv).is_some()) {
        return;
    }
    let _ = writeln!(w, "## {heading}\n");
    get_table(w, s, workload, servers);
    let errors: f64 = servers.iter().filter_map(|srv| s.sum(&format!("{workload}.errors"), srv)).sum();
    let _ = writeln!(w, "\n{caption} Errors over these runs: {}.\n", num(Some(errors), 0));
}

/// The largest of the values recorded for `metric` (not a median: a worst case).
fn max_value(s: &Samples, metric: &str, server: &str) -> Option<f64> {
    s.get(metric, server)?.iter().copied().filter(|v| v.is_finite()).reduce(f64::max)
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

pub fn targets(s: &Samples) -> Vec<Target> {
    let mut out = Vec::new();
    let mut add = |what: &str, measured: String, met: Option<bool>| {
        out.push(Target { what: what.into(), measured, met });
    };
    // Issue #34's targets: server CPU-seconds per request against the peers in the same run.
    let mut per_cpu = |what: &str, workload: &str, server: &str, peer: &str, at_least: f64| {
        let (rps, peer_rps) =
            (s.median(&format!("{workload}.rps"), server), s.median(&format!("{workload}.rps"), peer));
        let (cpu, peer_cpu) = (
            s.median(&format!("{workload}.rps_per_cpu"), server),
            s.median(&format!("{workload}.rps_per_cpu"), peer),
        );
        let r = ratio(cpu, peer_cpu);
        add(
            what,
            format!(
                "{} vs {} req per CPU-s = {}× (req/s: {} vs {} = {}×)",
                num(cpu, 0),
                num(peer_cpu, 0),
                num(r, 3),
                num(rps, 0),
                num(peer_rps, 0),
                num(ratio(rps, peer_rps), 2)
            ),
            r.map(|r| r >= at_least),
        );
    };
    per_cpu(
        "p2 fresh instance: GET req per server CPU-s ≥ 2.5× wasmtime serve",
        "get",
        ECHO_HOST,
        WASMTIME,
        2.5,
    );
    per_cpu("p2 fresh instance: GET req per server CPU-s ≥ 0.2× native hyper", "get", ECHO_HOST, NATIVE, 0.2);
    per_cpu(
        "p2 reuse 128: GET req per server CPU-s ≥ 2× wasmtime serve --max-instance-reuse-count 128",
        "reuse",
        ECHO_HOST_REUSE,
        WASMTIME_REUSE,
        2.0,
    );
    per_cpu(
        "p2 reuse 128: GET req per server CPU-s ≥ 0.3× native hyper",
        "reuse",
        ECHO_HOST_REUSE,
        NATIVE,
        0.3,
    );
    per_cpu(
        "p3 reuse: GET req per server CPU-s ≥ 1.6× wasmtime serve -Sp3 (same instance reuse)",
        "p3",
        ECHO_HOST_P3,
        WASMTIME_P3,
        1.6,
    );
    per_cpu("p3 reuse: GET req per server CPU-s ≥ 0.25× native hyper", "p3", ECHO_HOST_P3, NATIVE, 0.25);
    // The issue judges this one on req/s (both hosts saturate the server core).
    let workload = "p3_third_party";
    let (rps, peer_rps) = (
        s.median(&format!("{workload}.rps"), ECHO_HOST_P3_THIRD),
        s.median(&format!("{workload}.rps"), WASMTIME_P3_THIRD),
    );
    let (cpu, peer_cpu) = (
        s.median(&format!("{workload}.rps_per_cpu"), ECHO_HOST_P3_THIRD),
        s.median(&format!("{workload}.rps_per_cpu"), WASMTIME_P3_THIRD),
    );
    let r = ratio(rps, peer_rps);
    add(
        "p3 reuse, a third-party p3 component built unoptimised: GET req/s ≥ 1.3× wasmtime serve -Sp3",
        format!(
            "{} vs {} req/s = {}× (req per CPU-s: {} vs {} = {}×)",
            num(rps, 0),
            num(peer_rps, 0),
            num(r, 2),
            num(cpu, 0),
            num(peer_cpu, 0),
            num(ratio(cpu, peer_cpu), 3)
        ),
        r.map(|r| r >= 1.3),
    );
    let instructions = s.median("counts.instructions", ECHO_HOST);
    add(
        "p2 fresh instance: user-space instructions per GET ≤ 150k (callgrind)",
        format!(
            "{} (wasmtime serve {}, native hyper {})",
            num(instructions, 0),
            num(s.median("counts.instructions", WASMTIME), 0),
            num(s.median("counts.instructions", NATIVE), 0)
        ),
        instructions.map(|v| v <= 150_000.0),
    );
    // Judged on the threads that serve: the epoch tick's and the log writer's calls come with the
    // clock (bounded per second), so per GET they depend on how slowly strace lets the run go.
    let (syscalls, native_syscalls) =
        (s.median("counts.syscalls_serving", ECHO_HOST), s.median("counts.syscalls_serving", NATIVE));
    add(
        "p2 fresh instance: syscalls per keep-alive GET on the serving threads ≤ native hyper's + 1",
        format!(
            "{} vs {} (strace -f; all threads {}, echo-host's epoch tick and log writer {}/s)",
            num(syscalls, 2),
            num(native_syscalls, 2),
            num(s.median("counts.syscalls", ECHO_HOST), 2),
            num(s.median("counts.timer_syscalls_per_s", ECHO_HOST), 0)
        ),
        syscalls.zip(native_syscalls).map(|(e, n)| e <= n + 1.0),
    );
    let (e99, w99) = (s.median("get.p99_ms", ECHO_HOST), s.median("get.p99_ms", WASMTIME));
    let r = ratio(e99, w99);
    add(
        "GET p99 ≤ 1/3 of wasmtime serve's (closed loop, 32 connections)",
        format!("{} vs {} = {}×", ms(e99), ms(w99), num(r, 2)),
        r.map(|r| r <= 1.0 / 3.0),
    );
    let (eo, wo) = (s.median("open_get.p99_ms", ECHO_HOST), s.median("open_get.p99_ms", WASMTIME));
    let (er, wr) = (s.median("open_get.rate", ECHO_HOST), s.median("open_get.rate", WASMTIME));
    let r = ratio(eo, wo);
    add(
        "GET p99 ≤ 1/3 of wasmtime serve's (open loop, fixed rate)",
        format!("{} at {}/s vs {} at {}/s = {}×", ms(eo), num(er, 0), ms(wo), num(wr, 0), num(r, 2)),
        r.map(|r| r <= 1.0 / 3.0),
    );
    let (cw, cn) = (s.median("cold.ms", COLD_CWASM), s.median("cold.ms", NATIVE));
    let r = ratio(cw, cn);
    add(
        "cold start with .cwasm ≤ 2× native hyper's",
        format!("{} vs {} = {}×", ms(cw), ms(cn), num(r, 2)),
        r.map(|r| r <= 2.0),
    );
    let load_rss = max_of(s.median("get.rss_mib", ECHO_HOST), s.median("post.rss_mib", ECHO_HOST));
    let load_anon = max_of(s.median("get.anon_mib", ECHO_HOST), s.median("post.anon_mib", ECHO_HOST));
    add(
        "echo-host RSS under load ≤ 20 MiB",
        format!(
            "{} (peak sample, GET and POST load; wasmtime serve {})",
            mib_anon(load_rss, load_anon),
            mib(max_of(s.median("get.rss_mib", WASMTIME), s.median("post.rss_mib", WASMTIME)))
        ),
        load_rss.map(|v| v <= 20.0),
    );
    let conns = s.median("mem.conns_mib", ECHO_HOST);
    add(
        "echo-host RSS with 1,000 idle connections ≤ 64 MiB",
        mib_anon(conns, s.median("mem.conns_anon_mib", ECHO_HOST)),
        conns.map(|v| v <= 64.0),
    );
    let mbps = s.median("stream.mbps", ECHO_HOST);
    let wt_mbps = s.median("stream.mbps", WASMTIME);
    let r = ratio(mbps, wt_mbps);
    add(
        "1 GiB streamed echo ≥ wasmtime serve's",
        format!("{} vs {} MB/s = {}×", num(mbps, 0), num(wt_mbps, 0), num(r, 2)),
        r.map(|r| r >= 1.0),
    );
    let native_mbps = s.median("stream.mbps", NATIVE);
    let r = ratio(mbps, native_mbps);
    add(
        "1 GiB streamed echo ≥ 0.9× native hyper's",
        format!("{} vs {} MB/s = {}×", num(mbps, 0), num(native_mbps, 0), num(r, 2)),
        r.map(|r| r >= 0.9),
    );
    let growth = s.median("stream.growth_mib", ECHO_HOST);
    add("1 GiB streamed echo: peak RSS growth ≤ 16 MiB", mib(growth), growth.map(|v| v <= 16.0));
    let failed = s.sum("swapload.failed", ECHO_HOST);
    let swapped = s.sum("swapload.swapped", ECHO_HOST);
    let swaps = s.sum("swapload.swaps", ECHO_HOST);
    add(
        "0 failed requests during the swaps under load",
        format!(
            "{} failed of {} responses; {}/{} swaps done",
            num(failed, 0),
            num(s.sum("swapload.responses", ECHO_HOST), 0),
            num(swapped, 0),
            num(swaps, 0)
        ),
        match (failed, swapped, swaps) {
            (Some(f), Some(d), Some(n)) => Some(f == 0.0 && d == n),
            _ => None,
        },
    );
    for (poll, poll_ms) in FLEET_POLLS {
        let label = fleet_label(poll);
        let max = max_value(s, "fleet.all_ms", &label);
        let pushes = s.get("fleet.all_ms", &label).map_or(0, <[f64]>::len);
        add(
            &format!(
                "push → every instance serving ≤ poll interval + {} ms ({FLEET_INSTANCES} instances, --poll-interval {poll})",
                FLEET_SLACK_MS
            ),
            format!("max {} (median {}) over {pushes} pushes", ms(max), ms(s.median("fleet.all_ms", &label))),
            max.map(|m| m <= poll_ms + FLEET_SLACK_MS),
        );
    }
    let (one, split) = (s.median("canary.rps", CANARY_ONE), s.median("canary.rps", CANARY_SPLIT));
    let r = ratio(split, one);
    let per_cpu =
        ratio(s.median("canary.rps_per_cpu", CANARY_SPLIT), s.median("canary.rps_per_cpu", CANARY_ONE));
    add(
        "GET req/s with a 50/50 canary split ≥ 95% of one version's",
        format!(
            "{} vs {} = {}% (per server CPU-second: {}%)",
            num(split, 0),
            num(one, 0),
            num(r.map(|r| r * 100.0), 1),
            num(per_cpu.map(|r| r * 100.0), 1)
        ),
        r.map(|r| r >= 0.95),
    );
    for case in &ROLLBACKS {
        let max = max_value(s, "canary.rollback_all_ms", case.label);
        let rollbacks = s.get("canary.rollback_all_ms", case.label).map_or(0, <[f64]>::len);
        add(
            &format!(
                "{}: {} → every instance on stable ≤ window + poll + 1 s ({FLEET_INSTANCES} instances, --canary-window {}, --poll-interval {})",
                case.canary, case.from, CANARY_WINDOW.0, CANARY_POLL.0
            ),
            format!(
                "max {} (median {}) over {rollbacks} rollbacks; stable failed {} requests, the canary {}",
                ms(max),
                ms(s.median("canary.rollback_all_ms", case.label)),
                num(s.sum("canary.stable_failures", case.label), 0),
                num(s.sum("canary.canary_failures", case.label), 0)
            ),
            max.map(|m| m <= canary_target_ms()),
        );
    }
    out
}

/// The rollback's target: the analysis window plus the poll interval plus [`CANARY_SLACK_MS`].
fn canary_target_ms() -> f64 {
    CANARY_WINDOW.1 + CANARY_POLL.1 + CANARY_SLACK_MS
}

/// The canary table's rows of each rollback measured: to the loaded instance, to every instance
/// (with the target), and for the slow canary both p95s its rollback's reason names.
fn rollback_rows(w: &mut String, s: &Samples) {
    let target = format!(
        "≤ {} (window {} + poll {} + 1 s)",
        ms(Some(canary_target_ms())),
        CANARY_WINDOW.0,
        CANARY_POLL.0
    );
    for case in ROLLBACKS.iter().filter(|c| s.get("canary.rollback_all_ms", c.label).is_some()) {
        let rows = [
            ("canary.rollback_first_ms", "the loaded instance stops routing to the canary"),
            ("canary.rollback_all_ms", "every instance on stable"),
            ("canary.canary_p95_ms", "the canary's p95 in the rollback's reason"),
            ("canary.stable_p95_ms", "stable's p95 in the rollback's reason"),
        ];
        for (metric, what) in rows {
            let Some(values) = s.get(metric, case.label) else { continue };
            let (min, max) =
                (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max));
            let timed = metric.starts_with("canary.rollback_");
            let what = if timed {
                format!("{}: {} → {what}", case.label, case.from)
            } else {
                format!("{}: {what}", case.label)
            };
            let _ = writeln!(
                w,
                "| {what} | {} | {} | {} | | {} |",
                ms(s.median(metric, case.label)),
                ms(min),
                ms(max),
                if metric == "canary.rollback_all_ms" { target.as_str() } else { "" }
            );
        }
    }
}

/// Under the cold-start table: how the container was run, or why it was not.
fn container_note(w: &mut String, s: &Samples, container: &ContainerOutcome) {
    if s.get("cold.ms", COLD_CONTAINER).is_some() {
        let _ = writeln!(
            w,
            "Container image: `{}` (image {}, built beforehand: the benchmark never builds it), timed from just before \
             spawning `docker run` to the first 200, connect + GET polled every 1 ms on the port `docker port` names \
             (`docker run -d` itself returned after {} median); then `docker rm -f`. Its memory is the container's \
             (cgroup) usage from `docker stats` 0.3 s after the 200, not an RSS. Docker is a daemon, so nothing is \
             pinned: the engine and the container run on whichever core the kernel picks (`--cpus 1` is a quota, not \
             a core), only the `docker` CLI and the polling client stay on core 1.\n",
            container.command(),
            container.image_id.as_deref().unwrap_or("?"),
            ms(s.median("cold.container_run_ms", COLD_CONTAINER)),
        );
    }
    if let Some(line) = &container.skipped {
        let _ = writeln!(w, "**{line}.**\n");
    }
}

pub fn render(s: &Samples, meta: &Meta) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# echo-host benchmark\n");
    let _ = writeln!(
        w,
        "{} · `{}` · commit {} · echo-host binary `{}` · {} · load average {} before, {} after · {:.0} s wall time\n",
        meta.date,
        meta.command,
        meta.commit,
        meta.echo_host,
        meta.cpu,
        meta.loadavg_before,
        meta.loadavg_after,
        meta.wall_seconds
    );
    let _ = writeln!(
        w,
        "Every figure is the median of {} rounds that alternate between the servers. Servers run on core 0 \
         (`taskset -c 0`), the load generator (wrk, the open-loop client) on core 1. Closed loop: `wrk -t1 -c{} -d{}s --latency`. \
         Open loop: {} connections at a fixed rate, the same for echo-host, wasmtime serve and native (min({}/s, half the slower \
         wasm host's closed-loop throughput in round 1); the Flask servers at half their own. Latency counts from when each request \
         was due (no coordinated omission). Same component (`echo_guest.wasm`) for both wasm hosts.\n",
        meta.rounds, meta.connections, meta.duration_s, meta.connections, meta.rate
    );

    // A run of other sections (`--only p3`) has no throughput table.
    if THROUGHPUT_SERVERS.iter().any(|srv| s.get("get.rps", srv).is_some()) {
        let _ = writeln!(
            w,
            "## Throughput and latency (1 server core, {} keep-alive connections)\n",
            meta.connections
        );
        let _ = writeln!(
            w,
            "| server | GET req/s | GET p50 | GET p99 | POST 1 KiB req/s | POST p50 | POST p99 | open-loop GET p99 (rate) | open-loop POST p99 (rate) | RSS under load | server CPU | GET req per CPU-s |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for server in THROUGHPUT_SERVERS {
            if s.get("get.rps", server).is_none() {
                continue;
            }
            let load_rss = max_of(s.median("get.rss_mib", server), s.median("post.rss_mib", server));
            let cpu = s.median("get.cpu", server).map(|c| c * 100.0);
            let _ = writeln!(
                w,
                "| {server} | {} | {} | {} | {} | {} | {} | {} ({}/s) | {} ({}/s) | {} | {}% | {} |",
                num(s.median("get.rps", server), 0),
                ms(s.median("get.p50_ms", server)),
                ms(s.median("get.p99_ms", server)),
                num(s.median("post.rps", server), 0),
                ms(s.median("post.p50_ms", server)),
                ms(s.median("post.p99_ms", server)),
                ms(s.median("open_get.p99_ms", server)),
                num(s.median("open_get.rate", server), 0),
                ms(s.median("open_post.p99_ms", server)),
                num(s.median("open_post.rate", server), 0),
                mib(load_rss),
                num(cpu, 0),
                num(s.median("get.rps_per_cpu", server), 0),
            );
        }
        let errors: f64 = THROUGHPUT_SERVERS
            .iter()
            .flat_map(|srv| {
                ["get.errors", "post.errors", "open_get.errors", "open_post.errors"].map(|m| s.sum(m, srv))
            })
            .flatten()
            .sum();
        let _ = writeln!(
            w,
            "\nServer CPU: the server's CPU time over the wall time of its GET run; below ~95% on a saturated server means other processes took part of core 0 (a shared machine), and GET req per CPU-s (req/s ÷ that share) is the noise-robust measure of efficiency. Errors (non-2xx or socket errors) over all these runs: {}.\n",
            num(Some(errors), 0)
        );
    }

    let closed_loop = format!(
        "Closed loop as in the throughput table: `wrk -t1 -c{} -d{}s --latency` after 1 s of warm-up.",
        meta.connections, meta.duration_s
    );
    get_section(
        w,
        s,
        "p3",
        &P3_SERVERS,
        &format!(
            "p3 (wasi:http/service) echo (GET, 1 server core, {} keep-alive connections)",
            meta.connections
        ),
        &format!(
            "Both wasm hosts serve `echo_guest_p3.wasm` (the same echo built for `wasi:http/service@0.3.0`) and reuse instances alike: echo-host with its defaults, `wasmtime serve -Wcomponent-model-async -Sp3 --max-instance-reuse-count {P3_MAX_REQUESTS} --max-instance-concurrent-reuse-count {P3_MAX_CONCURRENT} --idle-instance-timeout {P3_IDLE_TIMEOUT}`. {closed_loop}"
        ),
    );
    get_section(
        w,
        s,
        "p3_third_party",
        &P3_THIRD_SERVERS,
        &format!(
            "p3, a third-party component built unoptimised (GET, 1 server core, {} keep-alive connections)",
            meta.connections
        ),
        "The `http-proxy` example of the `wasip3` crate (0.9.0+wasi-0.3.0, from crates.io; it answers `Hello, WASI!` from a spawned task), built with `cargo build` (no `--release`), as a user's first component often is. Same reuse settings as the p3 table; `wasmtime serve` also gets `-Scli` (the example, built with `std`, imports WASI 0.2's `wasi:cli`).",
    );
    get_section(
        w,
        s,
        "reuse",
        &REUSE_SERVERS,
        &format!(
            "p2 echo with instance reuse (GET, 1 server core, {} keep-alive connections)",
            meta.connections
        ),
        &format!(
            "Both wasm hosts serve `echo_guest.wasm` (the p2 echo of the throughput table) and reuse an instance for up to {P2_REUSE_REQUESTS} requests, one at a time: echo-host `--instance-max-requests {P2_REUSE_REQUESTS}`, `wasmtime serve --max-instance-reuse-count {P2_REUSE_REQUESTS}`. {closed_loop}"
        ),
    );

    if s.get("cold.ms", NATIVE).is_some() {
        let _ =
            writeln!(w, "## Cold start (process exec, or `docker run`, → first 200 of `GET /?name=world`)\n");
        let _ = writeln!(w, "| server | cold start | RSS idle after start (anon) |");
        let _ = writeln!(w, "|---|---:|---:|");
        for variant in COLD_VARIANTS {
            if s.get("cold.ms", variant).is_none() {
                continue;
            }
            let memory = if variant == COLD_CONTAINER {
                match s.median("cold.container_mem_mib", variant) {
                    Some(m) => format!("{} (container memory, `docker stats`)", mib(Some(m))),
                    None => "n/a".into(),
                }
            } else {
                mib_anon(s.median("cold.rss_mib", variant), s.median("cold.anon_mib", variant))
            };
            let _ = writeln!(w, "| {variant} | {} | {memory} |", ms(s.median("cold.ms", variant)));
        }
        let _ = writeln!(w);
        if let Some(container) = &meta.container {
            container_note(w, s, container);
        }
    }

    if s.get("mem.idle_mib", ECHO_HOST).is_some() {
        let _ = writeln!(
            w,
            "## Memory (`/proc/PID/status` VmRSS; in brackets RssAnon, the rest being clean file-backed pages of the executable)\n"
        );
        let _ = writeln!(
            w,
            "| server | idle (after 1 request) | under GET load (peak, fresh server) | {} open keep-alive connections |",
            group_thousands(meta.idle_connections as i64)
        );
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for server in MEMORY_TABLE {
            if s.get("mem.idle_mib", server).is_none() {
                continue;
            }
            let _ = writeln!(
                w,
                "| {server} | {} | {} | {} |",
                mib_anon(s.median("mem.idle_mib", server), s.median("mem.idle_anon_mib", server)),
                mib_anon(s.median("mem.load_mib", server), s.median("mem.load_anon_mib", server)),
                mib_anon(s.median("mem.conns_mib", server), s.median("mem.conns_anon_mib", server))
            );
        }
        let _ = writeln!(
            w,
            "\nEach column from its own fresh server: RSS after one request; the peak sample during a {} s GET load ({} connections); with the connections open (one request each).\n",
            meta.open_duration_s, meta.connections
        );
    }

    if s.get("stream.mbps", ECHO_HOST).is_some() {
        let _ = writeln!(
            w,
            "## Streaming ({} MiB POST echoed back on one connection)\n",
            meta.stream_bytes / (1024 * 1024)
        );
        let _ = writeln!(w, "| server | MB/s (10^6 bytes each way) | peak RSS growth |");
        let _ = writeln!(w, "|---|---:|---:|");
        for server in MEMORY_SERVERS {
            if s.get("stream.mbps", server).is_none() {
                continue;
            }
            let _ = writeln!(
                w,
                "| {server} | {} | {} |",
                num(s.median("stream.mbps", server), 0),
                mib(s.median("stream.growth_mib", server))
            );
        }
        let _ = writeln!(
            w,
            "\n`echo-host --max-body 2GiB`; peak growth = VmHWM (reset through `/proc/PID/clear_refs`) minus VmRSS before the request.\n"
        );
    }

    if s.get("swap.upload_ms", ECHO_HOST).is_some() {
        let _ = writeln!(
            w,
            "## Swap (echo ⇄ misbehave, `--keep-versions 1` so every swap compiles; {} swaps under load)\n",
            meta.swaps_under_load
        );
        let _ = writeln!(w, "| how | to the first response from the new version (median) | min | max |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for (label, metric) in [
            ("admin upload (`PUT /.well-known/echo-host/admin/component`)", "swap.upload_ms"),
            ("file change (`--poll-interval 200ms`, write + rename)", "swap.file_ms"),
        ] {
            let values = s.get(metric, ECHO_HOST).unwrap_or_default();
            let min = values.iter().copied().reduce(f64::min);
            let max = values.iter().copied().reduce(f64::max);
            let _ =
                writeln!(w, "| {label} | {} | {} | {} |", ms(s.median(metric, ECHO_HOST)), ms(min), ms(max));
        }
        if s.get("swapload.swaps", ECHO_HOST).is_some() {
            let _ = writeln!(
                w,
                "\nUnder load ({} req/s open loop, `GET /`, {} connections): {} of {} swaps done (each {} median), {} responses, **{} failed**, served by {} versions; p99 {}, max {} during the swaps.\n",
                num(s.median("swapload.rate", ECHO_HOST), 0),
                meta.connections,
                num(s.sum("swapload.swapped", ECHO_HOST), 0),
                num(s.sum("swapload.swaps", ECHO_HOST), 0),
                ms(s.median("swapload.swap_ms", ECHO_HOST)),
                num(s.sum("swapload.responses", ECHO_HOST), 0),
                num(s.sum("swapload.failed", ECHO_HOST), 0),
                num(s.median("swapload.versions", ECHO_HOST), 0),
                ms(s.median("swapload.p99_ms", ECHO_HOST)),
                ms(s.median("swapload.max_ms", ECHO_HOST)),
            );
        }
    }

    if s.get("scale.rps_1", ECHO_HOST).is_some() {
        let _ = writeln!(
            w,
            "## Scaling (GET req/s; wrk stays on core 1, so with 2 server cores it shares one)\n"
        );
        let _ = writeln!(w, "| server | 1 core | 2 cores | × |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for server in MEMORY_SERVERS {
            let (one, two) = (s.median("scale.rps_1", server), s.median("scale.rps_2", server));
            let _ =
                writeln!(w, "| {server} | {} | {} | {} |", num(one, 0), num(two, 0), num(ratio(two, one), 2));
        }
        let _ = writeln!(w);
    }

    if FLEET_POLLS.iter().any(|(poll, _)| s.get("fleet.all_ms", &fleet_label(poll)).is_some()) {
        let _ = writeln!(
            w,
            "## Fleet ({FLEET_INSTANCES} echo-host processes following one release store on fake-gcs-server; {} pushes per poll interval)\n",
            meta.fleet_pushes
        );
        let _ = writeln!(
            w,
            "| poll interval | push answered (median) | first instance serving (median) | every instance serving: median | max |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for (poll, _) in FLEET_POLLS {
            let label = fleet_label(poll);
            if s.get("fleet.all_ms", &label).is_none() {
                continue;
            }
            let _ = writeln!(
                w,
                "| `--poll-interval {poll}` | {} | {} | {} | {} |",
                ms(s.median("fleet.push_ms", &label)),
                ms(s.median("fleet.first_ms", &label)),
                ms(s.median("fleet.all_ms", &label)),
                ms(max_value(s, "fleet.all_ms", &label)),
            );
        }
        let _ = writeln!(
            w,
            "\nEach push is an admin upload (`PUT /.well-known/echo-host/admin/component`) to one instance (each in turn), alternating echo and misbehave, back to back (each starts just after the previous one reached the last instance: near the worst case); timed from the start of the upload to the first `GET /` on each instance (polled every 5 ms) with the new `echo-host-component`. `--store gs://bkt/fleet-POLL/ --storage-emulator-host` (fake-gcs-server, in-memory, loopback), `--heartbeat-interval 2s`, `--keep-versions 1` (every swap compiles). The instances and the emulator share both cores (not pinned), the probing client runs on core 1.\n"
        );
    }

    let has_split = s.get("canary.rps", CANARY_ONE).is_some();
    let has_rollback = ROLLBACKS.iter().any(|c| s.get("canary.rollback_all_ms", c.label).is_some());
    if has_split || has_rollback {
        let _ = writeln!(w, "## Canary releases\n");
        let _ = writeln!(w, "| | median | min | max | req per server CPU-s | target |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---|");
        let range = |metric: &str, server: &str| {
            let values = s.get(metric, server).unwrap_or_default();
            (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max))
        };
        if has_split {
            for (label, what) in [
                (CANARY_ONE, "GET req/s, one version".to_string()),
                (
                    CANARY_SPLIT,
                    format!(
                        "GET req/s, 50/50 canary ({}% of {} sampled requests on the canary)",
                        num(s.median("canary.split_share", CANARY_SPLIT), 0),
                        SPLIT_SAMPLE
                    ),
                ),
            ] {
                let (min, max) = range("canary.rps", label);
                let _ = writeln!(
                    w,
                    "| {what} | {} | {} | {} | {} | |",
                    num(s.median("canary.rps", label), 0),
                    num(min, 0),
                    num(max, 0),
                    num(s.median("canary.rps_per_cpu", label), 0)
                );
            }
            let r = ratio(s.median("canary.rps", CANARY_SPLIT), s.median("canary.rps", CANARY_ONE));
            let per_cpu = ratio(
                s.median("canary.rps_per_cpu", CANARY_SPLIT),
                s.median("canary.rps_per_cpu", CANARY_ONE),
            );
            let _ = writeln!(
                w,
                "| 50/50 ÷ one version | {}% | | | {}% | ≥ 95% |",
                num(r.map(|r| r * 100.0), 1),
                num(per_cpu.map(|r| r * 100.0), 1)
            );
        }
        rollback_rows(w, s);
        let _ = writeln!(
            w,
            "\nSplit: echo-host on core 0 serving the built-in echo as stable and, as the canary at weight 50 (`POST admin/release?weight=50`), the echo component with a custom section appended (its own sha256, the same code); against the same host serving one version, alternating, `wrk` as in the throughput table. Rollback: {FLEET_INSTANCES} echo-hosts on one release store (fake-gcs-server, `--canary-window {}`, `--poll-interval {}`, default thresholds), canary = misbehave at 50 %; once every instance routes to it, `GET {FAIL_PATH}` (fails on misbehave, 200 on the echo) every 2 ms to the first instance only, so the others stop routing only by following the manifest it writes; timed from the first failed response to each instance's `GET admin/release` (polled every 10 ms) showing no canary routing and the canary's automatic rollback as the last decision. Latency rollback: on the same fleet, in turn, a new misbehave canary started the same way while `GET {SLOW_PATH}` (misbehave answers 200 after 300 ms, the echo at once) goes every 10 ms on each of 3 connections to the first instance, from before the start; no request fails, so only the latency rule (p95 over 2× stable's and over 100 ms, at least 50 timed requests of each) rolls it back; timed from the answer of `POST admin/release?weight=50`, so the time includes gathering those 50 canary requests. Failed responses during the rollbacks, stable / canary: {} / {} (failing), {} / {} (latency).\n",
            CANARY_WINDOW.0,
            CANARY_POLL.0,
            num(s.sum("canary.stable_failures", CANARY_ROLLBACK), 0),
            num(s.sum("canary.canary_failures", CANARY_ROLLBACK), 0),
            num(s.sum("canary.stable_failures", CANARY_LATENCY_ROLLBACK), 0),
            num(s.sum("canary.canary_failures", CANARY_LATENCY_ROLLBACK), 0)
        );
    }

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| target | measured (same run) | |");
    let _ = writeln!(w, "|---|---|---|");
    for target in targets(s) {
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(w, "| {} | {} | {verdict} |", target.what, target.measured);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(group_thousands(1234567), "1,234,567");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(ms(Some(0.4123)), "0.41 ms");
        assert_eq!(ms(Some(1234.0)), "1,234 ms");
        assert_eq!(ms(None), "–");
    }

    #[test]
    fn targets_are_judged_from_medians() {
        let mut s = Samples::default();
        for v in [30_000.0, 31_000.0, 29_000.0] {
            s.add("get.rps", ECHO_HOST, v);
        }
        for v in [10_000.0, 9_000.0, 11_000.0] {
            s.add("get.rps", WASMTIME, v);
        }
        for (echo, wasmtime) in [(33_000.0, 12_000.0), (30_000.0, 13_000.0), (31_000.0, 14_000.0)] {
            s.add("get.rps_per_cpu", ECHO_HOST, echo);
            s.add("get.rps_per_cpu", WASMTIME, wasmtime);
        }
        let t = targets(&s);
        assert_eq!(t[0].met, Some(false), "31,000 / 13,000 < 2.5: {}", t[0].measured);
        assert!(t[0].measured.contains("= 2.385×"), "{}", t[0].measured);
        assert!(t[0].measured.contains("(req/s: 30,000 vs 10,000 = 3.00×)"), "{}", t[0].measured);
        assert_eq!(t[1].met, None, "no native samples");
        let md = render(&s, &Meta::default());
        assert!(md.contains("| echo-host | 30,000 |"), "{md}");
    }

    #[test]
    fn the_fleet_target_is_judged_on_the_worst_push() {
        let mut s = Samples::default();
        let (one, two) = (fleet_label("1s"), fleet_label("2s"));
        for v in [900.0, 1100.0, 1450.0] {
            s.add("fleet.all_ms", &one, v);
        }
        for v in [1200.0, 2600.0, 1300.0] {
            s.add("fleet.all_ms", &two, v);
        }
        let t = targets(&s);
        let fleet: Vec<&Target> = t.iter().filter(|t| t.what.starts_with("push → every instance")).collect();
        assert_eq!(fleet.len(), 2);
        assert_eq!(fleet[0].met, Some(true), "{}", fleet[0].measured);
        assert!(
            fleet[0].measured.contains("max 1,450 ms (median 1,100 ms) over 3 pushes"),
            "{}",
            fleet[0].measured
        );
        assert_eq!(fleet[1].met, Some(false), "2,600 ms > 2,500 ms: {}", fleet[1].measured);
        let md = render(&s, &Meta { fleet_pushes: 3, ..Meta::default() });
        assert!(md.contains("| `--poll-interval 2s` | – | – | 1,300 ms | 2,600 ms |"), "{md}");
    }

    #[test]
    fn the_canary_rows_and_targets() {
        let mut s = Samples::default();
        for (one, split) in [(10_000.0, 9_700.0), (10_200.0, 9_900.0), (9_800.0, 9_000.0)] {
            s.add("canary.rps", CANARY_ONE, one);
            s.add("canary.rps", CANARY_SPLIT, split);
        }
        for ms in [900.0, 1_400.0, 13_000.0] {
            s.add("canary.rollback_all_ms", CANARY_ROLLBACK, ms);
            s.add("canary.rollback_first_ms", CANARY_ROLLBACK, 200.0);
            s.add("canary.stable_failures", CANARY_ROLLBACK, 0.0);
        }
        for (ms, p95) in [(5_600.0, 310.0), (6_100.0, 305.0)] {
            s.add("canary.rollback_all_ms", CANARY_LATENCY_ROLLBACK, ms);
            s.add("canary.rollback_first_ms", CANARY_LATENCY_ROLLBACK, ms - 900.0);
            s.add("canary.stable_failures", CANARY_LATENCY_ROLLBACK, 0.0);
            s.add("canary.canary_failures", CANARY_LATENCY_ROLLBACK, 0.0);
            s.add("canary.canary_p95_ms", CANARY_LATENCY_ROLLBACK, p95);
            s.add("canary.stable_p95_ms", CANARY_LATENCY_ROLLBACK, 2.0);
        }
        let t = targets(&s);
        let split = t.iter().find(|t| t.what.contains("50/50")).unwrap();
        assert_eq!(split.met, Some(true), "9,700 / 10,000: {}", split.measured);
        assert!(split.measured.contains("9,700 vs 10,000 = 97.0%"), "{}", split.measured);
        let rollback =
            t.iter().find(|t| t.what.starts_with("failing canary: first failure → every")).unwrap();
        assert_eq!(rollback.met, Some(false), "13 s > 12 s: {}", rollback.measured);
        assert!(rollback.measured.contains("max 13,000 ms (median 1,400 ms) over 3 rollbacks"));
        let slow = t.iter().find(|t| t.what.starts_with("slow canary: canary start → every")).unwrap();
        assert_eq!(slow.met, Some(true), "6.1 s ≤ 12 s: {}", slow.measured);
        assert!(
            slow.measured.contains("max 6,100 ms (median 5,850 ms) over 2 rollbacks"),
            "{}",
            slow.measured
        );
        let md = render(&s, &Meta::default());
        assert!(md.contains("| 50/50 ÷ one version | 97.0% | | | –% | ≥ 95% |"), "{md}");
        assert!(
            md.contains(
                "| 3 × echo-host, canary rollback: first failure → every instance on stable | 1,400 ms | 900 ms | 13,000 ms | | ≤ 12,000 ms"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 3 × echo-host, latency rollback: canary start → every instance on stable | 5,850 ms | 5,600 ms | 6,100 ms | | ≤ 12,000 ms"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 3 × echo-host, latency rollback: the canary's p95 in the rollback's reason | 308 ms |"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_p3_table_and_targets() {
        let mut s = Samples::default();
        for (echo, wasmtime, native) in [(30_000.0, 14_000.0, 100_000.0), (32_000.0, 15_000.0, 90_000.0)] {
            s.add("p3.rps", ECHO_HOST_P3, echo);
            s.add("p3.rps", WASMTIME_P3, wasmtime);
            s.add("p3.rps", NATIVE, native);
        }
        s.add("p3.rps_per_cpu", ECHO_HOST_P3, 31_000.0);
        s.add("p3.rps_per_cpu", WASMTIME_P3, 16_000.0);
        s.add("p3.cpu", ECHO_HOST_P3, 0.99);
        s.add("p3.p99_ms", ECHO_HOST_P3, 2.5);
        s.add("p3.rss_mib", ECHO_HOST_P3, 22.25);
        s.add("p3.rps_per_cpu", NATIVE, 100_000.0);
        let t = targets(&s);
        let find = |what: &str| t.iter().find(|t| t.what.starts_with(what)).unwrap();
        let per_cpu = find("p3 reuse: GET req per server CPU-s ≥ 1.6×");
        assert_eq!(per_cpu.met, Some(true), "31,000 / 16,000 ≥ 1.6: {}", per_cpu.measured);
        assert!(
            per_cpu
                .measured
                .contains("31,000 vs 16,000 req per CPU-s = 1.938× (req/s: 31,000 vs 14,500 = 2.14×)"),
            "{}",
            per_cpu.measured
        );
        let native = find("p3 reuse: GET req per server CPU-s ≥ 0.25× native");
        assert_eq!(native.met, Some(true), "31,000 / 100,000 ≥ 0.25: {}", native.measured);
        assert!(native.measured.contains("= 0.310×"), "{}", native.measured);
        let reuse = find("p2 reuse 128: GET req per server CPU-s ≥ 2×");
        assert_eq!(reuse.met, None, "no p2 reuse samples: {}", reuse.measured);
        let md = render(&s, &Meta { connections: 32, duration_s: 4.0, ..Meta::default() });
        assert!(
            md.contains("| echo-host (p3) | 31,000 | – | 2.50 ms | 31,000 | 99% | 22.2 MiB | 0.326× |"),
            "{md}"
        );
        assert!(md.contains("| native hyper | 95,000 |"), "{md}");
        assert!(md.contains("--max-instance-reuse-count 128"), "{md}");
        assert!(!md.contains("## Throughput and latency"), "no GET samples, no throughput table: {md}");
    }

    #[test]
    fn the_third_party_p3_table_and_target_are_judged_on_req_per_s() {
        let mut s = Samples::default();
        s.add("p3_third_party.rps", ECHO_HOST_P3_THIRD, 12_000.0);
        s.add("p3_third_party.rps", WASMTIME_P3_THIRD, 10_000.0);
        s.add("p3_third_party.rps_per_cpu", ECHO_HOST_P3_THIRD, 13_000.0);
        s.add("p3_third_party.rps_per_cpu", WASMTIME_P3_THIRD, 10_000.0);
        let t = targets(&s);
        let third = t.iter().find(|t| t.what.starts_with("p3 reuse, a third-party p3 component")).unwrap();
        assert_eq!(
            third.met,
            Some(false),
            "12,000 / 10,000 < 1.3 on req/s (1.3 per CPU-s): {}",
            third.measured
        );
        assert!(
            third
                .measured
                .contains("12,000 vs 10,000 req/s = 1.20× (req per CPU-s: 13,000 vs 10,000 = 1.300×)"),
            "{}",
            third.measured
        );
        s.add("p3_third_party.rps", ECHO_HOST_P3_THIRD, 14_000.0);
        s.add("p3_third_party.rps", ECHO_HOST_P3_THIRD, 13_000.0);
        let t = targets(&s);
        let third = t.iter().find(|t| t.what.starts_with("p3 reuse, a third-party p3 component")).unwrap();
        assert_eq!(third.met, Some(true), "median 13,000 / 10,000: {}", third.measured);
        let md = render(&s, &Meta { connections: 32, duration_s: 4.0, ..Meta::default() });
        assert!(md.contains("## p3, a third-party component built unoptimised"), "{md}");
        assert!(md.contains("| echo-host (p3, wasip3 example) | 13,000 |"), "{md}");
        assert!(md.contains("| wasmtime serve -Sp3 (wasip3 example) | 10,000 |"), "{md}");
        assert!(!md.contains("## p3 (wasi:http/service) echo"), "no own-echo samples, no p3 table: {md}");
    }

    #[test]
    fn the_p2_reuse_table_and_the_count_targets() {
        let mut s = Samples::default();
        s.add("reuse.rps", ECHO_HOST_REUSE, 20_000.0);
        s.add("reuse.rps", WASMTIME_REUSE, 12_000.0);
        s.add("reuse.rps", NATIVE, 80_000.0);
        s.add("reuse.rps_per_cpu", ECHO_HOST_REUSE, 21_000.0);
        s.add("reuse.rps_per_cpu", WASMTIME_REUSE, 10_000.0);
        s.add("reuse.rps_per_cpu", NATIVE, 84_000.0);
        s.add("counts.instructions", ECHO_HOST, 160_000.0);
        s.add("counts.syscalls", ECHO_HOST, 4.6);
        s.add("counts.syscalls_serving", ECHO_HOST, 4.0);
        s.add("counts.syscalls_serving", NATIVE, 3.01);
        s.add("counts.timer_syscalls_per_s", ECHO_HOST, 300.0);
        let t = targets(&s);
        let find = |what: &str| t.iter().find(|t| t.what.starts_with(what)).unwrap();
        let peer = find("p2 reuse 128: GET req per server CPU-s ≥ 2× wasmtime serve");
        assert_eq!(peer.met, Some(true), "21,000 / 10,000 ≥ 2: {}", peer.measured);
        let native = find("p2 reuse 128: GET req per server CPU-s ≥ 0.3× native");
        assert_eq!(native.met, Some(false), "21,000 / 84,000 < 0.3: {}", native.measured);
        assert!(native.measured.contains("= 0.250×"), "{}", native.measured);
        let instructions = find("p2 fresh instance: user-space instructions per GET ≤ 150k");
        assert_eq!(instructions.met, Some(false), "{}", instructions.measured);
        let syscalls = find("p2 fresh instance: syscalls per keep-alive GET");
        assert_eq!(syscalls.met, Some(true), "4.00 ≤ 3.01 + 1: {}", syscalls.measured);
        assert!(syscalls.measured.contains("all threads 4.60"), "{}", syscalls.measured);
        assert!(syscalls.measured.contains("log writer 300/s"), "{}", syscalls.measured);
        let md = render(&s, &Meta { connections: 32, duration_s: 4.0, ..Meta::default() });
        assert!(md.contains("## p2 echo with instance reuse"), "{md}");
        assert!(md.contains("| echo-host (p2, reuse 128) | 20,000 |"), "{md}");
        assert!(md.contains("`--instance-max-requests 128`"), "{md}");
    }

    #[test]
    fn the_stream_targets_compare_with_wasmtime_and_native() {
        let mut s = Samples::default();
        s.add("stream.mbps", ECHO_HOST, 2_700.0);
        s.add("stream.mbps", WASMTIME, 2_835.0);
        s.add("stream.mbps", NATIVE, 3_000.0);
        let t = targets(&s);
        let wasmtime = t.iter().find(|t| t.what == "1 GiB streamed echo ≥ wasmtime serve's").unwrap();
        assert_eq!(wasmtime.met, Some(false), "{}", wasmtime.measured);
        assert!(wasmtime.measured.contains("2,700 vs 2,835 MB/s = 0.95×"), "{}", wasmtime.measured);
        let native = t.iter().find(|t| t.what == "1 GiB streamed echo ≥ 0.9× native hyper's").unwrap();
        assert_eq!(native.met, Some(true), "2,700 / 3,000 = 0.9: {}", native.measured);
    }

    #[test]
    fn the_container_row_or_why_it_is_missing() {
        let mut s = Samples::default();
        s.add("cold.ms", NATIVE, 1.5);
        let skipped = "container cold start skipped: image wasm-echo-host:test not found (make test-container or docker/build-image.sh wasm-echo-host:test builds it)";
        let container = ContainerOutcome {
            image: "wasm-echo-host:test".into(),
            image_id: None,
            skipped: Some(skipped.into()),
        };
        let md = render(&s, &Meta { container: Some(container.clone()), ..Meta::default() });
        assert!(md.contains(&format!("**{skipped}.**")), "{md}");
        assert!(!md.contains(COLD_CONTAINER), "{md}");

        s.add("cold.ms", COLD_CONTAINER, 420.0);
        s.add("cold.container_run_ms", COLD_CONTAINER, 300.0);
        s.add("cold.container_mem_mib", COLD_CONTAINER, 3.25);
        let measured =
            ContainerOutcome { image_id: Some("sha256:0123456789ab".into()), skipped: None, ..container };
        let md = render(&s, &Meta { container: Some(measured), ..Meta::default() });
        assert!(
            md.contains("| container image (docker run, .cwasm) | 420 ms | 3.2 MiB (container memory"),
            "{md}"
        );
        assert!(md.contains("image sha256:0123456789ab"), "{md}");
        assert!(md.contains("nothing is pinned"), "{md}");
    }
}
