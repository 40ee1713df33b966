//! The fleet's release store on Cloud Storage (`--store gs://BUCKET/PREFIX/`): what is in it and
//! how this instance reads and writes it.
//!
//! ```text
//! manifest.json                the release the fleet serves (see [`manifest`])
//! components/<sha256>.wasm     immutable; `.sig` beside it when signed
//! instances/<id>.json          one heartbeat per live instance (see [`heartbeat`])
//! ```
//! Every instance follows the manifest ([`follow`]), starts on its release ([`start`]) and
//! re-checks it before routing on a stale view; a push or rollback on any instance writes it
//! with a generation precondition ([`release`]), so concurrent writers never lose an update. Every
//! manifest write is compact, within the size every reader accepts, and resolved by reading it
//! back when its reply is lost ([`write`]).

pub mod follow;
pub mod heartbeat;
pub mod manifest;
pub mod metrics;
pub mod release;
pub mod start;
mod write;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::release::gate::Candidate;
use crate::release::store::metrics::ReleaseMetrics;
use crate::util::freshness::Freshness;
use crate::util::gcs::{Gcs, GcsError, GsPrefix, ObjectMeta, StorageConfig};
pub use crate::util::time::now_rfc3339;
pub use manifest::Manifest;
pub use write::WriteError;

const MANIFEST: &str = "manifest.json";
const INSTANCES: &str = "instances/";

/// Reads of the manifest in a row that may find the generation just listed replaced (by a write
/// between the metadata read and the download) before [`Store::current`] gives up.
const READ_ATTEMPTS: u32 = 5;

/// One instance's handle on the store, and what it last saw of it.
pub struct Store {
    gcs: Gcs,
    pub location: GsPrefix,
    /// This instance's name in `instances/` (the metadata server's id, else random).
    pub instance: String,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// How long the fleet view keeps an instance that stopped heart-beating (`--fleet-forget-after`).
    pub forget_after: Duration,
    max_component_size: u64,
    status: Mutex<SyncStatus>,
    /// When the store last confirmed this instance's view of the release (`--max-staleness`).
    pub freshness: Arc<Freshness>,
    /// The release store's metrics: re-checks, unconfirmed requests, problems.
    pub metrics: ReleaseMetrics,
    /// What this instance served before the store had a release (see [`Seed`]).
    seed: Mutex<Option<Seed>>,
    /// Wakes the follower at once (after this instance wrote the manifest).
    pub(crate) poll_now: tokio::sync::Notify,
    /// Wakes the heartbeat at once (after a swap or a rejection).
    pub(crate) heartbeat_now: Arc<tokio::sync::Notify>,
}

/// How the store's view is kept fresh and how long a silent instance stays in the fleet view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowSettings {
    pub staleness: crate::util::freshness::StalenessPolicy,
    pub forget_after: Duration,
}

/// The settings a [`Store`] is opened with.
pub struct StoreSettings {
    pub location: GsPrefix,
    pub storage: StorageConfig,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub fetch_timeout: Duration,
    pub max_component_size: u64,
    pub follow: FollowSettings,
    pub metrics: ReleaseMetrics,
}

/// What the follower last saw, for `info`, the heartbeat and the fleet view.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncStatus {
    /// The manifest generation last read (as text: generations exceed JSON's safe integers).
    #[serde(serialize_with = "generation_text")]
    pub manifest_generation: Option<i64>,
    /// The manifest's stable version then.
    pub stable: Option<String>,
    pub last_ok_at: Option<String>,
    pub last_error: Option<ErrorRecord>,
    /// Failed polls in a row (0 once one succeeds).
    pub consecutive_failures: u32,
    /// Why the store's release is not (wholly) what this instance serves: an invalid manifest,
    /// a component missing, refused or not what its name says, a manifest deleted. Kept until a
    /// release is applied whole, however many polls succeed meanwhile.
    pub release_problem: Option<ErrorRecord>,
}

impl SyncStatus {
    /// The store error to show now: a failing poll's, else the release's problem.
    pub fn current_error(&self) -> Option<&ErrorRecord> {
        self.last_error.as_ref().filter(|_| self.consecutive_failures > 0).or(self.release_problem.as_ref())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorRecord {
    pub at: String,
    pub message: String,
}

fn generation_text<S: serde::Serializer>(g: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match g {
        Some(g) => s.serialize_some(&g.to_string()),
        None => s.serialize_none(),
    }
}

/// Reading the release failed: the store, or a manifest that is not one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Gcs(#[from] GcsError),
    #[error("`{object}` (generation {generation}) changes nothing: {error:#}")]
    InvalidManifest { object: String, generation: i64, error: anyhow::Error },
}

/// The version an instance served before the store had a release, with its bytes.
#[derive(Clone)]
struct Seed {
    sha256: String,
    candidate: Candidate,
}

/// Why a version named by the manifest could not be taken from the store.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the manifest names `sha256:{sha256}`, which is not in the store (`{object}`)")]
    Missing { sha256: String, object: String },
    #[error("the component is {size} bytes, over the {limit}-byte `--max-component-size`")]
    TooLarge { size: u64, limit: u64 },
    #[error("`{object}`'s bytes hash to `{actual}`, not to the sha256 it is stored under")]
    NotItsName { actual: String, object: String },
    #[error(transparent)]
    Store(#[from] GcsError),
}

/// The manifest with the generation it was read at.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub generation: i64,
}

impl Store {
    /// Opens the store (no request is made) and names this instance.
    pub async fn open(settings: StoreSettings) -> anyhow::Result<Store> {
        let gcs = Gcs::new(&settings.storage, settings.fetch_timeout)?;
        let instance = match &settings.storage.metadata_host {
            Some(host) => crate::util::gcs::auth::instance_id(host).await,
            None => None,
        }
        .unwrap_or_else(|| hex::encode(crate::util::gcs::rand_bytes::<8>()));
        Ok(Store {
            gcs,
            location: settings.location,
            instance,
            poll_interval: settings.poll_interval,
            heartbeat_interval: settings.heartbeat_interval,
            forget_after: settings.follow.forget_after,
            max_component_size: settings.max_component_size,
            status: Mutex::new(SyncStatus::default()),
            freshness: Arc::new(Freshness::new(settings.follow.staleness)),
            metrics: settings.metrics,
            seed: Mutex::new(None),
            poll_now: tokio::sync::Notify::new(),
            heartbeat_now: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn status(&self) -> SyncStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update_status(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// This instance serves `candidate` (its `--component`) because the store had no release
    /// when it started: the first release records it as the version before it.
    pub fn seed_with(&self, candidate: Candidate) {
        let sha256 = candidate.sha256().to_string();
        *self.seed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Seed { sha256, candidate });
    }

    /// For the first write to a store without a release: a release of the version this
    /// instance serves (uploaded to `components/`, as a push would), so that a canary can start
    /// beside it and a rollback after the first push has somewhere to go. `None` without a seed
    /// (this instance started on a release, or on a precompiled component).
    pub async fn seed_release(&self) -> Result<Option<Manifest>, GcsError> {
        let seed = self.seed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(Seed { sha256, candidate }) = seed else { return Ok(None) };
        self.put_component(&sha256, candidate.bytes(), candidate.signature.as_deref()).await?;
        let mut manifest = Manifest::first(&sha256);
        let by = format!("instance:{}", self.instance);
        let reason = format!("the version the fleet served before its first release ({})", candidate.source);
        manifest.record(manifest::Action::Push, &by, now_rfc3339(), Some(reason));
        Ok(Some(manifest))
    }

    /// This instance started on the release of `generation` (read at start-up).
    pub fn started_on(&self, generation: i64) {
        self.update_status(|status| status.manifest_generation = Some(generation));
    }

    pub fn gcs(&self) -> &Gcs {
        &self.gcs
    }

    fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// `gs://BUCKET/PREFIX/manifest.json`.
    pub fn manifest_url(&self) -> String {
        format!("gs://{}/{}", self.bucket(), self.location.object(MANIFEST))
    }

    pub fn component_object(&self, sha256: &str) -> String {
        self.location.object(&format!("components/{sha256}.wasm"))
    }

    fn heartbeat_object(&self, instance: &str) -> String {
        self.location.object(&format!("{INSTANCES}{instance}.json"))
    }

    /// The manifest's metadata (one request: what every poll costs).
    pub async fn manifest_meta(&self) -> Result<Option<ObjectMeta>, GcsError> {
        self.gcs.metadata(self.bucket(), &self.location.object(MANIFEST)).await
    }

    /// The manifest of `meta`'s generation.
    pub async fn read_manifest(&self, meta: &ObjectMeta) -> Result<Release, StoreError> {
        let bytes = self.gcs.download(self.bucket(), meta, manifest::MAX_MANIFEST_SIZE).await?;
        let manifest = Manifest::parse(&bytes).map_err(|error| StoreError::InvalidManifest {
            object: format!("gs://{}/{}", self.bucket(), self.location.object(MANIFEST)),
            generation: meta.generation,
            error,
        })?;
        Ok(Release { manifest, generation: meta.generation })
    }

    /// The current release and the manifest's generation (0: no manifest). A manifest that does
    /// not parse reads as no release, with its generation, so a writer can replace it. A
    /// generation replaced between the metadata read and the download is read again (a few
    /// times): a concurrent write is not an outage.
    pub async fn current(&self) -> Result<(Option<Release>, i64), GcsError> {
        let Some(meta) = self.manifest_meta().await? else { return Ok((None, 0)) };
        match self.read_newest(meta).await {
            Ok(release) => {
                let generation = release.generation;
                Ok((Some(release), generation))
            }
            Err(StoreError::InvalidManifest { generation, .. }) => Ok((None, generation)),
            Err(StoreError::Gcs(error)) => Err(error),
        }
    }

    /// The manifest of `meta`'s generation or, when that generation is replaced while being read
    /// (a concurrent write), of the newer one (a few times): a write is not an outage.
    pub async fn read_newest(&self, mut meta: ObjectMeta) -> Result<Release, StoreError> {
        for _ in 1..READ_ATTEMPTS {
            match self.read_manifest(&meta).await {
                Err(StoreError::Gcs(GcsError::NotFound(what))) => {
                    tracing::debug!("`{what}` was replaced while being read; reading the manifest again");
                    match self.manifest_meta().await? {
                        Some(newer) => meta = newer,
                        None => return Err(StoreError::Gcs(GcsError::NotFound(what))),
                    }
                }
                read => return read,
            }
        }
        self.read_manifest(&meta).await
    }

    /// Uploads a component (and its signature) under its sha256. Components are immutable: one
    /// that is already there is left as it is.
    pub async fn put_component(
        &self,
        sha256: &str,
        bytes: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), GcsError> {
        let object = self.component_object(sha256);
        if let Some(signature) = signature {
            self.gcs.upload(self.bucket(), &format!("{object}.sig"), signature, "text/plain", None).await?;
        }
        match self.gcs.upload(self.bucket(), &object, bytes, "application/wasm", Some(0)).await {
            Ok(_) | Err(GcsError::PreconditionFailed(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether the store holds the component `sha256`.
    pub async fn has_component(&self, sha256: &str) -> Result<bool, GcsError> {
        Ok(self.gcs.metadata(self.bucket(), &self.component_object(sha256)).await?.is_some())
    }

    /// Downloads the component `sha256` and its signature, and checks that the bytes are what
    /// the name says: the one way every reader (start-up, the follower) takes a version from
    /// the store. The signature policy and the compile are the gate's (`swap`).
    pub async fn fetch_verified(&self, sha256: &str, generation: i64) -> Result<Candidate, FetchError> {
        let candidate = self.fetch_component(sha256, generation).await.map_err(|error| match error {
            GcsError::NotFound(object) => FetchError::Missing { sha256: sha256.to_string(), object },
            GcsError::TooLarge { size, limit, .. } => FetchError::TooLarge { size, limit },
            error => FetchError::Store(error),
        })?;
        if candidate.sha256() != sha256 {
            let actual = candidate.sha256().to_string();
            return Err(FetchError::NotItsName { actual, object: self.component_object(sha256) });
        }
        Ok(candidate)
    }

    /// Whether the store's bucket exists (a missing manifest in a missing bucket is no "no
    /// release yet" but a misconfiguration, or a deleted bucket).
    pub async fn bucket_exists(&self) -> Result<bool, GcsError> {
        self.gcs.bucket_exists(self.bucket()).await
    }

    /// Downloads the component `sha256` and its signature as a candidate.
    pub async fn fetch_component(&self, sha256: &str, generation: i64) -> Result<Candidate, GcsError> {
        let object = self.component_object(sha256);
        let Some(meta) = self.gcs.metadata(self.bucket(), &object).await? else {
            return Err(GcsError::NotFound(format!("gs://{}/{object}", self.bucket())));
        };
        let bytes = self.gcs.download(self.bucket(), &meta, self.max_component_size).await?;
        let signature = match self.gcs.metadata(self.bucket(), &format!("{object}.sig")).await? {
            Some(sig) => Some(self.gcs.download(self.bucket(), &sig, 64 * 1024).await?),
            None => None,
        };
        Ok(Candidate::new(
            bytes,
            format!("gs://{}/{object} (manifest generation {generation})", self.bucket()),
            signature,
        ))
    }

    /// Writes this instance's heartbeat.
    pub async fn put_heartbeat(&self, body: &[u8]) -> Result<(), GcsError> {
        let object = self.heartbeat_object(&self.instance);
        self.gcs.upload(self.bucket(), &object, body, "application/json", None).await.map(|_| ())
    }

    /// Removes this instance's heartbeat (a graceful stop): the fleet view drops it at once.
    pub async fn leave(&self) {
        let object = self.heartbeat_object(&self.instance);
        match tokio::time::timeout(Duration::from_secs(2), self.gcs.delete(self.bucket(), &object)).await {
            Ok(Ok(())) => {
                tracing::info!(instance = %self.instance, "removed this instance's heartbeat from the store")
            }
            Ok(Err(error)) => tracing::warn!("cannot remove this instance's heartbeat: {error}"),
            Err(_) => {
                tracing::warn!("cannot remove this instance's heartbeat: the store did not answer within 2 s")
            }
        }
    }

    /// Every heartbeat object with its metadata.
    pub async fn heartbeats(&self) -> Result<Vec<ObjectMeta>, GcsError> {
        self.gcs.list(self.bucket(), &self.location.object(INSTANCES)).await
    }

    pub async fn read_heartbeat(&self, meta: &ObjectMeta) -> Result<Vec<u8>, GcsError> {
        self.gcs.download(self.bucket(), meta, 64 * 1024).await
    }
}
