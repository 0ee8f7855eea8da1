//! ACLs and conditions: `acl NAME CRITERION [flags] VALUE…`, anonymous
//! `{ … }` ACLs and `if` / `unless` conditions, turned into the tests an
//! obleth route `match` can make (host, path, method, header, source), as a
//! disjunction of conjunctions with negated tests kept apart.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// A host name pattern as `match.host` takes it: `name` or `*.suffix`.
pub type HostPattern = String;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathTest {
    Prefix(String),
    Exact(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    Present,
    Absent,
    Equals(String),
    Regex(String),
}

/// One test of a request, as obleth's route match can make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    Always(bool),
    Host(Vec<HostPattern>),
    Path(PathTest),
    Method(Vec<String>),
    Header { name: String, test: HeaderTest },
    Source(Vec<IpNet>),
}

impl Test {
    /// The negation, where obleth can write it directly.
    pub fn negated(&self) -> Option<Test> {
        match self {
            Test::Always(b) => Some(Test::Always(!b)),
            Test::Header {
                name,
                test: HeaderTest::Present,
            } => Some(Test::Header {
                name: name.clone(),
                test: HeaderTest::Absent,
            }),
            Test::Header {
                name,
                test: HeaderTest::Absent,
            } => Some(Test::Header {
                name: name.clone(),
                test: HeaderTest::Present,
            }),
            _ => None,
        }
    }
}

/// A test with the words it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    pub test: Test,
    /// The ACL name or the anonymous ACL's words, for comments.
    pub label: String,
}

/// Tests that must all hold (`pos`) and tests that must all fail (`neg`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conjunct {
    pub pos: Vec<Literal>,
    pub neg: Vec<Literal>,
}

/// A condition: it holds when one of its conjuncts holds.
pub type Condition = Vec<Conjunct>;

/// The condition of a rule without `if` / `unless`.
pub fn always() -> Condition {
    vec![Conjunct::default()]
}

/// What one `acl` line defines: its tests (any of them may hold), or why it
/// cannot be translated; and where obleth's test differs from HAProxy's.
#[derive(Debug, Clone)]
pub struct AclDef {
    pub line: usize,
    pub text: String,
    pub tests: Result<Vec<Test>, String>,
    pub approximations: Vec<String>,
}

/// The ACLs of a proxy by name; several lines of one name are ORed.
#[derive(Debug, Default, Clone)]
pub struct Acls {
    pub by_name: HashMap<String, Vec<AclDef>>,
}

/// Reads patterns of `-f FILE`, one per line, `#` comments.
pub type FileReader<'a> = &'a dyn Fn(&str) -> Result<String, String>;

impl Acls {
    pub fn define(&mut self, name: &str, def: AclDef) {
        self.by_name.entry(name.to_string()).or_default().push(def);
    }
}

/// An ACL used by a condition: its definitions, for the caller's notes.
#[derive(Debug, Clone)]
pub struct Used {
    pub line: usize,
    pub text: String,
    pub approximations: Vec<String>,
}

/// Parses `if COND` / `unless COND` at the end of `words` (starting at
/// `at`); a rule without one always applies. Returns the condition and
/// the ACLs it used (with their approximations), or why it cannot be
/// translated.
pub fn condition(
    words: &[String],
    acls: &Acls,
    line: usize,
    read: FileReader<'_>,
) -> Result<(Condition, Vec<Used>), String> {
    let mut used = Vec::new();
    let Some(first) = words.first() else {
        return Ok((always(), used));
    };
    let negate = match first.as_str() {
        "if" => false,
        "unless" => true,
        other => return Err(format!("expected `if` or `unless`, found {other:?}")),
    };
    let terms = &words[1..];
    if terms.is_empty() {
        return Err(format!("`{first}` without a condition"));
    }
    // Groups separated by `||` / `or`, each an AND of terms.
    let mut groups: Vec<Vec<(bool, Vec<Literal>)>> = vec![Vec::new()];
    let mut i = 0;
    while i < terms.len() {
        let word = terms[i].as_str();
        i += 1;
        if word == "||" || word == "or" {
            groups.push(Vec::new());
            continue;
        }
        let (neg, rest) = match word.strip_prefix('!') {
            Some(r) => (true, r),
            None => (false, word),
        };
        let (neg, rest) = if rest.is_empty() {
            let Some(next) = terms.get(i) else {
                return Err("`!` at the end of the condition".into());
            };
            i += 1;
            (neg, next.as_str())
        } else {
            (neg, rest)
        };
        let literals = if rest == "{" {
            let close = terms[i..]
                .iter()
                .position(|w| w == "}")
                .ok_or("an anonymous ACL `{` is not closed with `}`")?;
            let inner = &terms[i..i + close];
            i += close + 1;
            let label = format!("{{ {} }}", inner.join(" "));
            let (tests, approximations) = expression(inner, read)?;
            used.push(Used {
                line,
                text: label.clone(),
                approximations,
            });
            tests
                .into_iter()
                .map(|test| Literal {
                    test,
                    label: label.clone(),
                })
                .collect()
        } else if let Some(tests) = predefined(rest) {
            tests
                .into_iter()
                .map(|test| Literal {
                    test,
                    label: rest.to_string(),
                })
                .collect()
        } else {
            let defs = acls
                .by_name
                .get(rest)
                .ok_or_else(|| format!("ACL {rest:?} is not defined"))?;
            let mut literals = Vec::new();
            for def in defs {
                let tests = def
                    .tests
                    .clone()
                    .map_err(|why| format!("ACL {rest:?} (line {}): {why}", def.line))?;
                used.push(Used {
                    line: def.line,
                    text: def.text.clone(),
                    approximations: def.approximations.clone(),
                });
                literals.extend(tests.into_iter().map(|test| Literal {
                    test,
                    label: rest.to_string(),
                }));
            }
            literals
        };
        groups
            .last_mut()
            .ok_or("empty condition")?
            .push((neg, literals));
    }
    let mut dnf: Condition = Vec::new();
    for group in groups {
        if group.is_empty() {
            return Err("`||` without a term on one side".into());
        }
        dnf.extend(conjunction(group)?);
    }
    if negate {
        dnf = negation(&dnf)?;
    }
    Ok((dnf, used))
}

/// Most conjuncts one condition may expand into.
const MAX_CONJUNCTS: usize = 64;

/// AND of terms, each an OR of literals (negated: a NOR) → conjuncts.
fn conjunction(terms: Vec<(bool, Vec<Literal>)>) -> Result<Condition, String> {
    let mut out = vec![Conjunct::default()];
    for (neg, literals) in terms {
        if neg {
            for c in &mut out {
                c.neg.extend(literals.iter().cloned());
            }
        } else {
            let mut next = Vec::new();
            for c in &out {
                for l in &literals {
                    let mut c = c.clone();
                    c.pos.push(l.clone());
                    next.push(c);
                }
            }
            if next.len() > MAX_CONJUNCTS {
                return Err(format!(
                    "the condition expands to more than {MAX_CONJUNCTS} cases"
                ));
            }
            out = next;
        }
    }
    Ok(out)
}

/// `unless C`: NOT (C1 OR C2 …) = AND of NOT Ci, and NOT (a AND NOT b) = NOT a OR b.
fn negation(dnf: &Condition) -> Result<Condition, String> {
    let mut out = vec![Conjunct::default()];
    for c in dnf {
        // NOT c: one of its positives fails, or one of its negatives holds.
        let mut alternatives: Vec<(bool, Literal)> = Vec::new();
        alternatives.extend(c.pos.iter().cloned().map(|l| (true, l)));
        alternatives.extend(c.neg.iter().cloned().map(|l| (false, l)));
        if alternatives.is_empty() {
            // NOT (always) = never.
            return Ok(Vec::new());
        }
        let mut next = Vec::new();
        for o in &out {
            for (negate, l) in &alternatives {
                let mut o = o.clone();
                if *negate {
                    o.neg.push(l.clone());
                } else {
                    o.pos.push(l.clone());
                }
                next.push(o);
            }
        }
        if next.len() > MAX_CONJUNCTS {
            return Err(format!(
                "the condition expands to more than {MAX_CONJUNCTS} cases"
            ));
        }
        out = next;
    }
    Ok(out)
}

/// HAProxy's predefined ACLs that obleth can test.
fn predefined(name: &str) -> Option<Vec<Test>> {
    let method = |m: &[&str]| vec![Test::Method(m.iter().map(|s| s.to_string()).collect())];
    Some(match name {
        "TRUE" | "HTTP" | "HTTP_URL_SLASH" => vec![Test::Always(true)],
        "FALSE" => vec![Test::Always(false)],
        "METH_GET" => method(&["GET", "HEAD"]),
        "METH_POST" => method(&["POST"]),
        "METH_PUT" => method(&["PUT"]),
        "METH_HEAD" => method(&["HEAD"]),
        "METH_OPTIONS" => method(&["OPTIONS"]),
        "METH_TRACE" => method(&["TRACE"]),
        "METH_CONNECT" => method(&["CONNECT"]),
        "LOCALHOST" => vec![Test::Source(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)
                .map(IpNet::V4)
                .into_iter()
                .collect(),
        )],
        _ => return None,
    })
}

/// How a fetch's value is compared with the patterns (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Str,
    Beg,
    End,
    Sub,
    Reg,
    Dom,
    Dir,
    Found,
    Ip,
    Int,
}

/// What is fetched from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fetch {
    Path,
    /// `url_beg`: the URL, which starts with the path.
    Url,
    Host,
    Header(String),
    HeaderCount(String),
    Method,
    Source,
}

/// One ACL expression (`CRITERION [flags] [VALUE…]`) → tests, any of which
/// may hold, and the ways obleth's tests differ from HAProxy's.
pub fn expression(
    words: &[String],
    read: FileReader<'_>,
) -> Result<(Vec<Test>, Vec<String>), String> {
    let criterion = words.first().ok_or("an ACL needs a criterion")?;
    let (fetch, mut method, converters) = fetch(criterion)?;
    let mut approximations = Vec::new();
    if !converters.is_empty() {
        // Host comparisons already ignore case and port.
        let harmless = fetch == Fetch::Host
            && converters
                .iter()
                .all(|c| c == "lower" || c == "host_only" || c == "field(1,:)");
        if !harmless {
            return Err(format!(
                "converters ({}) are not supported",
                converters.join(",")
            ));
        }
    }
    let mut ci = false;
    let mut values: Vec<String> = Vec::new();
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        match w {
            "-i" => ci = true,
            "-n" | "-M" => {}
            "-m" => {
                i += 1;
                method = match words.get(i).map(String::as_str) {
                    Some("str") => Method::Str,
                    Some("beg") => Method::Beg,
                    Some("end") => Method::End,
                    Some("sub") => Method::Sub,
                    Some("reg") => Method::Reg,
                    Some("dom") => Method::Dom,
                    Some("dir") => Method::Dir,
                    Some("found") => Method::Found,
                    Some("ip") => Method::Ip,
                    Some("int") => Method::Int,
                    Some(other) => return Err(format!("match method -m {other} is not supported")),
                    None => return Err("-m needs a match method".into()),
                };
            }
            "-u" => i += 1,
            "-f" => {
                i += 1;
                let file = words.get(i).ok_or("-f needs a file")?;
                let text =
                    read(file).map_err(|e| format!("cannot read patterns from {file}: {e}"))?;
                values.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
            }
            "--" => {
                values.extend(words[i + 1..].iter().cloned());
                break;
            }
            _ if w.starts_with('-')
                && w.len() > 1
                && values.is_empty()
                && !matches!(fetch, Fetch::HeaderCount(_)) =>
            {
                return Err(format!("flag {w} is not supported"));
            }
            _ => values.push(w.to_string()),
        }
        i += 1;
    }
    let tests = match (&fetch, method) {
        (_, Method::Found) => match &fetch {
            Fetch::Host => vec![header("host", HeaderTest::Present)],
            Fetch::Header(name) => vec![header(name, HeaderTest::Present)],
            Fetch::Path | Fetch::Url | Fetch::Method | Fetch::Source => vec![Test::Always(true)],
            Fetch::HeaderCount(_) => return Err("-m found on hdr_cnt is not supported".into()),
        },
        _ if values.is_empty() => vec![Test::Always(false)],
        (Fetch::Path | Fetch::Url, m) => {
            if fetch == Fetch::Url {
                if m != Method::Beg {
                    return Err(format!(
                        "{criterion} is not supported (only url_beg, as a path prefix)"
                    ));
                }
                approximations.push("the URL is matched as the path (a request in absolute form, `GET http://…`, is not)".into());
            }
            vec![Test::Path(path_test(m, &values, ci)?)]
        }
        (Fetch::Host, m) => host_tests(m, &values, ci, &mut approximations)?,
        (Fetch::Header(name), m) => vec![header(name, header_test(m, &values, ci)?)],
        (Fetch::HeaderCount(name), Method::Int) => vec![header(name, count_test(&values)?)],
        (Fetch::HeaderCount(_), _) => {
            return Err("hdr_cnt is only supported as `gt 0`, `ge 1`, `eq 0` or `lt 1`".into())
        }
        (Fetch::Method, Method::Str) => {
            vec![Test::Method(
                values
                    .iter()
                    .map(|v| {
                        if ci {
                            v.to_ascii_uppercase()
                        } else {
                            v.clone()
                        }
                    })
                    .collect(),
            )]
        }
        (Fetch::Method, m) => return Err(format!("method with -m {m:?} is not supported")),
        (Fetch::Source, Method::Ip) => vec![Test::Source(
            values
                .iter()
                .map(|v| cidr(v).ok_or_else(|| format!("{v:?} is not an address or network")))
                .collect::<Result<_, _>>()?,
        )],
        (Fetch::Source, m) => return Err(format!("src with -m {m:?} is not supported")),
    };
    Ok((tests, approximations))
}

fn header(name: &str, test: HeaderTest) -> Test {
    Test::Header {
        name: name.to_ascii_lowercase(),
        test,
    }
}

/// `NAME(ARGS),CONVERTER…` → the fetch, its default match method and the
/// converters.
fn fetch(criterion: &str) -> Result<(Fetch, Method, Vec<String>), String> {
    let (head, converters) = split_converters(criterion);
    let (name, arg) = match head.split_once('(') {
        Some((n, rest)) => {
            let arg = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("{criterion:?}: `(` is not closed"))?;
            (n, Some(arg.split(',').next().unwrap_or("").trim()))
        }
        None => (head, None),
    };
    let header_method = |suffix: &str| -> Option<Method> {
        Some(match suffix {
            "" => Method::Str,
            "_beg" => Method::Beg,
            "_end" => Method::End,
            "_sub" => Method::Sub,
            "_reg" => Method::Reg,
            "_dom" => Method::Dom,
            "_dir" => Method::Dir,
            _ => return None,
        })
    };
    let unsupported = || format!("{name} has no equivalent in an obleth route match");
    let (fetch, method) = match name {
        "path" => (Fetch::Path, Method::Str),
        "path_beg" => (Fetch::Path, Method::Beg),
        "path_end" => (Fetch::Path, Method::End),
        "path_sub" => (Fetch::Path, Method::Sub),
        "path_reg" => (Fetch::Path, Method::Reg),
        "path_dir" => (Fetch::Path, Method::Dir),
        "url_beg" => (Fetch::Url, Method::Beg),
        "method" => (Fetch::Method, Method::Str),
        "src" => (Fetch::Source, Method::Ip),
        "hdr_cnt" | "req.hdr_cnt" => {
            let arg = arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{name} needs a header name"))?;
            (Fetch::HeaderCount(arg.to_string()), Method::Int)
        }
        _ => {
            let suffix = name
                .strip_prefix("req.hdr")
                .or_else(|| name.strip_prefix("req.fhdr"))
                .or_else(|| name.strip_prefix("hdr"))
                .or_else(|| name.strip_prefix("fhdr"))
                .ok_or_else(unsupported)?;
            let method = header_method(suffix).ok_or_else(unsupported)?;
            let arg = arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{name} without a header name is not supported"))?;
            if http::HeaderName::from_bytes(arg.as_bytes()).is_err() {
                return Err(format!("{arg:?} is not a header name"));
            }
            if arg.eq_ignore_ascii_case("host") {
                (Fetch::Host, method)
            } else {
                (Fetch::Header(arg.to_string()), method)
            }
        }
    };
    Ok((fetch, method, converters))
}

/// Splits `hdr(a,1),lower` into `hdr(a,1)` and `["lower"]`, keeping commas
/// inside parentheses.
fn split_converters(text: &str) -> (&str, Vec<String>) {
    let mut depth = 0usize;
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let head = parts.first().copied().unwrap_or(text);
    (head, parts[1..].iter().map(|s| s.to_string()).collect())
}

/// A regex alternation of `values` (escaped unless they are regexes),
/// wrapped by `before` and `after`, case-insensitive with `ci`.
fn alternation(
    values: &[String],
    literal: bool,
    before: &str,
    after: &str,
    ci: bool,
) -> Result<String, String> {
    let parts: Vec<String> = values
        .iter()
        .map(|v| if literal { regex::escape(v) } else { v.clone() })
        .collect();
    let body = match (parts.len(), literal) {
        (1, true) => parts[0].clone(),
        (1, false) if before.is_empty() && after.is_empty() => parts[0].clone(),
        (_, true) => format!("(?:{})", parts.join("|")),
        (_, false) => format!(
            "(?:{})",
            parts
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|")
        ),
    };
    let flags = if ci { "(?i)" } else { "" };
    let text = format!("{flags}{before}{body}{after}");
    regex::Regex::new(&text).map_err(|e| {
        // The engine's message ends with the reason, after a drawing of where.
        let text_error = e.to_string();
        let reason = text_error
            .lines()
            .last()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        format!("the regular expression {text:?} is not one obleth's engine accepts ({reason})")
    })?;
    Ok(text)
}

fn path_test(method: Method, values: &[String], ci: bool) -> Result<PathTest, String> {
    let single = values.len() == 1 && !ci;
    Ok(match method {
        Method::Str if single => PathTest::Exact(values[0].clone()),
        Method::Beg if single => PathTest::Prefix(values[0].clone()),
        Method::Str => PathTest::Regex(alternation(values, true, "^", "$", ci)?),
        Method::Beg => PathTest::Regex(alternation(values, true, "^", "", ci)?),
        Method::End => PathTest::Regex(alternation(values, true, "", "$", ci)?),
        Method::Sub => PathTest::Regex(alternation(values, true, "", "", ci)?),
        Method::Reg => PathTest::Regex(alternation(values, false, "", "", ci)?),
        Method::Dir => PathTest::Regex(alternation(values, true, "(?:^|/)", "(?:/|$)", ci)?),
        Method::Dom => PathTest::Regex(alternation(
            values,
            true,
            "(?:^|[/?.:])",
            "(?:[/?.:]|$)",
            ci,
        )?),
        other => return Err(format!("path with -m {other:?} is not supported")),
    })
}

fn header_test(method: Method, values: &[String], ci: bool) -> Result<HeaderTest, String> {
    let single = values.len() == 1 && !ci;
    Ok(match method {
        Method::Str if single => HeaderTest::Equals(values[0].clone()),
        Method::Str => HeaderTest::Regex(alternation(values, true, "^", "$", ci)?),
        Method::Beg => HeaderTest::Regex(alternation(values, true, "^", "", ci)?),
        Method::End => HeaderTest::Regex(alternation(values, true, "", "$", ci)?),
        Method::Sub => HeaderTest::Regex(alternation(values, true, "", "", ci)?),
        Method::Reg => HeaderTest::Regex(alternation(values, false, "", "", ci)?),
        Method::Dir => HeaderTest::Regex(alternation(values, true, "(?:^|/)", "(?:/|$)", ci)?),
        Method::Dom => HeaderTest::Regex(alternation(
            values,
            true,
            "(?:^|[/?.:])",
            "(?:[/?.:]|$)",
            ci,
        )?),
        other => return Err(format!("a header with -m {other:?} is not supported")),
    })
}

/// `hdr_cnt(x) gt 0` and its like: whether the header is there.
fn count_test(values: &[String]) -> Result<HeaderTest, String> {
    let spec: Vec<&str> = values.iter().map(String::as_str).collect();
    match spec.as_slice() {
        ["gt", "0"] | ["ge", "1"] => Ok(HeaderTest::Present),
        ["eq", "0"] | ["lt", "1"] | ["le", "0"] | ["0"] => Ok(HeaderTest::Absent),
        _ => Err(format!(
            "hdr_cnt {} is not supported (only gt 0, ge 1, eq 0, lt 1)",
            spec.join(" ")
        )),
    }
}

/// Tests on the host. Exact names and `.suffix` ends are host patterns;
/// the rest are regexes on the `Host` header.
fn host_tests(
    method: Method,
    values: &[String],
    ci: bool,
    approx: &mut Vec<String>,
) -> Result<Vec<Test>, String> {
    let plain = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !ci
        && values
            .iter()
            .any(|v| v.chars().any(|c| c.is_ascii_uppercase()))
    {
        approx.push(
            "obleth compares host names without regard to case; without -i HAProxy would not"
                .into(),
        );
    }
    match method {
        Method::Str => {
            let mut names = Vec::new();
            for v in values {
                let name = match v.rsplit_once(':') {
                    Some((name, port))
                        if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') =>
                    {
                        approx.push(format!(
                            "{v}: obleth compares host names without the port; any port matches"
                        ));
                        name
                    }
                    _ => v.as_str(),
                };
                if !plain(name) {
                    return Ok(vec![header(
                        "host",
                        header_test(Method::Str, values, true)?,
                    )]);
                }
                names.push(name.to_ascii_lowercase());
            }
            Ok(vec![Test::Host(names)])
        }
        Method::End | Method::Dom if values.iter().all(|v| plain(v.trim_start_matches('.'))) => {
            let mut names = Vec::new();
            for v in values {
                let bare = v.trim_start_matches('.').to_ascii_lowercase();
                if method == Method::Dom || !v.starts_with('.') {
                    names.push(bare.clone());
                }
                names.push(format!("*.{bare}"));
            }
            if method == Method::Dom {
                approx.push("matched as the name and its subdomains; HAProxy also matches where the name goes on after a dot (example.com.other)".into());
            } else if values.iter().any(|v| !v.starts_with('.')) {
                approx.push("matched as the name and its subdomains; HAProxy also matches any name that merely ends with it (xexample.com)".into());
            }
            Ok(vec![Test::Host(names)])
        }
        m => {
            approx.push(
                "matched as a regular expression on the Host header, which an HTTP/2 request may not carry (its :authority is not tested)"
                    .into(),
            );
            Ok(vec![header("host", header_test(m, values, ci)?)])
        }
    }
}

/// An address, network or `address/netmask` as `src` takes them.
pub fn cidr(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    let (addr, mask) = text.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let mask: std::net::Ipv4Addr = mask.parse().ok()?;
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return None;
    }
    ipnet::Ipv4Net::new(addr, bits.leading_ones() as u8)
        .ok()
        .map(|n| IpNet::V4(n.trunc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    fn no_files(_: &str) -> Result<String, String> {
        Err("no files in this test".into())
    }

    fn tests(text: &str) -> Vec<Test> {
        expression(&w(text), &no_files).expect("translatable").0
    }

    #[test]
    fn path_criteria_become_path_tests() {
        assert_eq!(
            tests("path_beg /api"),
            [Test::Path(PathTest::Prefix("/api".into()))]
        );
        assert_eq!(tests("path /x"), [Test::Path(PathTest::Exact("/x".into()))]);
        assert_eq!(
            tests("path_beg /a /b.c"),
            [Test::Path(PathTest::Regex(r"^(?:/a|/b\.c)".into()))]
        );
        assert_eq!(
            tests("path_end .png .jpg"),
            [Test::Path(PathTest::Regex(r"(?:\.png|\.jpg)$".into()))]
        );
        assert_eq!(
            tests("path_reg ^/r/[0-9]+$"),
            [Test::Path(PathTest::Regex("^/r/[0-9]+$".into()))]
        );
        assert_eq!(
            tests("path -i /A"),
            [Test::Path(PathTest::Regex("(?i)^/A$".into()))]
        );
        assert_eq!(
            tests("path -m beg /s"),
            [Test::Path(PathTest::Prefix("/s".into()))]
        );
        assert!(
            expression(&w("path_reg (a)\\1"), &no_files).is_err(),
            "backreferences are refused"
        );
    }

    #[test]
    fn host_criteria_become_host_patterns_where_they_can() {
        assert_eq!(
            tests("hdr(host) -i a.example.com B.example.com"),
            [Test::Host(vec![
                "a.example.com".into(),
                "b.example.com".into()
            ])]
        );
        assert_eq!(
            tests("req.hdr(Host),lower -i a.example.com"),
            [Test::Host(vec!["a.example.com".into()])]
        );
        assert_eq!(
            tests("hdr_end(host) -i .static.example.com"),
            [Test::Host(vec!["*.static.example.com".into()])]
        );
        assert_eq!(
            tests("hdr_dom(host) -i example.org"),
            [Test::Host(vec![
                "example.org".into(),
                "*.example.org".into()
            ])]
        );
        assert_eq!(
            tests("hdr_beg(host) -i blog."),
            [Test::Header {
                name: "host".into(),
                test: HeaderTest::Regex(r"(?i)^blog\.".into())
            }]
        );
        let (t, approx) = expression(&w("hdr(host) a.example.com:8080"), &no_files).expect("ok");
        assert_eq!(t, [Test::Host(vec!["a.example.com".into()])]);
        assert!(approx[0].contains("without the port"), "{approx:?}");
    }

    #[test]
    fn headers_methods_and_sources() {
        assert_eq!(
            tests("hdr(X-Canary) yes"),
            [Test::Header {
                name: "x-canary".into(),
                test: HeaderTest::Equals("yes".into())
            }]
        );
        assert_eq!(
            tests("req.hdr(x-canary) -i yes on"),
            [Test::Header {
                name: "x-canary".into(),
                test: HeaderTest::Regex("(?i)^(?:yes|on)$".into())
            }]
        );
        assert_eq!(
            tests("req.hdr(authorization) -m found"),
            [Test::Header {
                name: "authorization".into(),
                test: HeaderTest::Present
            }]
        );
        assert_eq!(
            tests("hdr_cnt(x-a) gt 0"),
            [Test::Header {
                name: "x-a".into(),
                test: HeaderTest::Present
            }]
        );
        assert_eq!(
            tests("method POST PUT"),
            [Test::Method(vec!["POST".into(), "PUT".into()])]
        );
        assert_eq!(
            tests("src 10.0.0.0/8 192.0.2.7 172.16.0.0/255.240.0.0"),
            [Test::Source(vec![
                "10.0.0.0/8".parse().expect("net"),
                "192.0.2.7/32".parse().expect("net"),
                "172.16.0.0/12".parse().expect("net")
            ])]
        );
        assert!(expression(&w("ssl_fc"), &no_files).is_err());
        assert!(expression(&w("sc_http_req_rate(0) gt 10"), &no_files).is_err());
        assert!(expression(&w("hdr(x),lower foo"), &no_files).is_err());
    }

    #[test]
    fn patterns_can_come_from_a_file() {
        let read = |f: &str| {
            if f == "/nets" {
                Ok("# offices\n10.1.0.0/16\n\n10.2.0.0/16 # lab\n".to_string())
            } else {
                Err("missing".to_string())
            }
        };
        let (t, _) = expression(&w("src -f /nets"), &read).expect("ok");
        assert_eq!(
            t,
            [Test::Source(vec![
                "10.1.0.0/16".parse().expect("net"),
                "10.2.0.0/16".parse().expect("net")
            ])]
        );
        assert!(expression(&w("src -f /other"), &read).is_err());
    }

    fn acls() -> Acls {
        let mut acls = Acls::default();
        for (name, text) in [
            ("a", "path_beg /a"),
            ("b", "method POST"),
            ("c", "src 10.0.0.0/8"),
            ("c", "hdr(x) y"),
        ] {
            acls.define(
                name,
                AclDef {
                    line: 1,
                    text: text.into(),
                    tests: expression(&w(text), &no_files).map(|t| t.0),
                    approximations: Vec::new(),
                },
            );
        }
        acls
    }

    fn shape(c: &Condition) -> Vec<(Vec<String>, Vec<String>)> {
        c.iter()
            .map(|c| {
                (
                    c.pos.iter().map(|l| l.label.clone()).collect(),
                    c.neg.iter().map(|l| l.label.clone()).collect(),
                )
            })
            .collect()
    }

    fn cond(text: &str) -> Condition {
        condition(&w(text), &acls(), 1, &no_files)
            .expect("translatable")
            .0
    }

    #[test]
    fn conditions_become_or_of_ands() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(shape(&cond("if a b")), [(s(&["a", "b"]), s(&[]))]);
        assert_eq!(shape(&cond("if a !b")), [(s(&["a"]), s(&["b"]))]);
        assert_eq!(
            shape(&cond("if a || b")),
            [(s(&["a"]), s(&[])), (s(&["b"]), s(&[]))]
        );
        assert_eq!(
            shape(&cond("if a or ! b")),
            [(s(&["a"]), s(&[])), (s(&[]), s(&["b"]))]
        );
        // An ACL defined on two lines is either of them; negated, neither.
        assert_eq!(
            shape(&cond("if c")),
            [(s(&["c"]), s(&[])), (s(&["c"]), s(&[]))]
        );
        assert_eq!(shape(&cond("if !c")), [(s(&[]), s(&["c", "c"]))]);
        // unless (a AND NOT b) = NOT a OR b.
        assert_eq!(
            shape(&cond("unless a !b")),
            [(s(&[]), s(&["a"])), (s(&["b"]), s(&[]))]
        );
        assert_eq!(
            shape(&cond("if { path /x } METH_GET")),
            [(s(&["{ path /x }", "METH_GET"]), s(&[]))]
        );
        assert!(condition(&w("if nope"), &acls(), 1, &no_files).is_err());
        assert!(condition(&w("if { path /x"), &acls(), 1, &no_files).is_err());
    }
}
