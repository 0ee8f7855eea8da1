//! Backends → pools: servers and their options (with `default-server`),
//! health checks, the balance algorithm, timeouts and retries.

use super::model::{HealthCheck, Pool, Server, UpstreamTls};
use super::parse::{Line, SectionKind};
use super::translate::{duration, opt_text, options, time, Context, Proxy};
use super::Notes;

/// Options of `server` and `default-server` that take an argument.
pub(super) const SERVER_ARGS: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "ca-file",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "client-sigalgs",
    "cookie",
    "crl-file",
    "crt",
    "curves",
    "downinter",
    "error-limit",
    "fall",
    "fastinter",
    "guid",
    "hash-key",
    "id",
    "init-addr",
    "init-state",
    "inter",
    "log-bufsize",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-conn-name",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "proto",
    "redir",
    "resolve-net",
    "resolve-opts",
    "resolve-prefer",
    "resolvers",
    "rise",
    "set-proxy-v2-tlv-fmt",
    "shard",
    "sigalgs",
    "slowstart",
    "sni",
    "socks4",
    "source",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "track",
    "usesrc",
    "verify",
    "verifyhost",
    "weight",
    "ws",
];

/// Server settings as the options of a `server` line (after its
/// `default-server` lines) give them.
#[derive(Debug, Default, Clone)]
pub(super) struct ServerOpts {
    pub(super) check: bool,
    pub(super) backup: bool,
    pub(super) disabled: bool,
    pub(super) ssl: bool,
    pub(super) weight: Option<u64>,
    pub(super) maxconn: Option<u64>,
    /// (value, line) of each health-check setting.
    pub(super) inter: Option<(u64, usize)>,
    pub(super) rise: Option<(u64, usize)>,
    pub(super) fall: Option<(u64, usize)>,
    pub(super) sni: Option<String>,
    pub(super) verify: Option<bool>,
}

pub(super) fn server_opts(lines: &[(&Line, usize)], notes: &mut Notes) -> ServerOpts {
    let mut o = ServerOpts::default();
    for (line, from) in lines {
        let prefix = if line.keyword() == "server" {
            format!("server {}", line.word(1))
        } else {
            "default-server".to_string()
        };
        for (word, arg) in options(&line.words[*from..], SERVER_ARGS) {
            let n = line.number;
            let d = format!("{prefix} {}", opt_text(word, arg));
            let number = |notes: &mut Notes| match arg.and_then(|a| a.parse::<u64>().ok()) {
                Some(v) => Some(v),
                None => {
                    notes.skipped(n, &d, "not a number");
                    None
                }
            };
            match word {
                "check" => o.check = true,
                "no-check" => o.check = false,
                "backup" => o.backup = true,
                "no-backup" => o.backup = false,
                "disabled" => o.disabled = true,
                "enabled" => o.disabled = false,
                "ssl" => o.ssl = true,
                "no-ssl" => o.ssl = false,
                "weight" => o.weight = number(notes),
                "maxconn" => {
                    o.maxconn = number(notes);
                    notes.approximated(n, &d, "at max_connections obleth skips the server instead of queueing (503 when no server is left)");
                }
                "inter" => match arg.and_then(time) {
                    Some(us) if us > 0 => o.inter = Some((us, n)),
                    _ => notes.skipped(n, &d, "not a time"),
                },
                "rise" => o.rise = number(notes).map(|v| (v, n)),
                "fall" => o.fall = number(notes).map(|v| (v, n)),
                "sni" => match arg.and_then(|a| a.strip_prefix("str(")).and_then(|a| a.strip_suffix(')')) {
                    Some(name) => o.sni = Some(name.to_string()),
                    None => notes.skipped(n, &d, "obleth sends one fixed SNI per pool (pools[].tls.sni); only sni str(NAME) is translated"),
                },
                "verify" => match arg {
                    Some("none") => o.verify = Some(false),
                    Some("required") => o.verify = Some(true),
                    _ => notes.skipped(n, &d, "expected none or required"),
                },
                "ca-file" | "crl-file" => notes.not_needed(n, &d, "obleth verifies server certificates against the system's CA certificates"),
                "verifyhost" => notes.approximated(n, &d, "obleth verifies the server certificate against the SNI name (pools[].tls.sni)"),
                "crt" => notes.skipped(n, &d, "obleth presents no client certificate to servers"),
                "fastinter" | "downinter" => notes.approximated(n, &d, "obleth checks every interval whatever the server's state"),
                "port" | "addr" | "check-sni" | "check-ssl" | "check-send-proxy" | "check-alpn" | "check-proto" | "agent-check" | "agent-port"
                | "agent-inter" | "agent-addr" | "agent-send" => notes.skipped(n, &d, "obleth checks the server's own address, over TLS exactly when the pool uses TLS"),
                "send-proxy" | "send-proxy-v2" | "send-proxy-v2-ssl" | "send-proxy-v2-ssl-cn" | "proxy-v2-options" | "set-proxy-v2-tlv-fmt" => {
                    notes.skipped(n, &d, "obleth does not send the PROXY protocol to servers; they see obleth's address and X-Forwarded-For")
                }
                "observe" | "on-error" | "error-limit" | "on-marked-down" | "on-marked-up" => notes.skipped(
                    n,
                    &d,
                    "obleth takes a server out when a connection to it fails (for 10 s, or until its checks pass)",
                ),
                "resolvers" | "resolve-prefer" | "resolve-opts" | "resolve-net" | "init-addr" => notes.not_needed(
                    n,
                    &d,
                    "obleth resolves server names when the file is loaded and at each reload (the first address)",
                ),
                "alpn" | "proto" | "npn" | "ws" => notes.skipped(n, &d, "obleth speaks HTTP/1.1 to servers"),
                "pool-max-conn" | "pool-purge-delay" | "pool-low-conn" | "max-reuse" | "pool-conn-name" => notes.not_needed(
                    n,
                    &d,
                    "idle server connections are server.upstream_keepalive_pool and pools[].timeouts.idle_keepalive",
                ),
                "ssl-min-ver" | "ssl-max-ver" | "ciphers" | "ciphersuites" | "curves" | "sigalgs" | "client-sigalgs" | "no-tls-tickets" | "no-sslv3"
                | "no-tlsv10" | "no-tlsv11" | "no-tlsv12" | "no-tlsv13" | "force-sslv3" | "force-tlsv10" | "force-tlsv11" | "force-tlsv12"
                | "force-tlsv13" | "allow-0rtt" => notes.not_needed(n, &d, "obleth uses the TLS library's defaults towards servers"),
                "cookie" => notes.skipped(n, &d, "obleth inserts no persistence cookie"),
                "slowstart" => notes.skipped(n, &d, "a server back in rotation gets its full weight at once"),
                "id" | "guid" => {}
                "minconn" | "maxqueue" => notes.skipped(n, &d, "obleth never queues requests"),
                _ => notes.skipped(n, &d, "obleth has no such server setting"),
            }
        }
    }
    o
}

/// A server address as written → (`host:port` as obleth takes it, whether
/// it had a port).
pub(super) fn server_address(text: &str) -> Result<(String, bool), String> {
    let a = text
        .strip_prefix("ipv4@")
        .or_else(|| text.strip_prefix("ipv6@"))
        .unwrap_or(text);
    if a.starts_with('/') || a.contains('@') {
        return Err("not a TCP address: obleth reaches servers over TCP only".into());
    }
    let (host, port) = if let Some(inner) = a.strip_prefix('[') {
        let close = inner.find(']').ok_or("`[` is not closed")?;
        let after = &inner[close + 1..];
        (
            format!("[{}]", &inner[..close]),
            after.strip_prefix(':').unwrap_or(after),
        )
    } else if a.parse::<std::net::Ipv6Addr>().is_ok() {
        (format!("[{a}]"), "")
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if h.contains(':') => (format!("[{h}]"), p),
            Some((h, p)) => (h.to_string(), p),
            None => (a.to_string(), ""),
        }
    };
    if host.is_empty() || host == "*" {
        return Err("a server needs a host".into());
    }
    if port.is_empty() {
        return Ok((host, false));
    }
    if port.starts_with('+') || port.starts_with('-') {
        return Err("a port relative to the client's is not supported".into());
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port"));
    }
    Ok((format!("{host}:{port}"), true))
}

pub(super) fn build_pool(p: &Proxy, ctx: &Context<'_>, notes: &mut Notes) -> Option<Pool> {
    struct Srv {
        line: Line,
        address: String,
        opts: ServerOpts,
    }
    let mut active: Vec<Srv> = Vec::new();
    let mut backups: Vec<Srv> = Vec::new();
    for (line, defaults) in &p.servers {
        let (n, t) = (line.number, line.text());
        let mut lines: Vec<(&Line, usize)> = defaults.iter().map(|d| (d, 1)).collect();
        lines.push((line, 3));
        if line.words.len() < 3 {
            notes.skipped(n, &t, "a server needs a name and an address");
            continue;
        }
        let opts = server_opts(&lines, notes);
        let (address, has_port) = match server_address(line.word(2)) {
            Ok(a) => a,
            Err(why) => {
                notes.skipped(n, &t, why);
                continue;
            }
        };
        if !has_port {
            notes.approximated(
                n,
                &format!("server {} {}", line.word(1), line.word(2)),
                "without a port HAProxy uses the port the client connected to; obleth uses 80, or 443 with TLS",
            );
        }
        if opts.disabled {
            notes.skipped(
                n,
                &t,
                "a disabled server is left out: obleth's file has no server state (PUT /api/v1/pools/{pool}/servers/{server} sets maint after start)",
            );
            continue;
        }
        if opts.weight == Some(0) {
            notes.skipped(n, &t, "weight 0 is left out: the file takes weights 1 to 1000 (the admin API sets 0 after start)");
            continue;
        }
        let srv = Srv {
            line: line.clone(),
            address,
            opts,
        };
        if srv.opts.backup {
            backups.push(srv);
        } else {
            active.push(srv);
        }
    }
    if active.is_empty() && !backups.is_empty() {
        for b in &backups {
            notes.approximated(
                b.line.number,
                &b.line.text(),
                "obleth has no backup servers; with no other server, this one serves all the time",
            );
        }
        active = backups;
    } else {
        for b in &backups {
            notes.skipped(
                b.line.number,
                &b.line.text(),
                "obleth has no backup servers: this one is left out (drain it or weight it through the admin API instead)",
            );
        }
    }
    if active.is_empty() {
        notes.approximated(
            p.header.number,
            &p.header.text(),
            "no server obleth can use: requests for this backend are answered 503, as HAProxy does",
        );
        return None;
    }
    // Servers with the same address become one, with their weights summed.
    let mut servers: Vec<Server> = Vec::new();
    for s in &active {
        let weight = s.opts.weight.unwrap_or(1);
        if let Some(twin) = servers.iter_mut().find(|o| o.address == s.address) {
            twin.weight = Some(twin.weight.unwrap_or(1) + weight);
            notes.approximated(s.line.number, &s.line.text(), "the same address as an earlier server: obleth takes one entry, with the weights added");
            continue;
        }
        servers.push(Server {
            address: s.address.clone(),
            weight: (weight != 1).then_some(weight.min(1000)),
            max_connections: s.opts.maxconn.filter(|m| *m > 0),
        });
    }

    // TLS is a pool setting.
    let first = &active[0].opts;
    let tls = first.ssl.then(|| UpstreamTls {
        sni: first.sni.clone(),
        verify: first.verify.filter(|v| !v),
    });
    for s in &active[1..] {
        if s.opts.ssl != first.ssl || s.opts.sni != first.sni || s.opts.verify != first.verify {
            notes.approximated(
                s.line.number,
                &s.line.text(),
                format!(
                    "TLS is set per pool in obleth: this server is reached as {} is",
                    active[0].line.word(1)
                ),
            );
        }
    }

    let health_check = health_check(
        p,
        &active
            .iter()
            .map(|s| (&s.line, &s.opts))
            .collect::<Vec<_>>(),
        notes,
    );
    let (algorithm, hash_key) = algorithm(p, notes);
    let mut pool = Pool {
        name: p.name.clone(),
        algorithm,
        hash_key,
        servers,
        tls,
        health_check,
        connect: None,
        read: None,
        write: None,
        retries: None,
        host_header: None,
        comment: vec![ctx.at(&p.header)],
    };
    for (name, (us, line)) in &p.s.timeouts {
        let text = format!("timeout {name} {}", duration(*us));
        if *us == 0 && ["connect", "server"].contains(&name.as_str()) {
            notes.approximated(
                *line,
                &text,
                "0 means no timeout in HAProxy; obleth needs one and keeps its default",
            );
            continue;
        }
        match name.as_str() {
            "connect" => pool.connect = Some(duration(*us)),
            "server" => {
                pool.read = Some(duration(*us));
                pool.write = Some(duration(*us));
            }
            "queue" => notes.not_needed(*line, &text, "obleth never queues requests for a server"),
            "tunnel" | "server-fin" | "tarpit" => {
                notes.skipped(*line, &text, "obleth has no such timeout")
            }
            _ => {}
        }
    }
    let retries = p.s.retries.map(|r| r.0).unwrap_or(3);
    if retries > 15 {
        if let Some((_, line)) = p.s.retries {
            notes.approximated(
                line,
                &format!("retries {retries}"),
                "obleth makes at most 15 retries",
            );
        }
    }
    pool.retries = Some(retries.min(15));
    Some(pool)
}

pub(super) fn health_check(
    p: &Proxy,
    servers: &[(&Line, &ServerOpts)],
    notes: &mut Notes,
) -> Option<HealthCheck> {
    let checked: Vec<&(&Line, &ServerOpts)> = servers.iter().filter(|(_, o)| o.check).collect();
    let &&(first_line, first) = checked.first()?;
    for (line, o) in servers {
        if !o.check {
            notes.approximated(
                line.number,
                &line.text(),
                "obleth checks every server of a pool; HAProxy does not check this one",
            );
        }
        if o.check
            && (o.inter.map(|v| v.0) != first.inter.map(|v| v.0)
                || o.rise.map(|v| v.0) != first.rise.map(|v| v.0)
                || o.fall.map(|v| v.0) != first.fall.map(|v| v.0))
        {
            notes.approximated(
                line.number,
                &line.text(),
                format!(
                    "checks are set per pool in obleth: this server is checked as {} is",
                    first_line.word(1)
                ),
            );
        }
    }
    let interval = first.inter.map_or(2_000_000, |v| v.0);
    let timeout = p.s.timeout("check").filter(|t| *t > 0).unwrap_or(interval);
    let mut check = HealthCheck {
        tcp: true,
        path: None,
        expect_status: None,
        interval: duration(interval),
        timeout: duration(timeout),
        rise: first.rise.map_or(2, |v| v.0.max(1)),
        fall: first.fall.map_or(3, |v| v.0.max(1)),
    };
    // The request: `option httpchk [METHOD] [URI] [VERSION]` or
    // `http-check send meth M uri U …`.
    let mut method = None;
    let mut path = None;
    let mut request_line = None;
    if let Some(line) = &p.s.httpchk {
        request_line = Some(line.clone());
        let args = &line.words[2..];
        match args.len() {
            0 => method = Some("OPTIONS".to_string()),
            1 => {
                method = Some("OPTIONS".to_string());
                path = Some(args[0].clone());
            }
            _ => {
                method = Some(args[0].clone());
                path = Some(args[1].clone());
                if args.len() > 2 {
                    notes.approximated(line.number, &line.text(), "obleth's check sends no extra headers; its Host is the pool's host_header, tls.sni or the first server's address");
                }
            }
        }
    }
    if let Some(line) = &p.s.check_send {
        request_line = Some(line.clone());
        for (word, arg) in options(
            &line.words[2..],
            &["meth", "uri", "ver", "uri-lf", "body", "body-lf"],
        ) {
            match (word, arg) {
                ("meth", Some(m)) => method = Some(m.to_string()),
                ("uri", Some(u)) => path = Some(u.to_string()),
                ("ver", _) => {}
                _ => notes.approximated(
                    line.number,
                    &line.text(),
                    format!(
                        "{}: obleth's check is a GET without headers or body",
                        opt_text(word, arg)
                    ),
                ),
            }
        }
        if method.is_none() {
            method = Some("GET".into());
        }
    }
    if let Some(line) = request_line {
        check.tcp = false;
        check.path = Some(path.unwrap_or_else(|| "/".into()));
        let m = method.unwrap_or_else(|| "GET".into());
        if !m.eq_ignore_ascii_case("GET") {
            notes.approximated(
                line.number,
                &line.text(),
                format!("obleth's health check is a GET, not {m}"),
            );
        }
        match &p.s.expect {
            Some(e) => {
                let words: Vec<&str> = e.words[2..].iter().map(String::as_str).collect();
                match words.as_slice() {
                    ["status", code] if code.parse::<u16>().is_ok() => check.expect_status = code.parse().ok(),
                    _ => notes.approximated(e.number, &e.text(), "obleth's check passes on one exact status (expect_status), 200 here"),
                }
            }
            None => notes.approximated(line.number, &line.text(), "HAProxy passes a check on any 2xx or 3xx status; obleth expects exactly 200 (expect_status)"),
        }
    } else if let Some(line) = &p.s.tcp_check {
        if line.word(1) == "tcp-check" {
            notes.approximated(
                line.number,
                &line.text(),
                "obleth's TCP check only connects; tcp-check send/expect rules are not translated",
            );
        }
    }
    Some(check)
}

pub(super) fn algorithm(p: &Proxy, notes: &mut Notes) -> (&'static str, Option<String>) {
    let Some(line) = &p.s.balance else {
        return ("round_robin", None);
    };
    let (n, t) = (line.number, line.text());
    let spec = line.word(1);
    let arg = |prefix: &str| {
        spec.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::to_string)
    };
    let hashed = |key: String| ("consistent_hash", Some(key));
    let out = match spec {
        "roundrobin" | "static-rr" => ("round_robin", None),
        "leastconn" => {
            notes.approximated(
                n,
                &t,
                "least_in_flight counts requests in flight from this process, not connections",
            );
            ("least_in_flight", None)
        }
        "random" => ("random", None),
        s if s.starts_with("random(") => {
            notes.approximated(n, &t, "obleth's random draws once by weight (random(N) draws N and takes the least loaded)");
            ("random", None)
        }
        "first" => {
            notes.approximated(n, &t, "obleth spreads requests over every server (round_robin); `first` fills servers in order up to their maxconn");
            ("round_robin", None)
        }
        "source" => hashed("client_ip".into()),
        s if s.starts_with("hdr(") => match arg("hdr(") {
            Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                if line.words.len() > 2 {
                    notes.approximated(
                        n,
                        &t,
                        "use_domain_only is not translated: the whole header value is hashed",
                    );
                }
                hashed(format!("header:{}", name.to_ascii_lowercase()))
            }
            _ => {
                notes.skipped(n, &t, "hdr() needs a header name; round_robin is used");
                ("round_robin", None)
            }
        },
        "hash" => {
            let expr = line.word(2);
            let inside = |prefix: &str| {
                expr.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(')'))
                    .map(str::to_string)
            };
            if let Some(c) = inside("req.cook(")
                .or_else(|| inside("req.cookie("))
                .or_else(|| inside("cook("))
            {
                hashed(format!("cookie:{c}"))
            } else if let Some(h) = inside("req.hdr(")
                .or_else(|| inside("hdr("))
                .filter(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok())
            {
                hashed(format!("header:{}", h.to_ascii_lowercase()))
            } else if expr == "src" {
                hashed("client_ip".into())
            } else {
                notes.approximated(n, &t, "obleth hashes only the client address, a header or a cookie: requests are spread round robin");
                ("round_robin", None)
            }
        }
        "uri" | "url_param" | "rdp-cookie" => {
            notes.approximated(n, &t, "obleth hashes only the client address, a header or a cookie: requests are spread round robin");
            ("round_robin", None)
        }
        s if s.starts_with("url_param") || s.starts_with("rdp-cookie") => {
            notes.approximated(n, &t, "obleth hashes only the client address, a header or a cookie: requests are spread round robin");
            ("round_robin", None)
        }
        _ => {
            notes.skipped(n, &t, "unknown algorithm; round_robin is used");
            ("round_robin", None)
        }
    };
    if out.0 == "consistent_hash" {
        if let Some(h) = &p.s.hash_type {
            if h.word(1) != "consistent" || h.words.len() > 2 {
                notes.approximated(
                    h.number,
                    &h.text(),
                    "obleth hashes onto a consistent (Ketama) ring with its own hash function",
                );
            }
        }
    } else if let Some(h) = &p.s.hash_type {
        if p.kind == SectionKind::Backend {
            notes.not_needed(
                h.number,
                &h.text(),
                "only hashing algorithms use a hash type",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_written_as_obleth_takes_them() {
        assert_eq!(
            server_address("10.0.0.1:8080").ok(),
            Some(("10.0.0.1:8080".to_string(), true))
        );
        assert_eq!(
            server_address("app.internal:80").ok(),
            Some(("app.internal:80".to_string(), true))
        );
        assert_eq!(
            server_address("10.0.0.1").ok(),
            Some(("10.0.0.1".to_string(), false))
        );
        assert_eq!(
            server_address("[2001:db8::1]:80").ok(),
            Some(("[2001:db8::1]:80".to_string(), true))
        );
        assert_eq!(
            server_address("::1").ok(),
            Some(("[::1]".to_string(), false))
        );
        assert!(server_address("10.0.0.1:+1").is_err());
        assert!(server_address("unix@/s").is_err());
    }
}
