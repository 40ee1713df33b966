//! `echo-host compile`: a component precompiled for exactly the engine `serve` builds.

use std::time::Instant;

use anyhow::Context;

use crate::cli::config::CompileArgs;
use crate::engine::runtime;

/// `echo-host compile`: precompile for exactly the engine `serve` builds.
pub fn compile(args: &CompileArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("cannot read `{}`", args.input.display()))?;
    let limits = crate::cli::config::Limits::default();
    let mut engine_config = runtime::engine_config(&limits)?;
    if !args.native {
        runtime::portable_code(&mut engine_config);
    }
    let engine = wasmtime::Engine::new(&engine_config).map_err(anyhow::Error::from)?;
    if runtime::is_core_module(&bytes) {
        anyhow::bail!("`{}` is a core wasm module, not a component", args.input.display());
    }
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(anyhow::Error::from)
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
