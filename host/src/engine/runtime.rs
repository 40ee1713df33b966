//! The wasmtime side: the engines (their settings: [`crate::engine::config`]) and epochs, the
//! `Linker`s, compiling and pre-instantiating components (of either wasi:http world, [`World`]),
//! and the store state ([`RequestState`]) of one request's instance or of one reused instance
//! ([`Stores`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use wasmtime::UpdateDeadline;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::engine::config::engine_config;
use crate::engine::fields;
pub use crate::engine::flavor::Flavor;
use crate::engine::guest_log::{GuestLog, LogBudget};
use crate::engine::header_budget::HeaderBudget;
use crate::engine::limits::Limits;
use crate::engine::memory::MemoryLimiter;
use crate::engine::outbound::OutboundPolicy;
use crate::engine::outbound::OutboundRule;
use crate::engine::serial::IdleBudget;
pub use crate::engine::state::RequestState;
use crate::engine::stop::StopSignal;
use crate::util::traces::Traces;

/// How often the epoch advances. A guest that never yields is checked at this granularity:
/// it gives up its thread every tick and is stopped at the first tick past its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What the runtime needs from the configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub limits: Limits,
    pub guest_env: Vec<(String, String)>,
    pub allow_outbound: Vec<OutboundRule>,
    /// How instances are reused across requests.
    pub reuse: Reuse,
    /// The tracer, when traces are on: outbound calls get spans and a `traceparent`.
    pub traces: Option<Arc<Traces>>,
}

/// How long an instance serves before it is retired (the flags `--instance-*`, for p3
/// (`wasi:http/service`) with `wasmtime serve`'s defaults). p2 components get a fresh instance
/// per request unless `--instance-max-requests` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Reuse {
    /// Requests one p3 instance serves in its life.
    pub max_requests: usize,
    /// Requests one p2 instance serves in its life, one at a time (1: a fresh instance each).
    pub p2_max_requests: usize,
    /// Requests one instance serves at the same time.
    pub max_concurrent: usize,
    /// How long an idle instance waits for another request.
    #[serde(serialize_with = "crate::util::time::serialize_secs")]
    pub idle_timeout: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            max_requests: 128,
            p2_max_requests: 1,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

/// Which wasi:http world a component serves, with its linked pre-instance.
pub enum World {
    /// `wasi:http/proxy@0.2`: `incoming-handler`, a fresh instance per request.
    P2(ProxyPre<RequestState>),
    /// `wasi:http/service@0.3`: an async `handler`, instances reused across requests.
    P3(ServicePre<RequestState>),
}

/// The engines, linkers and guest settings shared by every request and every component version.
pub struct Runtime {
    p2_linker: Linker<RequestState>,
    p3_linker: Linker<RequestState>,
    stores: Arc<Stores>,
    _epoch_ticker: EpochTicker,
}

/// Makes the stores instances run in: the engines and what every guest gets (limits,
/// environment, log, outbound rules). Shared with the reused-instance pools, which make stores
/// of their own.
pub struct Stores {
    p2: Engine,
    p3: Engine,
    config: RuntimeConfig,
    outbound: Arc<[OutboundRule]>,
    /// The p2 instances idle in every version's pool (`--instance-max-requests`), at most
    /// `--concurrency`.
    idle_p2: Arc<IdleBudget>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = |flavor: Flavor| -> anyhow::Result<Engine> {
            Engine::new(&engine_config(&config.limits, flavor)?)
                .map_err(anyhow::Error::from)
                .context("failed to create the wasm engine")
        };
        let (p2, p3) = (engine(Flavor::P2)?, engine(Flavor::P3)?);
        Ok(Self {
            _epoch_ticker: EpochTicker::start(vec![p2.clone(), p3.clone()]),
            p2_linker: linker(&p2, Flavor::P2)?,
            p3_linker: linker(&p3, Flavor::P3)?,
            stores: Arc::new(Stores {
                outbound: config.allow_outbound.clone().into(),
                idle_p2: IdleBudget::new(config.limits.concurrency),
                p2,
                p3,
                config,
            }),
        })
    }

    /// The engine of `flavor`.
    pub fn engine(&self, flavor: Flavor) -> &Engine {
        self.stores.engine(flavor)
    }

    pub fn limits(&self) -> &Limits {
        &self.stores.config.limits
    }

    pub fn reuse(&self) -> Reuse {
        self.stores.config.reuse
    }

    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// Compiles a `.wasm` component. CPU-heavy: call it from a blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        if is_core_module(bytes) {
            bail!(
                "this is a core wasm module, not a component (build with `--target wasm32-wasip2` or `wasm-tools component new`)"
            );
        }
        if !is_component(bytes) {
            bail!("not a wasm component (no `\\0asm` component header)");
        }
        // A p2 component that uses component-model concurrency anyway needs the p3 engine.
        let component = match Flavor::of(bytes) {
            Flavor::P2 => Component::new(self.engine(Flavor::P2), bytes)
                .or_else(|_| Component::new(self.engine(Flavor::P3), bytes)),
            Flavor::P3 => Component::new(self.engine(Flavor::P3), bytes),
        }
        .map_err(anyhow::Error::from);
        release_free_heap();
        let max_memory = self.limits().max_memory_bytes;
        let component = component.map_err(|e| explain_memory_floor(e, max_memory))?;
        check_memory_floor(&component, max_memory)?;
        Ok(component)
    }

    /// Loads a `.cwasm` made by `echo-host compile`.
    ///
    /// # Safety
    /// The bytes are native code that runs unchecked: they must come from a trusted build of
    /// this same host (see `--allow-precompiled`).
    pub unsafe fn deserialize(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        // SAFETY: the caller vouches for the bytes; wasmtime checks the engine compatibility
        // (a `.cwasm` names no flavor: the one whose settings it was made with accepts it).
        let component = unsafe {
            Component::deserialize(self.engine(Flavor::P2), bytes)
                .or_else(|_| Component::deserialize(self.engine(Flavor::P3), bytes))
        };
        let max_memory = self.limits().max_memory_bytes;
        let component = component.map_err(|e| explain_memory_floor(e.into(), max_memory))?;
        check_memory_floor(&component, max_memory)?;
        Ok(component)
    }

    /// Links a component against the host's imports and finds which wasi:http world it serves:
    /// it exports `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3`.
    pub fn pre_instantiate(&self, component: &Component) -> anyhow::Result<World> {
        let linker = if Engine::same(component.engine(), self.engine(Flavor::P2)) {
            &self.p2_linker
        } else {
            &self.p3_linker
        };
        let pre = linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .context("the component imports something this host does not provide")?;
        if let Ok(p2) = ProxyPre::new(pre.clone()) {
            return Ok(World::P2(p2));
        }
        match ServicePre::new(pre) {
            Ok(p3) => Ok(World::P3(p3)),
            Err(_) => bail!(
                "the component does not export `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3` (is it a `wasi:http/proxy` or `wasi:http/service` component?)"
            ),
        }
    }

    /// A fresh store for one request, with its limits; the guest is interrupted once `stop`
    /// passes (the deadline, or earlier once its response is over).
    pub fn new_store(&self, request_id: &str, stop: Arc<StopSignal>) -> Store<RequestState> {
        self.stores.request_store(request_id, stop)
    }
}

impl Stores {
    /// The limits every guest runs under.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// What the p2 instances idle in every pool share (`--concurrency` of them at most).
    pub fn idle_p2(&self) -> &Arc<IdleBudget> {
        &self.idle_p2
    }

    /// The tracer, when traces are on.
    pub fn traces(&self) -> Option<&Traces> {
        self.config.traces.as_deref()
    }

    /// The tracer's shared handle, when traces are on.
    pub fn traces_handle(&self) -> Option<Arc<Traces>> {
        self.config.traces.clone()
    }

    /// A store for one request's fresh instance: yields to the executor at each epoch tick and
    /// traps once `stop` is past.
    pub fn request_store(&self, request_id: &str, stop: Arc<StopSignal>) -> Store<RequestState> {
        let mut store = self.store(Flavor::P2, request_id, MemoryLimiter::new(self.max_memory()));
        stop_at(&mut store, stop);
        store
    }

    /// A reused p2 instance's store ([`crate::engine::serial`]) takes the request `request_id`:
    /// full budgets, its labels, and the epoch interrupts the guest once this request's `stop`
    /// is past.
    pub fn rearm(&self, store: &mut Store<RequestState>, request_id: &str, stop: Arc<StopSignal>) {
        store.data_mut().rearm(request_id, None);
        stop_at(store, stop);
    }

    pub fn engine(&self, flavor: Flavor) -> &Engine {
        match flavor {
            Flavor::P2 => &self.p2,
            Flavor::P3 => &self.p3,
        }
    }

    /// A store for a reused (p3) instance, named `label` in the guest's log lines: its guest
    /// gives the thread back every epoch tick and is never interrupted by the epoch; the pool
    /// retires an instance that overstays (see `reuse`).
    pub fn reused_store(&self, label: &str) -> Store<RequestState> {
        let mut store = self.store(Flavor::P3, label, MemoryLimiter::shared(self.max_memory()));
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        store
    }

    /// `--max-memory`, per linear memory.
    fn max_memory(&self) -> usize {
        usize::try_from(self.config.limits.max_memory_bytes).unwrap_or(usize::MAX)
    }

    /// A store with the guest's limits, environment, log and outbound rules.
    fn store(&self, flavor: Flavor, label: &str, memory: MemoryLimiter) -> Store<RequestState> {
        let limits = &self.config.limits;
        let guest = &limits.guest;
        let log_budget = LogBudget::new(label, guest.max_log_lines, guest.max_log_bytes);
        let guest_logs =
            [GuestLog::new("stdout", log_budget.clone()), GuestLog::new("stderr", log_budget.clone())];
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.config.guest_env)
            .stdout(guest_logs[0].clone())
            .stderr(guest_logs[1].clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        // `wasmtime serve`'s `-Smax-http-fields-size` and `-Smax-resources`: every `fields` the
        // guest builds, and the entries it holds, are bounded (past them, a trap or an error).
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(guest.header_bytes());
        let mut table = ResourceTable::new();
        table.set_max_capacity(guest.max_resources);
        let state = RequestState {
            wasi: wasi.build(),
            http,
            table,
            header_budget: HeaderBudget::new(guest.header_bytes()),
            log_budget,
            guest_logs,
            memory,
            outbound: OutboundPolicy::new(self.outbound.clone(), label, self.config.traces.clone()),
        };
        let mut store = Store::new(self.engine(flavor), state);
        store.limiter(|state| &mut state.memory);
        store
    }
}

/// Each tick, the guest gives the thread back to the executor; past `stop`, it traps.
fn stop_at(store: &mut Store<RequestState>, stop: Arc<StopSignal>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if stop.interrupt_now() { Ok(UpdateDeadline::Interrupt) } else { Ok(UpdateDeadline::Yield(1)) }
    });
}

/// `flavor`'s linker: full WASI p2 (components built with std import `wasi:cli/environment`,
/// `wasi:filesystem`, ...; the context grants no preopens and no sockets) and wasi:http, and for
/// p3 WASI 0.3 and its wasi:http with the same grants.
fn linker(engine: &Engine, flavor: Flavor) -> anyhow::Result<Linker<RequestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add WASI to the linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:http to the linker")?;
    if flavor == Flavor::P3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to add WASI 0.3 to the linker")?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to add wasi:http 0.3 to the linker")?;
    }
    fields::add_to_linker(&mut linker, flavor)?;
    Ok(linker)
}

/// Hands the heap memory a compile freed back to the OS. glibc keeps it in the arenas of the
/// (parallel) compile threads otherwise: measured 2.4 MiB of RSS (a third of the anonymous
/// memory of an idle host) kept for the life of the process after compiling the echo component.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` only releases free memory; it is safe to call at any time
        // from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The binary header of a core wasm module: magic, then version 1.
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";
/// The binary header of a component: magic, then version 0xd, layer 1.
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";

pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(&CORE_MODULE_HEADER)
}

pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(&COMPONENT_HEADER)
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on its own thread until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engines: Vec<Engine>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })
            .expect("failed to spawn the epoch thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What wasmtime's pooling allocator says when a component's memory starts larger than a slot
/// (`memory has a minimum byte size of N which exceeds the limit of …`) names neither the flag
/// nor a value that works: this adds both. Other errors pass unchanged.
fn explain_memory_floor(error: anyhow::Error, max_memory: u64) -> anyhow::Error {
    const NEEDLE: &str = "memory has a minimum byte size of ";
    let text = format!("{error:#}");
    let needed = text.split_once(NEEDLE).and_then(|(_, rest)| {
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|digits| digits.parse::<u64>().ok())
    });
    let Some(needed) = needed else { return error };
    error.context(memory_floor(needed, max_memory))
}

/// A component whose memory starts larger than `--max-memory` could never be instantiated. p2's
/// pool refuses it while compiling; p3 instances are not pooled, so the floor is checked here for
/// both, from the sizes the component declares.
fn check_memory_floor(component: &Component, max_memory: u64) -> anyhow::Result<()> {
    const WASM_PAGE: u64 = 64 << 10;
    let pages = component.resources_required().and_then(|r| r.max_initial_memory_size).unwrap_or(0);
    let needed = pages.saturating_mul(WASM_PAGE);
    if needed > max_memory {
        bail!(memory_floor(needed, max_memory));
    }
    Ok(())
}

fn memory_floor(needed: u64, max_memory: u64) -> String {
    use crate::util::units::format_size;
    format!(
        "the component's memory starts at {}, more than `--max-memory` ({}) allows: set `--max-memory` (or `ECHO_HOST_MAX_MEMORY`) to at least `{}`, plus what its requests allocate (the default is `128MiB`)",
        format_size(needed),
        format_size(max_memory),
        size_flag(needed)
    )
}

/// `bytes` as a flag value that is at least as large: `2MiB`, `1088KiB`, `1000`.
fn size_flag(bytes: u64) -> String {
    match bytes {
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b => format!("{}KiB", b.div_ceil(1 << 10)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component whose memory starts above `--max-memory` is refused with the flag and a value
    /// that works, whatever wasmtime wrapped around its own message.
    #[test]
    fn a_memory_too_small_names_the_flag_and_the_size_needed() {
        let wasmtime = anyhow::anyhow!(
            "memory has a minimum byte size of 1114112 which exceeds the limit of 0x10000 bytes"
        )
        .context("module memory does not fit in pooling allocator requirements");
        let error = format!("{:#}", explain_memory_floor(wasmtime, 64 << 10));
        assert!(
            error.starts_with(
                "the component's memory starts at 1.1 MiB, more than `--max-memory` (64 KiB) allows: set `--max-memory` (or `ECHO_HOST_MAX_MEMORY`) to at least `1088KiB`, plus what its requests allocate (the default is `128MiB`): module memory"
            ),
            "{error}"
        );
        let other = format!("{:#}", explain_memory_floor(anyhow::anyhow!("bad magic"), 64 << 10));
        assert_eq!(other, "bad magic");
        assert_eq!((size_flag(2 << 20), size_flag(1000)), ("2MiB".to_string(), "1KiB".to_string()));
    }
}
