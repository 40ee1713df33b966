//! `echo-bench`: echo-host against `wasmtime serve`, a native hyper echo and the seed's Flask app
//! (its dev server and gunicorn). One command (`cargo run --release -p echo-bench`, `make bench`)
//! builds or installs what it needs, measures, prints a markdown report and writes it with a PNG
//! chart and the raw per-round numbers to `bench/results/`.
//!
//! # Layout
//! - [`setup`]: builds echo-host and the native echo, installs wasmtime, wrk, the Flask venv.
//! - [`servers`]: a server as a pinned child process; RSS sampling.
//! - [`sections`]: the measurements, one module per section (throughput, the p3 echo, cold start
//!   with the container image, memory, streaming, swap, scaling), each alternating between servers
//!   for `--rounds` rounds; the fleet (three echo-hosts on one release store, pushes); and canary
//!   releases (a 50/50 split's cost, a failing and a slow canary's automatic rollback across the
//!   fleet);
//!   the wake-up of a frozen instance on a store (bounded staleness's added latency and cost),
//!   and a fleet following a tag in an OCI registry (tag moved → every instance serving it).
//! - [`wrk`]: closed-loop load; [`openloop`]: fixed-rate load without coordinated omission.
//! - [`http1`]: response parsing and a blocking client; [`procfs`]: `/proc` and affinity.
//! - [`samples`], [`report`], [`chart`]: per-round values, the markdown, the PNG.
//! - [`soak`]: `echo-bench soak` (`make soak`), one echo-host under mixed load for 30 minutes,
//!   watching its memory and open files.

mod chart;
mod http1;
mod openloop;
mod procfs;
mod report;
mod samples;
mod sections;
mod servers;
mod setup;
mod soak;
mod wrk;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::samples::Samples;
use crate::sections::Opts;

const USAGE: &str =
    "usage: echo-bench soak [--duration 30m] [--no-build]   (the soak: echo-bench soak --help)
       echo-bench [--rounds N] [--duration SECS] [--rate REQ_PER_S] [--quick] [--no-build]
                  [--only throughput,p3,reuse,counts,traces,cold,memory,stream,swap,scaling,fleet,canary,wake,oci] [--out DIR]

  --rounds N        rounds per figure, alternating between servers (default 3; the median is shown)
  --duration SECS   length of each closed-loop (wrk) run, whole seconds (default 4; the
                    open-loop and scaling runs take 3)
  --rate R          open-loop rate, lowered to half of what a server sustains (default 4000)
  --quick           1 round of 2 s runs, a 256 MiB stream, 4 fleet pushes per poll interval (not
                    10): a smoke test, not a measurement
  --no-build        use the binaries as they are (no cargo build first)
  --only LIST       run only these sections
  --out DIR         where results go (default bench/results; with --only, target/bench/partial-results)

  ECHO_BENCH_ECHO_HOST=PATH measures that echo-host binary instead of target/release/echo-host.
  ECHO_BENCH_IMAGE=TAG      the image of the container cold start (default wasm-echo-host:test,
                            which `make test-container` builds); skipped when missing or when
                            `docker info` fails, never built here.";

const SECTIONS: [&str; 14] = [
    "throughput",
    "p3",
    "reuse",
    "counts",
    "traces",
    "cold",
    "memory",
    "stream",
    "swap",
    "scaling",
    "fleet",
    "canary",
    "wake",
    "oci",
];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut opts = Opts {
        rounds: 3,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        connections: 32,
        rate: 4000.0,
        open_duration: Duration::from_secs(3),
        idle_connections: 1000,
        stream_bytes: 1 << 30,
        swaps_under_load: 50,
        fleet_pushes: 10,
    };
    let mut build = true;
    let mut only: Vec<String> = SECTIONS.iter().map(|s| s.to_string()).collect();
    let mut paths = setup::Paths::new();
    let mut out: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "soak") {
        return soak::run(args.skip(1));
    }
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--rounds" => opts.rounds = value("--rounds")?.parse()?,
            "--duration" => opts.duration = Duration::from_secs(value("--duration")?.parse()?),
            "--rate" => opts.rate = value("--rate")?.parse()?,
            "--quick" => {
                opts.rounds = 1;
                opts.duration = Duration::from_secs(2);
                opts.open_duration = Duration::from_secs(2);
                opts.warmup = Duration::from_secs(1);
                opts.stream_bytes = 256 << 20;
                opts.fleet_pushes = 4;
            }
            "--no-build" => build = false,
            "--only" => {
                only = value("--only")?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(unknown) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!("unknown section `{unknown}`\n{USAGE}");
                }
            }
            "--out" => out = Some(value("--out")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    // A run of some sections must not overwrite the full report the README quotes.
    paths.results = match out {
        Some(dir) => dir,
        None if only.len() < SECTIONS.len() => paths.work.join("partial-results"),
        None => paths.results,
    };
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        bail!("the benchmark needs 2 cores (one for the server, one for the load generator)");
    }

    let cpu = cpu_model();
    setup::prepare(&mut paths, build, setup::Needs::of(&only))?;
    procfs::raise_fd_limit();
    // This process is part of the load side: wrk, the open-loop client, the samplers.
    procfs::pin_current(sections::LOAD_CORES).context("cannot pin the benchmark to core 1")?;

    let loadavg_before = procfs::loadavg();
    let mut samples = Samples::default();
    let measuring = Instant::now();
    let mut container = None;
    for section in SECTIONS.iter().filter(|s| only.iter().any(|o| o == *s)) {
        let section_started = Instant::now();
        eprintln!("[bench] == {section} ==");
        match *section {
            "throughput" => sections::throughput(&paths, &opts, &mut samples)?,
            "p3" => sections::p3(&paths, &opts, &mut samples)?,
            "reuse" => sections::reuse(&paths, &opts, &mut samples)?,
            "counts" => sections::counts(&paths, &opts, &mut samples)?,
            "traces" => sections::traces(&paths, &opts, &mut samples)?,
            "cold" => container = Some(sections::cold_start(&paths, &opts, &mut samples)?),
            "memory" => sections::memory(&paths, &opts, &mut samples)?,
            "stream" => sections::streaming(&paths, &opts, &mut samples)?,
            "swap" => sections::swap(&paths, &opts, &mut samples)?,
            "scaling" => sections::scaling(&paths, &opts, &mut samples)?,
            "fleet" => sections::fleet(&paths, &opts, &mut samples)?,
            "canary" => sections::canary(&paths, &opts, &mut samples)?,
            "wake" => sections::wake(&paths, &opts, &mut samples)?,
            "oci" => sections::oci(&paths, &opts, &mut samples)?,
            _ => unreachable!("sections are checked"),
        }
        eprintln!("[bench] {section} took {:.0} s", section_started.elapsed().as_secs_f64());
    }

    let meta = report::Meta {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: commit(&paths.root),
        echo_host: paths
            .echo_host
            .strip_prefix(&paths.root)
            .unwrap_or(&paths.echo_host)
            .display()
            .to_string(),
        cpu,
        loadavg_before,
        loadavg_after: procfs::loadavg(),
        wall_seconds: started.elapsed().as_secs_f64(),
        rounds: opts.rounds,
        duration_s: opts.duration.as_secs_f64(),
        open_duration_s: opts.open_duration.as_secs_f64(),
        connections: opts.connections,
        rate: opts.rate,
        idle_connections: opts.idle_connections,
        stream_bytes: opts.stream_bytes,
        swaps_under_load: opts.swaps_under_load,
        fleet_pushes: opts.fleet_pushes,
        container,
    };
    let markdown = sections::with_wake_table(report::render(&samples, &meta), &samples);
    let markdown = sections::with_oci_table(markdown, &samples);
    let markdown = sections::with_counts_table(markdown, &samples);
    let markdown = sections::with_traces_table(markdown, &samples);
    println!("{markdown}");
    std::fs::create_dir_all(&paths.results)?;
    let png = paths.results.join("bench.png");
    let subtitle = format!(
        "{} · {} · medians of {} rounds · servers on core 0, load on core 1 · load average {} → {}",
        meta.date, meta.cpu, meta.rounds, meta.loadavg_before, meta.loadavg_after
    );
    chart::draw(&png, &samples, &subtitle)?;
    let md_path = paths.results.join("results.md");
    std::fs::write(&md_path, format!("{markdown}\n![chart](bench.png)\n"))?;
    let raw = serde_json::json!({
        "date": meta.date,
        "commit": meta.commit,
        "echo_host": meta.echo_host,
        "command": meta.command,
        "loadavg_before": meta.loadavg_before,
        "loadavg_after": meta.loadavg_after,
        "wall_seconds": meta.wall_seconds,
        "measuring_seconds": measuring.elapsed().as_secs_f64(),
        "rounds": meta.rounds,
        "container_cold_start": meta.container.as_ref().map(|c| serde_json::json!({
            "image": c.image,
            "image_id": c.image_id,
            "command": c.command(),
            "skipped": c.skipped,
        })),
        "samples": samples.to_json(),
    });
    std::fs::write(paths.results.join("results.json"), serde_json::to_string_pretty(&raw)?)?;
    eprintln!(
        "[bench] wrote {}, {} and results.json in {:.0} s",
        md_path.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn commit(root: &std::path::Path) -> String {
    let hash = command_output("git", &["-C", &root.display().to_string(), "rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_output("git", &["-C", &root.display().to_string(), "status", "--porcelain"]).is_empty();
    if dirty { format!("{hash} (+ uncommitted changes)") } else { hash }
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} × {model}")
}
