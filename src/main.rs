//! volsnap's entry point: parse, set up logging, run one command, map the
//! outcome to an exit status (0 success, 1 failure, 2 bad usage).

#[macro_use]
mod output;
mod cli;
mod cmd;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version (exit 0) and usage errors (exit 2).
            e.exit();
        }
    };
    init_logging(cli.verbose);
    let status = match cmd::run(cli.command, &cli.keys) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("volsnap: error: {}", volsnap::error::error_chain(&err));
            volsnap::error::exit_code(&err)
        }
    };
    std::process::exit(status);
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("volsnap={default}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
