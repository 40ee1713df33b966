//! A component URL (a Cloud Storage object, any static file server): fetched at start, then
//! polled with `If-None-Match` / `If-Modified-Since`.

use std::sync::Arc;

use super::WatchConfig;
use crate::app::App;
use crate::swap::Candidate;

/// Fetches `url` (and `URL.sig`, if it exists) as a candidate. (Being written.)
pub async fn fetch_candidate(url: &str, _config: &WatchConfig) -> anyhow::Result<Candidate> {
    anyhow::bail!("URL components are not supported yet: `{url}`")
}

/// Polls `url` until the task is dropped. (Being written.)
pub async fn watch(_app: Arc<App>, _url: String, _config: WatchConfig) {}
