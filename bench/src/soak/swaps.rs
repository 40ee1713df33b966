//! The soak's swaps: every [`SWAP_EVERY`] the watched component file is replaced by the other of
//! two valid components, until every response names the new version; every [`BAD_EVERY`]th time a
//! bad candidate (invalid bytes) is uploaded to the admin API first, which must reject it while
//! the old version keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::{Ctx, Kind};
use crate::http1::{self, Client};
use crate::sections::upload_request;

const SWAP_EVERY: Duration = Duration::from_secs(10);
/// A bad candidate every 6th swap: once a minute.
const BAD_EVERY: u64 = 6;
/// Generous: a swap compiles the component (a few hundred ms) on a busy, shared machine.
const SWAP_TIMEOUT: Duration = Duration::from_secs(30);

/// `sha256:<12 hex>`, what the host's `echo-host-component` header names a component by.
pub fn version_of(component: &[u8]) -> String {
    let digest = Sha256::digest(component);
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `GET /` answers 200 from `version`.
pub fn check_serving(addr: SocketAddr, version: &str) -> anyhow::Result<()> {
    let response = http1::get_once(addr, "/", Duration::from_secs(10))?;
    if response.status != 200 {
        bail!("GET / answered {}", response.status);
    }
    match response.component.as_deref() {
        Some(serving) if serving == version => Ok(()),
        serving => bail!("GET / was served by `{}`, not `{version}`", serving.unwrap_or("-")),
    }
}

/// Swaps until the soak stops; each swap and each bad candidate counted in the tally.
pub fn swap_loop(ctx: &Ctx, file: &Path, components: &[Vec<u8>; 2]) {
    let mut current = version_of(&components[0]);
    let mut next = ctx.started + SWAP_EVERY;
    let mut round: u64 = 0;
    while ctx.pause_until(next) {
        next += SWAP_EVERY;
        round += 1;
        if round.is_multiple_of(BAD_EVERY) {
            ctx.tally.record(ctx, Kind::Reject, bad_candidate(ctx.addr, &current, round));
        }
        let bytes = &components[(round % 2) as usize];
        let outcome = swap_file(ctx.addr, file, bytes);
        if outcome.is_ok() {
            current = version_of(bytes);
        }
        ctx.tally.record(ctx, Kind::Swap, outcome);
    }
}

/// Replaces the watched file (write beside it, rename over it) and polls `GET /` until the new
/// version answers.
fn swap_file(addr: SocketAddr, file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let partial = file.with_extension("wasm.partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, file)?;
    let version = version_of(bytes);
    let deadline = Instant::now() + SWAP_TIMEOUT;
    let mut client = Client::connect(addr, Duration::from_secs(10))?;
    let request = http1::get_request("/");
    loop {
        let response = client.send(&request)?;
        if response.status != 200 {
            bail!("GET / answered {} during a swap to `{version}`", response.status);
        }
        if response.component.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        if response.close {
            client = Client::connect(addr, Duration::from_secs(10))?;
        }
        if Instant::now() > deadline {
            bail!("`{version}` was not serving {SWAP_TIMEOUT:?} after the file changed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Uploads invalid bytes (alternately random bytes and a component header followed by garbage):
/// the host must answer 4xx, and `current` must still serve.
fn bad_candidate(addr: SocketAddr, current: &str, round: u64) -> anyhow::Result<()> {
    let mut bytes = if round.is_multiple_of(2 * BAD_EVERY) {
        // The component-model preamble: magic, version 0x0d, layer 1; then nonsense.
        b"\0asm\x0d\0\x01\0".to_vec()
    } else {
        Vec::new()
    };
    let mut state = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    bytes.extend((0..4096).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    let response = Client::connect(addr, Duration::from_secs(30))?
        .send(&upload_request(&bytes))
        .context("uploading a bad candidate")?;
    if !(400..500).contains(&response.status) {
        bail!(
            "the bad candidate answered {}, not a 4xx: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    check_serving(addr, current).context("after a rejected candidate")
}
