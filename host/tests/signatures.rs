//! Signatures in the ecosystem's format: components signed by the real `wasmsign2` CLI (embedded
//! and detached, with its own keys and with an OpenSSH key from `ssh-keygen`) pass the
//! `--trusted-key` gate at start-up and through swaps (the admin upload, the watched file); a
//! changed byte or another key is refused as `bad_signature` with what to do; and what
//! `echo-host sign --format wasmsign2` writes, `wasmsign2 verify` accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::swap::{sha12, start_with_admin, upload};
use crate::util::wasmsign2_cli::wasmsign2_cli;
use crate::util::{self, TestServer, client};

/// How long a watched-file swap may take to show.
const WAIT: Duration = Duration::from_secs(30);
/// What every refusal for a signature must tell the operator to do.
const WHAT_TO_DO: &str = "sign this exact component with the trusted key";

/// Runs the pinned `wasmsign2` with `args`; panics with its output unless it succeeds.
fn wasmsign2(args: &[&str]) {
    let output = Command::new(wasmsign2_cli()).args(args).output().unwrap();
    assert!(output.status.success(), "wasmsign2 {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Whether `wasmsign2 verify ARGS` accepts (its exit status).
fn wasmsign2_verifies(args: &[&str]) -> bool {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    Command::new(wasmsign2_cli()).args(&all).output().unwrap().status.success()
}

/// Runs the real `echo-host` binary; panics with its stderr unless it succeeds.
fn echo_host(args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_echo-host")).args(args).output().unwrap();
    assert!(output.status.success(), "echo-host {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A wasmsign2 key pair made by `wasmsign2 keygen`: (secret, public).
fn wasmsign2_keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (secret, public) = (dir.join(format!("{name}.sk")), dir.join(format!("{name}.pk")));
    wasmsign2(&["keygen", "-k", s(&secret), "-K", s(&public)]);
    (secret, public)
}

/// `input` signed by `wasmsign2 sign` (extra flags such as `--ssh`), the signature embedded:
/// returns the signed bytes.
fn sign_embedded(dir: &Path, input: &Path, secret: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{}.embedded.wasm", input.file_stem().unwrap().to_str().unwrap()));
    let mut args = vec!["sign", "-i", s(input), "-o", s(&out), "-k", s(secret)];
    args.extend_from_slice(extra);
    wasmsign2(&args);
    std::fs::read(out).unwrap()
}

/// `input`'s detached signature from `wasmsign2 sign -S`: the binary signature.
fn sign_detached(dir: &Path, input: &Path, secret: &Path, extra: &[&str]) -> Vec<u8> {
    let (out, sig) = (dir.join("detached-out.wasm"), dir.join("detached.sig"));
    let mut args = vec!["sign", "-i", s(input), "-o", s(&out), "-k", s(secret), "-S", s(&sig)];
    args.extend_from_slice(extra);
    wasmsign2(&args);
    std::fs::read(sig).unwrap()
}

/// The version `GET /` is served by.
async fn serving(server: &TestServer) -> String {
    let response = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["echo-host-component"].to_str().unwrap().trim_start_matches("sha256:").to_string()
}

/// Polls `GET /` every 20 ms until `bytes` serve, for at most [`WAIT`].
async fn wait_until_serving(server: &TestServer, bytes: &[u8]) {
    let (expected, started) = (sha12(bytes), Instant::now());
    while serving(server).await != expected {
        assert!(started.elapsed() < WAIT, "`{expected}` was not served within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin upload is refused as `bad_signature`, saying what to do; the old version serves on.
async fn assert_refused(server: &TestServer, bytes: Vec<u8>, headers: &[(&str, &str)], what: &str) {
    let before = serving(server).await;
    let (status, body) = upload(server, bytes, headers).await;
    assert_eq!((status, body["kind"].as_str()), (403, Some("bad_signature")), "{what}: {body}");
    let message = body.to_string();
    assert!(message.contains(WHAT_TO_DO), "{what}: the refusal says what to do: {message}");
    assert_eq!(serving(server).await, before, "{what}: nothing was swapped");
}

/// One byte changed near the end (inside the last section, past the signature).
fn one_byte_changed(bytes: &[u8]) -> Vec<u8> {
    let mut changed = bytes.to_vec();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    changed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmsign2_signatures_pass_the_gate_at_start_and_through_swaps() {
    let dir = util::scratch_dir();
    let (secret, public) = wasmsign2_keygen(dir.path(), "trusted");
    let (other_secret, _) = wasmsign2_keygen(dir.path(), "other");
    let echo = util::write_file(dir.path(), "echo.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let misbehave = util::misbehave_wasm();

    // At start-up: the watched file carries its signature embedded, no `.sig` beside it.
    let echo_signed = sign_embedded(dir.path(), &echo, &secret, &[]);
    let watched = util::write_file(dir.path(), "watched.wasm", &echo_signed);
    let server = start_with_admin(
        dir.path(),
        &["--trusted-key", s(&public), "--component", s(&watched), "--poll-interval", "200ms"],
    )
    .await;
    assert_eq!(serving(&server).await, sha12(&echo_signed));

    // An upload signed embedded: swapped in.
    let misbehave_signed = sign_embedded(dir.path(), misbehave, &secret, &[]);
    let (status, body) = upload(&server, misbehave_signed.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving(&server).await, sha12(&misbehave_signed));

    // An upload with the detached binary signature, base64 in the header: swapped in.
    let detached = sign_detached(dir.path(), &echo, &secret, &[]);
    let header = BASE64.encode(&detached);
    let echo_bytes = std::fs::read(&echo).unwrap();
    let (status, body) = upload(&server, echo_bytes.clone(), &[("echo-host-signature", &header)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving(&server).await, sha12(&echo_bytes));

    // One byte changed, embedded or detached; signed with another key: refused.
    assert_refused(&server, one_byte_changed(&misbehave_signed), &[], "embedded, one byte changed").await;
    let header_for_changed = [("echo-host-signature", header.as_str())];
    assert_refused(&server, one_byte_changed(&echo_bytes), &header_for_changed, "detached, one byte changed")
        .await;
    let by_other = sign_embedded(dir.path(), misbehave, &other_secret, &[]);
    assert_refused(&server, by_other.clone(), &[], "embedded, another key").await;
    let other_detached = BASE64.encode(sign_detached(dir.path(), misbehave, &other_secret, &[]));
    let misbehave_bytes = std::fs::read(misbehave).unwrap();
    assert_refused(
        &server,
        misbehave_bytes,
        &[("echo-host-signature", &other_detached)],
        "detached, another key",
    )
    .await;

    // The watched file: a component signed with another key is rejected (the reason says why),
    // then one signed with the trusted key swaps in.
    let rejections = info(&server).await["swaps"]["rejections"].as_u64().unwrap();
    rename_into_place(&watched, &by_other);
    let started = Instant::now();
    let info = loop {
        let info = info(&server).await;
        if info["swaps"]["rejections"].as_u64().unwrap() > rejections {
            break info;
        }
        assert!(started.elapsed() < WAIT, "the badly signed file was not rejected: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reason = info["swaps"]["last_rejection"]["reason"].as_str().unwrap();
    assert!(reason.contains("bad signature") && reason.contains(WHAT_TO_DO), "{reason}");
    assert_eq!(serving(&server).await, sha12(&echo_bytes));
    rename_into_place(&watched, &misbehave_signed);
    wait_until_serving(&server, &misbehave_signed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasmsign2_detached_signature_beside_the_file_and_a_refused_start() {
    let dir = util::scratch_dir();
    let (secret, public) = wasmsign2_keygen(dir.path(), "trusted");
    let (other_secret, _) = wasmsign2_keygen(dir.path(), "other");
    let echo = util::write_file(dir.path(), "echo.wasm", &std::fs::read(util::echo_wasm()).unwrap());

    // `echo.wasm.sig` is wasmsign2's binary detached signature: accepted at start-up.
    let detached = sign_detached(dir.path(), &echo, &secret, &[]);
    util::write_file(dir.path(), "echo.wasm.sig", &detached);
    let server = TestServer::start(&["--trusted-key", s(&public), "--component", s(&echo)]).await;
    assert_eq!(serving(&server).await, sha12(&std::fs::read(&echo).unwrap()));
    drop(server);

    // Signed with another key: the host does not start, and says why and what to do.
    let by_other =
        util::write_file(dir.path(), "other.wasm", &sign_embedded(dir.path(), &echo, &other_secret, &[]));
    let error = TestServer::try_start(&["--trusted-key", s(&public), "--component", s(&by_other)])
        .await
        .err()
        .expect("a component signed with another key must not start");
    let message = format!("{error:#}");
    assert!(message.contains("bad signature") && message.contains(WHAT_TO_DO), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssh_key_from_ssh_keygen_is_a_trusted_key() {
    let dir = util::scratch_dir();
    let ssh_keygen = |name: &str| {
        let key = dir.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "echo-host-test", "-f", s(&key)])
            .status();
        match status {
            Ok(status) => assert!(status.success(), "ssh-keygen failed: {status}"),
            Err(e) => return Err(e),
        }
        Ok(key)
    };
    let key = match ssh_keygen("id_ed25519") {
        Ok(key) => key,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: no `ssh-keygen` (Debian's openssh-client)");
            return;
        }
        Err(e) => panic!("cannot run ssh-keygen: {e}"),
    };
    let other = ssh_keygen("other_ed25519").unwrap();
    let public = dir.path().join("id_ed25519.pub");
    assert!(std::fs::read_to_string(&public).unwrap().starts_with("ssh-ed25519 AAAA"));

    let echo = util::write_file(dir.path(), "echo.wasm", &std::fs::read(util::echo_wasm()).unwrap());
    let watched =
        util::write_file(dir.path(), "watched.wasm", &sign_embedded(dir.path(), &echo, &key, &["--ssh"]));
    let server =
        start_with_admin(dir.path(), &["--trusted-key", s(&public), "--component", s(&watched)]).await;
    assert_eq!(serving(&server).await, sha12(&std::fs::read(&watched).unwrap()));

    let misbehave = util::misbehave_wasm();
    let detached = BASE64.encode(sign_detached(dir.path(), misbehave, &key, &["--ssh"]));
    let misbehave_bytes = std::fs::read(misbehave).unwrap();
    let (status, body) =
        upload(&server, misbehave_bytes.clone(), &[("echo-host-signature", &detached)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving(&server).await, sha12(&misbehave_bytes));

    let by_other = sign_embedded(dir.path(), &echo, &other, &["--ssh"]);
    assert_refused(&server, by_other, &[], "another OpenSSH key").await;
}

#[test]
fn echo_host_sign_format_wasmsign2_verifies_with_the_wasmsign2_cli() {
    let dir = util::scratch_dir();
    let echo = util::write_file(dir.path(), "echo.wasm", &std::fs::read(util::echo_wasm()).unwrap());

    // With a key from `wasmsign2 keygen`: embedded (the default output) and detached.
    let (secret, public) = wasmsign2_keygen(dir.path(), "w");
    let (_, other_public) = wasmsign2_keygen(dir.path(), "other");
    echo_host(&["sign", "--format", "wasmsign2", "--key", s(&secret), s(&echo)]);
    let signed = dir.path().join("echo.signed.wasm");
    assert!(wasmsign2_verifies(&["-i", s(&signed), "-K", s(&public)]));
    assert!(!wasmsign2_verifies(&["-i", s(&signed), "-K", s(&other_public)]), "another key must fail");
    let changed =
        util::write_file(dir.path(), "changed.wasm", &one_byte_changed(&std::fs::read(&signed).unwrap()));
    assert!(!wasmsign2_verifies(&["-i", s(&changed), "-K", s(&public)]), "a changed byte must fail");

    let sig = dir.path().join("echo.wsig");
    echo_host(&["sign", "--format", "wasmsign2", "--detached", "-o", s(&sig), "--key", s(&secret), s(&echo)]);
    assert!(wasmsign2_verifies(&["-i", s(&echo), "-K", s(&public), "-S", s(&sig)]));
    assert!(!wasmsign2_verifies(&["-i", s(&echo), "-K", s(&other_public), "-S", s(&sig)]));

    // With a key from `echo-host keygen`: its public half in wasmsign2's raw form (0x01, then the
    // 32 bytes) is what `wasmsign2 verify -K` reads.
    let key = dir.path().join("echo-host.key");
    echo_host(&["keygen", s(&key)]);
    let ours =
        BASE64.decode(std::fs::read_to_string(dir.path().join("echo-host.key.pub")).unwrap().trim()).unwrap();
    let raw_public = util::write_file(dir.path(), "echo-host.pk", &[&[1u8][..], &ours].concat());
    let out = dir.path().join("ours.wasm");
    echo_host(&["sign", "--format", "wasmsign2", "--key", s(&key), "--output", s(&out), s(&echo)]);
    assert!(wasmsign2_verifies(&["-i", s(&out), "-K", s(&raw_public)]));
    assert!(!wasmsign2_verifies(&["-i", s(&out), "-K", s(&public)]));
    // The default format is unchanged: one line of base64 in `FILE.sig`.
    echo_host(&["sign", "--key", s(&key), s(&echo)]);
    let line = std::fs::read_to_string(dir.path().join("echo.wasm.sig")).unwrap();
    assert_eq!(BASE64.decode(line.trim()).unwrap().len(), 64);
}

fn rename_into_place(path: &Path, bytes: &[u8]) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

async fn info(server: &TestServer) -> serde_json::Value {
    client().get(server.url("/.well-known/echo-host/info")).send().await.unwrap().json().await.unwrap()
}
