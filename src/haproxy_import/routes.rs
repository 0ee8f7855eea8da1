//! HAProxy's rule lists → obleth's ordered routes.
//!
//! A frontend runs its `http-request` rules in order, then its `redirect`
//! rules, then `use_backend`, then `default_backend`; a backend chosen so
//! runs its own `http-request` rules and proxies. obleth tries routes in
//! order and the first whose `match` holds decides. Each rule case (one
//! conjunct of its condition) becomes a route whose match is the AND of
//! its tests and of the tests that led to it. A negated test obleth cannot
//! write (`!office` on a source) becomes an *exception*: before the rule's
//! route come routes for the requests where the test holds, doing what the
//! rules after it would do for them.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::acl::{Conjunct, HeaderTest, Literal, PathTest, Test};
use super::model::{Action, HeaderEdits, Matcher, Route};
use super::Notes;

/// One rule case: a conjunct of a rule's condition and what it does.
#[derive(Debug, Clone)]
pub struct Entry {
    pub line: usize,
    /// The rule as written, `FILE:LINE: …`, for route comments.
    pub comment: String,
    /// The rule's words, for notes.
    pub text: String,
    pub conj: Conjunct,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A final action.
    Final(Final),
    /// `http-request allow`: skip the rest of this rule list.
    Allow,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Final {
    /// `use_backend` / `default_backend`: run the backend's rules, then proxy.
    Backend(String),
    /// Proxy to the pool (the end of a backend's rules).
    Proxy {
        pool: String,
        request_headers: HeaderEdits,
        response_headers: HeaderEdits,
    },
    Respond {
        /// The route name's stem: `deny`, `return`, `monitor`, `no-backend`.
        stem: &'static str,
        status: u16,
        content_type: Option<String>,
        body: String,
    },
    Redirect {
        status: u16,
        location: String,
    },
}

/// A backend as routes see it: its `http-request` rules, ending with the
/// proxy step (or a 503 when it has no server obleth can use).
#[derive(Debug, Clone)]
pub struct BackendRules {
    pub entries: Vec<Entry>,
}

/// Most routes one frontend may expand into.
pub const MAX_ROUTES: usize = 1000;

/// What `cond.and(test)` found.
#[derive(Debug, PartialEq)]
enum Meet {
    Holds,
    Never,
    Cannot(String),
}

/// The tests a route accumulates; `None` means unconstrained.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ctx {
    hosts: Option<Vec<String>>,
    path: Option<PathTest>,
    methods: Option<Vec<String>>,
    headers: Vec<(String, HeaderTest)>,
    sources: Option<Vec<IpNet>>,
}

impl Ctx {
    fn and(&mut self, test: &Test) -> Meet {
        match test {
            Test::Always(true) => Meet::Holds,
            Test::Always(false) => Meet::Never,
            Test::Host(patterns) => {
                let next = match &self.hosts {
                    None => dedup(patterns.clone()),
                    Some(have) => dedup(
                        have.iter()
                            .flat_map(|a| patterns.iter().filter_map(move |b| meet_host(a, b)))
                            .collect(),
                    ),
                };
                set_or_never(&mut self.hosts, next)
            }
            Test::Method(methods) => {
                let next = match &self.methods {
                    None => dedup(methods.clone()),
                    Some(have) => have
                        .iter()
                        .filter(|m| methods.contains(m))
                        .cloned()
                        .collect(),
                };
                set_or_never(&mut self.methods, next)
            }
            Test::Source(nets) => {
                let next = match &self.sources {
                    None => nets.clone(),
                    Some(have) => {
                        let mut out = Vec::new();
                        for a in have {
                            for b in nets {
                                if a.contains(b) {
                                    out.push(*b);
                                } else if b.contains(a) {
                                    out.push(*a);
                                }
                            }
                        }
                        out.dedup();
                        out
                    }
                };
                set_or_never(&mut self.sources, next)
            }
            Test::Path(p) => match &self.path {
                None => {
                    self.path = Some(p.clone());
                    Meet::Holds
                }
                Some(have) => match meet_path(have, p) {
                    Ok(Some(both)) => {
                        self.path = Some(both);
                        Meet::Holds
                    }
                    Ok(None) => Meet::Never,
                    Err(why) => Meet::Cannot(why),
                },
            },
            Test::Header { name, test } => {
                let same: Vec<HeaderTest> = self
                    .headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, t)| t.clone())
                    .collect();
                if same.contains(test) {
                    return Meet::Holds;
                }
                let absent = same.contains(&HeaderTest::Absent);
                match test {
                    // Absent next to any test that needs the header.
                    HeaderTest::Absent if !same.is_empty() => return Meet::Never,
                    _ if absent => return Meet::Never,
                    // A value test already implies presence.
                    HeaderTest::Present if !same.is_empty() => return Meet::Holds,
                    HeaderTest::Equals(_) | HeaderTest::Regex(_) => self
                        .headers
                        .retain(|(n, t)| !(n == name && *t == HeaderTest::Present)),
                    _ => {}
                }
                self.headers.push((name.clone(), test.clone()));
                Meet::Holds
            }
        }
    }

    fn and_all(&mut self, literals: &[Literal]) -> Meet {
        for l in literals {
            match self.and(&l.test) {
                Meet::Holds => {}
                other => return other,
            }
        }
        Meet::Holds
    }

    pub fn matcher(&self) -> Matcher {
        Matcher {
            hosts: self.hosts.clone().unwrap_or_default(),
            path: self.path.clone(),
            methods: self.methods.clone().unwrap_or_default(),
            headers: self.headers.clone(),
            sources: self
                .sources
                .iter()
                .flatten()
                .map(|n| {
                    if n.prefix_len() == n.max_prefix_len() {
                        n.addr().to_string()
                    } else {
                        n.to_string()
                    }
                })
                .collect(),
        }
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

fn set_or_never<T>(slot: &mut Option<Vec<T>>, next: Vec<T>) -> Meet {
    if next.is_empty() {
        Meet::Never
    } else {
        *slot = Some(next);
        Meet::Holds
    }
}

/// Both host patterns at once (`name` or `*.suffix`), if any name fits both.
fn meet_host(a: &str, b: &str) -> Option<String> {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => (a == b).then(|| a.to_string()),
        (Some(sa), None) => (b.len() > sa.len() && b.ends_with(sa)).then(|| b.to_string()),
        (None, Some(sb)) => (a.len() > sb.len() && a.ends_with(sb)).then(|| a.to_string()),
        (Some(sa), Some(sb)) => {
            if sa.ends_with(sb) {
                Some(a.to_string())
            } else if sb.ends_with(sa) {
                Some(b.to_string())
            } else {
                None
            }
        }
    }
}

/// Both path tests at once: `Ok(None)` when no path fits both, `Err` when
/// obleth's one path test cannot say it.
fn meet_path(a: &PathTest, b: &PathTest) -> Result<Option<PathTest>, String> {
    use PathTest::*;
    let regex_holds = |r: &str, x: &str| {
        regex::Regex::new(r)
            .map(|re| re.is_match(x))
            .unwrap_or(false)
    };
    Ok(match (a, b) {
        _ if a == b => Some(a.clone()),
        (Exact(_), Exact(_)) => None,
        (Exact(x), Prefix(p)) | (Prefix(p), Exact(x)) => {
            x.starts_with(p.as_str()).then(|| Exact(x.clone()))
        }
        (Prefix(p), Prefix(q)) => {
            if p.starts_with(q.as_str()) {
                Some(a.clone())
            } else if q.starts_with(p.as_str()) {
                Some(b.clone())
            } else {
                None
            }
        }
        (Exact(x), Regex(r)) | (Regex(r), Exact(x)) => regex_holds(r, x).then(|| Exact(x.clone())),
        (Prefix(p), Regex(r)) | (Regex(r), Prefix(p)) => match anchored_literal(r) {
            // The regex only matches paths that start with its literal.
            Some(lit) if lit.starts_with(p.as_str()) => Some(Regex(r.clone())),
            Some(lit) if !p.starts_with(lit.as_str()) => None,
            _ => return Err(cannot(a, b)),
        },
        (Regex(r), Regex(q)) => match (anchored_literal(r), anchored_literal(q)) {
            (Some(x), Some(y)) if !x.starts_with(y.as_str()) && !y.starts_with(x.as_str()) => None,
            _ => return Err(cannot(a, b)),
        },
    })
}

fn cannot(a: &PathTest, b: &PathTest) -> String {
    format!(
        "obleth's route match takes one path test, and {} AND {} cannot be written as one",
        describe(a),
        describe(b)
    )
}

/// The literal text every match of a `^`-anchored regex starts with
/// (`^/reports/[0-9]+$` → `/reports/`); `None` without the anchor, with a
/// top-level alternative or with flags.
fn anchored_literal(regex: &str) -> Option<String> {
    let rest = regex.strip_prefix('^')?;
    // A `|` outside groups and classes anchors one branch only.
    let (mut depth, mut class, mut escaped) = (0usize, false, false);
    for c in rest.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => class = true,
            ']' => class = false,
            '(' if !class => depth += 1,
            ')' if !class => depth = depth.saturating_sub(1),
            '|' if !class && depth == 0 => return None,
            _ => {}
        }
    }
    let mut lit = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        let ch = match c {
            '\\' => match chars.next() {
                Some(n) if !n.is_ascii_alphanumeric() => n,
                _ => break,
            },
            '.' | '[' | '(' | ')' | '|' | '$' | '^' | '{' | '}' | '*' | '+' | '?' => break,
            c => c,
        };
        // A quantifier makes this character optional or repeated.
        if matches!(chars.peek(), Some('*' | '?' | '{' | '+')) {
            break;
        }
        lit.push(ch);
    }
    Some(lit)
}

fn describe(p: &PathTest) -> String {
    match p {
        PathTest::Prefix(v) => format!("prefix {v:?}"),
        PathTest::Exact(v) => format!("path {v:?}"),
        PathTest::Regex(v) => format!("regex {v:?}"),
    }
}

/// Compiles a frontend's rule lists into routes.
pub struct Compiler<'a> {
    pub backends: &'a HashMap<String, BackendRules>,
    /// Pools that exist; a proxy step to another answers 503.
    pub pools: &'a HashSet<String>,
    /// The frontend's unconditional header edits, applied before the backend's.
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub notes: &'a mut Notes,
    routes: Vec<(String, Route)>,
    overflow: bool,
}

impl<'a> Compiler<'a> {
    pub fn new(
        backends: &'a HashMap<String, BackendRules>,
        pools: &'a HashSet<String>,
        request_headers: HeaderEdits,
        response_headers: HeaderEdits,
        notes: &'a mut Notes,
    ) -> Self {
        Self {
            backends,
            pools,
            request_headers,
            response_headers,
            notes,
            routes: Vec::new(),
            overflow: false,
        }
    }

    /// Routes for requests running through `lists` in turn; the last list
    /// must end with an entry that always applies.
    pub fn compile(mut self, lists: &[&[Entry]]) -> Result<Vec<Route>, usize> {
        self.walk(lists, &Ctx::default(), &[], &[]);
        if self.overflow {
            return Err(MAX_ROUTES);
        }
        // Names: the stem, then stem-2, stem-3, … in order.
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut used: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (stem, mut route) in self.routes {
            let mut name = stem.clone();
            while !used.insert(name.clone()) {
                let n = counts.entry(stem.clone()).or_insert(1);
                *n += 1;
                name = format!("{stem}-{n}");
            }
            route.name = name;
            out.push(route);
        }
        Ok(out)
    }

    /// Routes for the requests `ctx` describes running through `lists`.
    /// `trail` is the comment so far; `cases` names the exceptions that led
    /// here, for notes.
    fn walk(&mut self, lists: &[&[Entry]], ctx: &Ctx, trail: &[String], cases: &[String]) {
        let Some((first, rest)) = lists.split_first() else {
            return;
        };
        for (i, e) in first.iter().enumerate() {
            if self.overflow {
                return;
            }
            let mut cond = ctx.clone();
            match cond.and_all(&e.conj.pos) {
                Meet::Holds => {}
                Meet::Never => continue,
                Meet::Cannot(why) => {
                    self.cannot(e, &why, cases);
                    continue;
                }
            }
            let mut exceptions = Vec::new();
            let mut never = false;
            for n in &e.conj.neg {
                match n.test.negated() {
                    Some(t) => match cond.and(&t) {
                        Meet::Holds => {}
                        Meet::Never => never = true,
                        Meet::Cannot(why) => {
                            self.cannot(e, &why, cases);
                            never = true;
                        }
                    },
                    None => exceptions.push(n),
                }
            }
            if never {
                continue;
            }
            let mark = self.routes.len();
            let later: Vec<&[Entry]> = std::iter::once(&first[i + 1..])
                .chain(rest.iter().copied())
                .collect();
            let mut ok = true;
            for n in exceptions {
                let mut branch = cond.clone();
                match branch.and(&n.test) {
                    Meet::Never => {}
                    Meet::Cannot(why) => {
                        self.cannot(e, &why, cases);
                        ok = false;
                        break;
                    }
                    Meet::Holds => {
                        let mut t = trail.to_vec();
                        t.push(format!(
                            "(where `{}` holds, line {} does not apply: the rules after it decide)",
                            n.label, e.line
                        ));
                        let mut c = cases.to_vec();
                        c.push(format!("`{}` (line {})", n.label, e.line));
                        self.walk(&later, &branch, &t, &c);
                    }
                }
            }
            if !ok {
                self.routes.truncate(mark);
                continue;
            }
            match &e.step {
                Step::Allow => {
                    let mut t = trail.to_vec();
                    t.push(e.comment.clone());
                    self.walk(rest, &cond, &t, cases);
                }
                Step::Final(f) => self.finish(f, &cond, trail, cases, e),
            }
            if cond == *ctx {
                // This entry took every request left: the rest is unreachable.
                return;
            }
        }
        self.walk(rest, ctx, trail, cases);
    }

    fn cannot(&mut self, e: &Entry, why: &str, cases: &[String]) {
        let why = if cases.is_empty() {
            format!("{why}; the requests it would take follow the rules after it")
        } else {
            format!(
                "where {} holds: {why}; those requests follow the rules after it",
                cases.join(" and ")
            )
        };
        self.notes.skipped(e.line, &e.text, why);
    }

    fn finish(&mut self, f: &Final, cond: &Ctx, trail: &[String], cases: &[String], e: &Entry) {
        let mut comment = trail.to_vec();
        if comment.last() != Some(&e.comment) {
            comment.push(e.comment.clone());
        }
        let (stem, action) = match f {
            Final::Backend(name) => {
                if let Some(backend) = self.backends.get(name) {
                    self.walk(&[&backend.entries], cond, &comment, cases);
                    return;
                }
                // A backend obleth does not serve (disabled, TCP): 503.
                self.notes.approximated(
                    e.line,
                    &e.text,
                    format!("backend {name} is not translated (see its line): requests for it are answered 503"),
                );
                (format!("{name}-no-server"), unavailable())
            }
            Final::Proxy {
                pool,
                request_headers,
                response_headers,
            } => {
                if self.pools.contains(pool) {
                    (
                        pool.clone(),
                        Action::Proxy {
                            pool: pool.clone(),
                            request_headers: self.request_headers.then(request_headers),
                            response_headers: response_headers.then(&self.response_headers),
                        },
                    )
                } else {
                    (format!("{pool}-no-server"), unavailable())
                }
            }
            Final::Respond {
                stem,
                status,
                content_type,
                body,
            } => (
                stem.to_string(),
                Action::Respond {
                    status: *status,
                    content_type: content_type.clone(),
                    body: body.clone(),
                },
            ),
            Final::Redirect { status, location } => (
                "redirect".to_string(),
                Action::Redirect {
                    status: *status,
                    location: location.clone(),
                },
            ),
        };
        if self.routes.len() >= MAX_ROUTES {
            self.overflow = true;
            return;
        }
        self.routes.push((
            stem,
            Route {
                name: String::new(),
                matcher: cond.matcher(),
                action,
                comment,
            },
        ));
    }
}

/// HAProxy's answer when no server can take a request.
fn unavailable() -> Action {
    Action::Respond {
        status: 503,
        content_type: Some("text/html".into()),
        body: super::translate::haproxy_page(503)
            .unwrap_or_default()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy_import::acl::{condition, expression, AclDef, Acls};

    fn w(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    fn acls(defs: &[(&str, &str)]) -> Acls {
        let mut acls = Acls::default();
        for (name, text) in defs {
            acls.define(
                name,
                AclDef {
                    line: 1,
                    text: text.to_string(),
                    tests: expression(&w(text), &|_| Err("none".into())).map(|t| t.0),
                    approximations: Vec::new(),
                },
            );
        }
        acls
    }

    fn entries(acls: &Acls, rules: &[(&str, Final)]) -> Vec<Entry> {
        let mut out = Vec::new();
        for (i, (cond, f)) in rules.iter().enumerate() {
            let (dnf, _) =
                condition(&w(cond), acls, i + 1, &|_| Err("none".into())).expect("condition");
            for conj in dnf {
                out.push(Entry {
                    line: i + 1,
                    comment: format!("line {}", i + 1),
                    text: cond.to_string(),
                    conj,
                    step: Step::Final(f.clone()),
                });
            }
        }
        out
    }

    fn proxy(pool: &str) -> Final {
        Final::Proxy {
            pool: pool.into(),
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        }
    }

    fn deny() -> Final {
        Final::Respond {
            stem: "deny",
            status: 403,
            content_type: None,
            body: String::new(),
        }
    }

    fn compile(list: &[Entry]) -> (Vec<Route>, Notes) {
        let backends = HashMap::new();
        let pools: HashSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut notes = Notes::default();
        let routes = Compiler::new(
            &backends,
            &pools,
            HeaderEdits::default(),
            HeaderEdits::default(),
            &mut notes,
        )
        .compile(&[list])
        .expect("few routes");
        (routes, notes)
    }

    fn summary(routes: &[Route]) -> Vec<String> {
        routes
            .iter()
            .map(|r| {
                let m = &r.matcher;
                let action = match &r.action {
                    Action::Proxy { pool, .. } => pool.clone(),
                    Action::Respond { status, .. } => status.to_string(),
                    Action::Redirect { location, .. } => location.clone(),
                };
                format!(
                    "{} host={:?} path={:?} method={:?} src={:?} headers={:?} -> {action}",
                    r.name, m.hosts, m.path, m.methods, m.sources, m.headers
                )
            })
            .collect()
    }

    #[test]
    fn a_negated_source_becomes_an_exception_route_before_the_rule() {
        let acls = acls(&[
            ("admin", "path_beg /admin"),
            ("office", "src 10.0.0.0/8"),
            ("api", "path_beg /api"),
        ]);
        let list = entries(
            &acls,
            &[
                ("if admin !office", deny()),
                ("if api", proxy("a")),
                ("if admin", proxy("b")),
                ("", proxy("c")),
            ],
        );
        let (routes, _) = compile(&list);
        assert_eq!(
            summary(&routes),
            [
                r#"b host=[] path=Some(Prefix("/admin")) method=[] src=["10.0.0.0/8"] headers=[] -> b"#,
                r#"deny host=[] path=Some(Prefix("/admin")) method=[] src=[] headers=[] -> 403"#,
                r#"a host=[] path=Some(Prefix("/api")) method=[] src=[] headers=[] -> a"#,
                r#"b-2 host=[] path=Some(Prefix("/admin")) method=[] src=[] headers=[] -> b"#,
                r#"c host=[] path=None method=[] src=[] headers=[] -> c"#,
            ]
        );
        assert!(
            routes[0].comment[0].contains("`office` holds"),
            "{:?}",
            routes[0].comment
        );
    }

    #[test]
    fn ands_intersect_and_impossible_cases_are_dropped() {
        let acls = acls(&[
            ("shop", "hdr(host) -i shop.example.com"),
            ("static", "hdr_end(host) -i .example.com"),
            ("other", "hdr(host) -i other.org"),
            ("v2", "path_beg /v2/"),
            ("v2x", "path_beg /v2/x"),
            ("post", "method POST PUT"),
            ("put", "method PUT GET"),
        ]);
        let list = entries(
            &acls,
            &[
                ("if shop static v2 v2x post put", proxy("a")),
                ("if shop other", proxy("b")),
                ("", proxy("c")),
            ],
        );
        let (routes, _) = compile(&list);
        assert_eq!(
            summary(&routes),
            [
                r#"a host=["shop.example.com"] path=Some(Prefix("/v2/x")) method=["PUT"] src=[] headers=[] -> a"#,
                r#"c host=[] path=None method=[] src=[] headers=[] -> c"#,
            ]
        );
    }

    #[test]
    fn a_catch_all_rule_ends_the_list_and_ors_become_routes() {
        let acls = acls(&[("a", "path /a"), ("b", "hdr(x-b) -m found")]);
        let list = entries(
            &acls,
            &[("if a || !b", proxy("a")), ("", deny()), ("", proxy("c"))],
        );
        let (routes, _) = compile(&list);
        assert_eq!(
            summary(&routes),
            [
                r#"a host=[] path=Some(Exact("/a")) method=[] src=[] headers=[] -> a"#,
                r#"a-2 host=[] path=None method=[] src=[] headers=[("x-b", Absent)] -> a"#,
                r#"deny host=[] path=None method=[] src=[] headers=[] -> 403"#,
            ]
        );
    }

    #[test]
    fn two_path_regexes_cannot_be_combined_and_are_reported() {
        let acls = acls(&[("img", "path_end .png"), ("beg", "path_beg /img")]);
        let list = entries(&acls, &[("if img beg", proxy("a")), ("", proxy("c"))]);
        let (routes, notes) = compile(&list);
        assert_eq!(summary(&routes).len(), 1);
        assert_eq!(notes.list().len(), 1);
        assert!(
            notes.list()[0].why.contains("one path test"),
            "{:?}",
            notes.list()
        );
    }

    #[test]
    fn anchored_regexes_meet_prefixes_by_their_literal_start() {
        assert_eq!(
            anchored_literal("^/reports/[0-9]+$").as_deref(),
            Some("/reports/")
        );
        assert_eq!(anchored_literal(r"^/a\.b/c?").as_deref(), Some("/a.b/"));
        assert_eq!(anchored_literal("^/a|/b"), None);
        assert_eq!(anchored_literal("(?i)^/a"), None);
        assert_eq!(anchored_literal("/a"), None);
        let prefix = |p: &str| PathTest::Prefix(p.into());
        let regex = PathTest::Regex("^/reports/[0-9]+$".into());
        assert_eq!(meet_path(&prefix("/raw/"), &regex), Ok(None));
        assert_eq!(meet_path(&prefix("/rep"), &regex), Ok(Some(regex.clone())));
        assert!(meet_path(&prefix("/reports/1"), &regex).is_err());
    }

    #[test]
    fn a_proxy_to_a_pool_without_servers_answers_503() {
        let list = entries(&Acls::default(), &[("", proxy("gone"))]);
        let (routes, _) = compile(&list);
        assert!(matches!(
            routes[0].action,
            Action::Respond { status: 503, .. }
        ));
    }
}
