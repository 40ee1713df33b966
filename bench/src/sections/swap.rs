//! Swap: echo-host replacing its component (admin upload or file change) to the first response
//! from the new version, and the requests that fail while it swaps under open-loop load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::*;
use crate::http1::{self, Client};
use crate::openloop;

pub const ADMIN_TOKEN: &str = "echo-bench-admin-token-0123456789abcdef";

/// An admin upload of `component` as raw HTTP/1.1 (the benchmark's own token).
pub fn upload_request(component: &[u8]) -> Vec<u8> {
    admin_request("PUT", "component", component)
}

/// `METHOD /.well-known/echo-host/admin/PATH` with `body` as raw HTTP/1.1 (the benchmark's own
/// token).
pub(super) fn admin_request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} /.well-known/echo-host/admin/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/wasm\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn upload(addr: SocketAddr, component: &[u8]) -> anyhow::Result<http1::Parsed> {
    Client::connect(addr, Duration::from_secs(60))?.send(&upload_request(component))
}

/// Polls `GET /` until the component header differs from `old`; the new header.
fn wait_for_new_version(client: &mut Client, old: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let request = http1::get_request("/");
    loop {
        let response = client.send(&request)?;
        if response.status != 200 {
            bail!("GET / answered {} during a swap", response.status);
        }
        match response.component {
            Some(version) if version != old => return Ok(version),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("no new version within {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Swap latency (admin upload, file change) to the first response from the new version, and
/// failed requests during swaps under load.
pub fn swap(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let dir = paths.work.join("swap");
    std::fs::create_dir_all(&dir)?;
    let echo = std::fs::read(&paths.echo_wasm)?;
    let misbehave = std::fs::read(&paths.misbehave_wasm)?;
    let file = dir.join("component.wasm");
    std::fs::write(&file, &echo)?;
    let token = dir.join("token");
    std::fs::write(&token, ADMIN_TOKEN)?;
    // `--keep-versions 1`: every swap compiles, as a new version does (no kept copy to reuse).
    let spec = Spec::new(
        ECHO_HOST,
        &paths.echo_host,
        &[
            "--listen-addr",
            "127.0.0.1",
            "--port",
            "{port}",
            "--poll-interval",
            "200ms",
            "--keep-versions",
            "1",
        ],
    )
    .arg("--admin-token-file")
    .arg(token.display().to_string())
    .arg("--component")
    .arg(file.display().to_string());
    let server = start(paths, &spec, SERVER_CORES)?;
    let mut client = Client::connect(server.addr, Duration::from_secs(10))?;
    let mut current = client.send(&http1::get_request("/"))?.component.context("no component header")?;
    let mut to_misbehave = true;
    for round in 0..opts.rounds {
        for method in ["upload", "file"] {
            for _ in 0..2 {
                let bytes = if to_misbehave { &misbehave } else { &echo };
                let started = Instant::now();
                let uploader = if method == "upload" {
                    let bytes = bytes.clone();
                    let addr = server.addr;
                    Some(std::thread::spawn(move || upload(addr, &bytes)))
                } else {
                    let partial = dir.join(".component.wasm.tmp");
                    std::fs::write(&partial, bytes)?;
                    std::fs::rename(&partial, &file)?;
                    None
                };
                let new = wait_for_new_version(&mut client, &current, Duration::from_secs(30))?;
                let latency = started.elapsed().as_secs_f64() * 1000.0;
                if let Some(uploader) = uploader {
                    let response = uploader.join().map_err(|_| anyhow::anyhow!("uploader panicked"))??;
                    if response.status != 200 {
                        bail!(
                            "the upload answered {}: {}",
                            response.status,
                            String::from_utf8_lossy(&response.body)
                        );
                    }
                }
                progress(&format!(
                    "round {} swap by {method}: {current} -> {new} in {latency:.1} ms",
                    round + 1
                ));
                samples.add(&format!("swap.{method}_ms"), ECHO_HOST, latency);
                current = new;
                to_misbehave = !to_misbehave;
            }
        }
    }

    // Swaps under load: open-loop GET / while the admin API swaps back and forth.
    let stop = AtomicBool::new(false);
    let rate = (opts.rate / 2.0).max(100.0);
    let (load, swaps) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            openloop::run(
                server.addr,
                &http1::get_request("/"),
                opts.connections,
                rate,
                Duration::from_millis(300),
                Duration::from_secs(300),
                Some(&stop),
            )
        });
        std::thread::sleep(Duration::from_millis(800));
        let mut outcomes = Vec::new();
        for _ in 0..opts.swaps_under_load {
            let bytes = if to_misbehave { &misbehave } else { &echo };
            let started = Instant::now();
            outcomes.push(upload(server.addr, bytes).map(|r| (r.status, started.elapsed())));
            to_misbehave = !to_misbehave;
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (load.join(), outcomes)
    });
    let load = load.map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let swapped = swaps.iter().filter(|o| matches!(o, Ok((200, _)))).count();
    let mut swap_ms: Vec<f64> =
        swaps.iter().filter_map(|o| o.as_ref().ok()).map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
    swap_ms.sort_by(f64::total_cmp);
    progress(&format!(
        "{swapped}/{} swaps under load at {rate:.0} req/s: {} responses, {} failed, by version {:?}, p99 {:.2} ms, max {:.2} ms",
        swaps.len(),
        load.responses,
        load.errors,
        load.by_component,
        load.p99_ms,
        load.max_ms
    ));
    samples.add("swapload.swaps", ECHO_HOST, swaps.len() as f64);
    samples.add("swapload.swapped", ECHO_HOST, swapped as f64);
    samples.add("swapload.responses", ECHO_HOST, load.responses as f64);
    samples.add("swapload.failed", ECHO_HOST, load.errors as f64);
    samples.add("swapload.versions", ECHO_HOST, load.by_component.len() as f64);
    samples.add("swapload.rate", ECHO_HOST, rate);
    samples.add("swapload.p99_ms", ECHO_HOST, load.p99_ms);
    samples.add("swapload.max_ms", ECHO_HOST, load.max_ms);
    for ms in swap_ms {
        samples.add("swapload.swap_ms", ECHO_HOST, ms);
    }
    server.stop();
    Ok(())
}
