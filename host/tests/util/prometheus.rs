//! Real parsers of the `/metrics` text, installed on first use under `<workspace>/target/tools/`:
//!
//! - [`promtool`] and [`PrometheusServer`]: Debian's `prometheus` package (`apt-get download`,
//!   then `dpkg -x`: no root, nothing installed system-wide), its `promtool check metrics` and
//!   a real Prometheus scraping a host on loopback, read back through `/api/v1/query`;
//! - [`openmetrics_parse`]: the Python `prometheus_client` OpenMetrics parser
//!   ([`PYTHON_CLIENT`], pinned, in a venv of its own).
//!
//! Each install is guarded by a file lock (many test threads and processes may ask at once) and
//! writes a progress line with its duration to stderr.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::peers::{self, ChildGuard};

/// The Python client whose OpenMetrics parser checks the text.
pub const PYTHON_CLIENT: &str = "prometheus-client==0.26.0";

/// How long Prometheus may take to answer after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "[prometheus] {message}");
}

fn tools_root() -> PathBuf {
    peers::workspace_root().join("target").join("tools")
}

/// Holds `<dir>/.install.lock` exclusively until dropped.
fn install_lock(dir: &Path) -> File {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".install.lock"))
        .unwrap_or_else(|e| panic!("cannot open the install lock under {}: {e}", dir.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock the install lock under {}: {e}", dir.display()));
    lock
}

// ---------------------------------------------------------------------------------------------
// Debian's prometheus package: promtool and prometheus
// ---------------------------------------------------------------------------------------------

/// `<workspace>/target/tools/prometheus/usr/bin/`, holding `prometheus` and `promtool` from
/// Debian's `prometheus` package, unpacked on first use.
fn prometheus_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(install_prometheus).clone()
}

/// The `promtool` binary.
pub fn promtool() -> PathBuf {
    prometheus_bin_dir().join("promtool")
}

/// The `prometheus` server binary.
pub fn prometheus() -> PathBuf {
    prometheus_bin_dir().join("prometheus")
}

fn install_prometheus() -> PathBuf {
    let root = tools_root().join("prometheus");
    let bin = root.join("usr").join("bin");
    if installed(&bin) {
        return bin;
    }
    let _lock = install_lock(&root);
    if installed(&bin) {
        return bin;
    }
    progress(&format!(
        "installing Debian's `prometheus` package (apt-get download, dpkg -x) into {}",
        root.display()
    ));
    let started = Instant::now();
    let download = tempfile::tempdir_in(&root).unwrap();
    let fetched = Command::new("apt-get")
        .args(["download", "prometheus"])
        .current_dir(download.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run apt-get: {e}"));
    if !fetched.status.success() {
        // A fresh machine may have no package lists yet; only root can fetch them.
        let root_user = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(
            root_user,
            "`apt-get download prometheus` failed (run `apt-get update` as root first): {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        peers::run(Command::new("apt-get").args(["update", "-qq"]));
        peers::run(Command::new("apt-get").args(["download", "prometheus"]).current_dir(download.path()));
    }
    let deb = fs::read_dir(download.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("apt-get download left no .deb");
    // Unpack beside the final place and move `usr/` in whole: a half-unpacked tree is never used.
    let unpacked = download.path().join("tree");
    peers::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked));
    let _ = fs::remove_dir_all(root.join("usr"));
    fs::rename(unpacked.join("usr"), root.join("usr")).unwrap();
    assert!(installed(&bin), "{} has no working promtool after the install", bin.display());
    progress(&format!("installed {} in {:.1?}", version(&bin.join("promtool")), started.elapsed()));
    bin
}

fn installed(bin: &Path) -> bool {
    ["prometheus", "promtool"].iter().all(|tool| {
        Command::new(bin.join(tool))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// The first line of `tool --version` (`promtool, version 2.42.0+ds (...)`).
pub fn version(tool: &Path) -> String {
    let out = Command::new(tool).arg("--version").stdin(Stdio::null()).output().unwrap();
    let text =
        String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout }).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// `promtool check metrics` on `text` (its standard input): the exit status's success and what
/// it printed.
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// A real Prometheus on `127.0.0.1:<free port>` scraping `target` (`host:port`) at
/// `metrics_path` every second, with its data in a temporary directory. Killed on drop.
pub struct PrometheusServer {
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl PrometheusServer {
    pub fn start(target: &str, metrics_path: &str) -> PrometheusServer {
        let binary = prometheus();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: echo-host\n    metrics_path: {metrics_path}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = peers::free_port();
        let mut guard = ChildGuard::spawn(
            "prometheus",
            Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        )
        .expect("cannot start prometheus");
        guard.wait_for_http(port, STARTUP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        PrometheusServer { _guard: guard, _dir: dir, port }
    }

    /// `GET /api/v1/query?query=<promql>`: the `data.result` vector, as `(labels, value)`.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let answer: serde_json::Value = client
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .and_then(|response| response.error_for_status())
            .and_then(|response| response.json())
            .unwrap_or_else(|e| panic!("querying Prometheus for `{promql}` failed: {e}"));
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("no result vector for `{promql}`: {answer}"))
            .iter()
            .map(|series| {
                let labels = series["metric"].as_object().cloned().unwrap_or_default();
                let value = series["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The Python client's OpenMetrics parser
// ---------------------------------------------------------------------------------------------

/// Prints the families `text_string_to_metric_families` finds in standard input, as JSON.
const PARSE_SCRIPT: &str = "import json, sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
families = [\n\
    {'name': f.name, 'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
    for f in text_string_to_metric_families(sys.stdin.read())\n\
]\n\
json.dump(families, sys.stdout)\n";

/// The venv's `python`, with [`PYTHON_CLIENT`] installed on first use.
pub fn python_client() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_python_client).clone()
}

fn install_python_client() -> PathBuf {
    let version = PYTHON_CLIENT.split("==").nth(1).unwrap();
    let root = tools_root().join(format!("prometheus-client-{version}"));
    let python = root.join("venv").join("bin").join("python");
    if has_client(&python, version) {
        return python;
    }
    let _lock = install_lock(&root);
    if has_client(&python, version) {
        return python;
    }
    progress(&format!("installing {PYTHON_CLIENT} (PyPI) into a venv under {}", root.display()));
    let started = Instant::now();
    peers::run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(root.join("venv")));
    peers::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .arg(PYTHON_CLIENT),
    );
    assert!(has_client(&python, version), "{PYTHON_CLIENT} is not importable after the install");
    progress(&format!("installed {PYTHON_CLIENT} in {:.1?}", started.elapsed()));
    python
}

fn has_client(python: &Path, version: &str) -> bool {
    let script = "from importlib.metadata import version; print(version('prometheus-client'))";
    Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == version)
}

/// A family as the Python parser read it.
#[derive(Debug, serde::Deserialize)]
pub struct Family {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `(sample name, labels, value)`.
    pub samples: Vec<(String, std::collections::BTreeMap<String, String>, f64)>,
}

/// Parses `text` with `prometheus_client.openmetrics.parser`: its families, or the parser's
/// error.
pub fn openmetrics_parse(text: &str) -> Result<Vec<Family>, String> {
    let mut child = Command::new(python_client())
        .args(["-c", PARSE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start python");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the parser's output is not JSON: {e}"))
}
