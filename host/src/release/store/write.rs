//! Writing the manifest: compact, within the [`MAX_MANIFEST_SIZE`] every instance reads, with a
//! generation precondition. A write whose reply is lost (a timeout, a connection cut after the
//! request went out, a 5xx) may or may not have been made: it is resolved by reading the manifest
//! again and looking for the write's `write_id` (set by [`Manifest::record`]), and when the
//! manifest has not moved, by sending the same conditional write once more (of the two, at most
//! one can be made). Never guessed: the answer is written, not written, or [`WriteError::Unknown`].

use super::manifest::{MAX_MANIFEST_SIZE, Manifest};
use super::{MANIFEST, Store};
use crate::util::gcs::GcsError;

/// Why a manifest write was not made, or may not have been.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The manifest is no longer at the generation the write was for: another writer won.
    #[error("the manifest changed since generation {0}")]
    Conflict(i64),
    #[error("the manifest would be {size} bytes, over the {limit}-byte limit every instance reads")]
    TooLarge { size: u64, limit: u64 },
    /// The store refused or could not be reached; nothing was written.
    #[error(transparent)]
    Failed(GcsError),
    /// The write went out, its reply was lost, and reading the manifest again did not tell.
    #[error(
        "the manifest write was sent but not answered, and the store could not tell whether it was made: {0}"
    )]
    Unknown(GcsError),
}

impl Store {
    /// Writes the manifest if its generation is still `if_generation` (0: if there is none);
    /// returns the new generation.
    pub async fn write_manifest(&self, manifest: &Manifest, if_generation: i64) -> Result<i64, WriteError> {
        let mut marked = manifest.clone();
        let write_id = match &marked.write_id {
            Some(id) => id.clone(),
            None => marked.write_id.insert(hex::encode(crate::util::gcs::rand_bytes::<12>())).clone(),
        };
        let bytes = marked.to_bytes();
        let size = bytes.len() as u64;
        if size > MAX_MANIFEST_SIZE {
            return Err(WriteError::TooLarge { size, limit: MAX_MANIFEST_SIZE });
        }
        let object = self.location.object(MANIFEST);
        // The error of the first attempt, once its reply was lost and the manifest had not moved.
        let mut lost: Option<GcsError> = None;
        loop {
            let sent = self
                .gcs
                .upload(self.bucket(), &object, &bytes, "application/json", Some(if_generation))
                .await;
            let error = match (sent, lost.take()) {
                (Ok(meta), _) => return Ok(meta.generation),
                (Err(GcsError::PreconditionFailed(_)), None) => {
                    return Err(WriteError::Conflict(if_generation));
                }
                (Err(error), None) if !maybe_made(&error) => return Err(WriteError::Failed(error)),
                (Err(error), None) => error,
                // The second attempt: whatever it met, the first may have been made since.
                (Err(_), Some(first)) => {
                    return match self.resolve(&write_id, if_generation).await {
                        Ok(Some(generation)) => Ok(generation),
                        Err(WriteError::Conflict(generation)) => Err(WriteError::Conflict(generation)),
                        Ok(None) | Err(_) => Err(WriteError::Unknown(first)),
                    };
                }
            };
            match self.resolve(&write_id, if_generation).await {
                Ok(Some(generation)) => {
                    tracing::info!(
                        generation,
                        "the manifest write's reply was lost ({error}); read back, it was made"
                    );
                    return Ok(generation);
                }
                Ok(None) => lost = Some(error),
                Err(WriteError::Conflict(generation)) => return Err(WriteError::Conflict(generation)),
                Err(_) => return Err(WriteError::Unknown(error)),
            }
        }
    }

    /// After a lost reply: `Some(generation)` when the manifest moved and the write `write_id` is
    /// in it, [`WriteError::Conflict`] when another write moved it, `None` when it has not moved
    /// (the write not made, or not yet).
    async fn resolve(&self, write_id: &str, if_generation: i64) -> Result<Option<i64>, WriteError> {
        match self.current().await {
            Ok((_, generation)) if generation == if_generation => Ok(None),
            Ok((Some(release), generation)) if release.manifest.written_by(write_id) => Ok(Some(generation)),
            Ok(_) => Err(WriteError::Conflict(if_generation)),
            Err(error) => Err(WriteError::Failed(error)),
        }
    }
}

/// Whether a failed request may still have been carried out: anything but an answer that says
/// it was not (a 4xx but 408) and a connection that was never made.
fn maybe_made(error: &GcsError) -> bool {
    match error {
        GcsError::Status { status, .. } => {
            status.is_server_error() || *status == http::StatusCode::REQUEST_TIMEOUT
        }
        GcsError::Transport { source, .. } => !source
            .chain()
            .any(|cause| cause.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_connect)),
        GcsError::NotFound(_) | GcsError::PreconditionFailed(_) | GcsError::Corrupt { .. } => false,
        GcsError::TooLarge { .. } => false,
    }
}
