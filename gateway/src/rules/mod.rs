//! Routing rules: the stage between `intake` and `store` that turns a press into a decision.
//!
//! ```text
//! intake (valid press) ──> rules::RuleSet::evaluate(PressContext) ──> Decision ──> store
//! ```
//!
//! Rules are data: `rules/*.toml`, loaded in file-name order, first match wins, and a mandatory
//! `[fallback]` decides every press no rule matched (format: `rules/README.md`). Loading checks
//! everything at once and reports each problem as `file:line:column: error: ...`; a set with
//! any error is refused as a whole, so a reload keeps the old rules.
//!
//! Files: `value` reads TOML with spans, `parse` checks and compiles (`keys`: one value each),
//! `shadow` warns about rules that can never match, `eval` matches, `explain` words a decision,
//! `clock` handles local time, `reload` swaps in a changed set while the gateway runs, `names`
//! holds the spelling of what a rule may name that residents must accept too.

mod clock;
mod diag;
mod eval;
mod explain;
mod keys;
mod names;
mod parse;
pub mod reload;
mod shadow;
mod value;

#[cfg(test)]
mod tests;

pub use clock::{local_minutes, local_minutes_in};
pub use diag::{CheckFailed, Diagnostic, Severity};
pub use names::attribute_name_ok;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use yijian_wire::{Gesture, Priority, Service};

/// The shipped rules, used when no rules directory is configured and printable by the CLI.
pub const DEFAULT_RULES: &str = include_str!("../../../rules/default.toml");

/// A checked, compiled rule set. Immutable: share it in an `Arc` and swap the `Arc` to reload.
#[derive(Clone, Debug)]
pub struct RuleSet {
    /// In evaluation order: files by name, rules in file order.
    rules: Box<[eval::Rule]>,
    /// Decides every press no rule matched; exactly one per set.
    fallback: eval::Rule,
    /// The files the set came from, in load order (as named in diagnostics and [`RuleRef`]s).
    files: Vec<String>,
}

/// A rule set that passed its check, and the warnings it still deserves.
#[derive(Debug)]
pub struct Loaded {
    pub set: RuleSet,
    pub warnings: Vec<Diagnostic>,
}

/// What the rules see of one press.
#[derive(Clone, Copy, Debug)]
pub struct PressContext<'a> {
    /// The device's profile (its model's button layout), e.g. `one-button`.
    pub profile: &'a str,
    /// The device's own button label, e.g. `main`, `red`.
    pub button: &'a str,
    pub gesture: Gesture,
    /// Minutes since the resident's local midnight ([`local_minutes`]); `None` when unknown,
    /// and then no rule with a `time` matches.
    pub local_minutes: Option<u16>,
    /// The resident's attributes, e.g. `lives_alone`, `mobility`.
    pub attributes: &'a BTreeMap<String, AttrValue>,
}

/// A resident attribute value, as stored with the resident and written in rules.
pub use crate::store::AttrValue;

/// What to do with a press, and which rule said so.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub action: Action,
    pub rule: RuleRef,
}

/// The outcome of a press.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Open a request; `tags` are passed to the backend (e.g. `wheelchair_accessible`).
    Request {
        service: Service,
        priority: Priority,
        tags: Vec<String>,
    },
    /// Cancel the device's open request (inside the cancel window; the caller decides).
    Cancel,
}

/// Which rule made a decision: for logs, the journal and `rules explain`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleRef {
    pub name: Arc<str>,
    pub file: Arc<str>,
    /// 1-based line of the rule's `[[rule]]` / `[fallback]` header.
    pub line: u32,
    /// True when no rule matched and the fallback decided.
    pub fallback: bool,
}

/// A decision with the reasons every earlier rule did not match.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub decision: Decision,
    /// Every rule tried before the winner, in order, with why it did not match.
    pub skipped: Vec<(RuleRef, String)>,
}

impl RuleSet {
    /// Loads and checks every `*.toml` file in `dir` (not recursive; names starting with `.`
    /// are skipped), in file-name order. File names in diagnostics are `dir/name`.
    pub fn load_dir(dir: &Path) -> Result<Loaded, CheckFailed> {
        let sources = read_dir_sources(dir)?;
        RuleSet::check_sources(&dir.display().to_string(), &sources)
    }

    /// Checks sources as [`read_dir_sources`] returns them; `label` names the set (the
    /// directory) in problems that belong to no file.
    pub fn check_sources(label: &str, sources: &Sources) -> Result<Loaded, CheckFailed> {
        parse::check(label, sources)
    }

    /// Checks `(file name, text)` pairs, in the given order, as one set. Problems of the whole
    /// set (no fallback) are reported under the name `rules`.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Loaded, CheckFailed> {
        let sources: Vec<_> = sources
            .iter()
            .map(|(name, text)| (name.clone(), Ok(text.clone())))
            .collect();
        parse::check("rules", &sources)
    }

    /// The shipped rules ([`DEFAULT_RULES`]), as `rules/default.toml`.
    pub fn default_set() -> RuleSet {
        let sources = [("rules/default.toml".to_string(), DEFAULT_RULES.to_string())];
        RuleSet::from_sources(&sources)
            .expect("the shipped rules pass their check (unit-tested)")
            .set
    }

    /// The decision for a press: the first matching rule, else the fallback. Never fails and
    /// allocates only for the returned decision's tags.
    pub fn evaluate(&self, ctx: &PressContext<'_>) -> Decision {
        self.rules
            .iter()
            .find(|rule| rule.matches(ctx))
            .unwrap_or(&self.fallback)
            .decide()
    }

    /// Like [`RuleSet::evaluate`], with why each earlier rule did not match. Not for the hot path.
    pub fn explain(&self, ctx: &PressContext<'_>) -> Explanation {
        let mut skipped = Vec::new();
        for rule in self.rules.iter() {
            let why = rule.mismatches(ctx);
            if why.is_empty() {
                return Explanation {
                    decision: rule.decide(),
                    skipped,
                };
            }
            skipped.push((rule.rref.clone(), why.join("; ")));
        }
        Explanation {
            decision: self.fallback.decide(),
            skipped,
        }
    }

    /// Number of rules, not counting the fallback.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when only the fallback decides.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The files the set was loaded from, in load order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Every profile any rule names, sorted: lets the gateway warn about a device whose
    /// profile no rule knows (its presses all go to the fallback).
    pub fn profiles(&self) -> Vec<String> {
        let all: std::collections::BTreeSet<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.profiles.iter().flat_map(|p| p.iter()))
            .map(|p| &**p)
            .collect();
        all.into_iter().map(str::to_string).collect()
    }
}

/// Rule files as read: `(dir/name, text or why it could not be read)`, in load order.
pub type Sources = Vec<(String, Result<String, String>)>;

/// Reads every `*.toml` file in `dir` (not recursive; names starting with `.` are skipped),
/// sorted by file name. Fails only when the directory cannot be listed or holds no rule file.
pub fn read_dir_sources(dir: &Path) -> Result<Sources, CheckFailed> {
    let label = dir.display().to_string();
    let fail = |message: String| CheckFailed {
        errors: vec![diag::set_error(&label, message)],
        warnings: vec![],
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("cannot read the rules directory: {e}")))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot list the rules directory: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `is_file` follows symlinks, so a linked rule file counts.
        if name.ends_with(".toml") && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(fail("no *.toml rule files in this directory".to_string()));
    }
    names.sort();
    Ok(names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
            (path.display().to_string(), text)
        })
        .collect())
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Text(s) => f.write_str(s),
        }
    }
}
