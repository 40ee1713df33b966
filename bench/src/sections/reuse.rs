//! p2 instance reuse: closed-loop GET on the p2 echo with instances reused up to 128 requests on
//! both wasm hosts (echo-host `--instance-max-requests`, `wasmtime serve
//! --max-instance-reuse-count`), native hyper as the ceiling.

use super::p3::get_rounds;
use super::*;

/// Requests one instance serves on both hosts.
pub const P2_REUSE_REQUESTS: &str = "128";

/// The servers of the p2 reuse table.
pub fn reuse_specs(paths: &Paths) -> Vec<Spec> {
    let echo = paths.echo_wasm.display().to_string();
    vec![
        Spec::new(
            ECHO_HOST_REUSE,
            &paths.echo_host,
            &[
                "--listen-addr",
                "127.0.0.1",
                "--port",
                "{port}",
                "--component",
                &echo,
                "--instance-max-requests",
                P2_REUSE_REQUESTS,
            ],
        ),
        Spec::new(
            WASMTIME_REUSE,
            &paths.wasmtime,
            &["serve", "--max-instance-reuse-count", P2_REUSE_REQUESTS, "--addr", "127.0.0.1:{port}", &echo],
        ),
        Spec::new(NATIVE, &paths.native_echo, &["{port}"]),
    ]
}

/// Closed-loop `GET /?name=world` as in the throughput table, recorded as `reuse.*`.
pub fn reuse(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    get_rounds(paths, opts, &reuse_specs(paths), "reuse", samples)
}
