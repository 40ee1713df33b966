//! A stdout nobody drains (a stalled log pipe) never stalls requests: lines beyond
//! `--log-buffer-lines` are dropped and counted, and logging resumes once stdout drains.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::util::{self, metric_value};

/// Generous: an answer takes milliseconds; a host blocked on stdout never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Each request writes one access-log line (~400 bytes): 600 of them are several times a 64 KiB
/// pipe plus the 64-line buffer.
const FILL_REQUESTS: usize = 600;
/// Each `/log` request writes three lines: the guest's stdout line, its stderr line, the access log.
const GUEST_LOG_REQUESTS: usize = 100;

#[test]
fn a_stalled_stdout_drops_lines_instead_of_blocking_requests() {
    // The env var rather than the flag: a host without the setting still starts, and stalls.
    let mut host = PipedHost::start(&[("ECHO_HOST_LOG_BUFFER_LINES", "64")]);
    let client = client();
    let dropped = host.fill_stdout(&client);

    // The pipe and the buffer are full: the host's own endpoints still answer.
    let health = host.get(&client, "/.well-known/echo-host/health");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // The guest's stdout and stderr lines go through the same bounded writer: dropped, not waited on.
    for i in 0..GUEST_LOG_REQUESTS {
        let reply = host.get(&client, &format!("/log?while_full={i}"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "logged"), "guest log request {i}");
    }
    let dropped_after = host.dropped_lines(&client);
    assert!(
        dropped_after >= dropped + 3 * GUEST_LOG_REQUESTS as u64,
        "{GUEST_LOG_REQUESTS} `/log` requests into a full buffer: dropped went from {dropped} to \
         {dropped_after}, expected at least {} more",
        3 * GUEST_LOG_REQUESTS
    );

    // Drain the pipe: a new request's three lines arrive. The buffer may still be draining when
    // the first one logs, so a few tries.
    host.start_reading();
    let resumed = (0..5).find(|attempt| {
        let reply = host.get(&client, &format!("/log?resumed={attempt}"));
        assert_eq!(reply.status, 200);
        let lines = host.lines_for(&reply.request_id, 3, Duration::from_secs(5));
        lines.len() == 3
            && lines.iter().any(|l| l.contains("misbehave stdout line"))
            && lines.iter().any(|l| l.contains("misbehave stderr line"))
            && lines.iter().any(|l| l.contains(&format!("/log?resumed={attempt} 200")))
    });
    let Some(attempt) = resumed else { panic!("no request's log lines arrived after stdout was drained") };
    eprintln!(
        "dropped {dropped} lines after {FILL_REQUESTS} requests, {dropped_after} after {GUEST_LOG_REQUESTS} \
         `/log` requests; {} lines read in all; resumed on try {attempt}",
        host.seen.len()
    );
    // Lines are dropped whole: everything that reached stdout is one JSON object per line.
    for line in &host.seen {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not a whole JSON line: {line:?}");
    }
}

#[test]
fn a_stalled_stdout_does_not_hold_up_shutdown() {
    let mut host = PipedHost::start(&[("ECHO_HOST_LOG_BUFFER_LINES", "64")]);
    host.fill_stdout(&client());
    let sent = Instant::now();
    let status = Command::new("kill").args(["-TERM", &host.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM failed");
    // Nothing is in flight: the drain is immediate, and the log flush gives up after a second.
    let deadline = sent + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = host.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "echo-host still running 15 s after SIGTERM with stdout stalled");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "echo-host exited with {exit} after SIGTERM");
    eprintln!("exited {} ms after SIGTERM with stdout stalled", sent.elapsed().as_millis());
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap()
}

/// A response read whole.
struct Reply {
    status: u16,
    body: String,
    request_id: String,
}

/// The real binary serving misbehave, its stdout a pipe that is read up to the "serving" line
/// and then left alone until [`PipedHost::start_reading`].
struct PipedHost {
    child: Child,
    base: String,
    lines: Receiver<String>,
    /// Lets the reader thread go on past the "serving" line; dropping it stops the thread.
    resume: Option<Sender<()>>,
    /// Every line read from stdout so far.
    seen: Vec<String>,
}

impl PipedHost {
    fn start(env: &[(&str, &str)]) -> PipedHost {
        let port = util::peers::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_echo-host"));
        command
            .args(["--component", util::misbehave_wasm().to_str().unwrap()])
            .env("PORT", port.to_string())
            .env("ECHO_HOST_LISTEN_ADDR", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("failed to start echo-host");
        let (lines_tx, lines) = mpsc::channel();
        let (resume, resume_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || read_stdout(stdout, lines_tx, resume_rx));
        let mut host = PipedHost {
            child,
            base: format!("http://127.0.0.1:{port}"),
            lines,
            resume: Some(resume),
            seen: vec![],
        };
        // The start-up lines fit in the pipe; "serving" is logged once the port is bound.
        let serving = host.next_line_with("serving HTTP", Duration::from_secs(60));
        if serving.is_none() {
            let status = host.child.try_wait();
            panic!("echo-host did not log `serving HTTP` within 60 s (exit status: {status:?})");
        }
        host
    }

    fn try_get(&self, client: &reqwest::blocking::Client, path: &str) -> reqwest::Result<Reply> {
        let response = client.get(format!("{}{path}", self.base)).send()?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("echo-host-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Reply { status, body: response.text()?, request_id })
    }

    fn get(&self, client: &reqwest::blocking::Client, path: &str) -> Reply {
        self.try_get(client, path)
            .unwrap_or_else(|e| panic!("GET {path} got no answer within {REQUEST_TIMEOUT:?}: {e}"))
    }

    /// Sends [`FILL_REQUESTS`] requests, each answered, and returns the lines dropped by then
    /// (more than 0: stdout is full and so is the buffer).
    fn fill_stdout(&self, client: &reqwest::blocking::Client) -> u64 {
        for i in 0..FILL_REQUESTS {
            let reply = self.try_get(client, &format!("/ok?fill={i}")).unwrap_or_else(|error| {
                let health = self.try_get(client, "/.well-known/echo-host/health").map(|r| r.status);
                panic!(
                    "fill request {i} got no answer within {REQUEST_TIMEOUT:?} ({error}); health: {health:?}"
                )
            });
            assert_eq!((reply.status, reply.body.as_str()), (200, "misbehave ok"), "fill request {i}");
        }
        let dropped = self.dropped_lines(client);
        assert!(dropped > 0, "{FILL_REQUESTS} access-log lines into a 64 KiB pipe and 64 lines dropped none");
        dropped
    }

    fn dropped_lines(&self, client: &reqwest::blocking::Client) -> u64 {
        let metrics = self.get(client, "/.well-known/echo-host/metrics");
        metric_value(&metrics.body, "echo_host_log_lines_dropped_total") as u64
    }

    /// Lets the reader thread drain stdout from now on.
    fn start_reading(&mut self) {
        let _ = self.resume.as_ref().expect("started once").send(());
    }

    /// The next line containing `needle`, reading for at most `timeout`.
    fn next_line_with(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.next_line(deadline)?;
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// Up to `count` lines naming `request_id`, reading for at most `timeout`.
    fn lines_for(&mut self, request_id: &str, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let needle = format!("\"request_id\":\"{request_id}\"");
        let mut found = Vec::new();
        while found.len() < count {
            match self.next_line(deadline) {
                Some(line) if line.contains(&needle) => found.push(line),
                Some(_) => {}
                None => break,
            }
        }
        found
    }

    /// The next stdout line, or `None` at the deadline or when stdout closed.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }
}

impl Drop for PipedHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards stdout lines up to the first "serving" line, waits for the go-ahead, then forwards
/// the rest. Returns when stdout closes or the test is gone.
fn read_stdout(stdout: ChildStdout, lines: Sender<String>, resume: Receiver<()>) {
    let mut reader = BufReader::new(stdout).lines().map_while(Result::ok);
    for line in reader.by_ref() {
        let serving = line.contains("serving HTTP");
        if lines.send(line).is_err() {
            return;
        }
        if serving {
            break;
        }
    }
    if resume.recv().is_err() {
        return;
    }
    for line in reader {
        if lines.send(line).is_err() {
            return;
        }
    }
}
