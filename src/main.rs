//! `obleth`: a Pingora reverse proxy that stands where HAProxy stands and, on
//! its LLM routes, is a multi-tenant LLM gateway.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use obleth::config::{Config, ConfigError, LogFormat};

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
        /// Take over the listening sockets of the obleth running now (the
        /// one in `server.pid_file`), which then drains and exits: a new
        /// binary without a refused connection.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a configuration and print what it resolves to; exits 1 when
    /// it is invalid.
    Check {
        /// The YAML configuration file.
        #[arg(short, long, default_value = "conf/obleth.yaml")]
        config: PathBuf,
    },
    /// Translate an haproxy.cfg into an obleth configuration, written to
    /// standard output. Lines that are not translated exactly are listed on
    /// standard error as FILE:LINE: directive: why (and at the end of the
    /// output); exits 1 when the file cannot be read or has no HTTP frontend.
    ImportHaproxy {
        /// The haproxy.cfg to read.
        file: PathBuf,
        /// Translate the routes of this frontend (or listen section); by
        /// default those of the frontend that uses the most backends.
        #[arg(long)]
        frontend: Option<String>,
    },
    /// Apply pending database migrations to the configured store.
    Migrate {
        /// The YAML configuration file.
        #[arg(short, long, default_value = "conf/obleth.yaml")]
        config: PathBuf,
    },
    /// Manage tenants through the admin API (needs OBLETH_ADMIN_TOKEN).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
        /// Base URL of the admin API.
        #[arg(
            long,
            env = "OBLETH_ADMIN_URL",
            default_value = "http://127.0.0.1:9090",
            global = true
        )]
        admin_url: String,
    },
    /// Manage API keys through the admin API (needs OBLETH_ADMIN_TOKEN).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
        /// Base URL of the admin API.
        #[arg(
            long,
            env = "OBLETH_ADMIN_URL",
            default_value = "http://127.0.0.1:9090",
            global = true
        )]
        admin_url: String,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        name: String,
        /// Fair-share group.
        #[arg(long, default_value = "default")]
        group: String,
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// 0 = unlimited.
        #[arg(long, default_value_t = 0)]
        tokens_per_minute: u64,
    },
    /// List tenants.
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// RFC 3339 time after which the key stops working.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
    },
}

/// Writes a line of output. A reader that went away (`obleth check | head`)
/// is no error: the command's result stands, unlike `println!`'s panic.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        init_tracing(log_format_from_env());
    }
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                say(&format!("{}configuration ok", config.summary()));
                ExitCode::SUCCESS
            }
            Err(e) => report(&e),
        },
        Command::ImportHaproxy { file, frontend } => import_haproxy(&file, frontend),
        Command::Migrate { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            let done = block_on(async {
                let cipher = obleth::store::secrets::UpstreamKeyCipher::new(
                    config.encryption_key.as_deref(),
                );
                let store = obleth::store::Store::connect(&config.store.database_url, cipher)
                    .await
                    .map_err(|e| e.to_string())?;
                store.migrate().await.map_err(|e| e.to_string())?;
                say(&format!(
                    "migrations applied to {}",
                    obleth::config::redact_url(&config.store.database_url)
                ));
                if let Some(ch) = &config.telemetry.clickhouse {
                    let sink =
                        obleth_filters::telemetry::ClickHouseSink::new(ch.connection.clone());
                    sink.migrate().await.map_err(|e| e.to_string())?;
                    say(&format!(
                        "usage schema created in ClickHouse database {}",
                        ch.connection.database
                    ));
                }
                Ok::<(), String>(())
            });
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Tenant { command, admin_url } => admin_command(&admin_url, |client| async move {
            match command {
                TenantCommand::Create {
                    name,
                    group,
                    weight,
                    tokens_per_minute,
                } => {
                    let t = client
                        .create_tenant(&name, &group, weight, tokens_per_minute)
                        .await?;
                    Ok(serde_json::to_string_pretty(&t).unwrap_or_default())
                }
                TenantCommand::List => {
                    let list = client.list_tenants().await?;
                    Ok(list
                        .iter()
                        .map(|t| format!("{}  {}  {}\n", t.id, t.name, t.status))
                        .collect())
                }
            }
        }),
        Command::Key { command, admin_url } => admin_command(&admin_url, |client| async move {
            match command {
                KeyCommand::Create {
                    tenant,
                    name,
                    expires_at,
                } => {
                    let created = client
                        .create_key(&tenant, &name, expires_at.as_deref())
                        .await?;
                    Ok(format!(
                        "key {} created for tenant {}\nsecret (shown once, store it now): {}",
                        created.key.id, tenant, created.secret
                    ))
                }
                KeyCommand::List { tenant } => {
                    Ok(obleth::cli::key_table(&client.list_keys(&tenant).await?))
                }
            }
        }),
        Command::Run { config, upgrade } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            init_tracing(config.log_format);
            match obleth::server::run(config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("obleth: cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `obleth import-haproxy`: the configuration on stdout, the notes and a
/// summary on stderr.
fn import_haproxy(file: &std::path::Path, frontend: Option<String>) -> ExitCode {
    let options = obleth::haproxy_import::Options { frontend };
    match obleth::haproxy_import::import_file(file, &options) {
        Ok(import) => {
            for note in &import.notes {
                eprintln!("{}", import.report_line(note));
            }
            eprintln!(
                "obleth import-haproxy: {} listener(s), {} pool(s), {} route(s); {} line(s) not translated exactly",
                import.listeners,
                import.pools,
                import.routes,
                import.notes.len()
            );
            say(import.yaml.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("obleth: cannot start a runtime: {e}");
            std::process::exit(1)
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("obleth: {e}");
    ExitCode::FAILURE
}

fn admin_command<F, Fut>(admin_url: &str, f: F) -> ExitCode
where
    F: FnOnce(obleth::cli::AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<String, obleth::cli::CliError>>,
{
    let client = match obleth::cli::AdminClient::new(admin_url) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match block_on(f(client)) {
        Ok(text) => {
            say(text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn report(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::FAILURE
}

/// Starts obleth's own log on stderr: text, or one JSON object per line;
/// colours only on a terminal.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The log format before a configuration is read (`OBLETH_LOG_FORMAT`).
fn log_format_from_env() -> LogFormat {
    match std::env::var("OBLETH_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}
