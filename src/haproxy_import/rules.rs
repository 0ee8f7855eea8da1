//! Rules: ACLs, `http-request`, `redirect`, `use_backend` and
//! `default_backend` lines → the entries the route compiler takes, and the
//! header edits that apply to every request of a frontend or backend.

use std::collections::HashSet;

use super::acl::{self, AclDef, Acls, Condition, PathTest, Test};
use super::model::HeaderEdits;
use super::parse::{Line, SectionKind};
use super::routes::{Entry, Final, Step};
use super::translate::{haproxy_page, Context, Proxy};
use super::Notes;

pub(super) fn read_acls(p: &Proxy, ctx: &Context<'_>, notes: &mut Notes) -> Acls {
    let mut acls = Acls::default();
    for line in &p.acls {
        let name = line.word(1);
        let expr = line.words.get(2..).unwrap_or(&[]);
        if name.is_empty() || expr.is_empty() {
            notes.skipped(
                line.number,
                &line.text(),
                "an acl needs a name and a criterion",
            );
            continue;
        }
        let (tests, approximations) = match acl::expression(expr, ctx.read) {
            Ok((t, a)) => (Ok(t), a),
            Err(e) => (Err(e), Vec::new()),
        };
        if let Err(why) = &tests {
            notes.skipped(
                line.number,
                &line.text(),
                format!("{why}; rules using it are not translated"),
            );
        }
        acls.define(
            name,
            AclDef {
                line: line.number,
                text: line.text(),
                tests,
                approximations,
            },
        );
    }
    acls
}

/// Where the condition of a rule starts (`if` / `unless`), or the end.
pub(super) fn cond_start(words: &[String], from: usize) -> usize {
    words
        .iter()
        .skip(from)
        .position(|w| w == "if" || w == "unless")
        .map_or(words.len(), |i| i + from)
}

/// Parses the condition of `line` from word `at`; reports and returns
/// `None` when it cannot be translated.
pub(super) fn rule_condition(
    line: &Line,
    at: usize,
    acls: &Acls,
    ctx: &Context<'_>,
    notes: &mut Notes,
) -> Option<Condition> {
    match acl::condition(
        line.words.get(at..).unwrap_or(&[]),
        acls,
        line.number,
        ctx.read,
    ) {
        Ok((cond, used)) => {
            for u in used {
                for a in u.approximations {
                    notes.approximated(u.line, &u.text, a);
                }
            }
            Some(cond)
        }
        Err(why) => {
            notes.skipped(line.number, &line.text(), format!("condition: {why}"));
            None
        }
    }
}

pub(super) fn entries_of(
    line: &Line,
    cond: Condition,
    step: Step,
    ctx: &Context<'_>,
) -> Vec<Entry> {
    cond.into_iter()
        .map(|conj| Entry {
            line: line.number,
            comment: ctx.at(line),
            text: line.text(),
            conj,
            step: step.clone(),
        })
        .collect()
}

/// A frontend's rules in the order HAProxy runs them.
pub(super) struct FrontendLists {
    /// `monitor-uri`, then `http-request` rules (`allow` skips the rest).
    pub(super) http: Vec<Entry>,
    /// `redirect` rules.
    pub(super) redirects: Vec<Entry>,
    /// `use_backend` rules, then the default backend (or 503).
    pub(super) backends: Vec<Entry>,
    pub(super) request_headers: HeaderEdits,
    pub(super) response_headers: HeaderEdits,
}

pub(super) fn frontend_entries(
    p: &Proxy,
    acls: &Acls,
    ctx: &Context<'_>,
    backends: &HashSet<String>,
    notes: &mut Notes,
) -> FrontendLists {
    let mut lists = FrontendLists {
        http: Vec::new(),
        redirects: Vec::new(),
        backends: Vec::new(),
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
    };
    if let Some(line) = &p.s.monitor_uri {
        let path = line.word(1).to_string();
        lists.http.push(Entry {
            line: line.number,
            comment: ctx.at(line),
            text: line.text(),
            conj: acl::Conjunct {
                pos: vec![acl::Literal {
                    test: Test::Path(PathTest::Exact(path)),
                    label: "monitor-uri".into(),
                }],
                neg: Vec::new(),
            },
            step: Step::Final(Final::Respond {
                stem: "monitor",
                status: 200,
                content_type: Some("text/html".into()),
                body: haproxy_page(200).unwrap_or_default().into(),
            }),
        });
    }
    let mut host_header = None;
    // Unconditional header edits (name, line), and whether an `allow`
    // came before one.
    let mut edited: Vec<(String, &Line)> = Vec::new();
    let mut allowed = false;
    for line in &p.http_request {
        let edit = matches!(line.word(1), "set-header" | "add-header" | "del-header")
            && cond_start(&line.words, 2) == line.words.len();
        if edit {
            edited.push((line.word(2).to_ascii_lowercase(), line));
            if allowed {
                notes.approximated(
                    line.number,
                    &line.text(),
                    "obleth edits every proxied request, also those an earlier `http-request allow` let through",
                );
            }
        }
        allowed |= line.word(1) == "allow";
        if let Some((step, at)) = http_request_step(
            line,
            ctx,
            &mut lists.request_headers,
            &mut host_header,
            notes,
        ) {
            if let Some(cond) = rule_condition(line, at, acls, ctx, notes) {
                lists.http.extend(entries_of(line, cond, step, ctx));
            }
        }
    }
    if let Some(h) = host_header {
        lists.request_headers.set("host", &h);
    }
    read_responses(p, &mut lists.response_headers, notes);
    for line in &p.redirects {
        let at = cond_start(&line.words, 1);
        match redirect(&line.words[1..at], line, notes) {
            Ok(f) => {
                if let Some(cond) = rule_condition(line, at, acls, ctx, notes) {
                    lists
                        .redirects
                        .extend(entries_of(line, cond, Step::Final(f), ctx));
                }
            }
            Err(why) => notes.skipped(line.number, &line.text(), why),
        }
    }
    for line in &p.use_backends {
        let name = line.word(1);
        if name.contains("%[") {
            notes.skipped(
                line.number,
                &line.text(),
                "a backend chosen by an expression cannot be written as fixed routes",
            );
            continue;
        }
        if !backends.contains(name) {
            notes.skipped(
                line.number,
                &line.text(),
                format!("no backend named {name:?}"),
            );
            continue;
        }
        if let Some(cond) = rule_condition(line, 2, acls, ctx, notes) {
            lists.backends.extend(entries_of(
                line,
                cond,
                Step::Final(Final::Backend(name.to_string())),
                ctx,
            ));
        }
    }
    // The default: default_backend, the listen section itself, or 503.
    let default = match &p.s.default_backend {
        Some(line) if backends.contains(line.word(1)) => {
            Some((line.clone(), Final::Backend(line.word(1).to_string())))
        }
        Some(line) => {
            notes.skipped(
                line.number,
                &line.text(),
                format!(
                    "no backend named {:?}; requests no rule takes get 503",
                    line.word(1)
                ),
            );
            None
        }
        None if p.kind == SectionKind::Listen && backends.contains(&p.name) => {
            Some((p.header.clone(), Final::Backend(p.name.clone())))
        }
        None => None,
    };
    let (line, step) = default.unwrap_or_else(|| {
        (
            p.header.clone(),
            Final::Respond {
                stem: "no-backend",
                status: 503,
                content_type: Some("text/html".into()),
                body: haproxy_page(503).unwrap_or_default().into(),
            },
        )
    });
    lists
        .backends
        .extend(entries_of(&line, acl::always(), Step::Final(step), ctx));
    report_edited_tests(&lists, &edited, notes);
    lists
}

/// HAProxy's rules after a header edit see the edited header; obleth
/// matches routes on the request as the client sent it. Reports the edits
/// a later rule tests.
fn report_edited_tests(lists: &FrontendLists, edited: &[(String, &Line)], notes: &mut Notes) {
    let tested = |e: &Entry, name: &str| {
        e.conj.pos.iter().chain(&e.conj.neg).any(|l| match &l.test {
            Test::Header { name: n, .. } => n == name,
            Test::Host(_) => name == "host",
            _ => false,
        })
    };
    for (name, line) in edited {
        // `http-request` rules after the edit; `redirect` and
        // `use_backend` rules always run after every `http-request` rule.
        let later = lists
            .http
            .iter()
            .filter(|e| e.line > line.number)
            .chain(&lists.redirects)
            .chain(&lists.backends)
            .find(|e| tested(e, name));
        if let Some(e) = later {
            notes.approximated(
                line.number,
                &line.text(),
                format!(
                    "line {} tests {name}: obleth matches routes on the request as the client sent it, before this edit",
                    e.line
                ),
            );
        }
    }
}

/// `http-response set-header` / `del-header` without a condition.
pub(super) fn read_responses(p: &Proxy, edits: &mut HeaderEdits, notes: &mut Notes) {
    for line in &p.http_response {
        let (n, t) = (line.number, line.text());
        let at = cond_start(&line.words, 2);
        let conditional = at < line.words.len();
        match line.word(1) {
            "set-header" | "add-header" | "del-header" if conditional => notes.skipped(
                n,
                &t,
                "obleth's header edits apply to every response of a route; put this one in a route of its own",
            ),
            "set-header" | "add-header" if line.words.len() == 4 && valid_edit(&line.words[2..]) => {
                if line.word(1) == "add-header" {
                    notes.approximated(n, &t, "obleth sets the header, replacing a value the server sent");
                }
                edits.set(line.word(2), line.word(3));
            }
            "del-header" if line.words.len() == 3 && valid_edit(&line.words[2..]) => edits.remove(line.word(2)),
            _ => notes.skipped(n, &t, "obleth's response edits are only fixed set-header and del-header"),
        }
    }
}

/// Whether `NAME [VALUE]` of a header edit is one obleth can write: a
/// header name and a fixed, valid value (no `%[…]` expression).
fn valid_edit(args: &[String]) -> bool {
    let name_ok = args
        .first()
        .is_some_and(|n| http::HeaderName::from_bytes(n.as_bytes()).is_ok());
    let value_ok = match args {
        [_] => true,
        [_, v] => !v.contains("%[") && http::HeaderValue::from_str(v).is_ok(),
        _ => false,
    };
    name_ok && value_ok
}

/// One `http-request` rule: the step it takes and where its condition
/// starts, or `None` when it is a header edit (applied to `edits`) or is
/// not translated (reported).
pub(super) fn http_request_step(
    line: &Line,
    ctx: &Context<'_>,
    edits: &mut HeaderEdits,
    host_header: &mut Option<String>,
    notes: &mut Notes,
) -> Option<(Step, usize)> {
    let (n, t) = (line.number, line.text());
    let action = line.word(1);
    let at = cond_start(&line.words, 2);
    let args = &line.words[2.min(line.words.len())..at];
    let conditional = at < line.words.len();
    match action {
        "deny" | "return" => match respond(action, args, ctx, line, notes) {
            Ok(f) => Some((Step::Final(f), at)),
            Err(why) => {
                notes.skipped(n, &t, why);
                None
            }
        },
        "redirect" => match redirect(args, line, notes) {
            Ok(f) => Some((Step::Final(f), at)),
            Err(why) => {
                notes.skipped(n, &t, why);
                None
            }
        },
        "allow" => Some((Step::Allow, at)),
        "set-header" | "add-header" | "del-header" if conditional => {
            notes.skipped(n, &t, "obleth's header edits apply to every request of a route; put this one in a route of its own");
            None
        }
        "set-header" | "add-header" | "del-header" if !valid_edit(args) => {
            notes.skipped(
                n,
                &t,
                "obleth's header edits take fixed, valid names and values",
            );
            None
        }
        "set-header" | "add-header" if args.len() == 2 => {
            if action == "add-header" {
                notes.approximated(
                    n,
                    &t,
                    "obleth sets the header, replacing a value the client sent",
                );
            }
            if args[0].eq_ignore_ascii_case("host") {
                *host_header = Some(args[1].clone());
            } else {
                edits.set(&args[0], &args[1]);
            }
            None
        }
        "del-header" if args.len() == 1 => {
            edits.remove(&args[0]);
            None
        }
        "set-path" | "replace-path" | "set-uri" | "replace-uri" | "set-query" | "set-pathq"
        | "replace-pathq" => {
            notes.skipped(n, &t, "obleth rewrites paths only by a prefix (routes[].proxy.rewrite_prefix); write that by hand if it fits");
            None
        }
        a if a.starts_with("track-sc") || a.starts_with("sc-") => {
            notes.skipped(
                n,
                &t,
                "obleth has no stick counters; a per-client request rate is routes[].rate_limit",
            );
            None
        }
        "auth" => {
            notes.skipped(n, &t, "obleth has no HTTP basic authentication");
            None
        }
        "tarpit" | "reject" | "silent-drop" => {
            notes.skipped(
                n,
                &t,
                "obleth answers refused requests at once; a `deny` becomes a respond route",
            );
            None
        }
        _ => {
            notes.skipped(n, &t, "obleth's routes have no such action");
            None
        }
    }
}

/// `deny [deny_status N] …` and `return [status N] [content-type T] [string S | file F] …`.
pub(super) fn respond(
    action: &str,
    args: &[String],
    ctx: &Context<'_>,
    line: &Line,
    notes: &mut Notes,
) -> Result<Final, String> {
    let deny = action == "deny";
    let mut status: u16 = if deny { 403 } else { 200 };
    let mut content_type: Option<String> = None;
    let mut body: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = |i: usize| {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| format!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "status" | "deny_status" => {
                status = arg(i)?
                    .parse()
                    .map_err(|_| format!("{:?} is not a status", args[i + 1]))?;
                i += 2;
            }
            "content-type" => {
                let v = arg(i)?;
                if http::HeaderValue::from_str(&v).is_err() {
                    return Err(format!("{v:?} is not a header value"));
                }
                content_type = Some(v);
                i += 2;
            }
            "string" => {
                body = Some(arg(i)?);
                i += 2;
            }
            "lf-string" => {
                let v = arg(i)?;
                if v.contains('%') {
                    return Err("a body built from request data (lf-string with %) cannot be a fixed response".into());
                }
                body = Some(v);
                i += 2;
            }
            "file" => {
                let f = arg(i)?;
                body = Some((ctx.read)(&f).map_err(|e| format!("cannot read {f}: {e}"))?);
                notes.approximated(line.number, &line.text(), format!("the content of {f} is copied into the route; a later change of the file does not apply"));
                i += 2;
            }
            "hdr" => {
                notes.skipped(
                    line.number,
                    &line.text(),
                    "obleth's fixed responses carry no extra headers; `hdr` is left out",
                );
                i += 3;
            }
            "default-errorfiles" => i += 1,
            "errorfile" | "errorfiles" | "lf-file" => {
                return Err(format!(
                    "`{}` answers are not translated: obleth writes the body itself",
                    args[i]
                ));
            }
            other => return Err(format!("{other:?} is not an option obleth translates")),
        }
    }
    if !(200..=599).contains(&status) {
        return Err(format!(
            "status {status} is not a final status obleth can answer"
        ));
    }
    let (content_type, body) = match body {
        Some(b) => (content_type, b),
        None if deny => match haproxy_page(status) {
            Some(page) => (Some("text/html".into()), page.to_string()),
            None => (content_type, String::new()),
        },
        None => (content_type, String::new()),
    };
    Ok(Final::Respond {
        stem: if deny { "deny" } else { "return" },
        status,
        content_type,
        body,
    })
}

/// `redirect location|prefix|scheme X [code N] [drop-query] …` → a redirect.
pub(super) fn redirect(args: &[String], line: &Line, notes: &mut Notes) -> Result<Final, String> {
    let (n, t) = (line.number, line.text());
    let kind = args.first().map(String::as_str).unwrap_or("");
    let value = args
        .get(1)
        .ok_or("a redirect needs location, prefix or scheme and a value")?;
    let mut status = 302;
    let mut drop_query = false;
    let mut i = 2;
    while i < args.len() {
        match args[i].as_str() {
            "code" => {
                status = args
                    .get(i + 1)
                    .and_then(|c| c.parse().ok())
                    .ok_or("`code` needs a status")?;
                i += 2;
            }
            "drop-query" => {
                drop_query = true;
                i += 1;
            }
            "append-slash" => {
                notes.approximated(
                    n,
                    &t,
                    "append-slash is not translated: the Location is not given a trailing slash",
                );
                i += 1;
            }
            "set-cookie" | "clear-cookie" => {
                notes.skipped(
                    n,
                    &t,
                    format!(
                        "{} is not translated: obleth's redirects set no cookie",
                        args[i]
                    ),
                );
                i += 2;
            }
            "ignore-empty" | "keep-query" => i += 1,
            other => {
                return Err(format!(
                    "{other:?} is not a redirect option obleth translates"
                ))
            }
        }
    }
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Err(format!(
            "code {status} is not one of 301, 302, 303, 307, 308"
        ));
    }
    let rest = if drop_query { "{path}" } else { "{uri}" };
    let location = match kind {
        "location" => template(value, line, notes)?,
        "prefix" if value == "/" => rest.to_string(),
        "prefix" => format!("{}{rest}", template(value, line, notes)?),
        "scheme" => {
            notes.approximated(
                n,
                &t,
                "obleth's {host} is the host name, lower-cased and without its port; HAProxy copies the Host header as sent",
            );
            format!("{}://{{host}}{rest}", template(value, line, notes)?)
        }
        other => {
            return Err(format!(
                "redirect {other:?}: expected location, prefix or scheme"
            ))
        }
    };
    Ok(Final::Redirect { status, location })
}

/// An HAProxy log-format string → an obleth redirect template.
pub(super) fn template(text: &str, line: &Line, notes: &mut Notes) -> Result<String, String> {
    if text.contains('{') || text.contains('}') {
        return Err(
            "a `{` or `}` in the location cannot be written in obleth's redirect template".into(),
        );
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("%%") {
            out.push('%');
            rest = after;
            continue;
        }
        let Some(inner) = rest.strip_prefix("%[") else {
            return Err(format!(
                "log-format variable {:?} has no obleth placeholder",
                &rest[..rest.len().min(4)]
            ));
        };
        let close = inner.find(']').ok_or("`%[` is not closed")?;
        let fetch = &inner[..close];
        rest = &inner[close + 1..];
        let placeholder = match fetch {
            "hdr(host)" | "req.hdr(host)" | "hdr(Host)" | "req.hdr(Host)" | "req.hdr(host),lower" | "hdr(host),lower" => {
                notes.approximated(
                    line.number,
                    &line.text(),
                    "obleth's {host} is the host name, lower-cased and without its port; HAProxy copies the Host header as sent",
                );
                "{host}"
            }
            "capture.req.uri" | "url" => "{uri}",
            "path" => "{path}",
            "query" if out.ends_with('?') => {
                out.pop();
                "{query}"
            }
            other => return Err(format!("%[{other}] has no obleth placeholder ({{scheme}}, {{host}}, {{path}}, {{query}}, {{uri}})")),
        };
        out.push_str(placeholder);
    }
    out.push_str(rest);
    Ok(out)
}

/// A backend's `http-request` rules, ending with the proxy step; and the
/// `Host` its `set-header Host` gives.
pub(super) fn backend_entries(
    p: &Proxy,
    acls: &Acls,
    ctx: &Context<'_>,
    notes: &mut Notes,
) -> (Vec<Entry>, Option<String>) {
    let mut entries = Vec::new();
    let mut request_headers = HeaderEdits::default();
    let mut host_header = None;
    let mut response_headers = HeaderEdits::default();
    // A listen section's rules run on its frontend side, unless it has none.
    if !p.has_frontend() {
        for line in &p.http_request {
            if let Some((step, at)) =
                http_request_step(line, ctx, &mut request_headers, &mut host_header, notes)
            {
                let step = match step {
                    // `allow` in a backend: on to the servers.
                    Step::Allow => Step::Final(Final::Proxy {
                        pool: p.name.clone(),
                        request_headers: HeaderEdits::default(),
                        response_headers: HeaderEdits::default(),
                    }),
                    s => s,
                };
                if let Some(cond) = rule_condition(line, at, acls, ctx, notes) {
                    entries.extend(entries_of(line, cond, step, ctx));
                }
            }
        }
        read_responses(p, &mut response_headers, notes);
        for line in &p.redirects {
            let at = cond_start(&line.words, 1);
            match redirect(&line.words[1..at], line, notes) {
                Ok(f) => {
                    if let Some(cond) = rule_condition(line, at, acls, ctx, notes) {
                        entries.extend(entries_of(line, cond, Step::Final(f), ctx));
                    }
                }
                Err(why) => notes.skipped(line.number, &line.text(), why),
            }
        }
    }
    // Edits of `allow` steps are the backend's too.
    for e in &mut entries {
        if let Step::Final(Final::Proxy {
            request_headers: r,
            response_headers: s,
            ..
        }) = &mut e.step
        {
            *r = request_headers.clone();
            *s = response_headers.clone();
        }
    }
    entries.extend(entries_of(
        &p.header,
        acl::always(),
        Step::Final(Final::Proxy {
            pool: p.name.clone(),
            request_headers,
            response_headers,
        }),
        ctx,
    ));
    (entries, host_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            number: 7,
            words: text.split_whitespace().map(str::to_string).collect(),
        }
    }

    #[test]
    fn redirects_become_location_templates() {
        let mut notes = Notes::default();
        let mut r = |text: &str| {
            let l = line(text);
            match redirect(&l.words[2..], &l, &mut notes) {
                Ok(Final::Redirect { status, location }) => Ok((status, location)),
                Ok(_) => Err("not a redirect".to_string()),
                Err(e) => Err(e),
            }
        };
        assert_eq!(
            r("http-request redirect scheme https code 301"),
            Ok((301, "https://{host}{uri}".into()))
        );
        assert_eq!(
            r("http-request redirect prefix https://x.org drop-query"),
            Ok((302, "https://x.org{path}".into()))
        );
        assert_eq!(
            r("http-request redirect prefix /"),
            Ok((302, "{uri}".into()))
        );
        assert_eq!(
            r("http-request redirect location https://y.org%[capture.req.uri] code 308"),
            Ok((308, "https://y.org{uri}".into()))
        );
        assert_eq!(
            r("http-request redirect location /p?%[query]"),
            Ok((302, "/p{query}".into()))
        );
        assert!(r("http-request redirect location /%[src]").is_err());
        assert!(r("http-request redirect location /{x}").is_err());
        assert!(r("http-request redirect scheme https code 305").is_err());
    }

    #[test]
    fn deny_answers_haproxys_page_and_return_its_string() {
        let ctx = Context {
            file: "f".into(),
            short: "f".into(),
            read: &|_| Err("no".into()),
            frontend: None,
        };
        let mut notes = Notes::default();
        let l = line("http-request deny");
        let deny = respond("deny", &[], &ctx, &l, &mut notes);
        assert!(
            matches!(&deny, Ok(Final::Respond { status: 403, body, .. }) if body.contains("403 Forbidden")),
            "{deny:?}"
        );
        let args: Vec<String> = [
            "status",
            "200",
            "content-type",
            "text/plain",
            "string",
            "ok\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ret = respond("return", &args, &ctx, &l, &mut notes);
        assert_eq!(
            ret,
            Ok(Final::Respond {
                stem: "return",
                status: 200,
                content_type: Some("text/plain".into()),
                body: "ok\n".into()
            })
        );
        assert!(respond(
            "deny",
            &["errorfile".to_string(), "/x".to_string()],
            &ctx,
            &l,
            &mut notes
        )
        .is_err());
    }
}
