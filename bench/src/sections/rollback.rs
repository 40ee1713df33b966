//! The rollback: three instances on one store (fake-gcs-server), canary = misbehave at 50 %,
//! failing requests ([`FAIL_PATH`]) sent to the first instance only, so the other two learn of
//! the rollback only from the manifest: detection plus the manifest write plus their next poll.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::canary::{release_status, routes_canary, start_canary, variant};
use super::fleet::{BUCKET, host_spec, start_emulator, start_fleet};
use super::swap::admin_request;
use super::*;
use crate::http1::{self, Client};

pub const CANARY_ROLLBACK: &str = "3 × echo-host, canary rollback";
/// The analysis window and manifest poll interval of the rollback fleet; the target is their sum
/// plus [`CANARY_SLACK_MS`].
pub const CANARY_WINDOW: (&str, f64) = ("10s", 10_000.0);
pub const CANARY_POLL: (&str, f64) = ("1s", 1000.0);
pub const CANARY_SLACK_MS: f64 = 1000.0;
/// Fails 30 % of the requests misbehave answers (500), 200 on the echo.
pub const FAIL_PATH: &str = "/flaky?percent=30";
/// The failing load: one keep-alive connection, a request every this long.
const FAIL_EVERY: Duration = Duration::from_millis(2);
/// How often each instance's release status is read during a rollback.
const STATUS_EVERY: Duration = Duration::from_millis(10);
const ROLLBACK_PATIENCE: Duration = Duration::from_secs(60);

/// What the failing load saw.
#[derive(Default)]
struct FailingLoad {
    first_failure: OnceLock<Instant>,
    /// Failed responses by `echo-host-component`.
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    responses: AtomicU64,
}

/// `FAIL_PATH` on one keep-alive connection every [`FAIL_EVERY`] until `stop`; reconnects after
/// a broken connection.
fn failing_load(addr: SocketAddr, load: &FailingLoad, stop: &AtomicBool) -> anyhow::Result<()> {
    let request = http1::get_request(FAIL_PATH);
    let mut client = Client::connect(addr, Duration::from_secs(10))?;
    while !stop.load(Ordering::Relaxed) {
        match client.send(&request) {
            Ok(response) => {
                load.responses.fetch_add(1, Ordering::Relaxed);
                if response.status >= 500 {
                    let _ = load.first_failure.set(Instant::now());
                    let version = response.component.unwrap_or_else(|| "-".into());
                    *load.failures.lock().unwrap().entry(version).or_default() += 1;
                }
                if response.close {
                    client = Client::connect(addr, Duration::from_secs(10))?;
                }
            }
            Err(_) => client = Client::connect(addr, Duration::from_secs(10))?,
        }
        std::thread::sleep(FAIL_EVERY);
    }
    Ok(())
}

/// Waits for the first failed response, then reads every instance's release status until each
/// has stopped routing to the canary; the times from that failure, per instance (ms).
fn watch_rollback(load: &FailingLoad, status_clients: &mut [Client]) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + ROLLBACK_PATIENCE;
    let onset = loop {
        if let Some(onset) = load.first_failure.get() {
            break *onset;
        }
        if Instant::now() > deadline {
            bail!("no failed response within {ROLLBACK_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut stopped: Vec<Option<f64>> = vec![None; status_clients.len()];
    while stopped.iter().any(Option::is_none) {
        for (i, client) in status_clients.iter_mut().enumerate() {
            if stopped[i].is_none() && !routes_canary(&release_status(client)?) {
                stopped[i] = Some(onset.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "not every instance stopped routing to the canary within {ROLLBACK_PATIENCE:?}: {stopped:?}"
            );
        }
        std::thread::sleep(STATUS_EVERY);
    }
    Ok(stopped.into_iter().flatten().collect())
}

/// Failure onset → every instance on stable, `opts.rounds` times on one fleet (a new canary each
/// round).
pub(super) fn rollback(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let echo = std::fs::read(&paths.echo_wasm)?;
    let misbehave = std::fs::read(&paths.misbehave_wasm)?;
    let (emulator, emulator_url) = start_emulator(paths)?;
    let (window, window_ms) = CANARY_WINDOW;
    let (poll, poll_ms) = CANARY_POLL;
    let store = format!("gs://{BUCKET}/canary/");
    let spec =
        host_spec(paths, CANARY_ROLLBACK, &store, &emulator_url, poll).arg("--canary-window").arg(window);
    let fleet = start_fleet(paths, &spec)?;
    // The store needs a release (stable) before a canary can start.
    let pushed = Client::connect(fleet[0].addr, Duration::from_secs(120))?.send(&admin_request(
        "PUT",
        "component",
        &echo,
    ))?;
    if pushed.status != 200 {
        bail!(
            "pushing the stable echo answered {}: {}",
            pushed.status,
            String::from_utf8_lossy(&pushed.body)
        );
    }
    let mut status_clients = fleet
        .iter()
        .map(|s| Client::connect(s.addr, Duration::from_secs(10)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for round in 0..opts.rounds {
        let canary = variant(&misbehave, round as u32);
        start_canary(fleet[0].addr, &canary, "50")?;
        // Every instance routes to the canary before the failing traffic starts.
        let deadline = Instant::now() + ROLLBACK_PATIENCE;
        for (i, client) in status_clients.iter_mut().enumerate() {
            while !routes_canary(&release_status(client)?) {
                if Instant::now() > deadline {
                    bail!("instance {i} does not route to the canary after {ROLLBACK_PATIENCE:?}");
                }
                std::thread::sleep(STATUS_EVERY);
            }
        }
        let load = FailingLoad::default();
        let stop = AtomicBool::new(false);
        let (loaded, stopped) = std::thread::scope(|scope| {
            let loader = scope.spawn(|| failing_load(fleet[0].addr, &load, &stop));
            let stopped = watch_rollback(&load, &mut status_clients);
            stop.store(true, Ordering::Relaxed);
            (loader.join(), stopped)
        });
        loaded.map_err(|_| anyhow::anyhow!("the failing load panicked"))??;
        let stopped = stopped?;
        let failures = load.failures.lock().unwrap().clone();
        let stable = release_status(&mut status_clients[0])?;
        let stable_version = stable["stable"]["version"].as_str().unwrap_or("?").to_string();
        let stable_failures = failures.get(&stable_version).copied().unwrap_or(0);
        let all = stopped.iter().copied().fold(0.0, f64::max);
        progress(&format!(
            "canary rollback, round {}: every instance on stable {all:.0} ms after the first failure ({}); {} responses, failures by version {failures:?}; last decision: {}",
            round + 1,
            stopped.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", "),
            load.responses.load(Ordering::Relaxed),
            stable["last_decision"]["reason"]
        ));
        samples.add("canary.rollback_all_ms", CANARY_ROLLBACK, all);
        samples.add("canary.rollback_first_ms", CANARY_ROLLBACK, stopped[0]);
        samples.add("canary.stable_failures", CANARY_ROLLBACK, stable_failures as f64);
    }
    samples.add("canary.window_ms", CANARY_ROLLBACK, window_ms);
    samples.add("canary.poll_ms", CANARY_ROLLBACK, poll_ms);
    for server in fleet {
        server.stop();
    }
    emulator.stop();
    Ok(())
}
