//! Sections → obleth listeners, pools and routes.
//!
//! `defaults` settings are inherited by the proxies after them (or the one
//! named with `from`). Each `backend` (and `listen` with servers) becomes a
//! pool; one frontend's rules become the routes, because obleth's routes
//! apply to every listener. Other frontends contribute their listeners when
//! their rules translate to the same routes; otherwise they are left out
//! and reported. Every line is either translated or reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::acl::FileReader;
use super::listeners::build_listeners;
use super::model::*;
use super::parse::{Line, ParsedFile, Section, SectionKind};
use super::pools::build_pool;
use super::routes::{BackendRules, Compiler};
use super::rules::{backend_entries, frontend_entries, read_acls};
use super::{ImportError, Notes};

/// What the translation needs besides the file.
pub struct Context<'a> {
    /// The file as given, for messages.
    pub file: String,
    /// Its name without directories, for comments in the output.
    pub short: String,
    /// Reads files the configuration names (`-f` patterns, `crt-list`,
    /// `return file`).
    pub read: FileReader<'a>,
    pub frontend: Option<String>,
}

impl Context<'_> {
    pub(super) fn at(&self, line: &Line) -> String {
        format!("{}:{}: {}", self.short, line.number, line.text())
    }
}

/// HAProxy's built-in answer for `status` (what `deny` and a missing
/// backend send), as HAProxy 2.6 writes it; the content type is `text/html`.
pub fn haproxy_page(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "<html><body><h1>200 OK</h1>\nService ready.\n</body></html>\n",
        400 => "<html><body><h1>400 Bad request</h1>\nYour browser sent an invalid request.\n</body></html>\n",
        401 => "<html><body><h1>401 Unauthorized</h1>\nYou need a valid user and password to access this content.\n</body></html>\n",
        403 => "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n",
        404 => "<html><body><h1>404 Not Found</h1>\nThe resource could not be found.\n</body></html>\n",
        405 => "<html><body><h1>405 Method Not Allowed</h1>\nA request was made of a resource using a request method not supported by that resource\n</body></html>\n",
        407 => "<html><body><h1>407 Unauthorized</h1>\nYou need a valid user and password to access this content.\n</body></html>\n",
        408 => "<html><body><h1>408 Request Time-out</h1>\nYour browser didn't send a complete request in time.\n</body></html>\n",
        410 => "<html><body><h1>410 Gone</h1>\nThe resource is no longer available and will not be available again.\n</body></html>\n",
        413 => "<html><body><h1>413 Payload Too Large</h1>\nThe request entity exceeds the maximum allowed.\n</body></html>\n",
        425 => "<html><body><h1>425 Too Early</h1>\nYour browser sent early data.\n</body></html>\n",
        429 => "<html><body><h1>429 Too Many Requests</h1>\nYou have sent too many requests in a given amount of time.\n</body></html>\n",
        500 => "<html><body><h1>500 Internal Server Error</h1>\nAn internal server error occurred.\n</body></html>\n",
        501 => "<html><body><h1>501 Not Implemented</h1>\n.The server does not support the functionality required to fulfill the request.\n</body></html>\n",
        502 => "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response.\n</body></html>\n",
        503 => "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n",
        504 => "<html><body><h1>504 Gateway Time-out</h1>\nThe server didn't respond in time.\n</body></html>\n",
        _ => return None,
    })
}

/// An HAProxy time (`5000`, `5s`, `100ms`, `2m`; milliseconds without a
/// unit) in microseconds.
pub fn time(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Microseconds as an obleth duration, in the largest exact unit.
pub fn duration(us: u64) -> String {
    if us == 0 {
        return "0s".into();
    }
    if !us.is_multiple_of(1_000) {
        return format!("{us}us");
    }
    let ms = us / 1_000;
    if !ms.is_multiple_of(1_000) {
        return format!("{ms}ms");
    }
    let s = ms / 1_000;
    if s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `global` settings the translation uses.
#[derive(Debug, Default)]
pub(super) struct Global {
    pub(super) threads: Option<u64>,
    pub(super) grace: Option<String>,
    pub(super) crt_base: Option<String>,
    /// `tune.bufsize`, `tune.maxrewrite` and the line of the first.
    pub(super) bufsize: Option<(u64, usize)>,
    pub(super) maxrewrite: Option<u64>,
}

/// What a `defaults` section passes on (and a proxy may override).
#[derive(Debug, Clone, Default)]
pub(super) struct Settings {
    pub(super) mode: Option<(String, usize)>,
    /// Timeout name → (microseconds, line).
    pub(super) timeouts: BTreeMap<String, (u64, usize)>,
    pub(super) retries: Option<(u64, usize)>,
    pub(super) balance: Option<Line>,
    pub(super) hash_type: Option<Line>,
    pub(super) httpchk: Option<Line>,
    pub(super) check_send: Option<Line>,
    pub(super) expect: Option<Line>,
    pub(super) tcp_check: Option<Line>,
    pub(super) default_server: Vec<Line>,
    pub(super) httplog: bool,
    pub(super) default_backend: Option<Line>,
    pub(super) monitor_uri: Option<Line>,
}

impl Settings {
    pub(super) fn timeout(&self, name: &str) -> Option<u64> {
        self.timeouts.get(name).map(|t| t.0)
    }

    pub(super) fn is_http(&self) -> bool {
        self.mode.as_ref().is_some_and(|(m, _)| m == "http")
    }
}

/// One `frontend`, `backend` or `listen` as read.
#[derive(Debug, Clone)]
pub(super) struct Proxy {
    pub(super) kind: SectionKind,
    pub(super) name: String,
    pub(super) header: Line,
    pub(super) disabled: bool,
    pub(super) s: Settings,
    pub(super) binds: Vec<Line>,
    /// Each `server` line with the `default-server` lines in effect there.
    pub(super) servers: Vec<(Line, Vec<Line>)>,
    pub(super) acls: Vec<Line>,
    pub(super) http_request: Vec<Line>,
    pub(super) http_response: Vec<Line>,
    pub(super) redirects: Vec<Line>,
    pub(super) use_backends: Vec<Line>,
    /// Every line, for reporting a frontend that is left out.
    pub(super) lines: Vec<Line>,
}

impl Proxy {
    pub(super) fn has_frontend(&self) -> bool {
        matches!(self.kind, SectionKind::Frontend | SectionKind::Listen)
            && (!self.binds.is_empty() || self.kind == SectionKind::Frontend)
    }

    pub(super) fn has_backend(&self) -> bool {
        match self.kind {
            SectionKind::Backend => true,
            SectionKind::Listen => !self.servers.is_empty(),
            _ => false,
        }
    }

    pub(super) fn what(&self) -> &'static str {
        match self.kind {
            SectionKind::Listen => "listen section",
            SectionKind::Backend => "backend",
            _ => "frontend",
        }
    }
}

/// Splits option words into (option, argument) pairs.
pub(super) fn options<'w>(
    words: &'w [String],
    with_arg: &[&str],
) -> Vec<(&'w str, Option<&'w str>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if with_arg.contains(&w) {
            out.push((w, words.get(i + 1).map(String::as_str)));
            i += 2;
        } else {
            out.push((w, None));
            i += 1;
        }
    }
    out
}

pub(super) fn opt_text(word: &str, arg: Option<&str>) -> String {
    match arg {
        Some(a) => format!("{word} {a}"),
        None => word.to_string(),
    }
}

/// Translates the parsed file.
pub fn translate(
    file: &ParsedFile,
    ctx: &Context<'_>,
    notes: &mut Notes,
) -> Result<Output, ImportError> {
    let mut global = Global::default();
    let mut named_defaults: HashMap<String, Settings> = HashMap::new();
    let mut last_defaults = Settings::default();
    let mut proxies: Vec<Proxy> = Vec::new();
    for section in &file.sections {
        let base = || inherited(section, &named_defaults, &last_defaults);
        match section.kind {
            SectionKind::Global => read_global(section, &mut global, notes),
            SectionKind::Defaults => {
                let (base, missing) = base();
                report_missing_defaults(section, missing, notes);
                let proxy = read_proxy(section, base, notes);
                if let Some(name) = &section.name {
                    named_defaults.insert(name.clone(), proxy.s.clone());
                }
                last_defaults = proxy.s;
            }
            SectionKind::Frontend | SectionKind::Backend | SectionKind::Listen => {
                let (base, missing) = base();
                report_missing_defaults(section, missing, notes);
                proxies.push(read_proxy(section, base, notes));
            }
            SectionKind::Other => {
                let what = section.header.keyword().to_string();
                let why = match what.as_str() {
                    "resolvers" => "obleth resolves server names with the system resolver when the file is loaded and at each reload",
                    "userlist" => "obleth has no HTTP basic authentication",
                    "peers" => "obleth replicas share no stick tables",
                    "cache" => "obleth has no response cache",
                    "http-errors" => "obleth answers its own errors (`<status> <reason>`)",
                    "mailers" => "obleth sends no e-mail alerts; alert on its metrics instead (deploy/prometheus)",
                    "program" => "run other programs beside obleth with the service manager",
                    _ => "obleth has no equivalent section",
                };
                report_section(section, &format!("`{what}` section"), why, notes);
            }
        }
    }

    let mut out = Output {
        threads: global.threads,
        grace: global.grace.clone(),
        ..Output::default()
    };

    // Backends → pools and their rules.
    let mut pools: HashSet<String> = HashSet::new();
    let mut backends: HashMap<String, BackendRules> = HashMap::new();
    let names: HashSet<String> = proxies
        .iter()
        .filter(|p| p.has_backend())
        .map(|p| p.name.clone())
        .collect();
    for p in proxies.iter().filter(|p| p.has_backend()) {
        if p.disabled {
            report_section_lines(p, &format!("{} {} is disabled", p.what(), p.name), notes);
            continue;
        }
        if !p.s.is_http() {
            if !p.has_frontend() {
                report_tcp(p, notes);
            }
            continue;
        }
        // A listen section's ACLs serve its frontend side, read below.
        let acls = if p.has_frontend() {
            Default::default()
        } else {
            read_acls(p, ctx, notes)
        };
        let (entries, host_header) = backend_entries(p, &acls, ctx, notes);
        if let Some(mut pool) = build_pool(p, ctx, notes) {
            pool.host_header = host_header;
            pools.insert(pool.name.clone());
            out.pools.push(pool);
        }
        backends.insert(p.name.clone(), BackendRules { entries });
    }

    // Frontends: compile each, pick the one whose routes the file carries.
    let mut fronts: Vec<Front> = Vec::new();
    for p in proxies.iter().filter(|p| p.has_frontend()) {
        if p.disabled {
            report_section_lines(p, &format!("{} {} is disabled", p.what(), p.name), notes);
            continue;
        }
        if !p.s.is_http() {
            report_tcp(p, notes);
            continue;
        }
        let mut own = Notes::default();
        let acls = read_acls(p, ctx, &mut own);
        let lists = frontend_entries(p, &acls, ctx, &names, &mut own);
        let listeners = build_listeners(p, &global, ctx, &mut own);
        let routes = Compiler::new(
            &backends,
            &pools,
            lists.request_headers.clone(),
            lists.response_headers.clone(),
            &mut own,
        )
        .compile(&[&lists.http, &lists.redirects, &lists.backends])
        .map_err(|limit| ImportError::TooManyRoutes {
            file: ctx.file.clone(),
            name: p.name.clone(),
            limit,
        })?;
        fronts.push(Front {
            proxy: p,
            routes,
            listeners,
            notes: own,
        });
    }
    if fronts.is_empty() {
        return Err(ImportError::NoFrontend {
            file: ctx.file.clone(),
            notes: String::new(),
        });
    }
    let primary = match &ctx.frontend {
        Some(name) => fronts
            .iter()
            .position(|f| f.proxy.name == *name)
            .ok_or_else(|| ImportError::UnknownFrontend {
                file: ctx.file.clone(),
                name: name.clone(),
                known: fronts
                    .iter()
                    .map(|f| f.proxy.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        None => {
            let used = |f: &Front| {
                f.routes
                    .iter()
                    .filter_map(|r| match &r.action {
                        Action::Proxy { pool, .. } => Some(pool.clone()),
                        _ => None,
                    })
                    .collect::<HashSet<_>>()
                    .len()
            };
            let best = fronts.iter().map(used).max().unwrap_or(0);
            fronts.iter().position(|f| used(f) == best).unwrap_or(0)
        }
    };
    let signature = |routes: &[Route]| -> Vec<(Matcher, Action)> {
        routes
            .iter()
            .map(|r| (r.matcher.clone(), r.action.clone()))
            .collect()
    };
    let primary_sig = signature(&fronts[primary].routes);
    let primary_name = fronts[primary].proxy.name.clone();
    let primary_line = fronts[primary].proxy.header.number;
    for (i, f) in fronts.into_iter().enumerate() {
        if i == primary || signature(&f.routes) == primary_sig {
            notes.extend(f.notes);
            out.access_log_httplog |= f.proxy.s.httplog;
            for mut l in f.listeners {
                if out.listeners.iter().any(|o| o.address == l.address) {
                    notes.skipped(
                        l.line,
                        &l.address,
                        "another frontend binds this address already",
                    );
                    continue;
                }
                let stem = l.name.clone();
                let mut n = 2;
                while out.listeners.iter().any(|o| o.name == l.name) {
                    l.name = format!("{stem}-{n}");
                    n += 1;
                }
                out.listeners.push(l);
            }
            if i == primary {
                out.routes = f.routes;
            }
        } else {
            let p = f.proxy;
            let why = format!(
                "obleth's routes apply to every listener, and {} {} routes requests differently from frontend {primary_name} (line {primary_line}), whose routes this configuration carries; \
                 import it into a second obleth with `obleth import-haproxy --frontend {}`",
                p.what(),
                p.name,
                p.name
            );
            report_section_lines(p, &why, notes);
        }
    }
    let bound: Vec<(String, usize)> = out
        .listeners
        .iter()
        .map(|l| (l.address.clone(), l.line))
        .collect();
    avoid_admin_ports(&mut out, &bound, notes);
    Ok(out)
}

/// The settings a section inherits: from the defaults section it names,
/// else the last one before it. The name is returned when no such section
/// exists.
pub(super) fn inherited(
    section: &Section,
    named: &HashMap<String, Settings>,
    last: &Settings,
) -> (Settings, Option<String>) {
    match &section.from {
        Some(name) => match named.get(name) {
            Some(s) => (s.clone(), None),
            None => (Settings::default(), Some(name.clone())),
        },
        None => (last.clone(), None),
    }
}

pub(super) fn report_missing_defaults(
    section: &Section,
    missing: Option<String>,
    notes: &mut Notes,
) {
    if let Some(name) = missing {
        notes.skipped(
            section.header.number,
            &section.header.text(),
            format!("no defaults section named {name:?}; nothing is inherited"),
        );
    }
}

pub(super) struct Front<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) routes: Vec<Route>,
    pub(super) listeners: Vec<Listener>,
    pub(super) notes: Notes,
}

/// obleth's admin (`127.0.0.1:9090`) and metrics (`0.0.0.0:9091`)
/// listeners must not take a listener's port: move them when one does.
pub(super) fn avoid_admin_ports(
    out: &mut Output,
    listeners: &[(String, usize)],
    notes: &mut Notes,
) {
    let port = |a: &str| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let taken: HashSet<u16> = listeners.iter().filter_map(|(a, _)| port(a)).collect();
    let free = |start: u16| {
        (start..u16::MAX)
            .find(|p| !taken.contains(p))
            .unwrap_or(start)
    };
    for (address, line) in listeners {
        match port(address) {
            Some(9090) if out.admin.is_none() => {
                let a = format!("127.0.0.1:{}", free(19090));
                notes.approximated(*line, address, format!("port 9090 is obleth's admin listener by default; admin.address is set to {a}"));
                out.admin = Some(a);
            }
            Some(9091) if out.metrics.is_none() => {
                let m = format!("0.0.0.0:{}", free(19091));
                notes.approximated(*line, address, format!("port 9091 is obleth's metrics listener by default; metrics.address is set to {m}"));
                out.metrics = Some(m);
            }
            _ => {}
        }
    }
}

/// Reports the header and every line of a section left out.
pub(super) fn report_section(section: &Section, what: &str, why: &str, notes: &mut Notes) {
    notes.skipped(
        section.header.number,
        &section.header.text(),
        format!("{what}: {why}"),
    );
    for l in &section.lines {
        notes.skipped(
            l.number,
            &l.text(),
            format!("part of the {what} at line {}", section.header.number),
        );
    }
}

pub(super) fn report_section_lines(p: &Proxy, why: &str, notes: &mut Notes) {
    notes.skipped(p.header.number, &p.header.text(), why.to_string());
    for l in &p.lines {
        notes.skipped(
            l.number,
            &l.text(),
            format!(
                "part of {} {} (line {}), which is not translated",
                p.what(),
                p.name,
                p.header.number
            ),
        );
    }
}

pub(super) fn report_tcp(p: &Proxy, notes: &mut Notes) {
    let why = match &p.s.mode {
        Some((m, line)) => format!("mode {m} (line {line}): obleth proxies HTTP only"),
        None => "no `mode http` here or in defaults, so HAProxy runs it in TCP mode; obleth proxies HTTP only".into(),
    };
    report_section_lines(p, &why, notes);
}

pub(super) fn read_global(section: &Section, g: &mut Global, notes: &mut Notes) {
    let daemon = "run obleth under a service manager (deploy/systemd/obleth.service) or in a container, which sets its user, files and restarts";
    for line in &section.lines {
        let (n, t) = (line.number, line.text());
        let value = line.word(1);
        match line.keyword() {
            "nbthread" => match value.parse::<u64>() {
                Ok(v) if v >= 1 => {
                    g.threads = Some(v);
                    notes.approximated(
                        n,
                        &t,
                        format!("server.threads: {v}, which obleth runs for each listener (HAProxy's threads serve all its binds)"),
                    );
                }
                _ => notes.skipped(n, &t, "not a thread count"),
            },
            "hard-stop-after" => match time(value) {
                Some(us) if us > 0 => g.grace = Some(duration(us)),
                _ => notes.skipped(n, &t, "not a duration obleth takes"),
            },
            "crt-base" => g.crt_base = Some(value.to_string()),
            "tune.bufsize" => match value.parse::<u64>() {
                Ok(v) => g.bufsize = Some((v, n)),
                Err(_) => notes.skipped(n, &t, "not a size"),
            },
            "tune.maxrewrite" => g.maxrewrite = value.parse().ok(),
            "ca-base" => notes.not_needed(n, &t, "obleth verifies server certificates against the system's CA certificates; ca-file is not translated"),
            "maxconn" => notes.not_needed(n, &t, "obleth sets no process-wide connection limit (a pool's servers take max_connections each)"),
            "log" | "log-send-hostname" | "log-tag" => notes.not_needed(
                n,
                &t,
                "obleth writes its own log to standard error (log.format) and its access log to standard output or access_log.path; there is no syslog output",
            ),
            "stats" => notes.not_needed(
                n,
                &t,
                "obleth's runtime API is its admin listener (admin.address: /api/v1/pools) and its statistics are /metrics on metrics.address",
            ),
            "user" | "group" | "uid" | "gid" | "daemon" | "chroot" | "pidfile" | "master-worker" | "ulimit-n" | "nbproc" | "cpu-map" | "quiet"
            | "zero-warning" | "insecure-fork-wanted" | "set-dumpable" | "expose-experimental-directives" | "node" | "description" => {
                notes.not_needed(n, &t, daemon)
            }
            k if k.starts_with("ssl-default-") || k == "ssl-dh-param-file" || k.starts_with("tune.ssl.") => notes.not_needed(
                n,
                &t,
                "obleth's TLS listeners use the Mozilla \"intermediate\" profile (TLS 1.2 and 1.3, its ciphers); towards servers the TLS library's defaults",
            ),
            "server-state-file" | "server-state-base" => notes.not_needed(
                n,
                &t,
                "server state set through obleth's admin API lasts until restart; put lasting changes in the file",
            ),
            "spread-checks" => notes.not_needed(n, &t, "obleth checks all servers of a pool concurrently every interval"),
            k if k.starts_with("tune.") || k.starts_with("h1-") || k.starts_with("h2-") => {
                notes.not_needed(n, &t, "obleth has no such tuning setting")
            }
            "setenv" | "presetenv" | "resetenv" | "unsetenv" => notes.skipped(
                n,
                &t,
                "obleth reads no environment variables from the file; the import expands ${NAME} from its own environment",
            ),
            "lua-load" | "lua-load-per-thread" | "lua-prepend-path" => notes.skipped(n, &t, "obleth runs no Lua"),
            _ => notes.skipped(n, &t, "obleth has no equivalent global setting"),
        }
    }
    if let Some((size, line)) = g.bufsize {
        let rewrite = g.maxrewrite.unwrap_or_else(|| (size / 2).min(1024));
        let head = size.saturating_sub(rewrite).clamp(1024, 1 << 20);
        notes.approximated(
            line,
            &format!("tune.bufsize {size}"),
            format!("the largest request head is listeners[].max_head_bytes: {head} (tune.bufsize minus tune.maxrewrite); a longer one is answered 431"),
        );
        g.bufsize = Some((head, line));
    }
}

/// Keywords HAProxy accepts only in sections with a frontend side.
pub(super) const FRONTEND_ONLY: &[&str] = &[
    "bind",
    "use_backend",
    "monitor-uri",
    "monitor",
    "capture",
    "declare",
];
/// Keywords HAProxy accepts only in sections with a backend side.
pub(super) const BACKEND_ONLY: &[&str] = &[
    "server",
    "balance",
    "hash-type",
    "http-check",
    "cookie",
    "server-template",
    "dispatch",
    "fullconn",
    "http-reuse",
];
/// Keywords a `defaults` section does not take here.
pub(super) const NOT_IN_DEFAULTS: &[&str] = &[
    "bind",
    "server",
    "acl",
    "use_backend",
    "http-request",
    "http-response",
    "redirect",
    "server-template",
];

pub(super) fn read_proxy(section: &Section, inherited: Settings, notes: &mut Notes) -> Proxy {
    let mut p = Proxy {
        kind: section.kind,
        name: section.name.clone().unwrap_or_default(),
        header: section.header.clone(),
        disabled: false,
        s: inherited,
        binds: Vec::new(),
        servers: Vec::new(),
        acls: Vec::new(),
        http_request: Vec::new(),
        http_response: Vec::new(),
        redirects: Vec::new(),
        use_backends: Vec::new(),
        lines: section.lines.clone(),
    };
    // Backend default-server lines apply to the servers after them, on
    // top of the defaults section's.
    let kind = section.kind;
    if kind == SectionKind::Listen {
        // `listen NAME ADDRESS`: the old way to write a bind.
        if let Some(address) = section.header.words.get(2).filter(|w| *w != "from") {
            p.binds.push(Line {
                number: section.header.number,
                words: vec!["bind".into(), address.clone()],
            });
        }
    }
    for line in &section.lines {
        let (n, t) = (line.number, line.text());
        let k = line.keyword();
        let in_kind = match kind {
            SectionKind::Frontend => "a frontend",
            SectionKind::Backend => "a backend",
            SectionKind::Defaults => "a defaults section",
            _ => "",
        };
        let wrong = (kind == SectionKind::Backend && FRONTEND_ONLY.contains(&k))
            || (kind == SectionKind::Frontend
                && (BACKEND_ONLY.contains(&k) || k == "default-server"))
            || (kind == SectionKind::Defaults && NOT_IN_DEFAULTS.contains(&k));
        if wrong {
            notes.skipped(n, &t, format!("HAProxy does not take `{k}` in {in_kind}"));
            continue;
        }
        match k {
            "mode" => p.s.mode = Some((line.word(1).to_string(), n)),
            "timeout" => {
                let name = line.word(1);
                let known = [
                    "client", "http-request", "http-keep-alive", "connect", "server", "check", "queue", "tunnel", "client-fin", "server-fin",
                    "tarpit",
                ];
                if !known.contains(&name) {
                    notes.skipped(n, &t, "obleth has no such timeout");
                    continue;
                }
                match time(line.word(2)) {
                    Some(us) => {
                        p.s.timeouts.insert(name.to_string(), (us, n));
                    }
                    None => notes.skipped(n, &t, "not a time HAProxy takes"),
                }
            }
            "retries" => match line.word(1).parse::<u64>() {
                Ok(v) => p.s.retries = Some((v, n)),
                Err(_) => notes.skipped(n, &t, "not a number"),
            },
            "balance" => p.s.balance = Some(line.clone()),
            "hash-type" => p.s.hash_type = Some(line.clone()),
            "default-server" => p.s.default_server.push(line.clone()),
            "server" => p.servers.push((line.clone(), p.s.default_server.clone())),
            "bind" => p.binds.push(line.clone()),
            "acl" => p.acls.push(line.clone()),
            "http-request" => p.http_request.push(line.clone()),
            "http-response" => p.http_response.push(line.clone()),
            "redirect" => p.redirects.push(line.clone()),
            "use_backend" => p.use_backends.push(line.clone()),
            "default_backend" => p.s.default_backend = Some(line.clone()),
            "monitor-uri" => p.s.monitor_uri = Some(line.clone()),
            "http-check" => match line.word(1) {
                "send" => p.s.check_send = Some(line.clone()),
                "expect" => p.s.expect = Some(line.clone()),
                "connect" if line.words.len() == 2 => {}
                _ => notes.skipped(n, &t, "obleth's HTTP check is one GET and one expected status"),
            },
            "option" => read_option(&mut p, line, notes),
            "no" => notes.skipped(n, &t, "obleth has no such option to turn off"),
            "disabled" => p.disabled = true,
            "enabled" | "description" | "id" => {}
            "log" => notes.not_needed(
                n,
                &t,
                "obleth writes its access log to standard output or access_log.path (no syslog)",
            ),
            "log-format" | "log-format-sd" | "error-log-format" | "log-tag" => {
                notes.skipped(n, &t, "obleth's access log has two fixed formats, httplog and json (access_log.format)")
            }
            "maxconn" | "fullconn" | "backlog" | "rate-limit" => notes.not_needed(
                n,
                &t,
                "obleth limits no connections per listener; servers take pools[].servers[].max_connections",
            ),
            "http-reuse" => notes.not_needed(n, &t, "obleth reuses idle server connections (server.upstream_keepalive_pool)"),
            "errorfile" | "errorfiles" | "errorloc" | "errorloc302" | "errorloc303" | "http-error" => {
                notes.skipped(n, &t, "obleth answers its own errors (`<status> <reason>`, text/plain)")
            }
            "unique-id-format" => notes.approximated(
                n,
                &t,
                "obleth gives every request an X-Request-Id: the client's (1-128 visible characters) or 32 random hex digits",
            ),
            "unique-id-header" if line.word(1).eq_ignore_ascii_case("x-request-id") => {
                notes.approximated(n, &t, "obleth always sends X-Request-Id to servers and returns it to clients")
            }
            "stats" => notes.not_needed(
                n,
                &t,
                "obleth's statistics are /metrics on metrics.address and its runtime API is the admin listener (admin.address)",
            ),
            "stick-table" | "stick" | "tcp-request" | "tcp-response" => notes.skipped(
                n,
                &t,
                "obleth has no stick tables or TCP rules; a per-client request rate is routes[].rate_limit",
            ),
            "cookie" => notes.skipped(
                n,
                &t,
                "obleth inserts no persistence cookie; `algorithm: consistent_hash` with `hash_key: cookie:NAME` keeps a client on one server by an existing cookie",
            ),
            "compression" => notes.skipped(n, &t, "obleth does not compress responses"),
            "capture" | "declare" => notes.skipped(n, &t, "obleth's access log has no captured headers"),
            "monitor" => notes.skipped(n, &t, "obleth's readiness is /readyz on the admin listener"),
            "filter" => notes.skipped(n, &t, "obleth has no filters of this kind"),
            "source" | "dispatch" | "server-template" | "use-server" | "force-persist" | "ignore-persist" | "persist" | "external-check"
            | "load-server-state-from-file" | "server-state-file-name" | "http-send-name-header" | "email-alert" | "grace" => {
                notes.skipped(n, &t, "obleth has no equivalent")
            }
            _ => notes.skipped(n, &t, "obleth has no equivalent"),
        }
    }
    p
}

pub(super) fn read_option(p: &mut Proxy, line: &Line, notes: &mut Notes) {
    let (n, t) = (line.number, line.text());
    match line.word(1) {
        "httpchk" => p.s.httpchk = Some(line.clone()),
        "httplog" => {
            p.s.httplog = true;
            if line.words.len() > 2 {
                notes.approximated(n, &t, "obleth's httplog format has its own field order (conf/README.md, Access log format)");
            }
        }
        "forwardfor" => {
            if line.words.len() > 2 {
                notes.approximated(
                    n,
                    &t,
                    "obleth always sets X-Forwarded-For to the client address (extending it for server.trusted_proxies); `except`, `header` and `if-none` are not translated",
                );
            }
        }
        "redispatch" => {}
        "tcp-check" => p.s.tcp_check = Some(line.clone()),
        "ssl-hello-chk" | "mysql-check" | "pgsql-check" | "redis-check" | "smtpchk" | "ldap-check" | "spop-check" | "external-check" => {
            p.s.tcp_check = Some(line.clone());
            notes.approximated(n, &t, "obleth checks such servers by connecting (health_check kind tcp)");
        }
        "http-keep-alive" | "http-server-close" | "httpclose" | "forceclose" | "http-pretend-keepalive" | "http-tunnel" | "http-no-delay"
        | "splice-auto" | "splice-request" | "splice-response" | "tcpka" | "clitcpka" | "srvtcpka" | "nolinger" | "contstats"
        | "http-use-htx" | "independent-streams" | "http-buffer-request" | "http-restrict-req-hdr-names" | "abortonclose" | "allbackups"
        | "prefer-last-server" | "persist" => notes.not_needed(
            n,
            &t,
            "obleth keeps client and server connections alive and reuses idle server connections; this connection behaviour is not configurable",
        ),
        "dontlognull" | "dontlog-normal" | "log-separate-errors" | "log-health-checks" | "tcplog" | "httpslog" | "logasap" | "socket-stats" => {
            notes.not_needed(n, &t, "obleth logs every request in its access log (access_log.format httplog or json, or off)")
        }
        "originalto" => notes.skipped(n, &t, "obleth sends X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host, not X-Original-To"),
        _ => notes.skipped(n, &t, "obleth has no equivalent option"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_haproxys_and_durations_obleths() {
        assert_eq!(time("5000"), Some(5_000_000));
        assert_eq!(time("50s"), Some(50_000_000));
        assert_eq!(time("100ms"), Some(100_000));
        assert_eq!(time("2m"), Some(120_000_000));
        assert_eq!(time("5x"), None);
        assert_eq!(duration(5_000_000), "5s");
        assert_eq!(duration(120_000_000), "2m");
        assert_eq!(duration(3_600_000_000), "1h");
        assert_eq!(duration(1_500_000), "1500ms");
        assert_eq!(duration(250), "250us");
    }
}
