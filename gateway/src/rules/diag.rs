//! Diagnostics: every problem in every rule file, each with its place, collected at once.

use std::fmt;
use std::ops::Range;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The rule set cannot be used.
    Error,
    /// The rule set works but probably not as its author meant (e.g. a rule that can never match).
    Warning,
}

/// One problem, printed as `file:line:column: error: message` like a compiler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The rule file (as given to the loader), or the directory/set for problems of the whole set.
    pub file: String,
    /// 1-based line; 0 when the problem has no position (a whole file or the whole set).
    pub line: u32,
    /// 1-based column in characters; 0 when `line` is 0.
    pub column: u32,
    /// What is wrong, in words that tell how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "{}: {severity}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {severity}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// A rule set that did not pass its check: all errors, plus the warnings found on the way.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", lines(.errors, .warnings))]
pub struct CheckFailed {
    /// At least one.
    pub errors: Vec<Diagnostic>,
    /// Reported too, so a fix of the errors does not surprise with new complaints.
    pub warnings: Vec<Diagnostic>,
}

fn lines(errors: &[Diagnostic], warnings: &[Diagnostic]) -> String {
    let all: Vec<String> = errors
        .iter()
        .chain(warnings)
        .map(ToString::to_string)
        .collect();
    all.join("\n")
}

/// Byte offset → 1-based line and column (columns count characters, not bytes).
pub(super) struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    pub(super) fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset) - 1;
        let start = self.starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (to_u32(line + 1), to_u32(column + 1))
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Collects the diagnostics of one file.
pub(super) struct FileDiags<'t> {
    pub(super) file: String,
    index: LineIndex<'t>,
    pub(super) out: Vec<Diagnostic>,
}

impl<'t> FileDiags<'t> {
    pub(super) fn new(file: &str, text: &'t str) -> Self {
        FileDiags {
            file: file.to_string(),
            index: LineIndex::new(text),
            out: Vec::new(),
        }
    }

    pub(super) fn position(&self, span: &Range<usize>) -> (u32, u32) {
        self.index.position(span.start)
    }

    pub(super) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.push(Severity::Error, Some(span), message.into());
    }

    pub(super) fn warning(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, Some(span), message.into());
    }

    pub(super) fn file_error(&mut self, message: impl Into<String>) {
        self.push(Severity::Error, None, message.into());
    }

    fn push(&mut self, severity: Severity, span: Option<&Range<usize>>, message: String) {
        let (line, column) = span.map_or((0, 0), |s| self.position(s));
        self.out.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            column,
            message,
        });
    }
}

/// A diagnostic about the set as a whole (no position).
pub(super) fn set_error(label: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: label.to_string(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\n# 说明\nname = \"x\"\n";
        let index = LineIndex::new(text);
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(4), (1, 5));
        let name = text.find("name").expect("present");
        assert_eq!(index.position(name), (3, 1));
        let x = text.find("\"x\"").expect("present");
        assert_eq!(index.position(x), (3, 8));
        let wide = "说明 = 1";
        assert_eq!(
            LineIndex::new(wide).position(wide.find('=').expect("present")),
            (1, 4)
        );
    }

    #[test]
    fn display_with_and_without_position() {
        let mut d = FileDiags::new("rules/a.toml", "x\ny = 2\n");
        d.error(&(4..5), "bad");
        d.file_error("unreadable");
        assert_eq!(d.out[0].to_string(), "rules/a.toml:2:3: error: bad");
        assert_eq!(d.out[1].to_string(), "rules/a.toml: error: unreadable");
        let failed = CheckFailed {
            errors: d.out.clone(),
            warnings: vec![],
        };
        assert_eq!(
            failed.to_string(),
            "rules/a.toml:2:3: error: bad\nrules/a.toml: error: unreadable"
        );
    }
}
