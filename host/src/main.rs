//! The `wasq` binary: parse the command line, run it, map the result to an
//! exit code.

use clap::Parser;
use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = wasq::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| wasq::text::OneLine(std::io::stderr()))
        .with_ansi(false);
    if cli.global.log_format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: starting the async runtime: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wasq::cli::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(2)
        }
    }
}
