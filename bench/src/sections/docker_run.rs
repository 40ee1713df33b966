//! The container cold start: `docker run` of an already built image (`ECHO_BENCH_IMAGE`, default
//! `wasm-echo-host:test`) as Cloud Run runs it, to the first 200 of `GET /?name=world`. Skipped,
//! with a line saying why, when there is no Docker engine or no such image; never builds it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::*;
use crate::http1;

/// The tag the host's container tests build (`docker/build-image.sh wasm-echo-host:test`).
pub const DEFAULT_IMAGE: &str = "wasm-echo-host:test";
/// Names another image to measure.
pub const IMAGE_ENV: &str = "ECHO_BENCH_IMAGE";
/// Cloud Run's contract (`host/tests/container.rs` runs the image the same way): its `PORT`, a
/// read-only root with an in-memory `/tmp`, the memory limit and one CPU; published on a port
/// of the engine's choosing on 127.0.0.1.
pub const RUN_FLAGS: [&str; 12] = [
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--memory",
    "512m",
    "--cpus",
    "1",
    "-e",
    "PORT=8080",
    "-p",
    "127.0.0.1::8080",
    "--pull=never",
];
const CONTAINER_PORT: &str = "8080/tcp";
const POLL_EVERY: Duration = Duration::from_millis(1);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What became of the container cold start, for the report.
#[derive(Debug, Clone, Default)]
pub struct ContainerOutcome {
    /// The image's tag.
    pub image: String,
    /// `sha256:<12 hex>` of the image, once found.
    pub image_id: Option<String>,
    /// The line printed when it was skipped (or stopped after a failure).
    pub skipped: Option<String>,
}

impl ContainerOutcome {
    /// The `docker run` command as the benchmark runs it.
    pub fn command(&self) -> String {
        format!("docker run -d --rm {} {}", RUN_FLAGS.join(" "), self.image)
    }
}

/// The container cold start of one run: checked once, then measured once per round.
pub struct ContainerCold {
    outcome: ContainerOutcome,
    log: PathBuf,
}

impl ContainerCold {
    /// Checks for a Docker engine and the image; when either is missing, prints why and every
    /// [`measure`](Self::measure) does nothing.
    pub fn find(paths: &Paths) -> ContainerCold {
        let image = std::env::var(IMAGE_ENV).ok().filter(|s| !s.trim().is_empty());
        let outcome = check(&image.unwrap_or_else(|| DEFAULT_IMAGE.to_string()));
        if let Some(line) = &outcome.skipped {
            progress(line);
        }
        ContainerCold { outcome, log: log_path(paths, COLD_CONTAINER) }
    }

    /// One `docker run` to the first 200, recorded under [`COLD_CONTAINER`](super::COLD_CONTAINER)
    /// with the container's memory use. A failure is printed and ends the container measurements
    /// (the rest of the run goes on).
    pub fn measure(&mut self, round: usize, samples: &mut Samples) {
        if self.outcome.skipped.is_some() {
            return;
        }
        let name = format!("echo-bench-cold-{}-{round}", std::process::id());
        match run_once(&self.outcome.image, &name, &self.log) {
            Ok(run) => {
                let memory = run.memory_mib.map_or("n/a".to_string(), |m| format!("{m:.1} MiB"));
                progress(&format!(
                    "round {} cold start {}: {:.1} ms (`docker run -d` returned after {:.1} ms), memory {memory}",
                    round + 1,
                    COLD_CONTAINER,
                    run.total.as_secs_f64() * 1000.0,
                    run.run_returned.as_secs_f64() * 1000.0
                ));
                samples.add("cold.ms", COLD_CONTAINER, run.total.as_secs_f64() * 1000.0);
                samples.add("cold.container_run_ms", COLD_CONTAINER, run.run_returned.as_secs_f64() * 1000.0);
                if let Some(m) = run.memory_mib {
                    samples.add("cold.container_mem_mib", COLD_CONTAINER, m);
                }
            }
            Err(e) => {
                let line = format!("container cold start failed in round {} and stopped: {e:#}", round + 1);
                progress(&line);
                self.outcome.skipped = Some(line);
            }
        }
        // Let the engine settle (network teardown, the proxy's exit) before the next cold start.
        std::thread::sleep(Duration::from_millis(500));
    }

    pub fn finish(self) -> ContainerOutcome {
        self.outcome
    }
}

/// Whether there is a Docker engine with `image`: its ID, or why the container cold start is skipped.
fn check(image: &str) -> ContainerOutcome {
    let mut outcome = ContainerOutcome { image: image.to_string(), ..ContainerOutcome::default() };
    let skip = |why: String| Some(format!("container cold start skipped: {why}"));
    match docker(&["info"]) {
        Err(e) => outcome.skipped = skip(format!("no Docker engine (cannot run `docker`: {e})")),
        Ok(out) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim();
            outcome.skipped = skip(format!("no Docker engine (`docker info` fails: {reason})"));
        }
        Ok(_) => match docker_ok(&["image", "inspect", "--format", "{{.Id}}", image]) {
            Ok(id) => outcome.image_id = Some(short_id(&id)),
            Err(_) => {
                let builds = if image == DEFAULT_IMAGE {
                    format!("make test-container or docker/build-image.sh {image} builds it")
                } else {
                    format!("docker/build-image.sh {image} builds it")
                };
                outcome.skipped = skip(format!("image {image} not found ({builds})"));
            }
        },
    }
    outcome
}

struct Run {
    /// From just before spawning `docker run` to the first 200.
    total: Duration,
    /// When `docker run -d` returned (the container started).
    run_returned: Duration,
    /// The container's memory use 0.3 s after the 200 (`docker stats`).
    memory_mib: Option<f64>,
}

/// Removes the container (`docker rm -f`) when dropped, also on every error path.
struct Remove<'a>(&'a str);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", self.0]);
    }
}

fn run_once(image: &str, name: &str, log: &Path) -> anyhow::Result<Run> {
    let _remove = Remove(name);
    let mut args = vec!["run", "-d", "--rm", "--name", name];
    args.extend_from_slice(&RUN_FLAGS);
    args.push(image);
    let started = Instant::now();
    let out = docker(&args)?;
    let run_returned = started.elapsed();
    if !out.status.success() {
        bail!("`docker {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    let published = docker_ok(&["port", name, CONTAINER_PORT])?;
    let addr: SocketAddr = published.lines().find_map(|l| l.trim().parse().ok()).with_context(|| {
        format!("no 127.0.0.1 port in `docker port {name} {CONTAINER_PORT}`: {published}")
    })?;
    // Docker's proxy accepts connections before the container listens: only a 200 counts.
    let mut next_check = started + Duration::from_secs(2);
    let total = loop {
        if let Ok(response) = http1::get_once(addr, GET_PATH, Duration::from_secs(1))
            && response.status == 200
        {
            break started.elapsed();
        }
        let now = Instant::now();
        if now >= next_check {
            next_check = now + Duration::from_secs(1);
            let running = docker_ok(&["inspect", "--format", "{{.State.Running}}", name]);
            if running.as_deref().ok() != Some("true") {
                bail!("container {name} stopped before answering 200 (`docker run --rm`: its logs are gone)");
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            save_logs(name, log);
            bail!(
                "container {name} did not answer 200 on {GET_PATH} within {READY_TIMEOUT:?} (logs: {})",
                log.display()
            );
        }
        std::thread::sleep(POLL_EVERY);
    };
    std::thread::sleep(Duration::from_millis(300));
    let memory_mib = docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", name])
        .ok()
        .and_then(|usage| parse_mem_usage(&usage));
    save_logs(name, log);
    Ok(Run { total, run_returned, memory_mib })
}

/// Appends the container's output (the host's JSON log) to `log`, like the other servers' logs.
fn save_logs(name: &str, log: &Path) {
    if let Ok(out) = docker(&["logs", name])
        && let Ok(mut file) = std::fs::File::options().create(true).append(true).open(log)
    {
        let _ = file.write_all(&out.stdout);
        let _ = file.write_all(&out.stderr);
    }
}

/// `docker ARGS`, not pinned by the benchmark beyond what this process has (core 1): the engine
/// and the container run wherever the kernel puts them.
fn docker(args: &[&str]) -> std::io::Result<Output> {
    Command::new("docker").args(args).stdin(Stdio::null()).output()
}

/// `docker ARGS`' trimmed stdout, or an error with its stderr.
fn docker_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = docker(args).context("cannot run `docker`")?;
    if !out.status.success() {
        bail!("`docker {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `sha256:<12 hex>` of a full image ID.
fn short_id(id: &str) -> String {
    let hex = id.trim().strip_prefix("sha256:").unwrap_or(id.trim());
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// The used part of `docker stats`' `MemUsage` (`1.23MiB / 512MiB`), in MiB.
fn parse_mem_usage(usage: &str) -> Option<f64> {
    let used = usage.split('/').next()?.trim();
    let split = used.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = used.split_at(split);
    let number: f64 = number.trim().parse().ok()?;
    let bytes = match unit.trim() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(number * bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_stats_memory() {
        assert_eq!(parse_mem_usage("1.5MiB / 512MiB"), Some(1.5));
        assert_eq!(parse_mem_usage("512KiB / 512MiB"), Some(0.5));
        assert_eq!(parse_mem_usage("1GiB / 2GiB"), Some(1024.0));
        assert_eq!(parse_mem_usage("--"), None);
        assert_eq!(parse_mem_usage(""), None);
    }

    #[test]
    fn shortens_image_ids() {
        assert_eq!(short_id("sha256:0123456789abcdef0123\n"), "sha256:0123456789ab");
    }

    /// Whatever this machine has (no Docker engine, or no such image), a missing image is skipped
    /// with a line saying why, and not built.
    #[test]
    fn a_missing_image_is_skipped() {
        let outcome = check("echo-bench-does-not-exist:x");
        let line = outcome.skipped.expect("skipped");
        assert!(line.starts_with("container cold start skipped: "), "{line}");
        assert!(
            line.contains("no Docker engine")
                || line.contains(
                    "image echo-bench-does-not-exist:x not found (docker/build-image.sh echo-bench-does-not-exist:x builds it)"
                ),
            "{line}"
        );
        assert_eq!(outcome.image_id, None);
    }

    #[test]
    fn runs_as_cloud_run_does() {
        let outcome = ContainerOutcome { image: DEFAULT_IMAGE.into(), ..ContainerOutcome::default() };
        assert_eq!(
            outcome.command(),
            "docker run -d --rm --read-only --tmpfs /tmp --memory 512m --cpus 1 -e PORT=8080 \
             -p 127.0.0.1::8080 --pull=never wasm-echo-host:test"
        );
    }
}
