//! The host's layers point one way (`host/src/lib.rs`, "Layers"). This reads `host/src/**/*.rs`,
//! maps every `crate::` and `super::` path in code (comments, strings and `#[cfg(test)]` modules
//! left out) to the module it names and that module to its layer, and fails naming the file, the
//! line and both layers when a path points up. It also fails when files import each other in a
//! circle (a child's use of its ancestors aside), and when `App` is named outside the composition
//! root (`src/app/`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may name only modules of its own layer or earlier ones.
const LAYERS: &[&str] = &["util", "engine", "versions", "serve", "release", "app", "cli"];

/// Where `App` may be named: the composition root.
const APP_FILES: &str = "app/";

/// Upward paths still to be removed, as `(file, target module)`. Each entry must still occur (an
/// entry that no longer does fails the test, so the list only shrinks); nothing may be added.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// A Rust source file of the host: its module path and its code without comments, strings or
/// test modules (kept the same length line by line, so line numbers stay right).
struct Source {
    file: String,
    module: Vec<String>,
    code: String,
}

#[test]
fn imports_point_down_the_layers() {
    let sources = read_sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut problems = String::new();
    let mut known_seen = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        let Some(from_layer) = layer_of(&source.module) else {
            if !source.module.is_empty() {
                writeln!(
                    problems,
                    "{}: module `{}` is in no layer ({LAYERS:?})",
                    source.file, source.module[0]
                )
                .unwrap();
            }
            continue;
        };
        for (line, path) in paths(&source.code, &source.module) {
            let Some(target) = resolve(&modules, &path) else { continue };
            if target == source.module || source.module.starts_with(&target) {
                continue; // itself, or a child's use of its ancestors
            }
            let target_file = file_of(&sources, &target);
            edges.entry(source.file.clone()).or_default().insert(target_file.clone());
            let Some(to_layer) = layer_of(&target) else { continue };
            if to_layer > from_layer {
                let key = (source.file.as_str(), target.join("::"));
                if KNOWN_UPWARD.iter().any(|(f, t)| *f == key.0 && *t == key.1) {
                    known_seen.insert(key.clone());
                    continue;
                }
                writeln!(
                    problems,
                    "src/{}:{line}: `{}` points up: from layer `{}` to layer `{}` (`{}`)",
                    source.file,
                    path.join("::"),
                    LAYERS[from_layer],
                    LAYERS[to_layer],
                    target.join("::"),
                )
                .unwrap();
            }
        }
    }
    for (file, target) in KNOWN_UPWARD {
        if !known_seen.contains(&(*file, target.to_string())) {
            writeln!(
                problems,
                "KNOWN_UPWARD lists `{file}` -> `{target}`, which no longer occurs: remove it"
            )
            .unwrap();
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        writeln!(problems, "files import each other in a circle: {}", cycle.join(" -> ")).unwrap();
    }
    for source in &sources {
        if source.file.starts_with(APP_FILES) {
            continue;
        }
        for (number, line) in source.code.lines().enumerate() {
            if words(line).any(|w| w == "App") {
                writeln!(
                    problems,
                    "src/{}:{}: names `App` outside the composition root (`src/app/`)",
                    source.file,
                    number + 1
                )
                .unwrap();
            }
        }
    }
    assert!(problems.is_empty(), "the host's layers (host/src/lib.rs) are broken:\n{problems}");
}

/// The layer of a module: its first path segment's place in [`LAYERS`]. The crate root (`lib.rs`,
/// `main.rs`) is above every layer.
fn layer_of(module: &[String]) -> Option<usize> {
    match module.first() {
        None => Some(LAYERS.len()),
        Some(first) => LAYERS.iter().position(|layer| layer == first),
    }
}

fn read_sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), root.display());
    files
        .into_iter()
        .map(|path| {
            let file = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            Source { module: module_of(&file), code: without_tests(&code_only(&text)), file }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
}

/// `serve/exchange/mod.rs` -> `[serve, exchange]`; `lib.rs` and `main.rs` -> `[]`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn file_of(sources: &[Source], module: &[String]) -> String {
    sources.iter().find(|s| s.module == module).map(|s| s.file.clone()).unwrap_or_else(|| module.join("/"))
}

/// The code with comments, string and char literals blanked (newlines kept).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || (next == Some('#') && !prev_is_ident(&chars, i))) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') || prev_is_ident(&chars, i) {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            chars[i..j.min(chars.len())].iter().for_each(|&ch| out.push(blank(ch)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                let step = if chars[i] == '\\' { 2 } else { 1 };
                chars[i..(i + step).min(chars.len())].iter().for_each(|&ch| out.push(blank(ch)));
                i += step;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&chars, i) {
            let end = chars[i + 1..].iter().position(|&ch| ch == '\'').map_or(chars.len(), |p| {
                // '\'' : the quote right after a backslash is escaped.
                let p = i + 1 + p;
                if chars[p - 1] == '\\' && p == i + 2 { p + 1 } else { p }
            });
            (i..=end.min(chars.len() - 1)).for_each(|_| out.push(' '));
            i = end + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `'x'`, `'\n'`, `'\u{..}'` rather than a lifetime `'a`.
fn is_char_literal(chars: &[char], i: usize) -> bool {
    matches!((chars.get(i + 1), chars.get(i + 2)), (Some('\\'), _) | (Some(_), Some('\'')))
}

/// The code with every `#[cfg(test)]` item (a test module) blanked, newlines kept.
fn without_tests(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let text: String = out.iter().collect();
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]").map(|p| p + from) {
        let Some(open) = text[at..].find('{').map(|p| p + at) else { break };
        let end = (matching_brace(&text, open) + 1).min(text.len());
        // `out` is indexed by chars, `text` by bytes.
        let (start_char, end_char) = (text[..at].chars().count(), text[..end].chars().count());
        for ch in &mut out[start_char..end_char] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        from = end;
    }
    out.into_iter().collect()
}

/// Every `crate::a::b` and `super::a` path in the code, with `use crate::a::{b, c::d}` groups
/// expanded, as absolute module paths (segments after `crate`) with their line number.
fn paths(code: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for (start, keyword) in [("crate::", true), ("super::", false)]
        .iter()
        .flat_map(|(k, is_crate)| code.match_indices(k).map(move |(at, _)| (at, (*k, *is_crate))))
        .filter(|(at, _)| {
            *at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':')
        })
        .collect::<Vec<_>>()
    {
        let (word, is_crate) = keyword;
        let line = code[..start].matches('\n').count() + 1;
        let mut base: Vec<String> = if is_crate {
            Vec::new()
        } else {
            let mut parent = module.to_vec();
            parent.pop();
            parent
        };
        let mut rest = &code[start + word.len()..];
        // Further `super::` segments.
        while !is_crate && rest.starts_with("super::") {
            base.pop();
            rest = &rest["super::".len()..];
        }
        for path in expand(rest) {
            let mut full = base.clone();
            full.extend(path);
            found.push((line, full));
        }
    }
    found
}

/// `a::b::C` -> `[[a, b, C]]`; `a::{b, c::d}` -> `[[a, b], [a, c, d]]` (nested groups too).
fn expand(rest: &str) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    let mut prefix = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut segment = String::new();
    while let Some((at, ch)) = chars.next() {
        if ch.is_alphanumeric() || ch == '_' {
            segment.push(ch);
        } else if ch == ':' && rest[at..].starts_with("::") {
            chars.next();
            if !segment.is_empty() {
                prefix.push(std::mem::take(&mut segment));
            }
            if rest[at + 2..].trim_start().starts_with('{') {
                let open = at + 2 + rest[at + 2..].find('{').unwrap();
                let close = matching_brace(rest, open);
                let mut all = Vec::new();
                for item in split_top_level(&rest[open + 1..close]) {
                    for tail in expand(item) {
                        let mut full = prefix.clone();
                        full.extend(tail.into_iter().filter(|s| s != "self"));
                        all.push(full);
                    }
                }
                return all;
            }
        } else {
            break;
        }
    }
    if !segment.is_empty() {
        prefix.push(segment);
    }
    vec![prefix]
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (offset, ch) in text[open..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + offset;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut from, mut items) = (0, 0, Vec::new());
    for (at, ch) in text.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    items.push(&text[from..]);
    items.into_iter().filter(|item| !item.trim().is_empty()).collect()
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|prefix| modules.contains(prefix))
}

fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty())
}

/// A circle in the file graph, if there is one, as the files along it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    edges.keys().find_map(|node| visit(node, edges, &mut marks, &mut Vec::new()))
}

#[test]
fn the_reader_sees_what_it_must() {
    let module = vec!["serve".to_string(), "exchange".to_string(), "body".to_string()];
    let code = code_only(
        "use crate::util::{redact, gcs::{self, Gcs}};\n// crate::app::App\nlet s = \"crate::cli\";\nuse super::lifecycle::Outcome;\n#[cfg(test)]\nmod tests { use crate::app::App; }\n",
    );
    let found: Vec<(usize, String)> =
        paths(&without_tests(&code), &module).into_iter().map(|(line, p)| (line, p.join("::"))).collect();
    assert_eq!(
        found,
        vec![
            (1, "util::redact".to_string()),
            (1, "util::gcs".to_string()),
            (1, "util::gcs::Gcs".to_string()),
            (4, "serve::exchange::lifecycle::Outcome".to_string()),
        ]
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&edges).map(|c| c.len()), Some(4));
}
