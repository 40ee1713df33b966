//! What `release start`, `promote` and `abort` print by default: a few lines saying what changed,
//! the weights and the release generation, read from the host's answer (the release's status
//! JSON, which `--json` prints whole instead).

use serde_json::Value;

use crate::cli::push::{short, text};

/// The release change a command asked for, for the summary's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Promote,
    Abort,
}

/// The summary of `action`'s answer `view`: what changed, the weights, where the release lives.
pub fn summary(action: Action, view: &Value) -> String {
    let stable = version(&view["stable"]);
    let canary = &view["canary"];
    let headline = match (action, canary.is_null()) {
        (Action::Start, _) => format!("canary {} started at {}", version(canary), percent(&canary["weight"])),
        (Action::Promote, false) => {
            format!("canary {} now at {}", version(canary), percent(&canary["weight"]))
        }
        (Action::Promote, true) => format!("{stable} promoted: it is the stable version, no canary"),
        (Action::Abort, _) => format!("canary aborted: stable {stable} takes every request"),
    };
    let mut out = format!("{headline}\n");
    if canary.is_null() {
        out.push_str(&format!("weights  stable {stable} 100%\n"));
    } else {
        out.push_str(&format!(
            "weights  stable {stable} {}, canary {} {}; {}\n",
            percent(&stable_weight(view)),
            version(canary),
            percent(&canary["weight"]),
            plan(canary)
        ));
    }
    match view["manifest_generation"].as_str() {
        Some(generation) => out.push_str(&format!(
            "release  store {} at manifest generation {generation} (every instance follows)\n",
            text(&view["store"])
        )),
        None => out.push_str("release  on this instance only (the host has no `--store`)\n"),
    }
    out
}

/// The canary's steps, or that it waits for `release promote`.
fn plan(canary: &Value) -> String {
    match canary["steps"].as_array() {
        Some(steps) if !steps.is_empty() => {
            let steps: Vec<String> =
                steps.iter().map(|s| percent(s).trim_end_matches('%').to_string()).collect();
            let interval =
                canary["step_interval_ms"].as_u64().map_or("-".to_string(), |ms| match ms % 1000 {
                    0 => format!("{}s", ms / 1000),
                    _ => format!("{ms}ms"),
                });
            format!("steps {} every {interval} while healthy", steps.join(","))
        }
        _ => "stays until `echo-host release promote`".to_string(),
    }
}

/// The stable version's weight as the answer's `versions` give it (100 − the canary's).
fn stable_weight(view: &Value) -> Value {
    let versions = view["versions"].as_array().into_iter().flatten();
    versions.filter(|v| v["role"] == "stable").map(|v| v["weight"].clone()).next().unwrap_or(Value::Null)
}

fn version(value: &Value) -> String {
    match (&value["version"], value["sha256"].as_str()) {
        (Value::String(version), _) => crate::util::redact::printable(version),
        (_, Some(sha256)) => short(sha256),
        _ => "-".to_string(),
    }
}

/// `10.0` → `10%`, `12.5` → `12.5%`; `-` when absent.
fn percent(value: &Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 => format!("{n:.0}%"),
        Some(n) => format!("{n:.1}%"),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view(canary: Value, store: bool) -> Value {
        let stable_weight = 100.0 - canary["weight"].as_f64().unwrap_or(0.0);
        json!({
            "store": store.then_some("gs://bucket/echo/"),
            "manifest_generation": store.then_some("1733"),
            "stable": {"sha256": "a".repeat(64), "version": "sha256:aaaaaaaaaaaa"},
            "canary": canary,
            "versions": [{"role": "stable", "weight": stable_weight}],
            "history": [{"action": "canary_start"}],
        })
    }

    #[test]
    fn start_says_the_canary_its_weight_its_plan_and_the_generation() {
        let canary = json!({"sha256": "b".repeat(64), "version": "sha256:bbbbbbbbbbbb", "weight": 10.0,
            "steps": [25.0, 50.0, 100.0], "step_interval_ms": 60000});
        let text = summary(Action::Start, &view(canary, true));
        assert_eq!(
            text,
            "canary sha256:bbbbbbbbbbbb started at 10%\n\
             weights  stable sha256:aaaaaaaaaaaa 90%, canary sha256:bbbbbbbbbbbb 10%; steps 25,50,100 every 60s while healthy\n\
             release  store gs://bucket/echo/ at manifest generation 1733 (every instance follows)\n"
        );
    }

    #[test]
    fn promote_and_abort_say_what_serves_now() {
        let canary = json!({"sha256": "b".repeat(64), "version": "sha256:bbbbbbbbbbbb", "weight": 12.5});
        let text = summary(Action::Promote, &view(canary, false));
        assert!(text.starts_with("canary sha256:bbbbbbbbbbbb now at 12.5%\n"), "{text}");
        assert!(
            text.contains("stable sha256:aaaaaaaaaaaa 87.5%, canary sha256:bbbbbbbbbbbb 12.5%; stays until"),
            "{text}"
        );
        assert!(text.ends_with("release  on this instance only (the host has no `--store`)\n"), "{text}");
        let text = summary(Action::Promote, &view(Value::Null, true));
        assert!(text.starts_with("sha256:aaaaaaaaaaaa promoted: it is the stable version"), "{text}");
        let text = summary(Action::Abort, &view(Value::Null, false));
        assert!(
            text.starts_with("canary aborted: stable sha256:aaaaaaaaaaaa takes every request\n"),
            "{text}"
        );
        assert!(text.contains("weights  stable sha256:aaaaaaaaaaaa 100%\n"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
