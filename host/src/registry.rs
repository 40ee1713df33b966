//! Component versions: loading and validating one ([`load_component`]) and the active version
//! every new request reads ([`Registry`], an `arc-swap` so a swap never blocks a request).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::runtime::{RequestState, Runtime};

/// The echo component built from `guest/`, served when no `--component` is given.
pub static BUILTIN_ECHO_WASM: &[u8] = include_bytes!(env!("ECHO_GUEST_WASM"));

/// One loaded, linked component version, ready to instantiate per request.
pub struct ActiveComponent {
    pub pre: ProxyPre<RequestState>,
    /// Lowercase hex sha256 of the bytes it was loaded from.
    pub sha256: String,
    pub size: u64,
    pub loaded_at: SystemTime,
    /// Where it came from, e.g. `builtin:echo` or `file:/srv/echo.wasm`.
    pub source: String,
    /// How long compiling (or deserializing) and linking took.
    pub load_time: Duration,
    /// `sha256:<first 12 hex>`, sent as `echo-host-component` on every response.
    pub version_header: HeaderValue,
}

/// What kind of bytes a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// A `.wasm` component: compiled and validated by wasmtime.
    Wasm,
    /// A `.cwasm` from `echo-host compile`: native code, trusted.
    Precompiled,
}

impl Artifact {
    pub fn detect(bytes: &[u8]) -> Self {
        if wasmtime::Engine::detect_precompiled(bytes).is_some() { Self::Precompiled } else { Self::Wasm }
    }
}

/// Hashes, compiles (or deserializes) and links `bytes`. CPU-heavy: run it on a blocking thread.
pub fn load_component(
    runtime: &Runtime,
    bytes: &[u8],
    source: String,
    allow_precompiled: bool,
) -> anyhow::Result<ActiveComponent> {
    let started = Instant::now();
    if bytes.is_empty() {
        bail!("the component is empty (0 bytes)");
    }
    let sha256 = hex::encode(Sha256::digest(bytes));
    let component = match Artifact::detect(bytes) {
        Artifact::Wasm => runtime.compile(bytes).context("invalid component")?,
        Artifact::Precompiled if allow_precompiled => {
            // SAFETY: `--allow-precompiled` is the operator's statement that this file came from
            // their own `echo-host compile`; wasmtime still rejects other engine configurations.
            unsafe { runtime.deserialize(bytes) }
                .context("cannot load the precompiled component (was it made by this `echo-host` version's `compile`?)")?
        }
        Artifact::Precompiled => {
            bail!(
                "this is a precompiled `.cwasm`; pass `--allow-precompiled` to load it (only for files from your own build)"
            )
        }
    };
    let pre = runtime.pre_instantiate(&component)?;
    let version_header =
        HeaderValue::try_from(format!("sha256:{}", &sha256[..12])).expect("hex is a valid header value");
    Ok(ActiveComponent {
        pre,
        sha256,
        size: bytes.len() as u64,
        loaded_at: SystemTime::now(),
        source,
        load_time: started.elapsed(),
        version_header,
    })
}

/// The version new requests get. Requests keep the `Arc` they started with, so a swap never
/// changes the component under a request in flight.
pub struct Registry {
    active: ArcSwap<ActiveComponent>,
}

impl Registry {
    pub fn new(initial: ActiveComponent) -> Self {
        Self { active: ArcSwap::from_pointee(initial) }
    }

    pub fn active(&self) -> Arc<ActiveComponent> {
        self.active.load_full()
    }

    /// Makes `next` the active version; returns the one it replaced.
    pub fn publish(&self, next: ActiveComponent) -> Arc<ActiveComponent> {
        self.active.swap(Arc::new(next))
    }
}
