//! Writing a release: a push (validated here, then the component and the manifest written to the
//! store) or a rollback, each a manifest write with a generation precondition. The loser of two
//! concurrent writes gets [`ReleaseError::Conflict`] with the manifest that won.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;

use super::manifest::{Action, Manifest, parse_version};
use super::{Release, Store, now_rfc3339};
use crate::app::App;
use crate::gcs::GcsError;
use crate::swap::{self, Candidate, Rejection};

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

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(
        "the manifest changed since generation {expected}: another push or rollback won; read the current release and try again"
    )]
    Conflict { expected: i64, current: Box<Option<Release>>, generation: i64 },
    #[error("the release store is unavailable, nothing was released: {0}")]
    Unavailable(#[from] GcsError),
    #[error("`sha256:{0}` is not in the release store")]
    NotInStore(String),
    #[error("no earlier version in the manifest's history to roll back to")]
    NoPrevious,
    #[error("`sha256:{0}` is already the fleet's release")]
    AlreadyReleased(String),
    #[error("{0:#}")]
    BadTarget(anyhow::Error),
}

impl ReleaseError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected(rejection) => rejection.status(),
            Self::Conflict { .. } | Self::NoPrevious | Self::AlreadyReleased(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotInStore(_) => StatusCode::NOT_FOUND,
            Self::BadTarget(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.kind(),
            Self::Conflict { .. } => "conflict",
            Self::Unavailable(_) => "store_unavailable",
            Self::NotInStore(_) => "not_found",
            Self::NoPrevious => "no_previous",
            Self::AlreadyReleased(_) => "already_released",
            Self::BadTarget(_) => "bad_target",
        }
    }

    /// The JSON answer: the error, and for a conflict the manifest that won.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.to_string(), "kind": self.kind() });
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
    app: &Arc<App>,
    store: &Store,
    candidate: Candidate,
    if_generation: Option<i64>,
    who: &str,
) -> Result<Released, ReleaseError> {
    let started = Instant::now();
    let (base, generation) = store.current().await?;
    if let Some(expected) = if_generation
        && expected != generation
    {
        return Err(ReleaseError::Conflict { expected, current: Box::new(base), generation });
    }
    let signature = candidate.signature.clone();
    let bytes = candidate.bytes.clone();
    let sha256 = swap::prepare(app, candidate).await?;
    store.put_component(&sha256, &bytes, signature.as_deref()).await?;
    write(store, base, generation, &sha256, who, Action::Push, started).await
}

/// Rolls the fleet back to `to` (a sha256 or a prefix of at least 12 hex digits) or, by default,
/// to the newest earlier version in the manifest's history.
pub async fn rollback(store: &Store, to: Option<&str>, who: &str) -> Result<Released, ReleaseError> {
    let started = Instant::now();
    let (base, generation) = store.current().await?;
    let current = base.as_ref().map(|r| r.manifest.stable_sha256().to_string());
    let target = match to {
        Some(text) => resolve(base.as_ref().map(|r| &r.manifest), text)?,
        None => base
            .as_ref()
            .and_then(|r| r.manifest.previous_stable())
            .ok_or(ReleaseError::NoPrevious)?
            .to_string(),
    };
    if current.as_deref() == Some(target.as_str()) {
        return Err(ReleaseError::AlreadyReleased(target));
    }
    if !store.has_component(&target).await? {
        return Err(ReleaseError::NotInStore(target));
    }
    write(store, base, generation, &target, who, Action::Rollback, started).await
}

/// A full sha256 from `text`: 64 hex digits, or a prefix of at least 12 matching one version in
/// the manifest's history.
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
    manifest
        .into_iter()
        .flat_map(|m| m.history.iter())
        .map(|entry| entry.stable.trim_start_matches("sha256:"))
        .find(|sha| sha.starts_with(&prefix))
        .map(str::to_string)
        .ok_or(ReleaseError::NotInStore(prefix))
}

async fn write(
    store: &Store,
    base: Option<Release>,
    generation: i64,
    sha256: &str,
    who: &str,
    action: Action,
    started: Instant,
) -> Result<Released, ReleaseError> {
    let previous = base.as_ref().map(|r| r.manifest.stable_sha256().to_string());
    let next = Manifest::next(base.as_ref().map(|r| &r.manifest), sha256, who, action, now_rfc3339());
    let written = match store.write_manifest(&next, generation).await {
        Ok(written) => written,
        Err(GcsError::PreconditionFailed(_)) => {
            let (current, now) = store.current().await.unwrap_or((None, 0));
            return Err(ReleaseError::Conflict {
                expected: generation,
                current: Box::new(current),
                generation: now,
            });
        }
        Err(error) => return Err(error.into()),
    };
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
