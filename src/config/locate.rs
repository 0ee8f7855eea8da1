//! Where each key of a YAML document sits, so that errors found after parsing
//! (a route naming a missing pool, two pools with one name) still point at a
//! file, line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Maps key paths such as `routes[2].proxy.pool` to the position of that key
/// (or, for sequence items, of the item) in the source text.
#[derive(Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes `text`; a document that does not even scan yields an empty
    /// index (serde reports the syntax error with its own position).
    pub fn build(text: &str) -> Self {
        let mut recorder = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut recorder, false).is_err() {
            return Self::default();
        }
        Self {
            positions: recorder.positions,
        }
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return Some(*p);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping {
        path: String,
        pending_key: Option<String>,
        /// A mapping that is a sequence item is located at its first key
        /// (the parser marks block mappings after their first key).
        locate_at_first_key: bool,
    },
    Sequence {
        path: String,
        next_index: usize,
    },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

impl Recorder {
    /// Called for every node; returns the path the node lives at, or `None`
    /// when the node is a mapping key.
    fn enter_node(
        &mut self,
        key_scalar: Option<&str>,
        starts_mapping: bool,
        mark: Marker,
    ) -> Option<String> {
        let position = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping {
                path,
                pending_key,
                locate_at_first_key,
            }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    if std::mem::take(locate_at_first_key) {
                        self.positions.insert(path.clone(), position);
                    }
                    if let Some(key) = key_scalar {
                        let full = join(path, key);
                        self.positions.insert(full, position);
                        *pending_key = Some(key.to_string());
                    } else {
                        *pending_key = Some(String::from("?"));
                    }
                    None
                }
            },
            Some(Frame::Sequence { path, next_index }) => {
                let full = format!("{path}[{next_index}]");
                *next_index += 1;
                if !starts_mapping {
                    self.positions.insert(full.clone(), position);
                }
                Some(full)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.enter_node(Some(&value), false, mark);
            }
            Event::Alias(_) => {
                self.enter_node(None, false, mark);
            }
            Event::MappingStart(..) => {
                let in_sequence = matches!(self.stack.last(), Some(Frame::Sequence { .. }));
                let path = self.enter_node(None, true, mark).unwrap_or_default();
                self.stack.push(Frame::Mapping {
                    path,
                    pending_key: None,
                    locate_at_first_key: in_sequence,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_node(None, false, mark).unwrap_or_default();
                self.stack.push(Frame::Sequence {
                    path,
                    next_index: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text = "pools:\n  - name: a\n    servers: []\nroutes:\n  - name: r\n    proxy:\n      pool: b\n";
        let index = PositionIndex::build(text);
        assert_eq!(
            index.find("routes[0].proxy.pool"),
            Some(Position { line: 7, column: 7 })
        );
        assert_eq!(
            index.find("pools[0].name"),
            Some(Position { line: 2, column: 5 })
        );
        assert_eq!(
            index.find("routes[0]"),
            Some(Position { line: 5, column: 5 })
        );
        assert_eq!(
            index.find("routes[0].proxy.pool.deeper"),
            Some(Position { line: 7, column: 7 })
        );
    }
}
