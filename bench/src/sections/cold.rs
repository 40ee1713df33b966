//! Cold start: from just before `spawn` to the first 200 of `GET /?name=world`, and the idle RSS
//! after it, for every server and start-up variant (echo-host with a `.wasm` or a `.cwasm`,
//! wasmtime serve with and without its cache), plus the container image ([`super::docker_run`]).

use std::time::Duration;

use anyhow::bail;

use super::docker_run::{ContainerCold, ContainerOutcome};
use super::*;

pub const COLD_WASM: &str = "echo-host (.wasm)";
pub const COLD_CWASM: &str = "echo-host (.cwasm)";
pub const COLD_WASMTIME_NOCACHE: &str = "wasmtime serve (-C cache=n)";
pub const COLD_WASMTIME_CACHE: &str = "wasmtime serve (cache on, warm)";
pub const COLD_CONTAINER: &str = "container image (docker run, .cwasm)";

/// `echo-host compile` of the echo component (for this very binary's engine settings).
pub fn compile_cwasm(paths: &Paths) -> anyhow::Result<std::path::PathBuf> {
    let cwasm = paths.work.join("echo_guest.cwasm");
    let out = std::process::Command::new(&paths.echo_host)
        .arg("compile")
        .arg(&paths.echo_wasm)
        .arg("-o")
        .arg(&cwasm)
        .output()?;
    if !out.status.success() {
        bail!("echo-host compile failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(cwasm)
}

pub fn cwasm_spec(paths: &Paths, cwasm: &std::path::Path) -> Spec {
    Spec::new(
        COLD_CWASM,
        &paths.echo_host,
        &["--listen-addr", "127.0.0.1", "--port", "{port}", "--allow-precompiled", "--component"],
    )
    .arg(cwasm.display().to_string())
}

/// The cold-start variants, in table order.
pub fn cold_variants(paths: &Paths) -> anyhow::Result<Vec<Spec>> {
    let echo = paths.echo_wasm.display().to_string();
    let cwasm = compile_cwasm(paths)?;
    let cache_dir = paths.work.join("wasmtime-cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache_config = paths.work.join("wasmtime-cache.toml");
    std::fs::write(&cache_config, format!("[cache]\ndirectory = \"{}\"\n", cache_dir.display()))?;
    let cache_config = format!("cache-config={}", cache_config.display());
    let all = specs(paths);
    let find = |name: &str| all.iter().find(|s| s.name == name).cloned().expect("known server");
    Ok(vec![
        find(ECHO_HOST).renamed(COLD_WASM),
        cwasm_spec(paths, &cwasm),
        Spec::new(
            COLD_WASMTIME_NOCACHE,
            &paths.wasmtime,
            &["serve", "--addr", "127.0.0.1:{port}", "-C", "cache=n", &echo],
        ),
        Spec::new(
            COLD_WASMTIME_CACHE,
            &paths.wasmtime,
            &["serve", "--addr", "127.0.0.1:{port}", "-C", "cache=y", "-C", &cache_config, &echo],
        ),
        find(NATIVE),
        find(FLASK),
        find(GUNICORN),
    ])
}

/// Process exec to the first 200 of `GET /?name=world`, and the RSS once idle after it; and once
/// per round `docker run` of the container image to its first 200, unless Docker or the image is
/// missing (what became of that is returned for the report).
pub fn cold_start(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<ContainerOutcome> {
    let variants = cold_variants(paths)?;
    let mut container = ContainerCold::find(paths);
    // Fill wasmtime's cache once, untimed.
    let warm = variants.iter().find(|v| v.name == COLD_WASMTIME_CACHE).expect("listed");
    start(paths, warm, SERVER_CORES)?.stop();
    for round in 0..opts.rounds {
        // The container is the last variant: measured after the others in forward rounds, before
        // them in backward ones.
        if round % 2 == 1 {
            container.measure(round, samples);
        }
        for spec in order(&variants, round) {
            let mut server = spec.spawn(SERVER_CORES, &log_path(paths, &spec.name))?;
            let cold = server.wait_ready(GET_PATH, STARTUP_TIMEOUT)?;
            std::thread::sleep(Duration::from_millis(300));
            let memory = server.memory();
            let rss = memory.rss_kib as f64 / MIB;
            progress(&format!(
                "round {} cold start {}: {:.1} ms, idle RSS {rss:.1} MiB",
                round + 1,
                spec.name,
                cold.as_secs_f64() * 1000.0
            ));
            samples.add("cold.ms", &spec.name, cold.as_secs_f64() * 1000.0);
            samples.add("cold.rss_mib", &spec.name, rss);
            samples.add("cold.anon_mib", &spec.name, memory.anon_kib as f64 / MIB);
            server.stop();
        }
        if round % 2 == 0 {
            container.measure(round, samples);
        }
    }
    Ok(container.finish())
}
