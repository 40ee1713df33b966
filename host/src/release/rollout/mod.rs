//! Progressive delivery: a release of up to two versions, stable and a canary with its weight.
//! [`Rollout`] owns this instance's view of the release and what it does on its own: split
//! requests ([`crate::versions::route`]), judge the canary against stable ([`analysis`]) from
//! each version's [`crate::versions::window`], stop routing to a canary that is clearly worse
//! and write its rollback, step a healthy canary up. Changes go through the store's manifest
//! with a generation precondition ([`change`]); without a store, through this instance's own copy
//! of it.

pub mod analysis;
pub mod change;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::sync::Notify;

pub use crate::versions::Weight;
pub use crate::versions::{Role, Routed};
pub use analysis::{Thresholds, Verdict};

use crate::release::gate::Gate;
use crate::release::store::Store;
use crate::release::store::manifest::{Action, CanaryPlan, Counts, Decision, Manifest};
use crate::versions::latency::Latencies;
use crate::versions::metrics::Ending;
use crate::versions::metrics::VersionMetrics;
use crate::versions::registry::{ActiveComponent, CanarySlot};

/// How often the controller looks for a step that is due.
const TICK: Duration = Duration::from_millis(500);

/// This instance's part in the release.
pub struct Rollout {
    pub thresholds: Thresholds,
    /// Makes a kept version active, and holds the versions requests are split between.
    gate: Arc<Gate>,
    /// Per-version counts, and the canary's own.
    metrics: VersionMetrics,
    /// The fleet's release store (`--store`): where changes are written and who this instance is.
    store: Option<Arc<Store>>,
    /// The release as this instance last applied it (with a store: the manifest it followed;
    /// without: the release itself) and its generation.
    release: Mutex<Followed>,
    /// A canary this instance judged clearly worse: not routed to again while the release names
    /// it, and its rollback written by the controller.
    trip: Mutex<Option<Trip>>,
    /// Wakes the controller: a rollback to write.
    wake: Notify,
    /// Spreads requests without a key over the weight.
    sequence: AtomicU64,
}

#[derive(Default)]
struct Followed {
    /// The release applied whole, and its generation.
    manifest: Option<Manifest>,
    generation: i64,
    /// The newest generation routed on, whole or partly ([`Rollout::switch`]).
    routed: i64,
}

/// How much of a release [`Rollout::switch`] routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    /// Every version it names is compiled: requests are routed as it says.
    Whole,
    /// Not every version it names is compiled (yet): no canary, the active version serves.
    Partly,
    /// A newer release was routed on already: nothing changed.
    Outdated,
}

struct Trip {
    sha256: String,
    /// The plan's `started_at`: a new start of the same version is a new canary.
    plan: String,
    decision: Decision,
    written: bool,
}

impl Rollout {
    pub fn new(
        thresholds: Thresholds,
        gate: Arc<Gate>,
        metrics: VersionMetrics,
        store: Option<Arc<Store>>,
    ) -> Self {
        Self {
            thresholds,
            gate,
            metrics,
            store,
            release: Mutex::default(),
            trip: Mutex::new(None),
            wake: Notify::new(),
            sequence: AtomicU64::new(0),
        }
    }

    /// The gate versions pass to go live, and the versions it holds.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The release store this instance follows, when there is one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    fn followed(&self) -> MutexGuard<'_, Followed> {
        self.release.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tripped(&self) -> MutexGuard<'_, Option<Trip>> {
        self.trip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The release last applied here, and its generation.
    pub fn release(&self) -> (Option<Manifest>, i64) {
        let followed = self.followed();
        (followed.manifest.clone(), followed.generation)
    }

    /// The newest release generation requests are routed on (whole or partly).
    pub fn routed(&self) -> i64 {
        self.followed().routed
    }

    /// The version that serves a request with `headers`.
    pub fn route(&self, headers: &HeaderMap) -> Routed {
        let canary = self.gate.versions().canary();
        let routed = crate::versions::route::pick(
            self.gate.versions().active(),
            canary.as_deref(),
            headers,
            &self.sequence,
        );
        if routed.pin_ignored {
            self.metrics.pin_ignored.inc();
        }
        routed
    }

    /// Counts a request `served` answered and, when the canary failed it, judges the canary.
    pub fn observe(&self, served: &ActiveComponent, role: Role, ending: Ending, seconds: f64) {
        self.metrics.record(served.version(), ending, seconds);
        let duration = (ending != Ending::Other).then_some(seconds);
        served.window.record(ending.is_failure(), duration);
        if role != Role::Canary {
            return;
        }
        let Some(canary) = self.gate.versions().canary().filter(|c| c.component.sha256 == served.sha256)
        else {
            return;
        };
        canary.window.record(ending.is_failure(), duration);
        if !ending.is_failure() {
            return;
        }
        let (canary_counts, stable_counts) = self.window_counts(&canary);
        if let Verdict::Failing(reason) = analysis::judge(canary_counts, stable_counts, &self.thresholds) {
            self.stop_canary(&canary.component.sha256, &canary.plan, reason, canary_counts, stable_counts);
        }
    }

    /// The canary's (under its plan) and stable's counts over the analysis window.
    fn window_counts(&self, canary: &CanarySlot) -> (Counts, Counts) {
        let window = self.thresholds.window;
        (canary.window.counts(window), self.gate.versions().active().window.counts(window))
    }

    /// Both rules over the analysis window (failures first, then latency), with the counts.
    fn judge(&self, canary: &CanarySlot) -> (Verdict, Counts, Counts) {
        let (canary_counts, stable_counts) = self.window_counts(canary);
        let failures = analysis::judge(canary_counts, stable_counts, &self.thresholds);
        if let Verdict::Failing(_) = failures {
            return (failures, canary_counts, stable_counts);
        }
        let (slow, base) = self.window_latencies(canary);
        let verdict = match analysis::judge_latency(&slow, &base, &self.thresholds) {
            Verdict::Inconclusive => failures,
            latency => latency,
        };
        (verdict, canary_counts, stable_counts)
    }

    /// The canary's (under its plan) and stable's request durations over the analysis window.
    fn window_latencies(&self, canary: &CanarySlot) -> (Latencies, Latencies) {
        let window = self.thresholds.window;
        (canary.window.latencies(window), self.gate.versions().active().window.latencies(window))
    }

    /// The latency rule, at each tick of the controller (a slow canary fails no request to be
    /// judged at): stops routing to a canary clearly slower than stable.
    fn check_latency(&self) {
        if self.thresholds.max_latency_ratio == 0.0 {
            return;
        }
        let Some(canary) = self.gate.versions().canary() else { return };
        if let (Verdict::Failing(reason), canary_counts, stable_counts) = self.judge(&canary) {
            self.stop_canary(&canary.component.sha256, &canary.plan, reason, canary_counts, stable_counts);
        }
    }

    /// Stops routing to the canary at once (the first failing request to see it decides) and
    /// has the controller write the rollback.
    fn stop_canary(&self, sha256: &str, plan: &str, reason: String, canary: Counts, stable: Counts) {
        let decision = Decision {
            action: Action::AutoRollback,
            version: format!("sha256:{sha256}"),
            at: crate::release::store::now_rfc3339(),
            by: self.by(),
            reason,
            canary,
            stable,
        };
        {
            // Recorded before the canary leaves the routing, so the follower cannot put it back.
            let mut trip = self.tripped();
            if trip.as_ref().is_some_and(|t| t.sha256 == sha256 && t.plan == plan) {
                return;
            }
            *trip = Some(Trip {
                sha256: sha256.to_string(),
                plan: plan.to_string(),
                decision: decision.clone(),
                written: false,
            });
        }
        self.gate.versions().clear_canary(sha256);
        self.metrics.canary_weight.set(0);
        self.metrics.canary_rollbacks.inc();
        tracing::warn!(
            sha256,
            canary_requests = canary.requests,
            canary_failures = canary.failures,
            stable_requests = stable.requests,
            stable_failures = stable.failures,
            "rolled back canary `sha256:{}`, stable serves every request: {}",
            &sha256[..12.min(sha256.len())],
            decision.reason
        );
        self.gate.tell_fleet();
        self.wake.notify_one();
    }

    /// Makes the release's canary (or its absence) the one requests are split to. `component` is
    /// the canary's compiled version, already through the gate. A canary this instance rolled
    /// back is not routed to again. Without a store: the release is this instance's own.
    pub fn apply(&self, manifest: &Manifest, generation: i64, component: Option<Arc<ActiveComponent>>) {
        let mut followed = self.followed();
        followed.manifest = Some(manifest.clone());
        followed.generation = generation;
        followed.routed = followed.routed.max(generation);
        let plan = manifest.canary.as_ref().filter(|plan| !self.is_tripped(plan));
        self.route_canary(plan.zip(component));
    }

    /// Routes requests as the store's release `manifest` (generation `generation`) says, as far
    /// as the versions it names are held compiled: all of them, the whole release ([`Switched::Whole`],
    /// its stable made active under `source`); else no canary at all, and the active version
    /// serves until the release's stable is ready ([`Switched::Partly`]): a version the release
    /// no longer names never gets another request. A release older than one routed already
    /// changes nothing. Takes no lock a compile holds: a request may wait on it.
    pub fn switch(&self, manifest: &Manifest, generation: i64, source: String) -> Switched {
        let mut followed = self.followed();
        if generation < followed.routed {
            return Switched::Outdated;
        }
        followed.routed = generation;
        let stable = self.gate.versions().find(manifest.stable_sha256());
        let plan = manifest.canary.as_ref().filter(|plan| !self.is_tripped(plan));
        let canary = plan.map(|plan| self.gate.versions().find(plan.sha256()));
        // A canary other than the release's stops first: it never outlives its release.
        let keeps = |slot: &CanarySlot| plan.is_some_and(|p| p.sha256() == slot.component.sha256);
        if self.gate.versions().canary().is_some_and(|slot| !keeps(&slot)) {
            self.route_canary(None);
        }
        let stable = match stable {
            Some(stable) if !matches!(canary, Some(None)) => stable,
            _ => {
                self.route_canary(None);
                return Switched::Partly;
            }
        };
        if let Some(outcome) = self.gate.reactivate_now(&stable, source.clone()) {
            tracing::info!(sha256 = %outcome.sha256, previous_sha256 = %outcome.previous_sha256, "swapped to component {} from {source} (kept compiled)", outcome.version);
        }
        followed.manifest = Some(manifest.clone());
        followed.generation = generation;
        self.route_canary(plan.zip(canary.flatten()));
        Switched::Whole
    }

    /// Splits requests to `canary` at its plan's weight, or stops routing to any canary.
    fn route_canary(&self, canary: Option<(&CanaryPlan, Arc<ActiveComponent>)>) {
        let routed = match canary {
            Some((plan, component)) => {
                let current = self.gate.versions().canary();
                let same = current.as_ref().is_some_and(|c| {
                    c.component.sha256 == component.sha256
                        && c.weight == plan.weight
                        && c.plan == plan.started_at
                });
                if !same {
                    tracing::info!(sha256 = %component.sha256, weight = plan.weight.percent(), "routing {} of requests to canary {}", plan.weight, component.version());
                    self.gate.versions().set_canary(component, plan.weight, plan.started_at.clone());
                    self.gate.tell_fleet();
                }
                plan.weight.permille()
            }
            None => {
                if let Some(current) = self.gate.versions().canary()
                    && self.gate.versions().clear_canary(&current.component.sha256)
                {
                    tracing::info!(sha256 = %current.component.sha256, "no longer routing to canary {}", current.component.version());
                    self.gate.tell_fleet();
                }
                0
            }
        };
        self.metrics.canary_weight.set(i64::from(routed));
    }

    fn is_tripped(&self, plan: &CanaryPlan) -> bool {
        self.tripped().as_ref().is_some_and(|t| t.sha256 == plan.sha256() && t.plan == plan.started_at)
    }

    /// Who this instance is in a decision: `instance:<id>` (with a store) or `instance:local`.
    fn by(&self) -> String {
        match &self.store {
            Some(store) => format!("instance:{}", store.instance),
            None => "instance:local".to_string(),
        }
    }

    /// The last automatic decision: this instance's own, until the release records one.
    pub fn last_decision(&self) -> Option<Decision> {
        let pending = self.tripped().as_ref().filter(|t| !t.written).map(|t| t.decision.clone());
        pending.or_else(|| self.followed().manifest.as_ref().and_then(|m| m.last_decision.clone()))
    }
}

/// The controller: writes the rollbacks this instance decided, and steps a healthy canary up
/// when its step is due. Runs until the task is dropped.
pub async fn run(rollout: Arc<Rollout>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = rollout.wake.notified() => {}
        }
        rollout.check_latency();
        write_rollback(&rollout).await;
        step_up(&rollout).await;
    }
}

/// Writes the pending rollback into the release (once: a release that no longer names that
/// canary needs nothing). A store error is retried at the next tick.
async fn write_rollback(rollout: &Rollout) {
    let pending = rollout
        .tripped()
        .as_ref()
        .filter(|t| !t.written)
        .map(|t| (t.sha256.clone(), t.plan.clone(), t.decision.clone()));
    let Some((sha256, plan, decision)) = pending else { return };
    let result = change::automatic(rollout, |manifest| {
        // Another instance's rollback (or any change of canary) already took it out.
        manifest.canary.as_ref().filter(|c| c.sha256() == sha256 && c.started_at == plan)?;
        let mut next = manifest.clone();
        next.last_decision = Some(decision.clone());
        next.record(Action::AutoRollback, &decision.by, decision.at.clone(), Some(decision.reason.clone()));
        next.canary = None;
        Some(next)
    })
    .await;
    match result {
        Ok(written) => {
            if let Some(generation) = written {
                tracing::info!(
                    sha256,
                    generation,
                    "wrote the canary's rollback into the release (generation {generation})"
                );
            }
            // Only the trip written: another canary may have tripped meanwhile.
            if let Some(trip) = rollout.tripped().as_mut().filter(|t| t.sha256 == sha256 && t.plan == plan) {
                trip.written = true;
            }
        }
        Err(error) => tracing::warn!(sha256, "cannot write the canary's rollback yet (retrying): {error}"),
    }
}

/// Advances the canary to its next step when the step is due and it is not failing; the last
/// step (100) makes it stable.
async fn step_up(rollout: &Rollout) {
    let (manifest, _) = rollout.release();
    let Some(plan) = manifest.and_then(|m| m.canary) else { return };
    let Some(next) = plan.next_step() else { return };
    let Some(due) = step_due(&plan) else { return };
    if SystemTime::now() < due || rollout.is_tripped(&plan) {
        return;
    }
    let Some(canary) = rollout.gate.versions().canary().filter(|c| c.component.sha256 == plan.sha256())
    else {
        return;
    };
    let (verdict, canary_counts, stable_counts) = rollout.judge(&canary);
    if let Verdict::Failing(_) = verdict {
        return;
    }
    let who = rollout.by();
    let mut reason = format!(
        "healthy for {:?} at {}: canary {:.1}% failed ({} of {}), stable {:.1}% ({} of {})",
        Duration::from_millis(plan.step_interval_ms),
        plan.weight,
        canary_counts.rate() * 100.0,
        canary_counts.failures,
        canary_counts.requests,
        stable_counts.rate() * 100.0,
        stable_counts.failures,
        stable_counts.requests
    );
    let (slow, base) = rollout.window_latencies(&canary);
    if let (Some(slow), Some(base)) =
        (slow.quantile(analysis::LATENCY_QUANTILE), base.quantile(analysis::LATENCY_QUANTILE))
    {
        let (slow, base) = (analysis::millis_text(slow), analysis::millis_text(base));
        reason.push_str(&format!("; p95 latency canary {slow}, stable {base}"));
    }
    let result = change::automatic(rollout, |manifest| {
        let current = manifest.canary.as_ref().filter(|c| {
            c.sha256() == plan.sha256() && c.started_at == plan.started_at && c.weight == plan.weight
        })?;
        let mut next = manifest.clone();
        let at = crate::release::store::now_rfc3339();
        let weight = current.next_step().unwrap_or(Weight::FULL);
        if weight == Weight::FULL {
            next.stable = current.version.clone();
            next.canary = None;
            next.last_decision = Some(Decision {
                action: Action::AutoPromote,
                version: current.version.clone(),
                at: at.clone(),
                by: who.clone(),
                reason: reason.clone(),
                canary: canary_counts,
                stable: stable_counts,
            });
        } else if let Some(canary) = next.canary.as_mut() {
            canary.weight = weight;
            canary.step_started_at = at.clone();
        }
        next.record(Action::AutoPromote, &who, at, Some(reason.clone()));
        Some(next)
    })
    .await;
    match result {
        Ok(Some(generation)) => {
            rollout.metrics.canary_promotions.inc();
            tracing::info!(
                sha256 = plan.sha256(),
                generation,
                "stepped the canary up from {} to {next}: {reason}",
                plan.weight
            );
        }
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(sha256 = plan.sha256(), "cannot step the canary up yet (retrying): {error}")
        }
    }
}

/// When the plan's current step is over.
fn step_due(plan: &CanaryPlan) -> Option<SystemTime> {
    let started =
        time::OffsetDateTime::parse(&plan.step_started_at, &time::format_description::well_known::Rfc3339)
            .ok()?;
    // `checked_add`: the plan comes from the store, where anyone with write access may put any number.
    SystemTime::from(started).checked_add(Duration::from_millis(plan.step_interval_ms))
}
