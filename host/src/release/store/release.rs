//! Writing the release, the one writer of the manifest every change goes through (a push and a
//! rollback here; a canary's start, step and abort through [`stage`], [`read_at`] and [`commit`]).
//! A push (validated here, then the component and the manifest written to the
//! store) or a rollback, each a manifest write with a generation precondition: the one the caller
//! gave (`if_generation`), else the one read as the call starts. The loser of two concurrent
//! writes gets [`ReleaseError::Conflict`] with the manifest that won. A rollback without a target
//! that would undo a rollback made in the last [`ROLLBACK_GUARD`] is refused: two people rolling
//! back at once would otherwise each succeed, one after the other, and end where they started.

use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;

use super::manifest::{Action, Manifest, parse_version};
use super::{Release, Store, WriteError, now_rfc3339};
use crate::release::gate::Gate;
use crate::release::gate::{Candidate, Rejection};
use crate::util::gcs::GcsError;

/// How recent a rollback is for a rollback without a target (or `if_generation`) to be refused
/// as undoing it.
const ROLLBACK_GUARD: Duration = Duration::from_secs(10);

/// A manifest this instance wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Released {
    pub released: bool,
    pub sha256: String,
    pub version: String,
    pub previous_sha256: Option<String>,
    /// The new generation of the manifest (text: generations exceed JSON's safe integers).
    pub manifest_generation: String,
    pub elapsed_ms: f64,
}

/// Why a change to the release (a push, a rollback, a canary's start, step or abort) was not
/// made, or may not have been: one type for every writer of the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(
        "the release changed since generation {expected} (it is at {generation} now): another change won; read it again (`echo-host release status`) and retry"
    )]
    Conflict { expected: i64, current: Box<Option<Release>>, generation: i64 },
    #[error("the release kept changing under {attempts} attempts to change it")]
    Contended { attempts: u32 },
    #[error("the release store is unavailable, nothing changed: {0}")]
    Unavailable(#[from] GcsError),
    #[error(
        "not known whether the release changed (read `echo-host release status` or `GET admin/release` to see): {0}"
    )]
    Unknown(GcsError),
    #[error(
        "the manifest would be {size} bytes, over the {limit}-byte limit every instance reads; nothing changed"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("`{prefix}` matches {} in the manifest's history: give more digits", list(.matches))]
    Ambiguous { prefix: String, matches: Vec<String> },
    #[error(
        "`sha256:{to}` was rolled back to {age_s:.1} s ago by `{by}`: a rollback now would undo it; to do so anyway, name the version (`?to=`) or the generation (`?if_generation={generation}`)"
    )]
    RecentRollback { to: String, by: String, age_s: f64, generation: i64 },
    #[error("`sha256:{0}` is not in the release store")]
    NotInStore(String),
    #[error("no earlier version in the manifest's history to roll back to")]
    NoPrevious,
    #[error("`sha256:{0}` is already the fleet's release")]
    AlreadyReleased(String),
    #[error("the release store has no release yet: push a stable version first (`echo-host push`)")]
    NoRelease,
    #[error("no canary runs; start one with `POST admin/release?weight=W` (`echo-host release start`)")]
    NoCanary,
    #[error("canary `{0}` already runs: promote or abort it first")]
    CanaryRunning(String),
    #[error("`sha256:{0}` is already the stable version")]
    AlreadyStable(String),
    #[error("{0:#}")]
    BadTarget(anyhow::Error),
    #[error("{0}")]
    BadRequest(String),
}

impl ReleaseError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected(rejection) => rejection.status(),
            Self::Conflict { .. }
            | Self::Contended { .. }
            | Self::NoPrevious
            | Self::AlreadyReleased(_)
            | Self::Ambiguous { .. }
            | Self::RecentRollback { .. }
            | Self::NoRelease
            | Self::NoCanary
            | Self::CanaryRunning(_)
            | Self::AlreadyStable(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Unknown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotInStore(_) => StatusCode::NOT_FOUND,
            Self::BadTarget(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.kind(),
            Self::Conflict { .. } | Self::Contended { .. } => "conflict",
            Self::Unavailable(_) => "store_unavailable",
            Self::Unknown(_) => "outcome_unknown",
            Self::TooLarge { .. } => "too_large",
            Self::Ambiguous { .. } => "ambiguous",
            Self::RecentRollback { .. } => "recent_rollback",
            Self::NotInStore(_) => "not_found",
            Self::NoPrevious => "no_previous",
            Self::AlreadyReleased(_) => "already_released",
            Self::NoRelease => "no_release",
            Self::NoCanary => "no_canary",
            Self::CanaryRunning(_) => "canary_running",
            Self::AlreadyStable(_) => "already_stable",
            Self::BadTarget(_) => "bad_target",
            Self::BadRequest(_) => "bad_request",
        }
    }

    /// The JSON answer: the error, whether anything was released (`false`, or `null` when that
    /// is not known), and for a conflict the manifest that won.
    pub fn to_json(&self) -> serde_json::Value {
        let released = if matches!(self, Self::Unknown(_)) { None } else { Some(false) };
        let mut body =
            serde_json::json!({ "error": self.to_string(), "kind": self.kind(), "released": released });
        if let Self::Conflict { current, generation, .. } = self {
            body["manifest"] = match current.as_ref() {
                Some(release) => serde_json::json!(release.manifest),
                None => serde_json::Value::Null,
            };
            body["manifest_generation"] = serde_json::json!(generation.to_string());
        }
        body
    }
}

/// Validates `candidate` on this instance and releases it to the fleet. `if_generation`: the
/// manifest generation the caller saw (0: none); by default the one read as the push starts.
pub async fn push(
    gate: &Gate,
    store: &Store,
    candidate: Candidate,
    if_generation: Option<i64>,
    who: &str,
) -> Result<Released, ReleaseError> {
    let started = Instant::now();
    let (base, generation) = read_at(store, if_generation).await?;
    let base = seeded(store, base, generation).await?;
    let source = candidate.source.clone();
    let sha256 = stage(gate, Some(store), candidate).await?;
    let change = Change { sha256: &sha256, who, action: Action::Push, source: Some(&source) };
    write(store, base, generation, change, started).await
}

/// Runs the gate on `candidate` here (kept compiled, not yet live) and, with a store, puts it
/// there beside its signature. Returns its sha256.
pub async fn stage(gate: &Gate, store: Option<&Store>, candidate: Candidate) -> Result<String, ReleaseError> {
    let signature = candidate.signature.clone();
    let bytes = candidate.bytes().to_vec();
    let sha256 = gate.prepare(candidate).await?;
    if let Some(store) = store {
        store.put_component(&sha256, &bytes, signature.as_deref()).await?;
    }
    Ok(sha256)
}

/// The release as it is now and its generation; a conflict when the caller saw generation
/// `if_generation` and it is another.
pub async fn read_at(
    store: &Store,
    if_generation: Option<i64>,
) -> Result<(Option<Release>, i64), ReleaseError> {
    let (base, generation) = store.current().await?;
    if let Some(expected) = if_generation
        && expected != generation
    {
        return Err(ReleaseError::Conflict { expected, current: Box::new(base), generation });
    }
    Ok((base, generation))
}

/// The first release: on a store without a manifest, the version served until now goes into its
/// history (written with generation precondition 0, so only if there is still no manifest).
pub async fn seeded(
    store: &Store,
    base: Option<Release>,
    generation: i64,
) -> Result<Option<Release>, ReleaseError> {
    Ok(match base {
        None if generation == 0 => {
            store.seed_release().await?.map(|manifest| Release { manifest, generation })
        }
        base => base,
    })
}

/// Writes `next` if the manifest is still at `generation`; returns the new generation. The one
/// place a release change meets the store's write: a lost race is [`ReleaseError::Conflict`]
/// with the release that won.
pub async fn commit(store: &Store, next: &Manifest, generation: i64) -> Result<i64, ReleaseError> {
    match store.write_manifest(next, generation).await {
        Ok(written) => Ok(written),
        Err(WriteError::Conflict(_)) => {
            let (current, now) = store.current().await.unwrap_or((None, 0));
            Err(ReleaseError::Conflict { expected: generation, current: Box::new(current), generation: now })
        }
        Err(WriteError::TooLarge { size, limit }) => Err(ReleaseError::TooLarge { size, limit }),
        Err(WriteError::Failed(error)) => Err(error.into()),
        Err(WriteError::Unknown(error)) => Err(ReleaseError::Unknown(error)),
    }
}

/// Rolls the fleet back to `to` (a sha256 or a prefix of at least 12 hex digits) or, by default,
/// to the newest earlier version in the manifest's history. `if_generation`: the manifest
/// generation the caller saw; by default the one read as the rollback starts.
pub async fn rollback(
    store: &Store,
    to: Option<&str>,
    if_generation: Option<i64>,
    who: &str,
) -> Result<Released, ReleaseError> {
    let started = Instant::now();
    let (base, generation) = read_at(store, if_generation).await?;
    let manifest = base.as_ref().map(|r| &r.manifest);
    let target = match to {
        Some(text) => resolve(manifest, text)?,
        None => {
            if if_generation.is_none() {
                refuse_undoing(manifest, generation)?;
            }
            manifest.and_then(Manifest::previous_stable).ok_or(ReleaseError::NoPrevious)?.to_string()
        }
    };
    if manifest.map(Manifest::stable_sha256) == Some(target.as_str()) {
        return Err(ReleaseError::AlreadyReleased(target));
    }
    if !store.has_component(&target).await? {
        return Err(ReleaseError::NotInStore(target));
    }
    let change = Change { sha256: &target, who, action: Action::Rollback, source: None };
    write(store, base, generation, change, started).await
}

/// Refuses a rollback by default when the newest change is a rollback made less than
/// [`ROLLBACK_GUARD`] ago: the caller most likely saw the release before it and meant the same one.
fn refuse_undoing(manifest: Option<&Manifest>, generation: i64) -> Result<(), ReleaseError> {
    let Some(last) = manifest.and_then(|m| m.history.first()) else { return Ok(()) };
    if last.action != Action::Rollback {
        return Ok(());
    }
    let Ok(at) = time::OffsetDateTime::parse(&last.at, &time::format_description::well_known::Rfc3339) else {
        return Ok(());
    };
    // A clock a little ahead of ours reads as just now.
    let age = SystemTime::now().duration_since(SystemTime::from(at)).unwrap_or(Duration::ZERO);
    if age >= ROLLBACK_GUARD {
        return Ok(());
    }
    Err(ReleaseError::RecentRollback {
        to: last.stable.trim_start_matches("sha256:").to_string(),
        by: last.by.clone(),
        age_s: age.as_secs_f64(),
        generation,
    })
}

/// A full sha256 from `text`: 64 hex digits, or a prefix of at least 12 matching exactly one
/// version in the manifest's history.
fn resolve(manifest: Option<&Manifest>, text: &str) -> Result<String, ReleaseError> {
    if let Ok(full) = parse_version(text) {
        return Ok(full);
    }
    let prefix = text.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if prefix.len() < 12 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReleaseError::BadTarget(anyhow::anyhow!(
            "`{text}` is not a sha256 or a prefix of at least 12 hex digits"
        )));
    }
    let mut matches: Vec<String> = Vec::new();
    for entry in manifest.into_iter().flat_map(|m| m.history.iter()) {
        let sha = entry.stable.trim_start_matches("sha256:");
        if sha.starts_with(&prefix) && !matches.iter().any(|m| m == sha) {
            matches.push(sha.to_string());
        }
    }
    match matches.len() {
        0 => Err(ReleaseError::NotInStore(prefix)),
        1 => Ok(matches.remove(0)),
        _ => Err(ReleaseError::Ambiguous { prefix: format!("sha256:{prefix}"), matches }),
    }
}

/// `` `sha256:a…` and `sha256:b…` ``.
fn list(shas: &[String]) -> String {
    let named: Vec<String> = shas.iter().map(|sha| format!("`sha256:{sha}`")).collect();
    match named.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => named.join(""),
    }
}

/// A push or a rollback: the version made stable, by whom, and where it came from.
struct Change<'a> {
    sha256: &'a str,
    who: &'a str,
    action: Action,
    source: Option<&'a str>,
}

async fn write(
    store: &Store,
    base: Option<Release>,
    generation: i64,
    change: Change<'_>,
    started: Instant,
) -> Result<Released, ReleaseError> {
    let Change { sha256, who, action, source } = change;
    let previous = base.as_ref().map(|r| r.manifest.stable_sha256().to_string());
    let mut next = Manifest::next(base.as_ref().map(|r| &r.manifest), sha256, who, action, now_rfc3339());
    if let Some(source) = source {
        next.note_source(source);
    }
    let written = commit(store, &next, generation).await?;
    tracing::info!(
        store = %store.location,
        sha256,
        ?action,
        manifest_generation = written,
        "released `sha256:{sha256}` to the fleet (manifest generation {written})"
    );
    // This instance follows the store like every other; it need not wait for its next poll.
    store.poll_now.notify_one();
    Ok(Released {
        released: true,
        sha256: sha256.to_string(),
        version: format!("sha256:{}", &sha256[..12]),
        previous_sha256: previous,
        manifest_generation: written.to_string(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "abcdef0123451111111111111111111111111111111111111111111111111111";
    const B: &str = "abcdef0123452222222222222222222222222222222222222222222222222222";

    fn manifest(entries: &[(&str, Action, String)]) -> Manifest {
        let mut manifest = Manifest::first(entries[0].0);
        for (sha, action, at) in entries.iter().rev() {
            manifest.stable = format!("sha256:{sha}");
            manifest.record(*action, "admin", at.clone(), None);
        }
        manifest
    }

    #[test]
    fn a_shared_prefix_is_ambiguous() {
        let m = manifest(&[(A, Action::Push, "t".into()), (B, Action::Push, "t".into())]);
        assert_eq!(resolve(Some(&m), &A[..13]).unwrap(), A);
        let error = resolve(Some(&m), "sha256:abcdef012345").unwrap_err();
        assert!(matches!(error, ReleaseError::Ambiguous { .. }), "{error}");
        assert!(error.to_string().contains(A) && error.to_string().contains(B), "{error}");
        assert_eq!(error.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn a_recent_rollback_is_not_undone_by_default() {
        let now = now_rfc3339();
        let recent = manifest(&[(A, Action::Rollback, now.clone()), (B, Action::Push, now)]);
        let error = refuse_undoing(Some(&recent), 7).unwrap_err();
        assert!(error.to_string().contains("if_generation=7"), "{error}");
        let old =
            manifest(&[(A, Action::Rollback, "2020-01-01T00:00:00Z".into()), (B, Action::Push, "t".into())]);
        assert!(refuse_undoing(Some(&old), 7).is_ok());
        let pushed = manifest(&[(A, Action::Push, now_rfc3339()), (B, Action::Rollback, now_rfc3339())]);
        assert!(refuse_undoing(Some(&pushed), 7).is_ok());
    }
}
