//! A small YAML writer: an ordered tree with comments, printed in block
//! style with short leaf maps and lists in flow style (`{ a: 1 }`,
//! `[a, b]`), and strings quoted only where YAML would read them as
//! something else.

/// A YAML value in the order it is printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<Item>),
    Map(Vec<Entry>),
}

/// A map entry with the comment lines printed above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Node,
    pub comment: Vec<String>,
}

/// A list item with the comment lines printed above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: Node,
    pub comment: Vec<String>,
}

/// Builds a map entry by entry.
#[derive(Debug, Default)]
pub struct MapBuilder(Vec<Entry>);

impl MapBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(mut self, key: &str, value: Node) -> Self {
        self.0.push(Entry {
            key: key.into(),
            value,
            comment: Vec::new(),
        });
        self
    }

    pub fn put_opt(self, key: &str, value: Option<Node>) -> Self {
        match value {
            Some(v) => self.put(key, v),
            None => self,
        }
    }

    /// Adds the entry unless the value is an empty map or list.
    pub fn put_nonempty(self, key: &str, value: Node) -> Self {
        match &value {
            Node::Map(m) if m.is_empty() => self,
            Node::List(l) if l.is_empty() => self,
            _ => self.put(key, value),
        }
    }

    pub fn build(self) -> Node {
        Node::Map(self.0)
    }
}

pub fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

/// A list of strings.
pub fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Node {
    Node::List(
        items
            .into_iter()
            .map(|v| Item {
                value: Node::Str(v.into()),
                comment: Vec::new(),
            })
            .collect(),
    )
}

/// One string, or a list when there are several.
pub fn one_or_many(items: &[String]) -> Node {
    match items {
        [one] => s(one.clone()),
        _ => strings(items.iter().cloned()),
    }
}

/// Flow style is used for a collection that fits in this many columns.
const WIDTH: usize = 100;

/// Prints a document: `header` comment lines, then the top-level map with
/// a blank line between entries, then `footer` comment lines.
pub fn document(header: &[String], root: &[Entry], footer: &[String]) -> String {
    let mut out = String::new();
    for line in header {
        push_comment(&mut out, 0, line);
    }
    for entry in root {
        out.push('\n');
        write_entry(&mut out, 0, entry);
    }
    if !footer.is_empty() {
        out.push('\n');
        for line in footer {
            push_comment(&mut out, 0, line);
        }
    }
    out
}

fn push_comment(out: &mut String, indent: usize, line: &str) {
    for part in line.split('\n') {
        out.push_str(&" ".repeat(indent));
        if part.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(part);
            out.push('\n');
        }
    }
}

fn write_entry(out: &mut String, indent: usize, entry: &Entry) {
    for c in &entry.comment {
        push_comment(out, indent, c);
    }
    let pad = " ".repeat(indent);
    let key = scalar(&entry.key, false);
    match &entry.value {
        Node::Map(m) if m.is_empty() => out.push_str(&format!("{pad}{key}: {{}}\n")),
        Node::List(l) if l.is_empty() => out.push_str(&format!("{pad}{key}: []\n")),
        v @ (Node::Map(_) | Node::List(_)) => match flow(v) {
            Some(f) if indent + key.len() + 2 + f.len() <= WIDTH => {
                out.push_str(&format!("{pad}{key}: {f}\n"));
            }
            _ => {
                out.push_str(&format!("{pad}{key}:\n"));
                match v {
                    Node::Map(m) => {
                        for e in m {
                            write_entry(out, indent + 2, e);
                        }
                    }
                    Node::List(l) => write_items(out, indent + 2, l),
                    _ => {}
                }
            }
        },
        v => out.push_str(&format!("{pad}{key}: {}\n", inline_scalar(v))),
    }
}

fn write_items(out: &mut String, indent: usize, items: &[Item]) {
    let pad = " ".repeat(indent);
    for item in items {
        for c in &item.comment {
            push_comment(out, indent, c);
        }
        match &item.value {
            Node::Map(m) if !m.is_empty() => {
                match flow(&item.value) {
                    // Only maps of scalars (a server, a header test) go on one line.
                    Some(f)
                        if indent + 2 + f.len() <= WIDTH
                            && m.iter().all(|e| is_scalar(&e.value)) =>
                    {
                        out.push_str(&format!("{pad}- {f}\n"));
                    }
                    _ => {
                        // The first entry goes after the dash, the rest under it.
                        let mut first = String::new();
                        write_entry(&mut first, indent + 2, &m[0]);
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(first.trim_start_matches(' '));
                        for e in &m[1..] {
                            write_entry(out, indent + 2, e);
                        }
                    }
                }
            }
            Node::List(l) if !l.is_empty() => match flow(&item.value) {
                Some(f) if indent + 2 + f.len() <= WIDTH => out.push_str(&format!("{pad}- {f}\n")),
                _ => {
                    out.push_str(&format!("{pad}-\n"));
                    write_items(out, indent + 2, l);
                }
            },
            v => out.push_str(&format!("{pad}- {}\n", flow(v).unwrap_or_default())),
        }
    }
}

/// A scalar, or a list of scalars: what may sit in a one-line map.
fn is_scalar(node: &Node) -> bool {
    match node {
        Node::Str(_) | Node::Int(_) | Node::Bool(_) => true,
        Node::List(items) => items
            .iter()
            .all(|i| matches!(i.value, Node::Str(_) | Node::Int(_) | Node::Bool(_))),
        Node::Map(_) => false,
    }
}

/// The flow form of a node without comments, if it has one.
fn flow(node: &Node) -> Option<String> {
    match node {
        Node::Map(m) => {
            if m.iter().any(|e| !e.comment.is_empty()) {
                return None;
            }
            if m.is_empty() {
                return Some("{}".into());
            }
            let parts: Option<Vec<String>> = m
                .iter()
                .map(|e| flow(&e.value).map(|v| format!("{}: {v}", scalar(&e.key, true))))
                .collect();
            Some(format!("{{ {} }}", parts?.join(", ")))
        }
        Node::List(l) => {
            if l.iter().any(|i| !i.comment.is_empty()) {
                return None;
            }
            let parts: Option<Vec<String>> = l.iter().map(|i| flow(&i.value)).collect();
            Some(format!("[{}]", parts?.join(", ")))
        }
        Node::Str(text) => Some(scalar(text, true)),
        other => Some(inline_scalar(other)),
    }
}

fn inline_scalar(node: &Node) -> String {
    match node {
        Node::Str(text) => scalar(text, false),
        Node::Int(n) => n.to_string(),
        Node::Bool(b) => b.to_string(),
        other => flow(other).unwrap_or_default(),
    }
}

/// A string as a plain scalar where YAML reads it back as the same string,
/// else double-quoted (JSON's escapes are YAML's).
pub fn scalar(text: &str, in_flow: bool) -> String {
    if plain_ok(text, in_flow) {
        text.to_string()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
    }
}

fn plain_ok(text: &str, in_flow: bool) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '_' | '.'
                    | '/'
                    | ':'
                    | '@'
                    | '+'
                    | '='
                    | '~'
                    | '-'
                    | ';'
                    | '('
                    | ')'
                    | '$'
                    | '^'
                    | '%'
            )
    };
    if !(first.is_ascii_alphanumeric() || matches!(first, '_' | '.' | '/')) {
        return false;
    }
    if !text.chars().all(|c| allowed(c) || (c == ' ' && !in_flow)) {
        return false;
    }
    if text.ends_with(':') || text.contains(": ") || text.ends_with(' ') || text.contains("  ") {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    let reserved = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".inf", ".nan",
    ];
    if reserved.contains(&lower.as_str()) {
        return false;
    }
    // Numbers, and what YAML 1.1 reads as numbers (1_000, 1:20, 0x1f, 1e3).
    let numeric = |t: &str| {
        t.parse::<f64>().is_ok()
            || (t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
                && t.chars().all(|c| {
                    c.is_ascii_digit() || matches!(c, '_' | ':' | '.' | 'e' | 'E' | '+' | '-')
                })
                && !t.contains("::")
                && t.matches('.').count() <= 1)
            || t.starts_with("0x")
            || t.starts_with("0o")
            || t.starts_with("0b")
    };
    !numeric(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_only_where_needed() {
        assert_eq!(scalar("be_api", false), "be_api");
        assert_eq!(scalar("127.0.0.1:8080", false), "127.0.0.1:8080");
        assert_eq!(scalar("0.0.0.0/0", true), "0.0.0.0/0");
        assert_eq!(scalar("/api", true), "/api");
        assert_eq!(scalar("5s", true), "5s");
        assert_eq!(scalar("a b", false), "a b");
        assert_eq!(scalar("a b", true), "\"a b\"");
        for quoted in [
            "",
            "*.example.com",
            "::/0",
            "yes",
            "No",
            "1:20",
            "42",
            "1e3",
            "x: y",
            "a,b",
            "{host}",
            "#x",
            "-x",
            "!x",
            "a\nb",
            "1.5",
            "[::]:80",
        ] {
            assert!(
                scalar(quoted, true).starts_with('"'),
                "{quoted:?} must be quoted"
            );
        }
    }

    #[test]
    fn documents_read_back_as_the_tree_written() {
        let pool = MapBuilder::new()
            .put("name", s("be api"))
            .put(
                "servers",
                Node::List(vec![
                    Item {
                        value: MapBuilder::new()
                            .put("address", s("10.0.0.1:80"))
                            .put("weight", Node::Int(3))
                            .build(),
                        comment: vec![],
                    },
                    Item {
                        value: MapBuilder::new().put("address", s("[::1]:80")).build(),
                        comment: vec!["backup".into()],
                    },
                ]),
            )
            .put(
                "health_check",
                MapBuilder::new()
                    .put("path", s("/health"))
                    .put("rise", Node::Int(2))
                    .build(),
            )
            .put("tls", MapBuilder::new().build())
            .build();
        let route = MapBuilder::new()
            .put("name", s("r"))
            .put(
                "match",
                MapBuilder::new()
                    .put("host", strings(["*.a.com", "b.com"]))
                    .put(
                        "path",
                        MapBuilder::new().put("regex", s("(?i)^/x$")).build(),
                    )
                    .build(),
            )
            .put(
                "respond",
                MapBuilder::new()
                    .put("status", Node::Int(403))
                    .put("body", s("<html>\n\"x\" # y\n"))
                    .put("flag", Node::Bool(true))
                    .build(),
            )
            .build();
        let root = vec![
            Entry {
                key: "pools".into(),
                value: Node::List(vec![Item {
                    value: pool,
                    comment: vec!["haproxy.cfg:3: backend be".into()],
                }]),
                comment: vec![],
            },
            Entry {
                key: "routes".into(),
                value: Node::List(vec![Item {
                    value: route,
                    comment: vec![],
                }]),
                comment: vec![],
            },
        ];
        let text = document(&["head".into()], &root, &["foot".into()]);
        assert!(text.starts_with("# head\n"), "{text}");
        let back: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
        let pools = &back["pools"][0];
        assert_eq!(pools["name"].as_str(), Some("be api"));
        assert_eq!(pools["servers"][0]["weight"].as_u64(), Some(3));
        assert_eq!(pools["servers"][1]["address"].as_str(), Some("[::1]:80"));
        assert_eq!(pools["health_check"]["path"].as_str(), Some("/health"));
        assert!(pools["tls"].as_mapping().is_some_and(|m| m.is_empty()));
        let r = &back["routes"][0];
        assert_eq!(r["match"]["host"][0].as_str(), Some("*.a.com"));
        assert_eq!(r["match"]["path"]["regex"].as_str(), Some("(?i)^/x$"));
        assert_eq!(r["respond"]["body"].as_str(), Some("<html>\n\"x\" # y\n"));
        assert_eq!(r["respond"]["flag"].as_bool(), Some(true));
        assert!(
            text.contains("  # haproxy.cfg:3: backend be\n  - name: be api\n"),
            "{text}"
        );
    }
}
