//! Scaling: GET requests/s with the server on one core and on both.

use super::*;
use crate::wrk;

/// GET requests/s with the server on one core and on both (wrk stays on core 1, so on two cores
/// it shares one with the server).
pub fn scaling(paths: &Paths, opts: &Opts, samples: &mut Samples) -> anyhow::Result<()> {
    let specs: Vec<Spec> = specs(paths)
        .into_iter()
        .filter(|s| [ECHO_HOST, WASMTIME, NATIVE].contains(&s.name.as_str()))
        .collect();
    for round in 0..opts.rounds {
        for spec in order(&specs, round) {
            for (label, cores) in [("1", SERVER_CORES), ("2", BOTH_CORES)] {
                let server = start(paths, spec, cores)?;
                wrk::run(&paths.wrk, server.addr, GET_PATH, opts.connections, opts.warmup, None, LOAD_CORES)?;
                let result = wrk::run(
                    &paths.wrk,
                    server.addr,
                    GET_PATH,
                    opts.connections,
                    opts.open_duration,
                    None,
                    LOAD_CORES,
                )?;
                progress(&format!(
                    "round {} {} on {label} core(s): {:.0} req/s",
                    round + 1,
                    spec.name,
                    result.requests_per_sec
                ));
                samples.add(&format!("scale.rps_{label}"), &spec.name, result.requests_per_sec);
                server.stop();
            }
        }
    }
    Ok(())
}
