//! echo-host: serves any `wasi:http/proxy` (p2) or `wasi:http/service` (p3) component on `$PORT`
//! and swaps it while it serves.
//!
//! # Layers
//! Lowest first; a module imports only from its own layer (without a circle) or an earlier one,
//! which `tests/layers.rs` checks. A lower layer that must call up takes a trait the upper one
//! implements; only the composition root ([`app`]) names [`app::App`].
//! - [`util`]: time formatting, units, redaction, signatures, the Cloud Storage and OCI registry
//!   clients, stdout logging through a bounded queue, process-wide counters, the stop signal of
//!   the process, and how old a remote view may grow ([`util::freshness`]).
//! - [`engine`]: the wasmtime engine and linker ([`engine::runtime`]), the store state of a
//!   request ([`engine::state`]), limits, the stop signal of a guest, the p3 instance pool,
//!   guest budgets (headers, logs) and the outbound allowlist.
//! - [`versions`]: the compiled versions held ([`versions::registry`]: active, canary, history),
//!   weights, per-version windows and metrics, and the routing pick.
//! - [`serve`]: the accept loop ([`serve::server`]), one connection, one exchange (a request from
//!   head to last byte, its access-log line), the guest call ([`serve::proxy`], [`serve::reuse`]),
//!   the serve metrics and state ([`serve::serving`]). What it needs from above is the
//!   [`serve::host::Host`] trait: routing, the release check, the host's own endpoints, and an
//!   [`serve::exchange::Observer`] told how each request ended.
//! - [`release`]: how a version goes live: the validation gate ([`release::gate::Gate`]), the
//!   sources candidates come from, the fleet's release store on Cloud Storage, and the rollout
//!   (canary analysis, automatic rollback, steps), each holding the handles it needs.
//! - [`app`]: the composition root ([`app::App`], the serve layer's `Host`), start-up, the
//!   `/metrics` registry, the admin API, the release endpoints and the status.
//! - [`cli`]: the command line validated into an [`app::config::ServeConfig`], `push`, `fleet`,
//!   `release` and `compile`.

pub mod app;
pub mod cli;
pub mod engine;
pub mod release;
pub mod serve;
pub mod util;
pub mod versions;

/// The wasmtime version this host embeds (the workspace pins it exactly).
pub const WASMTIME_VERSION: &str = "48.0.8";

#[cfg(test)]
mod tests {
    /// `WASMTIME_VERSION` is reported in `info`; it must be the version the workspace pins.
    #[test]
    fn wasmtime_version_is_the_workspace_pin() {
        let manifest = include_str!("../../Cargo.toml");
        let pin = format!("wasmtime = {{ version = \"={}\"", super::WASMTIME_VERSION);
        assert!(manifest.contains(&pin), "root Cargo.toml does not pin `{pin}`");
    }
}
