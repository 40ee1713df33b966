//! The `echo-host` binary: parse the command line, start logging, run the command.

use clap::Parser;
use echo_host::config::{Cli, Command, ServeArgs};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compile(args)) => echo_host::compile(&args),
        Some(Command::Push(args)) => runtime().and_then(|rt| rt.block_on(echo_host::push::push(&args))),
        Some(Command::Keygen(args)) => echo_host::signing::keygen(&args.key).map(|public| {
            eprintln!(
                "wrote the private key to `{}` and the public key to `{}`",
                args.key.display(),
                public.display()
            );
        }),
        Some(Command::Sign(args)) => echo_host::signing::sign_file(&args.key, &args.file).map(|sig| {
            eprintln!("wrote `{}`", sig.display());
        }),
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Validate before anything else, so a bad flag never binds the port.
    let config = args.validate()?;
    echo_host::telemetry::init_logging(config.log_format);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(echo_host::serve(config))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}
