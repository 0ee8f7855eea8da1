//! `obleth`: a Pingora reverse proxy that stands where HAProxy stands and, on
//! its LLM routes, is a multi-tenant LLM gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use obleth::config::{Config, ConfigError};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "obleth",
    version,
    about = "Reverse proxy and multi-tenant LLM gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration until SIGTERM (drain) or SIGINT.
    /// SIGHUP re-reads the file and swaps routes and pools in place.
    Run {
        /// The YAML configuration file.
        #[arg(short, long, default_value = "conf/obleth.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration and print what it resolves to; exits 1 when
    /// it is invalid.
    Check {
        /// The YAML configuration file.
        #[arg(short, long, default_value = "conf/obleth.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                print!("{}", config.summary());
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            match obleth::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("obleth: cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
