//! OCI: three echo-host processes following one tag (`--component oci://HOST/echo:live`) in the
//! CNCF distribution registry (Debian's `docker-registry`, started on loopback by
//! `testing/registry/registry.py`, pushed to with the `oras` SDK): the tag moved, until every
//! instance serves the new digest, at `--poll-interval 1s`; and a 10 MiB component's start-up,
//! pinned by digest (pull + verify + compile), beside the same bytes from a file (compile only).
//! The 10 MiB are the echo plus a 10 MiB custom section: the transfer and the digest check are a
//! 10 MiB component's, the compile is the echo's.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::*;
use crate::http1::{self, Client};

pub const OCI_FLEET: &str = "3 × echo-host, oci:// tag, --poll-interval 1s";
pub const OCI_POLL_MS: f64 = 1000.0;
pub const OCI_SLACK_MS: f64 = 500.0;
pub const OCI_BIG_OCI: &str = "10 MiB component, oci://…@sha256 (pull + verify + compile)";
pub const OCI_BIG_FILE: &str = "10 MiB component, file (compile)";
const BIG_PADDING: usize = 10 << 20;
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// The registry script's child: killed with its process group (the registry too) on drop.
struct RegistryProcess {
    child: Child,
    host: String,
    url: String,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn script(paths: &Paths) -> PathBuf {
    paths.root.join("testing/registry/registry.py")
}

fn start_registry(paths: &Paths, dir: &Path) -> anyhow::Result<RegistryProcess> {
    let mut child = Command::new("python3")
        .arg(script(paths))
        .args(["serve", "--mode", "plain", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("log"))?)
        .process_group(0)
        .spawn()
        .context("cannot run python3 testing/registry/registry.py")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("piped stdout")?).read_line(&mut line)?;
    let ready: serde_json::Value = serde_json::from_str(&line).with_context(|| {
        format!("registry.py printed no ready line (see {})", dir.with_extension("log").display())
    })?;
    let field = |name: &str| ready[name].as_str().map(str::to_string).context("a field of the ready line");
    Ok(RegistryProcess { host: field("host")?, url: field("url")?, child })
}

/// Pushes `bytes` to `echo:TAG` in the CNCF layout; returns the manifest digest.
fn push(
    paths: &Paths,
    registry: &RegistryProcess,
    dir: &Path,
    tag: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let file = dir.join(format!("{tag}.wasm"));
    std::fs::write(&file, bytes)?;
    let output = Command::new("python3")
        .arg(script(paths))
        .args(["push", "--url", &registry.url, "--repo", "echo", "--tag", tag, "--layout", "cncf", "--file"])
        .arg(&file)
        .output()?;
    if !output.status.success() {
        bail!("registry.py push: {}", String::from_utf8_lossy(&output.stderr));
    }
    let pushed: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    pushed["digest"].as_str().map(str::to_string).context("no `digest` in the push's answer")
}

/// `component` with a custom section of `padding` bytes and the number `n`: its own digest.
fn variant(component: &[u8], n: u32, padding: usize) -> Vec<u8> {
    let name = b"echo-host-bench-variant";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&n.to_le_bytes());
    payload.resize(payload.len() + padding, 0);
    let mut bytes = component.to_vec();
    bytes.push(0);
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        bytes.push(if size == 0 { byte } else { byte | 0x80 });
        if size == 0 {
            break;
        }
    }
    bytes.extend_from_slice(&payload);
    bytes
}

fn version(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", &format!("{:x}", sha2::Sha256::digest(bytes))[..12])
}

fn version_of(client: &mut Client) -> anyhow::Result<String> {
    let response = client.send(&http1::get_request("/"))?;
    response.component.context("no echo-host-component header")
}

fn host_spec(paths: &Paths, name: &str, component: &str, insecure: &str) -> Spec {
    Spec::new(
        name,
        &paths.echo_host,
        &["--listen-addr", "127.0.0.1", "--port", "{port}", "--poll-interval", "1s", "--keep-versions", "1"],
    )
    .arg("--component")
    .arg(component)
    .arg("--insecure-registry")
    .arg(insecure)
}

/// The tag moved `opts.fleet_pushes` times, each timed until every instance serves it; then the
/// 10 MiB start-ups, `opts.rounds` of each.
pub fn oci(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let dir = paths.work.join("oci");
    std::fs::create_dir_all(&dir)?;
    let registry = start_registry(paths, &dir.join("registry"))?;
    let echo = std::fs::read(&paths.echo_wasm)?;
    push(paths, &registry, &dir, "live", &variant(&echo, 0, 0))?;
    let reference = format!("oci://{}/echo:live", registry.host);
    let fleet = (0..FLEET_INSTANCES)
        .map(|i| {
            start(
                paths,
                &host_spec(paths, &format!("{OCI_FLEET} #{i}"), &reference, &registry.host),
                BOTH_CORES,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut clients = fleet
        .iter()
        .map(|s| Client::connect(s.addr, Duration::from_secs(10)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for n in 1..=opts.fleet_pushes as u32 {
        let bytes = variant(&echo, n, 0);
        let want = version(&bytes);
        // Moves spread over the poll's phase (the last one ended just after a poll): 0, 370, 740,
        // 110, … ms later, so the max includes moves made just after an instance polled.
        std::thread::sleep(Duration::from_millis(u64::from(n - 1) * 370 % 1000));
        push(paths, &registry, &dir, "live", &bytes)?;
        let pushed = Instant::now();
        let mut serving = vec![None; fleet.len()];
        while serving.iter().any(Option::is_none) {
            for (i, client) in clients.iter_mut().enumerate() {
                if serving[i].is_none() && version_of(client)? == want {
                    serving[i] = Some(pushed.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if pushed.elapsed() > Duration::from_secs(60) {
                bail!("tag move {n}: not every instance served {want} within 60 s");
            }
            std::thread::sleep(PROBE_EVERY);
        }
        let all = serving.iter().flatten().copied().fold(0.0, f64::max);
        progress(&format!("oci: tag move {n} -> {want}, every instance serving after {all:.0} ms"));
        samples.add("oci.all_ms", OCI_FLEET, all);
    }
    for server in fleet {
        server.stop();
    }
    big_start(paths, opts, samples, &registry, &dir, &echo)
}

/// Spawn → first 200 of a 10 MiB component pinned by digest, and from a file, alternating.
fn big_start(
    paths: &Paths,
    opts: &Opts,
    samples: &mut Samples,
    registry: &RegistryProcess,
    dir: &Path,
    echo: &[u8],
) -> anyhow::Result<()> {
    let big = variant(echo, 1_000, BIG_PADDING);
    let digest = push(paths, registry, dir, "big", &big)?;
    let file = dir.join("big.wasm");
    std::fs::write(&file, &big)?;
    let pinned = format!("oci://{}/echo@{digest}", registry.host);
    let file_arg = file.display().to_string();
    for round in 0..opts.rounds {
        for (label, component) in order(&[(OCI_BIG_OCI, &pinned), (OCI_BIG_FILE, &file_arg)], round) {
            let spec =
                host_spec(paths, label, component, &registry.host).arg("--max-component-size").arg("64MiB");
            let mut server = spec.spawn(BOTH_CORES, &paths.work.join("oci-big.log"))?;
            let ready = server.wait_ready(GET_PATH, STARTUP_TIMEOUT)?;
            server.stop();
            samples.add("oci.start_ms", label, ready.as_secs_f64() * 1000.0);
        }
    }
    samples.add("oci.big_bytes", OCI_BIG_OCI, big.len() as f64);
    Ok(())
}

/// The section's table (empty when it did not run), placed before the report's targets.
pub fn with_oci_table(markdown: String, s: &Samples) -> String {
    let Some(moves) = s.get("oci.all_ms", OCI_FLEET) else { return markdown };
    let mut w = String::new();
    let _ = writeln!(w, "## From an OCI registry (distribution 2.8 on loopback, pushed with oras)\n");
    let _ = writeln!(w, "| measure | median | min | max | target |");
    let _ = writeln!(w, "|---|---:|---:|---:|---|");
    let (min, max) = (moves.iter().copied().reduce(f64::min), moves.iter().copied().reduce(f64::max));
    let ok = if max.is_some_and(|m| m <= OCI_POLL_MS + OCI_SLACK_MS) { "met" } else { "missed" };
    let _ = writeln!(
        w,
        "| tag moved → all {FLEET_INSTANCES} instances serving ({} moves) | {} | {} | {} | max ≤ {:.0} ms: {ok} |",
        moves.len(),
        ms(s.median("oci.all_ms", OCI_FLEET)),
        ms(min),
        ms(max),
        OCI_POLL_MS + OCI_SLACK_MS
    );
    for label in [OCI_BIG_OCI, OCI_BIG_FILE] {
        let (min, max) = range(s, "oci.start_ms", label);
        let _ = writeln!(
            w,
            "| start-up, {label} | {} | {} | {} | |",
            ms(s.median("oci.start_ms", label)),
            ms(min),
            ms(max)
        );
    }
    let _ = writeln!(
        w,
        "\nPolling costs one `HEAD` of the tag's manifest per instance per `--poll-interval`: {} requests \
         per instance per day at 1 s, 43,200 at the default 2 s; a pull (manifest and layer, two `GET`s) only when the \
         digest changes.\n",
        count(Some(86_400.0))
    );
    match markdown.find("## Targets\n") {
        Some(at) => format!("{}{w}{}", &markdown[..at], &markdown[at..]),
        None => markdown + &w,
    }
}
