//! Reading a marked YAML tree into typed values while collecting diagnostics: every value is
//! read through a `Walker`, which knows where it is (line, column, key path) and records what
//! is wrong instead of stopping at the first problem, so one run reports everything.

use crate::diag::{Diagnostic, Severity};
use marked_yaml::Node;
use std::collections::BTreeMap;

/// A position in the document (1-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

/// Where `node` starts; `fallback` (its key) for nodes without a position (empty values).
pub fn at(node: &Node, fallback: At) -> At {
    node.span().start().map_or(fallback, |m| At { line: m.line(), column: m.column() })
}

pub fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// CoreOS folded dashes to underscores: `reboot-strategy` is `reboot_strategy`.
pub fn fold(key: &str) -> String {
    key.replace('-', "_")
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// A plain (unquoted) `~`, `null` or nothing: the key is as good as absent.
pub fn is_null(node: &Node) -> bool {
    match node {
        Node::Scalar(s) => s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"),
        _ => false,
    }
}

/// A value at a path: where it is and the node.
#[derive(Clone, Copy)]
pub struct Value<'n> {
    pub node: &'n Node,
    pub at: At,
}

/// A mapping's known keys (folded), with their values and paths.
pub struct Fields<'n> {
    path: String,
    entries: BTreeMap<String, Value<'n>>,
}

impl<'n> Fields<'n> {
    /// The value of `key` (absent if the key is missing or null) and its path.
    pub fn get(&self, key: &str) -> Option<(Value<'n>, String)> {
        let v = self.entries.get(key)?;
        (!is_null(v.node)).then(|| (*v, child(&self.path, key)))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same fields with `from` read as `to` (another format's name for the same setting).
    pub fn renamed(mut self, from: &str, to: &str) -> Fields<'n> {
        if let Some(v) = self.entries.remove(from) {
            self.entries.insert(to.to_string(), v);
        }
        self
    }
}

#[derive(Default)]
pub struct Walker {
    pub diagnostics: Vec<Diagnostic>,
    /// Lines that carried a `!!binary` tag (taken out before parsing): values starting there
    /// are base64.
    pub binary_lines: std::collections::BTreeSet<usize>,
    /// Bytes of `write_files` content decoded so far (the document's budget is
    /// `files::MAX_DECODED`).
    pub decoded: u64,
}

/// The known key closest to `key`, if close enough to be a likely typo.
fn suggestion<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

impl Walker {
    pub fn error(&mut self, at: At, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, at, path, message.into());
    }

    pub fn warn(&mut self, at: At, path: &str, message: impl Into<String>) {
        self.push(Severity::Warning, at, path, message.into());
    }

    fn push(&mut self, severity: Severity, at: At, path: &str, message: String) {
        self.diagnostics.push(Diagnostic { severity, line: at.line, column: at.column, path: path.into(), message });
    }

    fn expected(&mut self, v: Value, path: &str, what: &str) {
        let found = match v.node {
            Node::Scalar(s) => format!("{:?}", s.as_str()),
            other => kind(other).to_string(),
        };
        self.error(v.at, path, format!("expected {what}, found {found}"));
    }

    /// `v` as a mapping whose keys are among `known` (folded). Unknown keys are warned about
    /// and ignored; the same key twice (`a-b` and `a_b`) is an error.
    pub fn mapping<'n>(&mut self, v: Value<'n>, path: &str, known: &[&str]) -> Option<Fields<'n>> {
        let Node::Mapping(map) = v.node else {
            self.expected(v, path, "a mapping");
            return None;
        };
        let mut entries: BTreeMap<String, Value<'n>> = BTreeMap::new();
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (key, node) in map.iter() {
            let key_at = key.span().start().map_or(v.at, |m| At { line: m.line(), column: m.column() });
            let folded = fold(key.as_str());
            let key_path = child(path, key.as_str());
            if !known.contains(&folded.as_str()) {
                let hint = suggestion(&folded, known).map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default();
                self.warn(key_at, &key_path, format!("unknown key {:?}{hint}; ignored", key.as_str()));
                continue;
            }
            if let Some(first) = spelled.get(&folded) {
                self.error(
                    key_at,
                    &key_path,
                    format!("{:?} repeats {first:?} (dashes and underscores are the same)", key.as_str()),
                );
                continue;
            }
            spelled.insert(folded.clone(), key.as_str().to_string());
            entries.insert(folded, Value { node, at: at(node, key_at) });
        }
        Some(Fields { path: path.to_string(), entries })
    }

    /// `v` as a list: its items with their paths.
    pub fn list<'n>(&mut self, v: Value<'n>, path: &str) -> Option<Vec<(Value<'n>, String)>> {
        let Node::Sequence(items) = v.node else {
            self.expected(v, path, "a list");
            return None;
        };
        Some(items.iter().enumerate().map(|(i, node)| (Value { node, at: at(node, v.at) }, index(path, i))).collect())
    }

    /// A list whose items are mappings with `keys`, each read by `read` (which reports its own
    /// problems and returns `None` for an item it refuses).
    pub fn records<'n, T>(
        &mut self,
        v: Value<'n>,
        path: &str,
        keys: &[&str],
        mut read: impl FnMut(&mut Walker, &Fields<'n>, Value<'n>, &str) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (item, item_path) in self.list(v, path).unwrap_or_default() {
            if let Some(fields) = self.mapping(item, &item_path, keys)
                && let Some(record) = read(self, &fields, item, &item_path)
            {
                out.push(record);
            }
        }
        out
    }

    /// A scalar as text (numbers and booleans too: CoreOS read them as strings).
    pub fn string(&mut self, v: Value, path: &str) -> Option<String> {
        match v.node {
            Node::Scalar(s) => Some(s.as_str().to_string()),
            _ => {
                self.expected(v, path, "a string");
                None
            }
        }
    }

    /// A non-empty string.
    pub fn text(&mut self, v: Value, path: &str) -> Option<String> {
        let s = self.string(v, path)?;
        if s.is_empty() {
            self.error(v.at, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An absolute path.
    pub fn absolute_path(&mut self, v: Value, path: &str) -> Option<String> {
        let p = self.text(v, path)?;
        if p.starts_with('/') {
            return Some(p);
        }
        self.error(v.at, path, format!("{p:?} is not an absolute path"));
        None
    }

    /// A duration as update.toml and service files write it (`100ms`, `5s`, `2m`, `1h`).
    pub fn duration(&mut self, v: Value, path: &str) -> Option<String> {
        let d = self.text(v, path)?;
        match cairn_release::duration::parse(&d) {
            Ok(_) => Some(d),
            Err(e) => {
                self.error(v.at, path, e.to_string());
                None
            }
        }
    }

    /// `true`/`false` (and YAML 1.1's `yes`/`no`/`on`/`off`, which CoreOS accepted).
    pub fn bool(&mut self, v: Value, path: &str) -> Option<bool> {
        if let Node::Scalar(s) = v.node
            && s.may_coerce()
        {
            match s.as_str().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => return Some(true),
                "false" | "no" | "off" => return Some(false),
                _ => {}
            }
        }
        self.expected(v, path, "true or false");
        None
    }

    pub fn u32(&mut self, v: Value, path: &str) -> Option<u32> {
        if let Node::Scalar(s) = v.node
            && let Ok(n) = s.as_str().parse::<u32>()
        {
            return Some(n);
        }
        self.expected(v, path, "a whole number");
        None
    }

    /// A list of strings (a lone string is an error: it is not a list of one).
    pub fn strings(&mut self, v: Value, path: &str) -> Option<Vec<String>> {
        let items = self.list(v, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (item, item_path) in items {
            match self.string(item, &item_path) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A mapping with keys of the document's choosing: `(key, value, path)` of each entry.
    pub fn entries<'n>(&mut self, v: Value<'n>, path: &str) -> Option<Vec<(String, Value<'n>, String)>> {
        let Node::Mapping(map) = v.node else {
            self.expected(v, path, "a mapping");
            return None;
        };
        Some(
            map.iter()
                .map(|(key, node)| {
                    let key = key.as_str().to_string();
                    let p = child(path, &key);
                    (key, Value { node, at: at(node, v.at) }, p)
                })
                .collect(),
        )
    }

    /// A mapping of strings to strings (an environment).
    pub fn string_map(&mut self, v: Value, path: &str) -> Option<BTreeMap<String, String>> {
        let Node::Mapping(map) = v.node else {
            self.expected(v, path, "a mapping");
            return None;
        };
        let mut out = BTreeMap::new();
        for (key, node) in map.iter() {
            let value = Value { node, at: at(node, v.at) };
            if let Some(s) = self.string(value, &child(path, key.as_str())) {
                out.insert(key.as_str().to_string(), s);
            }
        }
        Some(out)
    }
}
