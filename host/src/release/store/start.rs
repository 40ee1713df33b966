//! What a new instance takes from the store before it binds its port: the release's stable
//! version, fetched and checked against its name like every version from the store, or the
//! reason it cannot have one.

use super::{FetchError, Store, StoreError};
use crate::release::gate::Candidate;
use crate::util::gcs::GcsError;

/// What the store says a new instance should serve.
pub enum AtStart {
    /// The release's stable version (its bytes checked against its name), from this generation.
    Release { candidate: Candidate, generation: i64 },
    /// The bucket exists and holds no manifest: the fleet's first start.
    NoRelease,
}

/// Why the store gave a new instance nothing to serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not answer: nothing is known of a release.
    #[error(transparent)]
    Unreachable(GcsError),
    /// The store names a release this instance cannot take.
    #[error("{0:#}")]
    Unusable(anyhow::Error),
    #[error("the bucket `gs://{0}` does not exist")]
    NoBucket(String),
}

/// Reads the release and fetches its stable version.
pub async fn read_release(store: &Store) -> Result<AtStart, StartError> {
    let Some(meta) = store.manifest_meta().await.map_err(StartError::Unreachable)? else {
        if !store.bucket_exists().await.map_err(StartError::Unreachable)? {
            return Err(StartError::NoBucket(store.location.bucket.clone()));
        }
        return match fleet_release(store).await.map_err(StartError::Unreachable)? {
            None => Ok(AtStart::NoRelease),
            Some((instance, generation)) => Err(StartError::Unusable(anyhow::anyhow!(
                "`{}` does not exist, but instance `{instance}` serves the release of its generation {generation}: the manifest was deleted (or the bucket emptied); write a release again (`echo-host push`) or remove `{}instances/`",
                store.manifest_url(),
                store.location
            ))),
        };
    };
    let release = match store.read_manifest(&meta).await {
        Ok(release) => release,
        Err(StoreError::Gcs(GcsError::TooLarge { what, size, limit })) => {
            return Err(StartError::Unusable(anyhow::anyhow!(
                "the manifest `{what}` is {size} bytes, over the {limit}-byte limit every instance reads"
            )));
        }
        Err(StoreError::Gcs(error)) => return Err(StartError::Unreachable(error)),
        Err(error @ StoreError::InvalidManifest { .. }) => return Err(StartError::Unusable(error.into())),
    };
    let sha256 = release.manifest.stable_sha256();
    match store.fetch_verified(sha256, release.generation).await {
        Ok(candidate) => Ok(AtStart::Release { candidate, generation: release.generation }),
        Err(FetchError::Store(error)) => Err(StartError::Unreachable(error)),
        Err(error) => Err(StartError::Unusable(error.into())),
    }
}

/// Heartbeats read to tell an emptied store from a new one.
const HEARTBEATS_CHECKED: usize = 5;

/// An instance heard from within `--fleet-forget-after` that serves a release from the store
/// (its heartbeat names a manifest generation): the fleet has a release this instance cannot
/// see. `None` on a store no instance has served a release from: the fleet's first start.
async fn fleet_release(store: &Store) -> Result<Option<(String, String)>, GcsError> {
    let now = std::time::SystemTime::now();
    let mut listed = store.heartbeats().await?;
    listed.sort_by(|a, b| b.updated.cmp(&a.updated));
    for meta in listed.iter().take(HEARTBEATS_CHECKED) {
        let recent = meta
            .updated
            .as_deref()
            .and_then(super::heartbeat::parse_rfc3339)
            .and_then(|at| now.duration_since(at).ok())
            .is_none_or(|age| age <= store.forget_after);
        if !recent {
            continue;
        }
        let Ok(bytes) = store.read_heartbeat(meta).await else { continue };
        let Ok(beat) = serde_json::from_slice::<super::heartbeat::Heartbeat>(&bytes) else { continue };
        if let Some(generation) = beat.manifest_generation {
            return Ok(Some((beat.instance, generation)));
        }
    }
    Ok(None)
}
