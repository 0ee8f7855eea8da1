//! `obleth-mock-upstream`: the mock OpenAI upstream as a process, for
//! benchmarks and the demo.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use obleth_mock_upstream::{serve, MockConfig};
use tokio::net::TcpListener;

/// An OpenAI-compatible mock upstream for obleth's benchmarks and demo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the line printed on
    /// startup tells which).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Server identity, sent in the `x-mock-server` header.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Delay before the response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streaming pace in tokens per second (0 streams without delay).
    #[arg(long, default_value_t = 0.0)]
    tokens_per_second: f64,
    /// Answer every /v1/* request with this status.
    #[arg(long, value_parser = clap::value_parser!(u16).range(200..=599))]
    status: Option<u16>,
    /// Runtime worker threads (keep it small to pin the mock while
    /// benchmarking the proxy).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("obleth-mock-upstream: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?;
    let config = MockConfig {
        name: args.name,
        latency: Duration::from_millis(args.latency_ms),
        tokens_per_second: args.tokens_per_second,
        status: args.status,
    };
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen).await?;
        let mut stdout = io::stdout().lock();
        writeln!(
            stdout,
            "obleth-mock-upstream listening on {}",
            listener.local_addr()?
        )?;
        stdout.flush()?;
        drop(stdout);
        serve(listener, config).await
    })
}
