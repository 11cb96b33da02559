//! `pixpro`: the command line. Parsing and printing live in `cli`, one
//! module per command; the work is done by the library.
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    pixpro::train::malloc::tune_for_tensors();
    // Logs go to stderr through tracing; RUST_LOG=debug shows more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        // Exit 1, not clap's 2 for a bad command line, so that a script can
        // tell the two apart.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
