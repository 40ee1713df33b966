//! What a new instance takes from the store before it binds its port: the release's stable
//! version, fetched and checked against its name like every version from the store, or the
//! reason it cannot have one.

use super::{FetchError, Store, StoreError};
use crate::gcs::GcsError;
use crate::swap::Candidate;

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
        return match store.bucket_exists().await.map_err(StartError::Unreachable)? {
            true => Ok(AtStart::NoRelease),
            false => Err(StartError::NoBucket(store.location.bucket.clone())),
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
