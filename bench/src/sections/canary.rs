//! Canary: what a 50/50 split between two versions costs in requests/s, and how long a failing
//! or a slow canary lasts on a fleet: from its first failed response (failing) or its start
//! (slow) until every instance has stopped routing to it (the automatic rollback through the
//! release store).
//!
//! The split: echo-host serving the built-in echo as stable, the echo component with a custom
//! section appended (its own sha256, the same code) as a canary at 50 % (`POST admin/release?
//! weight=50`), against the same host with one version, under the same wrk load, alternating.
//!
//! The rollbacks, in [`super::rollback`]: three instances on one store (fake-gcs-server),
//! canary = misbehave at 50 %, failing or slow.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use super::swap::admin_request;
use super::*;
use crate::http1::{self, Client};
use crate::wrk;

pub const CANARY_ONE: &str = "echo-host, one version";
pub const CANARY_SPLIT: &str = "echo-host, 50/50 canary";
/// Requests sampled to check the split before the wrk run.
pub const SPLIT_SAMPLE: usize = 400;

/// A distinct but equivalent component: the same bytes plus a custom section, so it has its own
/// sha256 (as the host's tests make them).
pub(super) fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"echo-bench-variant";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&n.to_le_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // fits in one LEB128 byte
    bytes.extend_from_slice(&section);
    bytes
}

/// `POST admin/release?weight=W` with `component` as the canary; fails unless 200.
pub(super) fn start_canary(
    addr: SocketAddr,
    component: &[u8],
    weight: &str,
) -> anyhow::Result<serde_json::Value> {
    let request = admin_request("POST", &format!("release?weight={weight}"), component);
    let response = Client::connect(addr, Duration::from_secs(120))?.send(&request)?;
    if response.status != 200 {
        bail!(
            "starting the canary answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(serde_json::from_slice(&response.body)?)
}

/// `GET admin/release` on a keep-alive connection.
pub(super) fn release_status(client: &mut Client) -> anyhow::Result<serde_json::Value> {
    let response = client.send(&admin_request("GET", "release", b""))?;
    if response.status != 200 {
        bail!("GET admin/release answered {}: {}", response.status, String::from_utf8_lossy(&response.body));
    }
    Ok(serde_json::from_slice(&response.body)?)
}

pub(super) fn routes_canary(status: &serde_json::Value) -> bool {
    !status["canary"].is_null() && status["canary"]["routing"] == true
}

pub fn canary(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    split(paths, opts, samples)?;
    super::rollback::rollback(paths, opts, samples)
}

/// GET requests/s with a 50/50 split vs one version, alternating, on one server core.
fn split(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let echo = std::fs::read(&paths.echo_wasm)?;
    for round in 0..opts.rounds {
        for label in order(&[CANARY_ONE, CANARY_SPLIT], round) {
            let spec =
                Spec::new(label, &paths.echo_host, &["--listen-addr", "127.0.0.1", "--port", "{port}"])
                    .env("ECHO_HOST_ADMIN_TOKEN", super::swap::ADMIN_TOKEN);
            let server = start(paths, &spec, SERVER_CORES)?;
            if *label == CANARY_SPLIT {
                let status = start_canary(server.addr, &variant(&echo, round as u32), "50")?;
                let canary = status["canary"]["version"].as_str().context("no canary in the answer")?;
                let mut client = Client::connect(server.addr, Duration::from_secs(10))?;
                let mut on_canary = 0;
                for _ in 0..SPLIT_SAMPLE {
                    let response = client.send(&http1::get_request(GET_PATH))?;
                    on_canary += usize::from(response.component.as_deref() == Some(canary));
                }
                let share = on_canary as f64 * 100.0 / SPLIT_SAMPLE as f64;
                if !(40.0..=60.0).contains(&share) {
                    bail!("{share:.0}% of {SPLIT_SAMPLE} requests reached the canary at weight 50");
                }
                samples.add("canary.split_share", label, share);
            }
            wrk::run(&paths.wrk, server.addr, GET_PATH, opts.connections, opts.warmup, None, LOAD_CORES)?;
            let cpu_before = server.cpu_time();
            let result = wrk::run(
                &paths.wrk,
                server.addr,
                GET_PATH,
                opts.connections,
                opts.duration,
                None,
                LOAD_CORES,
            )?;
            // Per server CPU-second: robust to other work taking part of core 0 (a shared machine).
            let per_cpu = result.requests as f64 / (server.cpu_time() - cpu_before).as_secs_f64();
            progress(&format!(
                "round {} {label}: {:.0} req/s, {per_cpu:.0} req per CPU-s",
                round + 1,
                result.requests_per_sec
            ));
            samples.add("canary.rps", label, result.requests_per_sec);
            samples.add("canary.rps_per_cpu", label, per_cpu);
            samples.add("canary.errors", label, result.errors as f64);
            server.stop();
        }
    }
    Ok(())
}
