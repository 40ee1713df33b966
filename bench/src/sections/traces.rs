//! Traces: what a server span per request costs. echo-host serving `GET /?name=world` with
//! traces off, on at 100% sampling (`OTEL_TRACES_SAMPLER=always_on`) exporting over gRPC to
//! `testing/otlp/receiver.py --accept-only` on loopback (every export taken and answered, not
//! decoded: the tests check what is in them), and on with the collector down (a port nobody listens on), closed loop (wrk) in
//! alternating rounds: req/s and req per server CPU-second, each against traces off. The receiver
//! runs on the load core, like wrk.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::p3::get_rounds;
use super::*;
use crate::servers::{free_port, pin_child};

pub const TRACES_OFF: &str = "echo-host, traces off";
pub const TRACES_ON: &str = "echo-host, traces on (always_on, gRPC collector)";
pub const TRACES_DOWN: &str = "echo-host, traces on, collector down";
/// The cost a span per request may add at 100% sampling, in req per server CPU-second.
const TARGET_ON: f64 = 0.10;

/// `receiver.py`: killed with its process group on drop.
struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// Starts the receiver (installing its venv on first use) and returns it with its gRPC port.
fn start_receiver(paths: &Paths) -> anyhow::Result<(Receiver, u16)> {
    let out = paths.work.join("traces-spans.jsonl");
    let mut command = Command::new("python3");
    command
        .arg(paths.root.join("testing/otlp/receiver.py"))
        .arg("--out")
        .arg(&out)
        // Python's decoding of ~40k spans/s would take most of the load core from wrk, and the
        // server, no longer saturated, would spend more CPU per request for that alone.
        .arg("--accept-only")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(paths.work.join("traces-receiver.log"))?)
        .process_group(0);
    pin_child(&mut command, LOAD_CORES);
    let mut child = command.spawn().context("cannot run python3 testing/otlp/receiver.py")?;
    let stdout = child.stdout.take().context("the receiver's stdout")?;
    let receiver = Receiver(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let ports: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "the receiver printed `{}`, not its ports (see target/bench/traces-receiver.log)",
            line.trim()
        )
    })?;
    let grpc = ports["grpc"].as_u64().context("the receiver named no gRPC port")?;
    Ok((receiver, u16::try_from(grpc)?))
}

pub fn traces(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let (_receiver, grpc) = start_receiver(paths)?;
    let down = free_port()?;
    let echo = specs(paths).into_iter().find(|s| s.name == ECHO_HOST).context("echo-host's spec")?;
    let traced = |name: &str, port: u16| {
        echo.clone()
            .renamed(name)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_TRACES_SAMPLER", "always_on")
    };
    let variants = [echo.clone().renamed(TRACES_OFF), traced(TRACES_ON, grpc), traced(TRACES_DOWN, down)];
    get_rounds(paths, opts, &variants, "traces", samples)
}

/// The traces table, placed before the report's targets.
pub fn with_traces_table(markdown: String, s: &Samples) -> String {
    let Some(off) = s.median("traces.rps_per_cpu", TRACES_OFF) else { return markdown };
    let mut w = String::new();
    let _ = writeln!(w, "## Traces (OTLP, a server span per request)\n");
    let _ = writeln!(w, "| echo-host | GET req/s | req per server CPU-s | cost vs off | target |");
    let _ = writeln!(w, "|---|---:|---:|---:|---|");
    for server in [TRACES_OFF, TRACES_ON, TRACES_DOWN] {
        let per_cpu = s.median("traces.rps_per_cpu", server);
        let cost = per_cpu.map(|p| 1.0 - p / off);
        let target = match server {
            TRACES_ON => {
                let met = cost.is_some_and(|c| c <= TARGET_ON);
                format!("≤ {:.0}%: {}", TARGET_ON * 100.0, if met { "met" } else { "missed" })
            }
            _ => String::new(),
        };
        let _ = writeln!(
            w,
            "| {server} | {} | {} | {} | {target} |",
            count(s.median("traces.rps", server)),
            count(per_cpu),
            cost.map_or("–".into(), |c| format!("{:+.1}%", c * 100.0)),
        );
    }
    let _ = writeln!(
        w,
        "\nThe cost of the code when traces are off is below what req/s can show; the counts section \
         measures it (README, \"The per-request path\").\n"
    );
    match markdown.find("## Targets\n") {
        Some(at) => format!("{}{w}{}", &markdown[..at], &markdown[at..]),
        None => markdown + &w,
    }
}
