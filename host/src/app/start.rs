//! Start-up and the serve command: the runtime, the initial component (from the release store or
//! `--component`), the background tasks that bring new versions, and the listener.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::app::App;
use crate::app::config::ServeConfig;
use crate::app::metrics::Metrics;
use crate::engine::runtime::{Runtime, RuntimeConfig};
use crate::release::gate as swap;
use crate::release::store::{self, Store, StoreSettings};
use crate::release::{rollout, source};
use crate::serve::server;
use crate::util::shutdown;
use crate::util::traces::{Platform, Traces};
use crate::versions::registry::{self, Registry};

/// How long the spans still queued at exit may take to be sent.
const TRACES_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Builds the runtime and loads the initial component through the same checks a swap makes:
/// with `--store`, the store's release (or `--component` until there is one).
pub async fn load_app(config: &ServeConfig) -> anyhow::Result<Arc<App>> {
    let started = Instant::now();
    let metrics = Metrics::new();
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
                metrics: metrics.release.clone(),
            })
            .await?,
        )),
        None => None,
    };
    let traces = start_traces(config, store.as_deref(), &metrics).await?;
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        limits: config.limits.clone(),
        guest_env: config.guest_env.clone(),
        allow_outbound: config.allow_outbound.clone(),
        reuse: config.reuse,
        traces,
    })?);
    let component = match &store {
        Some(store) => load_release_at_start(&runtime, store, config).await?,
        None => None,
    };
    let component = match component {
        Some(component) => component,
        None => {
            let candidate =
                source::fetch_initial(&config.component, &watch_config(config, Arc::default())).await?;
            if let Some(store) = &store
                && registry::Artifact::detect(candidate.bytes()) == registry::Artifact::Wasm
            {
                store.seed_with(candidate.clone());
            }
            swap::load_initial(&runtime, &config.swap, candidate, config.allow_precompiled).await?
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
    Ok(App::new(runtime, registry, metrics, store, config, project))
}

/// The tracer when `OTEL_EXPORTER_OTLP_*` names a collector; its spans carry Cloud Run's service
/// and revision and, on Cloud Run (`K_SERVICE` set), this instance's id (the store's, else the
/// metadata server's) and region (the metadata server's). Off Cloud Run the metadata server is
/// not asked: a laptop has none, and each question would wait its 2 s timeout.
async fn start_traces(
    config: &ServeConfig,
    store: Option<&Store>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<Traces>>> {
    let Some(traces) = &config.traces else { return Ok(None) };
    let mut platform = Platform::from_env(|key| std::env::var(key).ok());
    platform.instance = store.map(|store| store.instance.clone());
    if let Some(host) = config.storage.metadata_host.as_deref().filter(|_| platform.is_cloud_run()) {
        let instance = async {
            match platform.instance.clone() {
                Some(instance) => Some(instance),
                None => crate::util::gcs::auth::instance_id(host).await,
            }
        };
        let region = crate::util::gcs::auth::instance_region(host);
        (platform.instance, platform.region) = tokio::join!(instance, region);
    }
    Traces::start(traces, &platform, metrics.traces.clone()).map(Some)
}

/// The store's release, compiled, for a new instance; `None` when the store has no release yet
/// or does not answer at the first attempt (then `--component` serves, with a warning: a store
/// outage must not stop a fleet from scaling out, and every request re-checks the store before
/// it is routed once `--max-staleness` has passed). A release the store names but this instance
/// cannot serve (an unreadable manifest, a component missing, refused or not what its name says)
/// is never replaced by another application: the instance does not become ready (the port stays
/// unbound) and tries again every poll, saying why. A bucket that does not exist is an error.
async fn load_release_at_start(
    runtime: &Arc<Runtime>,
    store: &Store,
    config: &ServeConfig,
) -> anyhow::Result<Option<registry::ActiveComponent>> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let read = tokio::time::timeout(config.fetch_timeout, store::start::read_release(store)).await;
        let problem = match read {
            Ok(Ok(store::start::AtStart::Release { candidate, generation })) => {
                // Never precompiled from the store, as from any swap source (see DESIGN.md).
                match swap::load_initial(runtime, &config.swap, candidate, false).await {
                    Ok(loaded) => {
                        store.started_on(generation);
                        return Ok(Some(loaded));
                    }
                    Err(error) => format!("{error:#}"),
                }
            }
            Ok(Ok(store::start::AtStart::NoRelease)) => {
                tracing::info!(store = %store.location, "the release store has no release yet; serving `{}` until the first push", config.component);
                return Ok(None);
            }
            Ok(Err(store::start::StartError::NoBucket(bucket))) => anyhow::bail!(
                "the release store's bucket `gs://{bucket}` does not exist: create it (`gcloud storage buckets create gs://{bucket}`) or correct `--store`"
            ),
            Ok(Err(store::start::StartError::Unusable(error))) => format!("{error:#}"),
            Ok(Err(store::start::StartError::Unreachable(error))) if attempts == 1 => {
                tracing::warn!(store = %store.location, "cannot read the release store at start, serving `{}` and following the store once it answers (requests re-check it first): {error}", config.component);
                return Ok(None);
            }
            Ok(Err(store::start::StartError::Unreachable(error))) => error.to_string(),
            Err(_) if attempts == 1 => {
                tracing::warn!(store = %store.location, "the release store did not answer within `--fetch-timeout` at start, serving `{}` and following it once it answers (requests re-check it first)", config.component);
                return Ok(None);
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
            status.release_problem =
                Some(store::ErrorRecord { at: crate::util::time::now_rfc3339(), message: problem });
        });
        tokio::time::sleep(retry).await;
    }
}

fn watch_config(config: &ServeConfig, health: Arc<source::health::SourceHealth>) -> source::WatchConfig {
    source::WatchConfig {
        poll_interval: config.poll_interval,
        fetch_timeout: config.fetch_timeout,
        max_component_size: config.swap.max_component_size,
        storage: config.storage.clone(),
        registry: config.registry.clone(),
        health,
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
    let mut tasks = vec![tokio::spawn(rollout::run(app.rollout.clone()))];
    if let Some(store) = &app.store {
        tasks.push(tokio::spawn(store::follow::run(app.rollout.clone(), store.clone())));
        tasks.push(tokio::spawn(store::heartbeat::run(
            app.rollout.clone(),
            store.clone(),
            app.metrics.serve.clone(),
        )));
    } else if let Some(task) = source::spawn_watcher(
        app.gate.clone(),
        &config.component,
        watch_config(config, app.source_health.clone()),
    ) {
        tasks.push(task);
    }
    Some(Watchers(tasks))
}

/// `echo-host serve`: load, bind only once ready (Cloud Run's startup probe is the port), serve
/// until SIGTERM/SIGINT, drain.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let app = load_app(&config).await?;
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
    if let Some(traces) = app.runtime.stores().traces_handle() {
        // The last spans, sent within a bound: a collector that is gone must not hold the exit.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown(TRACES_FLUSH)).await;
    }
    tracing::info!("stopped");
    Ok(())
}
