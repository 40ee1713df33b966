//! The `echo-host` binary: parse the command line, start logging, run the command.

use clap::Parser;
use echo_host::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Compile(args)) => echo_host::compile(&args),
        Some(Command::Serve(args)) => serve(args),
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

fn serve(args: echo_host::config::ServeArgs) -> anyhow::Result<()> {
    // Validate before anything else, so a bad flag never binds the port.
    let config = args.validate()?;
    echo_host::telemetry::init_logging(config.log_format);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(echo_host::serve(config))
}
