//! A component in an OCI registry (`--component oci://REGISTRY/REPOSITORY:TAG`): pulled at
//! start, then the tag resolved once per `--poll-interval` (one `HEAD` of its manifest); a new
//! digest is pulled (manifest and the wasm layer, each checked against its digest) and handed to
//! the gate like any source's candidate. A digest reference (`…@sha256:…`) never changes and is
//! not polled. A failed poll is logged and counted, the active version keeps serving, and polls
//! back off (as long as a 429's or 503's `Retry-After` asks, if longer).
//!
//! Signatures: a component signed the wasmsign2 way carries its signature in its own bytes (a
//! custom section), so the layer's digest covers it and nothing else is fetched; see the README.

use std::sync::Arc;

use anyhow::Context;

use super::WatchConfig;
use super::retry::Retries;
use crate::release::gate::{Artifacts, Candidate, Gate};
use crate::util::oci::{OciError, Reference, Registry};

pub fn client(config: &WatchConfig) -> anyhow::Result<Registry> {
    Registry::new(&config.registry)
}

/// Pulls what `reference` names now.
pub async fn fetch_candidate(reference: &Reference, config: &WatchConfig) -> anyhow::Result<Candidate> {
    let registry = client(config)?;
    let fetch = async {
        let digest = registry.resolve(reference).await?;
        pull(&registry, reference, &digest, config).await
    };
    fetch.await.with_context(|| format!("cannot pull the component `{reference}`"))
}

/// The component at `digest`, as a candidate whose source names the reference and the digest.
pub async fn pull(
    registry: &Registry,
    reference: &Reference,
    digest: &str,
    config: &WatchConfig,
) -> Result<Candidate, OciError> {
    let pulled = registry.pull(reference, digest, config.max_component_size).await?;
    tracing::info!(
        reference = %reference,
        digest,
        layout = ?pulled.layout,
        bytes = pulled.bytes.len(),
        "pulled `{}`",
        reference.at(digest)
    );
    Ok(Candidate::new(pulled.bytes, reference.at(digest), None))
}

/// Polls the tag until the task is dropped, submitting every new digest once.
pub async fn watch(gate: Arc<Gate>, reference: Reference, config: WatchConfig) {
    let registry = match client(&config) {
        Ok(registry) => registry,
        Err(error) => {
            tracing::error!(reference = %reference, "cannot watch `{reference}` for new versions: {error:#}");
            return;
        }
    };
    tracing::info!(reference = %reference, "resolving `{reference}` every {:?}", config.poll_interval);
    // The digest submitted last; at first, the one the active version was pulled from.
    let mut submitted: Option<String> = None;
    let started_from = gate.versions().active().source.clone();
    let mut failures = 0u32;
    let mut wait = config.poll_interval;
    let mut retries = Retries::default();
    loop {
        tokio::time::sleep(wait).await;
        // Logged and counted by `submit`; a transient rejection stays pending.
        let _ = retries.run_due(&gate, config.poll_interval).await;
        let polled = async {
            let digest = registry.resolve(&reference).await?;
            if submitted.as_deref() == Some(digest.as_str()) || started_from == reference.at(&digest) {
                return Ok(None);
            }
            pull(&registry, &reference, &digest, &config).await.map(|c| Some((digest, c)))
        };
        let result: Result<_, OciError> = polled.await;
        wait = config.poll_interval;
        match result {
            Ok(None) => {
                failures = 0;
                config.health.ok();
            }
            Ok(Some((digest, candidate))) => {
                failures = 0;
                config.health.ok();
                submitted = Some(digest);
                // Logged, counted and remembered by `submit`; a transient rejection is retried.
                let _ = retries.submit(&gate, candidate, Artifacts::WasmOnly, config.poll_interval).await;
            }
            Err(error) => {
                gate.metrics().source_errors.inc();
                failures = failures.saturating_add(1);
                config.health.failed(failures, error.to_string());
                wait = super::backoff(config.poll_interval, failures)
                    .max(error.retry_after().unwrap_or_default());
                tracing::warn!(
                    reference = %reference,
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot resolve or pull `{reference}` (the active version keeps serving; retrying): {error}"
                );
            }
        }
    }
}
