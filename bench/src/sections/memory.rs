//! Memory: a fresh server's RSS after one request, its peak under GET load, and with many
//! keep-alive connections open (each has made one request).

use std::time::Duration;

use anyhow::{Context, bail};

use super::cold::{compile_cwasm, cwasm_spec};
use super::*;
use crate::http1::{self, Client};
use crate::servers::RssSampler;
use crate::wrk;

/// RSS of a fresh server after one request and with `idle_connections` keep-alive connections
/// open (each has made one request); then, in another fresh server, the peak under GET load.
pub fn memory(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let cwasm = compile_cwasm(paths)?;
    let all = specs(paths);
    let find = |name: &str| all.iter().find(|s| s.name == name).cloned().expect("known server");
    let specs = vec![find(ECHO_HOST), cwasm_spec(paths, &cwasm), find(WASMTIME), find(NATIVE)];
    let request = http1::get_request(GET_PATH);
    for round in 0..opts.rounds {
        for spec in order(&specs, round) {
            let server = start(paths, spec, SERVER_CORES)?;
            let sampler = RssSampler::start(server.pid, Duration::from_millis(50));
            wrk::run(
                &paths.wrk,
                server.addr,
                GET_PATH,
                opts.connections,
                opts.open_duration,
                None,
                LOAD_CORES,
            )?;
            let load = sampler.finish();
            samples.add("mem.load_mib", &spec.name, load.rss_kib as f64 / MIB);
            samples.add("mem.load_anon_mib", &spec.name, load.anon_kib as f64 / MIB);
            server.stop();

            let server = start(paths, spec, SERVER_CORES)?;
            std::thread::sleep(Duration::from_millis(300));
            let idle_memory = server.memory();
            let idle = idle_memory.rss_kib as f64 / MIB;
            let mut clients = Vec::with_capacity(opts.idle_connections);
            for _ in 0..opts.idle_connections {
                let mut client = Client::connect(server.addr, Duration::from_secs(10))?;
                let response = client.send(&request)?;
                if response.status != 200 {
                    bail!(
                        "{} answered {} with {} connections open",
                        spec.name,
                        response.status,
                        clients.len()
                    );
                }
                clients.push(client);
            }
            std::thread::sleep(Duration::from_millis(500));
            let open_memory = server.memory();
            let open = open_memory.rss_kib as f64 / MIB;
            // Still served: every connection is alive (one request on the last one).
            let last = clients.last_mut().context("no connections")?.send(&request)?;
            if last.status != 200 {
                bail!("{} stopped answering with {} connections open", spec.name, clients.len());
            }
            progress(&format!(
                "round {} {}: RSS idle {idle:.1} MiB, under load {:.1} MiB, with {} connections {open:.1} MiB",
                round + 1,
                spec.name,
                load.rss_kib as f64 / MIB,
                clients.len()
            ));
            samples.add("mem.idle_mib", &spec.name, idle);
            samples.add("mem.conns_mib", &spec.name, open);
            samples.add("mem.idle_anon_mib", &spec.name, idle_memory.anon_kib as f64 / MIB);
            samples.add("mem.conns_anon_mib", &spec.name, open_memory.anon_kib as f64 / MIB);
            drop(clients);
            server.stop();
        }
    }
    Ok(())
}
