//! Matching, first-match order, the fallback, explanations and the shipped rules.

use super::{load, press, Press};
use crate::rules::{Action, AttrValue, RuleSet, DEFAULT_RULES};
use yijian_wire::Gesture::{Double, Long, Single, Triple};
use yijian_wire::{Gesture, Priority, Service};

const FALLBACK: &str =
    "[fallback]\nname = \"human\"\nservice = \"rescue\"\npriority = \"urgent\"\n";

/// True when a set of one rule with `keys` (plus a fallback) routes `p` to that rule; also
/// checks that `explain` agrees and gives a reason when it does not match.
fn rule_matches(keys: &str, p: &Press) -> bool {
    let text = format!(
        "[[rule]]\nname = \"r\"\n{keys}\nservice = \"taxi\"\npriority = \"routine\"\n\n{FALLBACK}"
    );
    let set = load(&[("t.toml", &text)]).set;
    let decision = set.evaluate(&p.ctx());
    let explained = set.explain(&p.ctx());
    assert_eq!(
        explained.decision, decision,
        "explain disagrees with evaluate for {keys}"
    );
    if decision.rule.fallback {
        assert!(
            !explained.skipped[0].1.is_empty(),
            "a skipped rule needs a reason"
        );
    }
    !decision.rule.fallback
}

#[test]
fn every_key_matches_as_written() {
    use AttrValue::{Bool, Int, Text};
    let p = || press("one-button", "main", Single);
    let cases: Vec<(&str, Press, bool)> = vec![
        ("", p(), true),
        ("profile = \"one-button\"", p(), true),
        ("profile = \"three-button\"", p(), false),
        ("profile = [\"two-button\", \"one-button\"]", p(), true),
        ("profile = [\"two-button\", \"three-button\"]", p(), false),
        ("button = \"main\"", p(), true),
        ("button = \"red\"", p(), false),
        ("button = [\"red\", \"green\"]", press("three-button", "green", Single), true),
        ("button = [\"red\", \"green\"]", press("three-button", "yellow", Single), false),
        ("gesture = \"single\"", p(), true),
        ("gesture = \"single\"", press("one-button", "main", Double), false),
        ("gesture = [\"double\", \"triple\"]", press("one-button", "main", Triple), true),
        ("gesture = [\"double\", \"triple\"]", press("one-button", "main", Long), false),
        // Across midnight, at both boundaries: start inclusive, end exclusive.
        ("time = \"22:00-06:00\"", p().at(21, 59), false),
        ("time = \"22:00-06:00\"", p().at(22, 0), true),
        ("time = \"22:00-06:00\"", p().at(0, 0), true),
        ("time = \"22:00-06:00\"", p().at(5, 59), true),
        ("time = \"22:00-06:00\"", p().at(6, 0), false),
        ("time = \"22:00-06:00\"", p(), false), // unknown local time
        ("time = \"08:00-18:00\"", p().at(8, 0), true),
        ("time = \"08:00-18:00\"", p().at(17, 59), true),
        ("time = \"08:00-18:00\"", p().at(18, 0), false),
        ("time = [\"07:00-08:00\", \"19:00-20:00\"]", p().at(19, 30), true),
        ("time = [\"07:00-08:00\", \"19:00-20:00\"]", p().at(12, 0), false),
        ("resident = { lives_alone = true }", p().attr("lives_alone", Bool(true)), true),
        ("resident = { lives_alone = true }", p().attr("lives_alone", Bool(false)), false),
        ("resident = { lives_alone = true }", p().attr("lives_alone", Text("true".into())), false),
        ("resident = { lives_alone = true }", p(), false), // attribute missing
        ("resident = { floor = 3 }", p().attr("floor", Int(3)), true),
        ("resident = { floor = 3 }", p().attr("floor", Int(4)), false),
        ("resident = { floor = 3 }", p().attr("floor", Text("3".into())), false),
        ("resident = { mobility = \"wheelchair\" }", p().attr("mobility", Text("wheelchair".into())), true),
        ("resident = { mobility = \"wheelchair\" }", p().attr("mobility", Text("walker".into())), false),
        (
            "resident = { mobility = \"wheelchair\", lives_alone = true }",
            p().attr("mobility", Text("wheelchair".into())).attr("lives_alone", Bool(true)),
            true,
        ),
        (
            "resident = { mobility = \"wheelchair\", lives_alone = true }",
            p().attr("mobility", Text("wheelchair".into())),
            false,
        ),
        (
            "profile = \"one-button\"\nbutton = \"main\"\ngesture = \"single\"\ntime = \"06:00-22:00\"",
            p().at(12, 0),
            true,
        ),
        (
            "profile = \"one-button\"\nbutton = \"main\"\ngesture = \"single\"\ntime = \"06:00-22:00\"",
            p().at(23, 0),
            false,
        ),
    ];
    for (keys, p, want) in cases {
        let ctx = p.ctx();
        let what = format!(
            "{} {} {} at {:?}",
            ctx.profile, ctx.button, ctx.gesture, ctx.local_minutes
        );
        assert_eq!(
            rule_matches(keys, &p),
            want,
            "rule `{keys}` vs press {what} {:?}",
            p.attrs
        );
    }
}

#[test]
fn request_carries_service_priority_and_tags() {
    let text = format!(
        "[[rule]]\nname = \"chair\"\nresident = {{ mobility = \"wheelchair\" }}\nservice = \"taxi\"\n\
         priority = \"routine\"\ntags = [\"wheelchair_accessible\", \"ramp\", \"ramp\"]\n\n{FALLBACK}"
    );
    let set = load(&[("t.toml", &text)]).set;
    let p =
        press("one-button", "main", Double).attr("mobility", AttrValue::Text("wheelchair".into()));
    let want = Action::Request {
        service: Service::Taxi,
        priority: Priority::Routine,
        tags: vec!["wheelchair_accessible".into(), "ramp".into()],
    };
    assert_eq!(
        set.evaluate(&p.ctx()).action,
        want,
        "duplicate tags are dropped, order kept"
    );
}

#[test]
fn first_match_wins_across_files_then_fallback() {
    let special =
        "[[rule]]\nname = \"night single\"\ngesture = \"single\"\ntime = \"22:00-06:00\"\n\
                   service = \"rescue\"\npriority = \"emergency\"\n";
    let general = format!(
        "[[rule]]\nname = \"any single\"\ngesture = \"single\"\nservice = \"welfare_check\"\npriority = \"routine\"\n\n\
         [[rule]]\nname = \"long cancels\"\ngesture = \"long\"\naction = \"cancel\"\n\n{FALLBACK}"
    );
    let set = load(&[("10-night.toml", special), ("20-day.toml", &general)]).set;
    assert_eq!(set.len(), 3);
    assert_eq!(set.files(), ["10-night.toml", "20-day.toml"]);

    let night = set.evaluate(&press("x", "main", Single).at(23, 0).ctx());
    assert_eq!(
        (&*night.rule.name, &*night.rule.file, night.rule.line),
        ("night single", "10-night.toml", 1)
    );
    let day = set.evaluate(&press("x", "main", Single).at(12, 0).ctx());
    assert_eq!(
        (&*day.rule.name, &*day.rule.file, day.rule.line),
        ("any single", "20-day.toml", 1)
    );
    assert!(matches!(
        day.action,
        Action::Request {
            service: Service::WelfareCheck,
            ..
        }
    ));

    let cancel = set.evaluate(&press("x", "main", Long).ctx());
    assert_eq!(
        (cancel.action, &*cancel.rule.name, cancel.rule.line),
        (Action::Cancel, "long cancels", 7)
    );

    let other = set.evaluate(&press("x", "main", Triple).ctx());
    assert!(other.rule.fallback);
    assert_eq!(
        (&*other.rule.name, &*other.rule.file, other.rule.line),
        ("human", "20-day.toml", 12)
    );
    let urgent = Action::Request {
        service: Service::Rescue,
        priority: Priority::Urgent,
        tags: vec![],
    };
    assert_eq!(other.action, urgent);
}

#[test]
fn explanation_reads_well() {
    let text = format!(
        "[[rule]]\nname = \"night emergency\"\nprofile = \"one-button\"\ngesture = \"single\"\ntime = \"22:00-06:00\"\n\
         service = \"rescue\"\npriority = \"emergency\"\n\n\
         [[rule]]\nname = \"wheelchair taxi\"\nprofile = [\"one-button\", \"two-button\"]\ngesture = [\"single\", \"double\"]\n\
         resident = {{ mobility = \"wheelchair\", lives_alone = true }}\nservice = \"taxi\"\npriority = \"routine\"\n\
         tags = [\"wheelchair_accessible\"]\n\n\
         [[rule]]\nname = \"red\"\nbutton = \"red\"\nservice = \"rescue\"\npriority = \"emergency\"\n\n\
         [[rule]]\nname = \"day single\"\ngesture = \"single\"\nservice = \"welfare_check\"\npriority = \"routine\"\n\n{FALLBACK}"
    );
    let set = load(&[("rules/demo.toml", &text)]).set;
    let p = press("one-button", "main", Single)
        .at(14, 5)
        .attr("lives_alone", AttrValue::Bool(false));
    let explained = set.explain(&p.ctx());
    assert_eq!(
        explained.to_string(),
        r#"decision: welfare_check request, priority routine
      by: rule "day single" (rules/demo.toml:24)

3 earlier rules did not match:
  rule "night emergency" (rules/demo.toml:1)
    - local time 14:05 is outside 22:00-06:00
  rule "wheelchair taxi" (rules/demo.toml:9)
    - resident has no attribute mobility
    - resident lives_alone is false, rule wants true
  rule "red" (rules/demo.toml:18)
    - button is main, rule wants red
"#
    );
    let long = press("three-button", "green", Long);
    assert_eq!(
        set.explain(&long.ctx()).to_string(),
        r#"decision: rescue request, priority urgent
      by: fallback "human" (rules/demo.toml:30), because no rule matched

4 earlier rules did not match:
  rule "night emergency" (rules/demo.toml:1)
    - profile is three-button, rule wants one-button
    - gesture is long, rule wants single
    - local time is unknown, rule wants 22:00-06:00
  rule "wheelchair taxi" (rules/demo.toml:9)
    - profile is three-button, rule wants one of one-button, two-button
    - gesture is long, rule wants one of single, double
    - resident has no attribute mobility
    - resident has no attribute lives_alone
  rule "red" (rules/demo.toml:18)
    - button is green, rule wants red
  rule "day single" (rules/demo.toml:24)
    - gesture is long, rule wants single
"#
    );
    let first = set.explain(&press("one-button", "main", Single).at(23, 0).ctx());
    assert!(first.skipped.is_empty());
    assert!(
        first.to_string().ends_with("nothing was skipped\n"),
        "{first}"
    );
}

/// Every combination of profile, button, gesture and time: `explain` picks the rule
/// `evaluate` picks, and skips exactly the rules before it.
#[test]
fn explain_agrees_with_evaluate_everywhere() {
    let mut text = DEFAULT_RULES.replace("[fallback]", "[[rule]]\nname = \"night\"\ntime = [\"22:00-06:00\", \"12:00-12:30\"]\nresident = { lives_alone = true }\nservice = \"rescue\"\npriority = \"urgent\"\n\n[fallback]");
    text.push('\n');
    let set = load(&[("all.toml", &text)]).set;
    let alone = AttrValue::Bool(true);
    for profile in ["one-button", "three-button", "four-button"] {
        for button in ["main", "red", "green", "yellow", "sos"] {
            for gesture in Gesture::ALL {
                for minutes in [
                    None,
                    Some(0),
                    Some(359),
                    Some(360),
                    Some(725),
                    Some(1319),
                    Some(1320),
                    Some(1439),
                ] {
                    let mut p = press(profile, button, *gesture).attr("lives_alone", alone.clone());
                    p.minutes = minutes;
                    let (decision, explained) = (set.evaluate(&p.ctx()), set.explain(&p.ctx()));
                    assert_eq!(explained.decision, decision);
                    let skipped: Vec<&str> =
                        explained.skipped.iter().map(|(r, _)| &*r.name).collect();
                    let before: Vec<&str> = set
                        .rules
                        .iter()
                        .map(|r| &*r.rref.name)
                        .take_while(|n| **n != *decision.rule.name)
                        .collect();
                    assert_eq!(skipped, before, "{profile} {button} {gesture} {minutes:?}");
                }
            }
        }
    }
}

#[test]
fn shipped_rules_load_clean_and_route_as_specified() {
    let loaded = load(&[("rules/default.toml", DEFAULT_RULES)]);
    assert!(
        loaded.warnings.is_empty(),
        "warnings: {:?}",
        loaded.warnings
    );
    let set = RuleSet::default_set();
    assert_eq!(set.profiles(), ["one-button", "three-button"]);
    let request = |service, priority| Action::Request {
        service,
        priority,
        tags: vec![],
    };
    let cases = [
        (
            press("one-button", "main", Single),
            request(Service::Rescue, Priority::Emergency),
        ),
        (
            press("one-button", "main", Double),
            request(Service::Taxi, Priority::Routine),
        ),
        (
            press("one-button", "main", Triple),
            request(Service::Hospital, Priority::Routine),
        ),
        (press("one-button", "main", Long), Action::Cancel),
        (
            press("three-button", "red", Single),
            request(Service::Rescue, Priority::Emergency),
        ),
        (
            press("three-button", "red", Double),
            request(Service::Rescue, Priority::Emergency),
        ),
        (
            press("three-button", "green", Single),
            request(Service::Taxi, Priority::Routine),
        ),
        (
            press("three-button", "yellow", Triple),
            request(Service::Hospital, Priority::Routine),
        ),
        (press("three-button", "red", Long), Action::Cancel),
        (press("three-button", "green", Long), Action::Cancel),
        (press("three-button", "yellow", Long), Action::Cancel),
    ];
    for (p, want) in cases {
        let decision = set.evaluate(&p.ctx());
        assert!(
            !decision.rule.fallback,
            "{} {} {} fell through",
            p.profile, p.button, p.gesture
        );
        assert_eq!(
            decision.action, want,
            "{} {} {}",
            p.profile, p.button, p.gesture
        );
    }
    // Unknown presses still reach a human, urgently.
    for p in [
        press("one-button", "sos", Single),
        press("three-button", "blue", Single),
        press("new-model", "main", Single),
    ] {
        let decision = set.evaluate(&p.ctx());
        assert!(
            decision.rule.fallback,
            "{} {} should fall through",
            p.profile, p.button
        );
        assert_eq!(decision.action, request(Service::Rescue, Priority::Urgent));
    }
}

#[test]
fn load_dir_reads_toml_files_in_name_order() {
    let dir = std::env::temp_dir().join(format!("yijian-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    write(
        "20-general.toml",
        &format!("[[rule]]\nname = \"b\"\naction = \"cancel\"\n\n{FALLBACK}"),
    );
    write("10-first.toml", "[[rule]]\nname = \"a\"\ngesture = \"single\"\nservice = \"taxi\"\npriority = \"routine\"\n");
    write(".#10-first.toml", "not toml at all [");
    write("notes.txt", "not rules");
    let loaded = RuleSet::load_dir(&dir);
    let (a, b) = (dir.join("10-first.toml"), dir.join("20-general.toml"));
    let got = loaded.as_ref().map(|l| l.set.files().to_vec());
    assert_eq!(
        got.map_err(|e| e.to_string()),
        Ok(vec![a.display().to_string(), b.display().to_string()])
    );
    let set = loaded.expect("checked above").set;
    assert_eq!(
        &*set.evaluate(&press("p", "main", Single).ctx()).rule.name,
        "a"
    );
    assert_eq!(
        &*set.evaluate(&press("p", "main", Double).ctx()).rule.name,
        "b"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
