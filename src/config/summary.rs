//! What `obleth check` prints: the configuration as obleth resolved it.

use super::*;

impl Config {
    /// A human-readable account of what the file resolved to, for `obleth check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "file: {}", self.source.display());
        let s = &self.server;
        let _ = writeln!(
            out,
            "server: threads={} grace={:?} trusted_proxies={:?} pid_file={} upgrade_socket={}",
            s.threads,
            s.grace,
            s.trusted_proxies,
            s.pid_file().display(),
            s.upgrade_socket.display()
        );
        for l in &self.listeners {
            let tls = if l.tls.is_some() {
                " tls(h2,http/1.1)"
            } else if l.h2c {
                " h2c"
            } else {
                ""
            };
            let c = &l.client;
            let proxy = l.proxy_protocol.as_ref().map_or(String::new(), |p| {
                format!(
                    " proxy_protocol(trusted={:?} timeout={:?})",
                    p.trusted, p.timeout
                )
            });
            let _ = writeln!(
                out,
                "listener {}: {}{tls}{proxy} http_request={:?} http_keep_alive={:?} client={:?} max_head_bytes={} min_body_rate={}",
                l.name, l.address, c.http_request, c.http_keep_alive, c.client, c.max_head_bytes, c.min_body_rate
            );
            for cert in l.tls.iter().flat_map(|t| &t.certificates) {
                let names = if cert.names.is_empty() {
                    "(names from the certificate)".to_string()
                } else {
                    cert.names.join(",")
                };
                let _ = writeln!(out, "  certificate {} for {names}", cert.cert.display());
            }
        }
        let _ = writeln!(
            out,
            "admin: {}  metrics: {}",
            self.admin_address, self.metrics_address
        );
        let _ = writeln!(
            out,
            "access_log: {:?} -> {}",
            self.access_log.format,
            self.access_log
                .path
                .as_ref()
                .map_or("stdout".into(), |p| p.display().to_string())
        );
        for p in &self.pools {
            let t = &p.timeouts;
            let _ = writeln!(
                out,
                "pool {}: {:?}, retries={}, timeouts connect={:?} read={:?} total={:?}{}",
                p.name,
                p.algorithm,
                p.retries,
                t.connect,
                t.read,
                t.total,
                p.tls
                    .as_ref()
                    .map_or(String::new(), |t| format!(", tls sni={}", t.sni))
            );
            if let Some(h) = &p.health_check {
                let _ = writeln!(
                    out,
                    "  health check: {:?} every {:?}, timeout {:?}, rise {} fall {}",
                    h.kind, h.interval, h.timeout, h.rise, h.fall
                );
            }
            for srv in &p.servers {
                let _ = writeln!(
                    out,
                    "  server {} ({}) weight={} max_connections={}",
                    srv.name,
                    srv.address,
                    srv.weight,
                    srv.max_connections.map_or("-".into(), |m| m.to_string())
                );
            }
        }
        for r in &self.routes {
            let action = match &r.action {
                Action::Proxy(p) => format!("proxy -> {}", p.pool),
                Action::Redirect { status, .. } => format!("redirect {status}"),
                Action::Respond(f) => format!("respond {}", f.status),
                Action::Llm(l) => format!("llm (max body {} bytes)", l.max_body),
            };
            let m = &r.matcher;
            let mut condition = if m.is_catch_all() {
                "any request".to_string()
            } else {
                format!(
                    "hosts={:?} path={:?} methods={:?} headers={} sources={:?}",
                    m.hosts,
                    m.path,
                    m.methods,
                    m.headers.len(),
                    m.sources
                )
            };
            if !r.deny_sources.is_empty() {
                let _ = write!(condition, " deny_source={:?}", r.deny_sources);
            }
            if let Some(l) = &r.rate_limit {
                let _ = write!(
                    condition,
                    " rate_limit={}/s+{} by {:?}",
                    l.requests_per_second, l.burst, l.by
                );
            }
            let _ = writeln!(out, "route {}: {condition} => {action}", r.name);
        }
        out
    }
}
