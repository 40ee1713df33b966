//! Component versions: loading and validating one ([`load_component`]) and the versions new
//! requests are routed to ([`Registry`]: the stable one and a canary with its weight, each an
//! `arc-swap` so a swap never blocks a request), with the history kept for rollback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use sha2::{Digest, Sha256};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::engine::pool::Pool;
use crate::engine::runtime::{RequestState, Reuse, Runtime, World};
use crate::engine::serial::SerialPool;
use crate::versions::Weight;
use crate::versions::cost::VersionCost;
use crate::versions::window::Window;

/// The echo component built from `guest/`, served when no `--component` is given.
pub static BUILTIN_ECHO_WASM: &[u8] = include_bytes!(env!("ECHO_GUEST_WASM"));

/// How a version's requests get an instance.
#[derive(Clone)]
pub enum Handler {
    /// A p2 (`wasi:http/proxy`) component: a fresh instance per request.
    PerRequest(ProxyPre<RequestState>),
    /// A p2 component with `--instance-max-requests` above 1: instances reused one request
    /// after another.
    Serial(SerialPool),
    /// A p3 (`wasi:http/service`) component: instances reused across requests.
    Reused(Pool),
}

impl Handler {
    /// `"p2"` or `"p3"`, as `info` and the logs name the world.
    pub fn world(&self) -> &'static str {
        match self {
            Self::PerRequest(_) | Self::Serial(_) => "p2",
            Self::Reused(_) => "p3",
        }
    }

    /// Instances started so far, where instances serve more than one request.
    pub fn instances_started(&self) -> Option<u64> {
        match self {
            Self::PerRequest(_) => None,
            Self::Serial(pool) => Some(pool.instances_started()),
            Self::Reused(pool) => Some(pool.instances_started()),
        }
    }
}

/// One loaded, linked component version, ready to serve.
pub struct ActiveComponent {
    pub handler: Handler,
    /// Lowercase hex sha256 of the bytes it was loaded from.
    pub sha256: String,
    pub size: u64,
    pub loaded_at: SystemTime,
    /// How it became the version it is, e.g. `builtin:echo`, `file:/srv/echo.wasm`, `admin upload`
    /// or `rollback (was file:/srv/echo.wasm)`. Public (`info`): never who did it (see
    /// [`AdminEvent`]), and bounded: a reactivation names the [`Self::origin`], not the last source.
    pub source: String,
    /// Where the bytes first came from: the `source` it was loaded with.
    pub origin: String,
    /// How long compiling (or deserializing) and linking took.
    pub load_time: Duration,
    /// `sha256:<first 12 hex>`, sent as `echo-host-component` on every response.
    pub version_header: HeaderValue,
    /// Its requests and failures per second, for the canary analysis (kept across reactivations).
    pub window: Arc<Window>,
    /// Its cost histograms (kept across reactivations; its p3 pool reports to them too).
    pub cost: Arc<VersionCost>,
}

impl ActiveComponent {
    /// `sha256:<first 12 hex>`.
    pub fn version(&self) -> &str {
        self.version_header.to_str().unwrap_or_default()
    }
}

/// The canary new requests are split to, with its weight. `plan` tells one start of a canary
/// from another of the same version (its `started_at`).
pub struct CanarySlot {
    pub component: Arc<ActiveComponent>,
    pub weight: Weight,
    pub plan: String,
    /// The requests routed to it under this plan, what the canary analysis judges: a new start
    /// of a version already rolled back begins with nothing against it (the version's own
    /// [`ActiveComponent::window`] keeps every request, for the status page). Kept across steps.
    pub window: Arc<Window>,
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

/// Compiles (or deserializes) and links `bytes`, whose hex SHA-256 the caller has already taken
/// (for the policy check). CPU-heavy: run it on a blocking thread.
pub fn load_component(
    runtime: &Runtime,
    bytes: &[u8],
    sha256: String,
    source: String,
    allow_precompiled: bool,
) -> anyhow::Result<ActiveComponent> {
    let started = Instant::now();
    if bytes.is_empty() {
        bail!("the component is empty (0 bytes)");
    }
    debug_assert_eq!(sha256, hex::encode(Sha256::digest(bytes)), "the caller's hash is of these bytes");
    let component = match Artifact::detect(bytes) {
        Artifact::Wasm => runtime.compile(bytes)?,
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
    let cost = Arc::new(VersionCost::default());
    let handler = match runtime.pre_instantiate(&component)? {
        World::P2(pre) => match runtime.reuse() {
            Reuse { p2_max_requests: 1, .. } => Handler::PerRequest(pre),
            reuse => Handler::Serial(SerialPool::new(
                pre,
                reuse.p2_max_requests,
                reuse.idle_timeout,
                runtime.stores().idle_p2().clone(),
            )),
        },
        World::P3(pre) => Handler::Reused(Pool::new(
            pre,
            runtime.stores().clone(),
            runtime.reuse(),
            runtime.limits().request_timeout,
            cost.clone(),
        )),
    };
    let version_header =
        HeaderValue::try_from(format!("sha256:{}", &sha256[..12])).expect("hex is a valid header value");
    Ok(ActiveComponent {
        handler,
        sha256,
        size: bytes.len() as u64,
        loaded_at: SystemTime::now(),
        origin: source.clone(),
        source,
        load_time: started.elapsed(),
        version_header,
        window: Arc::default(),
        cost,
    })
}

impl ActiveComponent {
    /// The same compiled version going live again (rollback, or a swap back to known bytes):
    /// no compile, only new provenance.
    pub fn reactivated(&self, source: String) -> ActiveComponent {
        ActiveComponent {
            handler: self.handler.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            loaded_at: SystemTime::now(),
            source,
            origin: self.origin.clone(),
            load_time: Duration::ZERO,
            version_header: self.version_header.clone(),
            window: self.window.clone(),
            cost: self.cost.clone(),
        }
    }
}

/// Why the last candidate was turned away, for `info` and the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectionRecord {
    pub at: String,
    pub source: String,
    /// The candidate's sha256, when its bytes were read.
    pub sha256: Option<String>,
    pub reason: String,
}

/// One call to the admin API that could change something, for the admin history: who made it
/// (`admin:<ip> (<user agent>)`, truncated) is kept only here and in the logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminEvent {
    pub at: String,
    /// `PUT component`, `POST rollback`, ...
    pub call: String,
    pub status: u16,
    pub by: String,
}

/// Versions kept prepared: a release's stable and its canary.
const PREPARED_KEPT: usize = 2;

/// Admin events kept, newest first.
const ADMIN_EVENTS_KEPT: usize = 32;

/// The version new requests get, and the recent versions kept compiled for instant rollback.
/// Requests keep the `Arc` they started with, so a swap never changes the component under a
/// request in flight.
pub struct Registry {
    active: ArcSwap<ActiveComponent>,
    /// The canary, while requests are routed to one.
    canary: ArcSwapOption<CanarySlot>,
    /// The last canary routed to, once it no longer is: its counts stay on the status page.
    former_canary: Mutex<Option<Arc<ActiveComponent>>>,
    /// Most recent first; the active version is the first entry. At most `keep` entries, so the
    /// compiled code held stays bounded.
    history: Mutex<VecDeque<Arc<ActiveComponent>>>,
    keep: usize,
    swaps: AtomicU64,
    rejections: AtomicU64,
    last_rejection: Mutex<Option<RejectionRecord>>,
    /// The last [`ADMIN_EVENTS_KEPT`] admin calls, newest first.
    admin_events: Mutex<VecDeque<AdminEvent>>,
    /// Versions that passed the gate but are not live yet (a push to the release store, which
    /// goes live when the store says so; a release's stable and canary compiled before either
    /// is routed to), newest first, at most [`PREPARED_KEPT`]. [`Registry::find`] sees them, so
    /// none is compiled twice.
    prepared: Mutex<VecDeque<Arc<ActiveComponent>>>,
    /// Candidates are validated and published one at a time, so two sources cannot interleave
    /// a check and a publish.
    pub swap_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(initial: ActiveComponent, keep: usize) -> Self {
        let initial = Arc::new(initial);
        Self {
            active: ArcSwap::new(initial.clone()),
            canary: ArcSwapOption::empty(),
            former_canary: Mutex::new(None),
            history: Mutex::new(VecDeque::from([initial])),
            keep: keep.max(1),
            swaps: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            last_rejection: Mutex::new(None),
            admin_events: Mutex::new(VecDeque::new()),
            prepared: Mutex::new(VecDeque::new()),
            swap_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn active(&self) -> Arc<ActiveComponent> {
        self.active.load_full()
    }

    /// Makes `next` the active version and records it first in the history; returns the version
    /// it replaced.
    pub fn publish(&self, next: ActiveComponent) -> Arc<ActiveComponent> {
        let next = Arc::new(next);
        {
            let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
            history.retain(|v| v.sha256 != next.sha256);
            history.push_front(next.clone());
            history.truncate(self.keep);
        }
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.active.swap(next)
    }

    /// The canary requests are split to, if any.
    pub fn canary(&self) -> Option<Arc<CanarySlot>> {
        self.canary.load_full()
    }

    /// Routes `weight` of new requests to `component`. The same plan at another weight keeps
    /// its analysis window; a new plan starts an empty one.
    pub fn set_canary(&self, component: Arc<ActiveComponent>, weight: Weight, plan: String) {
        let window = self
            .canary()
            .filter(|slot| slot.component.sha256 == component.sha256 && slot.plan == plan)
            .map(|slot| slot.window.clone())
            .unwrap_or_default();
        self.canary.store(Some(Arc::new(CanarySlot { component, weight, plan, window })));
    }

    /// Stops routing to the canary if it is still `sha256`; whether it was.
    pub fn clear_canary(&self, sha256: &str) -> bool {
        let previous = self.canary.rcu(|current| match current {
            Some(slot) if slot.component.sha256 == sha256 => None,
            other => other.clone(),
        });
        match previous {
            Some(slot) if slot.component.sha256 == sha256 => {
                *self.former_canary.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot.component.clone());
                true
            }
            _ => false,
        }
    }

    /// The last canary that was routed to and no longer is.
    pub fn former_canary(&self) -> Option<Arc<ActiveComponent>> {
        self.former_canary.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A kept version by sha256 (full hex, or a prefix of at least 12 hex digits): the history,
    /// the canary, the prepared one.
    pub fn find(&self, sha256: &str) -> Option<Arc<ActiveComponent>> {
        let matches = |v: &&Arc<ActiveComponent>| sha256.len() >= 12 && v.sha256.starts_with(sha256);
        let kept = self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().find(matches).cloned();
        kept.or_else(|| self.canary().map(|slot| slot.component.clone()).filter(|c| matches(&c)))
            .or_else(|| self.prepared.lock().unwrap_or_else(|p| p.into_inner()).iter().find(matches).cloned())
    }

    /// Keeps a validated version compiled until it goes live (or two more are prepared).
    pub fn prepare(&self, component: Arc<ActiveComponent>) {
        let mut prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        prepared.retain(|v| v.sha256 != component.sha256);
        prepared.push_front(component);
        prepared.truncate(PREPARED_KEPT);
    }

    /// The version before the active one, if still kept.
    pub fn previous(&self) -> Option<Arc<ActiveComponent>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).get(1).cloned()
    }

    pub fn history(&self) -> Vec<Arc<ActiveComponent>> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub fn record_rejection(&self, record: RejectionRecord) {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        *self.last_rejection.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
    }

    pub fn record_admin_event(&self, event: AdminEvent) {
        let mut events = self.admin_events.lock().unwrap_or_else(|p| p.into_inner());
        events.push_front(event);
        events.truncate(ADMIN_EVENTS_KEPT);
    }

    /// The recent admin calls, newest first.
    pub fn admin_events(&self) -> Vec<AdminEvent> {
        self.admin_events.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub fn swap_count(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    pub fn rejection_count(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    pub fn last_rejection(&self) -> Option<RejectionRecord> {
        self.last_rejection.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
