//! `pixpro`: the command line. Parsing and printing live in `cli`, one
//! module per command; the work is done by the library.
use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    pixpro::train::malloc::tune_for_tensors();
    // A file-size limit (`ulimit -f`, a batch system's) then fails the write
    // with "File too large", which names the file and keeps the last
    // checkpoint, instead of killing the process with a core dump.
    #[cfg(unix)]
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
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
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each said once: the library's
/// `Error::Io` and `Error::Torch` write their source into their own message
/// and also hand it on as the cause, which `{:#}` would print again.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}
