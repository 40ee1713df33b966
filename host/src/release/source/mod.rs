//! Where new component versions come from: a watched file ([`file`]), a polled URL ([`url`]), a
//! polled Cloud Storage object ([`gcs`]) or a tag in an OCI registry ([`oci`]). The release store is [`crate::release::store`].
//! The admin upload lives in [`crate::app::admin`]. Every source hands its candidates to
//! [`crate::release::gate::Gate::submit`], which decides whether they go live; a transient rejection is
//! retried with backoff ([`retry`]), a deterministic one only once the source changes.

mod component;
pub use component::ComponentSource;
pub mod file;
pub mod gcs;
pub mod health;
pub mod oci;
pub mod retry;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use crate::release::gate::{Candidate, Gate};

/// Settings the watchers need.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// How often to look for a change; zero disables watching.
    pub poll_interval: Duration,
    /// Time limit for one URL fetch.
    pub fetch_timeout: Duration,
    /// Larger downloads are refused before they are read to the end.
    pub max_component_size: u64,
    /// Where Cloud Storage is, for `gs://` components.
    pub storage: crate::util::gcs::StorageConfig,
    /// How registries are reached and logged in to, for `oci://` components.
    pub registry: crate::util::oci::RegistryConfig,
    /// Where a watcher reports its failing polls (for `info`).
    pub health: Arc<health::SourceHealth>,
    /// `--allow-precompiled`: a `.cwasm` is accepted from the watched `--component` file (never
    /// from a URL or `gs://`).
    pub allow_precompiled: bool,
}

/// A detached signature is base64 text of 64 bytes; anything much longer is not one.
pub const MAX_SIGNATURE_SIZE: u64 = 64 * 1024;

/// What a size error says about the signature's limit.
pub const SIGNATURE_LIMIT: &str = "a signature is at most 64 KiB";

/// Reads the component the host starts with (and its detached signature, when there is one).
pub async fn fetch_initial(source: &ComponentSource, config: &WatchConfig) -> anyhow::Result<Candidate> {
    match source {
        ComponentSource::Builtin => Ok(Candidate::new(
            crate::versions::registry::BUILTIN_ECHO_WASM.to_vec(),
            source.to_string(),
            None,
        )),
        ComponentSource::File(path) => file::read_candidate(path, config.max_component_size).await,
        ComponentSource::Url(url) => url::fetch_candidate(url, config).await,
        // `gs://BUCKET/OBJECT` names carry no credentials (those come from the metadata server).
        ComponentSource::Gcs(object) => gcs::fetch_candidate(object, config)
            .await
            .map_err(|e| e.context(format!("cannot read the component `{object}`"))),
        ComponentSource::Oci(reference) => oci::fetch_candidate(reference, config).await,
    }
}

/// Starts watching `source` for new versions; `None` for the built-in component or when
/// watching is off.
pub fn spawn_watcher(
    gate: Arc<Gate>,
    source: &ComponentSource,
    config: WatchConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.poll_interval.is_zero() {
        return None;
    }
    match source {
        ComponentSource::Builtin => None,
        ComponentSource::File(path) => Some(tokio::spawn(file::watch(gate, path.clone(), config))),
        ComponentSource::Url(url) => Some(tokio::spawn(url::watch(gate, url.clone(), config))),
        ComponentSource::Gcs(object) => Some(tokio::spawn(gcs::watch(gate, object.clone(), config))),
        // A digest never changes.
        ComponentSource::Oci(reference) if reference.pinned() => None,
        ComponentSource::Oci(reference) => Some(tokio::spawn(oci::watch(gate, reference.clone(), config))),
    }
}

pub use crate::util::backoff::backoff;
