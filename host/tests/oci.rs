//! Components from OCI registries: the real distribution registry (Debian's `docker-registry`)
//! started on loopback by [`util::registry`], components pushed with the `oras` SDK, and real
//! `echo-host` processes following a tag, pinned to a digest, logging in (Basic, the Bearer token
//! flow, a Docker `config.json`, the metadata server's token), over TLS with a private CA, and
//! through a proxy that breaks the registry on purpose ([`util::registry_proxy`]).

use std::time::Duration;

use serde_json::Value;

use crate::util::fleet::{self, PATIENCE, eventually, http, info, sha256, variant};
use crate::util::registry::{Layout, Mode, Registry};
use crate::util::registry_proxy::{Fault, RegistryProxy};
use crate::util::{self, HostProcess};

/// The sha256 the host serves now (from `info`).
fn active(host: &HostProcess) -> String {
    info(&http(), host)["component"]["sha256"].as_str().unwrap_or_default().to_string()
}

fn active_source(host: &HostProcess) -> String {
    info(&http(), host)["component"]["source"].as_str().unwrap_or_default().to_string()
}

/// Waits until `host` serves `bytes`.
fn wait_serves(host: &HostProcess, bytes: &[u8], what: &str) {
    let want = sha256(bytes);
    eventually(&format!("the host to serve {what}"), PATIENCE, || {
        let now = active(host);
        if now == want { Ok(()) } else { Err(now) }
    });
}

/// Waits for a new stdout line (after the first `from`) containing `needle`; returns it.
fn wait_line_after(host: &HostProcess, from: usize, needle: &str) -> String {
    eventually(&format!("a log line with `{needle}`"), PATIENCE, || {
        let lines = host.lines();
        lines[from.min(lines.len())..]
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .ok_or_else(|| lines.iter().rev().take(3).cloned().collect::<Vec<_>>().join("\n"))
    })
}

/// A host following `reference` every 300 ms. Its registry calls get the default 30 s
/// `--fetch-timeout`: a loaded machine's loopback registry may take seconds to answer.
fn follow_args<'a>(reference: &'a str, insecure: &'a str) -> Vec<&'a str> {
    vec!["--component", reference, "--insecure-registry", insecure, "--poll-interval", "300ms"]
}

#[test]
fn a_tag_is_followed_in_every_layout_and_other_artifacts_are_refused() {
    let registry = Registry::start(Mode::Plain);
    let host_name = registry.host().to_string();
    let (v1, v2, v3, v4) = (
        variant(&fleet::echo(), 1),
        fleet::misbehave(),
        variant(&fleet::echo(), 3),
        variant(&fleet::echo(), 4),
    );
    let first = registry.push("team/echo", "live", &v1, Layout::Cncf);
    let reference = format!("oci://{host_name}/team/echo:live");
    let host = HostProcess::start(&follow_args(&reference, &host_name), &[]);
    assert_eq!(active(&host), sha256(&v1));
    assert_eq!(active_source(&host), format!("{reference}@{}", first.digest));
    // Pinned to the first digest: never polled, never moves.
    let pinned_ref = format!("oci://{host_name}/team/echo@{}", first.digest);
    let pinned = HostProcess::start(&follow_args(&pinned_ref, &host_name), &[]);

    registry.push("team/echo", "live", &v2, Layout::Legacy);
    wait_serves(&host, &v2, "the legacy-layout push");
    let third = registry.push("team/echo", "live", &v3, Layout::Index);
    wait_serves(&host, &v3, "the image index's wasm entry");
    assert_eq!(active_source(&host), format!("{reference}@{}", third.digest));

    // Not components: refused naming what was found; the active version keeps serving.
    for (layout, says) in
        [(Layout::Image, "a container image"), (Layout::TwoLayers, "`application/wasm`, `application/wasm`")]
    {
        let from = host.lines().len();
        registry.push("team/echo", "live", &v4, layout);
        let line = wait_line_after(&host, from, says);
        assert!(line.contains("expected one `application/wasm` layer"), "{line}");
        assert_eq!(active(&host), sha256(&v3), "{layout:?}");
    }
    let from = host.lines().len();
    registry.delete("team/echo", "live");
    wait_line_after(&host, from, "is not in the registry");
    assert_eq!(active(&host), sha256(&v3));
    assert!(fleet::metric(&http(), &host, "echo_host_source_errors_total") >= 3.0);

    registry.push("team/echo", "live", &v4, Layout::Cncf);
    wait_serves(&host, &v4, "the push after the tag came back");
    assert_eq!(active(&pinned), sha256(&v1), "a digest reference never changes");
    assert!(!pinned.lines().iter().any(|l| l.contains("resolving `")), "a pinned host does not poll");
}

#[test]
fn registry_faults_keep_the_old_version_serving_and_polling_recovers() {
    let registry = Registry::start(Mode::Plain);
    let proxy = RegistryProxy::start(registry.url());
    let via = proxy.host();
    let mut current = variant(&fleet::echo(), 10);
    registry.push("echo", "v", &current, Layout::Cncf);
    let reference = format!("oci://{via}/echo:v");
    let mut args = follow_args(&reference, &via);
    // A hung registry is given up on after 5 s (the default 30 s would only make this slower).
    args.extend(["--fetch-timeout", "5s"]);
    let host = HostProcess::start(&args, &[]);
    assert_eq!(active(&host), sha256(&current));

    let faults = [
        (Fault::Status(503, None), "503"),
        (Fault::Status(403, None), "the registry refused anonymous access (403 Forbidden)"),
        (Fault::Refuse, "cannot reach"),
        (Fault::Hang, "cannot reach"),
        (Fault::CorruptBlobs, "the registry sent bytes whose digest is"),
        (Fault::CorruptManifests, "the registry sent bytes whose digest is"),
        (Fault::HugeManifests, "over the 4194304-byte limit"),
    ];
    for (n, (fault, says)) in faults.into_iter().enumerate() {
        let next = variant(&fleet::echo(), 20 + n as u32);
        let from = host.lines().len();
        proxy.set_fault(fault);
        registry.push("echo", "v", &next, Layout::Cncf);
        wait_line_after(&host, from, says);
        assert_eq!(active(&host), sha256(&current), "{fault:?}: the old version keeps serving");
        let error = info(&http(), &host)["component"]["source_error"].clone();
        assert!(error["message"].as_str().is_some_and(|m| m.contains(says)), "{fault:?}: info says {error}");
        proxy.set_fault(Fault::Pass);
        wait_serves(&host, &next, &format!("the push after {fault:?}"));
        assert_eq!(info(&http(), &host)["component"]["source_error"], Value::Null, "{fault:?}: cleared");
        current = next;
    }

    // 429 with `Retry-After: 3`: the next poll waits that long, not the 300 ms interval.
    proxy.set_fault(Fault::Status(429, Some(3)));
    let start = proxy.seen().len();
    let polls = eventually("two polls under the 429", PATIENCE, || {
        let seen: Vec<_> = proxy.seen().into_iter().skip(start).filter(|s| s.fault != Fault::Pass).collect();
        if seen.len() >= 2 { Ok(seen) } else { Err(format!("{} polls", seen.len())) }
    });
    let gap = polls[1].at.duration_since(polls[0].at);
    assert!(
        gap >= Duration::from_millis(2900),
        "the host polled again {gap:?} after a 429 with Retry-After: 3"
    );
    proxy.set_fault(Fault::Pass);
    let last = variant(&fleet::echo(), 99);
    registry.push("echo", "v", &last, Layout::Cncf);
    wait_serves(&host, &last, "the push after the 429s");
}

/// Runs `echo-host ARGS` on a free loopback port, expecting it to exit with an error before it
/// serves; returns what it printed (stdout and stderr).
fn start_fails(args: &[&str]) -> String {
    let port = util::peers::free_port().to_string();
    let mut args = args.to_vec();
    args.extend(["--port", &port, "--listen-addr", "127.0.0.1"]);
    let (status, stdout, stderr) = util::run_cli(&args, PATIENCE);
    assert!(!status.success(), "`echo-host` started: {stdout}");
    format!("{stdout}\n{stderr}")
}

/// Every stdout line of `host`, and `also`, checked for `secret`.
fn assert_never_shown(secret: &str, host: &HostProcess, also: &[&str]) {
    for line in host.lines().iter().map(String::as_str).chain(also.iter().copied()) {
        assert!(!line.contains(secret), "a credential was printed: {line}");
    }
}

#[test]
fn basic_logins_follow_redirects_without_sending_credentials_to_storage() {
    let registry = Registry::start(Mode::Basic);
    let proxy = RegistryProxy::start(registry.url());
    let via = proxy.host();
    let dir = util::scratch_dir();
    let password = registry.password().expect("a Basic registry has a password");
    let password_file = util::write_file(dir.path(), "password", password.as_bytes());
    let v1 = variant(&fleet::echo(), 1);
    registry.push("echo", "v", &v1, Layout::Cncf);
    let reference = format!("oci://{via}/echo:v");

    // Anonymous: the host does not start, and says what to give.
    let said = start_fails(&follow_args(&reference, &via));
    assert!(said.contains("refused anonymous access") && said.contains("--registry-username"), "{said}");

    let mut args = follow_args(&reference, &via);
    let password_path = password_file.to_str().unwrap();
    let username = registry.username().expect("a Basic registry has a user");
    args.extend(["--registry-username", username, "--registry-password-file", password_path]);
    proxy.set_fault(Fault::RedirectBlobs);
    let host = HostProcess::start(&args, &[]);
    assert_eq!(active(&host), sha256(&v1));
    let v2 = variant(&fleet::echo(), 2);
    registry.push("echo", "v", &v2, Layout::Cncf);
    wait_serves(&host, &v2, "the redirected blob");
    let storage = proxy.storage_seen();
    assert!(storage.len() >= 2, "blob downloads went to the redirect target: {storage:?}");
    assert!(storage.iter().all(|s| s.authorization.is_none()), "credentials sent to storage: {storage:?}");
    assert!(proxy.seen().iter().any(|s| s.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    assert_never_shown(password, &host, &[&said]);
}

#[test]
fn bearer_tokens_come_from_a_docker_config_or_the_metadata_server_and_are_reused() {
    let registry = Registry::start(Mode::Token);
    let proxy = RegistryProxy::start(registry.url());
    let via = proxy.host();
    let v1 = variant(&fleet::echo(), 1);
    registry.push("echo", "v", &v1, Layout::Cncf);
    let reference = format!("oci://{via}/echo:v");

    // `docker login`'s config.json.
    let dir = util::scratch_dir();
    let (username, password) = (registry.username().unwrap(), registry.password().unwrap());
    let auth = base64_encode(&format!("{username}:{password}"));
    let config = serde_json::json!({ "auths": { via.clone(): { "auth": auth } } });
    util::write_file(dir.path(), "config.json", config.to_string().as_bytes());
    let docker_config = dir.path().to_str().unwrap().to_string();
    // The pushes ask for tokens too: count the host's from here.
    let before = registry.token_requests();
    let host = HostProcess::start(&follow_args(&reference, &via), &[("DOCKER_CONFIG", &docker_config)]);
    assert_eq!(active(&host), sha256(&v1));
    let polls = proxy.seen().len();
    eventually("ten more polls", PATIENCE, || {
        let n = proxy.seen().len() - polls;
        if n >= 10 { Ok(()) } else { Err(format!("{n}")) }
    });
    // An unchanged tag costs one `HEAD` of its manifest per poll, nothing else.
    let idle: Vec<_> = proxy.seen().into_iter().skip(polls).collect();
    assert!(idle.iter().all(|s| s.method == "HEAD" && s.path == "/v2/echo/manifests/v"), "{idle:?}");
    let tokens = registry.token_requests() - before;
    assert_eq!(tokens, 1, "one token, reused across the pull and every poll");
    assert!(
        proxy
            .seen()
            .iter()
            .skip(polls)
            .all(|s| s.authorization.as_deref().is_some_and(|a| a.starts_with("Bearer ")))
    );
    assert_never_shown(password, &host, &[]);
    drop(host);

    // On Google Cloud: the metadata server's token as `oauth2accesstoken`'s password.
    let metadata = util::gcs::MetadataStub::start("instance-1", 3600);
    metadata.hand_out(registry.access_token().expect("the token registry takes an access token"));
    let google = format!("--google-registries={via}");
    let mut args = follow_args(&reference, &via);
    args.push(&google);
    let host = HostProcess::start(&args, &[("GCE_METADATA_HOST", &metadata.host())]);
    assert_eq!(active(&host), sha256(&v1));
    assert!(metadata.token_requests() >= 1, "the token came from the metadata server");
    let v2 = variant(&fleet::echo(), 2);
    registry.push("echo", "v", &v2, Layout::Cncf);
    wait_serves(&host, &v2, "the push, with the metadata token");
    for token in metadata.tokens() {
        assert_never_shown(&token, &host, &[]);
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_registry_with_a_private_ca_needs_registry_ca_file() {
    let registry = Registry::start(Mode::Tls);
    let v1 = variant(&fleet::echo(), 1);
    registry.push("echo", "v", &v1, Layout::Cncf);
    let reference = format!("oci://{}/echo:v", registry.host());
    let base = ["--component", &reference, "--poll-interval", "0s"];
    let said = start_fails(&base);
    assert!(said.contains("cannot pull the component") && said.contains("cannot reach"), "{said}");

    let ca = registry.ca().expect("the TLS registry has a CA");
    let mut args = base.to_vec();
    args.extend(["--registry-ca-file", ca.to_str().unwrap()]);
    let host = HostProcess::start(&args, &[]);
    assert_eq!(active(&host), sha256(&v1));
}

#[test]
fn push_and_release_start_take_a_reference_and_the_history_records_it() {
    let registry = Registry::start(Mode::Plain);
    let host_name = registry.host().to_string();
    let store = fleet::Store::new("oci-release");
    let gcs = store.gcs.url();
    let hosts =
        store.start_hosts(1, &["--storage-emulator-host", &gcs], &["--insecure-registry", &host_name]);
    let token_file = store.token_file();
    let token = token_file.to_str().unwrap();
    let url = hosts[0].url("");

    let stable = variant(&fleet::echo(), 7);
    let pushed = registry.push("echo", "stable", &stable, Layout::Cncf);
    let reference = format!("oci://{host_name}/echo:stable");
    let (status, stdout, stderr) =
        util::run_cli(&["push", &url, &reference, "--token-file", token, "--wait"], PATIENCE);
    assert!(status.success(), "{stdout}\n{stderr}");
    let manifest = store.manifest().expect("a manifest");
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(&stable)));
    assert_eq!(manifest["history"][0]["source"], format!("{reference}@{}", pushed.digest));

    let canary = variant(&fleet::echo(), 8);
    let pushed = registry.push("echo", "canary", &canary, Layout::Legacy);
    let reference = format!("oci://{host_name}/echo:canary");
    let (status, stdout, stderr) = util::run_cli(
        &["release", "start", &url, &reference, "--weight", "10", "--token-file", token],
        PATIENCE,
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    let manifest = store.manifest().expect("a manifest");
    assert_eq!(manifest["canary"]["version"], format!("sha256:{}", sha256(&canary)));
    assert_eq!(manifest["history"][0]["source"], format!("{reference}@{}", pushed.digest));

    // A reference to nothing, and a container image: refused, nothing released.
    let generation = store.manifest_generation();
    let (status, body) = admin_from(&hosts[0], &format!("oci://{host_name}/echo:missing"));
    assert_eq!((status, body["kind"].as_str()), (404, Some("registry_not_found")), "{body}");
    registry.push("echo", "image", &stable, Layout::Image);
    let (status, body) = admin_from(&hosts[0], &format!("oci://{host_name}/echo:image"));
    assert_eq!((status, body["kind"].as_str()), (422, Some("not_a_component")), "{body}");
    let (status, body) = admin_from(&hosts[0], "oci://not a reference");
    assert_eq!((status, body["kind"].as_str()), (400, Some("bad_reference")), "{body}");
    assert_eq!(store.manifest_generation(), generation);
}

/// `PUT admin/component?from=REFERENCE` with no body.
fn admin_from(host: &HostProcess, reference: &str) -> (u16, Value) {
    let url = host.url(&format!("{}/component", fleet::ADMIN));
    let response = http().put(&url).query(&[("from", reference)]).bearer_auth(fleet::TOKEN).send().unwrap();
    fleet::answer(response)
}

/// `input` signed by the real `wasmsign2` CLI with `secret`, the signature embedded.
fn wasmsign2_signed(dir: &std::path::Path, name: &str, input: &[u8], secret: &std::path::Path) -> Vec<u8> {
    let (plain, signed) = (dir.join(format!("{name}.wasm")), dir.join(format!("{name}.signed.wasm")));
    std::fs::write(&plain, input).unwrap();
    let output = std::process::Command::new(util::wasmsign2_cli::wasmsign2_cli())
        .args(["sign", "-i", plain.to_str().unwrap(), "-o", signed.to_str().unwrap(), "-k"])
        .arg(secret)
        .output()
        .unwrap();
    assert!(output.status.success(), "wasmsign2 sign: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read(signed).unwrap()
}

#[test]
fn a_component_signed_the_wasmsign2_way_is_verified_through_the_registry() {
    let registry = Registry::start(Mode::Plain);
    let host_name = registry.host().to_string();
    let dir = util::scratch_dir();
    let keys = |name: &str| {
        let (secret, public) = (dir.path().join(format!("{name}.sk")), dir.path().join(format!("{name}.pk")));
        let output = std::process::Command::new(util::wasmsign2_cli::wasmsign2_cli())
            .args(["keygen", "-k", secret.to_str().unwrap(), "-K", public.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "wasmsign2 keygen");
        (secret, public)
    };
    let ((trusted, trusted_public), (other, _)) = (keys("trusted"), keys("other"));
    let v1 = wasmsign2_signed(dir.path(), "v1", &variant(&fleet::echo(), 1), &trusted);
    registry.push("echo", "v", &v1, Layout::Cncf);
    let reference = format!("oci://{host_name}/echo:v");
    let mut args = follow_args(&reference, &host_name);
    args.extend(["--trusted-key", trusted_public.to_str().unwrap()]);
    let host = HostProcess::start(&args, &[]);
    assert_eq!(active(&host), sha256(&v1), "the embedded signature verifies; no .sig is fetched");

    let by_other = wasmsign2_signed(dir.path(), "v2", &variant(&fleet::echo(), 2), &other);
    let unsigned = variant(&fleet::echo(), 3);
    for (bytes, says) in [(&by_other, "bad signature"), (&unsigned, "no signature")] {
        let from = host.lines().len();
        registry.push("echo", "v", bytes, Layout::Cncf);
        wait_line_after(&host, from, says);
        assert_eq!(active(&host), sha256(&v1), "{says}: refused, the signed version keeps serving");
    }
    let v4 = wasmsign2_signed(dir.path(), "v4", &variant(&fleet::echo(), 4), &trusted);
    registry.push("echo", "v", &v4, Layout::Cncf);
    wait_serves(&host, &v4, "the next signed push");
}
