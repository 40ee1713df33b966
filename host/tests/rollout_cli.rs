//! `echo-host release start|status|promote|abort`: the real binary against a real host process
//! (no store: the release is the instance's own), its output and exit codes, and the host's
//! errors passed on.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::util::{self, HostProcess, run_cli};

const TOKEN: &str = "rollout-cli-test-admin-token-0123";
/// Each CLI run is one exec and one request to a host on loopback.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `echo-host release ARGS URL ... --token-file F` and returns (success, stdout, stderr).
fn release(args: &[&str]) -> (bool, String, String) {
    let mut argv = vec!["release"];
    argv.extend_from_slice(args);
    let (status, stdout, stderr) = run_cli(&argv, CLI_TIMEOUT);
    (status.success(), stdout, stderr)
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// start at 10 %, status shows it, a second start is refused, promote to 50, abort, and an
/// abort without a canary fails with the host's error.
#[test]
fn release_start_status_promote_abort() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token = token_file.to_str().unwrap();
    let host = HostProcess::start(&["--log-format", "text"], &[("ECHO_HOST_ADMIN_TOKEN", TOKEN)]);
    let url = host.url("");
    let canary = util::misbehave_wasm().to_str().unwrap();
    let version = format!("sha256:{}", &hex::encode(Sha256::digest(std::fs::read(canary).unwrap()))[..12]);

    // By default a few lines: what changed, the weights, where the release lives.
    let (ok, stdout, stderr) = release(&["start", &url, canary, "--weight", "10", "--token-file", token]);
    assert!(ok, "start failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], format!("canary {version} started at 10%"), "{stdout}");
    assert!(
        lines[1].starts_with("weights  stable sha256:")
            && lines[1].contains(&format!("90%, canary {version} 10%")),
        "{stdout}"
    );
    assert_eq!(lines[2], "release  on this instance only (the host has no `--store`)", "{stdout}");

    let (ok, table, stderr) = release(&["status", &url, "--token-file", token]);
    assert!(ok, "status failed:\n{table}\n{stderr}");
    let canary_line = table.lines().find(|l| l.starts_with("canary")).unwrap_or_default();
    assert!(canary_line.contains(&format!("{version}  10%  routing")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("stable") && l.ends_with("90%")), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&version) && l.contains("canary")), "{table}");

    // One canary at a time: the host's 409 comes back as the CLI's error.
    let (ok, stdout, stderr) = release(&["start", &url, canary, "--weight", "20", "--token-file", token]);
    assert!(!ok && stderr.contains("canary_running"), "a second start:\n{stdout}\n{stderr}");

    // `--json` (or its env var) prints the host's answer whole, for scripts.
    let (ok, stdout, stderr) = release(&["promote", &url, "--weight", "50", "--token-file", token, "--json"]);
    assert!(ok, "promote failed:\n{stdout}\n{stderr}");
    assert_eq!(json(&stdout)["canary"]["weight"], 50.0, "{stdout}");
    let (ok, stdout, _) = release(&["status", &url, "--token-file", token, "--json"]);
    assert!(ok && json(&stdout)["canary"]["version"] == version.as_str(), "{stdout}");

    let (ok, stdout, stderr) = release(&["abort", &url, "--token-file", token, "--json"]);
    assert!(ok, "abort failed:\n{stdout}\n{stderr}");
    let aborted = json(&stdout);
    assert!(aborted["canary"].is_null(), "{stdout}");
    assert_ne!(aborted["stable"]["version"], version.as_str(), "{stdout}");

    let (ok, stdout, stderr) = release(&["abort", &url, "--token-file", token]);
    assert!(!ok && stderr.contains("no_canary"), "abort without a canary:\n{stdout}\n{stderr}");

    // A bad weight never reaches the host.
    let (ok, _, stderr) = release(&["promote", &url, "--weight", "50.55", "--token-file", token]);
    assert!(!ok && stderr.contains("`50.55` is not a weight"), "{stderr}");
}

/// The CLI's errors say what to do: a URL without a scheme, a host without the admin API.
#[test]
fn cli_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token = token_file.to_str().unwrap();
    let component = util::echo_wasm().to_str().unwrap();
    // No scheme: refused before anything is sent, naming what to write (was reqwest's
    // "builder error … URL scheme is not allowed").
    for args in [
        &["push", "localhost:8080", component, "--token-file", token][..],
        &["fleet", "localhost:8080", "--token-file", token][..],
        &["release", "status", "localhost:8080", "--token-file", token][..],
    ] {
        let (status, _, stderr) = run_cli(args, CLI_TIMEOUT);
        assert!(!status.success(), "{args:?}");
        assert!(
            stderr.contains("`localhost:8080` has no scheme: write `http://localhost:8080`"),
            "{args:?}: {stderr}"
        );
    }
    // A host without the admin API (was "404 Not Found, not JSON: expected ident …").
    let host = HostProcess::start(&["--log-format", "text"], &[]);
    let url = host.url("");
    for args in [
        &["push", &url, component, "--token-file", token][..],
        &["release", "status", &url, "--token-file", token][..],
        &["release", "abort", &url, "--token-file", token][..],
    ] {
        let (status, stdout, stderr) = run_cli(args, CLI_TIMEOUT);
        assert!(!status.success(), "{args:?}");
        assert!(
            stderr.contains("answered 404 Not Found: that host has no admin API. Start it with `--admin-token-file FILE` (or the token in `ECHO_HOST_ADMIN_TOKEN`)"),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}
