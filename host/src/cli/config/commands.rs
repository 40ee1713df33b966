//! The arguments of the subcommands other than `serve`: `compile`, `push`, `fleet`, `release`,
//! `keygen`, `sign`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::parse_duration;
use crate::versions::Weight;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The host's base URL, e.g. `https://echo-abc-uc.a.run.app`.
    #[arg(value_parser = parse_host_url)]
    pub url: String,
    /// The component to upload (`.wasm`), or an OCI reference (`oci://REGISTRY/REPOSITORY:TAG`,
    /// or `…@sha256:DIGEST`) the host pulls and checks itself.
    pub file: PathBuf,
    /// File holding the admin token.
    #[arg(long, env = "ECHO_HOST_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Send this detached signature (default: `FILE.sig` when it exists).
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// Then wait until every live instance of the fleet serves it (a host with `--store`); exit
    /// non-zero after `--wait-timeout`, listing the instances that do not, or as soon as every
    /// one of those has rejected it.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The base URL of any instance, e.g. `https://echo-abc-uc.a.run.app`.
    #[arg(value_parser = parse_host_url)]
    pub url: String,
    /// File holding the admin token.
    #[arg(long, env = "ECHO_HOST_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to `KEY.pub`.
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private key: from `echo-host keygen`, or a wasmsign2 secret key (`wasmsign2 keygen
    /// -k`: raw, PEM or DER).
    #[arg(long, env = "ECHO_HOST_SIGNING_KEY")]
    pub key: PathBuf,
    /// The component to sign. It is never changed.
    pub file: PathBuf,
    /// `echo-host`: our detached signature, one line of base64, written to `FILE.sig`.
    /// `wasmsign2`: the WebAssembly tool-conventions format (`wasmsign2 verify` checks it), the
    /// signature embedded in a new file (see `--output`), or detached with `--detached`.
    #[arg(long, env = "ECHO_HOST_SIGN_FORMAT", value_enum, default_value_t = SignatureFormat::EchoHost)]
    pub format: SignatureFormat,
    /// With `--format wasmsign2`: where to write. Embedded, the signed component (default
    /// `NAME.signed.wasm` beside `FILE`, like `wasmsign2 sign -o`); with `--detached`, the
    /// signature (default `FILE.sig`, like `wasmsign2 sign -S`).
    #[arg(short, long, env = "ECHO_HOST_SIGN_OUTPUT")]
    pub output: Option<PathBuf>,
    /// With `--format wasmsign2`: write a detached signature (binary, what `wasmsign2 sign -S`
    /// writes) instead of embedding it. For the `echo-host-signature` header, send it as base64.
    #[arg(long, env = "ECHO_HOST_SIGN_DETACHED")]
    pub detached: bool,
}

/// The signature formats `echo-host sign` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureFormat {
    /// One line of base64 of the ed25519 signature over the file's bytes, in `FILE.sig`.
    EchoHost,
    /// The WebAssembly tool-conventions signature (`Signatures.md`), as `wasmsign2` writes it.
    Wasmsign2,
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The component to compile (`.wasm`).
    pub input: PathBuf,
    /// Where to write the precompiled component.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Use every instruction-set extension of this machine's CPU. By default the code uses only
    /// what every x86-64 server CPU since 2013 has (up to AVX2), so a `.cwasm` built on one
    /// machine loads on the others a Cloud Run service may land on.
    #[arg(long)]
    pub native: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload a component as the canary beside the stable version, at `--weight` percent of the
    /// requests (with `--steps`: advancing on its own while healthy).
    Start(ReleaseStartArgs),
    /// Set the canary's weight (`--weight`), or move it to its next step, or (at 100, or with no
    /// further step) make it the stable version.
    Promote(ReleasePromoteArgs),
    /// Remove the canary; the stable version keeps serving.
    Abort(ReleaseHostArgs),
    /// Print the release: both versions, weights, per-version failure rates, the instances, the
    /// last automatic decision and the history.
    Status(ReleaseHostArgs),
}

/// The host a `release` subcommand talks to.
#[derive(Debug, Args)]
pub struct ReleaseHostArgs {
    /// The base URL of the host (with a release store: any instance), e.g.
    /// `https://echo-abc-uc.a.run.app`.
    #[arg(value_parser = parse_host_url)]
    pub url: String,
    /// File holding the admin token.
    #[arg(long, env = "ECHO_HOST_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Print the host's answer (the release's status JSON) as it is, for scripts, instead of a
    /// few lines (`start`, `promote`, `abort`) or tables (`status`).
    #[arg(long, env = "ECHO_HOST_RELEASE_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseStartArgs {
    #[command(flatten)]
    pub host: ReleaseHostArgs,
    /// The canary component to upload (`.wasm`), or an OCI reference the host pulls
    /// (`oci://REGISTRY/REPOSITORY:TAG`).
    pub file: PathBuf,
    /// The canary's share of the requests in percent, 0 to 100 in steps of 0.1 (`0`: only
    /// requests pinned with `echo-host-version` reach it).
    #[arg(long)]
    pub weight: Weight,
    /// Weights the canary advances through while healthy, one every `--step-interval`, e.g.
    /// `1,10,50,100` (increasing; reaching 100 makes it stable). Without it the weight stays
    /// until `release promote`.
    #[arg(long, value_parser = parse_steps)]
    pub steps: Option<Steps>,
    /// Time at each step of `--steps`.
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "steps")]
    pub step_interval: Duration,
    /// Send this detached signature (default: `FILE.sig` when it exists).
    #[arg(long)]
    pub signature: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReleasePromoteArgs {
    #[command(flatten)]
    pub host: ReleaseHostArgs,
    /// The canary's new weight in percent (below 100: it stays a canary; 100: it becomes
    /// stable). Without it: the next of its `--steps`, or stable when there is none.
    #[arg(long)]
    pub weight: Option<Weight>,
}

/// A host's base URL for `push`, `fleet` and `release`: `http://` or `https://` and a host. Without
/// a scheme (`localhost:8080`) the error says what to write instead.
pub fn parse_host_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(text.to_string()),
        Some(_) => Err(format!("`{text}` names no host (e.g. `http://localhost:8080`)")),
        None if text.contains("://") => Err(format!(
            "`{text}` is not an `http://` or `https://` URL: the host's admin API speaks HTTP (e.g. `https://echo-abc-uc.a.run.app`)"
        )),
        None => Err(format!(
            "`{text}` has no scheme: write `http://{text}` (or `https://{text}` for a TLS endpoint such as Cloud Run)"
        )),
    }
}

/// The weights of `--steps`, increasing, each over 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<Weight>);

/// Parses `1,10,50,100`: weights (percent, at most one decimal) over 0, each greater than the
/// last.
pub fn parse_steps(text: &str) -> Result<Steps, String> {
    let mut steps: Vec<Weight> = Vec::new();
    for part in text.split(',') {
        let step: Weight = part.parse().map_err(|e| format!("in `--steps {text}`: {e}"))?;
        if step == Weight::ZERO {
            return Err(format!("in `--steps {text}`: a step must be over 0"));
        }
        if let Some(last) = steps.last()
            && step <= *last
        {
            return Err(format!("in `--steps {text}`: the steps must increase, but {step} follows {last}"));
        }
        steps.push(step);
    }
    Ok(Steps(steps))
}

#[cfg(test)]
mod tests {
    use super::parse_host_url;

    /// `push localhost:8080 …` says what to write instead of reqwest's "URL scheme is not allowed".
    #[test]
    fn a_host_url_without_a_scheme_says_what_to_write() {
        assert_eq!(parse_host_url("http://localhost:8080").as_deref(), Ok("http://localhost:8080"));
        assert_eq!(parse_host_url("HTTPS://h/").as_deref(), Ok("HTTPS://h/"));
        assert_eq!(
            parse_host_url("localhost:8080").unwrap_err(),
            "`localhost:8080` has no scheme: write `http://localhost:8080` (or `https://localhost:8080` for a TLS endpoint such as Cloud Run)"
        );
        assert!(parse_host_url("ftp://h").unwrap_err().contains("not an `http://` or `https://` URL"));
        assert!(parse_host_url("http://").unwrap_err().contains("names no host"));
    }
}
