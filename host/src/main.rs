//! The `echo-host` binary: parse the command line, start logging, run the command.

use clap::Parser;
use echo_host::cli::config::{Cli, Command, ServeArgs, SignArgs, SignatureFormat};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compile(args)) => echo_host::cli::compile::compile(&args),
        Some(Command::Push(args)) => runtime().and_then(|rt| rt.block_on(echo_host::cli::push::push(&args))),
        Some(Command::Fleet(args)) => {
            runtime().and_then(|rt| rt.block_on(echo_host::cli::push::fleet(&args)))
        }
        Some(Command::Release(args)) => {
            runtime().and_then(|rt| rt.block_on(echo_host::cli::release_cli::release(&args)))
        }
        Some(Command::Keygen(args)) => echo_host::util::signing::keygen(&args.key).map(|public| {
            eprintln!(
                "wrote the private key to `{}` and the public key to `{}`",
                args.key.display(),
                public.display()
            );
        }),
        Some(Command::Sign(args)) => sign(&args).map(|written| eprintln!("wrote `{}`", written.display())),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `echo-host sign`: our `FILE.sig`, or the wasmsign2 format embedded or detached.
fn sign(args: &SignArgs) -> anyhow::Result<std::path::PathBuf> {
    use echo_host::util::signing;
    match args.format {
        SignatureFormat::EchoHost if args.output.is_some() || args.detached => anyhow::bail!(
            "`--output` and `--detached` go with `--format wasmsign2`; the default format always writes `FILE.sig`"
        ),
        SignatureFormat::EchoHost => signing::sign_file(&args.key, &args.file),
        SignatureFormat::Wasmsign2 => {
            signing::sign_file_wasmsign2(&args.key, &args.file, args.output.as_deref(), args.detached)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Validate before anything else, so a bad flag never binds the port.
    let config = args.validate()?;
    keep_body_buffers_in_the_heap();
    echo_host::util::logging::init_logging_buffered(config.log_format, config.log_buffer_lines);
    // On one core (Cloud Run's 1 vCPU; `available_parallelism` reads the cgroup quota and the
    // affinity mask) a current-thread runtime serves without cross-thread wake-ups: measured
    // 1.24x requests/s and 1.56x requests per CPU-second over a one-worker multi-thread runtime.
    // Compiles still run on the blocking pool, and epoch ticks still make long guests yield.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let served = runtime.enable_all().build()?.block_on(echo_host::app::start::serve(config));
    echo_host::util::logging::flush_logs();
    served
}

/// glibc's malloc, by default, gives the top of the heap back (`brk`) as soon as more than 128 KiB
/// of it is free. A streamed body's buffers (hyper's read buffer grows to 400 KiB, a guest's output
/// chunks are up to 1 MiB) sit at the top, so every chunk shrank and regrew the heap and faulted
/// fresh zeroed pages in: 1,365 `brk` per GiB echoed. Buffers under 4 MiB now come from the heap,
/// which keeps up to 8 MiB free at its top (glibc's own ratio: twice the mmap threshold). Measured
/// on a 1 GiB echo: 500-550 ms of server CPU per GiB against 690-730. Set `GLIBC_TUNABLES` with
/// `glibc.malloc.*` to choose otherwise: then this does nothing.
fn keep_body_buffers_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        const MMAP_THRESHOLD: libc::c_int = 4 << 20;
        // SAFETY: mallopt only sets malloc's parameters; called before the runtime starts threads.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
