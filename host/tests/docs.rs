//! Docs that cannot drift: every relative link and `#anchor` in README.md, docs/*.md and
//! bench/README.md resolves; docs/host.md's flag table is `echo-host --help`'s flags, env vars and
//! defaults; every JSON sample marked `<!-- sample: NAME -->` has exactly the keys of a real run's.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::{HostProcess, peers::workspace_root, run_cli};

/// The pages the README and the docs map are made of.
fn pages() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut pages = vec![root.join("README.md"), root.join("bench/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 6, "docs/ should hold the pages the README maps: {docs:?}");
    pages.extend(docs);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()))
}

/// The text outside fenced code blocks, line by line (code is not markdown).
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push(line);
        }
    }
    lines
}

/// GitHub's anchor for a heading: lowercase, spaces to `-`, punctuation dropped but `-` and `_`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every heading's anchor in a page; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut anchors = HashSet::new();
    for line in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(heading) = line.get(hashes..).and_then(|rest| rest.strip_prefix(' ')) else { continue };
        if hashes == 0 || hashes > 6 {
            continue;
        }
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// The targets of `[text](target)` and `![alt](target)` outside code (spans and blocks).
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        // Inline code spans are not links: drop every other backtick-delimited piece.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            targets.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// A relative link's file and anchor resolved, or why not.
fn check_link(page: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() { page.to_path_buf() } else { page.parent().unwrap().join(path) };
    if !file.exists() {
        return Err(format!("`{target}`: no file `{}`", file.display()));
    }
    if anchor.is_empty() || file.extension().is_none_or(|e| e != "md") {
        return Ok(());
    }
    match anchors(&read(&file)).contains(anchor) {
        true => Ok(()),
        false => Err(format!("`{target}`: no heading with the anchor `#{anchor}` in `{}`", file.display())),
    }
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for target in link_targets(&read(&page)) {
            let scheme =
                target.split_once(':').is_some_and(|(s, _)| s.chars().all(|c| c.is_ascii_alphabetic()));
            if scheme {
                continue;
            }
            checked += 1;
            if let Err(why) = check_link(&page, &target) {
                broken.push(format!("{}: {why}", page.display()));
            }
        }
    }
    assert!(checked >= 20, "only {checked} relative links found: is the link parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The checker itself: GitHub's slugs, repeated headings, links inside code ignored.
#[test]
fn the_link_checker_follows_githubs_rules() {
    assert_eq!(
        slug("Cloud Run's CPU allocation and the release"),
        "cloud-runs-cpu-allocation-and-the-release"
    );
    assert_eq!(slug("The echo component (`guest/`)"), "the-echo-component-guest");
    assert_eq!(slug("WASI 0.3 components and instance reuse"), "wasi-03-components-and-instance-reuse");
    assert_eq!(slug("snake_case and a-dash"), "snake_case-and-a-dash");
    let page = "# A\n## A\n```\n# not a heading\n[x](code.md)\n```\nsee [b](#a-1) and `[c](span.md)`\n";
    assert_eq!(anchors(page), HashSet::from(["a".to_string(), "a-1".to_string()]));
    assert_eq!(link_targets(page), ["#a-1"]);
}

/// A flag's env var and default as `--help` prints them.
#[derive(Debug, Default, PartialEq)]
struct FlagHelp {
    env: Option<String>,
    default: Option<String>,
}

/// `echo-host --help`'s options (but `--help` and `--version`), with their env vars and defaults.
fn help_flags() -> Vec<(String, FlagHelp)> {
    let (status, help, stderr) = run_cli(&["--help"], Duration::from_secs(30));
    assert!(status.success(), "echo-host --help failed: {stderr}");
    let mut flags: Vec<(String, FlagHelp)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let option = trimmed.strip_prefix("-h, ").or(trimmed.strip_prefix("-V, ")).unwrap_or(trimmed);
        if line.starts_with("  ") && option.starts_with("--") && line.len() - trimmed.len() <= 6 {
            let name = option.split([' ', '<', '=']).next().unwrap().to_string();
            flags.push((name, FlagHelp::default()));
        } else if let Some((_, flag)) = flags.last_mut().filter(|_| trimmed.starts_with('[')) {
            if let Some(env) = trimmed.strip_prefix("[env: ") {
                flag.env = Some(env.split('=').next().unwrap().to_string());
            } else if let Some(default) = trimmed.strip_prefix("[default: ") {
                flag.default = Some(default.trim_end_matches(']').to_string());
            }
        }
    }
    flags.retain(|(name, _)| name != "--help" && name != "--version");
    assert!(flags.len() > 40, "too few flags parsed from --help: {flags:?}\n{help}");
    flags
}

/// docs/host.md's flag table: flag → (env var, default cell).
fn table_flags() -> Vec<(String, String, String)> {
    let text = read(&workspace_root().join("docs/host.md"));
    let cell = |c: &str| c.trim().trim_matches('`').to_string();
    let rows: Vec<(String, String, String)> = text
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            assert!(cells.len() >= 4, "a flag row needs flag | env | default | what: {line}");
            (cell(cells[0]), cell(cells[1]), cells[2].trim().replace('`', ""))
        })
        .collect();
    assert!(rows.len() > 40, "too few rows in docs/host.md's flag table: {rows:?}");
    rows
}

/// Whether the table's default cell states `default` (it may go on: `64MiB, or …`).
fn states_default(cell: &str, default: &str) -> bool {
    cell == default || cell.strip_prefix(default).is_some_and(|rest| rest.starts_with([',', ' ', ';']))
}

#[test]
fn the_flag_table_is_the_help() {
    let help = help_flags();
    let table = table_flags();
    let mut wrong = Vec::new();
    for (flag, info) in &help {
        let Some((_, env, default)) = table.iter().find(|(f, _, _)| f == flag) else {
            wrong.push(format!("`{flag}` (env {:?}) is in --help but not in docs/host.md's table", info.env));
            continue;
        };
        if info.env.as_deref().unwrap_or("") != env {
            wrong.push(format!("`{flag}`: --help says env {:?}, the table `{env}`", info.env));
        }
        if let Some(expected) = &info.default
            && !states_default(default, expected)
        {
            wrong.push(format!("`{flag}`: --help says default `{expected}`, the table `{default}`"));
        }
    }
    for (flag, _, _) in &table {
        if !help.iter().any(|(f, _)| f == flag) {
            wrong.push(format!("`{flag}` is in docs/host.md's table but not in --help"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/host.md's flag table and `echo-host --help` differ:\n{}",
        wrong.join("\n")
    );
}

/// The samples marked `<!-- sample: NAME -->` (the ```json block right after), from every page.
fn samples() -> Vec<(String, PathBuf, Value)> {
    let mut samples = Vec::new();
    for page in pages() {
        let text = read(&page);
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(name) = line.trim().strip_prefix("<!-- sample:").and_then(|r| r.strip_suffix("-->"))
            else {
                continue;
            };
            assert_eq!(
                lines.next().map(str::trim),
                Some("```json"),
                "{}: `{line}` must precede a ```json block",
                page.display()
            );
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            let value = serde_json::from_str(&body.join("\n"))
                .unwrap_or_else(|e| panic!("{}: sample `{}` is not JSON: {e}", page.display(), name.trim()));
            samples.push((name.trim().to_string(), page.clone(), value));
        }
    }
    samples
}

/// Where the key sets of `sample` and `real` differ, recursively (`path` names the place). Maps
/// keyed by version (`sha256:…`) compare their entries' shapes; a `null` on either side matches
/// anything (an optional part absent in one run); arrays compare their first elements.
fn key_differences(path: &str, sample: &Value, real: &Value, out: &mut Vec<String>) {
    match (sample, real) {
        (Value::Object(s), Value::Object(r)) => {
            let versions = |m: &serde_json::Map<String, Value>| m.keys().all(|k| k.starts_with("sha256:"));
            if !s.is_empty() && !r.is_empty() && versions(s) && versions(r) {
                let (sv, rv) = (s.values().next().unwrap(), r.values().next().unwrap());
                return key_differences(&format!("{path}.<version>"), sv, rv, out);
            }
            let (sk, rk): (BTreeSet<&String>, BTreeSet<&String>) = (s.keys().collect(), r.keys().collect());
            out.extend(rk.difference(&sk).map(|k| format!("the sample lacks `{path}.{k}`")));
            out.extend(sk.difference(&rk).map(|k| format!("the sample invents `{path}.{k}`")));
            for key in sk.intersection(&rk) {
                key_differences(&format!("{path}.{key}"), &s[*key], &r[*key], out);
            }
        }
        (Value::Array(s), Value::Array(r)) if !s.is_empty() && !r.is_empty() => {
            key_differences(&format!("{path}[0]"), &s[0], &r[0], out)
        }
        _ => {}
    }
}

#[test]
fn the_key_comparison_finds_lacking_and_invented_keys() {
    let real = serde_json::json!({"a": {"b": 1, "c": null}, "v": {"sha256:aa": {"n": 1}}, "l": [{"x": 1}]});
    let mut out = Vec::new();
    key_differences("", &real, &real, &mut out);
    assert!(out.is_empty(), "{out:?}");
    let sample = serde_json::json!({"a": {"b": 1, "d": 2}, "v": {"sha256:bb": {"m": 1}}, "l": [{"x": 1}]});
    key_differences("", &sample, &real, &mut out);
    assert_eq!(
        out,
        [
            "the sample lacks `.a.c`",
            "the sample invents `.a.d`",
            "the sample lacks `.v.<version>.n`",
            "the sample invents `.v.<version>.m`"
        ]
    );
}

/// What a real host prints for each sample name: `info` (the built-in echo, no store, no admin
/// API) and `access-log` (the JSON line of a `HEAD /` the guest answered).
fn real_outputs() -> Vec<(&'static str, Value)> {
    let host = HostProcess::start(&[], &[]);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let head = client.head(host.url("/")).send().expect("HEAD / failed");
    assert!(head.status().is_success(), "HEAD / answered {}", head.status());
    let info: Value = client
        .get(host.url("/.well-known/echo-host/info"))
        .send()
        .and_then(|r| r.json())
        .expect("GET info failed");
    let line = host
        .wait_for_line("\"message\":\"HEAD http://", Duration::from_secs(10))
        .expect("no access-log line for the HEAD request");
    let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    vec![("info", info), ("access-log", log)]
}

#[test]
fn every_json_sample_has_the_keys_of_a_real_run() {
    let samples = samples();
    let real = real_outputs();
    for name in ["info", "access-log"] {
        assert!(samples.iter().any(|(n, _, _)| n == name), "no `<!-- sample: {name} -->` in the docs");
    }
    let mut wrong = Vec::new();
    for (name, page, sample) in &samples {
        let Some((_, output)) = real.iter().find(|(n, _)| n == name) else {
            wrong.push(format!("{}: no real output is known for the sample `{name}`", page.display()));
            continue;
        };
        let mut differences = Vec::new();
        key_differences("", sample, output, &mut differences);
        wrong.extend(differences.into_iter().map(|d| format!("{}: `{name}`: {d}", page.display())));
    }
    assert!(
        wrong.is_empty(),
        "samples that drifted from a real run (regenerate them):\n{}",
        wrong.join("\n")
    );
}
