//! Layer 1, `engine`: wasmtime's `Engine` and `Linker`, loading a component, the per-request and
//! per-instance store state and its limits, the stop signal a guest's request carries, guest
//! budgets (headers, logs) and the outbound policy.

pub mod config;
pub mod fields;
pub mod flavor;
pub mod guest_log;
pub mod header_budget;
pub mod limits;
pub mod memory;
pub mod outbound;
pub mod pool;
pub mod runtime;
pub mod serial;
pub mod state;
pub mod stop;
