//! The echo component as a build artifact: it imports nothing outside the `wasi:http/proxy` world
//! (so plain `wasmtime serve` runs it, no `-S cli`), it stays small, and `wit/deps` is the WASI the
//! host's `wasmtime-wasi-http` links against. The same for the p3 build: `echo-guest-p3` imports
//! nothing outside `wasi:http/service@0.3.0`, and `wit/p3/deps` is the crate's p3 WIT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasmparser::{Parser, Payload};

use crate::util;

/// Built by `host/build.rs` (`--profile guest-release`).
const ECHO_GUEST_WASM: &str = env!("ECHO_GUEST_WASM");
/// The p3 echo, also built by `host/build.rs`.
const ECHO_GUEST_P3_WASM: &str = env!("ECHO_GUEST_P3_WASM");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The component ships inside the image and is swapped over the network: keep it small.
const MAX_GUEST_BYTES: u64 = 300 * 1024;

/// What `world proxy` in `wit/deps/http.wit` imports, without the `@version` (see
/// [`proxy_version`]). Anything else is an import that a plain proxy host does not provide.
const PROXY_IMPORTS: &[&str] = &[
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
];

/// What `world service` in `wit/p3/deps/http.wit` imports, without the `@version` (see
/// [`world_version`]); `wasi:clocks/timezone` is `@unstable` there, so not offered by default.
const SERVICE_IMPORTS: &[&str] = &[
    "wasi:cli/types",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:clocks/types",
    "wasi:http/types",
    "wasi:http/client",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/system-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

#[test]
fn echo_guest_imports_only_the_proxy_world() {
    let version = proxy_version();
    let imports = component_imports(&read(Path::new(ECHO_GUEST_WASM)));
    assert!(
        imports.contains(&format!("wasi:http/types@{version}")),
        "`{ECHO_GUEST_WASM}` does not import `wasi:http/types@{version}`; its imports: {imports:?}"
    );
    let outside = outside_world(&imports, PROXY_IMPORTS, &version);
    assert!(
        outside.is_empty(),
        "`{ECHO_GUEST_WASM}` imports {outside:?}, outside the `wasi:http/proxy@{version}` world \
         (std on wasm32-wasip2 pulls in `wasi:cli/environment` and friends: keep the guest no_std); \
         all its imports: {imports:?}"
    );
}

#[test]
fn echo_guest_p3_imports_only_the_service_world() {
    let wasm = ECHO_GUEST_P3_WASM;
    let version = world_version("wit/p3/world.wit", "wasi:http/service@");
    let imports = component_imports(&read(Path::new(wasm)));
    assert!(
        imports.contains(&format!("wasi:http/types@{version}")),
        "`{wasm}` does not import `wasi:http/types@{version}`; its imports: {imports:?}"
    );
    let outside = outside_world(&imports, SERVICE_IMPORTS, &version);
    assert!(
        outside.is_empty(),
        "`{wasm}` imports {outside:?}, outside the `wasi:http/service@{version}` world \
         (std on wasm32-wasip2 pulls in the p2 `wasi:cli/environment` and friends: keep the guest \
         no_std); all its imports: {imports:?}"
    );
}

#[test]
fn import_check_flags_imports_outside_the_proxy_world() {
    let imports: Vec<String> = [
        "wasi:http/types@0.2.12",
        "wasi:io/streams@0.2.12",
        "wasi:cli/environment@0.2.12",
        "wasi:filesystem/types@0.2.12",
        "wasi:http/types@0.2.11",
        "wasi:cli/stdout",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        outside_world(&imports, PROXY_IMPORTS, "0.2.12"),
        [
            "wasi:cli/environment@0.2.12",
            "wasi:filesystem/types@0.2.12",
            "wasi:http/types@0.2.11",
            "wasi:cli/stdout",
        ]
    );

    // A real std-built component: the check must flag what std's wasi-libc imports.
    {
        let std_built = env!("MISBEHAVE_WASM");
        let imports = component_imports(&read(Path::new(std_built)));
        let outside = outside_world(&imports, PROXY_IMPORTS, &proxy_version());
        assert!(
            outside.iter().any(|name| name.starts_with("wasi:cli/environment@")),
            "the std-built `{std_built}` should import `wasi:cli/environment`; flagged: {outside:?}"
        );
    }
    // And against the service world: the std-built p3 test component imports p2 `wasi:cli`.
    {
        let std_built = env!("MISBEHAVE_P3_WASM");
        let imports = component_imports(&read(Path::new(std_built)));
        let version = world_version("wit/p3/world.wit", "wasi:http/service@");
        let outside = outside_world(&imports, SERVICE_IMPORTS, &version);
        assert!(
            outside.iter().any(|name| name.starts_with("wasi:cli/environment@0.2.")),
            "the std-built `{std_built}` should import the p2 `wasi:cli/environment`; flagged: {outside:?}"
        );
    }
}

/// p2 components run on the engine without component-model concurrency (`Flavor::P2`, no guest
/// task per host call: 12% fewer instructions per request, README "Benchmarks"); p3 components
/// and anything unrecognised on the other.
#[test]
fn each_world_is_sent_to_its_engine() {
    use echo_host::engine::runtime::Flavor;
    for (wasm, flavor) in [
        (util::echo_wasm(), Flavor::P2),
        (util::misbehave_wasm(), Flavor::P2),
        (util::echo_p3_wasm(), Flavor::P3),
        (util::misbehave_p3_wasm(), Flavor::P3),
    ] {
        assert_eq!(Flavor::of(&read(wasm)), flavor, "{}", wasm.display());
    }
    assert_eq!(Flavor::of(b"not wasm"), Flavor::P3);
    // A core module exporting the name is not a p2 component.
    assert_eq!(Flavor::of(b"\0asm\x01\0\0\0"), Flavor::P3);
}

#[test]
fn echo_guest_is_small() {
    let size = std::fs::metadata(ECHO_GUEST_WASM)
        .unwrap_or_else(|e| panic!("cannot stat `{ECHO_GUEST_WASM}`: {e}"))
        .len();
    assert!(
        size < MAX_GUEST_BYTES,
        "`{ECHO_GUEST_WASM}` is {size} bytes, over the {MAX_GUEST_BYTES}-byte budget"
    );
}

#[test]
fn wit_deps_match_wasmtime_wasi_http() {
    assert_vendored("wit/deps", "wit/deps", "wit/world.wit", "@0.2.N");
}

#[test]
fn p3_wit_deps_match_wasmtime_wasi_http() {
    assert_vendored("wit/p3/deps", "src/p3/wit/deps", "wit/p3/world.wit", "@0.3.N");
}

/// `ours` (relative to the workspace) holds exactly the `.wit` files of `theirs` (relative to the
/// pinned `wasmtime-wasi-http` crate); `world` and `version` only word the refresh instructions.
fn assert_vendored(ours: &str, theirs: &str, world: &str, version: &str) {
    let (crate_version, crate_dir) = wasmtime_wasi_http_dir();
    let theirs = crate_dir.join(theirs);
    let differences = wit_differences(&Path::new(WORKSPACE).join(ours), &theirs);
    assert!(
        differences.is_empty(),
        "`{ours}` differs from the one shipped in wasmtime-wasi-http {crate_version} (`{}`):\n  {}\n\
         To refresh: `rm {ours}/*.wit && cp {}/*.wit {ours}/`, then bump the `{version}` in {world} to the \
         version those files declare.",
        theirs.display(),
        differences.join("\n  "),
        theirs.display(),
    );
}

#[test]
fn wit_comparison_reports_every_difference() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let write = |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    write(ours.path(), "same.wit", "package a:b@0.2.12;");
    write(theirs.path(), "same.wit", "package a:b@0.2.12;");
    assert_eq!(wit_differences(ours.path(), theirs.path()), Vec::<String>::new());

    write(ours.path(), "http.wit", "package wasi:http@0.2.11;");
    write(theirs.path(), "http.wit", "package wasi:http@0.2.12;");
    write(ours.path(), "old.wit", "");
    write(theirs.path(), "new.wit", "");
    write(theirs.path(), "README.md", "not wit, ignored");
    assert_eq!(
        wit_differences(ours.path(), theirs.path()),
        ["`http.wit` differs", "`new.wit` is missing from ours", "`old.wit` is not in theirs"]
    );
}

/// The `N` of `include wasi:http/proxy@N;` in wit/world.wit: the version every import must carry.
fn proxy_version() -> String {
    world_version("wit/world.wit", "wasi:http/proxy@")
}

/// The version after `prefix` (`wasi:http/proxy@`, `wasi:http/service@`) in the WIT file `world`.
fn world_version(world: &str, prefix: &str) -> String {
    let path = Path::new(WORKSPACE).join(world);
    let text = String::from_utf8(read(&path)).unwrap_or_else(|_| panic!("{world} is not UTF-8"));
    let (_, rest) = text.split_once(prefix).unwrap_or_else(|| panic!("{world} does not include `{prefix}…`"));
    let version = rest.split(';').next().unwrap_or_default().trim();
    assert!(!version.is_empty(), "no version after `{prefix}` in {world}");
    version.to_string()
}

/// The names the top-level component imports (not those of the core modules inside it).
fn component_imports(wasm: &[u8]) -> Vec<String> {
    let mut imports = Vec::new();
    // Nested modules and components are parsed inline; their payloads end with their own `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.expect("not a valid wasm component") {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.expect("malformed import").name.name.to_string());
                }
            }
            _ => {}
        }
    }
    imports
}

/// The imports that a world offering `world` (interfaces without `@version`) at `version` does not
/// offer, in order.
fn outside_world<'a>(imports: &'a [String], world: &[&str], version: &str) -> Vec<&'a str> {
    imports
        .iter()
        .map(String::as_str)
        .filter(|name| {
            !name.split_once('@').is_some_and(|(interface, v)| v == version && world.contains(&interface))
        })
        .collect()
}

/// The version and source directory of the `wasmtime-wasi-http` package in this workspace's graph.
fn wasmtime_wasi_http_dir() -> (String, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(WORKSPACE)
        .output()
        .expect("failed to run `cargo metadata`");
    assert!(output.status.success(), "`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("`cargo metadata` printed invalid JSON");
    let packages: Vec<_> = metadata["packages"]
        .as_array()
        .expect("`cargo metadata` has no `packages`")
        .iter()
        .filter(|package| package["name"] == "wasmtime-wasi-http")
        .collect();
    let [package] = packages[..] else {
        panic!("expected one `wasmtime-wasi-http` package in the graph, found {}", packages.len());
    };
    let manifest = package["manifest_path"].as_str().expect("no `manifest_path`");
    let dir = Path::new(manifest).parent().expect("manifest path has no parent");
    let version = package["version"].as_str().unwrap_or("?").to_string();
    (version, dir.to_path_buf())
}

/// Every way the `.wit` files under `ours` and `theirs` differ, as one line each, sorted by path.
fn wit_differences(ours: &Path, theirs: &Path) -> Vec<String> {
    let ours = wit_files(ours);
    let theirs = wit_files(theirs);
    let mut names: Vec<&String> = ours.keys().chain(theirs.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| match (ours.get(name), theirs.get(name)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some(format!("`{name}` differs")),
            (Some(_), None) => Some(format!("`{name}` is not in theirs")),
            (None, _) => Some(format!("`{name}` is missing from ours")),
        })
        .collect()
}

/// `.wit` files under `dir` (recursively), by path relative to `dir`.
fn wit_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list `{}`: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("unreadable directory entry").path();
            if path.is_dir() {
                walk(root, &path, files);
            } else if path.extension().is_some_and(|ext| ext == "wit") {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                files.insert(relative.display().to_string(), read(&path));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()))
}
