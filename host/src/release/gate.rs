//! The validation gate and the swap: a candidate from any source (file, URL, admin upload) goes
//! live only after every check passes; anything failing leaves the old version serving.
//!
//! Order: size, sha256, pin, signature, compile + link (or reuse a kept compiled version), smoke
//! probe, publish. The CPU-heavy steps run on blocking threads.
//!
//! A rejection says whether trying the same bytes again can help ([`Rejection::retry`]): the
//! watchers in [`crate::release::source`] remember deterministic ones and retry transient ones.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use sha2::{Digest, Sha256};

use tokio::sync::Notify;

use crate::engine::runtime::Runtime;
use crate::release::metrics::DeliveryMetrics;
use crate::serve::proxy::SwapProbe;
use crate::serve::serving::Serving;
use crate::versions::registry::{ActiveComponent, Artifact, Registry, RejectionRecord, load_component};

/// How new versions are checked before they go live.
#[derive(Debug, Clone, Default)]
pub struct SwapPolicy {
    /// Lowercase hex sha256 every component must have.
    pub require_sha256: Option<String>,
    /// Verifies detached signatures when set.
    pub trusted_key: Option<ed25519_dalek::VerifyingKey>,
    pub probe: Option<SwapProbe>,
    pub keep_versions: usize,
    pub max_component_size: u64,
}

/// A component some source wants to make active, with its SHA-256 (computed once, here).
#[derive(Clone)]
pub struct Candidate {
    bytes: Vec<u8>,
    sha256: String,
    /// Where it came from, for logs and `info`: `file:/path`, a URL (redacted with
    /// [`crate::util::redact::url`]), `admin upload` (who uploaded it is only in the admin events).
    pub source: String,
    /// A detached signature (base64 text), when the source had one.
    pub signature: Option<Vec<u8>>,
}

impl Candidate {
    pub fn new(bytes: Vec<u8>, source: String, signature: Option<Vec<u8>>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Self { bytes, sha256, source, signature }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lowercase hex SHA-256 of [`Candidate::bytes`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Everything a candidate passes through to go live, and what publishing it touches: the engine
/// that compiles it, the versions it joins, the server its smoke probe runs on, the policy, the
/// counters, and the heartbeat that tells the fleet.
pub struct Gate {
    runtime: Arc<Runtime>,
    versions: Arc<Registry>,
    serving: Arc<Serving>,
    policy: SwapPolicy,
    metrics: DeliveryMetrics,
    /// Wakes the heartbeat (with a release store), so the fleet view hears of a swap now.
    fleet: Option<Arc<Notify>>,
}

/// Why a candidate was turned away. The admin API answers with [`Rejection::status`].
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the component is {size} bytes, over the {limit}-byte `--max-component-size`")]
    TooLarge { size: u64, limit: u64 },
    #[error("sha256 `{actual}` is not the pinned `--require-sha256` `{expected}`")]
    PinMismatch { expected: String, actual: String },
    #[error(
        "no signature: `--trusted-key` requires one, embedded (`wasmsign2 sign`) or detached (`PATH.sig`, `URL.sig`, or the `echo-host-signature` header)"
    )]
    MissingSignature,
    #[error("bad signature: {0:#}")]
    BadSignature(anyhow::Error),
    #[error("invalid component: {0:#}")]
    Invalid(anyhow::Error),
    #[error("smoke probe `{probe}` failed: {reason}")]
    ProbeFailed { probe: String, reason: String, retry: Retry },
    /// The host could not run a check (the compile task died): nothing is known about the bytes.
    #[error("cannot check the component now: {0:#}")]
    Unavailable(anyhow::Error),
}

/// Whether a rejected candidate is worth submitting again unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same bytes and signature will be turned away again (bad bytes, link failure, bad or
    /// missing signature, pin mismatch, too large): only a change, `touch` or an admin call
    /// submits them again.
    Never,
    /// The reason may pass (a probe that failed for overload, a timeout or a 5xx; a check the
    /// host could not run): retried with backoff.
    Later,
}

/// Whether a candidate may be a precompiled `.cwasm` (native code the host trusts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifacts {
    /// Only `.wasm`, compiled and validated here: URLs, `gs://`, uploads, the store.
    WasmOnly,
    /// Also `.cwasm`: only the `--component` file given with `--allow-precompiled`.
    AlsoPrecompiled,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::PinMismatch { .. } | Self::MissingSignature | Self::BadSignature(_) => {
                StatusCode::FORBIDDEN
            }
            Self::Invalid(_) | Self::ProbeFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the same candidate may pass later.
    pub fn retry(&self) -> Retry {
        match self {
            Self::TooLarge { .. }
            | Self::PinMismatch { .. }
            | Self::MissingSignature
            | Self::BadSignature(_)
            | Self::Invalid(_) => Retry::Never,
            Self::ProbeFailed { retry, .. } => *retry,
            Self::Unavailable(_) => Retry::Later,
        }
    }

    /// A short stable name for logs and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::PinMismatch { .. } => "sha256_pin",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature(_) => "bad_signature",
            Self::Invalid(_) => "invalid_component",
            Self::ProbeFailed { .. } => "probe_failed",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// What a successful submission did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapOutcome {
    /// `false` when the candidate was already the active version (nothing to do).
    pub swapped: bool,
    pub sha256: String,
    pub version: String,
    pub previous_sha256: String,
    /// The compiled version was still kept (rollback, swap back): no compile needed.
    pub reused: bool,
    pub elapsed_ms: f64,
}

impl Gate {
    pub fn new(
        runtime: Arc<Runtime>,
        versions: Arc<Registry>,
        serving: Arc<Serving>,
        policy: SwapPolicy,
        metrics: DeliveryMetrics,
        fleet: Option<Arc<Notify>>,
    ) -> Self {
        Self { runtime, versions, serving, policy, metrics, fleet }
    }

    /// The versions candidates join.
    pub fn versions(&self) -> &Arc<Registry> {
        &self.versions
    }

    pub fn policy(&self) -> &SwapPolicy {
        &self.policy
    }

    pub fn metrics(&self) -> &DeliveryMetrics {
        &self.metrics
    }

    /// A swap or a rejection happened: the heartbeat says so now rather than at its next tick.
    pub fn tell_fleet(&self) {
        if let Some(fleet) = &self.fleet {
            fleet.notify_one();
        }
    }

    /// Runs the gate on `candidate` (never a `.cwasm`) and publishes it. Rejections are logged
    /// and counted here.
    pub async fn submit(&self, candidate: Candidate) -> Result<SwapOutcome, Rejection> {
        self.submit_as(candidate, Artifacts::WasmOnly).await
    }

    /// [`Gate::submit`], a `.cwasm` accepted when `artifacts` says so.
    pub async fn submit_as(
        &self,
        candidate: Candidate,
        artifacts: Artifacts,
    ) -> Result<SwapOutcome, Rejection> {
        let _one_at_a_time = self.versions.swap_lock.lock().await;
        let started = Instant::now();
        let source = candidate.source.clone();
        let sha256 = candidate.sha256.clone();
        let active = self.versions.active();
        let outcome = |swapped, reused, version: &str| SwapOutcome {
            swapped,
            sha256: sha256.clone(),
            version: version.to_string(),
            previous_sha256: active.sha256.clone(),
            reused,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        if sha256 == active.sha256 {
            tracing::debug!(source = %source, "candidate is already the active version");
            return Ok(outcome(false, false, active.version_header.to_str().unwrap_or_default()));
        }
        let (next, reused) = match self.check(candidate, artifacts).await {
            Ok(passed) => passed,
            Err(rejection) => {
                self.record_rejection(&source, Some(&sha256), &rejection);
                return Err(rejection);
            }
        };
        let version = next.version_header.to_str().unwrap_or_default().to_string();
        let world = next.handler.world();
        self.versions.publish(next);
        self.metrics.swaps.inc();
        self.tell_fleet();
        let outcome = outcome(true, reused, &version);
        tracing::info!(
            source = %source,
            sha256 = %outcome.sha256,
            previous_sha256 = %outcome.previous_sha256,
            reused = outcome.reused,
            elapsed_ms = outcome.elapsed_ms,
            world,
            "swapped to component {} from {source}",
            outcome.version
        );
        Ok(outcome)
    }

    /// Runs the gate on `candidate` without publishing it, keeping it compiled for when it goes
    /// live (a push to the release store). Returns its sha256; rejections are logged and counted.
    pub async fn prepare(&self, candidate: Candidate) -> Result<String, Rejection> {
        let _one_at_a_time = self.versions.swap_lock.lock().await;
        let source = candidate.source.clone();
        let sha256 = candidate.sha256.clone();
        if sha256 == self.versions.active().sha256 {
            return Ok(sha256);
        }
        match self.check(candidate, Artifacts::WasmOnly).await {
            Ok((next, _)) => {
                self.versions.prepare(Arc::new(next));
                Ok(sha256)
            }
            Err(rejection) => {
                self.record_rejection(&source, Some(&sha256), &rejection);
                Err(rejection)
            }
        }
    }

    /// Logs, counts and remembers (for `info`) a rejected candidate. Sources that refuse a
    /// candidate before it reaches [`Gate::submit`] (a file over the size limit is never read)
    /// call it directly.
    pub fn record_rejection(&self, source: &str, sha256: Option<&str>, rejection: &Rejection) {
        self.metrics.swap_rejections.inc();
        self.versions.record_rejection(RejectionRecord {
            at: crate::util::time::now_rfc3339(),
            source: source.to_string(),
            sha256: sha256.map(str::to_string),
            reason: rejection.to_string(),
        });
        tracing::warn!(
            source,
            sha256,
            kind = rejection.kind(),
            retry = ?rejection.retry(),
            "rejected candidate component, the active version keeps serving: {rejection}"
        );
        self.tell_fleet();
    }

    /// Every check, in order: policy, compile + link (or a kept compiled version), smoke probe.
    /// Returns the version ready to publish and whether it was reused.
    async fn check(
        &self,
        candidate: Candidate,
        artifacts: Artifacts,
    ) -> Result<(ActiveComponent, bool), Rejection> {
        let precompiled = self.admit(&candidate, artifacts)?;
        let (next, reused) = match self.versions.find(&candidate.sha256) {
            Some(kept) => (kept.reactivated(candidate.source), true),
            None => (compile(&self.runtime, candidate, precompiled).await?, false),
        };
        if let Some(probe) = &self.policy.probe {
            self.smoke_probe(&next, probe).await?;
        }
        Ok((next, reused))
    }

    /// The checks before any compile: the policy, and a `.cwasm` only where `artifacts` allows
    /// one. Returns whether the candidate is precompiled.
    fn admit(&self, candidate: &Candidate, artifacts: Artifacts) -> Result<bool, Rejection> {
        check_policy(&self.policy, candidate)?;
        let precompiled = Artifact::detect(&candidate.bytes) == Artifact::Precompiled;
        if precompiled && artifacts == Artifacts::WasmOnly {
            // `.cwasm` is native code (see DESIGN.md): only from the file the operator named.
            return Err(Rejection::Invalid(anyhow::anyhow!(
                "a precompiled `.cwasm` is accepted only from the `--component` file given with `--allow-precompiled`; send the `.wasm` instead"
            )));
        }
        Ok(precompiled)
    }

    /// `--swap-probe` on the candidate. An answer of 5xx, 408 or 429, a timeout or a failure to
    /// run the guest (the instance pool full under load) may pass later; any other answer will
    /// not.
    async fn smoke_probe(&self, next: &ActiveComponent, probe: &SwapProbe) -> Result<(), Rejection> {
        let described = format!("{} {}", probe.method, probe.path);
        let (reason, retry) = match crate::serve::proxy::probe(&self.serving, next, probe).await {
            Ok(status) if status.is_success() => return Ok(()),
            Ok(status) => {
                let transient = status.is_server_error()
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS;
                (format!("answered {status}"), if transient { Retry::Later } else { Retry::Never })
            }
            Err(error) => (format!("{error:#}"), Retry::Later),
        };
        Err(Rejection::ProbeFailed { probe: described, reason, retry })
    }

    /// Makes a kept version active again: instant, nothing is compiled. `to` is a sha256 (or a
    /// prefix of at least 12 hex digits, optionally `sha256:`-prefixed); `None` means the
    /// previous one.
    pub async fn rollback(&self, to: Option<&str>, who: &str) -> Result<SwapOutcome, RollbackError> {
        let target: Arc<ActiveComponent> = match to {
            Some(sha) => {
                let sha = sha.trim().trim_start_matches("sha256:").to_ascii_lowercase();
                self.versions.find(&sha).ok_or(RollbackError::NotKept(sha))?
            }
            None => self.versions.previous().ok_or(RollbackError::NoPrevious)?,
        };
        // The public source names where the bytes came from, not who asked (that is the admin
        // history's) and not the last source (which would nest, rollback after rollback).
        let source = format!("rollback (was {})", target.origin);
        let outcome = self
            .reactivate(&target, source)
            .await
            .ok_or(RollbackError::AlreadyActive(target.sha256.clone()))?;
        tracing::info!(who, sha256 = %outcome.sha256, previous_sha256 = %outcome.previous_sha256, "rolled back to component {}", outcome.version);
        Ok(outcome)
    }

    /// Publishes a compiled version again under new provenance; `None` if it is the active one.
    pub async fn reactivate(&self, target: &ActiveComponent, source: String) -> Option<SwapOutcome> {
        let _one_at_a_time = self.versions.swap_lock.lock().await;
        self.reactivate_now(target, source)
    }

    /// [`Gate::reactivate`] without waiting for the swap lock: for the release store's routing,
    /// which must not wait behind a compile and orders its changes by manifest generation itself.
    pub fn reactivate_now(&self, target: &ActiveComponent, source: String) -> Option<SwapOutcome> {
        let started = Instant::now();
        let active = self.versions.active();
        if target.sha256 == active.sha256 {
            return None;
        }
        let next = target.reactivated(source);
        let version = next.version_header.to_str().unwrap_or_default().to_string();
        self.versions.publish(next);
        self.metrics.swaps.inc();
        self.tell_fleet();
        Some(SwapOutcome {
            swapped: true,
            sha256: target.sha256.clone(),
            version,
            previous_sha256: active.sha256.clone(),
            reused: true,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

/// The start-up component through the same checks as a swap (policy, then compile and link;
/// no smoke probe: nothing serves yet), without publishing it. `allow_precompiled`: a
/// `.cwasm` is accepted (the `--component` file given with `--allow-precompiled`).
pub async fn load_initial(
    runtime: &Arc<Runtime>,
    policy: &SwapPolicy,
    candidate: Candidate,
    allow_precompiled: bool,
) -> anyhow::Result<ActiveComponent> {
    use anyhow::Context as _;
    let source = candidate.source.clone();
    let checked = match check_policy(policy, &candidate) {
        Ok(()) => compile(runtime, candidate, allow_precompiled).await,
        Err(rejection) => Err(rejection),
    };
    checked
        .map_err(|rejection| match rejection {
            // The loader's own message says what to do (`--allow-precompiled`).
            Rejection::Invalid(error) => error,
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("cannot serve the component from `{source}`"))
}

/// Compiles (or, when `allow_precompiled`, deserializes a `.cwasm`) and links on a blocking
/// thread.
async fn compile(
    runtime: &Arc<Runtime>,
    candidate: Candidate,
    allow_precompiled: bool,
) -> Result<ActiveComponent, Rejection> {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || {
        let Candidate { bytes, sha256, source, .. } = candidate;
        load_component(&runtime, &bytes, sha256, source, allow_precompiled)
    })
    .await
    .map_err(|e| Rejection::Unavailable(anyhow::anyhow!("the compile task failed: {e}")))?
    .map_err(Rejection::Invalid)
}

/// The checks that need only the bytes: size, sha256 pin, signature.
pub fn check_policy(policy: &SwapPolicy, candidate: &Candidate) -> Result<(), Rejection> {
    let size = candidate.bytes.len() as u64;
    if size > policy.max_component_size {
        return Err(Rejection::TooLarge { size, limit: policy.max_component_size });
    }
    if let Some(expected) = &policy.require_sha256
        && *expected != candidate.sha256
    {
        return Err(Rejection::PinMismatch { expected: expected.clone(), actual: candidate.sha256.clone() });
    }
    if let Some(key) = &policy.trusted_key {
        use crate::util::signing::{Unverified, verify};
        verify(key, &candidate.bytes, candidate.signature.as_deref()).map_err(|why| match why {
            Unverified::Missing => Rejection::MissingSignature,
            Unverified::Bad(error) => Rejection::BadSignature(error),
        })?;
    }
    Ok(())
}

/// Why a rollback could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no previous version is kept (only the active one)")]
    NoPrevious,
    #[error("no kept version matches `{0}` (see `GET /.well-known/echo-host/admin/history`)")]
    NotKept(String),
    #[error("`{0}` is already the active version")]
    AlreadyActive(String),
}
