//! Following the store: every `--poll-interval`, one metadata request for the manifest; when its
//! generation changes, read it and make its stable version live through the gate (fetched once
//! per sha256, reused when still kept compiled). Failures back off and leave the active version
//! serving.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{ErrorRecord, Release, Store, StoreError, now_rfc3339};
use crate::app::App;
use crate::gcs::GcsError;
use crate::registry::ActiveComponent;
use crate::swap::{self, Candidate, Rejection};

/// What the follower remembers between polls.
#[derive(Default)]
struct FollowState {
    /// The manifest generation whose release was dealt with (applied, or refused for good).
    settled: Option<i64>,
}

/// A poll that could not settle the manifest.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the manifest names `sha256:{sha256}`, which is not in the store (`{object}`)")]
    MissingComponent { sha256: String, object: String },
}

impl From<GcsError> for PollError {
    fn from(error: GcsError) -> Self {
        Self::Store(StoreError::Gcs(error))
    }
}

/// Polls until the task is dropped.
pub async fn run(app: Arc<App>, store: Arc<Store>) {
    tracing::info!(store = %store.location, "following the release store `{}` every {:?}", store.location, store.poll_interval);
    let mut state = FollowState::default();
    let mut failures = 0u32;
    loop {
        app.metrics.store_polls.inc();
        match poll(&app, &store, &mut state).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(store = %store.location, failures, "the release store answers again after {failures} failed polls");
                }
                failures = 0;
                store.update_status(|status| {
                    status.last_ok_at = Some(now_rfc3339());
                    status.consecutive_failures = 0;
                });
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                app.metrics.store_errors.inc();
                let retry = crate::source::backoff(store.poll_interval, failures);
                tracing::warn!(
                    store = %store.location,
                    failures,
                    retry_in_ms = retry.as_millis() as u64,
                    "cannot follow the release store (the active version keeps serving; retrying in {retry:?}): {error}"
                );
                store.update_status(|status| {
                    status.last_error = Some(ErrorRecord { at: now_rfc3339(), message: error.to_string() });
                    status.consecutive_failures = failures;
                });
            }
        }
        let delay = crate::source::backoff(store.poll_interval, failures);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = store.poll_now.notified() => {}
        }
    }
}

async fn poll(app: &Arc<App>, store: &Store, state: &mut FollowState) -> Result<(), PollError> {
    let Some(meta) = store.manifest_meta().await? else {
        // No release yet: the start-up component serves until the first push.
        return Ok(());
    };
    if state.settled == Some(meta.generation) {
        return Ok(());
    }
    let release = match store.read_manifest(&meta).await {
        Ok(release) => release,
        Err(error @ StoreError::InvalidManifest { .. }) => {
            // Not read again until it changes; the error stays in `info` until then.
            state.settled = Some(meta.generation);
            store.update_status(|status| status.manifest_generation = Some(meta.generation));
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    store.update_status(|status| {
        status.manifest_generation = Some(release.generation);
        status.stable = Some(release.manifest.stable.clone());
    });
    apply(app, store, &release).await?;
    state.settled = Some(release.generation);
    Ok(())
}

/// Makes `release` live here (its stable version, then its canary) and logs what it could not
/// do: for a change this instance wrote itself, which the follower would otherwise apply at its
/// next poll.
pub async fn apply_release(app: &Arc<App>, store: &Store, release: &Release) {
    if let Err(error) = apply(app, store, release).await {
        tracing::warn!(store = %store.location, "cannot apply the release yet (the follower retries): {error}");
    }
}

/// Makes the release's stable version live here, then routes to its canary. A version the gate
/// refuses is refused for this generation (every instance refuses it the same way); a fetch
/// failure is retried. A release older than the one applied (a poll racing a write) is ignored.
async fn apply(app: &Arc<App>, store: &Store, release: &Release) -> Result<(), PollError> {
    if release.generation < app.rollout.release().1 {
        return Ok(());
    }
    apply_stable(app, store, release).await?;
    let canary = match release.manifest.canary_sha256() {
        Some(sha256) => compiled(app, store, sha256, release.generation).await?,
        None => None,
    };
    app.rollout.apply(app, &release.manifest, release.generation, canary);
    Ok(())
}

async fn apply_stable(app: &Arc<App>, store: &Store, release: &Release) -> Result<(), PollError> {
    let sha256 = release.manifest.stable_sha256().to_string();
    if app.registry.active().sha256 == sha256 {
        return Ok(());
    }
    let source = source_of(store, &sha256, release.generation);
    if let Some(kept) = app.registry.find(&sha256) {
        if let Some(outcome) = swap::reactivate(app, &kept, source.clone()).await {
            tracing::info!(sha256 = %outcome.sha256, previous_sha256 = %outcome.previous_sha256, "swapped to component {} from {source} (kept compiled)", outcome.version);
        }
        return Ok(());
    }
    if let Some(candidate) = fetch_checked(app, store, &sha256, release.generation).await? {
        // Logged, counted and remembered by `submit`; the active version keeps serving on a rejection.
        let _ = swap::submit(app, candidate).await;
    }
    Ok(())
}

/// The canary `sha256` compiled and through the gate: kept, or fetched and checked now. `None`
/// when the gate refused it (recorded; stable keeps every request).
async fn compiled(
    app: &Arc<App>,
    store: &Store,
    sha256: &str,
    generation: i64,
) -> Result<Option<Arc<ActiveComponent>>, PollError> {
    if let Some(kept) = app.registry.find(sha256) {
        return Ok(Some(kept));
    }
    let Some(candidate) = fetch_checked(app, store, sha256, generation).await? else { return Ok(None) };
    match swap::prepare(app, candidate).await {
        Ok(_) => Ok(app.registry.find(sha256)),
        Err(_) => Ok(None),
    }
}

fn source_of(store: &Store, sha256: &str, generation: i64) -> String {
    format!(
        "gs://{}/{} (manifest generation {generation})",
        store.location.bucket,
        store.component_object(sha256)
    )
}

/// Downloads the component `sha256` and checks that its bytes are what it is named; `None` (and
/// a rejection recorded) when they are not, or it is over the size limit.
async fn fetch_checked(
    app: &Arc<App>,
    store: &Store,
    sha256: &str,
    generation: i64,
) -> Result<Option<Candidate>, PollError> {
    let source = source_of(store, sha256, generation);
    let candidate = match store.fetch_component(sha256, generation).await {
        Ok(candidate) => candidate,
        Err(GcsError::NotFound(object)) => {
            return Err(PollError::MissingComponent { sha256: sha256.to_string(), object });
        }
        Err(GcsError::TooLarge { size, limit, .. }) => {
            swap::record_rejection(app, &source, Some(sha256), &Rejection::TooLarge { size, limit });
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let actual = hex::encode(Sha256::digest(&candidate.bytes));
    if actual != sha256 {
        let rejection = Rejection::Invalid(anyhow::anyhow!(
            "its bytes hash to `{actual}`, not to the sha256 it is stored under"
        ));
        swap::record_rejection(app, &source, Some(sha256), &rejection);
        return Ok(None);
    }
    Ok(Some(candidate))
}
