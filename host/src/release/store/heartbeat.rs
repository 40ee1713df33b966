//! The fleet view: every instance writes `instances/<id>.json` every `--heartbeat-interval` (and
//! at once after a swap or a rejection); [`fleet`] reads them back: an instance heard from within
//! three intervals is awake, one silent longer is asleep (frozen between requests, or late) until
//! `--fleet-forget-after`; one that stops gracefully deletes its heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Release, Store, now_rfc3339};
use crate::release::rollout::Rollout;
use crate::serve::metrics::ServeMetrics;
use crate::util::gcs::{GcsError, ObjectMeta};
use crate::versions::Weight;
use crate::versions::metrics::Totals;

/// An instance not heard from in this many intervals is asleep (or gone, after
/// `--fleet-forget-after`).
const LIVE_INTERVALS: u32 = 3;

/// Most heartbeats the fleet view reads (the newest), and how many at once.
pub const MAX_FLEET_READ: usize = 500;
const READ_CONCURRENCY: usize = 16;

/// Longest text kept from a heartbeat's fields in the fleet view, and most versions.
const MAX_FIELD_CHARS: usize = 500;
const MAX_VERSIONS: usize = 8;

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
    /// Its `--max-staleness`: past it, the instance re-checks the store before it routes.
    #[serde(default)]
    pub max_staleness_s: Option<f64>,
    /// How old its view of the release was when it wrote this (`None`: never confirmed).
    #[serde(default)]
    pub confirmed_age_s: Option<f64>,
}

impl Heartbeat {
    /// The heartbeat with its free-form fields cut to a bounded size (another instance wrote
    /// it: a view of many must stay small).
    fn bounded(mut self) -> Heartbeat {
        let cut = |text: &mut String| {
            if text.chars().count() > MAX_FIELD_CHARS {
                *text = text.chars().take(MAX_FIELD_CHARS).chain(['…']).collect();
            }
        };
        for text in [&mut self.instance, &mut self.active.sha256, &mut self.active.version, &mut self.at] {
            cut(text);
        }
        for text in
            [&mut self.revision, &mut self.service, &mut self.manifest_generation, &mut self.store_error]
                .into_iter()
                .flatten()
        {
            cut(text);
        }
        for value in [&mut self.last_swap, &mut self.last_rejection].into_iter().flatten() {
            if value.to_string().len() > MAX_FIELD_CHARS * 2 {
                *value = Value::String("(too large to show)".into());
            }
        }
        if self.versions.len() > MAX_VERSIONS {
            self.versions = std::mem::take(&mut self.versions).into_iter().take(MAX_VERSIONS).collect();
        }
        if let Some(canary) = &mut self.canary {
            cut(&mut canary.sha256);
        }
        self
    }
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
pub async fn run(rollout: Arc<Rollout>, store: Arc<Store>, served: ServeMetrics) {
    loop {
        let heartbeat =
            serde_json::to_vec(&current(&rollout, &store, &served)).expect("a heartbeat serializes");
        if let Err(error) = store.put_heartbeat(&heartbeat).await {
            rollout.gate().metrics().store_errors.inc();
            tracing::warn!(store = %store.location, "cannot write this instance's heartbeat (retrying in {:?}): {error}", store.heartbeat_interval);
        }
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            () = tokio::time::sleep(store.heartbeat_interval.saturating_sub(MIN_GAP)) => {}
            () = store.heartbeat_now.notified() => {}
        }
    }
}

fn current(rollout: &Rollout, store: &Store, served: &ServeMetrics) -> Heartbeat {
    let active = rollout.gate().versions().active();
    let canary = rollout.gate().versions().canary();
    let versions = std::iter::once(active.version())
        .chain(canary.as_ref().map(|c| c.component.version()))
        .map(|version| (version.to_string(), rollout.metrics().totals(version)))
        .collect();
    let status = store.status();
    let last_swap = (rollout.gate().versions().swap_count() > 0).then(
        || serde_json::json!({ "at": crate::util::time::rfc3339(active.loaded_at), "sha256": active.sha256 }),
    );
    let last_rejection = rollout
        .gate()
        .versions()
        .last_rejection()
        .map(|r| serde_json::json!({ "at": r.at, "sha256": r.sha256, "reason": r.reason }));
    // A poll's error while polls fail, else why the store's release is not applied here.
    let store_error = status.current_error().map(|e| e.message.clone());
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
        requests: served.responses_total(),
        errors: served.server_errors_total(),
        at: now_rfc3339(),
        interval_s: store.heartbeat_interval.as_secs_f64(),
        canary: canary.as_ref().map(|c| CanaryBeat { sha256: c.component.sha256.clone(), weight: c.weight }),
        versions,
        max_staleness_s: Some(store.freshness.policy().max_age.as_secs_f64()),
        confirmed_age_s: store.freshness.age().map(|age| age.as_secs_f64()),
    }
}

/// The fleet as the store sees it: the release and every instance heard from within
/// `--fleet-forget-after`, awake or asleep.
pub async fn fleet(store: &Arc<Store>) -> Result<Value, GcsError> {
    Ok(view(store, &live(store).await?))
}

/// What the fleet view reads from the store.
pub struct Fleet {
    /// The release (`None`: no manifest, or one that cannot be read: see `manifest_error`).
    pub release: Option<Release>,
    pub generation: i64,
    pub manifest_error: Option<String>,
    /// Every instance heard from within `--fleet-forget-after`, by instance name.
    pub instances: Vec<Seen>,
    /// Heartbeats not read: past [`MAX_FLEET_READ`], newest kept.
    pub omitted: usize,
    /// Heartbeats that could not be read or parsed.
    pub unreadable: usize,
}

/// One instance's last heartbeat.
pub struct Seen {
    /// How long ago it was written.
    pub age: Duration,
    /// Silent for more than three of its heartbeat intervals: frozen between requests (Cloud
    /// Run's request-based billing), starved of CPU, or gone without leaving.
    pub asleep: bool,
    pub heartbeat: Heartbeat,
}

impl Seen {
    /// Asleep and bound to re-check the store before it serves again: silent for longer than
    /// its `--max-staleness`, so its view is stale by the time it wakes.
    pub fn rechecks_first(&self) -> bool {
        self.asleep && self.heartbeat.max_staleness_s.is_some_and(|bound| self.age.as_secs_f64() > bound)
    }
}

/// The release, its generation and every instance's heartbeat heard from within
/// `--fleet-forget-after`: at most [`MAX_FLEET_READ`] of them (the newest), read
/// [`READ_CONCURRENCY`] at a time.
pub async fn live(store: &Arc<Store>) -> Result<Fleet, GcsError> {
    let (release, generation, manifest_error) = match store.current().await {
        Ok((release, generation)) => (release, generation, None),
        // The fleet stays visible when the manifest is over the limit.
        Err(GcsError::TooLarge { what, size, limit }) => {
            (None, 0, Some(format!("the manifest `{what}` is {size} bytes, over the {limit}-byte limit")))
        }
        Err(error) => return Err(error),
    };
    let now = SystemTime::now();
    let mut listed: Vec<(Duration, ObjectMeta)> = store
        .heartbeats()
        .await?
        .into_iter()
        .map(|meta| {
            let age =
                meta.updated.as_deref().and_then(parse_rfc3339).and_then(|at| now.duration_since(at).ok());
            // A clock a little ahead of ours reads as age 0.
            (age.unwrap_or(Duration::ZERO), meta)
        })
        .filter(|(age, _)| *age <= store.forget_after)
        .collect();
    listed.sort_by_key(|(age, _)| *age);
    let omitted = listed.len().saturating_sub(MAX_FLEET_READ);
    listed.truncate(MAX_FLEET_READ);
    let permits = Arc::new(tokio::sync::Semaphore::new(READ_CONCURRENCY));
    let mut reads = tokio::task::JoinSet::new();
    for (age, meta) in listed {
        let (store, permits) = (store.clone(), permits.clone());
        reads.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (age, store.read_heartbeat(&meta).await)
        });
    }
    let mut instances = Vec::new();
    let mut unreadable = 0;
    while let Some(read) = reads.join_next().await {
        let Ok((age, bytes)) = read else { continue };
        // A heartbeat deleted between the list and the read is an instance that just left.
        let Ok(bytes) = bytes else { continue };
        let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&bytes) else {
            unreadable += 1;
            continue;
        };
        let interval = Duration::try_from_secs_f64(heartbeat.interval_s).unwrap_or(Duration::ZERO);
        let asleep = age > interval.max(store.heartbeat_interval) * LIVE_INTERVALS;
        instances.push(Seen { age, asleep, heartbeat: heartbeat.bounded() });
    }
    instances.sort_by(|a, b| a.heartbeat.instance.cmp(&b.heartbeat.instance));
    Ok(Fleet { release, generation, manifest_error, instances, omitted, unreadable })
}

fn view(store: &Store, fleet: &Fleet) -> Value {
    let stable = fleet.release.as_ref().map(|r| r.manifest.stable_sha256().to_string());
    let serves = |seen: &Seen| stable.as_deref() == Some(seen.heartbeat.active.sha256.as_str());
    let rejected = |seen: &Seen| {
        !serves(seen)
            && seen.heartbeat.last_rejection.as_ref().and_then(|r| r["sha256"].as_str()) == stable.as_deref()
    };
    let rows: Vec<Value> = fleet
        .instances
        .iter()
        .map(|seen| {
            let h = &seen.heartbeat;
            let state = match () {
                () if seen.asleep => "asleep",
                () if serves(seen) => "serving",
                () if rejected(seen) => "rejected",
                () => "behind",
            };
            serde_json::json!({
                "instance": h.instance,
                "revision": h.revision,
                "sha256": h.active.sha256,
                "version": h.active.version,
                "state": state,
                "age_s": (seen.age.as_secs_f64() * 10.0).round() / 10.0,
                "rechecks_before_serving": seen.rechecks_first(),
                "manifest_generation": h.manifest_generation,
                "last_swap": h.last_swap,
                "last_rejection": h.last_rejection,
                "store_error": h.store_error,
                "requests": h.requests,
                "errors": h.errors,
                "canary": h.canary,
                "versions": h.versions,
                "serves_release": serves(seen),
            })
        })
        .collect();
    let count = |state: &str| rows.iter().filter(|r| r["state"] == state).count();
    let awake_serve = fleet.instances.iter().filter(|s| !s.asleep).all(serves);
    let asleep_recheck = fleet.instances.iter().filter(|s| s.asleep).all(Seen::rechecks_first);
    let converged = stable.is_some() && !rows.is_empty() && awake_serve && asleep_recheck;
    serde_json::json!({
        "store": store.location.to_string(),
        "manifest": fleet.release.as_ref().map(|r| &r.manifest),
        "manifest_generation": (fleet.generation > 0).then(|| fleet.generation.to_string()),
        "manifest_error": fleet.manifest_error,
        "heartbeat_interval_s": store.heartbeat_interval.as_secs_f64(),
        "forget_after_s": store.forget_after.as_secs_f64(),
        "converged": converged,
        "counts": {
            "serving": count("serving"),
            "behind": count("behind"),
            "rejected": count("rejected"),
            "asleep": count("asleep"),
            "asleep_rechecking": fleet.instances.iter().filter(|s| s.rechecks_first()).count(),
        },
        "omitted": fleet.omitted,
        "unreadable": fleet.unreadable,
        "instances": rows,
    })
}

pub(super) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
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
