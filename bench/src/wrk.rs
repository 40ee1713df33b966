//! Closed-loop load with `wrk` (N keep-alive connections, each sending its next request when the
//! previous answer arrived): requests/s and latency percentiles, parsed from wrk's output.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::servers::pin_child;

/// What one wrk run reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    pub errors: u64,
}

/// Runs `wrk -t1 -cCONNS -dSECONDS --latency [-s SCRIPT] URL` pinned to `cores`.
pub fn run(
    wrk: &Path,
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
    script: Option<&Path>,
    cores: &[usize],
) -> anyhow::Result<WrkResult> {
    let mut command = Command::new(wrk);
    command
        .arg("-t1")
        .arg(format!("-c{connections}"))
        // wrk takes whole seconds.
        .arg(format!("-d{}s", duration.as_secs_f64().round().max(1.0)))
        .arg("--timeout")
        .arg("5s")
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(format!("http://{addr}{path}"));
    pin_child(&mut command, cores);
    let output = command.output().with_context(|| format!("cannot run `{}`", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    }
    parse(&stdout).with_context(|| format!("cannot read wrk's output:\n{stdout}"))
}

/// Writes the Lua script that turns wrk's requests into `POST` with `body` as `text/plain`.
pub fn write_post_script(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    let text = std::str::from_utf8(body).context("the POST body must be text for the wrk script")?;
    if text.contains(['"', '\\', '\n']) {
        bail!("the POST body must not need escaping in Lua");
    }
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = \"{text}\"\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n"
    );
    std::fs::write(path, script)?;
    Ok(())
}

/// Parses wrk's report (with `--latency`).
pub fn parse(output: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut in_distribution = false;
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["50%", value] => result.p50_ms = parse_duration_ms(value)?,
                ["99%", value] => result.p99_ms = parse_duration_ms(value)?,
                [p, _] if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.requests_per_sec = rest.trim().parse()?;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest.trim().parse::<u64>()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    result.errors += n.parse::<u64>()?;
                }
            }
        } else if line.contains("requests in") {
            result.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        }
    }
    if result.requests_per_sec == 0.0 && result.requests > 0 {
        bail!("no Requests/sec line");
    }
    Ok(result)
}

fn parse_duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).context("duration without unit")?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        other => bail!("unknown unit `{other}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://127.0.0.1:8080/?name=world
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.21ms  510.00us  12.40ms   90.00%
    Req/Sec     9.98k   300.00    10.50k    70.00%
  Latency Distribution
     50%    3.10ms
     75%    3.30ms
     90%    3.60ms
     99%    4.10ms
  49650 requests in 5.00s, 10.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:   9925.80
Transfer/sec:      2.00MB
";

    #[test]
    fn parses_wrk_output() {
        let result = parse(OUTPUT).unwrap();
        assert_eq!(result.requests_per_sec, 9925.80);
        assert_eq!(result.p50_ms, 3.10);
        assert_eq!(result.p99_ms, 4.10);
        assert_eq!(result.requests, 49650);
        assert_eq!(result.errors, 6);
    }

    #[test]
    fn converts_units() {
        assert_eq!(parse_duration_ms("510.00us").unwrap(), 0.51);
        assert_eq!(parse_duration_ms("1.5s").unwrap(), 1500.0);
    }
}
