//! Tests of the rules stage as a user sees it: rule files in, decisions and diagnostics out.

mod check;
mod matching;

use super::{AttrValue, CheckFailed, Loaded, PressContext, RuleSet};
use std::collections::BTreeMap;
use yijian_wire::Gesture;

fn load(files: &[(&str, &str)]) -> Loaded {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    match RuleSet::from_sources(&sources) {
        Ok(loaded) => loaded,
        Err(failed) => panic!("rules should load, got:\n{failed}"),
    }
}

fn fail(files: &[(&str, &str)]) -> CheckFailed {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    match RuleSet::from_sources(&sources) {
        Ok(_) => panic!("rules should not load"),
        Err(failed) => failed,
    }
}

/// An owned press, turned into a [`PressContext`] on demand.
#[derive(Clone)]
struct Press {
    profile: &'static str,
    button: &'static str,
    gesture: Gesture,
    minutes: Option<u16>,
    attrs: BTreeMap<String, AttrValue>,
}

fn press(profile: &'static str, button: &'static str, gesture: Gesture) -> Press {
    Press {
        profile,
        button,
        gesture,
        minutes: None,
        attrs: BTreeMap::new(),
    }
}

impl Press {
    fn at(mut self, hour: u16, minute: u16) -> Press {
        self.minutes = Some(hour * 60 + minute);
        self
    }
    fn attr(mut self, name: &str, value: AttrValue) -> Press {
        self.attrs.insert(name.to_string(), value);
        self
    }
    fn ctx(&self) -> PressContext<'_> {
        PressContext {
            profile: self.profile,
            button: self.button,
            gesture: self.gesture,
            local_minutes: self.minutes,
            attributes: &self.attrs,
        }
    }
}
