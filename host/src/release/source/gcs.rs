//! A Cloud Storage object as the component (`--component gs://BUCKET/OBJECT`): read through the
//! JSON API, then one metadata request per poll; the bytes are downloaded only when the
//! object's `generation` changes (that generation, checked against its checksum). `OBJECT.sig` is
//! the detached signature (missing: unsigned, at most 64 KiB). A generation is submitted once;
//! one rejected for a transient reason is retried ([`super::retry`]) until a new generation
//! replaces it.

use std::sync::Arc;

use super::retry::Retries;
use super::{MAX_SIGNATURE_SIZE, SIGNATURE_LIMIT, WatchConfig};
use crate::release::gate::{Artifacts, Candidate, Gate};
use crate::util::gcs::{Gcs, GcsError, GsObject, ObjectMeta};

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
    download(&gcs, object, &meta, config).await
}

async fn download(
    gcs: &Gcs,
    object: &GsObject,
    meta: &ObjectMeta,
    config: &WatchConfig,
) -> anyhow::Result<Candidate> {
    let bytes = gcs
        .download(&object.bucket, meta, config.max_component_size)
        .await
        .map_err(|e| name_limit(e, "`--max-component-size`"))?;
    let signature = match gcs.metadata(&object.bucket, &format!("{}.sig", object.object)).await? {
        Some(sig) => Some(
            gcs.download(&object.bucket, &sig, MAX_SIGNATURE_SIZE)
                .await
                .map_err(|e| name_limit(e, SIGNATURE_LIMIT))?,
        ),
        None => None,
    };
    Ok(Candidate::new(bytes, source_name(object, meta.generation), signature))
}

/// A size error says which limit applies; other errors pass as they are.
fn name_limit(error: GcsError, limit: &str) -> anyhow::Error {
    let too_large = matches!(error, GcsError::TooLarge { .. });
    let error = anyhow::Error::new(error);
    if too_large { error.context(format!("too large ({limit})")) } else { error }
}

/// The provenance of one generation of the object: `gs://BUCKET/OBJECT#GENERATION`.
fn source_name(object: &GsObject, generation: i64) -> String {
    format!("{object}#{generation}")
}

/// Polls the object until the task is dropped, submitting every new generation once.
pub async fn watch(gate: Arc<Gate>, object: GsObject, config: WatchConfig) {
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
    let started_from = gate.versions().active().source.clone();
    let mut failures = 0u32;
    let mut retries = Retries::default();
    loop {
        tokio::time::sleep(super::backoff(config.poll_interval, failures)).await;
        // Logged and counted by `submit`; a transient rejection stays pending.
        let _ = retries.run_due(&gate, config.poll_interval).await;
        let polled = async {
            let Some(meta) = gcs.metadata(&object.bucket, &object.object).await? else {
                return Err(anyhow::Error::new(GcsError::NotFound(object.to_string())));
            };
            if submitted == Some(meta.generation) || started_from == source_name(&object, meta.generation) {
                return Ok(None);
            }
            download(&gcs, &object, &meta, &config).await.map(|c| Some((meta.generation, c)))
        };
        match polled.await {
            Ok(None) => {
                failures = 0;
                config.health.ok();
            }
            Ok(Some((generation, candidate))) => {
                failures = 0;
                config.health.ok();
                submitted = Some(generation);
                // Logged, counted and remembered by `submit`; a transient rejection is retried.
                let _ = retries.submit(&gate, candidate, Artifacts::WasmOnly, config.poll_interval).await;
            }
            Err(error) => {
                gate.metrics().source_errors.inc();
                failures = failures.saturating_add(1);
                config.health.failed(failures, format!("{error:#}"));
                tracing::warn!(
                    object = %object,
                    failures,
                    "cannot read `{object}` (the active version keeps serving; retrying): {error:#}"
                );
            }
        }
    }
}
