//! `manifest.json`: the release the fleet serves, with a bounded history. Versioned by `schema`;
//! fields this host does not know (a newer host's) are kept when it rewrites the manifest.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::versions::Weight;
pub use crate::versions::window::Counts;

/// The schema this host writes and understands.
pub const SCHEMA: u32 = 1;

/// History entries kept in the manifest, newest first.
pub const HISTORY_LEN: usize = 20;

/// Largest manifest read, and so written (a bounded history keeps real ones to a few KiB).
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;

/// Longest `by` text stored (who pushed or rolled back).
const MAX_BY_LEN: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    /// `sha256:<64 hex>`: the version every instance serves.
    pub stable: String,
    /// The version being released gradually beside `stable`, when there is one.
    #[serde(default)]
    pub canary: Option<CanaryPlan>,
    /// The last automatic decision (a canary rolled back or promoted), with its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// A random id each write carries, so that a writer whose reply was lost can tell, reading
    /// the manifest again, whether its write is the one there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A canary: its version, the share of requests it gets and, when promoted automatically, the
/// weights it steps through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryPlan {
    /// `sha256:<64 hex>`.
    pub version: String,
    pub weight: Weight,
    /// Weights to advance through, one every `step_interval_ms` while healthy; reaching 100
    /// makes the canary stable. Empty: it stays at `weight` until promoted by hand.
    #[serde(default)]
    pub steps: Vec<Weight>,
    #[serde(default)]
    pub step_interval_ms: u64,
    /// When the current weight was set (RFC 3339). A manifest written by hand may leave these
    /// out: its canary then never steps on its own.
    #[serde(default)]
    pub step_started_at: String,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub started_by: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CanaryPlan {
    pub fn sha256(&self) -> &str {
        self.version.trim_start_matches("sha256:")
    }

    /// The next weight of `steps` above the current one.
    pub fn next_step(&self) -> Option<Weight> {
        self.steps.iter().copied().find(|step| *step > self.weight)
    }
}

/// A decision a host took on its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// The canary it was about (`sha256:<64 hex>`).
    pub version: String,
    pub at: String,
    pub by: String,
    pub reason: String,
    pub canary: Counts,
    pub stable: Counts,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A version released to every request at once.
    Push,
    Rollback,
    CanaryStart,
    /// The canary's weight set by hand.
    CanaryWeight,
    /// The canary made stable by hand.
    Promote,
    Abort,
    /// The canary was worse than stable: rolled back by a host.
    AutoRollback,
    /// The canary stepped up, or became stable at the last step, on its own.
    AutoPromote,
}

/// The longest `source` a history entry keeps (a reference with its digest is far shorter).
const MAX_SOURCE_LEN: usize = 600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// `sha256:<64 hex>`.
    pub stable: String,
    pub at: String,
    pub by: String,
    pub action: Action,
    /// The canary after this change (`sha256:<64 hex>`); for an abort or a rollback of the
    /// canary, the one it removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where the version this entry made stable or canary came from, when that was a registry
    /// (`oci://REGISTRY/REPOSITORY:TAG@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The `write_id` of the write that added this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    /// Parses and checks a manifest read from the store. A history longer than [`HISTORY_LEN`]
    /// (written by hand or by another tool) is cut to its newest entries, as every answer and
    /// every rewrite would cut it.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut manifest: Manifest =
            serde_json::from_slice(bytes).context("the manifest is not valid JSON of schema 1")?;
        manifest.history.truncate(HISTORY_LEN);
        if manifest.schema != SCHEMA {
            bail!("the manifest has schema {}; this host understands schema {SCHEMA}", manifest.schema);
        }
        parse_version(&manifest.stable).context("the manifest's `stable`")?;
        if let Some(canary) = &manifest.canary {
            parse_version(&canary.version).context("the manifest's `canary.version`")?;
            if !canary.steps.windows(2).all(|pair| pair[0] < pair[1]) {
                bail!("the manifest's `canary.steps` do not increase");
            }
        }
        Ok(manifest)
    }

    /// The stable version's sha256 (64 hex).
    pub fn stable_sha256(&self) -> &str {
        self.stable.trim_start_matches("sha256:")
    }

    /// A manifest with nothing in it yet but `sha256` as stable.
    pub fn first(sha256: &str) -> Manifest {
        Manifest {
            schema: SCHEMA,
            stable: format!("sha256:{sha256}"),
            canary: None,
            last_decision: None,
            updated_at: None,
            updated_by: None,
            history: Vec::new(),
            write_id: None,
            extra: Map::new(),
        }
    }

    /// The manifest after a push or rollback to `sha256`: the rest kept, a canary ended, the
    /// history newest first.
    pub fn next(previous: Option<&Manifest>, sha256: &str, by: &str, action: Action, at: String) -> Manifest {
        let mut next = previous.cloned().unwrap_or_else(|| Manifest::first(sha256));
        next.stable = format!("sha256:{sha256}");
        next.canary = None;
        next.record(action, by, at, None);
        next
    }

    /// Notes on the newest history entry where its version came from, when that was a registry
    /// (other sources, an upload or a file, say nothing the fleet can use).
    pub fn note_source(&mut self, source: &str) {
        if let (Some(entry), true) = (self.history.first_mut(), source.starts_with("oci://")) {
            entry.source = Some(source.chars().take(MAX_SOURCE_LEN).collect());
        }
    }

    /// Stamps the manifest as changed by `by` and adds the history entry describing it now; both
    /// carry a new `write_id`.
    pub fn record(&mut self, action: Action, by: &str, at: String, reason: Option<String>) {
        let by: String = by.chars().take(MAX_BY_LEN).collect();
        let write_id = hex::encode(crate::util::gcs::rand_bytes::<12>());
        let entry = HistoryEntry {
            stable: self.stable.clone(),
            at: at.clone(),
            by: by.clone(),
            action,
            canary: self.canary.as_ref().map(|c| c.version.clone()),
            weight: self.canary.as_ref().map(|c| c.weight),
            reason,
            source: None,
            write_id: Some(write_id.clone()),
            extra: Map::new(),
        };
        self.write_id = Some(write_id);
        self.updated_at = Some(at);
        self.updated_by = Some(by);
        self.history.insert(0, entry);
        self.history.truncate(HISTORY_LEN);
    }

    /// The canary's sha256 (64 hex), if one runs.
    pub fn canary_sha256(&self) -> Option<&str> {
        self.canary.as_ref().map(CanaryPlan::sha256)
    }

    /// The version a rollback without a target returns to: the newest in the history that is
    /// not the current one.
    pub fn previous_stable(&self) -> Option<&str> {
        self.history
            .iter()
            .map(|entry| entry.stable.trim_start_matches("sha256:"))
            .find(|sha| *sha != self.stable_sha256())
    }

    /// Whether the write marked `write_id` made this manifest or one of its history entries.
    pub fn written_by(&self, write_id: &str) -> bool {
        self.write_id.as_deref() == Some(write_id)
            || self.history.iter().any(|entry| entry.write_id.as_deref() == Some(write_id))
    }

    /// The manifest as written: compact JSON (pretty-printing a large field kept for a newer host
    /// could multiply its size past [`MAX_MANIFEST_SIZE`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }
}

/// `sha256:<64 hex>` (or bare hex) to lowercase hex.
pub fn parse_version(text: &str) -> anyhow::Result<String> {
    let hex = text.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{text}` is not `sha256:` and 64 hex digits");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_push_then_a_rollback() {
        let first = Manifest::next(None, A, "admin:1.2.3.4", Action::Push, "t1".into());
        assert_eq!(first.stable_sha256(), A);
        assert_eq!(first.previous_stable(), None);
        let second = Manifest::next(Some(&first), B, "admin", Action::Push, "t2".into());
        assert_eq!(second.previous_stable(), Some(A));
        let back = Manifest::next(Some(&second), A, "admin", Action::Rollback, "t3".into());
        assert_eq!(back.stable_sha256(), A);
        assert_eq!(back.history.len(), 3);
        assert_eq!(back.history[0].action, Action::Rollback);
        assert_eq!(Manifest::parse(&back.to_bytes()).unwrap(), back);
    }

    #[test]
    fn history_and_provenance_are_bounded() {
        let long = "x".repeat(10_000);
        let mut manifest = Manifest::next(None, A, &long, Action::Push, "t".into());
        for i in 0..100 {
            manifest = Manifest::next(
                Some(&manifest),
                if i % 2 == 0 { B } else { A },
                &long,
                Action::Push,
                "t".into(),
            );
        }
        assert_eq!(manifest.history.len(), HISTORY_LEN);
        assert!(manifest.to_bytes().len() < 16 * 1024, "{} bytes", manifest.to_bytes().len());
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let text = format!(
            r#"{{"schema":1,"stable":"sha256:{A}","canary":{{"version":"sha256:{B}","weight":10,"step_started_at":"t","started_at":"t","started_by":"me","surge":3}},"future":[1,2]}}"#
        );
        let manifest = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(manifest.canary.as_ref().unwrap().weight, Weight::from_permille(100));
        let mut next = manifest.clone();
        next.record(Action::CanaryWeight, "admin", "t".into(), None);
        let written: Value = serde_json::from_slice(&next.to_bytes()).unwrap();
        assert_eq!(written["future"], serde_json::json!([1, 2]));
        assert_eq!(written["canary"]["weight"], 10.0);
        assert_eq!(written["canary"]["surge"], 3);
        assert_eq!(written["history"][0]["weight"], 10.0);
        let pushed = Manifest::next(Some(&manifest), B, "admin", Action::Push, "t".into());
        assert_eq!(pushed.canary, None, "a push ends the canary");
    }

    #[test]
    fn writes_are_compact_marked_and_read_with_a_bounded_history() {
        let first = Manifest::next(None, A, "admin", Action::Push, "t".into());
        let id = first.write_id.clone().expect("a recorded change has a write id");
        assert_eq!(first.history[0].write_id.as_deref(), Some(id.as_str()));
        let bytes = first.to_bytes();
        assert!(!bytes[..bytes.len() - 1].contains(&b'\n'), "compact: {}", String::from_utf8_lossy(&bytes));
        let second = Manifest::next(Some(&first), B, "admin", Action::Push, "t".into());
        assert_ne!(second.write_id.as_deref(), Some(id.as_str()));
        assert!(second.written_by(&id) && second.written_by(second.write_id.as_deref().unwrap()));
        assert!(!second.written_by("another"));
        let mut long = second.clone();
        long.history = vec![second.history[0].clone(); 3 * HISTORY_LEN];
        assert_eq!(Manifest::parse(&long.to_bytes()).unwrap().history.len(), HISTORY_LEN);
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(Manifest::parse(b"not json").is_err());
        assert!(Manifest::parse(br#"{"schema":1,"stable":"sha256:abc"}"#).is_err());
        let heavy = format!(
            r#"{{"schema":1,"stable":"sha256:{A}","canary":{{"version":"sha256:{B}","weight":100.1,"step_started_at":"t","started_at":"t","started_by":"me"}}}}"#
        );
        assert!(Manifest::parse(heavy.as_bytes()).is_err(), "a weight over 100");
        let newer = format!(r#"{{"schema":2,"stable":"sha256:{A}"}}"#);
        assert!(format!("{:#}", Manifest::parse(newer.as_bytes()).unwrap_err()).contains("schema 2"));
    }
}
