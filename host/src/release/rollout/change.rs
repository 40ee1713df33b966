//! Changing the release: by hand (start a canary, set its weight or promote it, abort it) or
//! automatically (the controller's rollbacks and steps). With a store, a change is a manifest
//! write with a generation precondition, so concurrent writers never lose an update; a change by
//! hand that loses answers [`RolloutError::Conflict`], an automatic one reads the release again
//! and decides again. Without a store, the change is made to this instance's release.

use std::time::Duration;

use http::StatusCode;

use super::Weight;
use crate::release::gate::{Candidate, Rejection};
use crate::release::rollout::Rollout;
use crate::release::store::manifest::{Action, CanaryPlan, Manifest};
use crate::release::store::{Release, WriteError, now_rfc3339};
use crate::util::gcs::GcsError;

/// How many times an automatic change reads the release again after losing a race.
const AUTOMATIC_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the release store has no release yet: push a stable version first (`echo-host push`)")]
    NoRelease,
    #[error("no canary runs; start one with `POST admin/release?weight=W` (`echo-host release start`)")]
    NoCanary,
    #[error("canary `{0}` already runs: promote or abort it first")]
    CanaryRunning(String),
    #[error("`sha256:{0}` is already the stable version")]
    AlreadyStable(String),
    #[error(
        "the release changed since generation {expected}: read it again (`echo-host release status`) and retry"
    )]
    Conflict { expected: i64 },
    #[error("the release kept changing under {AUTOMATIC_ATTEMPTS} attempts to change it")]
    Contended,
    #[error("the release store is unavailable, nothing changed: {0}")]
    Unavailable(#[from] GcsError),
    #[error("not known whether the release changed (read `GET admin/release` to see): {0}")]
    Unknown(GcsError),
    #[error(
        "the manifest would be {size} bytes, over the {limit}-byte limit every instance reads; nothing changed"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    BadRequest(String),
}

impl RolloutError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected(rejection) => rejection.status(),
            Self::NoRelease
            | Self::NoCanary
            | Self::CanaryRunning(_)
            | Self::AlreadyStable(_)
            | Self::Conflict { .. }
            | Self::Contended => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Unknown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.kind(),
            Self::NoRelease => "no_release",
            Self::NoCanary => "no_canary",
            Self::CanaryRunning(_) => "canary_running",
            Self::AlreadyStable(_) => "already_stable",
            Self::Conflict { .. } | Self::Contended => "conflict",
            Self::Unavailable(_) => "store_unavailable",
            Self::Unknown(_) => "outcome_unknown",
            Self::TooLarge { .. } => "too_large",
            Self::BadRequest(_) => "bad_request",
        }
    }
}

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
) -> Result<i64, RolloutError> {
    if let Some(bad) = plan.steps.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(RolloutError::BadRequest(format!(
            "`steps` must increase (`{}` then `{}`)",
            bad[0], bad[1]
        )));
    }
    let signature = candidate.signature.clone();
    let bytes = candidate.bytes().to_vec();
    let sha256 = rollout.gate().prepare(candidate).await?;
    if let Some(store) = rollout.store() {
        store.put_component(&sha256, &bytes, signature.as_deref()).await?;
    }
    let at = now_rfc3339();
    by_hand(rollout, plan.if_generation, |manifest| {
        if manifest.stable_sha256() == sha256 {
            return Err(RolloutError::AlreadyStable(sha256.clone()));
        }
        if let Some(running) = &manifest.canary {
            return Err(RolloutError::CanaryRunning(running.version.clone()));
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
) -> Result<i64, RolloutError> {
    by_hand(rollout, if_generation, |manifest| {
        let canary = manifest.canary.as_ref().ok_or(RolloutError::NoCanary)?;
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
pub async fn abort(rollout: &Rollout, if_generation: Option<i64>, who: &str) -> Result<i64, RolloutError> {
    by_hand(rollout, if_generation, |manifest| {
        manifest.canary.as_ref().ok_or(RolloutError::NoCanary)?;
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
    change: impl Fn(&Manifest) -> Result<Manifest, RolloutError>,
) -> Result<i64, RolloutError> {
    let (base, generation) = current(rollout).await?;
    if let Some(expected) = if_generation
        && expected != generation
    {
        return Err(RolloutError::Conflict { expected });
    }
    let next = change(&base)?;
    write(rollout, next, generation).await?.ok_or(RolloutError::Conflict { expected: generation })
}

/// An automatic change: `change` says what the release becomes, or `None` when it no longer
/// applies (another instance made it already). Read again and decided again after a lost race.
/// Returns the new generation, `None` when nothing was written.
pub async fn automatic(
    rollout: &Rollout,
    change: impl Fn(&Manifest) -> Option<Manifest>,
) -> Result<Option<i64>, RolloutError> {
    for _ in 0..AUTOMATIC_ATTEMPTS {
        let (base, generation) = current(rollout).await?;
        let Some(next) = change(&base) else { return Ok(None) };
        if let Some(written) = write(rollout, next, generation).await? {
            return Ok(Some(written));
        }
    }
    Err(RolloutError::Contended)
}

/// The release as it is now and its generation. Without a store, this instance's (its stable is
/// whatever this instance serves, which a `--component` source may have swapped).
async fn current(rollout: &Rollout) -> Result<(Manifest, i64), RolloutError> {
    match rollout.store() {
        Some(store) => match store.current().await? {
            (Some(release), generation) => Ok((release.manifest, generation)),
            // The first release: seeded with the version served until now (written with
            // generation precondition 0, so only if there is still no manifest).
            (None, 0) => {
                store.seed_release().await?.map(|manifest| (manifest, 0)).ok_or(RolloutError::NoRelease)
            }
            (None, _) => Err(RolloutError::NoRelease),
        },
        None => {
            let (manifest, generation) = rollout.release();
            let active = rollout.gate().versions().active();
            let mut manifest = manifest.unwrap_or_else(|| Manifest::first(&active.sha256));
            manifest.stable = format!("sha256:{}", active.sha256);
            Ok((manifest, generation))
        }
    }
}

/// Writes `next` if the release is still at `generation` and applies it here; `None` when
/// another writer won.
async fn write(rollout: &Rollout, next: Manifest, generation: i64) -> Result<Option<i64>, RolloutError> {
    let Some(store) = rollout.store() else {
        let written = generation + 1;
        apply_local(rollout, &next, written).await;
        return Ok(Some(written));
    };
    match store.write_manifest(&next, generation).await {
        Ok(written) => {
            tracing::info!(store = %store.location, generation = written, "wrote the release (manifest generation {written})");
            // Applied here at once, and every instance follows within a poll.
            crate::release::store::follow::apply_release(
                rollout,
                store,
                &Release { manifest: next, generation: written },
            )
            .await;
            store.poll_now.notify_one();
            Ok(Some(written))
        }
        Err(WriteError::Conflict(_)) => Ok(None),
        Err(WriteError::TooLarge { size, limit }) => Err(RolloutError::TooLarge { size, limit }),
        Err(WriteError::Failed(error)) => Err(error.into()),
        Err(WriteError::Unknown(error)) => Err(RolloutError::Unknown(error)),
    }
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
