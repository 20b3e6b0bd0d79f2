//! Warnings for rules that can never decide anything because an earlier rule always wins.
//!
//! An earlier rule shadows a later one when, key by key, it accepts everything the later one
//! accepts. Only single earlier rules are compared: a rule covered by the union of several
//! earlier ones is not reported.

use super::diag::{Diagnostic, Severity};
use super::eval::Rule;
use super::Action;

pub(super) fn warnings(rules: &[Rule], fallback: Option<&Rule>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, later) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..i].iter().find(|earlier| covers(earlier, later)) {
            let message = format!(
                "rule {:?} can never match: rule {:?} ({}) comes first and matches every press it would",
                later.rref.name,
                earlier.rref.name,
                at(earlier)
            );
            out.push(warning(later, message));
        }
    }
    let Some(fallback) = fallback else { return out };
    if let Some(all) = rules.iter().find(|r| catches_all(r)) {
        let message = format!(
            "fallback {:?} is never used: rule {:?} ({}) matches every press",
            fallback.rref.name,
            all.rref.name,
            at(all)
        );
        out.push(warning(fallback, message));
    }
    if fallback.action == Action::Cancel {
        let message = "the fallback cancels: a press no rule understands would reach nobody; \
                       an unknown press from an elderly person may be an emergency";
        out.push(warning(fallback, message.to_string()));
    }
    out
}

/// True when every press `later` matches is also matched by `earlier`.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    let list = |e: &Option<Box<[Box<str>]>>, l: &Option<Box<[Box<str>]>>| match (e, l) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|x| e.contains(x)),
    };
    let time = match (&earlier.time, &later.time) {
        (None, _) => true,
        // A rule with a time window never matches an unknown local time; one without does.
        (Some(_), None) => false,
        (Some(e), Some(l)) => e.covers(l),
    };
    list(&earlier.profiles, &later.profiles)
        && list(&earlier.buttons, &later.buttons)
        && earlier.gestures.covers(later.gestures)
        && time
        && earlier
            .resident
            .iter()
            .all(|attr| later.resident.contains(attr))
}

fn catches_all(rule: &Rule) -> bool {
    rule.profiles.is_none()
        && rule.buttons.is_none()
        && rule.gestures == super::eval::GestureSet::ALL
        && rule.time.is_none()
        && rule.resident.is_empty()
}

fn at(rule: &Rule) -> String {
    format!("{}:{}:{}", rule.rref.file, rule.rref.line, rule.column)
}

fn warning(rule: &Rule, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: rule.rref.file.to_string(),
        line: rule.rref.line,
        column: rule.column,
        message,
    }
}
