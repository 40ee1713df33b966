//! `echo-host compile`: a component precompiled for exactly the engine `serve` builds.

use std::time::Instant;

use anyhow::Context;

use crate::cli::config::CompileArgs;
use crate::engine::config::{engine_config, portable_code};
use crate::engine::runtime::{self, Flavor};

/// `echo-host compile`: precompile for exactly the engine `serve` builds.
pub fn compile(args: &CompileArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("cannot read `{}`", args.input.display()))?;
    let limits = crate::cli::config::Limits::default();
    if runtime::is_core_module(&bytes) {
        anyhow::bail!("`{}` is a core wasm module, not a component", args.input.display());
    }
    let precompile = |flavor| -> anyhow::Result<Vec<u8>> {
        let mut config = engine_config(&limits, flavor)?;
        if !args.native {
            portable_code(&mut config);
        }
        let engine = wasmtime::Engine::new(&config).map_err(anyhow::Error::from)?;
        engine.precompile_component(&bytes).map_err(anyhow::Error::from)
    };
    // For the engine `serve` will load it into (see `Flavor`): a p2 component that uses
    // component-model concurrency anyway goes to the p3 one.
    let compiled = match Flavor::of(&bytes) {
        Flavor::P2 => precompile(Flavor::P2).or_else(|_| precompile(Flavor::P3)),
        Flavor::P3 => precompile(Flavor::P3),
    }
    .with_context(|| format!("cannot compile `{}`", args.input.display()))?;
    // Write beside and rename: a server may have the old file mapped, and a reader must never
    // see half a file.
    let partial = args.output.with_extension("cwasm.partial");
    std::fs::write(&partial, &compiled).with_context(|| format!("cannot write `{}`", partial.display()))?;
    std::fs::rename(&partial, &args.output)
        .with_context(|| format!("cannot write `{}`", args.output.display()))?;
    eprintln!(
        "compiled `{}` ({} bytes) to `{}` ({} bytes) in {} ms",
        args.input.display(),
        bytes.len(),
        args.output.display(),
        compiled.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}
