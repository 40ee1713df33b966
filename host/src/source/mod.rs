//! Where new component versions come from: a watched file ([`file`]), a polled URL ([`url`]) or
//! a polled Cloud Storage object ([`gcs`]). The release store is [`crate::store`].
//! The admin upload lives in [`crate::admin`]. Every source hands its candidates to
//! [`crate::swap::submit`], which decides whether they go live; a transient rejection is
//! retried with backoff ([`retry`]), a deterministic one only once the source changes.

pub mod file;
pub mod gcs;
pub mod retry;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::ComponentSource;
use crate::swap::Candidate;

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
    pub storage: crate::gcs::StorageConfig,
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
        ComponentSource::Builtin => Ok(Candidate {
            bytes: crate::registry::BUILTIN_ECHO_WASM.to_vec(),
            source: source.to_string(),
            signature: None,
        }),
        ComponentSource::File(path) => file::read_candidate(path, config.max_component_size).await,
        ComponentSource::Url(url) => url::fetch_candidate(url, config).await,
        // `gs://BUCKET/OBJECT` names carry no credentials (those come from the metadata server).
        ComponentSource::Gcs(object) => gcs::fetch_candidate(object, config)
            .await
            .map_err(|e| e.context(format!("cannot read the component `{object}`"))),
    }
}

/// Starts watching `source` for new versions; `None` for the built-in component or when
/// watching is off.
pub fn spawn_watcher(
    app: Arc<App>,
    source: &ComponentSource,
    config: WatchConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.poll_interval.is_zero() {
        return None;
    }
    match source {
        ComponentSource::Builtin => None,
        ComponentSource::File(path) => Some(tokio::spawn(file::watch(app, path.clone(), config))),
        ComponentSource::Url(url) => Some(tokio::spawn(url::watch(app, url.clone(), config))),
        ComponentSource::Gcs(object) => Some(tokio::spawn(gcs::watch(app, object.clone(), config))),
    }
}

/// Repeated failures back off up to this (or the poll interval, if longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Failures in a row polled at the normal interval before backing off.
const FAILURES_BEFORE_BACKOFF: u32 = 3;

/// The wait before the next poll after `failures` failed polls in a row: the poll interval, then
/// doubling up to 30 s (or the poll interval, if longer).
pub fn backoff(poll_interval: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll_interval);
    match failures.checked_sub(FAILURES_BEFORE_BACKOFF) {
        None | Some(0) => poll_interval,
        Some(extra) => poll_interval.saturating_mul(1 << extra.min(16)).min(cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_a_few_failures_and_is_capped() {
        let poll = Duration::from_secs(2);
        assert_eq!(backoff(poll, 0), poll);
        assert_eq!(backoff(poll, 3), poll);
        assert_eq!(backoff(poll, 4), poll * 2);
        assert_eq!(backoff(poll, 5), poll * 4);
        assert_eq!(backoff(poll, 100), MAX_BACKOFF);
        // A poll interval longer than the cap is never shortened.
        assert_eq!(backoff(Duration::from_secs(60), 100), Duration::from_secs(60));
    }
}
