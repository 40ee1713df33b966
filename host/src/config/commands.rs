//! The arguments of the subcommands other than `serve`: `compile`, `push`, `fleet`, `keygen`, `sign`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse_duration;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The host's base URL, e.g. `https://echo-abc-uc.a.run.app`.
    pub url: String,
    /// The component to upload (`.wasm`).
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
    /// The private key from `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// The component to sign; the signature is written to `FILE.sig`.
    pub file: PathBuf,
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
