//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `make chromium`) loads `/.well-known/echo-host/` from a host serving in this process (so the
//! page and the core are the ones this test binary was built from) and the test reads
//! the rendered DOM (`--dump-dom`): nothing without the token, the release with it, and the
//! automatic rollback once the host has made one. `--virtual-time-budget` lets the page's fetches
//! and its 2 s polls run to completion before the DOM is dumped, so nothing here sleeps.
//!
//! Screenshots of the page with a canary and after the rollback are written to the test's
//! scratch directory (the paths are printed); with `UPDATE_DOCS_SCREENSHOT=1` the rollback one
//! also replaces `docs/status-page.png`, the README's picture.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{self, TestServer, client};

const TOKEN: &str = "status-page-test-token-0123456789";
const PAGE: &str = "/.well-known/echo-host/";
const RELEASE: &str = "/.well-known/echo-host/admin/release";
/// How long the host may take to do what the test waits for (a rollback), and one browser run.
const PATIENCE: Duration = Duration::from_secs(90);

async fn release(host: &TestServer) -> Value {
    let response =
        client().get(host.url(RELEASE)).bearer_auth(TOKEN).send().await.expect("GET admin/release");
    assert_eq!(response.status(), 200, "GET admin/release");
    response.json().await.expect("admin/release answers JSON")
}

/// The `chromium` binary, or a failure that says how to install it (the test never skips).
fn chromium() -> &'static str {
    let found =
        Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match found {
        Ok(status) if status.success() => "chromium",
        _ => panic!(
            "`chromium` is not installed; the status-page test needs a real browser: run `make chromium` \
             (as root: apt-get install chromium)"
        ),
    }
}

/// Runs headless Chromium on `url` with `extra` flags (`--dump-dom` or `--screenshot=…`) and a
/// fresh profile; returns its stdout. Killed (its whole process group) after `PATIENCE`.
async fn browse(url: String, extra: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || browse_blocking(&url, &extra))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn browse_blocking(url: &str, extra: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let profile = util::scratch_dir();
    let child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--hide-scrollbars", "--window-size=1280,1100", "--virtual-time-budget=10000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("cannot start chromium");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if finished.recv_timeout(PATIENCE).is_err() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
    });
    let output = child.wait_with_output().expect("chromium's output");
    let _ = done.send(());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium {extra:?} {url} failed ({}; killed after {PATIENCE:?} if it hung); stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The page's DOM after its polls, as Chromium serialises it.
async fn rendered(host: &TestServer, fragment: &str) -> String {
    let dom = browse(format!("{}{fragment}", host.url(PAGE)), vec!["--dump-dom".into()]).await;
    assert!(dom.contains("id=\"status\""), "not the status page:\n{dom}");
    dom
}

/// A screenshot of the page (with the token) at `path`, checked to be a PNG of some substance.
async fn screenshot(host: &TestServer, path: &Path) {
    browse(format!("{}#token={TOKEN}", host.url(PAGE)), vec![format!("--screenshot={}", path.display())])
        .await;
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} is not a real screenshot", path.display());
    println!("status page screenshot: {}", path.display());
}

/// The element with `id` (its opening tag up to the matching close of the same tag name; the
/// page does not nest an element in one of its own kind), or a failure showing the DOM.
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element `{id}` in:\n{dom}"));
    let open = dom[..at].rfind('<').unwrap();
    let tag: String = dom[open + 1..].chars().take_while(char::is_ascii_alphanumeric).collect();
    let close = dom[at..].find(&format!("</{tag}>")).map(|end| at + end + tag.len() + 3);
    &dom[open..close.unwrap_or_else(|| panic!("element `{id}` is not closed in:\n{dom}"))]
}

/// The text of an element: its tags removed, the serialiser's escapes undone.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", "\u{a0}").replace("&amp;", "&")
}

fn short(sha256: &str) -> String {
    format!("sha256:{}", &sha256.trim_start_matches("sha256:")[..12])
}

/// Without the token the page shows the form and nothing of the release; a wrong token is
/// refused. With it, the page shows the stable version and the running canary and its weight;
/// after the host rolls the failing canary back on its own, the decision and the history row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_release_and_the_automatic_rollback() {
    let started = Instant::now();
    chromium(); // first, so a missing browser is the first thing said
    let dir = util::scratch_dir();
    let token = util::write_file(dir.path(), "token", format!("{TOKEN}\n").as_bytes());
    let flags = [
        "--admin-token-file",
        token.to_str().unwrap(),
        "--canary-window",
        "5s",
        "--canary-min-requests",
        "20",
    ];
    let host = TestServer::start(&flags).await;
    let http = client();
    let stable = release(&host).await["stable"]["sha256"].as_str().expect("a stable sha256").to_string();

    // (a) No token: the form, and no trace of the release.
    for fragment in ["", "#token=wrong-token"] {
        let dom = rendered(&host, fragment).await;
        assert!(
            !dom.contains(&stable[..12]),
            "the page shows the stable sha without a token ({fragment:?}):\n{dom}"
        );
        assert!(!element(&dom, "login").contains("hidden"), "no token form ({fragment:?}):\n{dom}");
        assert!(element(&dom, "status").contains("hidden"), "the status shows without a token:\n{dom}");
        assert!(!dom.contains("data-loaded"), "rendered from data without a token:\n{dom}");
        if !fragment.is_empty() {
            let message = text(element(&dom, "login-message"));
            assert!(message.contains("refused"), "a wrong token is not said to be refused: {message:?}");
        }
    }

    // (b) A canary (misbehave, healthy on `/`) at 50 %, some traffic for the chart.
    let canary_bytes = std::fs::read(util::misbehave_wasm()).unwrap();
    let response = http
        .post(host.url(&format!("{RELEASE}?weight=50")))
        .bearer_auth(TOKEN)
        .body(canary_bytes)
        .send()
        .await
        .expect("POST admin/release");
    let status = response.status();
    let started_canary: Value = response.json().await.expect("POST admin/release answers JSON");
    assert_eq!(status, 200, "starting the canary: {started_canary}");
    let canary = started_canary["canary"]["sha256"].as_str().expect("a canary sha256").to_string();
    for _ in 0..100 {
        assert_eq!(
            http.get(host.url("/")).send().await.unwrap().status(),
            200,
            "GET / with a healthy canary"
        );
    }
    let dom = rendered(&host, &format!("#token={TOKEN}")).await;
    assert!(dom.contains("data-loaded=\"1\""), "the page did not render from the status JSON:\n{dom}");
    assert_eq!(text(element(&dom, "stable-version")), short(&stable), "stable version");
    assert_eq!(text(element(&dom, "canary-version")), short(&canary), "canary version");
    assert_eq!(text(element(&dom, "canary-weight")), "50.0 %", "canary weight");
    assert!(text(element(&dom, "instances")).contains(&short(&canary)), "instances:\n{dom}");
    assert!(element(&dom, "chart").contains("<polyline"), "no chart lines:\n{dom}");
    assert!(text(element(&dom, "history")).contains("canary_start"), "history:\n{dom}");
    assert!(!dom.contains(TOKEN), "the token is in the DOM (the fragment was not removed?)");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    screenshot(&host, &shots.join("status-page-canary.png")).await;

    // (c) The canary traps on `/trap` (stable echo answers 200): the host rolls it back. Traffic
    // until `admin/release` says so, then the page must say so too.
    let deadline = Instant::now() + PATIENCE;
    let decision = loop {
        for _ in 0..10 {
            http.get(host.url("/trap")).send().await.expect("GET /trap");
        }
        let status = release(&host).await;
        if status["last_decision"]["action"] == "auto_rollback" {
            break status["last_decision"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no automatic rollback within {PATIENCE:?}; last status: {status}"
        );
    };
    let dom = rendered(&host, &format!("#token={TOKEN}")).await;
    let shown = text(element(&dom, "last-decision"));
    assert!(shown.contains("auto_rollback"), "last decision shown: {shown:?} (host: {decision})");
    assert!(
        element(&dom, "decision-banner").contains("class=\"auto_rollback\""),
        "no rollback banner:\n{dom}"
    );
    let reason = decision["reason"].as_str().unwrap_or_default();
    assert!(
        text(element(&dom, "decision-reason")).contains(reason),
        "the reason {reason:?} is not shown:\n{dom}"
    );
    let history = element(&dom, "history");
    assert!(
        history.contains("data-action=\"auto_rollback\""),
        "no auto_rollback row in the history:\n{history}"
    );
    assert!(text(history).contains("auto_rollback"), "history:\n{history}");
    assert_eq!(text(element(&dom, "stable-version")), short(&stable), "stable after the rollback");
    let rollback_shot = shots.join("status-page-rollback.png");
    screenshot(&host, &rollback_shot).await;
    if std::env::var_os("UPDATE_DOCS_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-page.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::copy(&rollback_shot, &docs).unwrap();
        println!("updated {}", docs.display());
    }
    println!("status page test: {:.1} s", started.elapsed().as_secs_f64());
}
