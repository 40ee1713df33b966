//! The OCI registry harness itself (`util::registry`), so that CI proves it works before the
//! `oci://` source tests rely on it: a registry in token mode, a push by the oras SDK, and the
//! manifest and layer read back through the distribution spec's Bearer flow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use sha2::Digest as _;

use crate::util::echo_wasm;
use crate::util::registry::{Layout, Mode, Registry};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The `key="value"` parameters of a `Bearer …` challenge.
fn bearer_params(challenge: &str) -> BTreeMap<String, String> {
    let params =
        challenge.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer challenge: {challenge}"));
    params
        .split("\",")
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("bad challenge: {challenge}"));
            (key.trim().to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn token_mode_serves_an_oras_push_through_the_bearer_flow() {
    let registry = Registry::start(Mode::Token);
    let wasm = std::fs::read(echo_wasm()).unwrap();
    let pushed = registry.push("harness/echo", "v1", &wasm, Layout::Cncf);
    assert_eq!(pushed.reference, format!("{}/harness/echo:v1", registry.host()));
    assert_eq!(pushed.layer_digest, sha256(&wasm));

    let http = reqwest::blocking::Client::builder().no_proxy().build().unwrap();
    let manifest_url = format!("{}/v2/harness/echo/manifests/v1", registry.url());

    // Anonymous: refused, with the challenge that names the token server.
    let anonymous = http.get(&manifest_url).header(ACCEPT, OCI_MANIFEST).send().unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned();
    let params = bearer_params(&challenge);
    assert_eq!(params["scope"], "repository:harness/echo:pull", "{challenge}");

    // A token for the metadata server's kind of credentials: `oauth2accesstoken` + access token.
    let before = registry.token_requests();
    let answer: serde_json::Value = http
        .get(&params["realm"])
        .query(&[("service", &params["service"]), ("scope", &params["scope"])])
        .basic_auth("oauth2accesstoken", registry.access_token())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(registry.token_requests(), before + 1, "the token endpoint counts its requests");
    let token = answer["token"].as_str().expect("a token");

    let response = http.get(&manifest_url).header(ACCEPT, OCI_MANIFEST).bearer_auth(token).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", registry.log());
    assert_eq!(response.headers()["docker-content-digest"], pushed.digest.as_str());
    let manifest = response.bytes().unwrap();
    assert_eq!(sha256(&manifest), pushed.digest, "the manifest's digest is the sha256 of its bytes");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "{manifest}");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], pushed.layer_digest.as_str());

    // The layer, with the same token (its scope covers the repository's blobs).
    let blob_url = format!("{}/v2/harness/echo/blobs/{}", registry.url(), pushed.layer_digest);
    let blob =
        http.get(&blob_url).bearer_auth(token).send().unwrap().error_for_status().unwrap().bytes().unwrap();
    assert!(blob == wasm, "the layer is the pushed component");
    assert_eq!(registry.token_requests(), before + 1, "no token request but the test's own");

    // Dropping the guard leaves no registry behind.
    let pid = registry.registry_pid();
    assert!(running(pid), "the registry (pid {pid}) runs while its guard lives");
    drop(registry);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(pid), "the registry (pid {pid}) still runs after its guard was dropped");
}

/// Whether process `pid` exists and is not a zombie (a killed child whose new parent has not
/// reaped it yet).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with(['Z', 'X'])))
        .unwrap_or(false)
}
