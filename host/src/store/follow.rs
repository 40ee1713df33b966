//! Following the store: every `--poll-interval`, one metadata request for the manifest; when its
//! generation changes, read it and make its stable version live through the gate (fetched once
//! per sha256, reused when still kept compiled). Failures back off and leave the active version
//! serving.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{ErrorRecord, Release, Store, StoreError, now_rfc3339};
use crate::app::App;
use crate::gcs::GcsError;
use crate::swap::{self, Rejection};

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

/// Makes the release's stable version live here. A version the gate refuses is refused for this
/// generation (every instance refuses it the same way); a fetch failure is retried.
async fn apply(app: &Arc<App>, store: &Store, release: &Release) -> Result<(), PollError> {
    let sha256 = release.manifest.stable_sha256().to_string();
    if app.registry.active().sha256 == sha256 {
        return Ok(());
    }
    let source = format!(
        "gs://{}/{} (manifest generation {})",
        store.location.bucket,
        store.component_object(&sha256),
        release.generation
    );
    if let Some(kept) = app.registry.find(&sha256) {
        if let Some(outcome) = swap::reactivate(app, &kept, source.clone()).await {
            tracing::info!(sha256 = %outcome.sha256, previous_sha256 = %outcome.previous_sha256, "swapped to component {} from {source} (kept compiled)", outcome.version);
        }
        return Ok(());
    }
    let candidate = match store.fetch_component(&sha256, release.generation).await {
        Ok(candidate) => candidate,
        Err(GcsError::NotFound(object)) => return Err(PollError::MissingComponent { sha256, object }),
        Err(GcsError::TooLarge { size, limit, .. }) => {
            swap::record_rejection(app, &source, Some(&sha256), &Rejection::TooLarge { size, limit });
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let actual = hex::encode(Sha256::digest(&candidate.bytes));
    if actual != sha256 {
        let rejection = Rejection::Invalid(anyhow::anyhow!(
            "its bytes hash to `{actual}`, not to the sha256 it is stored under"
        ));
        swap::record_rejection(app, &source, Some(&sha256), &rejection);
        return Ok(());
    }
    // Logged, counted and remembered by `submit`; the active version keeps serving on a rejection.
    let _ = swap::submit(app, candidate).await;
    Ok(())
}
