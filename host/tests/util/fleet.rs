//! A test's release store (the emulator with a bucket, [`Store`]) and the blocking helpers the
//! tests of fleets of real hosts share (`store.rs`, `rollout.rs`, `container.rs`): the test
//! components, admin requests, and [`eventually`], which polls observable state against a deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::gcs::FakeGcs;
use super::{self as util, HostProcess};

pub const TOKEN: &str = "store-test-admin-token-0123456789";
pub const ADMIN: &str = "/.well-known/echo-host/admin";
pub const INFO: &str = "/.well-known/echo-host/info";
pub const METRICS: &str = "/.well-known/echo-host/metrics";
/// The prefix of the release store in each test's bucket.
pub const PREFIX: &str = "fleet/";
/// How long anything the hosts should do on their own (converge, heartbeat, notice) may take:
/// generous, for a busy 2-core machine; the tests poll, so a fast host passes fast.
pub const PATIENCE: Duration = Duration::from_secs(45);

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `echo-host-component` header a component is served under.
pub fn version(bytes: &[u8]) -> String {
    format!("sha256:{}", &sha256(bytes)[..12])
}

pub fn echo() -> Vec<u8> {
    std::fs::read(util::echo_wasm()).unwrap()
}

pub fn misbehave() -> Vec<u8> {
    std::fs::read(util::misbehave_wasm()).unwrap()
}

/// A distinct but equivalent component: the same bytes plus a custom section, so it has its
/// own sha256 and passes the gate (as in `swap.rs`).
pub fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"echo-host-test-variant";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&n.to_le_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // fits in one LEB128 byte
    bytes.extend_from_slice(&section);
    bytes
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `patience`; panics with `what`
/// and the last `Err` (the state last seen) otherwise.
pub fn eventually<T>(what: &str, patience: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {patience:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The `echo-host-component` header of `GET /` (panics unless 200).
pub fn serving(http: &reqwest::blocking::Client, host: &HostProcess) -> String {
    let response = http.get(host.url("/")).send().unwrap_or_else(|e| panic!("GET / on {}: {e}", host.addr));
    assert_eq!(response.status(), 200, "GET / on {}", host.addr);
    response.headers()["echo-host-component"].to_str().unwrap().to_string()
}

/// Waits until every host serves `bytes`.
pub fn wait_all_serve(http: &reqwest::blocking::Client, hosts: &[HostProcess], bytes: &[u8], what: &str) {
    let want = version(bytes);
    eventually(&format!("every host to serve {what} ({want})"), PATIENCE, || {
        let now: Vec<String> = hosts.iter().map(|h| serving(http, h)).collect();
        if now.iter().all(|v| *v == want) { Ok(()) } else { Err(format!("{now:?}")) }
    });
}

pub fn get_json(http: &reqwest::blocking::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).bearer_auth(TOKEN).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    answer(response)
}

/// Status and JSON body (a JSON string if the body is not JSON).
pub fn answer(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub fn info(http: &reqwest::blocking::Client, host: &HostProcess) -> Value {
    get_json(http, &host.url(INFO)).1
}

pub fn metric(http: &reqwest::blocking::Client, host: &HostProcess, sample: &str) -> f64 {
    let text = http.get(host.url(METRICS)).send().unwrap().text().unwrap();
    util::metric_value(&text, sample)
}

/// `PUT admin/component` (with `query`, e.g. `?if_generation=G`): status and JSON body.
pub fn push(http: &reqwest::blocking::Client, host: &HostProcess, bytes: &[u8], query: &str) -> (u16, Value) {
    let url = host.url(&format!("{ADMIN}/component{query}"));
    let response = http.put(&url).bearer_auth(TOKEN).body(bytes.to_vec()).send().unwrap();
    answer(response)
}

pub fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// One test's store: an emulator with a bucket, the store at `gs://BUCKET/fleet/`.
pub struct Store {
    pub gcs: FakeGcs,
    pub bucket: String,
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn new(bucket: &str) -> Store {
        let gcs = FakeGcs::start();
        gcs.create_bucket(bucket);
        Store { gcs, bucket: bucket.to_string(), dir: util::scratch_dir() }
    }

    pub fn url(&self) -> String {
        format!("gs://{}/{PREFIX}", self.bucket)
    }

    pub fn object(name: &str) -> String {
        format!("{PREFIX}{name}")
    }

    pub fn manifest(&self) -> Option<Value> {
        self.gcs.get_json(&self.bucket, &Self::object("manifest.json"))
    }

    pub fn manifest_generation(&self) -> Option<String> {
        self.gcs.generation(&self.bucket, &Self::object("manifest.json"))
    }

    /// Writes `manifest.json` by hand (any bytes); returns its generation.
    pub fn write_manifest(&self, bytes: &[u8]) -> String {
        self.gcs.put(&self.bucket, &Self::object("manifest.json"), bytes)
    }

    /// Writes `components/<sha>.wasm` by hand with `bytes` (whatever their real hash).
    pub fn write_component(&self, sha: &str, bytes: &[u8]) {
        self.gcs.put(&self.bucket, &Self::object(&format!("components/{sha}.wasm")), bytes);
    }

    /// The admin token file.
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.path().join("admin-token");
        if !path.exists() {
            std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        }
        path
    }

    /// The start-up component (echo) as a file.
    pub fn echo_file(&self) -> PathBuf {
        let path = self.dir.path().join("echo.wasm");
        if !path.exists() {
            std::fs::write(&path, echo()).unwrap();
        }
        path
    }

    /// The flags of a fleet host on this store; `storage` says how it reaches Cloud Storage
    /// (e.g. `["--storage-emulator-host", URL]`). Polls every 500 ms and heartbeats every second
    /// unless `extra` says otherwise.
    pub fn host_args(&self, storage: &[&str], extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--component",
            self.echo_file().to_str().unwrap(),
            "--store",
            &self.url(),
            "--admin-token-file",
            self.token_file().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, default) in [("--poll-interval", "500ms"), ("--heartbeat-interval", "1s")] {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), default.to_string()]);
            }
        }
        args.extend(storage.iter().chain(extra).map(|s| s.to_string()));
        args
    }

    /// Starts `n` hosts on this store at once (each compiles its component while the others do).
    pub fn start_hosts(&self, n: usize, storage: &[&str], extra: &[&str]) -> Vec<HostProcess> {
        self.start_hosts_with_env(n, storage, extra, &[])
    }

    pub fn start_hosts_with_env(
        &self,
        n: usize,
        storage: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vec<HostProcess> {
        let args = self.host_args(storage, extra);
        std::thread::scope(|scope| {
            let started: Vec<_> = (0..n)
                .map(|_| {
                    scope.spawn(|| {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        HostProcess::start(&args, env)
                    })
                })
                .collect();
            started.into_iter().map(|h| h.join().expect("a host failed to start")).collect()
        })
    }

    /// Hosts talking to the emulator directly (no credentials).
    pub fn start_direct(&self, n: usize) -> Vec<HostProcess> {
        let url = self.gcs.url();
        self.start_hosts(n, &["--storage-emulator-host", &url], &[])
    }
}

/// What one version served to a [`Load`]'s clients at one URL.
#[derive(Clone, Debug, Default)]
pub struct Served {
    pub requests: u64,
    /// Responses with a status of 500 or more.
    pub failures: u64,
    /// When the first request this version answered was sent.
    pub first_sent: Option<Instant>,
    /// When the first failing request was sent.
    pub first_failure: Option<Instant>,
    /// When the last request this version answered was sent.
    pub last_sent: Option<Instant>,
}

/// Per URL (in the order given to [`Load::start`]): version (`echo-host-component`) → what it served.
pub type Tally = Vec<BTreeMap<String, Served>>;

/// Client threads sending `GET` to each of a set of URLs in a loop, each thread on its own
/// keep-alive connection with a short pause between requests, until stopped; every response is
/// counted by the version that served it. Transport errors and responses without a version are
/// kept apart, as `errors`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `per_url` threads for each URL, each pausing `pause` between two requests.
    pub fn start(urls: &[String], per_url: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally: Arc<Mutex<Tally>> = Arc::new(Mutex::new(vec![BTreeMap::new(); urls.len()]));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = urls
            .iter()
            .enumerate()
            .flat_map(|(i, url)| std::iter::repeat_n((i, url.clone()), per_url))
            .map(|(i, url)| {
                let (stop, tally, errors) = (stop.clone(), tally.clone(), errors.clone());
                std::thread::spawn(move || {
                    let client = http();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        match Self::request(&client, &url) {
                            Ok((status, version)) => {
                                let mut tally = tally.lock().unwrap();
                                let served = tally[i].entry(version).or_default();
                                served.requests += 1;
                                served.first_sent.get_or_insert(sent);
                                if status >= 500 {
                                    served.failures += 1;
                                    served.first_failure.get_or_insert(sent);
                                }
                                served.last_sent = Some(sent);
                            }
                            Err(e) => errors.lock().unwrap().push(format!("{url}: {e}")),
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load { stop, tally, errors, threads }
    }

    /// One `GET url` read whole: its status and the version that served it.
    fn request(client: &reqwest::blocking::Client, url: &str) -> Result<(u16, String), String> {
        let response = client.get(url).send().map_err(|e| format!("{e:#}"))?;
        let status = response.status().as_u16();
        let version = response.headers().get("echo-host-component").and_then(|v| v.to_str().ok());
        let version = version.ok_or_else(|| format!("{status} without a version"))?.to_string();
        response.bytes().map_err(|e| format!("reading the body: {e:#}"))?;
        Ok((status, version))
    }

    /// What was served so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Requests answered so far at URL `i`, whatever the version.
    pub fn answered(&self, i: usize) -> u64 {
        self.tally.lock().unwrap()[i].values().map(|s| s.requests).sum()
    }

    /// Waits until every URL has had `more` requests answered beyond what it had at the call.
    pub fn wait_answered(&self, more: u64, patience: Duration) {
        let urls = self.tally.lock().unwrap().len();
        let target: Vec<u64> = (0..urls).map(|i| self.answered(i) + more).collect();
        eventually(&format!("{more} more answered requests at each URL"), patience, || {
            let now: Vec<u64> = (0..urls).map(|i| self.answered(i)).collect();
            if now.iter().zip(&target).all(|(n, t)| n >= t) {
                Ok(())
            } else {
                Err(format!("{now:?} of {target:?}"))
            }
        });
    }

    /// Stops the clients and returns what was served and the errors.
    pub fn finish(mut self) -> (Tally, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a load thread panicked");
        }
        (self.tally(), self.errors())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Canary releases (rollout.rs, container.rs)
// ---------------------------------------------------------------------------------------------

/// Whether `status` shows no canary routed here (none, or one this instance stopped routing to).
pub fn off_canary(status: &Value) -> bool {
    status["canary"].is_null() || status["canary"]["routing"] == false
}

/// The `auto_rollback` entries of a manifest's history.
pub fn auto_rollbacks(manifest: &Value) -> Vec<Value> {
    let history = manifest["history"].as_array().cloned().unwrap_or_default();
    history.into_iter().filter(|h| h["action"] == "auto_rollback").collect()
}

/// Checks a manifest after a canary of `canary` was rolled back automatically to `stable`: no
/// canary, one `auto_rollback` in the history (however many instances raced to write it), the
/// decision with its reason and numbers (at least `min_requests` canary requests, some failed).
pub fn assert_rolled_back_once(manifest: &Value, stable: &[u8], canary: &[u8], min_requests: u64) {
    assert_eq!(manifest["canary"], Value::Null, "{manifest:#}");
    assert_eq!(manifest["stable"], format!("sha256:{}", sha256(stable)), "{manifest:#}");
    let entries = auto_rollbacks(manifest);
    assert_eq!(entries.len(), 1, "exactly one auto_rollback entry: {manifest:#}");
    assert!(entries[0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{manifest:#}");
    let decision = &manifest["last_decision"];
    assert_eq!(decision["action"], "auto_rollback", "{manifest:#}");
    assert_eq!(decision["version"], format!("sha256:{}", sha256(canary)), "{decision}");
    assert!(decision["reason"].as_str().is_some_and(|r| r.contains('%')), "{decision}");
    assert!(decision["by"].as_str().is_some_and(|b| b.starts_with("instance:")), "{decision}");
    assert!(decision["at"].is_string(), "{decision}");
    let requests = decision["canary"]["requests"].as_u64().expect("last_decision.canary.requests");
    let failures = decision["canary"]["failures"].as_u64().expect("last_decision.canary.failures");
    assert!(requests >= min_requests && failures > 0 && failures < requests, "{decision}");
    assert!(decision["stable"]["requests"].is_u64(), "{decision}");
    assert_eq!(decision["stable"]["failures"], 0, "{decision}");
}

/// For a [`Load`]'s outcome: asserts that `stable` never failed and nothing failed in transport; returns the requests each
/// version served, over every URL.
pub fn summed(
    tally: &[BTreeMap<String, Served>],
    errors: &[String],
    stable: &str,
) -> BTreeMap<String, (u64, u64)> {
    assert!(
        errors.is_empty(),
        "{} requests failed in transport, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let mut sums = BTreeMap::<String, (u64, u64)>::new();
    for served in tally {
        for (version, s) in served {
            let entry = sums.entry(version.clone()).or_default();
            entry.0 += s.requests;
            entry.1 += s.failures;
        }
    }
    assert_eq!(sums.get(stable).map_or(0, |s| s.1), 0, "stable failed requests: {sums:?}");
    sums
}
