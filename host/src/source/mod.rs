//! Where new component versions come from: a watched file ([`file`]) or a polled URL ([`url`]).
//! The admin upload lives in [`crate::admin`]. Every source hands its candidates to
//! [`crate::swap::submit`], which decides whether they go live.

pub mod file;
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
}

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
    }
}
