//! Layer 5, `app`: the composition root. [`App`] holds each layer's state and is the serve
//! layer's [`Host`]; the admin API, the status page and start-up live beside it.

pub mod admin;
pub mod answers;
pub mod config;
pub mod metrics;
pub mod release_api;
pub mod start;
pub mod status;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use crate::app::config::ServeConfig;
use crate::app::metrics::Metrics;
use crate::engine::limits::Limits;
use crate::engine::runtime::Runtime;
use crate::release::gate::{Gate, SwapPolicy};
use crate::release::rollout::Rollout;
use crate::release::store::Store;
use crate::serve::exchange::{Observer, RequestBody, RequestContext, ResponseBody};
use crate::serve::host::{BoxFuture, Host};
use crate::serve::serving::Serving;
use crate::util::freshness::Verdict;
use crate::versions::metrics::Ending;
use crate::versions::registry::{ActiveComponent, Registry};
use crate::versions::{Role, Routed};

/// Every layer's state, shared by every connection and request.
pub struct App {
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    /// What the serve layer shares among connections: limits, permits, request ids.
    pub serving: Arc<Serving>,
    /// The validation gate every new version passes, and what publishing one touches.
    pub gate: Arc<Gate>,
    pub started_at: SystemTime,
    /// How candidates are checked before a swap.
    pub swap_policy: SwapPolicy,
    /// The admin API's bearer token; `None` means the API does not exist.
    pub admin_token: Option<String>,
    /// The fleet's release store (`--store`), when there is one.
    pub store: Option<Arc<Store>>,
    /// The release's canary: routing, analysis, automatic rollback and steps.
    pub rollout: Arc<Rollout>,
    /// How the admin API reaches registries for `?from=oci://…`.
    pub oci: crate::util::oci::RegistryConfig,
    /// The `--component` watcher's failing polls, for `info`.
    pub source_health: Arc<crate::release::source::health::SourceHealth>,
}

impl App {
    /// Wires the layers together around the start-up version in `registry`.
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Registry,
        metrics: Metrics,
        store: Option<Arc<Store>>,
        config: &ServeConfig,
        project_id: Option<String>,
    ) -> Arc<Self> {
        let registry = Arc::new(registry);
        let serving = Arc::new(Serving::new(
            runtime.stores().clone(),
            metrics.serve.clone(),
            metrics.versions.cost.clone(),
            project_id,
        ));
        let gate = Arc::new(Gate::new(
            runtime.clone(),
            registry.clone(),
            serving.clone(),
            config.swap.clone(),
            metrics.delivery.clone(),
            store.as_ref().map(|store| store.heartbeat_now.clone()),
        ));
        let rollout =
            Arc::new(Rollout::new(config.thresholds, gate.clone(), metrics.versions.clone(), store.clone()));
        Arc::new(Self {
            swap_policy: config.swap.clone(),
            admin_token: config.admin_token.clone(),
            serving,
            gate,
            runtime,
            registry,
            metrics,
            started_at: SystemTime::now(),
            store,
            rollout,
            oci: config.registry.clone(),
            source_health: Arc::default(),
        })
    }

    /// A swap or a rejection happened: the heartbeat says so now rather than at its next tick.
    pub fn tell_fleet(&self) {
        self.gate.tell_fleet();
    }

    pub fn limits(&self) -> &Limits {
        self.runtime.limits()
    }
}

impl Observer for App {
    fn observe(&self, served: &ActiveComponent, role: Role, ending: Ending, seconds: f64) {
        self.rollout.observe(served, role, ending, seconds);
    }
}

impl Host for App {
    fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    fn versions(&self) -> &Registry {
        &self.registry
    }

    fn route(&self, headers: &HeaderMap) -> Routed {
        self.rollout.route(headers)
    }

    fn release_check(&self) -> Option<BoxFuture<'static, bool>> {
        let store = self.store.as_ref()?;
        if store.freshness.is_fresh() {
            return None;
        }
        let (store, rollout) = (store.clone(), self.rollout.clone());
        Some(Box::pin(async move {
            let check = || crate::release::store::follow::recheck(rollout, store.clone());
            match store.freshness.ensure(check).await {
                Verdict::Fresh | Verdict::Rechecked => true,
                Verdict::Unconfirmed => {
                    store.metrics.unconfirmed.inc();
                    true
                }
                Verdict::Refused => false,
            }
        }))
    }

    fn owns(&self, path: &str) -> bool {
        admin::owns(path)
    }

    fn endpoint<'a>(
        &'a self,
        req: Request<RequestBody<Incoming>>,
        ctx: &'a RequestContext,
    ) -> BoxFuture<'a, Response<ResponseBody>> {
        Box::pin(admin::handle(self, req, ctx))
    }
}
