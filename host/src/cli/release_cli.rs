//! `echo-host release start|promote|abort|status URL`: a canary release through a running host's
//! admin API (`/.well-known/echo-host/admin/release`). `start`, `promote` and `abort` print a
//! few lines saying what changed (`release_summary`; with `--json`, the host's answer as it is)
//! and fail on the host's error; `status` prints the release as tables: the versions and weights, per-version failures over the analysis window,
//! on this instance and fleet-wide, the instances, the last automatic decision and the history.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::cli::config::{
    ReleaseArgs, ReleaseCommand, ReleaseHostArgs, ReleasePromoteArgs, ReleaseStartArgs,
};
use crate::cli::push::{
    Component, client, columns, get_json, host_error, print_json, read_token, send, short, text,
};
use crate::cli::release_summary::{Action, summary};
use crate::versions::Weight;

/// History entries `status` prints (the host keeps up to 20).
const HISTORY_SHOWN: usize = 8;

pub async fn release(args: &ReleaseArgs) -> anyhow::Result<()> {
    match &args.command {
        ReleaseCommand::Start(args) => start(args).await,
        ReleaseCommand::Promote(args) => promote(args).await,
        ReleaseCommand::Abort(args) => abort(args).await,
        ReleaseCommand::Status(args) => status(args).await,
    }
}

/// `POST release?weight=W[&steps=…&step_interval=…]` with the component (and its signature).
async fn start(args: &ReleaseStartArgs) -> anyhow::Result<()> {
    let token = read_token(&args.host.token_file)?;
    let component = Component::read(&args.file, args.signature.as_deref())?;
    let endpoint = format!("{}{}{}", endpoint(&args.host.url, ""), start_query(args), component.query('&'));
    // As long as a push: the host compiles and probes the canary before it answers.
    let request = component.attach(client(Duration::from_secs(300))?.post(&endpoint).bearer_auth(token));
    answer(request, &endpoint, Action::Start, args.host.json).await
}

/// `POST release/promote[?weight=W]`, on the release generation read first.
async fn promote(args: &ReleasePromoteArgs) -> anyhow::Result<()> {
    let token = read_token(&args.host.token_file)?;
    let client = client(Duration::from_secs(60))?;
    let mut query: Vec<String> =
        args.weight.map(|w| format!("weight={}", query_weight(w))).into_iter().collect();
    query.extend(if_generation(&client, &args.host.url, &token).await?);
    let endpoint = with_query(endpoint(&args.host.url, "/promote"), &query);
    answer(client.post(&endpoint).bearer_auth(token), &endpoint, Action::Promote, args.host.json).await
}

/// `POST release/abort`, on the release generation read first.
async fn abort(args: &ReleaseHostArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token_file)?;
    let client = client(Duration::from_secs(60))?;
    let query: Vec<String> = if_generation(&client, &args.url, &token).await?.into_iter().collect();
    let endpoint = with_query(endpoint(&args.url, "/abort"), &query);
    answer(client.post(&endpoint).bearer_auth(token), &endpoint, Action::Abort, args.json).await
}

/// `if_generation=G` for the release generation the host reports now (none without a store), so
/// that a change made by someone else meanwhile is a conflict, not undone.
async fn if_generation(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Option<String>> {
    let view = get_json(client, &endpoint(url, ""), token).await?;
    Ok(view["manifest_generation"].as_str().map(|g| format!("if_generation={g}")))
}

fn with_query(endpoint: String, query: &[String]) -> String {
    if query.is_empty() { endpoint } else { format!("{endpoint}?{}", query.join("&")) }
}

/// `GET release`, printed as tables.
async fn status(args: &ReleaseHostArgs) -> anyhow::Result<()> {
    let token = read_token(&args.token_file)?;
    let endpoint = endpoint(&args.url, "");
    let view = get_json(&client(Duration::from_secs(30))?, &endpoint, &token).await?;
    if args.json {
        println!("{view}");
    } else {
        print!("{}", table(&view));
    }
    Ok(())
}

fn endpoint(url: &str, action: &str) -> String {
    format!("{}/.well-known/echo-host/admin/release{action}", url.trim_end_matches('/'))
}

fn start_query(args: &ReleaseStartArgs) -> String {
    let mut query = format!("?weight={}", query_weight(args.weight));
    if let Some(steps) = &args.steps {
        let steps: Vec<String> = steps.0.iter().copied().map(query_weight).collect();
        query.push_str(&format!(
            "&steps={}&step_interval={}ms",
            steps.join(","),
            args.step_interval.as_millis()
        ));
    }
    query
}

/// A weight as a query value: `10`, `12.5` (its `Display`, `10.0%`, would need escaping).
fn query_weight(weight: Weight) -> String {
    match weight.permille() % 10 {
        0 => (weight.permille() / 10).to_string(),
        tenth => format!("{}.{tenth}", weight.permille() / 10),
    }
}

/// Sends `request` and prints what `action` changed (with `json`, the host's answer as it is);
/// fails with the host's error when it is one (its JSON printed as well, for scripts).
async fn answer(
    request: reqwest::RequestBuilder,
    endpoint: &str,
    action: Action,
    json: bool,
) -> anyhow::Result<()> {
    let (status, body) = send(request, endpoint).await?;
    if !status.is_success() {
        print_json(&body);
        return Err(host_error(status, &body, endpoint));
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let view: Value = serde_json::from_str(&body)
        .with_context(|| format!("`{endpoint}` answered {status}, not the admin API's JSON"))?;
    print!("{}", summary(action, &view));
    Ok(())
}

/// The release's status JSON as text: the release, per-version counts, the instances, the last
/// automatic decision and the newest history entries.
pub fn table(view: &Value) -> String {
    let mut out = String::new();
    if !view["store"].is_null() {
        out.push_str(&format!(
            "store {}  manifest generation {}\n",
            text(&view["store"]),
            text(&view["manifest_generation"])
        ));
    }
    out.push_str(&release_lines(view));
    out.push('\n');
    out.push_str(&versions_table(view));
    out.push('\n');
    out.push_str(&instances_table(view));
    if !view["fleet_error"].is_null() {
        out.push_str(&format!("({})\n", text(&view["fleet_error"])));
    }
    out.push_str(&decision_lines(view));
    out.push_str(&history_table(view));
    out
}

/// The stable version, the canary and its plan, and when a canary is rolled back.
fn release_lines(view: &Value) -> String {
    let mut out = String::new();
    let stable_weight = view["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["role"] == "stable")
        .map_or_else(|| "-".to_string(), |v| percent(&v["weight"]));
    out.push_str(&format!("stable  {}  {stable_weight}\n", version(&view["stable"])));
    let canary = &view["canary"];
    if canary.is_null() {
        out.push_str("canary  none\n");
    } else {
        let routing = if canary["routing"] == false {
            "NOT ROUTING (this instance stopped routing to it)"
        } else {
            "routing"
        };
        let plan = match canary["steps"].as_array() {
            Some(steps) if !steps.is_empty() => {
                let steps: Vec<String> = steps.iter().map(number).collect();
                format!(
                    "steps {} every {} (this step since {})",
                    steps.join(","),
                    millis(&canary["step_interval_ms"]),
                    text(&canary["step_started_at"])
                )
            }
            _ => "manual (until promoted)".to_string(),
        };
        out.push_str(&format!(
            "canary  {}  {}  {routing}  {plan}  started {} by {}\n",
            version(canary),
            percent(&canary["weight"]),
            text(&canary["started_at"]),
            text(&canary["started_by"])
        ));
    }
    let thresholds = &view["thresholds"];
    out.push_str(&format!(
        "rollback when, over {}: at least {} canary requests, canary failures over {} and over {}x stable's\n",
        millis(&thresholds["window_ms"]),
        text(&thresholds["min_requests"]),
        percent(&thresholds["max_failure_rate"]),
        number(&thresholds["failure_ratio"])
    ));
    if thresholds["max_latency_ratio"].as_f64().is_some_and(|r| r > 0.0) {
        out.push_str(&format!(
            "         or at least {} timed requests of both, canary p95 latency over {}x stable's and over {}\n",
            text(&thresholds["min_requests"]),
            number(&thresholds["max_latency_ratio"]),
            millis(&thresholds["latency_floor_ms"])
        ));
    }
    out
}

/// This instance's last rejection and the release's last automatic decision, when there are any.
fn decision_lines(view: &Value) -> String {
    let mut out = String::new();
    let rejection = &view["last_rejection"];
    if !rejection.is_null() {
        out.push_str(&format!(
            "last rejection on this instance: {} {}\n",
            short(rejection["sha256"].as_str().unwrap_or("?")),
            text(&rejection["reason"])
        ));
    }

    let decision = &view["last_decision"];
    if !decision.is_null() {
        out.push_str(&format!(
            "\nlast decision: {} of {} at {} by {}\n  {}\n",
            text(&decision["action"]),
            short(decision["version"].as_str().unwrap_or("?")),
            text(&decision["at"]),
            text(&decision["by"]),
            text(&decision["reason"])
        ));
    }
    out
}

/// The newest history entries, when there are any.
fn history_table(view: &Value) -> String {
    let mut out = String::new();
    let history = view["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        out.push_str(&format!(
            "\nhistory (newest {} of {}):\n",
            history.len().min(HISTORY_SHOWN),
            history.len()
        ));
        let mut rows = vec![row(&["AT", "ACTION", "STABLE", "CANARY", "WEIGHT", "BY", "REASON"])];
        for entry in history.iter().take(HISTORY_SHOWN) {
            rows.push(vec![
                text(&entry["at"]),
                text(&entry["action"]),
                optional_version(&entry["stable"]),
                optional_version(&entry["canary"]),
                percent(&entry["weight"]),
                text(&entry["by"]),
                text(&entry["reason"]).chars().take(100).collect(),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    out
}

/// One row per version: failures over the window (this instance), and since start on this
/// instance and summed over the fleet's heartbeats.
fn versions_table(view: &Value) -> String {
    let mut rows = vec![row(&[
        "VERSION",
        "ROLE",
        "WEIGHT",
        "WINDOW-FAILED",
        "WINDOW-P95",
        "CPU/REQ",
        "INSTANTIATE",
        "MEMORY",
        "TOTAL-FAILED",
        "5XX/TRAPS/TIMEOUTS",
        "FLEET-FAILED",
        "FLEET-5XX/TRAPS/TIMEOUTS",
    ])];
    for v in view["versions"].as_array().into_iter().flatten() {
        let window = &v["window"];
        rows.push(vec![
            text(&v["version"]),
            text(&v["role"]),
            percent(&v["weight"]),
            failed(window["failures"].as_u64(), window["requests"].as_u64()),
            window["p95_ms"].as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            v["cost"]["cpu_ms"].as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            v["cost"]["instantiation_ms"].as_f64().map_or_else(|| "-".to_string(), |ms| format!("{ms} ms")),
            v["cost"]["memory_bytes"]
                .as_u64()
                .map_or_else(|| "-".to_string(), crate::util::units::format_size),
            failed(failures(&v["totals"]), v["totals"]["requests"].as_u64()),
            kinds(&v["totals"]),
            failed(failures(&v["fleet"]), v["fleet"]["requests"].as_u64()),
            kinds(&v["fleet"]),
        ]);
    }
    columns(&rows)
}

fn instances_table(view: &Value) -> String {
    let mut rows = vec![row(&["INSTANCE", "STATE", "STABLE", "CANARY", "WEIGHT", "UPDATED"])];
    let instances = view["instances"].as_array().cloned().unwrap_or_default();
    for i in &instances {
        let me = if i["self"] == true { " (this one)" } else { "" };
        rows.push(vec![
            format!("{}{me}", text(&i["instance"])),
            state(i).to_string(),
            optional_version(&i["sha256"]),
            optional_version(&i["canary"]),
            percent(&i["canary_weight"]),
            text(&i["updated_at"]),
        ]);
    }
    let mut out = columns(&rows);
    let asleep = instances.iter().filter(|i| i["asleep"] == true).count();
    if asleep > 0 {
        let rechecking = instances.iter().filter(|i| i["rechecks_before_serving"] == true).count();
        out.push_str(&format!(
            "{} awake, {asleep} asleep ({rechecking} bound to re-check the store before serving)\n",
            instances.len() - asleep
        ));
    }
    out
}

/// `awake`, `asleep` (silent for three heartbeat intervals), or `asleep+recheck` (silent past its
/// `--max-staleness`: it re-checks the store before it serves again).
fn state(instance: &Value) -> &'static str {
    match (instance["asleep"] == true, instance["rechecks_before_serving"] == true) {
        (false, _) => "awake",
        (true, false) => "asleep",
        (true, true) => "asleep+recheck",
    }
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// `{"sha256": …, "version": …}` as the short version.
fn version(value: &Value) -> String {
    match (&value["version"], value["sha256"].as_str()) {
        (Value::String(version), _) => crate::util::redact::printable(version),
        (_, Some(sha256)) => short(sha256),
        _ => "-".to_string(),
    }
}

fn optional_version(value: &Value) -> String {
    value.as_str().map_or_else(|| "-".to_string(), short)
}

/// `10.0` → `10%`, `12.5` → `12.5%`; `-` when absent.
fn percent(value: &Value) -> String {
    match value.as_f64() {
        Some(_) => format!("{}%", number(value)),
        None => "-".to_string(),
    }
}

/// `2.0` → `2`, `12.5` → `12.5`.
fn number(value: &Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 => format!("{n:.0}"),
        Some(n) => format!("{n:.1}"),
        None => text(value),
    }
}

/// `60000` → `60s`, `1500` → `1500ms`.
fn millis(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) if ms % 1000 == 0 => format!("{}s", ms / 1000),
        Some(ms) => format!("{ms}ms"),
        None => text(value),
    }
}

/// A counts object's failures: guest 5xx, traps and timeouts.
fn failures(counts: &Value) -> Option<u64> {
    ["guest_5xx", "traps", "timeouts"].iter().map(|k| counts[k].as_u64()).sum()
}

fn kinds(counts: &Value) -> String {
    format!("{}/{}/{}", text(&counts["guest_5xx"]), text(&counts["traps"]), text(&counts["timeouts"]))
}

/// `3/120 (2.5%)`; the rate is `-` without requests.
fn failed(failures: Option<u64>, requests: Option<u64>) -> String {
    match (failures, requests) {
        (Some(f), Some(0)) => format!("{f}/0 (-)"),
        (Some(f), Some(r)) => format!("{f}/{r} ({:.1}%)", f as f64 * 100.0 / r as f64),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::cli::config::{Cli, Command, parse_steps};

    fn parse(args: &[&str]) -> Result<ReleaseCommand, String> {
        let mut argv = vec!["echo-host", "release"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            Some(Command::Release(release)) => Ok(release.command),
            other => panic!("not a release command: {other:?}"),
        }
    }

    fn weight(text: &str) -> Weight {
        text.parse().unwrap()
    }

    #[test]
    fn weights_go_to_the_host_as_plain_numbers() {
        assert_eq!(query_weight(weight("0")), "0");
        assert_eq!(query_weight(weight("10")), "10");
        assert_eq!(query_weight(weight("12.5")), "12.5");
        assert_eq!(query_weight(weight("0.5")), "0.5");
        assert_eq!(query_weight(weight("100.0")), "100");
    }

    #[test]
    fn steps_increase_and_are_over_zero() {
        let steps = parse_steps("1,10,50,100").unwrap();
        assert_eq!(steps.0, ["1", "10", "50", "100"].map(weight));
        assert!(parse_steps("10,5").unwrap_err().contains("must increase, but 5.0% follows 10.0%"));
        assert!(parse_steps("10,10").unwrap_err().contains("must increase"));
        assert!(parse_steps("0,10").unwrap_err().contains("over 0"));
        assert!(parse_steps("1,101").unwrap_err().contains("`101` is not a weight"));
        assert!(parse_steps("1,,2").unwrap_err().contains("`` is not a weight"));
        assert!(parse_steps("1,2.25").unwrap_err().contains("`2.25` is not a weight"));
    }

    #[test]
    fn start_sends_the_weight_steps_and_interval() {
        let start = match parse(&[
            "start",
            "http://h:1/",
            "c.wasm",
            "--weight",
            "1",
            "--steps",
            "1,10,50,100.0",
            "--step-interval",
            "1m",
            "--token-file",
            "t",
        ]) {
            Ok(ReleaseCommand::Start(start)) => start,
            other => panic!("{other:?}"),
        };
        assert_eq!(start.host.url, "http://h:1/");
        assert_eq!(start.file.to_str(), Some("c.wasm"));
        assert_eq!(start_query(&start), "?weight=1&steps=1,10,50,100&step_interval=60000ms");
        assert_eq!(
            endpoint(&start.host.url, "/promote"),
            "http://h:1/.well-known/echo-host/admin/release/promote"
        );

        let manual = match parse(&["start", "http://u", "c.wasm", "--weight", "12.5%", "--token-file", "t"]) {
            Ok(ReleaseCommand::Start(start)) => start,
            other => panic!("{other:?}"),
        };
        assert_eq!(start_query(&manual), "?weight=12.5");
    }

    #[test]
    fn bad_flags_fail_before_anything_is_sent() {
        let error =
            parse(&["start", "http://u", "c.wasm", "--weight", "150", "--token-file", "t"]).unwrap_err();
        assert!(error.contains("`150` is not a weight: a percent from 0 to 100"), "{error}");
        let error = parse(&["start", "http://u", "c.wasm", "--token-file", "t"]).unwrap_err();
        assert!(error.contains("--weight"), "{error}");
        let error = parse(&[
            "start",
            "http://u",
            "c.wasm",
            "--weight",
            "1",
            "--step-interval",
            "5s",
            "--token-file",
            "t",
        ])
        .unwrap_err();
        assert!(error.contains("--steps"), "{error}");
        let error = parse(&["promote", "http://u", "--weight", "5.55", "--token-file", "t"]).unwrap_err();
        assert!(error.contains("at most one decimal"), "{error}");
        assert!(matches!(
            parse(&["promote", "http://u", "--token-file", "t"]),
            Ok(ReleaseCommand::Promote(ReleasePromoteArgs { weight: None, .. }))
        ));
        assert!(matches!(parse(&["abort", "http://u", "--token-file", "t"]), Ok(ReleaseCommand::Abort(_))));
        assert!(matches!(parse(&["status", "http://u", "--token-file", "t"]), Ok(ReleaseCommand::Status(_))));
    }

    /// A status JSON as the contract shows it: a canary at 10 % on a fleet of two, rolled back.
    fn sample() -> Value {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let counts = |requests: u64, guest_5xx: u64, traps: u64| json!({"requests": requests, "guest_5xx": guest_5xx, "traps": traps, "timeouts": 0});
        json!({
            "store": "gs://bucket/prefix/",
            "manifest_generation": "1733",
            "stable": {"sha256": a, "version": "sha256:aaaaaaaaaaaa"},
            "canary": {
                "sha256": b, "version": "sha256:bbbbbbbbbbbb", "weight": 10.0, "routing": false,
                "steps": [1, 10, 50, 100], "step_interval_ms": 60000,
                "step_started_at": "2025-01-01T00:01:00Z", "started_at": "2025-01-01T00:00:00Z",
                "started_by": "admin:127.0.0.1"
            },
            "thresholds": {"window_ms": 60000, "min_requests": 50, "max_failure_rate": 5.0, "failure_ratio": 2.0},
            "versions": [
                {"sha256": a, "version": "sha256:aaaaaaaaaaaa", "role": "stable", "weight": 90.0,
                 "window": {"requests": 1800, "failures": 0, "failure_rate": 0.0},
                 "totals": counts(5000, 0, 0), "fleet": counts(15000, 0, 0)},
                {"sha256": b, "version": "sha256:bbbbbbbbbbbb", "role": "canary", "weight": 10.0,
                 "window": {"requests": 200, "failures": 62, "failure_rate": 31.0},
                 "totals": counts(200, 60, 2), "fleet": counts(400, 118, 2)}
            ],
            "series": {"bucket_seconds": 10, "buckets": 60, "versions": {}},
            "last_decision": {
                "action": "auto_rollback", "version": format!("sha256:{b}"), "at": "2025-01-01T00:02:00Z",
                "by": "instance:i-1",
                "reason": "canary failure rate 31.0% (62 of 200) over 60s is over 5% and over 2x stable's 0.0% (0 of 1800)",
                "canary": {"requests": 200, "failures": 62}, "stable": {"requests": 1800, "failures": 0}
            },
            "history": [
                {"action": "auto_rollback", "stable": format!("sha256:{a}"), "canary": null, "weight": null,
                 "at": "2025-01-01T00:02:00Z", "by": "instance:i-1", "reason": "canary failure rate 31.0%"},
                {"action": "canary_start", "stable": format!("sha256:{a}"), "canary": format!("sha256:{b}"),
                 "weight": 10.0, "at": "2025-01-01T00:00:00Z", "by": "admin:127.0.0.1", "reason": null}
            ],
            "instances": [
                {"instance": "i-1", "sha256": a, "canary": null, "canary_weight": null,
                 "updated_at": "2025-01-01T00:02:01Z", "self": true},
                {"instance": "i-2", "sha256": a, "canary": b, "canary_weight": 10.0,
                 "updated_at": "2025-01-01T00:01:59Z", "self": false, "asleep": true,
                 "rechecks_before_serving": true}
            ]
        })
    }

    #[test]
    fn the_status_names_versions_weights_rates_instances_and_the_decision() {
        let table = table(&sample());
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line starting `{start}` in:\n{table}"))
        };
        assert!(line("store").contains("gs://bucket/prefix/  manifest generation 1733"), "{table}");
        assert_eq!(line("stable"), "stable  sha256:aaaaaaaaaaaa  90%");
        let canary = line("canary");
        assert!(canary.contains("sha256:bbbbbbbbbbbb  10%  NOT ROUTING"), "{canary}");
        assert!(canary.contains("steps 1,10,50,100 every 60s"), "{canary}");
        assert!(line("rollback when").contains("over 60s: at least 50 canary requests"), "{table}");
        assert!(line("rollback when").contains("over 5% and over 2x"), "{table}");
        assert!(line("VERSION").contains("WINDOW-FAILED"), "{table}");
        let stable = line("sha256:aaaaaaaaaaaa");
        assert!(stable.contains("stable") && stable.contains("0/1800 (0.0%)"), "{stable}");
        let canary = line("sha256:bbbbbbbbbbbb");
        assert!(canary.contains("62/200 (31.0%)"), "window: {canary}");
        assert!(canary.contains("62/200 (31.0%)  60/2/0"), "totals: {canary}");
        assert!(canary.contains("120/400 (30.0%)  118/2/0"), "fleet: {canary}");
        assert!(line("i-1 (this one)").contains("sha256:aaaaaaaaaaaa  -"), "{table}");
        assert!(line("i-2").contains("sha256:bbbbbbbbbbbb  10%"), "{table}");
        assert!(
            line("i-1 (this one)").contains("awake") && line("i-2").contains("asleep+recheck"),
            "{table}"
        );
        assert!(line("1 awake").contains("1 asleep (1 bound to re-check"), "{table}");
        let decision = line("last decision");
        assert!(decision.contains("auto_rollback of sha256:bbbbbbbbbbbb at 2025-01-01T00:02:00Z"), "{table}");
        assert!(table.contains("  canary failure rate 31.0% (62 of 200) over 60s"), "{table}");
        assert!(line("history").contains("newest 2 of 2"), "{table}");
        assert!(line("2025-01-01T00:00:00Z").contains("canary_start"), "{table}");
        // The columns line up: each version row starts its WEIGHT cell where the header does.
        let at = line("VERSION").find("WEIGHT").unwrap();
        assert_eq!(&line("sha256:aaaaaaaaaaaa")[at..at + 3], "90%", "{table}");
    }

    #[test]
    fn the_status_without_a_store_or_canary_is_short() {
        let mut view = sample();
        view["store"] = Value::Null;
        view["manifest_generation"] = Value::Null;
        view["canary"] = Value::Null;
        view["last_decision"] = Value::Null;
        view["history"] = json!([]);
        view["versions"].as_array_mut().unwrap().truncate(1);
        view["versions"][0]["weight"] = json!(100.0);
        let table = table(&view);
        assert!(table.starts_with("stable  sha256:aaaaaaaaaaaa  100%\ncanary  none\n"), "{table}");
        assert!(!table.contains("last decision") && !table.contains("history"), "{table}");
    }
}
