//! A compiled rule and how it is matched against a press.
//!
//! Everything a rule tests is prepared at load time (gesture bit mask, minute-of-day bit set,
//! boxed string lists), so matching allocates nothing. `matches` is the hot path; `mismatches`
//! says why in words for `rules explain` and must agree with it (a test sweeps both).

use super::clock::{Clock, TimeSet, DAY};
use super::{Action, AttrValue, Decision, PressContext, RuleRef};
use std::fmt;
use yijian_wire::Gesture;

/// One rule (or the fallback, which constrains nothing), ready to match.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    /// Name and place, handed out with every decision this rule makes.
    pub(super) rref: RuleRef,
    /// Column of the `[[rule]]` header, for warnings that point at it.
    pub(super) column: u32,
    /// `None` = any profile.
    pub(super) profiles: Option<Box<[Box<str>]>>,
    /// `None` = any button.
    pub(super) buttons: Option<Box<[Box<str>]>>,
    /// Always set; [`GestureSet::ALL`] when the rule does not name a gesture.
    pub(super) gestures: GestureSet,
    /// `None` = any time, including an unknown local time.
    pub(super) time: Option<TimeSet>,
    /// Every attribute must be present with an equal value; empty = anyone.
    pub(super) resident: Box<[(Box<str>, AttrValue)]>,
    /// What the press becomes.
    pub(super) action: Action,
}

impl Rule {
    pub(super) fn matches(&self, ctx: &PressContext<'_>) -> bool {
        in_list(&self.profiles, ctx.profile)
            && in_list(&self.buttons, ctx.button)
            && self.gestures.contains(ctx.gesture)
            && self
                .time
                .as_ref()
                .is_none_or(|t| ctx.local_minutes.is_some_and(|m| t.contains(m)))
            && self
                .resident
                .iter()
                .all(|(name, want)| ctx.attributes.get(&**name) == Some(want))
    }

    /// Why this rule does not match, one phrase per failing key; empty when it matches.
    pub(super) fn mismatches(&self, ctx: &PressContext<'_>) -> Vec<String> {
        let mut why = Vec::new();
        if !in_list(&self.profiles, ctx.profile) {
            why.push(format!(
                "profile is {}, rule wants {}",
                ctx.profile,
                Wants(&self.profiles)
            ));
        }
        if !in_list(&self.buttons, ctx.button) {
            why.push(format!(
                "button is {}, rule wants {}",
                ctx.button,
                Wants(&self.buttons)
            ));
        }
        if !self.gestures.contains(ctx.gesture) {
            why.push(format!(
                "gesture is {}, rule wants {}",
                ctx.gesture, self.gestures
            ));
        }
        if let Some(time) = &self.time {
            match ctx.local_minutes {
                None => why.push(format!("local time is unknown, rule wants {time}")),
                Some(m) if m >= DAY => why.push(format!("local time {m} min is not a time of day")),
                Some(m) if !time.contains(m) => {
                    why.push(format!("local time {} is outside {time}", Clock(m)))
                }
                Some(_) => {}
            }
        }
        for (name, want) in self.resident.iter() {
            match ctx.attributes.get(&**name) {
                None => why.push(format!("resident has no attribute {name}")),
                Some(have) if have != want => why.push(format!(
                    "resident {name} is {}, rule wants {}",
                    Shown(have),
                    Shown(want)
                )),
                Some(_) => {}
            }
        }
        why
    }

    pub(super) fn decide(&self) -> Decision {
        Decision {
            action: self.action.clone(),
            rule: self.rref.clone(),
        }
    }
}

fn in_list(list: &Option<Box<[Box<str>]>>, value: &str) -> bool {
    list.as_ref()
        .is_none_or(|l| l.iter().any(|x| **x == *value))
}

/// `main` or `one of red, green`.
struct Wants<'a>(&'a Option<Box<[Box<str>]>>);

impl fmt::Display for Wants<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self.0.as_deref().unwrap_or_default();
        if list.len() > 1 {
            f.write_str("one of ")?;
        }
        f.write_str(&list.join(", "))
    }
}

/// An attribute value as the rule file spells it: strings quoted, so `3` and `"3"` differ.
struct Shown<'a>(&'a AttrValue);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A set of gestures as four bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GestureSet(u8);

impl GestureSet {
    pub(super) const ALL: GestureSet = GestureSet(0b1111);

    pub(super) fn of(gestures: &[Gesture]) -> GestureSet {
        GestureSet(gestures.iter().fold(0, |bits, g| bits | bit(*g)))
    }

    pub(super) fn contains(self, g: Gesture) -> bool {
        self.0 & bit(g) != 0
    }

    pub(super) fn covers(self, other: GestureSet) -> bool {
        other.0 & !self.0 == 0
    }
}

fn bit(g: Gesture) -> u8 {
    // Exhaustive on purpose: a new gesture in the wire crate must be given a bit here.
    match g {
        Gesture::Single => 1,
        Gesture::Double => 2,
        Gesture::Triple => 4,
        Gesture::Long => 8,
    }
}

impl fmt::Display for GestureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Gesture::ALL
            .iter()
            .filter(|g| self.contains(**g))
            .map(|g| g.as_str())
            .collect();
        if names.len() > 1 {
            f.write_str("one of ")?;
        }
        f.write_str(&names.join(", "))
    }
}
