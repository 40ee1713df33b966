//! The rollback: three instances on one store (fake-gcs-server), canary = misbehave at 50 %
//! started on the first instance, load sent to the first instance only, so the other two learn
//! of the rollback only from the manifest: detection plus the manifest write plus their next poll.
//! Two canaries ([`ROLLBACKS`]), each round on the same fleet in turn:
//!
//! - failing: [`FAIL_PATH`] (a 500 on 30 % of misbehave's answers), timed from the first failed
//!   response (the failure rule decides at once);
//! - slow: [`SLOW_PATH`] (misbehave answers 200 after 300 ms, the echo at once), no request fails,
//!   so only the latency rule (the canary's p95 over 2x stable's and over 100 ms) can roll it back;
//!   timed from the canary's start, since the rule needs the minimum of timed requests first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::canary::{release_status, routes_canary, start_canary, variant};
use super::fleet::{BUCKET, host_spec, start_emulator, start_fleet};
use super::swap::admin_request;
use super::*;
use crate::http1::{self, Client};

pub const CANARY_ROLLBACK: &str = "3 × echo-host, canary rollback";
pub const CANARY_LATENCY_ROLLBACK: &str = "3 × echo-host, latency rollback";
/// The analysis window and manifest poll interval of the rollback fleet; the target is their sum
/// plus [`CANARY_SLACK_MS`].
pub const CANARY_WINDOW: (&str, f64) = ("10s", 10_000.0);
pub const CANARY_POLL: (&str, f64) = ("1s", 1000.0);
pub const CANARY_SLACK_MS: f64 = 1000.0;
/// Fails 30 % of the requests misbehave answers (500), 200 on the echo.
pub const FAIL_PATH: &str = "/flaky?percent=30";
/// Misbehave answers 200 after 300 ms; the echo at once.
pub const SLOW_PATH: &str = "/sleep?ms=300";
/// How a latency rollback's reason names the rule at the host's defaults
/// (`--canary-max-latency-ratio 2`, `--canary-latency-floor 100ms`).
const LATENCY_RULE: (&str, &str) = ("is over 2x stable's p95 ", "and over the 100 ms floor");
/// Responses the slow canary's load has before the canary starts: stable's minimum of timed
/// requests in the window (`--canary-min-requests`, 50 by default) is there from the start.
const WARM_RESPONSES: u64 = 50;
/// How often each instance's release status is read during a rollback.
const STATUS_EVERY: Duration = Duration::from_millis(10);
const ROLLBACK_PATIENCE: Duration = Duration::from_secs(60);

/// When a rollback's clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Onset {
    /// The first failed response; the load starts once every instance routes to the canary.
    FirstFailure,
    /// `POST admin/release?weight=50` answered; the load runs from before it.
    CanaryStart,
}

/// A canary the fleet rolls back, and the load that shows it is worse than stable.
#[derive(Debug, Clone, Copy)]
pub struct Rollback {
    /// The samples' server name.
    pub label: &'static str,
    /// What the report calls it.
    pub canary: &'static str,
    /// What its times count from, as the report says it.
    pub from: &'static str,
    /// The path of every load request.
    pub path: &'static str,
    /// Keep-alive connections of the load (a thread each) and each one's pause between requests.
    pub connections: usize,
    pub every: Duration,
    pub onset: Onset,
}

pub const ROLLBACKS: [Rollback; 2] = [
    Rollback {
        label: CANARY_ROLLBACK,
        canary: "failing canary",
        from: "first failure",
        path: FAIL_PATH,
        connections: 1,
        every: Duration::from_millis(2),
        onset: Onset::FirstFailure,
    },
    // A 300 ms answer on one connection is ~3 canary requests/s: three connections (as the host's
    // latency test) reach the minimum of 50 in a few seconds.
    Rollback {
        label: CANARY_LATENCY_ROLLBACK,
        canary: "slow canary",
        from: "canary start",
        path: SLOW_PATH,
        connections: 3,
        every: Duration::from_millis(10),
        onset: Onset::CanaryStart,
    },
];

/// What the load saw.
#[derive(Default)]
struct Load {
    first_failure: OnceLock<Instant>,
    /// Failed responses by `echo-host-component`.
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
    responses: AtomicU64,
}

/// `path` on one keep-alive connection every `every` until `stop`; reconnects after a broken
/// connection.
fn load_loop(
    addr: SocketAddr,
    path: &str,
    every: Duration,
    load: &Load,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let request = http1::get_request(path);
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
        std::thread::sleep(every);
    }
    Ok(())
}

/// Waits until `ready` gives a value, or fails after `deadline` saying what did not happen.
fn wait_for<T>(deadline: Instant, what: &str, mut ready: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} within {ROLLBACK_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether an instance's release status shows canary `sha256` rolled back: not routed to, and
/// the last decision its automatic rollback.
fn rolled_back(status: &serde_json::Value, sha256: &str) -> bool {
    let decision = &status["last_decision"];
    !routes_canary(status)
        && decision["action"] == "auto_rollback"
        && decision["version"] == format!("sha256:{sha256}").as_str()
}

/// Reads every instance's release status until each shows canary `sha256` rolled back; the times
/// from `onset`, per instance (ms).
fn watch_rollback(
    onset: Instant,
    sha256: &str,
    status_clients: &mut [Client],
    deadline: Instant,
) -> anyhow::Result<Vec<f64>> {
    let mut stopped: Vec<Option<f64>> = vec![None; status_clients.len()];
    while stopped.iter().any(Option::is_none) {
        for (i, client) in status_clients.iter_mut().enumerate() {
            if stopped[i].is_none() && rolled_back(&release_status(client)?, sha256) {
                stopped[i] = Some(onset.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if Instant::now() > deadline {
            bail!("not every instance rolled the canary back within {ROLLBACK_PATIENCE:?}: {stopped:?}");
        }
        std::thread::sleep(STATUS_EVERY);
    }
    Ok(stopped.into_iter().flatten().collect())
}

/// Starts `canary` at 50 % on `addr`; its sha256.
fn start(addr: SocketAddr, canary: &[u8]) -> anyhow::Result<String> {
    let status = start_canary(addr, canary, "50")?;
    Ok(status["canary"]["sha256"].as_str().context("no canary in the answer")?.to_string())
}

/// Every instance routes to the canary.
fn wait_routing(status_clients: &mut [Client], deadline: Instant) -> anyhow::Result<()> {
    for (i, client) in status_clients.iter_mut().enumerate() {
        while !routes_canary(&release_status(client)?) {
            if Instant::now() > deadline {
                bail!("instance {i} does not route to the canary after {ROLLBACK_PATIENCE:?}");
            }
            std::thread::sleep(STATUS_EVERY);
        }
    }
    Ok(())
}

/// One rollback of `canary` (a misbehave variant) started on the first instance, under `case`'s
/// load to that instance: the times from the onset to each instance showing it rolled back (ms).
fn rollback_once(
    case: &Rollback,
    fleet: &[Server],
    clients: &mut [Client],
    canary: &[u8],
    load: &Load,
) -> anyhow::Result<Vec<f64>> {
    let addr = fleet[0].addr;
    let deadline = Instant::now() + ROLLBACK_PATIENCE;
    let started = match case.onset {
        Onset::FirstFailure => {
            let sha256 = start(addr, canary)?;
            wait_routing(clients, deadline)?;
            Some(sha256)
        }
        Onset::CanaryStart => None,
    };
    let stop = AtomicBool::new(false);
    let (loaded, stopped) = std::thread::scope(|scope| {
        let loaders: Vec<_> = (0..case.connections)
            .map(|_| scope.spawn(|| load_loop(addr, case.path, case.every, load, &stop)))
            .collect();
        let stopped = (|| {
            let (onset, sha256) = match started {
                Some(sha256) => {
                    (wait_for(deadline, "no failed response", || load.first_failure.get().copied())?, sha256)
                }
                None => {
                    let warm = || (load.responses.load(Ordering::Relaxed) >= WARM_RESPONSES).then_some(());
                    wait_for(deadline, "too few responses before the canary", warm)?;
                    let sha256 = start(addr, canary)?;
                    (Instant::now(), sha256)
                }
            };
            watch_rollback(onset, &sha256, clients, deadline)
        })();
        stop.store(true, Ordering::Relaxed);
        let loaded: Result<Vec<_>, _> = loaders.into_iter().map(|l| l.join()).collect();
        (loaded, stopped)
    });
    for result in loaded.map_err(|_| anyhow::anyhow!("the load panicked"))? {
        result?;
    }
    stopped
}

/// The canary's and stable's p95 (ms) in a latency rollback's reason ("canary p95 latency 312 ms
/// (60 requests) over 10s is over 2x stable's p95 2.1 ms (600 requests) and over the 100 ms
/// floor"); an error unless the reason is the latency rule's at its defaults.
fn latency_p95s(reason: &str) -> anyhow::Result<(f64, f64)> {
    let millis_after = |what: &str| -> anyhow::Result<f64> {
        let rest = reason.split(what).nth(1).with_context(|| format!("no `{what}` in {reason:?}"))?;
        let number = rest.trim_start().split(' ').next().unwrap_or_default();
        number.parse().with_context(|| format!("`{what}` is not followed by a number in {reason:?}"))
    };
    let (ratio, floor) = LATENCY_RULE;
    if !reason.contains(ratio) || !reason.ends_with(floor) {
        bail!("not the latency rule's reason (`{ratio}`, `{floor}`): {reason:?}");
    }
    Ok((millis_after("canary p95 latency")?, millis_after("stable's p95")?))
}

/// Records one round of `case`: the times, the failed responses by version, and for the slow
/// canary both p95s from the decision (which must be the latency rule's, with no failures).
fn record(
    (case, round): (&Rollback, usize),
    stopped: &[f64],
    load: &Load,
    status: &serde_json::Value,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let failures = load.failures.lock().unwrap().clone();
    let stable_version = status["stable"]["version"].as_str().unwrap_or("?");
    let stable_failures = failures.get(stable_version).copied().unwrap_or(0);
    let all = stopped.iter().copied().fold(0.0, f64::max);
    let decision = &status["last_decision"];
    progress(&format!(
        "round {}, {}: every instance on stable {all:.0} ms after the {} ({}); {} responses, failures by version {failures:?}; last decision: {}",
        round + 1,
        case.canary,
        case.from,
        stopped.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", "),
        load.responses.load(Ordering::Relaxed),
        decision["reason"]
    ));
    samples.add("canary.rollback_all_ms", case.label, all);
    samples.add("canary.rollback_first_ms", case.label, stopped[0]);
    samples.add("canary.stable_failures", case.label, stable_failures as f64);
    samples.add(
        "canary.canary_failures",
        case.label,
        (failures.values().sum::<u64>() - stable_failures) as f64,
    );
    if case.onset == Onset::CanaryStart {
        let (slow, base) = latency_p95s(decision["reason"].as_str().unwrap_or_default())?;
        if decision["canary"]["failures"] != 0 {
            bail!("the slow canary's rollback counted failures: {decision}");
        }
        samples.add("canary.canary_p95_ms", case.label, slow);
        samples.add("canary.stable_p95_ms", case.label, base);
    }
    Ok(())
}

/// Every case of [`ROLLBACKS`] `opts.rounds` times on one fleet (a new canary each time), the
/// cases' order alternating by round.
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
    let mut n = 0;
    for round in 0..opts.rounds {
        for case in order(&ROLLBACKS, round) {
            let canary = variant(&misbehave, n);
            n += 1;
            let load = Load::default();
            let stopped = rollback_once(case, &fleet, &mut status_clients, &canary, &load)?;
            let status = release_status(&mut status_clients[0])?;
            record((case, round), &stopped, &load, &status, samples)?;
        }
    }
    for case in &ROLLBACKS {
        samples.add("canary.window_ms", case.label, window_ms);
        samples.add("canary.poll_ms", case.label, poll_ms);
    }
    for server in fleet {
        server.stop();
    }
    emulator.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_p95s_from_the_latency_rules_reason() {
        let reason = "canary p95 latency 312 ms (60 requests) over 10s is over 2x stable's p95 2.1 ms (600 requests) and over the 100 ms floor";
        assert_eq!(latency_p95s(reason).unwrap(), (312.0, 2.1));
        let failing =
            "canary failure rate 31.0% (62 of 200) over 10s is over 5% and over 2x stable's 0.0% (0 of 1800)";
        assert!(latency_p95s(failing).is_err());
    }

    #[test]
    fn rolled_back_needs_no_routing_and_this_canarys_decision() {
        let status = |routing: bool, version: &str| {
            serde_json::json!({
                "canary": if routing { serde_json::json!({ "routing": true }) } else { serde_json::Value::Null },
                "last_decision": { "action": "auto_rollback", "version": version },
            })
        };
        assert!(rolled_back(&status(false, "sha256:abc"), "abc"));
        assert!(!rolled_back(&status(true, "sha256:abc"), "abc"));
        // The previous round's rollback on an instance that has not seen this canary yet.
        assert!(!rolled_back(&status(false, "sha256:old"), "abc"));
    }
}
