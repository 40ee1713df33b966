//! Wake: what bounded staleness costs. An instance on a release store (`--store`) that was frozen
//! between requests (Cloud Run's request-based billing; here SIGSTOP) finds its view of the
//! release older than `--max-staleness` on its first request after the wake-up, and that request
//! waits for one re-check of the store (a metadata GET of `manifest.json`).
//!
//! - The added latency: one echo-host on fake-gcs-server (loopback), `--poll-interval 500ms` (so
//!   `--max-staleness` 1 s), a release pushed first. [`WAKES`] times each: frozen for
//!   [`IDLE`] then one `GET /?name=world` on a connection opened after SIGCONT, and one on a
//!   keep-alive connection opened before the freeze; against the same host left idle as long
//!   without the freeze (its follower keeps the view fresh), interleaved.
//! - The cost on a busy instance (whose view is always fresh): wrk GET on that host and on the
//!   same echo-host without `--store`, alternating; req/s and requests per server CPU-second.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::fleet::{BUCKET, host_spec, start_emulator};
use super::swap::upload_request;
use super::throughput::closed_loop;
use super::*;
use crate::http1::{self, Client};
use crate::wrk;

/// Wake-ups per kind of connection (and as many idle periods without the freeze).
pub const WAKES: usize = 20;
/// How long the host stays frozen (or idle): past `--max-staleness` (2 × the poll interval).
const IDLE: Duration = Duration::from_millis(1500);
pub const WAKE_POLL: &str = "500ms";
/// The samples' server names: the host on the store, and the same host without it.
pub const WAKE_STORE: &str = "echo-host --store";
pub const WAKE_PLAIN: &str = "echo-host, no store";
/// The first GET after [`IDLE`], by freeze and connection.
pub const WAKE_KINDS: [(&str, bool, bool); 4] = [
    ("frozen, new connection", true, false),
    ("frozen, keep-alive connection", true, true),
    ("not frozen, new connection", false, false),
    ("not frozen, keep-alive connection", false, true),
];
const METRICS_PATH: &str = "/.well-known/echo-host/metrics";
const RECHECKS: &str = "echo_host_release_rechecks_total";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The added latency of the first request after a wake-up, and the staleness check's cost on a
/// busy instance.
pub fn wake(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let echo = std::fs::read(&paths.echo_wasm)?;
    let (emulator, emulator_url) = start_emulator(paths)?;
    let store = format!("gs://{BUCKET}/wake/");
    let stored = start(paths, &host_spec(paths, WAKE_STORE, &store, &emulator_url, WAKE_POLL), SERVER_CORES)?;
    // A release in the store: a re-check then reads its metadata (and finds the generation known).
    let pushed = Client::connect(stored.addr, Duration::from_secs(120))?.send(&upload_request(&echo))?;
    if pushed.status != 200 {
        bail!("pushing the echo answered {}: {}", pushed.status, String::from_utf8_lossy(&pushed.body));
    }
    wakes(&stored, samples)?;

    let plain = Spec::new(
        WAKE_PLAIN,
        &paths.echo_host,
        &[
            "--listen-addr",
            "127.0.0.1",
            "--port",
            "{port}",
            "--component",
            &paths.echo_wasm.display().to_string(),
        ],
    )
    .env("ECHO_HOST_ADMIN_TOKEN", super::swap::ADMIN_TOKEN);
    let plain = start(paths, &plain, SERVER_CORES)?;
    let servers = [stored, plain];
    for server in &servers {
        wrk::run(&paths.wrk, server.addr, GET_PATH, opts.connections, opts.warmup, None, LOAD_CORES)?;
    }
    let rechecks_before = rechecks(servers[0].addr);
    for round in 0..opts.rounds {
        for server in order(&servers, round) {
            let run = closed_loop(paths, opts, server, GET_PATH, None)?;
            let (rps, cpu) = (run.result.requests_per_sec, run.cpu);
            progress(&format!(
                "round {} busy {}: {rps:.0} req/s, server CPU {:.0}%, {:.0} req per CPU-s, {} errors",
                round + 1,
                server.name,
                cpu * 100.0,
                rps / cpu,
                run.result.errors
            ));
            samples.add("wake.busy_rps", &server.name, rps);
            samples.add("wake.busy_cpu", &server.name, cpu);
            samples.add("wake.busy_errors", &server.name, run.result.errors as f64);
            if cpu > 0.0 {
                samples.add("wake.busy_rps_per_cpu", &server.name, rps / cpu);
            }
        }
    }
    // A busy instance's view is always fresh: no request should have waited on a re-check.
    if let (Some(before), Some(after)) = (rechecks_before, rechecks(servers[0].addr)) {
        samples.add("wake.busy_rechecks", WAKE_STORE, after - before);
    }
    for server in servers {
        server.stop();
    }
    emulator.stop();
    Ok(())
}

/// [`WAKES`] rounds of the four [`WAKE_KINDS`] (in turn, reversed every other round): idle for
/// [`IDLE`], frozen or not, then one timed GET.
fn wakes(server: &Server, samples: &mut Samples) -> anyhow::Result<()> {
    let get = http1::get_request(GET_PATH);
    if rechecks(server.addr).is_none() {
        progress(&format!("this echo-host has no `{RECHECKS}` in {METRICS_PATH}: re-checks not counted"));
    }
    let mut rechecks_by_kind = [Some(0.0); WAKE_KINDS.len()];
    for round in 0..WAKES {
        for &(label, frozen, keep_alive) in order(&WAKE_KINDS, round) {
            let mut kept = if keep_alive {
                let mut client = Client::connect(server.addr, TIMEOUT)?;
                expect_200(&client.send(&get)?, label)?;
                Some(client)
            } else {
                None
            };
            let before = rechecks(server.addr);
            if frozen {
                signal(server.pid, libc::SIGSTOP);
            }
            std::thread::sleep(IDLE);
            if frozen {
                signal(server.pid, libc::SIGCONT);
            }
            let started = Instant::now();
            let response = match kept.as_mut() {
                Some(client) => client.send(&get),
                None => http1::get_once(server.addr, GET_PATH, TIMEOUT),
            }
            .with_context(|| format!("the first GET after {IDLE:?} idle ({label})"))?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            expect_200(&response, label)?;
            let index = WAKE_KINDS.iter().position(|k| k.0 == label).unwrap_or(0);
            let after = rechecks(server.addr);
            rechecks_by_kind[index] = match (rechecks_by_kind[index], before, after) {
                (Some(sum), Some(before), Some(after)) => Some(sum + after - before),
                _ => None,
            };
            samples.add("wake.ms", label, elapsed);
        }
        progress(&format!(
            "wake {}: {}",
            round + 1,
            WAKE_KINDS
                .iter()
                .map(|(label, ..)| format!(
                    "{label} {:.2} ms",
                    samples.get("wake.ms", label).and_then(|v| v.last()).unwrap_or(&f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for ((label, ..), count) in WAKE_KINDS.iter().zip(rechecks_by_kind) {
        if let Some(count) = count {
            samples.add("wake.rechecks", label, count);
        }
    }
    Ok(())
}

fn expect_200(response: &http1::Parsed, what: &str) -> anyhow::Result<()> {
    if response.status != 200 {
        bail!(
            "GET {GET_PATH} ({what}) answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// The host's count of re-checks a request waited on (its metrics endpoint, which does not
/// itself check the view); `None` when a build of the host does not count them.
fn rechecks(addr: SocketAddr) -> Option<f64> {
    let response = http1::get_once(addr, METRICS_PATH, TIMEOUT).ok()?;
    if response.status != 200 {
        return None;
    }
    counter(&String::from_utf8_lossy(&response.body), RECHECKS)
}

fn counter(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

fn percent(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b != 0.0 => format!("{:.1}%", a / b * 100.0),
        _ => "–".into(),
    }
}

/// The section's table (empty when it did not run), placed before the report's targets.
pub fn with_wake_table(markdown: String, s: &Samples) -> String {
    let table = wake_table(s);
    if table.is_empty() {
        return markdown;
    }
    match markdown.find("## Targets\n") {
        Some(at) => format!("{}{table}{}", &markdown[..at], &markdown[at..]),
        None => markdown + &table,
    }
}

fn wake_table(s: &Samples) -> String {
    let mut w = String::new();
    let woke = s.get("wake.ms", WAKE_KINDS[0].0).is_some();
    let busy = s.get("wake.busy_rps", WAKE_STORE).is_some();
    if !woke && !busy {
        return w;
    }
    let _ = writeln!(
        w,
        "## Wake-up (bounded staleness: echo-host on a release store, `--poll-interval {WAKE_POLL}`, so `--max-staleness` 1 s)\n"
    );
    if woke {
        let _ = writeln!(
            w,
            "| first `GET {GET_PATH}` after {} s idle | median | min | max | added (median − not frozen's) | re-checks waited on |",
            IDLE.as_secs_f64()
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
        for (label, frozen, keep_alive) in WAKE_KINDS {
            let median = s.median("wake.ms", label);
            let (min, max) = range(s, "wake.ms", label);
            let added = if frozen {
                let baseline =
                    WAKE_KINDS.iter().find(|k| !k.1 && k.2 == keep_alive).map(|k| k.0).unwrap_or("");
                match (median, s.median("wake.ms", baseline)) {
                    (Some(m), Some(b)) => ms(Some(m - b)),
                    _ => "–".into(),
                }
            } else {
                String::new()
            };
            let n = s.get("wake.ms", label).map_or(0, <[f64]>::len);
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} | {added} | {} of {n} |",
                ms(median),
                ms(min),
                ms(max),
                count(s.sum("wake.rechecks", label))
            );
        }
        let _ = writeln!(w);
    }
    if busy {
        let _ =
            writeln!(w, "| busy instance (wrk GET) | req/s | server CPU | req per server CPU-s (min–max) |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for label in [WAKE_STORE, WAKE_PLAIN] {
            let (min, max) = range(s, "wake.busy_rps_per_cpu", label);
            let _ = writeln!(
                w,
                "| {label} | {} | {} | {} ({}–{}) |",
                count(s.median("wake.busy_rps", label)),
                s.median("wake.busy_cpu", label).map_or("–".into(), |c| format!("{:.0}%", c * 100.0)),
                count(s.median("wake.busy_rps_per_cpu", label)),
                count(min),
                count(max)
            );
        }
        let _ = writeln!(
            w,
            "| `--store` ÷ no store | {} | | {} (target: within noise) |",
            percent(s.median("wake.busy_rps", WAKE_STORE), s.median("wake.busy_rps", WAKE_PLAIN)),
            percent(
                s.median("wake.busy_rps_per_cpu", WAKE_STORE),
                s.median("wake.busy_rps_per_cpu", WAKE_PLAIN)
            )
        );
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "One echo-host on core 0 with `--store gs://{BUCKET}/wake/ --storage-emulator-host` (fake-gcs-server, in-memory, loopback, not pinned) and the echo pushed to the store first. Each of {WAKES} rounds (four kinds in turn, reversed every other round): idle {} s, either frozen (SIGSTOP … SIGCONT) or not, then one `GET {GET_PATH}` timed from just after SIGCONT to the whole response, on a connection opened after SIGCONT or on a keep-alive connection that made one request before the idle period. Not frozen, the follower keeps the view fresh (the baseline); frozen, the view is {} s old on waking, so the request waits for one re-check (metadata GET of `manifest.json`; the follower's overdue poll starts at the same moment). Re-checks from the host's `{RECHECKS}`. Busy: `wrk` GET as in the throughput table on that host and on the same echo-host without `--store`, alternating, {} re-checks during the runs.\n",
        IDLE.as_secs_f64(),
        IDLE.as_secs_f64(),
        count(s.sum("wake.busy_rechecks", WAKE_STORE))
    );
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter() {
        let metrics = "# HELP echo_host_release_rechecks Re-checks.\n# TYPE echo_host_release_rechecks counter\necho_host_release_rechecks_total 40\necho_host_release_recheck_failures_total 0\n# EOF\n";
        assert_eq!(counter(metrics, RECHECKS), Some(40.0));
        assert_eq!(counter(metrics, "echo_host_nothing_total"), None);
    }

    #[test]
    fn the_wake_table_goes_before_the_targets() {
        let mut s = Samples::default();
        for (label, base) in
            [(WAKE_KINDS[0].0, 2.0), (WAKE_KINDS[1].0, 1.5), (WAKE_KINDS[2].0, 0.5), (WAKE_KINDS[3].0, 0.25)]
        {
            for v in [base, base + 1.0, base + 0.5] {
                s.add("wake.ms", label, v);
            }
            s.add("wake.rechecks", label, if base > 1.0 { 3.0 } else { 0.0 });
        }
        for (label, rps, per_cpu) in [(WAKE_STORE, 9_900.0, 10_000.0), (WAKE_PLAIN, 10_000.0, 10_100.0)] {
            s.add("wake.busy_rps", label, rps);
            s.add("wake.busy_cpu", label, 0.99);
            s.add("wake.busy_rps_per_cpu", label, per_cpu);
        }
        s.add("wake.busy_rechecks", WAKE_STORE, 0.0);
        let md = with_wake_table("# report\n\n## Targets\n".into(), &s);
        assert!(md.find("## Wake-up").unwrap() < md.find("## Targets").unwrap(), "{md}");
        assert!(
            md.contains("| frozen, new connection | 2.50 ms | 2.00 ms | 3.00 ms | 1.50 ms | 3 of 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| not frozen, keep-alive connection | 0.75 ms | 0.25 ms | 1.25 ms |  | 0 of 3 |"),
            "{md}"
        );
        assert!(md.contains("| `--store` ÷ no store | 99.0% | | 99.0% (target: within noise) |"), "{md}");
        assert_eq!(with_wake_table("x".into(), &Samples::default()), "x");
    }
}
