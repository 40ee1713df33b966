//! Fleet: three echo-host processes following one release store (`--store gs://bkt/PREFIX/`) on the
//! Cloud Storage emulator (fake-gcs-server on loopback); pushes (the admin upload) to each in turn,
//! timed until every instance serves the pushed version, at two poll intervals.
//!
//! The pushes go back to back: each starts as soon as the previous one reached the last instance,
//! that is just after that instance's manifest poll, so it waits close to a whole interval for its
//! next: near the worst case, which is what the target (the max) is about.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::*;
use crate::http1::{self, Client};

pub const FLEET_INSTANCES: usize = 3;
/// The manifest poll intervals measured; the target is each one + [`FLEET_SLACK_MS`].
pub const FLEET_POLLS: [(&str, f64); 2] = [("1s", 1000.0), ("2s", 2000.0)];
pub const FLEET_SLACK_MS: f64 = 500.0;
pub(super) const BUCKET: &str = "bkt";
/// How often each instance's `GET /` is polled while a push spreads.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// The samples' server name for one poll interval.
pub fn fleet_label(poll: &str) -> String {
    format!("{FLEET_INSTANCES} × echo-host, --poll-interval {poll}")
}

fn create_bucket(emulator: SocketAddr) -> anyhow::Result<()> {
    let body = format!(r#"{{"name":"{BUCKET}"}}"#);
    let request = format!(
        "POST /storage/v1/b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = Client::connect(emulator, Duration::from_secs(10))?.send(request.as_bytes())?;
    if response.status != 200 {
        bail!(
            "creating the bucket answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

/// fake-gcs-server on loopback (in memory) with the bucket created; its URL for
/// `--storage-emulator-host`.
pub(super) fn start_emulator(paths: &Paths) -> anyhow::Result<(Server, String)> {
    let spec = Spec::new(
        "fake-gcs-server",
        &paths.fake_gcs,
        &[
            "-backend",
            "memory",
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            "{port}",
            "-log-level",
            "warn",
        ],
    );
    let mut emulator = spec.spawn(BOTH_CORES, &log_path(paths, &spec.name))?;
    emulator.wait_ready("/storage/v1/b", STARTUP_TIMEOUT)?;
    create_bucket(emulator.addr)?;
    let url = format!("http://{}", emulator.addr);
    Ok((emulator, url))
}

/// An instance of a fleet on the release store `store` (`gs://BUCKET/PREFIX/`), serving the echo
/// until the store has a release, with the benchmark's admin token.
pub(super) fn host_spec(paths: &Paths, label: &str, store: &str, emulator_url: &str, poll: &str) -> Spec {
    Spec::new(
        label,
        &paths.echo_host,
        &[
            "--listen-addr",
            "127.0.0.1",
            "--port",
            "{port}",
            "--store",
            store,
            "--storage-emulator-host",
            emulator_url,
            "--poll-interval",
            poll,
            "--heartbeat-interval",
            "2s",
        ],
    )
    .arg("--component")
    .arg(paths.echo_wasm.display().to_string())
    .env("ECHO_HOST_ADMIN_TOKEN", super::swap::ADMIN_TOKEN)
}

/// [`FLEET_INSTANCES`] instances of `spec`, each answering.
pub(super) fn start_fleet(paths: &Paths, spec: &Spec) -> anyhow::Result<Vec<Server>> {
    (0..FLEET_INSTANCES)
        .map(|i| {
            // Instances are not pinned to one core: each compiles every pushed version, as
            // Cloud Run instances do on their own vCPU; here the three share both cores.
            start(paths, &spec.clone().renamed(&format!("{} #{i}", spec.name)), BOTH_CORES)
        })
        .collect()
}

fn version_of(client: &mut Client) -> anyhow::Result<String> {
    let response = client.send(&http1::get_request("/"))?;
    if response.status != 200 {
        bail!("GET / answered {}", response.status);
    }
    response.component.context("no echo-host-component header")
}

/// "push → every instance serving" at each poll interval: `opts.fleet_pushes` pushes, alternating
/// the echo and misbehave components, to the instances of a fresh fleet of three in turn.
pub fn fleet(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let dir = paths.work.join("fleet");
    std::fs::create_dir_all(&dir)?;
    let echo = std::fs::read(&paths.echo_wasm)?;
    let misbehave = std::fs::read(&paths.misbehave_wasm)?;
    let (emulator, emulator_url) = start_emulator(paths)?;

    for (poll, poll_ms) in FLEET_POLLS {
        let label = fleet_label(poll);
        // A prefix of its own per interval: each fleet starts from an empty store.
        let store = format!("gs://{BUCKET}/fleet-{poll}/");
        // `--keep-versions 1`: every swap compiles, as a new version does.
        let spec = host_spec(paths, &label, &store, &emulator_url, poll).arg("--keep-versions").arg("1");
        let fleet = start_fleet(paths, &spec)?;
        let mut clients = fleet
            .iter()
            .map(|s| Client::connect(s.addr, Duration::from_secs(10)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut current = version_of(&mut clients[0])?;
        for (i, client) in clients.iter_mut().enumerate().skip(1) {
            let theirs = version_of(client)?;
            if theirs != current {
                bail!("instance {i} starts with {theirs}, instance 0 with {current}");
            }
        }
        for n in 0..opts.fleet_pushes {
            let bytes = if n % 2 == 0 { misbehave.clone() } else { echo.clone() };
            let target = fleet[n % fleet.len()].addr;
            let started = Instant::now();
            let pusher = std::thread::spawn(move || {
                let response = Client::connect(target, Duration::from_secs(60))?
                    .send(&super::swap::upload_request(&bytes));
                response.map(|r| (r, started.elapsed()))
            });
            let mut serving: Vec<Option<(Duration, String)>> = vec![None; fleet.len()];
            while serving.iter().any(Option::is_none) {
                for (i, client) in clients.iter_mut().enumerate() {
                    if serving[i].is_none() {
                        let version =
                            version_of(client).with_context(|| format!("instance {i} during push {n}"))?;
                        if version != current {
                            serving[i] = Some((started.elapsed(), version));
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "push {n} at --poll-interval {poll}: not every instance changed version within 60 s"
                    );
                }
                std::thread::sleep(PROBE_EVERY);
            }
            let (answer, answered) = pusher.join().map_err(|_| anyhow::anyhow!("the pusher panicked"))??;
            if answer.status != 200 {
                bail!(
                    "push {n}: the upload answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
            let answer: serde_json::Value = serde_json::from_slice(&answer.body)?;
            let pushed = answer["version"].as_str().context("no `version` in the push's answer")?;
            if let Some((_, other)) = serving.iter().flatten().find(|(_, v)| v != pushed) {
                bail!("push {n}: an instance went to {other}, not the pushed {pushed}");
            }
            let times: Vec<f64> = serving.iter().flatten().map(|(t, _)| t.as_secs_f64() * 1000.0).collect();
            let all = times.iter().copied().fold(0.0, f64::max);
            let first = times.iter().copied().fold(f64::INFINITY, f64::min);
            progress(&format!(
                "fleet --poll-interval {poll}, push {}: {current} -> {pushed}, answered in {:.0} ms, every instance serving after {all:.0} ms ({})",
                n + 1,
                answered.as_secs_f64() * 1000.0,
                times.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
            ));
            samples.add("fleet.all_ms", &label, all);
            samples.add("fleet.first_ms", &label, first);
            samples.add("fleet.push_ms", &label, answered.as_secs_f64() * 1000.0);
            current = pushed.to_string();
        }
        samples.add("fleet.poll_ms", &label, poll_ms);
        for server in fleet {
            server.stop();
        }
    }
    emulator.stop();
    Ok(())
}
