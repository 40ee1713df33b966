//! echo-host: serves any `wasi:http/proxy` component on `$PORT` and swaps it while it serves.
//!
//! # Layout
//! - [`config`]: the command line, env vars and defaults, validated into a [`config::ServeConfig`].
//! - [`runtime`]: the wasmtime engine (pooling allocator, epochs), linker and per-request store.
//! - [`registry`]: loading a component version and the active one that requests read.
//! - [`server`]: the accept loop (HTTP/1.1 + h2c), protocol settings, routing, graceful shutdown.
//! - [`connection`]: one connection's timers (header, idle), its close, and the cut of a stream.
//! - [`exchange`]: one request from head to last byte: permit, deadline, outcome, access log.
//! - [`proxy`]: one request through the component, and guest failures turned into outcomes.
//! - [`app`]: the state requests share, the concurrency permits and request ids.
//! - [`admin`]: `/.well-known/echo-host/` health, info and metrics.
//! - [`telemetry`]: Cloud Logging JSON logs and Prometheus metrics; [`log_writer`]: stdout
//!   through a bounded queue, so a stalled log pipe drops lines instead of blocking requests.
//! - [`guest_log`]: the guest's stdout/stderr as log lines; [`outbound`]: the outbound allowlist.
//! - [`swap`]: the validation gate a candidate passes before it goes live, and rollback.
//! - [`source`]: where candidates come from: a watched file or a polled URL.
//! - [`signing`]: ed25519 keys and detached signatures (`keygen`, `sign`, `--trusted-key`).
//! - [`push`]: `echo-host push`, the admin upload from a shell.
//! - [`shutdown`]: the SIGTERM/SIGINT future.

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
pub mod exchange;
pub mod guest_log;
pub mod log_writer;
pub mod outbound;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod source;
pub mod swap;
pub mod telemetry;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::app::App;
use crate::config::{CompileArgs, ServeConfig};
use crate::registry::{Registry, load_component};
use crate::runtime::{Runtime, RuntimeConfig};

/// The wasmtime version this host embeds (the workspace pins it exactly).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Builds the runtime and loads the initial component through the same checks a swap makes.
pub async fn load_app(config: &ServeConfig) -> anyhow::Result<App> {
    let started = Instant::now();
    let runtime = Runtime::new(RuntimeConfig {
        limits: config.limits.clone(),
        guest_env: config.guest_env.clone(),
        allow_outbound: config.allow_outbound.clone(),
    })?;
    let candidate = source::fetch_initial(&config.component, &watch_config(config)).await?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&candidate.bytes));
    swap::check_policy(&config.swap, &candidate, &sha256)
        .with_context(|| format!("cannot serve the component from `{}`", candidate.source))?;
    let allow_precompiled = config.allow_precompiled;
    let (runtime, component) = tokio::task::spawn_blocking(move || {
        let component =
            load_component(&runtime, &candidate.bytes, candidate.source.clone(), allow_precompiled)
                .with_context(|| format!("cannot serve the component from `{}`", candidate.source));
        (runtime, component)
    })
    .await?;
    let component = component?;
    tracing::info!(
        source = %component.source,
        sha256 = %component.sha256,
        size = component.size,
        load_ms = component.load_time.as_millis() as u64,
        startup_ms = started.elapsed().as_millis() as u64,
        "loaded component {} from {} in {} ms",
        component.version_header.to_str().unwrap_or_default(),
        component.source,
        component.load_time.as_millis()
    );
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty());
    let registry = Registry::new(component, config.swap.keep_versions);
    Ok(App::new(runtime, registry, project, config.swap.clone(), config.admin_token.clone()))
}

fn watch_config(config: &ServeConfig) -> source::WatchConfig {
    source::WatchConfig {
        poll_interval: config.poll_interval,
        fetch_timeout: config.fetch_timeout,
        max_component_size: config.swap.max_component_size,
    }
}

/// Starts watching the component's source for new versions (nothing for the built-in one).
pub fn start_watching(app: &Arc<App>, config: &ServeConfig) -> Option<tokio::task::JoinHandle<()>> {
    source::spawn_watcher(app.clone(), &config.component, watch_config(config))
}

/// `echo-host serve`: load, bind only once ready (Cloud Run's startup probe is the port), serve
/// until SIGTERM/SIGINT, drain.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let app = Arc::new(load_app(&config).await?);
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on `{}` (is the port in use? set `PORT`)", config.addr))?;
    let addr = listener.local_addr()?;
    let tokio_runtime = tokio::runtime::Handle::current();
    tracing::info!(
        %addr,
        admin_api = app.admin_token.is_some(),
        runtime = ?tokio_runtime.runtime_flavor(),
        workers = tokio_runtime.metrics().num_workers(),
        "serving HTTP/1.1 and h2c on {addr}"
    );
    let watcher = start_watching(&app, &config);
    server::run(listener, app, shutdown::signal(), config.shutdown_grace).await?;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// `echo-host compile`: precompile for exactly the engine `serve` builds.
pub fn compile(args: &CompileArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("cannot read `{}`", args.input.display()))?;
    let limits = config::Limits::default();
    let mut engine_config = runtime::engine_config(&limits)?;
    if !args.native {
        runtime::portable_code(&mut engine_config);
    }
    let engine = wasmtime::Engine::new(&engine_config).map_err(anyhow::Error::from)?;
    if runtime::is_core_module(&bytes) {
        anyhow::bail!("`{}` is a core wasm module, not a component", args.input.display());
    }
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile `{}`", args.input.display()))?;
    // Write beside and rename: a server may have the old file mapped, and a reader must never
    // see half a file.
    let partial = args.output.with_extension("cwasm.partial");
    std::fs::write(&partial, &compiled).with_context(|| format!("cannot write `{}`", partial.display()))?;
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot write `{}`", args.output.display()))?;
    eprintln!(
        "compiled `{}` ({} bytes) to `{}` ({} bytes) in {} ms",
        args.input.display(),
        bytes.len(),
        args.output.display(),
        compiled.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}

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
