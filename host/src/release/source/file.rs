//! A component file: read at start, then watched (inotify where it works, polling always).
//!
//! The parent directory is watched with inotify (non-recursively: writers that rename into place
//! replace the inode, so a watch on the file itself would go deaf after the first swap), and the
//! file is polled every `--poll-interval` whatever inotify says: Cloud Storage FUSE on Cloud Run
//! delivers no events and caches metadata for about a minute.
//!
//! A change is noticed as a new *fingerprint* (length, mtime, ctime, inode, device) of the file
//! or of its `PATH.sig`. It is read only once it holds still: the fingerprint must stay the same
//! over a short settle delay, and again across the read (compared with the open handle, too).
//! Otherwise the round is skipped and retried shortly. This is what keeps a file being copied in
//! place (truncate, then several writes) from going live half-written; a writer that pauses for
//! longer than the settle delay can still be read half-way, and then the truncated component
//! fails validation in [`crate::release::gate::Gate::submit`] and is retried when the file changes again.
//!
//! A version is submitted once per fingerprint: a candidate rejected for good is not resubmitted
//! until the file (or its signature) changes, if only its mtime (`touch`); one rejected for a
//! transient reason is retried with backoff ([`super::retry`]).
//!
//! Only regular files are read. The component and its signature are opened with `O_NONBLOCK`
//! and checked with `fstat`, so a FIFO, socket, directory or device at either path is an error
//! naming it, never a read that waits for a writer.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use tokio::sync::Notify;

use super::retry::Retries;
use super::{MAX_SIGNATURE_SIZE, SIGNATURE_LIMIT, WatchConfig};
use crate::release::gate::{Artifacts, Candidate, Gate, Rejection};

/// How long a changed file must hold still before it is read. Much shorter than any sensible
/// poll interval, longer than the pauses of a copy that writes in chunks.
pub const SETTLE: Duration = Duration::from_millis(150);

/// How long the start-up read waits for a file that keeps changing.
const STARTUP_SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Reads `path` and `PATH.sig` (if present) as a candidate, once the file holds still.
pub async fn read_candidate(path: &Path, max_size: u64) -> anyhow::Result<Candidate> {
    let sig_path = crate::util::signing::sibling(path, "sig");
    let deadline = Instant::now() + STARTUP_SETTLE_LIMIT;
    loop {
        let before = fingerprint_blocking(path, &sig_path)
            .await
            .with_context(|| format!("cannot read the component `{}`", path.display()))?;
        if before.component.len > max_size {
            bail!(
                "`{}` is {} bytes, over the {max_size}-byte `--max-component-size`",
                path.display(),
                before.component.len
            );
        }
        // A file modified a moment ago may still be being written: let it settle first. (At
        // start this costs nothing for a file that has been there a while.)
        if before.component.recently_modified() {
            tokio::time::sleep(SETTLE).await;
            let settled = fingerprint_blocking(path, &sig_path)
                .await
                .with_context(|| format!("cannot read the component `{}`", path.display()))?;
            if settled != before {
                ensure_time_left(path, deadline)?;
                continue;
            }
        }
        match read_snapshot(path, &sig_path, &before, max_size)
            .await
            .with_context(|| format!("cannot read the component `{}`", path.display()))?
        {
            Some(snapshot) => return Ok(snapshot.candidate(path)),
            None => {
                ensure_time_left(path, deadline)?;
                tokio::time::sleep(SETTLE).await;
            }
        }
    }
}

fn ensure_time_left(path: &Path, deadline: Instant) -> anyhow::Result<()> {
    if Instant::now() > deadline {
        bail!(
            "`{}` kept changing while it was read for {} s; is something still writing it?",
            path.display(),
            STARTUP_SETTLE_LIMIT.as_secs()
        );
    }
    Ok(())
}

/// Watches `path` until the task is dropped, submitting every new stable version: inotify on
/// its directory where available, and polling every `config.poll_interval` always.
pub async fn watch(gate: Arc<Gate>, path: PathBuf, config: WatchConfig) {
    run(gate, path, config, true).await
}

/// [`watch`] without inotify: polling alone, which is all a Cloud Storage FUSE mount gets.
pub async fn poll_only(gate: Arc<Gate>, path: PathBuf, config: WatchConfig) {
    run(gate, path, config, false).await
}

async fn run(gate: Arc<Gate>, path: PathBuf, config: WatchConfig, inotify: bool) {
    let sig_path = crate::util::signing::sibling(&path, "sig");
    let wake = Arc::new(Notify::new());
    // Kept alive for as long as this task runs; dropping it stops its thread.
    let _inotify = if inotify {
        watch_directory(&path, &sig_path, wake.clone(), config.poll_interval)
    } else {
        tracing::info!(path = %path.display(), "watching the component file `{}` by polling every {:?}", path.display(), config.poll_interval);
        None
    };
    // The version loaded from this file at start: the first read finding it is not a change, even
    // if an admin upload replaced the active version meanwhile.
    let mut state =
        WatchState { started_with: Some(gate.versions().active().sha256.clone()), ..Default::default() };
    loop {
        let next = round(&gate, &path, &sig_path, &config, &mut state).await;
        // Logged and counted by `submit`; a transient rejection stays pending.
        let _ = state.retries.run_due(&gate, config.poll_interval).await;
        let wait = match next {
            Next::Wait => config.poll_interval,
            // Still moving: look again soon (only a stat, then the settle delay), not at once.
            Next::Soon => SETTLE.min(config.poll_interval),
        };
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Default)]
struct WatchState {
    /// The fingerprint of the last version read completely (whatever became of it).
    last_seen: Option<Fingerprint>,
    /// The candidate to submit again after a transient rejection.
    retries: Retries,
    /// The problem last logged at warn (missing file, unreadable), so it is logged once.
    problem: Option<String>,
    /// The active version when watching began, until the first complete read.
    started_with: Option<String>,
}

enum Next {
    Wait,
    Soon,
}

async fn round(
    gate: &Arc<Gate>,
    path: &Path,
    sig_path: &Path,
    config: &WatchConfig,
    state: &mut WatchState,
) -> Next {
    match check(gate, path, sig_path, config, state).await {
        Ok(next) => {
            if state.problem.take().is_some() {
                tracing::info!(path = %path.display(), "the component file `{}` can be read again", path.display());
            }
            next
        }
        Err(error) => {
            state.last_seen = None;
            let problem = if error.kind() == ErrorKind::NotFound {
                format!("the component file `{}` is missing", path.display())
            } else {
                format!("cannot read the component file `{}`: {error}", path.display())
            };
            if state.problem.as_deref() != Some(problem.as_str()) {
                tracing::warn!(path = %path.display(), "{problem}; the active version keeps serving, retrying");
                state.problem = Some(problem);
            }
            Next::Wait
        }
    }
}

async fn check(
    gate: &Arc<Gate>,
    path: &Path,
    sig_path: &Path,
    config: &WatchConfig,
    state: &mut WatchState,
) -> std::io::Result<Next> {
    let before = fingerprint_blocking(path, sig_path).await?;
    if state.last_seen.as_ref() == Some(&before) {
        return Ok(Next::Wait);
    }
    tokio::time::sleep(SETTLE).await;
    if fingerprint_blocking(path, sig_path).await? != before {
        tracing::debug!(path = %path.display(), "the component file is changing; waiting for it to settle");
        return Ok(Next::Soon);
    }
    if before.component.len > config.max_component_size {
        state.last_seen = Some(before.clone());
        reject_too_large(gate, path, before.component.len, config.max_component_size);
        return Ok(Next::Wait);
    }
    let Some(snapshot) = read_snapshot(path, sig_path, &before, config.max_component_size).await? else {
        tracing::debug!(path = %path.display(), "the component file changed while it was read; retrying");
        return Ok(Next::Soon);
    };
    // A new fingerprint, even with the same content (`touch`), is submitted again: that is how
    // an operator retries a rejected version.
    state.last_seen = Some(before);
    state.retries.clear();
    let candidate = snapshot.candidate(path);
    let started_with = state.started_with.take();
    if started_with.as_deref() == Some(candidate.sha256()) {
        tracing::debug!(path = %path.display(), "the component file holds the version the host started with");
        return Ok(Next::Wait);
    }
    if candidate.sha256() == gate.versions().active().sha256 {
        tracing::debug!(path = %path.display(), "the component file holds the active version");
        return Ok(Next::Wait);
    }
    tracing::info!(
        path = %path.display(),
        size = candidate.bytes().len(),
        signed = candidate.signature.is_some(),
        "the component file `{}` changed; checking the new version",
        path.display()
    );
    // The file named at start-up with `--allow-precompiled` may be a `.cwasm` (the only source
    // that may).
    let artifacts = if config.allow_precompiled { Artifacts::AlsoPrecompiled } else { Artifacts::WasmOnly };
    // Logged and counted by `submit`; the old version keeps serving if it is rejected.
    let _ = state.retries.submit(gate, candidate, artifacts, config.poll_interval).await;
    Ok(Next::Wait)
}

/// A file over the size limit is not read at all; record it as `submit` would.
fn reject_too_large(gate: &Arc<Gate>, path: &Path, size: u64, limit: u64) {
    let source = format!("file:{}", path.display());
    gate.record_rejection(&source, None, &Rejection::TooLarge { size, limit });
}

/// Starts inotify on the file's directory; `None` (polling only) where that is not possible.
fn watch_directory(
    path: &Path,
    sig_path: &Path,
    wake: Arc<Notify>,
    poll_interval: Duration,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let names: Vec<OsString> =
        [path.file_name(), sig_path.file_name()].into_iter().flatten().map(OsString::from).collect();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if is_relevant(&event, &names) => wake.notify_one(),
        Ok(_) => {}
        // The queue overflowed or the watch broke: have a look.
        Err(_) => wake.notify_one(),
    };
    let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match started {
        Ok(watcher) => {
            tracing::info!(
                path = %path.display(),
                "watching the component file `{}` (inotify on `{}`, and polling every {:?})",
                path.display(),
                dir.display(),
                poll_interval
            );
            Some(watcher)
        }
        Err(error) => {
            tracing::info!(
                path = %path.display(),
                "watching the component file `{}` by polling every {:?} (no inotify on `{}`: {error})",
                path.display(),
                poll_interval,
                dir.display()
            );
            None
        }
    }
}

fn is_relevant(event: &notify::Event, names: &[OsString]) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        // Opens and reads (our own included) change nothing; a writer closing the file does.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    // No paths: a rescan (the event queue overflowed).
    event.paths.is_empty()
        || event.paths.iter().filter_map(|p| p.file_name()).any(|name| {
            // `..data` and friends: Kubernetes-style volumes swap a symlinked directory.
            names.iter().any(|n| n == name) || name.as_encoded_bytes().starts_with(b"..")
        })
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// ctime, device and inode (Unix): a rename into place changes the inode even when length
    /// and mtime are equal.
    changed: (i64, i64),
    dev: u64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let (changed, dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            ((meta.ctime(), meta.ctime_nsec()), meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (changed, dev, ino) = ((0, 0), 0, 0);
        Self { len: meta.len(), modified: meta.modified().ok(), changed, dev, ino }
    }

    fn recently_modified(&self) -> bool {
        self.modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < SETTLE * 2)
    }
}

/// The component file and its signature (absent is part of the fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    component: Stamp,
    signature: Option<Stamp>,
}

fn fingerprint(path: &Path, sig_path: &Path) -> std::io::Result<Fingerprint> {
    let meta = std::fs::metadata(path)?;
    ensure_regular(path, &meta)?;
    let signature = match std::fs::metadata(sig_path) {
        Ok(meta) => {
            ensure_regular(sig_path, &meta)?;
            Some(Stamp::of(&meta))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("`{}`: {e}", sig_path.display()))),
    };
    Ok(Fingerprint { component: Stamp::of(&meta), signature })
}

/// An error naming `path` and what it is, unless it is a regular file.
fn ensure_regular(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "of another kind"
    };
    Err(std::io::Error::new(
        ErrorKind::InvalidInput,
        format!(
            "`{}` is {what}, not a regular file; only regular files are read: put the file itself there",
            path.display()
        ),
    ))
}

/// Opens `path` for reading without ever waiting (`O_NONBLOCK`: a FIFO with no writer opens at
/// once), and refuses it unless the open handle is a regular file (`fstat`).
fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    ensure_regular(path, &file.metadata()?)?;
    Ok(file)
}

/// `stat` off the async threads: on a FUSE mount it is a network round trip.
async fn fingerprint_blocking(path: &Path, sig_path: &Path) -> std::io::Result<Fingerprint> {
    let (path, sig_path) = (path.to_path_buf(), sig_path.to_path_buf());
    tokio::task::spawn_blocking(move || fingerprint(&path, &sig_path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("the stat task failed: {e}"))))
}

/// One complete, consistent read of the file and its signature.
struct Snapshot {
    bytes: Vec<u8>,
    signature: Option<Vec<u8>>,
}

impl Snapshot {
    fn candidate(self, path: &Path) -> Candidate {
        Candidate::new(self.bytes, format!("file:{}", path.display()), self.signature)
    }
}

/// Reads the file (and signature) fingerprinted as `expected`; `None` when either changed during
/// the read (compared on the open handle and on the paths afterwards).
async fn read_snapshot(
    path: &Path,
    sig_path: &Path,
    expected: &Fingerprint,
    max_size: u64,
) -> std::io::Result<Option<Snapshot>> {
    let (path, sig_path, expected) = (path.to_path_buf(), sig_path.to_path_buf(), expected.clone());
    tokio::task::spawn_blocking(move || read_snapshot_blocking(&path, &sig_path, &expected, max_size))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("the read task failed: {e}"))))
}

fn read_snapshot_blocking(
    path: &Path,
    sig_path: &Path,
    expected: &Fingerprint,
    max_size: u64,
) -> std::io::Result<Option<Snapshot>> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::with_capacity(expected.component.len.min(max_size) as usize);
    // One byte over the limit is enough to know it grew.
    (&mut file).take(max_size.saturating_add(1)).read_to_end(&mut bytes)?;
    let handle = Stamp::of(&file.metadata()?);
    drop(file);
    let signature = match expected.signature {
        None => None,
        Some(_) => match open_regular(sig_path) {
            Ok(sig) => {
                let mut text = Vec::new();
                sig.take(MAX_SIGNATURE_SIZE + 1).read_to_end(&mut text)?;
                if text.len() as u64 > MAX_SIGNATURE_SIZE {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("`{}` is over 64 KiB: {SIGNATURE_LIMIT}", sig_path.display()),
                    ));
                }
                Some(text)
            }
            // Removed since the stat: changed, try again.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("`{}`: {e}", sig_path.display()))),
        },
    };
    let after = match fingerprint(path, sig_path) {
        Ok(after) => after,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let consistent =
        handle == expected.component && after == *expected && bytes.len() as u64 == expected.component.len;
    Ok(consistent.then_some(Snapshot { bytes, signature }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_to_the_file_or_its_signature_wake_the_watcher() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
        let names = vec![OsString::from("c.wasm"), OsString::from("c.wasm.sig")];
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        assert!(is_relevant(
            &event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/d/c.wasm"),
            &names
        ));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::File), "/d/c.wasm.sig"), &names));
        assert!(is_relevant(
            &event(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/d/c.wasm"),
            &names
        ));
        assert!(is_relevant(&event(EventKind::Create(CreateKind::Folder), "/d/..data_tmp"), &names));
        assert!(!is_relevant(
            &event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/d/c.wasm"),
            &names
        ));
        assert!(!is_relevant(&event(EventKind::Modify(ModifyKind::Any), "/d/other.wasm"), &names));
        assert!(is_relevant(&notify::Event::new(EventKind::Other), &names));
    }

    #[test]
    fn a_file_that_changes_during_the_read_is_not_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        let sig_path = crate::util::signing::sibling(&path, "sig");
        std::fs::write(&path, b"first version").unwrap();
        let expected = fingerprint(&path, &sig_path).unwrap();
        let snapshot = read_snapshot_blocking(&path, &sig_path, &expected, 1 << 20).unwrap().unwrap();
        assert_eq!(snapshot.bytes, b"first version");
        assert!(snapshot.signature.is_none());

        std::fs::write(&path, b"second, longer version").unwrap();
        assert!(read_snapshot_blocking(&path, &sig_path, &expected, 1 << 20).unwrap().is_none());
        // A signature appearing changes the fingerprint too.
        let expected = fingerprint(&path, &sig_path).unwrap();
        std::fs::write(&sig_path, b"c2lnbmF0dXJl\n").unwrap();
        assert_ne!(fingerprint(&path, &sig_path).unwrap(), expected);
        assert!(read_snapshot_blocking(&path, &sig_path, &expected, 1 << 20).unwrap().is_none());
    }
}
