//! The soak (`echo-bench soak`, `make soak`): one release echo-host, with a watched component file
//! and the admin API, under mixed, rate-limited load for `--duration` (30 min): GET, POST, 64 MiB
//! streamed POSTs checked by hash, h2c, slow clients, broken clients, a swap every 10 s and a bad
//! candidate every minute. Every 30 s it prints the host's RSS, open fds and the requests done and
//! failed per kind; at the end it fails if a well-formed request failed, or if RSS or fds grew past
//! their bounds ([`RSS_GROWTH_LIMIT_MIB`], [`FD_SLACK`]). A soak looks for leaks, not throughput:
//! the whole load is a few hundred requests per second.
//!
//! - [`load`]: the clients, each a paced loop until the soak stops.
//! - [`swaps`]: the swaps (the watched file) and the bad candidates (admin uploads).

mod load;
mod swaps;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs;
use crate::sections::{self, ADMIN_TOKEN};
use crate::servers::{Server, Spec};
use crate::setup::{self, Paths};

/// How much RSS may grow from the end of the warm-up to the end of the run. The host's RSS under
/// load is ~25 MiB (the benchmark), of which the binary's code pages are 16-17; the two components
/// the soak swaps between both stay among the kept versions, so nothing should accumulate. 16 MiB
/// leaves room for allocator fragmentation and for a stream's buffers in flight at the last
/// sample, while a leak of 64 bytes per request (~500,000 requests in 30 min), of 100 KiB per swap
/// (~170 swaps) or of one 64 MiB stream's body exceeds it.
pub const RSS_GROWTH_LIMIT_MIB: f64 = 16.0;
/// Open fds, once the load has stopped and its connections are closed, may exceed the idle
/// baseline (before any load) by this many: what the host opens on first use and keeps (runtime
/// and memory-image fds, one per kept version at most: `--keep-versions` 4). A leak of one fd
/// per connection, request or swap is thousands or hundreds.
pub const FD_SLACK: usize = 16;
const DEFAULT_DURATION: Duration = Duration::from_secs(30 * 60);
/// RSS is taken as the baseline after this much load (or a quarter of a shorter run): pools,
/// caches and both components' compiled code are in place by then.
const WARMUP: Duration = Duration::from_secs(120);
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Time the host gets to close its side of the connections once the load stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: echo-bench soak [--duration DURATION] [--no-build]

  --duration D   how long the load runs: `30m` (default), `180s`, `1h`; also ECHO_BENCH_SOAK_DURATION
  --no-build     use target/release/echo-host as it is (no cargo build first)

  ECHO_BENCH_ECHO_HOST=PATH soaks that echo-host binary instead of target/release/echo-host.";

/// What a client does; the unit the soak counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Get,
    Post,
    Stream,
    H2c,
    Trickle,
    SlowReader,
    Swap,
    Reject,
    MidBody,
    Garbage,
    Abandon,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Get,
        Kind::Post,
        Kind::Stream,
        Kind::H2c,
        Kind::Trickle,
        Kind::SlowReader,
        Kind::Swap,
        Kind::Reject,
        Kind::MidBody,
        Kind::Garbage,
        Kind::Abandon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Post => "post",
            Kind::Stream => "stream-64MiB",
            Kind::H2c => "h2c",
            Kind::Trickle => "trickled-body",
            Kind::SlowReader => "slow-reader",
            Kind::Swap => "swap",
            Kind::Reject => "bad-candidate",
            Kind::MidBody => "cut-mid-body",
            Kind::Garbage => "garbage",
            Kind::Abandon => "abandoned-response",
        }
    }

    /// Well-formed: sent by a well-behaved client, so any failure fails the soak. The broken
    /// clients' requests are expected to fail; they are counted apart.
    pub fn well_formed(self) -> bool {
        !matches!(self, Kind::MidBody | Kind::Garbage | Kind::Abandon)
    }
}

/// Requests done and failed per kind, shared by every client thread.
#[derive(Default)]
pub struct Tally {
    done: [AtomicU64; Kind::ALL.len()],
    failed: [AtomicU64; Kind::ALL.len()],
    /// The first failures of well-formed requests, with when they happened, for the report.
    first_failures: Mutex<Vec<String>>,
}

const KEPT_FAILURES: usize = 20;

impl Tally {
    pub fn add(&self, kind: Kind, done: u64, failed: u64) {
        self.done[kind as usize].fetch_add(done, Ordering::Relaxed);
        self.failed[kind as usize].fetch_add(failed, Ordering::Relaxed);
    }

    pub fn fail(&self, ctx: &Ctx, kind: Kind, error: &anyhow::Error) {
        self.fail_many(ctx, kind, 1, error);
    }

    /// `count` failures of `kind`, `error` saying what happened.
    pub fn fail_many(&self, ctx: &Ctx, kind: Kind, count: u64, error: &anyhow::Error) {
        self.add(kind, 0, count);
        if kind.well_formed() {
            let mut kept = self.first_failures.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEPT_FAILURES {
                kept.push(format!("{} {}: {error:#}", clock(ctx.started.elapsed()), kind.name()));
            }
        }
    }

    /// Counts one request of `kind` by its outcome.
    pub fn record(&self, ctx: &Ctx, kind: Kind, outcome: anyhow::Result<()>) {
        match outcome {
            Ok(()) => self.add(kind, 1, 0),
            Err(error) => self.fail(ctx, kind, &error),
        }
    }

    fn get(&self, kind: Kind) -> (u64, u64) {
        (self.done[kind as usize].load(Ordering::Relaxed), self.failed[kind as usize].load(Ordering::Relaxed))
    }

    fn well_formed_failures(&self) -> u64 {
        Kind::ALL.iter().filter(|k| k.well_formed()).map(|&k| self.get(k).1).sum()
    }

    /// `get 1200/0 post 300/0 ...`: done/failed per kind, the broken clients after a `|`.
    fn line(&self) -> String {
        let mut line = String::new();
        for kind in Kind::ALL {
            if kind == Kind::MidBody {
                line.push_str(" | broken:");
            }
            let (done, failed) = self.get(kind);
            let _ = write!(line, " {} {done}/{failed}", kind.name());
        }
        line.trim_start().to_string()
    }
}

/// What every client shares: where the host listens, when to stop, the tally.
pub struct Ctx {
    pub addr: SocketAddr,
    pub started: Instant,
    pub stop: AtomicBool,
    pub tally: Tally,
}

impl Ctx {
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Waits until `at` (pacing the load), or less when the soak stops; whether it still runs.
    pub fn pause_until(&self, at: Instant) -> bool {
        while self.running() {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }
}

struct Opts {
    duration: Duration,
    build: bool,
}

impl Opts {
    /// `None` for `--help` (printed).
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Opts>> {
        let mut duration = match std::env::var("ECHO_BENCH_SOAK_DURATION") {
            Ok(text) => parse_duration(&text).context("in `ECHO_BENCH_SOAK_DURATION`")?,
            Err(_) => DEFAULT_DURATION,
        };
        let mut build = true;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--duration" => {
                    let text = args.next().with_context(|| format!("--duration needs a value\n{USAGE}"))?;
                    duration = parse_duration(&text)?;
                }
                "--no-build" => build = false,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        if duration < Duration::from_secs(60) {
            bail!("the soak needs at least `60s` (warm-up, swaps and bad candidates), not `{duration:?}`");
        }
        Ok(Some(Opts { duration, build }))
    }
}

/// `30m`, `180s`, `1h`.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| format!("`{text}` is not a duration (e.g. `30m`)"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => bail!("`{text}`: the unit must be `s`, `m` or `h` (e.g. `30m`)"),
    };
    Ok(Duration::from_secs(seconds))
}

fn clock(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The host's RSS (KiB) and open fds right now.
fn sample(pid: u32) -> (u64, usize) {
    (procfs::memory_of(pid).map_or(0, |m| m.rss_kib), procfs::fd_count(pid).unwrap_or(0))
}

/// `echo-bench soak ARGS`: the whole soak; an error when it failed.
pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let Some(opts) = Opts::parse(args)? else { return Ok(()) };
    let mut paths = Paths::new();
    let needs = setup::Needs {
        peers: false,
        flask: false,
        wrk: false,
        fake_gcs: false,
        counters: false,
        third_party_p3: false,
    };
    setup::prepare(&mut paths, opts.build, needs)?;
    procfs::raise_fd_limit();
    let dir = paths.work.join("soak");
    std::fs::create_dir_all(&dir)?;
    // The two valid components swapped back and forth: the echo as p2 and as p3 (same answers).
    let components = [std::fs::read(&paths.echo_wasm)?, std::fs::read(&paths.echo_p3_wasm)?];
    let file = dir.join("component.wasm");
    std::fs::write(&file, &components[0])?;
    let token = dir.join("token");
    std::fs::write(&token, ADMIN_TOKEN)?;
    let spec = Spec::new(
        "echo-host soak",
        &paths.echo_host,
        &["--listen-addr", "127.0.0.1", "--port", "{port}", "--max-body", "128MiB", "--poll-interval", "1s"],
    )
    .arg("--admin-token-file")
    .arg(token.display().to_string())
    .arg("--component")
    .arg(file.display().to_string());
    // No pinning: the machine is shared, the host gets whatever cores the kernel gives it.
    let mut server = sections::start(&paths, &spec, sections::BOTH_CORES)?;
    let ctx = Ctx {
        addr: server.addr,
        started: Instant::now(),
        stop: AtomicBool::new(false),
        tally: Tally::default(),
    };
    swaps::check_serving(ctx.addr, &swaps::version_of(&components[0]))
        .context("the host does not serve the component it was started with")?;
    let idle = sample(server.pid);
    eprintln!(
        "[soak] echo-host pid {} on {} for {}: idle RSS {:.1} MiB, {} fds; log in {}",
        server.pid,
        ctx.addr,
        clock(opts.duration),
        mib(idle.0),
        idle.1,
        paths.work.join("echo-host-soak.log").display()
    );
    let series = std::thread::scope(|scope| {
        let clients = load::spawn_all(scope, &ctx);
        let swapper = scope.spawn(|| swaps::swap_loop(&ctx, &file, &components));
        let series = monitor(&ctx, &mut server, opts.duration);
        ctx.stop.store(true, Ordering::Relaxed);
        for client in clients.into_iter().chain([swapper]) {
            if client.join().is_err() {
                ctx.tally.fail(&ctx, Kind::Get, &anyhow::anyhow!("a client thread panicked"));
            }
        }
        series
    })?;
    verdict(&ctx, &mut server, idle, &series)
}

/// What the monitor saw: RSS at the end of the warm-up and at the end of the load, the peaks.
struct Series {
    warm_rss_kib: u64,
    end: (u64, usize),
    max_rss_kib: u64,
    max_fds: usize,
}

/// Samples the host every second until `duration` has passed, printing a line every
/// [`REPORT_EVERY`]; an error if the host exits.
fn monitor(ctx: &Ctx, server: &mut Server, duration: Duration) -> anyhow::Result<Series> {
    let warmup = WARMUP.min(duration / 4);
    let mut warm_rss_kib = None;
    let mut next_report = ctx.started + REPORT_EVERY;
    let (mut max_rss_kib, mut max_fds) = (0, 0);
    loop {
        let now = Instant::now();
        let elapsed = now - ctx.started;
        if !server.is_running() {
            bail!("echo-host exited after {} (see its log)", clock(elapsed));
        }
        let (rss, fds) = sample(server.pid);
        max_rss_kib = max_rss_kib.max(rss);
        max_fds = max_fds.max(fds);
        if warm_rss_kib.is_none() && elapsed >= warmup {
            warm_rss_kib = Some(rss);
            eprintln!("[soak] {} warm-up over: RSS baseline {:.1} MiB", clock(elapsed), mib(rss));
        }
        if elapsed >= duration {
            return Ok(Series {
                warm_rss_kib: warm_rss_kib.unwrap_or(rss),
                end: (rss, fds),
                max_rss_kib,
                max_fds,
            });
        }
        if now >= next_report {
            next_report += REPORT_EVERY;
            eprintln!("[soak] {} rss {:.1} MiB fds {fds} | {}", clock(elapsed), mib(rss), ctx.tally.line());
        }
        std::thread::sleep(Duration::from_secs(1).min(duration - elapsed));
    }
}

/// Waits for the host to close the load's connections, prints the figures, and fails on a failed
/// well-formed request, RSS growth past [`RSS_GROWTH_LIMIT_MIB`] or fds past [`FD_SLACK`].
fn verdict(ctx: &Ctx, server: &mut Server, idle: (u64, usize), series: &Series) -> anyhow::Result<()> {
    let settle_by = Instant::now() + SETTLE_TIMEOUT;
    let mut settled = sample(server.pid);
    while settled.1 > idle.1 + FD_SLACK && Instant::now() < settle_by && server.is_running() {
        std::thread::sleep(Duration::from_millis(100));
        settled = sample(server.pid);
    }
    let growth = mib(series.end.0.saturating_sub(series.warm_rss_kib));
    eprintln!("[soak] == after {} ==", clock(ctx.started.elapsed()));
    eprintln!("[soak] requests (done/failed): {}", ctx.tally.line());
    eprintln!(
        "[soak] RSS: idle {:.1} MiB, after warm-up {:.1}, end of load {:.1} (growth {growth:+.1}, limit {RSS_GROWTH_LIMIT_MIB}), peak {:.1}, after the load {:.1}",
        mib(idle.0),
        mib(series.warm_rss_kib),
        mib(series.end.0),
        mib(series.max_rss_kib),
        mib(settled.0)
    );
    eprintln!(
        "[soak] fds: idle {}, end of load {}, peak {}, after the load {} (limit idle + {FD_SLACK})",
        idle.1, series.end.1, series.max_fds, settled.1
    );
    let first = ctx.tally.first_failures.lock().unwrap_or_else(|e| e.into_inner()).join("\n  ");
    let failures = ctx.tally.well_formed_failures();
    let problems = problems(failures, &first, growth, idle.1, settled.1, server.pid);
    if !problems.is_empty() {
        bail!("the soak failed:\n- {}", problems.join("\n- "));
    }
    eprintln!("[soak] passed");
    Ok(())
}

/// What fails the soak: failed well-formed requests (`first`: the first of them), RSS growth in
/// MiB after the warm-up, fds after the load against the idle baseline.
fn problems(
    failures: u64,
    first: &str,
    growth_mib: f64,
    idle_fds: usize,
    fds: usize,
    pid: u32,
) -> Vec<String> {
    let mut problems = Vec::new();
    if failures > 0 {
        problems.push(format!("{failures} well-formed requests failed; the first:\n  {first}"));
    }
    if growth_mib > RSS_GROWTH_LIMIT_MIB {
        problems.push(format!(
            "RSS grew {growth_mib:.1} MiB after the warm-up (limit {RSS_GROWTH_LIMIT_MIB} MiB)"
        ));
    }
    if fds > idle_fds + FD_SLACK {
        problems.push(format!(
            "{fds} fds open after the load, {idle_fds} idle (limit {FD_SLACK} more): see /proc/{pid}/fd"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("180s").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn fails_on_failures_growth_and_fds() {
        assert!(problems(0, "", 16.0, 18, 18 + FD_SLACK, 1).is_empty());
        assert_eq!(problems(1, "00:10 get: 500", 0.0, 18, 18, 1).len(), 1);
        assert!(problems(0, "", 16.1, 18, 18, 1)[0].contains("RSS grew 16.1 MiB"));
        assert!(problems(0, "", 0.0, 18, 19 + FD_SLACK, 1)[0].contains("fds open after the load"));
        assert_eq!(problems(2, "x", 40.0, 18, 100, 1).len(), 3);
    }

    #[test]
    fn counts_broken_clients_apart() {
        let ctx = Ctx {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            tally: Tally::default(),
        };
        ctx.tally.record(&ctx, Kind::Garbage, Err(anyhow::anyhow!("cut")));
        ctx.tally.record(&ctx, Kind::Get, Ok(()));
        assert_eq!(ctx.tally.well_formed_failures(), 0);
        ctx.tally.fail_many(&ctx, Kind::Post, 3, &anyhow::anyhow!("503"));
        assert_eq!(ctx.tally.well_formed_failures(), 3);
        assert!(ctx.tally.line().contains("get 1/0 post 0/3"));
        assert!(ctx.tally.line().contains(" | broken: cut-mid-body 0/0 garbage 0/1"));
    }

    #[test]
    fn only_broken_clients_are_not_well_formed() {
        let broken: Vec<&str> = Kind::ALL.iter().filter(|k| !k.well_formed()).map(|k| k.name()).collect();
        assert_eq!(broken, ["cut-mid-body", "garbage", "abandoned-response"]);
    }
}
