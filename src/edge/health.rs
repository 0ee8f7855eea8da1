//! Active health checks: each checked pool probes its servers every
//! `interval` and moves them out of rotation after `fall` consecutive failures
//! and back after `rise` consecutive passes, as HAProxy's `check` does.
//! Servers in `maint` are not probed (drained ones are).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{HealthCheckConfig, HealthCheckKind, PoolConfig};
use crate::edge::pool::{AdminState, LivePools, Pool};

/// Runs the checks of every pool requests are routed to; a reload hands it
/// the new pools, and checks of pools that are no
/// longer referenced stop by themselves.
pub struct HealthService {
    pub pools: LivePools,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut live = self.pools.clone();
        loop {
            let pools = live.borrow_and_update().clone();
            for pool in pools.iter() {
                if let Some(check) = &pool.config.health_check {
                    let probe = build_probe(&pool.config, check);
                    crate::supervision::spawn(
                        "health checks",
                        check_loop(Arc::downgrade(pool), check.clone(), probe),
                    );
                }
            }
            drop(pools);
            tokio::select! {
                changed = live.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }
}

type Probe = Box<dyn HealthCheck + Send + Sync>;

fn build_probe(pool: &PoolConfig, check: &HealthCheckConfig) -> Probe {
    let sni = pool.tls.as_ref().map(|t| t.sni.as_str());
    match &check.kind {
        HealthCheckKind::Tcp => {
            let mut probe = match sni {
                Some(sni) => TcpHealthCheck::new_tls(sni),
                None => TcpHealthCheck::new(),
            };
            probe.peer_template.options.connection_timeout = Some(check.timeout);
            probe.peer_template.options.total_connection_timeout = Some(check.timeout);
            probe
        }
        HealthCheckKind::Http {
            path,
            expect_status,
        } => {
            let host = pool
                .host_header
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .or(sni)
                .or_else(|| pool.servers.first().map(|s| s.name.as_str()))
                .unwrap_or("localhost");
            let mut probe = HttpHealthCheck::new(host, sni.is_some());
            if let Some(tls) = &pool.tls {
                probe.peer_template.options.verify_cert = tls.verify;
                probe.peer_template.options.verify_hostname = tls.verify;
            }
            probe.peer_template.options.connection_timeout = Some(check.timeout);
            probe.peer_template.options.total_connection_timeout = Some(check.timeout);
            probe.peer_template.options.read_timeout = Some(check.timeout);
            probe
                .req
                .set_uri(path.parse().unwrap_or_else(|_| http::Uri::from_static("/")));
            let expected = *expect_status;
            probe.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::InternalError,
                        format!("status {} (expected {expected})", resp.status.as_u16()),
                    )
                }
            }));
            Box::new(probe)
        }
    }
}

/// Consecutive results of one server, for the rise/fall thresholds.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: usize,
    failures: usize,
}

async fn check_loop(pool: Weak<Pool>, check: HealthCheckConfig, probe: Probe) {
    let mut streaks: Vec<Streak> = Vec::new();
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        streaks.resize(pool.servers.len(), Streak::default());
        let results = futures_util::future::join_all(pool.servers.iter().map(|server| {
            let probe = &probe;
            let timeout = check.timeout;
            async move {
                if server.setting().state == AdminState::Maint {
                    return None;
                }
                let backend = Backend::new(&server.config.address.to_string());
                Some(match backend {
                    Ok(backend) => match tokio::time::timeout(timeout, probe.check(&backend)).await
                    {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                })
            }
        }))
        .await;
        for ((server, streak), result) in pool.servers.iter().zip(&mut streaks).zip(results) {
            // A server in maintenance is not checked and counts as down
            // (also when it was put there while its probe ran); its run of
            // results starts again when it leaves.
            let Some(result) = result.filter(|_| server.setting().state != AdminState::Maint)
            else {
                *streak = Streak::default();
                server.set_healthy(false);
                continue;
            };
            let healthy = server.is_healthy();
            match result {
                Ok(()) => {
                    streak.passes += 1;
                    streak.failures = 0;
                    if !healthy && streak.passes >= check.rise {
                        server.set_healthy(true);
                        tracing::info!(pool = %pool.name(), server = %server.config.name, "health check passed {} times; server back in rotation", streak.passes);
                    }
                }
                Err(reason) => {
                    streak.failures += 1;
                    streak.passes = 0;
                    if healthy && streak.failures >= check.fall {
                        server.set_healthy(false);
                        tracing::warn!(pool = %pool.name(), server = %server.config.name, "health check failed {} times ({reason}); server out of rotation", streak.failures);
                    }
                }
            }
        }
    }
}
