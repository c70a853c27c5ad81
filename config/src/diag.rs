//! What validation found: errors (the document is refused whole) and warnings (it is used),
//! each with the line and column it points at and the path of the key (`users[1].groups`).

use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// 1-based; 0 when the problem is the whole document.
    pub line: usize,
    pub column: usize,
    /// `users[1].groups`; empty for the document itself.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn error_at(line: usize, column: usize, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Error, line, column, path: path.into(), message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}:{}: {severity}: ", self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Diagnostics in document order (then errors before warnings at the same place).
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (a.line, a.column, b.severity).cmp(&(b.line, b.column, a.severity)));
}

pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(|d| d.severity == Severity::Error)
}
