//! A component file: read at start, then watched (inotify where it works, polling always).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use super::WatchConfig;
use crate::app::App;
use crate::swap::Candidate;

/// Reads `path` and `PATH.sig` (if present) as a candidate.
pub async fn read_candidate(path: &Path, max_size: u64) -> anyhow::Result<Candidate> {
    let size = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("cannot read the component `{}`", path.display()))?
        .len();
    if size > max_size {
        bail!("`{}` is {size} bytes, over the {max_size}-byte `--max-component-size`", path.display());
    }
    let bytes =
        tokio::fs::read(path).await.with_context(|| format!("cannot read the component `{}`", path.display()))?;
    let signature = tokio::fs::read(crate::signing::sibling(path, "sig")).await.ok();
    Ok(Candidate { bytes, source: format!("file:{}", path.display()), signature })
}

/// Watches `path` until the task is dropped. (Being written.)
pub async fn watch(_app: Arc<App>, _path: PathBuf, _config: WatchConfig) {}
