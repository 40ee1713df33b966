//! The release as `GET admin/release` (the CLI's `release status` and the status page) shows it:
//! versions and weights, per-version counts (this instance's window and totals, the fleet's from
//! the heartbeats), a per-version series for the chart, the last automatic decision, the history
//! and the instances.

use serde_json::{Value, json};

use crate::app::App;
use crate::release::rollout::analysis::LATENCY_QUANTILE;
use crate::release::store::heartbeat;
use crate::versions::metrics::Totals;
use crate::versions::registry::ActiveComponent;

/// The chart's buckets: 60 of 10 s, the last ten minutes.
const BUCKET_SECONDS: u64 = 10;
const BUCKETS: usize = 60;

pub async fn status(app: &App) -> Value {
    let (manifest, generation) = app.rollout.release();
    let stable = app.registry.active();
    let plan = manifest.as_ref().and_then(|m| m.canary.clone());
    let routed = app.registry.canary();
    let canary = plan.as_ref().and_then(|p| app.registry.find(p.sha256()));
    let (instances, fleet, fleet_error) = fleet(app).await;
    let canary_weight = plan.as_ref().map(|p| p.weight.percent()).unwrap_or(0.0);
    let mut versions = vec![version_row(app, &stable, "stable", 100.0 - canary_weight, &fleet)];
    if let Some(component) = &canary {
        versions.push(version_row(app, component, "canary", canary_weight, &fleet));
    }
    // A canary rolled back, aborted or promoted: its failures stay on the chart.
    let former = app
        .registry
        .former_canary()
        .filter(|f| f.sha256 != stable.sha256 && canary.as_ref().is_none_or(|c| c.sha256 != f.sha256));
    if let Some(component) = &former {
        versions.push(version_row(app, component, "former_canary", 0.0, &fleet));
    }
    let series: serde_json::Map<String, Value> = std::iter::once(&stable)
        .chain(canary.as_ref())
        .chain(former.as_ref())
        .map(|component| {
            let (requests, failures) = component.window.series(BUCKET_SECONDS, BUCKETS);
            (component.version().to_string(), json!({ "requests": requests, "failures": failures }))
        })
        .collect();
    json!({
        "store": app.store.as_ref().map(|s| s.location.to_string()),
        "manifest_generation": (app.store.is_some() && generation > 0).then(|| generation.to_string()),
        "stable": { "sha256": stable.sha256, "version": stable.version() },
        "canary": plan.as_ref().map(|p| json!({
            "sha256": p.sha256(),
            "version": format!("sha256:{}", &p.sha256()[..12]),
            "weight": p.weight,
            "routing": routed.as_ref().is_some_and(|r| r.component.sha256 == p.sha256()),
            "steps": p.steps,
            "step_interval_ms": p.step_interval_ms,
            "step_started_at": p.step_started_at,
            "started_at": p.started_at,
            "started_by": p.started_by,
        })),
        "thresholds": app.rollout.thresholds,
        "versions": versions,
        "series": { "bucket_seconds": BUCKET_SECONDS, "buckets": BUCKETS, "versions": series },
        "last_decision": app.rollout.last_decision(),
        "history": manifest.as_ref().map(|m| json!(m.history)).unwrap_or(json!([])),
        "instances": instances,
        "fleet_error": fleet_error,
        "last_rejection": app.registry.last_rejection(),
    })
}

/// What `info` says of the release: the canary routed to, and each version's counts here.
pub fn summary(app: &App) -> Value {
    let stable = app.registry.active();
    let canary = app.registry.canary();
    let versions: serde_json::Map<String, Value> = std::iter::once(&stable)
        .chain(canary.as_ref().map(|c| &c.component))
        .map(|c| (c.version().to_string(), json!(app.metrics.versions.totals(c.version()))))
        .collect();
    json!({
        "canary": canary.as_ref().map(|c| json!({
            "sha256": c.component.sha256,
            "version": c.component.version(),
            "weight": c.weight,
        })),
        "versions": versions,
        "last_decision": app.rollout.last_decision(),
    })
}

fn version_row(
    app: &App,
    component: &ActiveComponent,
    role: &str,
    weight: f64,
    fleet: &std::collections::BTreeMap<String, Totals>,
) -> Value {
    let span = app.rollout.thresholds.window;
    let window = component.window.counts(span);
    let p95 = component.window.latencies(span).quantile(LATENCY_QUANTILE);
    let totals = app.metrics.versions.totals(component.version());
    json!({
        "sha256": component.sha256,
        "version": component.version(),
        "role": role,
        "weight": (weight * 10.0).round() / 10.0,
        "window": {
            "requests": window.requests,
            "failures": window.failures,
            "failure_rate": (window.rate() * 1000.0).round() / 10.0,
            "p95_ms": p95.map(|s| (s * 10_000.0).round() / 10.0),
        },
        "totals": totals,
        "fleet": fleet.get(component.version()).copied().unwrap_or(totals),
        "cost": component.cost.summary(),
    })
}

type Fleet = (Vec<Value>, std::collections::BTreeMap<String, Totals>, Option<String>);

/// The instances and the per-version sums of their heartbeats (with a store); else this one.
async fn fleet(app: &App) -> Fleet {
    let mut sums = std::collections::BTreeMap::<String, Totals>::new();
    let Some(store) = &app.store else {
        let canary = app.registry.canary();
        let this = json!({
            "instance": "local",
            "sha256": app.registry.active().sha256,
            "canary": canary.as_ref().map(|c| &c.component.sha256),
            "canary_weight": canary.as_ref().map(|c| c.weight),
            "updated_at": crate::release::store::now_rfc3339(),
            "self": true,
        });
        return (vec![this], sums, None);
    };
    match heartbeat::live(store).await {
        Ok(fleet) => {
            let rows = fleet
                .instances
                .iter()
                .map(|seen| {
                    let beat = &seen.heartbeat;
                    for (version, totals) in &beat.versions {
                        sums.entry(version.clone()).or_default().add(totals);
                    }
                    json!({
                        "instance": beat.instance,
                        "sha256": beat.active.sha256,
                        "canary": beat.canary.as_ref().map(|c| &c.sha256),
                        "canary_weight": beat.canary.as_ref().map(|c| c.weight),
                        "updated_at": beat.at,
                        "asleep": seen.asleep,
                        "rechecks_before_serving": seen.rechecks_first(),
                        "self": beat.instance == store.instance,
                    })
                })
                .collect();
            (rows, sums, None)
        }
        Err(error) => (Vec::new(), sums, Some(format!("cannot read the fleet's heartbeats: {error}"))),
    }
}
