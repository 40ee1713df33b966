//! Following the store: every `--poll-interval`, one metadata request for the manifest; when its
//! generation changes, read it and make it live here whole or not at all: first what it revokes
//! (a canary it no longer names stops at once), then every version it names fetched, checked
//! against its name and through the gate, then both routed at once. A request that finds the
//! view older than `--max-staleness` re-checks the store first ([`recheck`]). Failures back off
//! and leave the active version serving; a release that cannot be applied stays reported
//! (`release_problem`) until one is.

use std::sync::Arc;

use tokio::time::Instant;

use super::{ErrorRecord, FetchError, Release, Store, StoreError, now_rfc3339};
use crate::release::gate::{Rejection, Retry};
use crate::release::rollout::Rollout;
use crate::release::rollout::Switched;
use crate::util::gcs::GcsError;

/// What the follower remembers between polls.
#[derive(Default)]
struct FollowState {
    /// The manifest generation whose release was dealt with (applied, or refused for good).
    settled: Option<i64>,
    /// A manifest was seen since this instance started: its absence now is a deletion.
    seen_manifest: Option<i64>,
    /// The bucket was found to exist while it held no manifest (checked once before the first
    /// release, not at every poll).
    bucket_seen: bool,
}

/// A poll that could not make the store's release live here whole.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("`sha256:{sha256}` is refused on this instance: {reason}")]
    Refused { sha256: String, reason: String, retry: Retry },
    #[error("the bucket `gs://{0}` does not exist (deleted, or `--store` names the wrong one)")]
    NoBucket(String),
    #[error(
        "the manifest `{object}` was deleted (last seen at generation {generation}); serving what it named until one is written"
    )]
    Deleted { object: String, generation: i64 },
}

impl From<GcsError> for PollError {
    fn from(error: GcsError) -> Self {
        Self::Store(StoreError::Gcs(error))
    }
}

impl PollError {
    /// The store did not answer (as opposed to answering with a release that cannot be applied).
    fn is_unreachable(&self) -> bool {
        match self {
            // An object over its limit is the store's answer, not its absence.
            Self::Store(StoreError::Gcs(GcsError::TooLarge { .. })) => false,
            Self::Store(StoreError::Gcs(_)) | Self::Fetch(FetchError::Store(_)) => true,
            _ => false,
        }
    }

    /// Retrying this generation cannot help: it is not read again until it changes.
    fn settles(&self) -> bool {
        match self {
            Self::Store(StoreError::InvalidManifest { .. } | StoreError::Gcs(GcsError::TooLarge { .. })) => {
                true
            }
            Self::Fetch(FetchError::TooLarge { .. } | FetchError::NotItsName { .. }) => true,
            Self::Refused { retry, .. } => *retry == Retry::Never,
            _ => false,
        }
    }
}

/// Polls until the task is dropped.
pub async fn run(rollout: Arc<Rollout>, store: Arc<Store>) {
    tracing::info!(store = %store.location, "following the release store `{}` every {:?}", store.location, store.poll_interval);
    let mut state = FollowState::default();
    let mut failures = 0u32;
    loop {
        rollout.gate().metrics().store_polls.inc();
        let started = Instant::now();
        let polled = poll(&rollout, &store, &mut state).await;
        if !polled.as_ref().is_err_and(PollError::is_unreachable) {
            // The store answered and what it revokes is applied: the view is confirmed.
            store.freshness.confirm(started);
        }
        match polled {
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
                rollout.gate().metrics().store_errors.inc();
                let retry = crate::release::source::backoff(store.poll_interval, failures);
                tracing::warn!(
                    store = %store.location,
                    failures,
                    retry_in_ms = retry.as_millis() as u64,
                    "cannot follow the release store (the active version keeps serving; retrying in {retry:?}): {error}"
                );
                let record = ErrorRecord { at: now_rfc3339(), message: error.to_string() };
                store.update_status(|status| {
                    if !error.is_unreachable() {
                        status.release_problem = Some(record.clone());
                    }
                    status.last_error = Some(record);
                    status.consecutive_failures = failures;
                });
                if !error.is_unreachable() {
                    store.metrics.problem.set(1);
                    rollout.gate().tell_fleet();
                }
            }
        }
        let delay = crate::release::source::backoff(store.poll_interval, failures);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = store.poll_now.notified() => {}
        }
    }
}

async fn poll(rollout: &Rollout, store: &Store, state: &mut FollowState) -> Result<(), PollError> {
    let Some(meta) = store.manifest_meta().await? else {
        return no_manifest(store, state).await;
    };
    state.seen_manifest = Some(meta.generation);
    if state.settled == Some(meta.generation) {
        return Ok(());
    }
    let mut generation = meta.generation;
    let applied = match store.read_newest(meta).await {
        Ok(release) => {
            generation = release.generation;
            store.update_status(|status| {
                status.manifest_generation = Some(release.generation);
                status.stable = Some(release.manifest.stable.clone());
            });
            apply(rollout, store, &release).await
        }
        Err(error) => {
            if let StoreError::InvalidManifest { generation: invalid, .. } = &error {
                generation = *invalid;
            }
            store.update_status(|status| status.manifest_generation = Some(generation));
            Err(error.into())
        }
    };
    // Settled: applied, or refused for good (not read again until it changes; the problem
    // stays reported until then).
    if applied.as_ref().map_or_else(PollError::settles, |()| true) {
        state.settled = Some(generation);
    }
    applied
}

/// No manifest: before the first push, the start-up component serves. A manifest that was there
/// and is gone, or a bucket that does not exist, is an error, not "no release".
async fn no_manifest(store: &Store, state: &mut FollowState) -> Result<(), PollError> {
    let seen = state.seen_manifest.or(store.status().manifest_generation);
    // Before the first release, one bucket check; after a manifest vanished, one per poll (the
    // bucket may have gone with it).
    if seen.is_some() || !state.bucket_seen {
        if !store.bucket_exists().await? {
            return Err(PollError::NoBucket(store.location.bucket.clone()));
        }
        state.bucket_seen = true;
    }
    match seen {
        Some(generation) => Err(PollError::Deleted { object: store.manifest_url(), generation }),
        None => Ok(()),
    }
}

/// Makes `release` live here whole, or routes no canary it does not name meanwhile. `Ok` once
/// the whole release is routed (or a newer one was).
async fn apply(rollout: &Rollout, store: &Store, release: &Release) -> Result<(), PollError> {
    let generation = release.generation;
    let stable = release.manifest.stable_sha256();
    match rollout.switch(&release.manifest, generation, source_of(store, stable, generation)) {
        Switched::Whole => {
            applied_whole(store);
            return Ok(());
        }
        Switched::Outdated => return Ok(()),
        Switched::Partly => {}
    }
    prepare(rollout, store, stable, generation).await?;
    if let Some(canary) = release.manifest.canary_sha256() {
        prepare(rollout, store, canary, generation).await?;
    }
    // Fetching and compiling took a while: route only on a release the store still names.
    if store.manifest_meta().await?.is_none_or(|meta| meta.generation != generation) {
        store.poll_now.notify_one();
        return Ok(());
    }
    match rollout.switch(&release.manifest, generation, source_of(store, stable, generation)) {
        Switched::Whole => applied_whole(store),
        Switched::Outdated => {}
        Switched::Partly => {
            // A prepared version was pushed out by another compiled meanwhile: once more.
            store.poll_now.notify_one();
        }
    }
    Ok(())
}

/// Makes `release` live here (this instance wrote it: it need not wait for its next poll) and
/// logs what it could not do yet, which the follower retries.
pub async fn apply_release(rollout: &Rollout, store: &Store, release: &Release) {
    if let Err(error) = apply(rollout, store, release).await {
        tracing::warn!(store = %store.location, "cannot apply the release yet (the follower retries): {error}");
    }
}

fn applied_whole(store: &Store) {
    store.update_status(|status| status.release_problem = None);
    store.metrics.problem.set(0);
}

/// Makes sure the version `sha256` is held compiled: fetched, checked against its name and
/// through the gate, unless it already is.
async fn prepare(rollout: &Rollout, store: &Store, sha256: &str, generation: i64) -> Result<(), PollError> {
    if rollout.gate().versions().find(sha256).is_some() {
        return Ok(());
    }
    let source = source_of(store, sha256, generation);
    let refused = |rejection: Rejection| PollError::Refused {
        sha256: sha256.to_string(),
        reason: rejection.to_string(),
        retry: rejection.retry(),
    };
    let candidate = match store.fetch_verified(sha256, generation).await {
        Ok(candidate) => candidate,
        Err(FetchError::TooLarge { size, limit }) => {
            let rejection = Rejection::TooLarge { size, limit };
            rollout.gate().record_rejection(&source, Some(sha256), &rejection);
            return Err(refused(rejection));
        }
        Err(error @ FetchError::NotItsName { .. }) => {
            let rejection = Rejection::Invalid(anyhow::anyhow!("{error}"));
            rollout.gate().record_rejection(&source, Some(sha256), &rejection);
            return Err(refused(rejection));
        }
        Err(error) => return Err(error.into()),
    };
    // Logged, counted and remembered by `prepare`.
    rollout.gate().prepare(candidate).await.map_err(refused)?;
    Ok(())
}

/// A request found the view older than `--max-staleness`: one metadata request; on a new
/// generation, the manifest read and routed on at once as far as the versions it names are held
/// compiled (the follower fetches the rest). `true` once the view is confirmed.
pub async fn recheck(rollout: Arc<Rollout>, store: Arc<Store>) -> bool {
    store.metrics.rechecks.inc();
    match route_latest(&rollout, &store).await {
        Ok(()) => true,
        Err(error) => {
            store.metrics.recheck_failures.inc();
            tracing::warn!(store = %store.location, "cannot confirm the release with the store before routing: {error}");
            false
        }
    }
}

async fn route_latest(rollout: &Rollout, store: &Store) -> Result<(), StoreError> {
    let Some(meta) = store.manifest_meta().await? else { return Ok(()) };
    if rollout.routed() >= meta.generation {
        return Ok(());
    }
    let release = match store.read_newest(meta).await {
        Ok(release) => release,
        // Changes nothing (the follower reports it).
        Err(StoreError::InvalidManifest { .. } | StoreError::Gcs(GcsError::TooLarge { .. })) => return Ok(()),
        Err(error) => return Err(error),
    };
    let stable = release.manifest.stable_sha256();
    let source = source_of(store, stable, release.generation);
    if rollout.switch(&release.manifest, release.generation, source) == Switched::Partly {
        tracing::info!(store = %store.location, generation = release.generation, "the release changed while this instance was idle: routing on it as far as its versions are compiled, fetching the rest");
    }
    store.poll_now.notify_one();
    Ok(())
}

fn source_of(store: &Store, sha256: &str, generation: i64) -> String {
    format!(
        "gs://{}/{} (manifest generation {generation})",
        store.location.bucket,
        store.component_object(sha256)
    )
}
