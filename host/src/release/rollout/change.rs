//! Changing the release: by hand (start a canary, set its weight or promote it, abort it) or
//! automatically (the controller's rollbacks and steps). With a store, a change is a manifest
//! write with a generation precondition, so concurrent writers never lose an update; a change by
//! hand that loses answers [`ReleaseError::Conflict`], an automatic one reads the release again
//! and decides again. Without a store, the change is made to this instance's release.

use std::time::Duration;

use super::Weight;
use crate::release::gate::Candidate;
use crate::release::rollout::Rollout;
use crate::release::store::Release;
use crate::release::store::manifest::{Action, CanaryPlan, Manifest};
use crate::release::store::now_rfc3339;
use crate::release::store::release::{self, ReleaseError};

/// How many times an automatic change reads the release again after losing a race.
const AUTOMATIC_ATTEMPTS: u32 = 5;

/// How a canary is to be started.
pub struct StartPlan {
    pub weight: Weight,
    pub steps: Vec<Weight>,
    pub step_interval: Duration,
    /// The release generation the caller saw, if it wants the start only on that one.
    pub if_generation: Option<i64>,
}

/// Validates `candidate` here (the gate, without publishing it), stores it with a store, and
/// makes it the release's canary.
pub async fn start(
    rollout: &Rollout,
    candidate: Candidate,
    plan: StartPlan,
    who: &str,
) -> Result<i64, ReleaseError> {
    if let Some(bad) = plan.steps.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(ReleaseError::BadRequest(format!(
            "`steps` must increase (`{}` then `{}`)",
            bad[0], bad[1]
        )));
    }
    let source = candidate.source.clone();
    let sha256 = release::stage(rollout.gate(), rollout.store().map(|s| &**s), candidate).await?;
    let at = now_rfc3339();
    by_hand(rollout, plan.if_generation, |manifest| {
        if manifest.stable_sha256() == sha256 {
            return Err(ReleaseError::AlreadyStable(sha256.clone()));
        }
        if let Some(running) = &manifest.canary {
            return Err(ReleaseError::CanaryRunning(running.version.clone()));
        }
        let mut next = manifest.clone();
        next.canary = Some(CanaryPlan {
            version: format!("sha256:{sha256}"),
            weight: plan.weight,
            steps: plan.steps.clone(),
            step_interval_ms: plan.step_interval.as_millis() as u64,
            step_started_at: at.clone(),
            started_at: at.clone(),
            started_by: who.to_string(),
            extra: Default::default(),
        });
        next.record(Action::CanaryStart, who, at.clone(), None);
        next.note_source(&source);
        Ok(next)
    })
    .await
}

/// Sets the canary's weight; at 100 (or with no weight and no further step) makes it stable.
/// Without a weight, the next of its steps. Only on release generation `if_generation`, if given.
pub async fn promote(
    rollout: &Rollout,
    weight: Option<Weight>,
    if_generation: Option<i64>,
    who: &str,
) -> Result<i64, ReleaseError> {
    by_hand(rollout, if_generation, |manifest| {
        let canary = manifest.canary.as_ref().ok_or(ReleaseError::NoCanary)?;
        let target = weight.or_else(|| canary.next_step()).unwrap_or(Weight::FULL);
        let mut next = manifest.clone();
        let at = now_rfc3339();
        if target == Weight::FULL {
            next.stable = canary.version.clone();
            next.canary = None;
            next.record(Action::Promote, who, at, None);
        } else {
            let canary = next.canary.as_mut().expect("checked above");
            canary.weight = target;
            canary.step_started_at = at.clone();
            next.record(Action::CanaryWeight, who, at, None);
        }
        Ok(next)
    })
    .await
}

/// Removes the canary: stable serves every request. Only on release generation `if_generation`,
/// if given.
pub async fn abort(rollout: &Rollout, if_generation: Option<i64>, who: &str) -> Result<i64, ReleaseError> {
    by_hand(rollout, if_generation, |manifest| {
        manifest.canary.as_ref().ok_or(ReleaseError::NoCanary)?;
        let mut next = manifest.clone();
        next.record(Action::Abort, who, now_rfc3339(), None);
        next.canary = None;
        Ok(next)
    })
    .await
}

/// A change by hand: made once, on the release as it is now (or only on generation
/// `if_generation`). Returns the release's new generation, applied here.
async fn by_hand(
    rollout: &Rollout,
    if_generation: Option<i64>,
    change: impl Fn(&Manifest) -> Result<Manifest, ReleaseError>,
) -> Result<i64, ReleaseError> {
    let (base, generation) = current(rollout, if_generation).await?;
    let next = change(&base)?;
    write(rollout, next, generation).await
}

/// An automatic change: `change` says what the release becomes, or `None` when it no longer
/// applies (another instance made it already). Read again and decided again after a lost race.
/// Returns the new generation, `None` when nothing was written.
pub async fn automatic(
    rollout: &Rollout,
    change: impl Fn(&Manifest) -> Option<Manifest>,
) -> Result<Option<i64>, ReleaseError> {
    for _ in 0..AUTOMATIC_ATTEMPTS {
        let (base, generation) = current(rollout, None).await?;
        let Some(next) = change(&base) else { return Ok(None) };
        match write(rollout, next, generation).await {
            Ok(written) => return Ok(Some(written)),
            Err(ReleaseError::Conflict { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
    Err(ReleaseError::Contended { attempts: AUTOMATIC_ATTEMPTS })
}

/// The release as it is now and its generation (a conflict when the caller saw generation
/// `if_generation` and it is another). Without a store, this instance's (its stable is whatever
/// this instance serves, which a `--component` source may have swapped).
async fn current(rollout: &Rollout, if_generation: Option<i64>) -> Result<(Manifest, i64), ReleaseError> {
    if let Some(store) = rollout.store() {
        let (base, generation) = release::read_at(store, if_generation).await?;
        let base = release::seeded(store, base, generation).await?;
        return base.map(|release| (release.manifest, generation)).ok_or(ReleaseError::NoRelease);
    }
    let (manifest, generation) = rollout.release();
    let active = rollout.gate().versions().active();
    let mut manifest = manifest.unwrap_or_else(|| Manifest::first(&active.sha256));
    manifest.stable = format!("sha256:{}", active.sha256);
    if let Some(expected) = if_generation
        && expected != generation
    {
        let current = Box::new(Some(Release { manifest, generation }));
        return Err(ReleaseError::Conflict { expected, current, generation });
    }
    Ok((manifest, generation))
}

/// Writes `next` if the release is still at `generation` and applies it here.
async fn write(rollout: &Rollout, next: Manifest, generation: i64) -> Result<i64, ReleaseError> {
    let Some(store) = rollout.store() else {
        let written = generation + 1;
        apply_local(rollout, &next, written).await;
        return Ok(written);
    };
    let written = release::commit(store, &next, generation).await?;
    tracing::info!(store = %store.location, generation = written, "wrote the release (manifest generation {written})");
    // Applied here at once, and every instance follows within a poll.
    let release = Release { manifest: next, generation: written };
    crate::release::store::follow::apply_release(rollout, store, &release).await;
    store.poll_now.notify_one();
    Ok(written)
}

/// Without a store: the versions of `manifest` are kept compiled here (they went through the
/// gate on this instance), so applying it compiles nothing.
async fn apply_local(rollout: &Rollout, manifest: &Manifest, generation: i64) {
    let stable = manifest.stable_sha256();
    if rollout.gate().versions().active().sha256 != stable
        && let Some(kept) = rollout.gate().versions().find(stable)
    {
        let _ = rollout.gate().reactivate(&kept, format!("promoted canary (was {})", kept.origin)).await;
    }
    let canary = manifest.canary_sha256().and_then(|sha| rollout.gate().versions().find(sha));
    rollout.apply(manifest, generation, canary);
}
