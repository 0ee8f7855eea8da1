//! haproxy.cfg as HAProxy reads it: lines split into words (comments,
//! backslash escapes, single and double quotes, `${NAME}` environment
//! variables inside double quotes), grouped into sections, each line keeping
//! its number. `.if` blocks are not evaluated: the first branch is kept.

use super::Notes;

/// One configuration line: its number (from 1) and its words after quoting
/// and escaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub words: Vec<String>,
}

impl Line {
    /// The first word: the keyword.
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// Word `i`, or `""` past the end.
    pub fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }

    /// The line as one string, for messages: control characters escaped,
    /// long lines shortened.
    pub fn text(&self) -> String {
        let joined = self.words.join(" ");
        let escaped: String = joined
            .chars()
            .map(|c| match c {
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                '\t' => "\\t".to_string(),
                c => c.to_string(),
            })
            .collect();
        shorten(&escaped)
    }
}

/// Shortens `text` to about 100 characters for a message.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 100;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    /// `resolvers`, `userlist`, `peers`, `cache`, … (not translated).
    Other,
}

/// A section: its header line and the lines under it.
#[derive(Debug, Clone)]
pub struct Section {
    pub kind: SectionKind,
    /// The section name (`frontend NAME`); `None` for `global` and an
    /// unnamed `defaults`.
    pub name: Option<String>,
    /// `from NAME`: the defaults section it takes its settings from.
    pub from: Option<String>,
    pub header: Line,
    pub lines: Vec<Line>,
}

/// The parsed file.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub sections: Vec<Section>,
}

/// Section keywords HAProxy knows and obleth has no counterpart for.
const OTHER_SECTIONS: &[&str] = &[
    "resolvers",
    "userlist",
    "peers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "log-forward",
    "crt-store",
    "traces",
    "acme",
    "dynamic-update",
];

/// Splits `text` into sections and words. `env` answers for environment
/// variables; lines that HAProxy would refuse are reported and skipped.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>, notes: &mut Notes) -> ParsedFile {
    let mut file = ParsedFile::default();
    // Whether lines are being skipped: inside a `.elif` / `.else` branch.
    let mut skipping: Vec<bool> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let mut expanded = Vec::new();
        let words = match split_words(raw, env, &mut expanded) {
            Ok(words) => words,
            Err(why) => {
                notes.skipped(
                    number,
                    &shorten(raw.trim()),
                    format!("HAProxy refuses this line: {why}"),
                );
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        let line = Line { number, words };
        match line.keyword() {
            ".if" => {
                notes.approximated(
                    number,
                    &line.text(),
                    "conditional blocks are not evaluated: the lines up to the next .elif, .else or .endif are imported",
                );
                skipping.push(false);
                continue;
            }
            ".elif" | ".else" => {
                notes.skipped(
                    number,
                    &line.text(),
                    "conditional blocks are not evaluated: this branch is left out",
                );
                if let Some(top) = skipping.last_mut() {
                    *top = true;
                }
                continue;
            }
            ".endif" => {
                skipping.pop();
                continue;
            }
            ".notice" | ".warning" | ".alert" | ".diag" => {
                notes.not_needed(
                    number,
                    &line.text(),
                    "a message HAProxy prints while reading the file",
                );
                continue;
            }
            _ => {}
        }
        if skipping.iter().any(|s| *s) {
            notes.skipped(
                number,
                &line.text(),
                "inside a conditional branch that is left out",
            );
            continue;
        }
        for name in expanded {
            notes.approximated(
                number,
                &line.text(),
                format!("${{{name}}} was expanded from this command's environment; HAProxy reads it where it runs"),
            );
        }
        let kind = match line.keyword() {
            "global" => Some(SectionKind::Global),
            "defaults" => Some(SectionKind::Defaults),
            "frontend" => Some(SectionKind::Frontend),
            "backend" => Some(SectionKind::Backend),
            "listen" => Some(SectionKind::Listen),
            k if OTHER_SECTIONS.contains(&k) => Some(SectionKind::Other),
            _ => None,
        };
        match kind {
            Some(kind) => {
                let (name, from) = section_name(kind, &line);
                file.sections.push(Section {
                    kind,
                    name,
                    from,
                    header: line,
                    lines: Vec::new(),
                });
            }
            None => match file.sections.last_mut() {
                Some(section) => section.lines.push(line),
                None => notes.skipped(number, &line.text(), "outside any section"),
            },
        }
    }
    file
}

/// The name and `from` of a section header: `defaults [NAME] [from X]`,
/// `frontend NAME [from X]`, `listen NAME [ADDRESS]`.
fn section_name(kind: SectionKind, line: &Line) -> (Option<String>, Option<String>) {
    let words = &line.words[1..];
    let from = words
        .iter()
        .position(|w| w == "from")
        .and_then(|i| words.get(i + 1))
        .cloned();
    let name = match kind {
        SectionKind::Global => None,
        _ => words.first().filter(|w| *w != "from").cloned(),
    };
    (name, from)
}

/// Splits one line into words as HAProxy does: blanks separate words
/// outside quotes, `#` outside double quotes starts a comment, single quotes
/// keep everything literally, double quotes allow escapes and `$NAME` /
/// `${NAME}` / `${NAME-default}`, and a backslash escapes a blank, `#`, a
/// quote, `\`, `$`, or writes `\t`, `\n`, `\r`, `\xNN` (any other backslash
/// is kept). Quoted parts join the word around them; `""` is an empty word.
/// The names of expanded variables are pushed to `expanded`.
pub fn split_words(
    line: &str,
    env: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Vec<String>,
) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut single = false;
    let mut double = false;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if single {
            if c == '\'' {
                single = false;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                in_word = true;
                let next = chars.get(i).copied();
                match next {
                    Some(n @ (' ' | '\t' | '\\' | '#' | '\'' | '"' | '$')) => {
                        word.push(n);
                        i += 1;
                    }
                    Some('t') => {
                        word.push('\t');
                        i += 1;
                    }
                    Some('n') => {
                        word.push('\n');
                        i += 1;
                    }
                    Some('r') => {
                        word.push('\r');
                        i += 1;
                    }
                    Some('x') => {
                        let hex: String = chars.iter().skip(i + 1).take(2).collect();
                        match u8::from_str_radix(&hex, 16) {
                            Ok(b) if hex.len() == 2 => {
                                word.push(char::from(b));
                                i += 3;
                            }
                            _ => {
                                return Err(format!(
                                    "\\x must be followed by two hex digits near {:?}",
                                    line.trim()
                                ))
                            }
                        }
                    }
                    _ => word.push('\\'),
                }
            }
            '\'' if !double => {
                single = true;
                in_word = true;
            }
            '"' => {
                double = !double;
                in_word = true;
            }
            '$' if double => {
                let (name, default, used) = variable(&chars[i..])
                    .ok_or_else(|| "a '$' inside double quotes must start a variable name (write \\$ for a dollar)".to_string())?;
                i += used;
                match env(&name) {
                    Some(value) => word.push_str(&value),
                    None => word.push_str(default.as_deref().unwrap_or("")),
                }
                expanded.push(name);
            }
            '#' if !double => break,
            ' ' | '\t' if !double => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\r' | '\n' if !double => {}
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if single || double {
        return Err("a quote is not closed".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Reads a variable reference after `$`: `NAME`, `{NAME}` or
/// `{NAME-default}`. Returns the name, the default and the characters used.
fn variable(rest: &[char]) -> Option<(String, Option<String>, usize)> {
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_';
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if rest.first() == Some(&'{') {
        let close = rest.iter().position(|c| *c == '}')?;
        let inner: String = rest[1..close].iter().collect();
        let (name, default) = match inner.split_once('-') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (inner, None),
        };
        let mut chars = name.chars();
        if !chars.next().is_some_and(is_start) || !chars.all(is_name) {
            return None;
        }
        Some((name, default, close + 1))
    } else {
        if !rest.first().is_some_and(|c| is_start(*c)) {
            return None;
        }
        let len = rest.iter().take_while(|c| is_name(**c)).count();
        Some((rest[..len].iter().collect(), None, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        let env = |name: &str| (name == "PORT").then(|| "8443".to_string());
        split_words(line, &env, &mut Vec::new()).expect("valid")
    }

    #[test]
    fn words_follow_haproxys_quoting_and_escaping() {
        assert_eq!(
            words("  bind :80   ssl crt /a.pem # comment"),
            ["bind", ":80", "ssl", "crt", "/a.pem"]
        );
        assert_eq!(words(r#"string "a\nb\tc\x41""#), ["string", "a\nb\tcA"]);
        assert_eq!(words(r"string a\nb\ c\x41"), ["string", "a\nb cA"]);
        assert_eq!(words(r"string 'a\nb'"), ["string", r"a\nb"]);
        assert_eq!(words(r#"string a"b c"'d e'f"#), ["string", "ab cd ef"]);
        assert_eq!(words(r#"string "a\#b\\c\"d""#), ["string", "a#b\\c\"d"]);
        assert_eq!(words("string a#b c"), ["string", "a"]);
        assert_eq!(words(r#"string "a#b""#), ["string", "a#b"]);
        assert_eq!(words(r#"string "a\qb""#), ["string", r"a\qb"]);
        assert_eq!(words(r#"x """#), ["x", ""]);
        assert_eq!(words("path_reg ^/a\\ b$"), ["path_reg", "^/a b$"]);
    }

    #[test]
    fn variables_expand_only_inside_double_quotes() {
        assert_eq!(words(r#"bind ":${PORT}""#), ["bind", ":8443"]);
        assert_eq!(words(r#"bind ":$PORT""#), ["bind", ":8443"]);
        assert_eq!(words("bind :${PORT}"), ["bind", ":${PORT}"]);
        assert_eq!(
            words(r#"x "${NOPE}z" "${NOPE-dflt}z" "\$PORT""#),
            ["x", "z", "dfltz", "$PORT"]
        );
        let mut used = Vec::new();
        split_words(r#"a "$PORT""#, &|_| None, &mut used).expect("valid");
        assert_eq!(used, ["PORT"]);
    }

    #[test]
    fn lines_haproxy_refuses_are_errors() {
        let none = |_: &str| None;
        assert!(split_words(r#"a "b"#, &none, &mut Vec::new()).is_err());
        assert!(split_words("a 'b", &none, &mut Vec::new()).is_err());
        assert!(split_words(r#"a "$ 5""#, &none, &mut Vec::new()).is_err());
        assert!(split_words(r"a \xZZ", &none, &mut Vec::new()).is_err());
    }

    #[test]
    fn sections_keep_their_lines_and_numbers() {
        let text = "# top\nglobal\n  nbthread 2\n\ndefaults web from base\n  mode http\nfrontend fe\n  bind :80\n.if defined(X)\n  bind :81\n.else\n  bind :82\n.endif\nbackend be\n  server s 1.2.3.4:80\n";
        let mut notes = Notes::default();
        let file = parse(text, &|_| None, &mut notes);
        let kinds: Vec<_> = file
            .sections
            .iter()
            .map(|s| (s.kind, s.name.clone()))
            .collect();
        assert_eq!(
            kinds,
            [
                (SectionKind::Global, None),
                (SectionKind::Defaults, Some("web".into())),
                (SectionKind::Frontend, Some("fe".into())),
                (SectionKind::Backend, Some("be".into())),
            ]
        );
        assert_eq!(file.sections[1].from.as_deref(), Some("base"));
        assert_eq!(
            file.sections[0].lines[0],
            Line {
                number: 3,
                words: vec!["nbthread".into(), "2".into()]
            }
        );
        let binds: Vec<usize> = file.sections[2].lines.iter().map(|l| l.number).collect();
        assert_eq!(binds, [8, 10], "the .else branch is left out");
        let reported: Vec<usize> = notes.list().iter().map(|n| n.line).collect();
        assert_eq!(reported, [9, 11, 12]);
    }
}
