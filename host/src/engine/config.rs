//! The wasmtime `Config` of each engine ([`engine_config`]): one place that makes it, because a
//! precompiled component only loads into an engine built from the same settings.

use anyhow::Context;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::engine::flavor::Flavor;
use crate::engine::limits::Limits;

/// Wasm stack per instance. Deep recursion traps here instead of taking the host down.
pub const DEFAULT_MAX_WASM_STACK: usize = 1 << 20;

/// Instances beyond `--concurrency` the p2 pool keeps room for: a swap's smoke probe (probes take
/// no permit). A request holds its permit until its guest has stopped, so per-request instances
/// never need more than `--concurrency` slots; reused p2 instances (`--instance-max-requests`)
/// of a version just swapped out linger idle for `--instance-idle-timeout`, so the pool holds a
/// second `--concurrency` for them (address space only: slots are not touched until used). p3
/// instances are not pooled ([`reused_instance_memory`]).
const POOL_HEADROOM: u32 = 16;

/// x86-64 extensions newer than AVX2 (Haswell, 2013). Cranelift otherwise uses every extension
/// the compiling CPU has, and a `.cwasm` that uses AVX-512 refuses to load on a machine without
/// it: an image built on one server would crash-loop on another.
#[cfg(target_arch = "x86_64")]
const NON_BASELINE_X86_FLAGS: &[&str] = &[
    "has_avx512bitalg",
    "has_avx512dq",
    "has_avx512f",
    "has_avx512vbmi",
    "has_avx512vl",
    "has_avx512vnni",
    "has_avx_vnni",
];

/// Restricts compiled code to instructions every server CPU of this architecture has, for
/// `.cwasm` files made on one machine and loaded on another. A loading engine accepts code that
/// uses a subset of its CPU's features, so `serve` keeps detecting the native set.
pub fn portable_code(config: &mut Config) {
    #[cfg(target_arch = "x86_64")]
    for flag in NON_BASELINE_X86_FLAGS {
        // SAFETY: disabling an extension only narrows the instructions Cranelift may emit; the
        // code runs on any CPU that has the rest.
        unsafe {
            config.cranelift_flag_set(flag, "false");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = config;
}

/// The `Config` both `serve` and `compile` use for `flavor`: precompiled components only load
/// into an engine built from the same settings, so there must be exactly one place that makes it.
pub fn engine_config(limits: &Limits, flavor: Flavor) -> anyhow::Result<Config> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(DEFAULT_MAX_WASM_STACK);
    config.memory_init_cow(true);
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    match flavor {
        // No guest task per host call: measured in the README's "Benchmark".
        Flavor::P2 => {
            config.concurrency_support(false);
            fresh_instance_memory(&mut config, limits)?;
        }
        // WASI 0.3 (`wasi:http/service`): async component functions, streams and futures.
        Flavor::P3 => {
            config.wasm_component_model_async(true);
            reused_instance_memory(&mut config);
        }
    }
    Ok(config)
}

/// p2: an instance per request (or a few, with `--instance-max-requests`), so what an
/// instantiation costs decides. Bounds checks in code, no guard pages: with signal-based traps
/// and guard pages, every instantiation re-protects (mprotect) the pages the previous request
/// grew, and a slot's accessible size changes on every request; explicit checks cost less than
/// those syscalls for short-lived instances (measured +18% requests per CPU-second with them,
/// +16% more for the guard). These settings change compiled code: `.cwasm` files from an
/// earlier build must be recompiled (they do not depend on `--max-memory` or other limits).
fn fresh_instance_memory(config: &mut Config, limits: &Limits) -> anyhow::Result<()> {
    config.signals_based_traps(false);
    config.memory_guard_size(0);
    config.guard_before_linear_memory(false);

    // Size the pool from the limits instead of wasmtime's defaults (1000 instances, ~6 TiB of
    // reserved address space): a slot per allowed request, and memories no larger than the
    // per-request memory limit.
    let instances = u32::try_from(limits.concurrency)
        .context("`--concurrency` is too large")?
        .saturating_mul(2)
        .saturating_add(POOL_HEADROOM);
    let max_memory = usize::try_from(limits.max_memory_bytes).context("`--max-memory` is too large")?;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(max_memory)
        .max_memories_per_component(2)
        .max_tables_per_component(4)
        // Reset a returned slot by rewriting only the pages the request dirtied (found with the
        // PAGEMAP_SCAN ioctl, Linux 6.7+) instead of madvise + a page fault per page on the next
        // request: measured +53% requests per CPU-second. Without the ioctl (older kernels,
        // gVisor) `Auto` falls back to memset of the first 128 KiB and madvise of the rest.
        .linear_memory_keep_resident(128 * 1024)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Reserve a slot's `--max-memory`, not wasmtime's default 4 GiB per memory: the code checks
    // bounds explicitly (no guard region to reserve), and a memory never outgrows the limit. The
    // pool then takes `--max-memory` of address space per memory slot instead of 4 GiB, which
    // also lets the host start under valgrind.
    config.memory_reservation(limits.max_memory_bytes);
    Ok(())
}

/// p3: an instance serves many requests (128 by default), so what the guest's code costs
/// decides, not what an instantiation costs. wasmtime's defaults, as `wasmtime serve` has them:
/// a 4 GiB reservation and 32 MiB guard regions per memory and signal-based traps, so compiled
/// code checks no bounds on a 32-bit memory's loads and stores. callgrind, 400 GETs on reused
/// instances: the p3 echo 154,215 -> 140,090 instructions per GET (`make bench --only counts`);
/// a third-party p3 component built unoptimised (wasip3's `http-proxy` example) under `wasmtime
/// serve -Sp3 -Wtimeout` (epoch checks, as here) 262,444 with the p2 engine's settings, 191,972
/// with these.
/// Instances are allocated on demand: a pool of 4 GiB slots would reserve terabytes of address
/// space for `--concurrency` instances (and valgrind could not map it), and an instantiation
/// every `--instance-max-requests` requests needs no pool. `--max-memory` still holds: the
/// store's limiter refuses a larger memory.
fn reused_instance_memory(config: &mut Config) {
    config.signals_based_traps(true);
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
}
