//! Checking rule files: TOML → compiled [`Rule`]s, with every problem reported at its place.
//!
//! Each key is validated on its own, so one bad value never hides another; a rule with any
//! error is left out, and the whole set is refused if any error was found.

use super::clock::{TimeSet, Window};
use super::diag::{set_error, FileDiags, Severity};
use super::eval::{GestureSet, Rule};
use super::keys::{action, label, list, one, resident, tags};
use super::value::{Doc, Entries, SValue, TableOr, TablesOr};
use super::{shadow, Action, AttrValue, CheckFailed, Loaded, RuleRef, RuleSet};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use yijian_wire::{Gesture, Priority, Service};

const RULE_KEYS: &str =
    "name, profile, button, gesture, time, resident, service, priority, tags, action";
const FALLBACK_KEYS: &str = "name, service, priority, tags, action";
const MATCH_KEYS: [&str; 5] = ["profile", "button", "gesture", "time", "resident"];

/// Checks `sources` (file name, text or read error), in order, as one rule set.
/// `label` names the set in problems that belong to no file (e.g. the directory).
pub(super) fn check(
    label: &str,
    sources: &[(String, Result<String, String>)],
) -> Result<Loaded, CheckFailed> {
    let mut set = Builder {
        rules: Vec::new(),
        fallback: None,
        fallback_at: None,
        names: HashMap::new(),
    };
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    // Files that could not be read or parsed: they might hold the missing fallback.
    let mut unread = 0;
    if sources.is_empty() {
        errors.push(set_error(label, "no rule files (*.toml) to load"));
    }
    for (file, text) in sources {
        let text = match text {
            Ok(text) => text,
            Err(why) => {
                errors.push(set_error(file, format!("cannot read: {why}")));
                unread += 1;
                continue;
            }
        };
        let mut diags = FileDiags::new(file, text);
        match toml::from_str::<Doc>(text) {
            Ok(doc) => set.file(&doc, &Arc::from(file.as_str()), &mut diags),
            Err(e) => {
                unread += 1;
                let found = e.message().trim().replace('\n', ": ");
                let message = if toml::from_str::<toml::Table>(text).is_ok() {
                    // Valid TOML in a shape no visitor of ours takes (e.g. a date as a rule).
                    format!("unexpected value here: rules are [[rule]] tables and the fallback one [fallback] table ({found})")
                } else {
                    format!("invalid TOML: {found}")
                };
                match e.span() {
                    Some(span) => diags.error(&span, message),
                    None => diags.file_error(message),
                }
            }
        }
        diags.out.sort_by_key(|d| (d.line, d.column));
        for d in diags.out {
            match d.severity {
                Severity::Error => errors.push(d),
                Severity::Warning => warnings.push(d),
            }
        }
    }
    warnings.extend(shadow::warnings(&set.rules, set.fallback.as_ref()));
    // A fallback with errors of its own has been reported already.
    if set.fallback_at.is_none() && unread == 0 {
        errors.push(set_error(
            label,
            "no [fallback] rule: every press needs a decision",
        ));
    } else if set.fallback_at.is_none() {
        let message = "no [fallback] rule found (a file that could not be read may hold it): every press needs a decision";
        errors.push(set_error(label, message));
    }
    let fallback = match set.fallback {
        Some(fallback) if errors.is_empty() => fallback,
        _ => return Err(CheckFailed { errors, warnings }),
    };
    let files = sources.iter().map(|(file, _)| file.clone()).collect();
    let set = RuleSet {
        rules: set.rules.into_boxed_slice(),
        fallback,
        files,
    };
    Ok(Loaded { set, warnings })
}

struct Builder {
    rules: Vec<Rule>,
    fallback: Option<Rule>,
    /// Where the first `[fallback]` is, valid or not, to refuse a second one.
    fallback_at: Option<String>,
    /// Rule name → where it was first defined (`file:line:column`).
    names: HashMap<String, String>,
}

impl Builder {
    fn file(&mut self, doc: &Doc, file: &Arc<str>, d: &mut FileDiags<'_>) {
        for key in &doc.unknown {
            let message = format!(
                "unknown top-level key `{}` (expected [[rule]] tables and one [fallback] table)",
                key.value
            );
            d.error(&key.at(&(0..0)), message);
        }
        for (key, tables) in &doc.rules {
            let key_at = key.at(&(0..0));
            match tables {
                TablesOr::Tables(tables) => {
                    for table in tables {
                        let at = table.at(&key_at);
                        match &table.value {
                            TableOr::Table(entries) => self.rule(&at, entries, false, file, d),
                            TableOr::Other(kind) => {
                                d.error(&at, format!("each rule must be a table, not {kind}"))
                            }
                        }
                    }
                }
                TablesOr::Table => d.error(&key_at, "write [[rule]] (a list of rules), not [rule]"),
                TablesOr::Other(kind) => d.error(
                    &key_at,
                    format!("`rule` must be [[rule]] tables, not {kind}"),
                ),
            }
        }
        for (key, table) in &doc.fallbacks {
            let key_at = key.at(&(0..0));
            match &table.value {
                TableOr::Table(entries) => self.rule(&table.at(&key_at), entries, true, file, d),
                TableOr::Other("a list") => {
                    d.error(&key_at, "write [fallback] (exactly one), not [[fallback]]")
                }
                TableOr::Other(kind) => {
                    d.error(&key_at, format!("[fallback] must be a table, not {kind}"))
                }
            }
        }
        if doc.rules.is_empty() && doc.fallbacks.is_empty() && doc.unknown.is_empty() {
            d.warning(&(0..0), "this file has no [[rule]] and no [fallback]");
        }
    }

    /// Checks one `[[rule]]` or `[fallback]` table and keeps it if it has no error.
    fn rule(
        &mut self,
        header: &Range<usize>,
        entries: &Entries,
        fallback: bool,
        file: &Arc<str>,
        d: &mut FileDiags<'_>,
    ) {
        let errors_before = error_count(d);
        let (line, column) = d.position(header);
        let here = format!("{}:{line}:{column}", d.file);
        let mut draft = Draft::default();
        for (key, value) in entries {
            let (k, kspan) = (key.value.as_str(), key.at(header));
            let vspan = value.at(&kspan);
            let v = &value.value;
            match k {
                _ if fallback && MATCH_KEYS.contains(&k) => d.error(
                    &kspan,
                    format!(
                        "`{k}` is not allowed in [fallback]: it takes every press no rule matched"
                    ),
                ),
                "name" => match v {
                    SValue::Str(s) if !s.trim().is_empty() => draft.name = Some((s.clone(), vspan)),
                    _ => d.error(&vspan, "name must be a non-empty string"),
                },
                "profile" => draft.profiles = list(d, k, v, &vspan, |s| label(s, "profile", 64)),
                "button" => draft.buttons = list(d, k, v, &vspan, |s| label(s, "button", 32)),
                "gesture" => draft.gestures = list(d, k, v, &vspan, str::parse::<Gesture>),
                "time" => draft.time = list(d, k, v, &vspan, Window::parse),
                "resident" => draft.resident = resident(d, v, &vspan),
                "service" => {
                    draft.service = Some((one(d, v, &vspan, str::parse::<Service>), kspan))
                }
                "priority" => {
                    draft.priority = Some((one(d, v, &vspan, str::parse::<Priority>), kspan))
                }
                "tags" => draft.tags = Some((tags(d, v, &vspan), kspan)),
                "action" => draft.action = Some((one(d, v, &vspan, action), kspan)),
                _ => {
                    let (what, keys) = if fallback {
                        ("fallback", FALLBACK_KEYS)
                    } else {
                        ("rule", RULE_KEYS)
                    };
                    d.error(
                        &kspan,
                        format!("unknown key `{k}` in {what} (expected one of {keys})"),
                    );
                }
            }
        }
        let named = draft.name.is_some();
        let name = match draft.name.take() {
            Some((name, span)) => {
                match self.names.get(&name) {
                    Some(first) => d.error(
                        &span,
                        format!("duplicate rule name {name:?} (first defined at {first})"),
                    ),
                    None => {
                        self.names.insert(name.clone(), here.clone());
                    }
                }
                name
            }
            None if fallback => {
                match self.names.get("fallback") {
                    Some(first) => d.error(
                        header,
                        format!("this [fallback] has no name, so it is called \"fallback\", which the rule at {first} already is: name it"),
                    ),
                    None => {
                        self.names.insert("fallback".to_string(), here.clone());
                    }
                }
                "fallback".to_string()
            }
            None => {
                d.error(header, "rule has no name: add name = \"...\" so every decision can say which rule made it");
                "(unnamed)".to_string()
            }
        };
        let who = match (fallback, named) {
            (true, true) => format!("fallback {name:?}"),
            (true, false) => "[fallback]".to_string(),
            (false, true) => format!("rule {name:?}"),
            (false, false) => "this rule".to_string(),
        };
        let action = draft.outcome(&who, header, d);
        if fallback {
            if let Some(first) = &self.fallback_at {
                d.error(
                    header,
                    format!(
                        "a second [fallback] (the first is at {first}): there must be exactly one"
                    ),
                );
                return;
            }
            self.fallback_at = Some(here);
        }
        let action = match action {
            Some(action) if error_count(d) == errors_before => action,
            _ => return,
        };
        let rule = Rule {
            rref: RuleRef {
                name: Arc::from(name.as_str()),
                file: file.clone(),
                line,
                fallback,
            },
            column,
            profiles: draft.profiles.map(boxed),
            buttons: draft.buttons.map(boxed),
            gestures: draft
                .gestures
                .map_or(GestureSet::ALL, |g| GestureSet::of(&g)),
            time: draft.time.map(TimeSet::new),
            resident: draft.resident.unwrap_or_default().into_boxed_slice(),
            action,
        };
        if fallback {
            self.fallback = Some(rule);
        } else {
            self.rules.push(rule);
        }
    }
}

/// What one table said, each key already checked on its own. For the keys that say what to
/// do, the outer `Option` is "key present" and the inner one "value valid", with the key's span.
#[derive(Default)]
struct Draft {
    name: Option<(String, Range<usize>)>,
    profiles: Option<Vec<String>>,
    buttons: Option<Vec<String>>,
    gestures: Option<Vec<Gesture>>,
    time: Option<Vec<Window>>,
    resident: Option<Vec<(Box<str>, AttrValue)>>,
    service: Option<(Option<Service>, Range<usize>)>,
    priority: Option<(Option<Priority>, Range<usize>)>,
    tags: Option<(Option<Vec<String>>, Range<usize>)>,
    action: Option<(Option<Action>, Range<usize>)>,
}

impl Draft {
    /// Checks that the keys saying what to do fit together; `None` when they do not.
    fn outcome(&self, who: &str, header: &Range<usize>, d: &mut FileDiags<'_>) -> Option<Action> {
        if let Some((action, action_span)) = &self.action {
            let mut ok = true;
            for (other, span) in [
                ("service", self.service.as_ref().map(|s| &s.1)),
                ("priority", self.priority.as_ref().map(|p| &p.1)),
                ("tags", self.tags.as_ref().map(|t| &t.1)),
            ] {
                if let Some(span) = span {
                    let later = if span.start > action_span.start {
                        span
                    } else {
                        action_span
                    };
                    d.error(later, format!("{who} has both action and {other}"));
                    ok = false;
                }
            }
            return if ok { action.clone() } else { None };
        }
        match (&self.service, &self.priority) {
            (Some((service, _)), Some((priority, _))) => {
                let tags = self.tags.as_ref().map_or(Some(Vec::new()), |t| t.0.clone());
                Some(Action::Request {
                    service: (*service)?,
                    priority: (*priority)?,
                    tags: tags?,
                })
            }
            (Some((_, span)), None) => {
                d.error(
                    span,
                    format!(
                        "{who} has service but no priority ({})",
                        Priority::choices()
                    ),
                );
                None
            }
            (None, Some((_, span))) => {
                d.error(
                    span,
                    format!("{who} has priority but no service ({})", Service::choices()),
                );
                None
            }
            (None, None) => {
                d.error(header, format!("{who} says nothing to do: give service and priority, or action = \"cancel\""));
                None
            }
        }
    }
}

fn error_count(d: &FileDiags<'_>) -> usize {
    d.out
        .iter()
        .filter(|x| x.severity == Severity::Error)
        .count()
}

fn boxed(list: Vec<String>) -> Box<[Box<str>]> {
    list.into_iter().map(String::into_boxed_str).collect()
}
