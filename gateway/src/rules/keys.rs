//! Checks of single values in a rule: each reports its own errors at the value (or list
//! element) and returns `None` after any, so the caller can keep checking the other keys.

use super::diag::FileDiags;
use super::names::attribute_name_ok;
use super::value::SValue;
use super::{Action, AttrValue};
use std::ops::Range;

/// A string or a non-empty list of strings, each checked by `parse`; `None` after any error.
pub(super) fn list<T>(
    d: &mut FileDiags<'_>,
    key: &str,
    value: &SValue,
    at: &Range<usize>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    let one = |d: &mut FileDiags<'_>, item: &SValue, at: &Range<usize>| match item {
        SValue::Str(s) => parse(s).map_err(|e| d.error(at, e)).ok(),
        SValue::Datetime(t) => {
            d.error(
                at,
                format!("{key} must be a quoted string, not the TOML date/time {t}"),
            );
            None
        }
        other => {
            d.error(
                at,
                format!(
                    "{key} must be a string or a list of strings, not {}",
                    other.kind()
                ),
            );
            None
        }
    };
    match value {
        SValue::Array(items) if items.is_empty() => {
            d.error(
                at,
                format!("{key} list is empty: leave `{key}` out to match any {key}"),
            );
            None
        }
        SValue::Array(items) => {
            let parsed: Vec<Option<T>> = items
                .iter()
                .map(|item| one(d, &item.value, &item.at(at)))
                .collect();
            parsed.into_iter().collect()
        }
        _ => one(d, value, at).map(|v| vec![v]),
    }
}

/// A single string parsed by `parse`, reporting its error at the value. A value that is not
/// a string gets the parser's own "must be one of ..." message.
pub(super) fn one<T>(
    d: &mut FileDiags<'_>,
    value: &SValue,
    at: &Range<usize>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let text = match value {
        SValue::Str(s) => s.as_str(),
        _ => "",
    };
    parse(text).map_err(|e| d.error(at, e)).ok()
}

pub(super) fn action(text: &str) -> Result<Action, String> {
    match text {
        "cancel" => Ok(Action::Cancel),
        _ => Err(
            "action must be \"cancel\" (the only action; for a request use service and priority)"
                .to_string(),
        ),
    }
}

/// Profile and button names: what devices and the device registry spell (`[a-z0-9_-]`).
pub(super) fn label(text: &str, key: &str, max: usize) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if (1..=max).contains(&text.len()) && text.chars().all(ok) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{key} {text:?} must be 1-{max} characters of a-z, 0-9, _ and -"
        ))
    }
}

pub(super) fn tags(
    d: &mut FileDiags<'_>,
    value: &SValue,
    at: &Range<usize>,
) -> Option<Vec<String>> {
    let SValue::Array(items) = value else {
        let kind = value.kind();
        d.error(at, format!("tags must be a list of strings, e.g. tags = [\"wheelchair_accessible\"], not {kind}"));
        return None;
    };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut tags: Vec<String> = Vec::new();
    let mut ok = true;
    for item in items {
        match &item.value {
            SValue::Str(s) if !s.is_empty() && s.chars().all(ok_char) => {
                if !tags.contains(s) {
                    tags.push(s.clone());
                }
            }
            SValue::Str(s) => {
                d.error(
                    &item.at(at),
                    format!("tag {s:?} must be lowercase letters, digits and _ ([a-z0-9_]+)"),
                );
                ok = false;
            }
            other => {
                d.error(
                    &item.at(at),
                    format!("each tag must be a string, not {}", other.kind()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(tags)
}

pub(super) fn resident(
    d: &mut FileDiags<'_>,
    value: &SValue,
    at: &Range<usize>,
) -> Option<Vec<(Box<str>, AttrValue)>> {
    let SValue::Table(entries) = value else {
        let kind = value.kind();
        d.error(at, format!("resident must be a table of attributes, e.g. resident = {{ lives_alone = true }}, not {kind}"));
        return None;
    };
    if entries.is_empty() {
        d.error(
            at,
            "resident = {} matches every resident: leave `resident` out",
        );
        return None;
    }
    let mut attrs = Vec::new();
    let mut named_ok = true;
    for (name, v) in entries {
        if !attribute_name_ok(&name.value) {
            // Residents cannot be imported with such a name, so the rule could never match.
            d.error(
                &name.at(at),
                format!("resident attribute name {:?} can never match: names are 1-64 characters of A-Z, a-z, 0-9, _ and -", name.value),
            );
            named_ok = false;
        }
        let attr = match &v.value {
            SValue::Bool(b) => AttrValue::Bool(*b),
            SValue::Int(i) => AttrValue::Int(*i),
            SValue::Str(s) => AttrValue::Text(s.clone()),
            other => {
                let name_at = name.at(at);
                let (name, kind) = (&name.value, other.kind());
                let at = v.at(&name_at);
                d.error(&at, format!("resident attribute {name} must be a boolean, an integer or a string, not {kind}"));
                continue;
            }
        };
        attrs.push((Box::from(name.value.as_str()), attr));
    }
    (named_ok && attrs.len() == entries.len()).then_some(attrs)
}
