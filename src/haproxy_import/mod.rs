//! `obleth import-haproxy FILE`: an `haproxy.cfg` → an obleth configuration
//! (YAML on stdout) and a list of what could not be translated exactly, one
//! `FILE:LINE: directive: why` line each.
//!
//! - `parse`: the file as HAProxy reads it: words (quotes, escapes,
//!   environment variables, comments) and sections, with line numbers.
//! - `acl`: ACLs and `if` / `unless` conditions → the tests an obleth route
//!   `match` makes (host, path, method, headers, source).
//! - `routes`: rule lists (`http-request`, `redirect`, `use_backend`,
//!   `default_backend`, a backend's own rules) → ordered routes.
//! - `translate`: `global`, `defaults`, `frontend`, `backend` and `listen`
//!   sections read and put together, noting what has no equivalent; with
//!   `rules` (ACLs and rule lines → route entries), `pools` (backends and
//!   servers) and `listeners` (`bind` lines and certificates).
//! - `model`: the obleth keys produced; `yaml`: the YAML writer.
//!
//! The import never invents a key obleth lacks. `accept-proxy` becomes
//! `listeners[].proxy_protocol` and several `crt` become
//! `listeners[].tls.certificates`, the first the default.

mod acl;
mod listeners;
mod model;
mod parse;
mod pools;
mod routes;
mod rules;
mod translate;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

/// Why an import produced no configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "{file}: no HTTP frontend or listen section to translate (obleth proxies HTTP only){notes}"
    )]
    NoFrontend {
        file: String,
        /// The report so far, one line each, which says why.
        notes: String,
    },
    #[error("{file}: no frontend or listen section named {name:?}; there are: {known}")]
    UnknownFrontend {
        file: String,
        name: String,
        known: String,
    },
    #[error("{file}: frontend {name:?} expands to more than {limit} routes; simplify its rules")]
    TooManyRoutes {
        file: String,
        name: String,
        limit: usize,
    },
}

/// How the import went for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Left out: obleth has no equivalent.
    NotTranslated,
    /// Translated, with a difference the operator should know.
    Approximated,
    /// Left out because obleth does it another way or does not need it.
    NotNeeded,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::NotTranslated => "not translated",
            Verdict::Approximated => "approximated",
            Verdict::NotNeeded => "not needed",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The line in haproxy.cfg (from 1).
    pub line: usize,
    /// The directive concerned, as written (shortened when long).
    pub directive: String,
    pub verdict: Verdict,
    pub why: String,
}

/// The notes of one import, in line order, without repeats.
#[derive(Debug, Default, Clone)]
pub struct Notes(Vec<Note>);

impl Notes {
    fn push(&mut self, line: usize, directive: &str, verdict: Verdict, why: String) {
        // One report line each.
        let why = why.split('\n').map(str::trim).collect::<Vec<_>>().join(" ");
        let note = Note {
            line,
            directive: directive.to_string(),
            verdict,
            why,
        };
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }

    pub fn skipped(&mut self, line: usize, directive: &str, why: impl Into<String>) {
        self.push(line, directive, Verdict::NotTranslated, why.into());
    }

    pub fn approximated(&mut self, line: usize, directive: &str, why: impl Into<String>) {
        self.push(line, directive, Verdict::Approximated, why.into());
    }

    pub fn not_needed(&mut self, line: usize, directive: &str, why: impl Into<String>) {
        self.push(line, directive, Verdict::NotNeeded, why.into());
    }

    /// Adds the notes of `other`.
    pub fn extend(&mut self, other: Notes) {
        for n in other.0 {
            self.push(n.line, &n.directive, n.verdict, n.why);
        }
    }

    /// The notes sorted by line (stable: notes of one line keep their order).
    pub fn list(&self) -> Vec<Note> {
        let mut v = self.0.clone();
        v.sort_by_key(|n| n.line);
        v
    }
}

/// What an import produced.
#[derive(Debug)]
pub struct Import {
    /// The obleth configuration.
    pub yaml: String,
    /// What was not translated exactly, in line order.
    pub notes: Vec<Note>,
    /// The file name notes are reported against, as given.
    pub file: String,
    pub listeners: usize,
    pub pools: usize,
    pub routes: usize,
}

impl Import {
    /// One report line: `FILE:LINE: directive: verdict: why`.
    pub fn report_line(&self, note: &Note) -> String {
        format!(
            "{}:{}: {}: {}: {}",
            self.file, note.line, note.directive, note.verdict, note.why
        )
    }
}

/// Options of an import.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Translate the routes of this frontend (or listen section); by
    /// default the one that uses the most backends.
    pub frontend: Option<String>,
}

/// Reads `path` and translates it, with this process's environment for
/// `${NAME}`.
pub fn import_file(path: &Path, options: &Options) -> Result<Import, ImportError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        file: file.clone(),
        source,
    })?;
    let env = |name: &str| std::env::var(name).ok();
    import_text(&text, &file, options, &env)
}

/// Translates `text`, read from `file` (the name used in notes and the
/// header comment).
pub fn import_text(
    text: &str,
    file: &str,
    options: &Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Import, ImportError> {
    let mut notes = Notes::default();
    let parsed = parse::parse(text, env, &mut notes);
    let read = |name: &str| -> Result<String, String> {
        std::fs::read_to_string(PathBuf::from(name)).map_err(|e| e.to_string())
    };
    let source_name = Path::new(file)
        .file_name()
        .map_or_else(|| file.to_string(), |n| n.to_string_lossy().into_owned());
    let ctx = translate::Context {
        file: file.to_string(),
        short: source_name,
        read: &read,
        frontend: options.frontend.clone(),
    };
    let output = match translate::translate(&parsed, &ctx, &mut notes) {
        Ok(output) => output,
        Err(ImportError::NoFrontend { file, .. }) => {
            let notes = notes
                .list()
                .iter()
                .map(|n| {
                    format!(
                        "\n{file}:{}: {}: {}: {}",
                        n.line, n.directive, n.verdict, n.why
                    )
                })
                .collect();
            return Err(ImportError::NoFrontend { file, notes });
        }
        Err(e) => return Err(e),
    };
    let notes = notes.list();
    let mut header = vec![
        format!("obleth configuration imported from {file} by `obleth import-haproxy`."),
        "Each listener, pool and route names the haproxy.cfg lines it comes from.".to_string(),
    ];
    if !notes.is_empty() {
        header.push(format!(
            "{} line(s) were not translated exactly: they are listed at the end of this file.",
            notes.len()
        ));
    }
    let footer: Vec<String> = if notes.is_empty() {
        Vec::new()
    } else {
        std::iter::once("Not translated exactly (also printed on standard error):".to_string())
            .chain(notes.iter().map(|n| {
                format!(
                    "{}:{}: {}: {}: {}",
                    ctx.short, n.line, n.directive, n.verdict, n.why
                )
                .replace('\n', "\\n")
            }))
            .collect()
    };
    let yaml = yaml::document(&header, &output.entries(), &footer);
    Ok(Import {
        yaml,
        notes,
        file: file.to_string(),
        listeners: output.listeners.len(),
        pools: output.pools.len(),
        routes: output.routes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Import {
        let env = |name: &str| (name == "APP_PORT").then(|| "8081".to_string());
        import_text(text, "/etc/haproxy/haproxy.cfg", &Options::default(), &env).expect("imports")
    }

    fn reported(import: &Import) -> Vec<(usize, Verdict)> {
        import.notes.iter().map(|n| (n.line, n.verdict)).collect()
    }

    /// The output must be a configuration obleth's own loader accepts.
    fn assert_valid(import: &Import) {
        let parsed = crate::config::Config::parse(&import.yaml, Path::new("import.yaml"), |_| None);
        assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), import.yaml);
    }

    const SMALL: &str = "\
global
    nbthread 2
    daemon
defaults
    mode http
    timeout client 20s
    timeout connect 3s
    timeout server 40s
listen app
    bind 127.0.0.1:8080
    acl api path_beg /api
    acl office src 10.0.0.0/8
    http-request deny deny_status 429 if api !office
    use_backend api if api
    server a1 \"127.0.0.1:${APP_PORT}\" check
backend api
    balance source
    server b1 127.0.0.1:9001 weight 2
    server b2 127.0.0.1:9002 weight 2
";

    #[test]
    fn a_listen_section_and_a_backend_import_into_a_valid_configuration() {
        let import = run(SMALL);
        assert_valid(&import);
        let y = &import.yaml;
        assert!(
            y.starts_with("# obleth configuration imported from /etc/haproxy/haproxy.cfg"),
            "{y}"
        );
        assert!(y.contains("server: { threads: 2 }"), "{y}");
        assert!(y.contains("  - name: app\n    address: 127.0.0.1:8080\n    timeouts: { http_request: 20s, http_keep_alive: 20s, client: 20s }\n"), "{y}");
        assert!(
            y.contains("servers: [{ address: 127.0.0.1:8081 }]"),
            "${{APP_PORT}} is expanded: {y}"
        );
        assert!(
            y.contains("    algorithm: consistent_hash\n    hash_key: client_ip\n"),
            "{y}"
        );
        assert!(y.contains("{ address: 127.0.0.1:9001, weight: 2 }"), "{y}");
        // The exception for `office` comes before the 429, then the API route.
        let order: Vec<&str> = y
            .lines()
            .filter_map(|l| l.strip_prefix("  - name: "))
            .collect();
        assert_eq!(
            order,
            ["app", "app", "api", "api", "deny", "api-2", "app"],
            "{y}"
        );
        assert!(
            y.contains(
                "match: { path: { prefix: /api }, source: 10.0.0.0/8 }\n    proxy: { pool: api }"
            ),
            "{y}"
        );
        assert_eq!(
            reported(&import),
            [
                (2, Verdict::Approximated),
                (3, Verdict::NotNeeded),
                (15, Verdict::Approximated)
            ]
        );
        assert_eq!(
            import.report_line(&import.notes[1]),
            "/etc/haproxy/haproxy.cfg:3: daemon: not needed: run obleth under a service manager (deploy/systemd/obleth.service) or in a container, which sets its user, files and restarts"
        );
    }

    const EDGE: &str = "\
defaults
    mode http
frontend fe
    bind :8443 ssl crt /certs/a.pem crt /certs/b.pem accept-proxy
    default_backend be
backend be
    server s 127.0.0.1:9000
";

    #[test]
    fn accept_proxy_and_several_certificates_have_the_agreed_shape() {
        let import = run(EDGE);
        let y = &import.yaml;
        assert!(
            y.contains(
                "    tls:\n      certificates:\n        - { cert: /certs/a.pem, key: /certs/a.pem, names: [] }\n        - { cert: /certs/b.pem, key: /certs/b.pem, names: [] }\n    proxy_protocol: { trusted: [0.0.0.0/0, \"::/0\"] }\n"
            ),
            "{y}"
        );
        let why: Vec<&str> = import.notes.iter().map(|n| n.why.as_str()).collect();
        assert!(
            why.iter().any(|w| w.contains("narrow `trusted`")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|w| w.contains("cannot read /certs/b.pem here")),
            "{why:?}"
        );
    }

    #[test]
    fn a_frontend_without_a_default_backend_answers_503_like_haproxy() {
        let import = run(
            "defaults\n  mode http\nfrontend fe\n  bind :8080\n  use_backend b if { hdr(host) -i b.example }\nbackend b\n  server s 127.0.0.1:1\n",
        );
        assert_valid(&import);
        assert!(
            import
                .yaml
                .contains("  - name: no-backend\n    respond:\n      status: 503\n"),
            "{}",
            import.yaml
        );
    }

    #[test]
    fn tcp_sections_and_unknown_keywords_are_reported_never_dropped() {
        let import = run(
            "frontend t\n  bind :5432\n  default_backend db\nbackend db\n  server p 10.0.0.1:5432\ndefaults\n  mode http\nfrontend w\n  bind :80\n  frobnicate yes\n  default_backend app\nbackend app\n  server a 10.0.0.2:80\n",
        );
        assert_valid(&import);
        let lines: Vec<usize> = import.notes.iter().map(|n| n.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 10], "{:?}", import.notes);
        assert!(
            import.notes[0].why.contains("TCP mode"),
            "{:?}",
            import.notes[0]
        );
    }

    #[test]
    fn a_file_without_an_http_frontend_is_an_error_naming_why() {
        let err = import_text(
            "backend b\n  mode http\n  server s 127.0.0.1:1\nfrontend f\n  mode tcp\n  bind :1\n",
            "x.cfg",
            &Options::default(),
            &|_| None,
        )
        .expect_err("no frontend");
        let text = err.to_string();
        assert!(text.starts_with("x.cfg: no HTTP frontend"), "{text}");
        assert!(
            text.contains("\nx.cfg:4: frontend f: not translated: mode tcp (line 5)"),
            "{text}"
        );
    }

    /// Odd and unsupported lines of every kind: the import must neither fail
    /// nor write a file obleth refuses.
    const KITCHEN_SINK: &str = r#"
global
    nbthread 0
    tune.bufsize 32768
    lua-load /etc/haproxy/x.lua
    setenv FOO bar
.if defined(HAPROXY_LOCALPEER)
    node edge-1
.else
    node edge-2
.endif
resolvers dns
    nameserver ns1 10.0.0.53:53
userlist admins
    user admin password x
defaults base
    mode http
    timeout client 0
    timeout connect 1500ms
    timeout queue 5s
    timeout tunnel 1h
    option http-server-close
    option forwardfor except 127.0.0.0/8
    option tcp-check
    balance hash req.cook(session)
    hash-type map-based
    default-server check inter 3s fastinter 1s send-proxy-v2
defaults from base
    retries 99
frontend odd from base
    bind :9090,:9091
    bind unix@/run/odd.sock
    bind :8000-8010
    bind [::]:8443 ssl crt-list /nonexistent/list.txt strict-sni
    bind :8444 crt /nonexistent/plain.pem
    capture request header Host len 32
    acl a path_reg (a)\1
    acl b hdr(x-a),lower foo
    acl c hdr_cnt(x-c) gt 3
    acl d hdr(x-d) -m len 3
    acl e src -f /nonexistent/nets.lst
    acl f path_dir api
    acl g url_beg /old
    http-request deny if a
    http-request deny if nope
    http-request deny if { path_beg /x
    http-request set-header X-Id %[uuid()]
    http-request set-header "Bad Name" v
    http-request replace-path ^/api(.*) \1
    http-request auth realm x if { path_beg /private }
    http-request return status 204 hdr X-A b if { path /empty }
    http-request return status 200 content-type "text/plain" lf-string "%[src]" if { path /ip }
    http-request deny deny_status 499 if { path /weird }
    http-request redirect location /%[src] if { path /src }
    http-request redirect location /{x} if { path /brace }
    http-request redirect code 305 location /y if { path /code }
    http-request allow if f
    http-response set-header X-Served-By edge
    http-response set-header X-Cond 1 if { status 200 }
    tcp-request connection reject if { src 192.0.2.1 }
    use_backend %[req.hdr(host),lower,map(/etc/haproxy/hosts.map)]
    use_backend ghost if g
    use_backend tcpb if f
    use_backend empty if { path /empty2 }
    use_backend be if { method PURGE } METH_GET
    use_backend be if g !{ path_end .html } || { hdr_beg(host) -i m. } { path_sub /x/ }
    default_backend be
backend be from base
    cookie SRV insert indirect nocache
    server-template web 3 10.0.9.1:80
    server a 127.0.0.1:80 weight 0
    server b 127.0.0.1:81 cookie b
    server b2 127.0.0.1:81
    server c ipv6@::1 check port 9000
    server d 127.0.0.1:+1
    server e 127.0.0.1:82 backup
backend empty
    mode http
    server x 127.0.0.1:83 disabled
backend tcpb
    mode tcp
    server t 127.0.0.1:5432
listen old 127.0.0.1:9999
    mode http
    server o 127.0.0.1:84 check
peers mypeers
    peer edge-1 10.0.0.1:1024
"#;

    #[test]
    fn odd_and_unsupported_lines_never_break_the_import() {
        let import = run(KITCHEN_SINK);
        assert_valid(&import);
        let lines: std::collections::BTreeSet<usize> =
            import.notes.iter().map(|n| n.line).collect();
        // Section headers, `.endif`, and lines translated as written
        // (a rule whose method tests cannot both hold matches nothing
        // in HAProxy either).
        let quiet = [
            2, 11, 16, 17, 19, 25, 28, 30, 42, 53, 57, 58, 64, 65, 67, 68, 78,
        ];
        for (i, line) in KITCHEN_SINK.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() || quiet.contains(&n) {
                continue;
            }
            assert!(
                lines.contains(&n),
                "line {n} ({line:?}) is not reported:\n{:#?}",
                import.notes
            );
        }
    }
}
