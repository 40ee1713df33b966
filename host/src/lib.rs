//! echo-host: serves any `wasi:http/proxy` (p2) or `wasi:http/service` (p3) component on `$PORT`
//! and swaps it while it serves.
//!
//! # Layout
//! - [`config`]: the command line, env vars and defaults, validated into a [`config::ServeConfig`].
//! - [`runtime`]: the wasmtime engine (pooling allocator, epochs), linker and per-request store.
//! - [`registry`]: loading a component version, and the stable one and canary requests read.
//! - [`rollout`]: progressive delivery: routing by weight, key and pin, per-version telemetry,
//!   the canary analysis, automatic rollback and steps; [`release_api`]: its admin endpoints.
//! - [`server`]: the accept loop (HTTP/1.1 + h2c), protocol settings, routing, graceful shutdown.
//! - [`connection`]: one connection's timers (header, idle), its close, and the cut of a stream.
//! - [`exchange`]: one request from head to last byte: permit, deadline, outcome, access log.
//! - [`proxy`]: one request through the component, and guest failures turned into outcomes;
//!   [`reuse`]: the pool of reused instances a p3 component's requests go to.
//! - [`app`]: the state requests share, the concurrency permits and request ids.
//! - [`admin`]: `/.well-known/echo-host/` health, info, metrics, the status page and the admin API.
//! - [`telemetry`]: Cloud Logging JSON logs and Prometheus metrics; [`log_writer`]: stdout
//!   through a bounded queue, so a stalled log pipe drops lines instead of blocking requests.
//! - [`guest_log`]: the guest's stdout/stderr as log lines; [`outbound`]: the outbound allowlist.
//! - [`header_budget`]: the header bytes a guest may build per request, over all its `fields`.
//! - [`swap`]: the validation gate a candidate passes before it goes live, and rollback.
//! - [`source`]: where candidates come from: a watched file, a polled URL or `gs://` object.
//! - [`store`]: the fleet's release store on Cloud Storage: manifest, follower, what a new
//!   instance starts on, pushes and rollbacks, heartbeats and the fleet view; [`gcs`]: the Cloud
//!   Storage JSON API client; [`freshness`]: how old the store's view may be when a request is
//!   routed on it (`--max-staleness`), and the one re-check stale requests share.
//! - [`signing`]: ed25519 keys and detached signatures (`keygen`, `sign`, `--trusted-key`).
//! - [`push`]: `echo-host push` (the admin upload from a shell, `--wait` for the fleet) and
//!   `echo-host fleet`.
//! - [`redact`]: URLs as the host prints them (no userinfo, no query values).
//! - [`shutdown`]: the SIGTERM/SIGINT future.

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
pub mod exchange;
pub mod freshness;
pub mod gcs;
pub mod guest_log;
pub mod header_budget;
pub mod log_writer;
pub mod outbound;
pub mod proxy;
pub mod push;
pub mod redact;
pub mod registry;
pub mod release_api;
pub mod release_cli;
pub mod reuse;
pub mod rollout;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod source;
pub mod store;
pub mod swap;
pub mod telemetry;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::app::App;
use crate::config::{CompileArgs, ServeConfig};
use crate::registry::{Registry, load_component};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{Store, StoreSettings};

/// The wasmtime version this host embeds (the workspace pins it exactly).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Builds the runtime and loads the initial component through the same checks a swap makes:
/// with `--store`, the store's release (or `--component` until there is one).
pub async fn load_app(config: &ServeConfig) -> anyhow::Result<App> {
    let started = Instant::now();
    let runtime = Runtime::new(RuntimeConfig {
        limits: config.limits.clone(),
        guest_env: config.guest_env.clone(),
        allow_outbound: config.allow_outbound.clone(),
        reuse: config.reuse,
    })?;
    let store = match &config.store {
        Some(location) => Some(Arc::new(
            Store::open(StoreSettings {
                location: location.clone(),
                storage: config.storage.clone(),
                poll_interval: config.poll_interval,
                heartbeat_interval: config.heartbeat_interval,
                fetch_timeout: config.fetch_timeout,
                max_component_size: config.swap.max_component_size,
                follow: config.follow,
            })
            .await?,
        )),
        None => None,
    };
    let (runtime, component) = match &store {
        Some(store) => load_release_at_start(runtime, store, config).await?,
        None => (runtime, None),
    };
    let (runtime, component) = match component {
        Some(component) => (runtime, component),
        None => {
            let candidate = source::fetch_initial(&config.component, &watch_config(config)).await?;
            if let Some(store) = &store
                && registry::Artifact::detect(&candidate.bytes) == registry::Artifact::Wasm
            {
                store.seed_with(candidate.clone());
            }
            let (runtime, loaded) =
                load_initial(runtime, candidate, config, config.allow_precompiled).await?;
            (runtime, loaded?)
        }
    };
    tracing::info!(
        source = %component.source,
        sha256 = %component.sha256,
        size = component.size,
        load_ms = component.load_time.as_millis() as u64,
        startup_ms = started.elapsed().as_millis() as u64,
        world = component.handler.world(),
        "loaded component {} from {} in {} ms",
        component.version_header.to_str().unwrap_or_default(),
        component.source,
        component.load_time.as_millis()
    );
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty());
    let registry = Registry::new(component, config.swap.keep_versions);
    Ok(App::new(runtime, registry, project, config.swap.clone(), config.admin_token.clone())
        .with_store(store)
        .with_thresholds(config.thresholds))
}

/// The store's release, compiled, for a new instance; `None` when the store has no release yet
/// or does not answer at the first attempt (then `--component` serves, with a warning: a store
/// outage must not stop a fleet from scaling out, and every request re-checks the store before
/// it is routed once `--max-staleness` has passed). A release the store names but this instance
/// cannot serve (an unreadable manifest, a component missing, refused or not what its name says)
/// is never replaced by another application: the instance does not become ready (the port stays
/// unbound) and tries again every poll, saying why. A bucket that does not exist is an error.
async fn load_release_at_start(
    mut runtime: Runtime,
    store: &Store,
    config: &ServeConfig,
) -> anyhow::Result<(Runtime, Option<registry::ActiveComponent>)> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let read = tokio::time::timeout(config.fetch_timeout, store::start::read_release(store)).await;
        let problem = match read {
            Ok(Ok(store::start::AtStart::Release { candidate, generation })) => {
                // Never precompiled from the store, as from any swap source (see DESIGN.md).
                let (back, loaded) = load_initial(runtime, candidate, config, false).await?;
                runtime = back;
                match loaded {
                    Ok(loaded) => {
                        store.started_on(generation);
                        return Ok((runtime, Some(loaded)));
                    }
                    Err(error) => format!("{error:#}"),
                }
            }
            Ok(Ok(store::start::AtStart::NoRelease)) => {
                tracing::info!(store = %store.location, "the release store has no release yet; serving `{}` until the first push", config.component);
                return Ok((runtime, None));
            }
            Ok(Err(store::start::StartError::NoBucket(bucket))) => anyhow::bail!(
                "the release store's bucket `gs://{bucket}` does not exist: create it (`gcloud storage buckets create gs://{bucket}`) or correct `--store`"
            ),
            Ok(Err(store::start::StartError::Unusable(error))) => format!("{error:#}"),
            Ok(Err(store::start::StartError::Unreachable(error))) if attempts == 1 => {
                tracing::warn!(store = %store.location, "cannot read the release store at start, serving `{}` and following the store once it answers (requests re-check it first): {error}", config.component);
                return Ok((runtime, None));
            }
            Ok(Err(store::start::StartError::Unreachable(error))) => error.to_string(),
            Err(_) if attempts == 1 => {
                tracing::warn!(store = %store.location, "the release store did not answer within `--fetch-timeout` at start, serving `{}` and following it once it answers (requests re-check it first)", config.component);
                return Ok((runtime, None));
            }
            Err(_) => "the release store did not answer within `--fetch-timeout`".to_string(),
        };
        let retry = source::backoff(config.poll_interval, attempts);
        tracing::error!(
            store = %store.location,
            attempts,
            retry_in_ms = retry.as_millis() as u64,
            "not ready: the release store names a release this instance cannot serve, and it will not serve another (retrying in {retry:?}): {problem}"
        );
        store.update_status(|status| {
            status.release_problem = Some(store::ErrorRecord { at: store::now_rfc3339(), message: problem });
        });
        tokio::time::sleep(retry).await;
    }
}

/// Checks and compiles the start-up candidate on a blocking thread; the runtime comes back
/// either way, the component only if it passed.
async fn load_initial(
    runtime: Runtime,
    candidate: swap::Candidate,
    config: &ServeConfig,
    allow_precompiled: bool,
) -> anyhow::Result<(Runtime, anyhow::Result<registry::ActiveComponent>)> {
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&candidate.bytes));
    if let Err(rejection) = swap::check_policy(&config.swap, &candidate, &sha256) {
        let error = anyhow::Error::new(rejection)
            .context(format!("cannot serve the component from `{}`", candidate.source));
        return Ok((runtime, Err(error)));
    }
    Ok(tokio::task::spawn_blocking(move || {
        let component =
            load_component(&runtime, &candidate.bytes, sha256, candidate.source.clone(), allow_precompiled)
                .with_context(|| format!("cannot serve the component from `{}`", candidate.source));
        (runtime, component)
    })
    .await?)
}

fn watch_config(config: &ServeConfig) -> source::WatchConfig {
    source::WatchConfig {
        poll_interval: config.poll_interval,
        fetch_timeout: config.fetch_timeout,
        max_component_size: config.swap.max_component_size,
        storage: config.storage.clone(),
        allow_precompiled: config.allow_precompiled,
    }
}

/// The background tasks that bring new versions: aborted when dropped.
pub struct Watchers(Vec<tokio::task::JoinHandle<()>>);

impl Watchers {
    pub fn abort(&self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Starts the release's controller (canary rollbacks and steps) and following the release store
/// (and writing heartbeats), or else watching the component's source for new versions.
pub fn start_watching(app: &Arc<App>, config: &ServeConfig) -> Option<Watchers> {
    let mut tasks = vec![tokio::spawn(rollout::run(app.clone()))];
    if let Some(store) = &app.store {
        tasks.push(tokio::spawn(store::follow::run(app.clone(), store.clone())));
        tasks.push(tokio::spawn(store::heartbeat::run(app.clone(), store.clone())));
    } else if let Some(task) = source::spawn_watcher(app.clone(), &config.component, watch_config(config)) {
        tasks.push(task);
    }
    Some(Watchers(tasks))
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
    let watchers = start_watching(&app, &config);
    server::run(listener, app.clone(), shutdown::signal(), config.shutdown_grace).await?;
    drop(watchers);
    if let Some(store) = &app.store {
        store.leave().await;
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
