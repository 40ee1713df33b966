//! A Cloud Storage object as the component (`--component gs://BUCKET/OBJECT`): read through the
//! JSON API, then one metadata request per poll; the bytes are downloaded only when the
//! object's `generation` changes (that generation, checked against its checksum). `OBJECT.sig` is
//! the detached signature (missing: unsigned).

use std::sync::Arc;

use super::WatchConfig;
use crate::app::App;
use crate::gcs::{Gcs, GcsError, GsObject, ObjectMeta};
use crate::swap::Candidate;

/// A detached signature is base64 text of 64 bytes; anything much longer is not one.
const MAX_SIGNATURE_SIZE: u64 = 64 * 1024;

pub fn client(config: &WatchConfig) -> anyhow::Result<Gcs> {
    Gcs::new(&config.storage, config.fetch_timeout)
}

/// Reads the object as it is now, with its generation.
pub async fn fetch_candidate(object: &GsObject, config: &WatchConfig) -> anyhow::Result<Candidate> {
    let gcs = client(config)?;
    let meta = gcs
        .metadata(&object.bucket, &object.object)
        .await?
        .ok_or_else(|| GcsError::NotFound(object.to_string()))?;
    Ok(download(&gcs, object, &meta, config).await?)
}

async fn download(
    gcs: &Gcs,
    object: &GsObject,
    meta: &ObjectMeta,
    config: &WatchConfig,
) -> Result<Candidate, GcsError> {
    let bytes = gcs.download(&object.bucket, meta, config.max_component_size).await?;
    let signature = match gcs.metadata(&object.bucket, &format!("{}.sig", object.object)).await? {
        Some(sig) => Some(gcs.download(&object.bucket, &sig, MAX_SIGNATURE_SIZE).await?),
        None => None,
    };
    Ok(Candidate { bytes, source: source_name(object, meta.generation), signature })
}

/// The provenance of one generation of the object: `gs://BUCKET/OBJECT#GENERATION`.
fn source_name(object: &GsObject, generation: i64) -> String {
    format!("{object}#{generation}")
}

/// Polls the object until the task is dropped, submitting every new generation once.
pub async fn watch(app: Arc<App>, object: GsObject, config: WatchConfig) {
    let gcs = match client(&config) {
        Ok(gcs) => gcs,
        Err(error) => {
            tracing::error!(object = %object, "cannot watch `{object}` for new versions: {error:#}");
            return;
        }
    };
    tracing::info!(object = %object, "polling `{object}` every {:?}", config.poll_interval);
    // The generation submitted last; at first, the one the active version was read from.
    let mut submitted: Option<i64> = None;
    let started_from = app.registry.active().source.clone();
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(super::backoff(config.poll_interval, failures)).await;
        let polled = async {
            let Some(meta) = gcs.metadata(&object.bucket, &object.object).await? else {
                return Err(GcsError::NotFound(object.to_string()));
            };
            if submitted == Some(meta.generation) || started_from == source_name(&object, meta.generation) {
                return Ok(None);
            }
            download(&gcs, &object, &meta, &config).await.map(|c| Some((meta.generation, c)))
        };
        match polled.await {
            Ok(None) => failures = 0,
            Ok(Some((generation, candidate))) => {
                failures = 0;
                submitted = Some(generation);
                // Logged, counted and remembered by `submit`.
                let _ = crate::swap::submit(&app, candidate).await;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    object = %object,
                    failures,
                    "cannot read `{object}` (the active version keeps serving; retrying): {error}"
                );
            }
        }
    }
}
