//! Server wiring: one Pingora proxy service per listener, the health checks,
//! the admin and metrics endpoints, configuration reload on SIGHUP, and the
//! drain on SIGTERM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::broadcast::error::RecvError;

use crate::admin::{admin_router, metrics_router, EdgeRuntime, HttpEndpoint};
use crate::config::{Config, ListenerConfig};
use crate::edge::access_log::AccessLog;
use crate::edge::certificates::{CertificateRegistry, ListenerCertificates, SniSelector};
use crate::edge::client_connection::EdgeApp;
use crate::edge::health::HealthService;
use crate::edge::listening::{listened_on_here, PortClaim};
use crate::edge::proxy_protocol::ProxyProtocol;
use crate::metrics::FAMILIES;
use crate::proxy::{Gateway, Generation, Shared};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Llm(#[from] crate::llm::LlmStartError),
    #[error("OBLETH_ADMIN_TOKEN must be set to at least {MIN_ADMIN_TOKEN} characters (or set admin.generate_dev_token for a development setup)")]
    AdminToken,
    #[error("{0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("dashboard: {0}")]
    Dashboard(#[from] crate::admin::dashboard::DashboardRefused),
    #[error("tracing: cannot start the exporter: {0}")]
    Tracing(#[from] reqwest::Error),
    #[error("{0}")]
    Port(#[from] crate::edge::listening::PortTaken),
    #[error("listener {name}: TLS: {source}")]
    Tls {
        name: String,
        source: Box<pingora::Error>,
    },
    #[error("listener {name}: {source}")]
    Certificate {
        name: String,
        source: crate::edge::certificates::CertificateError,
    },
}

/// Shortest admin token `obleth run` accepts.
pub const MIN_ADMIN_TOKEN: usize = 32;

/// The admin token: from the environment, or generated and printed once for
/// the embedded development default.
fn admin_token(config: &Config) -> Result<String, StartError> {
    match &config.admin_auth.token {
        Some(t) if t.len() >= MIN_ADMIN_TOKEN => Ok(t.clone()),
        Some(_) => Err(StartError::AdminToken),
        None if config.admin_auth.generate_dev_token => {
            let token = obleth_filters::auth::new_secret()
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .replacen(obleth_filters::auth::SECRET_PREFIX, "adm_", 1);
            eprintln!("obleth: development admin token (shown once): {token}");
            Ok(token)
        }
        None => Err(StartError::AdminToken),
    }
}

/// Builds every service from `config` and serves until SIGTERM or SIGINT;
/// with `upgrade`, takes over the listening sockets of the obleth serving
/// now (see [`crate::upgrade`]).
pub fn run(config: Config, upgrade: bool) -> Result<(), StartError> {
    let admin_token = admin_token(&config)?;
    let dashboard = crate::admin::dashboard::DashboardConfig::resolve(
        &config.dashboard,
        config.admin_auth.generate_dev_token,
    )?;
    // The store, Redis and cache invalidation live on a runtime of their own
    // that outlives every Pingora service runtime.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("obleth-control")
        .enable_all()
        .build()?;
    crate::metrics::process_started();
    let tracer = match &config.tracing {
        Some(settings) => {
            let _runtime = control.enter();
            Some(crate::otel::Tracer::start(settings)?)
        }
        None => None,
    };

    let server = &config.server;
    let conf = ServerConf {
        threads: server.threads,
        grace_period_seconds: Some(server.grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: server.upstream_keepalive_pool,
        work_stealing: server.work_stealing,
        upgrade_sock: server.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut pingora_server = Server::new_with_opt_and_conf(Some(opt), conf);
    if upgrade {
        crate::upgrade::ask_for_sockets(server.pid_file(), &server.upgrade_socket)?;
    }
    // Receives the old process's listening sockets when upgrading.
    pingora_server.bootstrap();
    // Otherwise the ports must be free: held until Pingora binds them.
    let ports = (!upgrade)
        .then(|| PortClaim::take(&config.listeners))
        .transpose()?;
    // What the old process still holds (the usage log, the admin and
    // metrics ports) it lets go of by the end of its drain.
    let take_over_by = upgrade.then(|| Instant::now() + server.grace + Duration::from_secs(15));

    let llm = if config.declares_llm() {
        Some(control.block_on(crate::llm::LlmState::start(&config, take_over_by))?)
    } else {
        None
    };
    let Config {
        source,
        server,
        listeners,
        admin_address,
        metrics_address,
        access_log,
        pools,
        routes,
        ..
    } = config;
    let pid_file = server.pid_file().to_path_buf();

    let shared = Arc::new(Shared::new(
        Generation::build(routes, pools, None),
        server.trusted_proxies,
        AccessLog::open(&access_log)?,
        llm,
        tracer,
    ));

    let mut certificates = Vec::new();
    for listener in &listeners {
        if let Some(store) = add_listener(&mut pingora_server, &shared, listener)? {
            certificates.push(store);
        }
    }
    let certificates = CertificateRegistry::new(certificates);
    let edge = EdgeRuntime {
        pools: shared.watch_pools(),
        certificates: certificates.clone(),
    };
    // Bind the operator endpoints before serving: a port in use stops
    // start-up here.
    let (handover, handed_over) = tokio::sync::watch::channel(false);
    let admin = HttpEndpoint::bind(
        "admin",
        admin_address,
        admin_router(shared.llm.clone(), edge, &admin_token, dashboard),
        handed_over.clone(),
        take_over_by,
    )?;
    let metrics = HttpEndpoint::bind(
        "metrics",
        metrics_address,
        metrics_router(shared.llm.clone()),
        handed_over,
        take_over_by,
    )?;

    pingora_server.add_service(background_service("admin", admin));
    pingora_server.add_service(background_service("metrics", metrics));
    pingora_server.add_service(background_service(
        "health checks",
        HealthService {
            pools: shared.watch_pools(),
        },
    ));
    pingora_server.add_service(background_service(
        "lifecycle",
        Lifecycle {
            shared: shared.clone(),
            certificates,
            config_path: source,
            pid_file,
            pid_file_configured: server.pid_file.is_some(),
            probe_addresses: listeners.iter().map(|l| l.address).collect(),
        },
    ));

    spawn_drain_watch(&pingora_server, shared, server.grace, handover);
    tracing::info!(
        listeners = ?listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
        admin = %admin_address,
        metrics = %metrics_address,
        "obleth starting"
    );
    let _control = control;
    if let Some(ports) = ports {
        ports.release();
    }
    pingora_server.run_forever()
}

/// Adds the proxy service of one listener; returns its certificates when
/// it terminates TLS.
fn add_listener(
    server: &mut Server,
    shared: &Arc<Shared>,
    listener: &ListenerConfig,
) -> Result<Option<Arc<ListenerCertificates>>, StartError> {
    let gateway = Gateway::new(
        shared.clone(),
        listener.name.clone(),
        listener.tls.is_some(),
        listener.client,
    );
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    if listener.tls.is_none() && listener.h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        proxy.server_options = Some(options);
    }
    let proxy_protocol = listener.proxy_protocol.clone().map(ProxyProtocol::new);
    let addr = listener.address.to_string();
    let Some(tls) = &listener.tls else {
        let mut service = Service::new(
            format!("listener {}", listener.name),
            EdgeApp::new(proxy, listener.client, proxy_protocol),
        );
        service.add_tcp(&addr);
        server.add_service(service);
        return Ok(None);
    };
    let store = ListenerCertificates::load(&listener.name, tls.certificates.clone())
        .map(Arc::new)
        .map_err(|source| StartError::Certificate {
            name: listener.name.clone(),
            source,
        })?;
    let mut settings =
        TlsSettings::with_callbacks(Box::new(SniSelector(store.clone()))).map_err(|source| {
            StartError::Tls {
                name: listener.name.clone(),
                source,
            }
        })?;
    settings.enable_h2();
    let mut service = Service::new(
        format!("listener {}", listener.name),
        EdgeApp::new(proxy, listener.client, None),
    );
    if let Some(policy) = proxy_protocol {
        // The relay's header comes before the ClientHello.
        service.endpoints().set_pre_tls_callback(Arc::new(policy));
    }
    service.add_tls_with_settings(&addr, None, settings);
    server.add_service(service);
    Ok(Some(store))
}

/// Marks the process ready once its listeners accept connections, reloads
/// the configuration on SIGHUP and reopens the access log on SIGUSR1.
struct Lifecycle {
    shared: Arc<Shared>,
    certificates: CertificateRegistry,
    pid_file: PathBuf,
    /// Whether `server.pid_file` was set: failing to write the default one
    /// (a read-only root) is no reason to warn.
    pid_file_configured: bool,
    config_path: PathBuf,
    probe_addresses: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut hangups, mut usr1) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) {
            (Ok(hup), Ok(usr1)) => (hup, usr1),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(
                    "cannot listen for SIGHUP and SIGUSR1, reload and log reopening disabled: {e}"
                );
                return;
            }
        };
        for addr in &self.probe_addresses {
            wait_until_accepting(*addr).await;
        }
        crate::supervision::set_phase(crate::supervision::Phase::Serving);
        match crate::upgrade::write_pid_file(&self.pid_file) {
            Err(e) if self.pid_file_configured => tracing::warn!(
                "cannot write {} ({e}); `obleth run --upgrade` will not find this process",
                self.pid_file.display()
            ),
            Err(e) => tracing::debug!("no pid file at {} ({e})", self.pid_file.display()),
            Ok(()) => {}
        }
        tracing::info!("ready");
        loop {
            tokio::select! {
                _ = hangups.recv() => self.reload(),
                _ = usr1.recv() => self.shared.access_log.reopen(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Lifecycle {
    fn reload(&self) {
        match Config::load(&self.config_path) {
            Ok(config) if config.declares_llm() && self.shared.llm.is_none() => {
                FAMILIES
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(
                    "configuration reload rejected, keeping the running one: it adds the first llm: route, and the LLM plane (store, budgets, usage log) starts only at start-up; restart to add it"
                );
            }
            Ok(config) => {
                self.reload_certificates(Some(&config.listeners));
                self.shared.rebuild(|previous| {
                    Generation::build(config.routes, config.pools, Some(previous))
                });
                FAMILIES.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(
                    file = %self.config_path.display(),
                    "configuration reloaded; routes, pools and certificates swapped (other listener settings, admin, metrics, server and access_log apply at restart)"
                );
            }
            Err(e) => {
                FAMILIES
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!("configuration reload rejected, keeping the running one:\n{e}");
            }
        }
    }
}

impl Lifecycle {
    /// New handshakes take the certificates `listeners` name (or the files
    /// in use, read again); a listener whose files fail keeps its own.
    fn reload_certificates(&self, listeners: Option<&[ListenerConfig]>) {
        if self.certificates.is_empty() {
            return;
        }
        match self.certificates.reload(listeners) {
            Ok(()) => tracing::info!("certificates reloaded"),
            Err(failures) => {
                for failure in failures {
                    tracing::error!(
                        "certificate reload rejected, keeping the ones in use: {failure}"
                    );
                }
            }
        }
    }
}

/// Waits until this process listens on `addr`. Where `/proc` tells whose
/// socket it is, that is waited for however long it takes (Pingora may be
/// retrying a port another process took after the start-up claim); where
/// it cannot, a connection that succeeds counts, for five seconds at most.
async fn wait_until_accepting(addr: SocketAddr) {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    for attempt in 1.. {
        match listened_on_here(addr) {
            Some(true) => return,
            None if tokio::net::TcpStream::connect(target).await.is_ok() => return,
            None if attempt == 200 => {
                tracing::warn!(
                    "listener {addr} does not accept connections yet; reporting ready anyway"
                );
                return;
            }
            Some(false) if attempt == 200 => tracing::warn!(
                "listener {addr} is not listening yet; /readyz stays 503 until it is"
            ),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// On SIGTERM Pingora stops accepting and then sleeps the whole grace
/// period; this watcher ends the process as soon as the requests in flight
/// have finished, so a drain takes as long as the slowest request and no
/// longer. On SIGQUIT (a new binary taking over) it first closes the admin
/// and metrics ports for the new process, through `handover`.
fn spawn_drain_watch(
    server: &Server,
    shared: Arc<Shared>,
    grace: Duration,
    handover: tokio::sync::watch::Sender<bool>,
) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        crate::supervision::set_phase(crate::supervision::Phase::HandingOver);
                        tracing::info!("handing the listening sockets to a new process");
                        let _ = handover.send(true);
                    }
                    Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => {
                        break
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
            crate::supervision::set_phase(crate::supervision::Phase::Draining);
            tracing::info!(
                "draining: {} requests in flight, grace {grace:?}",
                shared.in_flight()
            );
            // Pingora closes idle connections at shutdown; one still open
            // is being read or answered.
            let deadline = std::time::Instant::now() + grace;
            while (shared.in_flight() > 0 || crate::supervision::open_connections() > 0)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = shared.in_flight();
            if left > 0 {
                tracing::warn!("grace period over with {left} requests still in flight");
            } else {
                tracing::info!("drained; exiting");
            }
            shared.access_log.sync(Duration::from_secs(1));
            if let Some(llm) = &shared.llm {
                if !llm.telemetry.wal.sync(Duration::from_secs(2)) {
                    tracing::warn!("exiting with usage records not yet written");
                }
            }
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the drain watcher ({e}); SIGTERM waits the full grace period");
    }
}
