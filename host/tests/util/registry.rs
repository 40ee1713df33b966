//! A real OCI registry on loopback, for the `oci://` component source tests:
//!
//! - [`Registry`]: Debian's `docker-registry` (the CNCF distribution registry 2.8) as a child
//!   process, in one of four [`Mode`]s: anonymous HTTP, HTTPS with a CA made for it, htpasswd
//!   Basic auth, or the distribution spec's Bearer token flow with a token server stub.
//! - Its [`Registry::push`] and [`Registry::delete`] are a third-party client's: the `oras` Python
//!   SDK, pushing a wasm file in one of several manifest [`Layout`]s (the CNCF Wasm artifact, the
//!   older wasm-to-oci one, an image index, and layouts the host must refuse).
//!
//! Both are `testing/registry/registry.py` (its docstring tells what it owns), run with the
//! machine's `python3`. On first use it installs what it needs under `target/tools/` (about 6 s:
//! a venv with the hash-pinned `oras` and `bcrypt` wheels from PyPI, and the registry `.deb` from
//! Debian's signed archive via `apt-get download` + `dpkg -x`, no root needed), under lock files,
//! so parallel tests and test binaries install it once.
//!
//! Everything here blocks, so it works from plain `#[test]`s (and from `#[tokio::test]`s, blocking
//! that runtime thread).

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::peers;

/// How long `registry.py serve` may take to print its ready line: generous, since the first
/// start installs the venv and the registry (seconds here, more on a busy CI machine).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// How the registry authenticates and what it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Anonymous pull and push, plain HTTP.
    Plain,
    /// Anonymous, HTTPS with a server certificate for `127.0.0.1` and `localhost` signed by a CA
    /// made for this registry ([`Registry::ca`]).
    Tls,
    /// htpasswd Basic auth ([`Registry::username`], [`Registry::password`]), plain HTTP.
    Basic,
    /// `auth: token`: the registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,
    /// scope="repository:REPO:pull"`; the realm is a token server stub that takes Basic
    /// credentials (the user and password, or `oauth2accesstoken` with
    /// [`Registry::access_token`]) and counts its requests ([`Registry::token_requests`]).
    /// Anonymous pulls are refused.
    Token,
}

impl Mode {
    fn as_arg(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Tls => "tls",
            Mode::Basic => "basic",
            Mode::Token => "token",
        }
    }
}

/// The manifest a [`Registry::push`] writes for a wasm file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The CNCF Wasm OCI artifact (what `wkg oci push` writes): an OCI image manifest with config
    /// `application/vnd.wasm.config.v0+json` (`{"created", "architecture": "wasm", "os":
    /// "wasip2", "layerDigests", "component"}`) and one `application/wasm` layer.
    Cncf,
    /// wasm-to-oci's layout (`oci-client`'s constants): config `application/vnd.wasm.config.v1+json`
    /// (`{}`), one `application/vnd.wasm.content.layer.v1+wasm` layer.
    Legacy,
    /// An image index: a `linux/amd64` container image entry first, then a `wasm`/`wasip2` entry
    /// pointing at a [`Layout::Cncf`] manifest ([`Pushed::wasm_manifest_digest`]).
    Index,
    /// An ordinary container image: image config, one `application/vnd.oci.image.layer.v1.tar+gzip`
    /// layer (a tar holding the wasm). To be refused.
    Image,
    /// Like [`Layout::Cncf`] with two `application/wasm` layers (the file, then the file with a
    /// custom section appended). To be refused.
    TwoLayers,
}

impl Layout {
    fn as_arg(self) -> &'static str {
        match self {
            Layout::Cncf => "cncf",
            Layout::Legacy => "legacy",
            Layout::Index => "index",
            Layout::Image => "image",
            Layout::TwoLayers => "two-layers",
        }
    }
}

/// What a [`Registry::push`] left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The manifest's digest as the registry reported it (`Docker-Content-Digest`), `sha256:…`:
    /// the index's for [`Layout::Index`].
    pub digest: String,
    /// `HOST:PORT/REPO:TAG`.
    pub reference: String,
    /// The wasm layer's digest (`sha256:` of the bytes pushed); for [`Layout::Image`], the tar.gz
    /// layer's; for [`Layout::TwoLayers`], the first layer's.
    pub layer_digest: String,
    /// The manifest's media type (OCI image manifest, or OCI image index for [`Layout::Index`]).
    pub media_type: String,
    /// [`Layout::Index`]: the digest of the `wasm`/`wasip2` entry's manifest.
    pub wasm_manifest_digest: Option<String>,
}

/// The registry (with its token server in [`Mode::Token`]) on `127.0.0.1:<free port>`, its
/// storage in a temporary directory; killed with its whole process group on drop. Each test
/// starts its own.
///
/// Manifests carry a `created` time in their config ([`Layout::Cncf`] and the layouts built on
/// it), as `wkg` writes them: two pushes of the same bytes a second apart get different manifest
/// digests and the same layer digest.
pub struct Registry {
    child: Child,
    /// Storage, config, certificates, the registry's log, the wasm files pushed.
    dir: tempfile::TempDir,
    stderr: PathBuf,
    ready: serde_json::Value,
    mode: Mode,
    http: reqwest::blocking::Client,
}

impl Registry {
    /// Installs the registry and the pusher if needed, starts the registry in `mode` and returns
    /// once it answers `/v2/`. Panics (with the script's output) if it does not come up.
    pub fn start(mode: Mode) -> Registry {
        Self::spawn(mode, &[])
    }

    /// [`Mode::Token`] with tokens that say they expire after `ttl` (`expires_in` and the JWT's
    /// `exp`; the default is 300 s), for tests of a client's token cache. The registry itself
    /// still takes a token for about 60 s past its `exp` (distribution 2.8's leeway).
    pub fn start_token_ttl(ttl: Duration) -> Registry {
        Self::spawn(Mode::Token, &["--token-ttl", &ttl.as_secs().max(1).to_string()])
    }

    fn spawn(mode: Mode, extra: &[&str]) -> Registry {
        let dir = tempfile::Builder::new().prefix("oci-registry-").tempdir().expect("a temporary directory");
        let stderr = dir.path().join("registry.py.stderr");
        let mut command = Command::new("python3");
        command
            .arg(script())
            .args(["serve", "--mode", mode.as_arg(), "--dir"])
            .arg(dir.path().join("registry"))
            .args(extra)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("the registry's stderr file"))
            // Its own process group, so that drop kills the script and the registry together.
            .process_group(0);
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run `python3 {}` (is python3 installed?): {e}", script().display())
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = send.send(line);
        });
        let line = receive.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        let http =
            reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        // From here on, a panic drops the guard and kills the process group.
        let mut registry = Registry { child, dir, stderr, ready: serde_json::Value::Null, mode, http };
        registry.ready = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "`registry.py serve --mode {}` printed no ready line within {READY_TIMEOUT:?} (it needs \
                 python3, openssl, apt-get and dpkg-deb, and on first use PyPI and Debian's archive; as \
                 non-root, run `apt-get update` first). Its stdout: {line:?}; its stderr:\n{}",
                mode.as_arg(),
                registry.log()
            )
        });
        registry
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.ready[name].as_str()
    }

    /// `http://127.0.0.1:PORT` (`https://` in [`Mode::Tls`]).
    pub fn url(&self) -> &str {
        self.field("url").expect("`url` in the ready line")
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> &str {
        self.field("host").expect("`host` in the ready line")
    }

    /// `oci://HOST:PORT/REPO:TAG`, the `--component` for `repo:tag` here.
    pub fn oci_url(&self, repo: &str, tag: &str) -> String {
        format!("oci://{}/{repo}:{tag}", self.host())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// [`Mode::Tls`]: the PEM file of the CA that signed the registry's certificate.
    pub fn ca(&self) -> Option<&Path> {
        self.field("ca").map(Path::new)
    }

    /// [`Mode::Basic`] and [`Mode::Token`]: the user name.
    pub fn username(&self) -> Option<&str> {
        self.field("username")
    }

    /// [`Mode::Basic`] and [`Mode::Token`]: the password (random per registry).
    pub fn password(&self) -> Option<&str> {
        self.field("password")
    }

    /// [`Mode::Token`]: an access token the token server takes as the password of the user
    /// `oauth2accesstoken` (how Artifact Registry takes the metadata server's tokens).
    pub fn access_token(&self) -> Option<&str> {
        self.field("access_token")
    }

    /// The registry's process id (a child of the script, killed with it).
    pub fn registry_pid(&self) -> u32 {
        self.ready["pid"].as_u64().expect("`pid` in the ready line") as u32
    }

    /// [`Mode::Token`]: how many requests the token endpoint has had so far (refused ones too).
    pub fn token_requests(&self) -> u64 {
        let url = self.field("token_requests_url").unwrap_or_else(|| {
            panic!("token_requests() is for Mode::Token; this registry is {:?}", self.mode)
        });
        let counts: serde_json::Value = self
            .http
            .get(url)
            .send()
            .and_then(|response| response.error_for_status())
            .and_then(|response| response.json())
            .unwrap_or_else(|e| panic!("GET {url}: {e}; the registry's log:\n{}", self.log()));
        counts["token_requests"].as_u64().expect("`token_requests` in the token server's counts")
    }

    /// Pushes `bytes` as `repo:tag` in `layout` with the oras Python SDK (with the registry's
    /// credentials and CA). Panics with the pusher's output if the push fails.
    pub fn push(&self, repo: &str, tag: &str, bytes: &[u8], layout: Layout) -> Pushed {
        let file = tempfile::Builder::new().suffix(".wasm").tempfile_in(self.dir.path()).unwrap();
        fs::write(file.path(), bytes).unwrap();
        let mut command = self.client_command("push", repo);
        command.args(["--tag", tag, "--layout", layout.as_arg(), "--file"]).arg(file.path());
        let out = self.run_client(&mut command, &format!("push {repo}:{tag} ({layout:?})"));
        let text = |name: &str| out[name].as_str().map(str::to_owned);
        Pushed {
            digest: text("digest").expect("`digest` in the push's answer"),
            reference: text("reference").expect("`reference` in the push's answer"),
            layer_digest: text("layer_digest").expect("`layer_digest` in the push's answer"),
            media_type: text("media_type").expect("`media_type` in the push's answer"),
            wasm_manifest_digest: text("wasm_manifest_digest"),
        }
    }

    /// Deletes the manifest `reference` (a tag or a `sha256:` digest) names in `repo`. The registry
    /// deletes manifests, not tags: every tag of that manifest goes with it. Returns the digest
    /// deleted. Panics if there is no such manifest.
    pub fn delete(&self, repo: &str, reference: &str) -> String {
        let mut command = self.client_command("delete", repo);
        command.args(["--reference", reference]);
        let out = self.run_client(&mut command, &format!("delete {repo}@{reference}"));
        out["deleted"].as_str().expect("`deleted` in the delete's answer").to_owned()
    }

    fn client_command(&self, subcommand: &str, repo: &str) -> Command {
        let mut command = Command::new("python3");
        command.arg(script()).args([subcommand, "--url", self.url(), "--repo", repo]);
        if let Some(ca) = self.ca() {
            command.arg("--ca").arg(ca);
        }
        if let (Some(username), Some(password)) = (self.username(), self.password()) {
            // `--password=…` in one argument: a random password may start with `-`, which argparse
            // would take for a flag.
            command.arg(format!("--username={username}")).arg(format!("--password={password}"));
        }
        command.env("PYTHONDONTWRITEBYTECODE", "1");
        command
    }

    fn run_client(&self, command: &mut Command, what: &str) -> serde_json::Value {
        let out =
            command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "registry.py {what} failed ({}):\n{stdout}{}\nthe registry's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("registry.py {what} printed no JSON ({e}): {stdout:?}"))
    }

    /// The script's stderr (installs, token server requests) and the registry's log so far.
    pub fn log(&self) -> String {
        let read = |path: &Path| {
            fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };
        format!(
            "--- registry.py stderr\n{}--- registry log\n{}",
            read(&self.stderr),
            read(&self.dir.path().join("registry").join("registry.log"))
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // The script leads its process group ([`Command::process_group`]): SIGKILL reaches it and
        // the registry at once (the registry also has a parent-death signal, for the case where
        // the script alone is killed).
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// `testing/registry/registry.py`.
pub fn script() -> PathBuf {
    peers::workspace_root().join("testing").join("registry").join("registry.py")
}
