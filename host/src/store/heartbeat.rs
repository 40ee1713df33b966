//! The fleet view: every instance writes `instances/<id>.json` every `--heartbeat-interval` (and
//! at once after a swap or a rejection); [`fleet`] reads them back, keeping the instances heard
//! from within three intervals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Release, Store, now_rfc3339};
use crate::app::App;
use crate::gcs::GcsError;
use crate::rollout::Weight;
use crate::rollout::metrics::Totals;

/// An instance not heard from in this many intervals is not live.
const LIVE_INTERVALS: u32 = 3;

/// Heartbeats written at most this often, however many swaps happen.
const MIN_GAP: Duration = Duration::from_millis(200);

/// One instance's heartbeat, as written to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema: u32,
    pub instance: String,
    pub revision: Option<String>,
    pub service: Option<String>,
    pub active: ActiveVersion,
    pub manifest_generation: Option<String>,
    pub last_swap: Option<Value>,
    pub last_rejection: Option<Value>,
    pub store_error: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub at: String,
    pub interval_s: f64,
    /// The canary this instance routes to, if any.
    #[serde(default)]
    pub canary: Option<CanaryBeat>,
    /// Per version (`sha256:<12 hex>`): its counts since this instance started.
    #[serde(default)]
    pub versions: BTreeMap<String, Totals>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryBeat {
    pub sha256: String,
    pub weight: Weight,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActiveVersion {
    pub sha256: String,
    pub version: String,
}

/// Writes heartbeats until the task is dropped.
pub async fn run(app: Arc<App>, store: Arc<Store>) {
    loop {
        let heartbeat = serde_json::to_vec(&current(&app, &store)).expect("a heartbeat serializes");
        if let Err(error) = store.put_heartbeat(&heartbeat).await {
            app.metrics.store_errors.inc();
            tracing::warn!(store = %store.location, "cannot write this instance's heartbeat (retrying in {:?}): {error}", store.heartbeat_interval);
        }
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            () = tokio::time::sleep(store.heartbeat_interval.saturating_sub(MIN_GAP)) => {}
            () = store.heartbeat_now.notified() => {}
        }
    }
}

fn current(app: &App, store: &Store) -> Heartbeat {
    let active = app.registry.active();
    let canary = app.registry.canary();
    let versions = std::iter::once(active.version())
        .chain(canary.as_ref().map(|c| c.component.version()))
        .map(|version| (version.to_string(), app.metrics.versions.totals(version)))
        .collect();
    let status = store.status();
    let last_swap = (app.registry.swap_count() > 0).then(
        || serde_json::json!({ "at": crate::admin::rfc3339(active.loaded_at), "sha256": active.sha256 }),
    );
    let last_rejection = app
        .registry
        .last_rejection()
        .map(|r| serde_json::json!({ "at": r.at, "sha256": r.sha256, "reason": r.reason }));
    // An error is current only while polls fail.
    let store_error = status.last_error.filter(|_| status.consecutive_failures > 0).map(|e| e.message);
    Heartbeat {
        schema: 1,
        instance: store.instance.clone(),
        revision: std::env::var("K_REVISION").ok(),
        service: std::env::var("K_SERVICE").ok(),
        active: ActiveVersion {
            sha256: active.sha256.clone(),
            version: active.version_header.to_str().unwrap_or_default().to_string(),
        },
        manifest_generation: status.manifest_generation.map(|g| g.to_string()),
        last_swap,
        last_rejection,
        store_error,
        requests: app.metrics.responses_total(),
        errors: app.metrics.server_errors_total(),
        at: now_rfc3339(),
        interval_s: store.heartbeat_interval.as_secs_f64(),
        canary: canary.as_ref().map(|c| CanaryBeat { sha256: c.component.sha256.clone(), weight: c.weight }),
        versions,
    }
}

/// The fleet as the store sees it: the release and every live instance.
pub async fn fleet(store: &Arc<Store>) -> Result<Value, GcsError> {
    let (release, generation, instances) = live(store).await?;
    Ok(view(store, release.as_ref(), generation, &instances))
}

/// The release, its generation and every live instance's heartbeat with its age.
pub async fn live(
    store: &Arc<Store>,
) -> Result<(Option<Release>, i64, Vec<(Duration, Heartbeat)>), GcsError> {
    let (release, generation) = store.current().await?;
    let listed = store.heartbeats().await?;
    let now = SystemTime::now();
    let live_for = store.heartbeat_interval * LIVE_INTERVALS;
    let mut reads = tokio::task::JoinSet::new();
    for meta in listed {
        let age = meta.updated.as_deref().and_then(parse_rfc3339).and_then(|at| now.duration_since(at).ok());
        // A clock a little ahead of ours reads as age 0.
        let age = age.unwrap_or(Duration::ZERO);
        if age > live_for {
            continue;
        }
        let store = store.clone();
        reads.spawn(async move { (age, store.read_heartbeat(&meta).await) });
    }
    let mut instances = Vec::new();
    while let Some(read) = reads.join_next().await {
        let Ok((age, read)) = read else { continue };
        // A heartbeat deleted between the list and the read is an instance that just left.
        let Ok(bytes) = read else { continue };
        let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&bytes) else { continue };
        instances.push((age, heartbeat));
    }
    instances.sort_by(|a, b| a.1.instance.cmp(&b.1.instance));
    Ok((release, generation, instances))
}

fn view(
    store: &Store,
    release: Option<&Release>,
    generation: i64,
    instances: &[(Duration, Heartbeat)],
) -> Value {
    let stable = release.map(|r| r.manifest.stable_sha256().to_string());
    let rows: Vec<Value> = instances
        .iter()
        .map(|(age, h)| {
            serde_json::json!({
                "instance": h.instance,
                "revision": h.revision,
                "sha256": h.active.sha256,
                "version": h.active.version,
                "age_s": (age.as_secs_f64() * 10.0).round() / 10.0,
                "manifest_generation": h.manifest_generation,
                "last_swap": h.last_swap,
                "last_rejection": h.last_rejection,
                "store_error": h.store_error,
                "requests": h.requests,
                "errors": h.errors,
                "canary": h.canary,
                "versions": h.versions,
                "serves_release": stable.as_deref() == Some(h.active.sha256.as_str()),
            })
        })
        .collect();
    let converged = stable.is_some() && !rows.is_empty() && rows.iter().all(|r| r["serves_release"] == true);
    serde_json::json!({
        "store": store.location.to_string(),
        "manifest": release.map(|r| &r.manifest),
        "manifest_generation": (generation > 0).then(|| generation.to_string()),
        "heartbeat_interval_s": store.heartbeat_interval.as_secs_f64(),
        "converged": converged,
        "instances": rows,
    })
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_timestamps_parse() {
        let at = parse_rfc3339("2026-12-01T12:43:14.367608Z").unwrap();
        let epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(epoch.as_secs(), 1_796_128_994);
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
