//! Checking: every problem in every file at once, each at its place; shadow warnings.

use super::{fail, load};
use crate::rules::{RuleSet, Severity};

fn lines(d: &[crate::rules::Diagnostic]) -> Vec<String> {
    d.iter().map(ToString::to_string).collect()
}

const A: &str = r#"[[rule]]
name = "x"
gestures = "single"
gesture = ["single", "tap"]
time = "25:00-06:00"
service = "rescue"
priority = "emergency"
action = "cancel"

[[rule]]
name = "x"
profile = "One Button"
resident = { lives_alone = 1.5 }
service = "ambulance"
priority = "urgent"
tags = ["Wheelchair"]

[[rule]]
button = "main"
service = "taxi"

[[rule]]
name = "t"
time = 22:00:00
action = "stop"

[fallback]
name = "f"
gesture = "long"
service = "rescue"
priority = "urgent"
"#;

const B: &str = r#"[[rule]]
name = "x"
gesture = "double"
service = "taxi"
priority = "routine"

[[rules]]
name = "y"

[fallback]
name = "g"
service = "rescue"
priority = "urgent"
"#;

const C: &str = "[[rule]]\nname = \"z\n";

const D: &str = "[rule]\nname = \"q\"\n";

#[test]
fn every_error_in_every_file_at_once() {
    let failed = fail(&[
        ("rules/a.toml", A),
        ("rules/b.toml", B),
        ("rules/c.toml", C),
        ("rules/d.toml", D),
    ]);
    let keys = "name, profile, button, gesture, time, resident, service, priority, tags, action";
    let expected = vec![
        format!("rules/a.toml:3:1: error: unknown key `gestures` in rule (expected one of {keys})"),
        "rules/a.toml:4:22: error: gesture must be one of single|double|triple|long".to_string(),
        "rules/a.toml:5:8: error: time \"25:00-06:00\" must look like \"HH:MM-HH:MM\" (24-hour clock), e.g. \"22:00-06:00\"".to_string(),
        "rules/a.toml:8:1: error: rule \"x\" has both action and service".to_string(),
        "rules/a.toml:8:1: error: rule \"x\" has both action and priority".to_string(),
        "rules/a.toml:11:8: error: duplicate rule name \"x\" (first defined at rules/a.toml:1:1)".to_string(),
        "rules/a.toml:12:11: error: profile \"One Button\" must be 1-64 characters of a-z, 0-9, _ and -".to_string(),
        "rules/a.toml:13:28: error: resident attribute lives_alone must be a boolean, an integer or a string, not a float".to_string(),
        "rules/a.toml:14:11: error: service must be one of rescue|taxi|hospital|welfare_check|maintenance".to_string(),
        "rules/a.toml:16:9: error: tag \"Wheelchair\" must be lowercase letters, digits and _ ([a-z0-9_]+)".to_string(),
        "rules/a.toml:18:1: error: rule has no name: add name = \"...\" so every decision can say which rule made it".to_string(),
        "rules/a.toml:20:1: error: this rule has service but no priority (emergency|urgent|routine)".to_string(),
        "rules/a.toml:24:8: error: time must be a quoted string, not the TOML date/time 22:00:00".to_string(),
        "rules/a.toml:25:10: error: action must be \"cancel\" (the only action; for a request use service and priority)".to_string(),
        "rules/a.toml:29:1: error: `gesture` is not allowed in [fallback]: it takes every press no rule matched".to_string(),
        "rules/b.toml:2:8: error: duplicate rule name \"x\" (first defined at rules/a.toml:1:1)".to_string(),
        "rules/b.toml:7:3: error: unknown top-level key `rules` (expected [[rule]] tables and one [fallback] table)".to_string(),
        "rules/b.toml:10:1: error: a second [fallback] (the first is at rules/a.toml:27:1): there must be exactly one".to_string(),
        "rules/c.toml:2:10: error: invalid TOML: invalid basic string".to_string(),
        "rules/d.toml:1:2: error: write [[rule]] (a list of rules), not [rule]".to_string(),
    ];
    assert_eq!(lines(&failed.errors), expected);
    assert!(failed.errors.iter().all(|d| d.severity == Severity::Error));
    // Display is every line, errors first.
    assert_eq!(
        failed.to_string().lines().count(),
        failed.errors.len() + failed.warnings.len()
    );
    let as_error: &dyn std::error::Error = &failed;
    assert!(as_error
        .to_string()
        .starts_with("rules/a.toml:3:1: error: unknown key `gestures`"));
}

#[test]
fn set_level_errors() {
    let rule = "[[rule]]\nname = \"r\"\naction = \"cancel\"\n";
    let none = fail(&[("a.toml", rule)]);
    assert_eq!(
        lines(&none.errors),
        ["rules: error: no [fallback] rule: every press needs a decision"]
    );
    assert!(RuleSet::from_sources(&[]).is_err());

    let twice = "[[fallback]]\nservice = \"rescue\"\npriority = \"urgent\"\n";
    let errors = lines(&fail(&[("a.toml", twice)]).errors);
    assert_eq!(
        errors,
        [
            "a.toml:1:3: error: write [fallback] (exactly one), not [[fallback]]",
            "rules: error: no [fallback] rule: every press needs a decision"
        ]
    );

    let nothing = "[fallback]\nname = \"f\"\n";
    let errors = lines(&fail(&[("a.toml", nothing)]).errors);
    assert_eq!(errors, ["a.toml:1:1: error: fallback \"f\" says nothing to do: give service and priority, or action = \"cancel\""]);

    let scalar = "rule = 3\n";
    let errors = lines(&fail(&[("a.toml", scalar)]).errors);
    assert_eq!(
        errors[0],
        "a.toml:1:1: error: `rule` must be [[rule]] tables, not an integer"
    );

    let duplicate = "rule = 3\n[[rule]]\nname = \"r\"\n";
    let errors = lines(&fail(&[("a.toml", duplicate)]).errors);
    assert_eq!(errors[0], "a.toml:2:1: error: invalid TOML: invalid table header: duplicate key `rule` in document root");

    let shapes = "fallback = \"x\"\n[[rule]]\nname = \"e\"\ngesture = []\nresident = {}\ntags = \"x\"\nservice = 3\npriority = \"routine\"\nbutton = [\"red\", 7]\n";
    assert_eq!(
        lines(&fail(&[("a.toml", shapes)]).errors),
        [
            "a.toml:1:1: error: [fallback] must be a table, not a string",
            "a.toml:4:11: error: gesture list is empty: leave `gesture` out to match any gesture",
            "a.toml:5:12: error: resident = {} matches every resident: leave `resident` out",
            "a.toml:6:8: error: tags must be a list of strings, e.g. tags = [\"wheelchair_accessible\"], not a string",
            "a.toml:7:11: error: service must be one of rescue|taxi|hospital|welfare_check|maintenance",
            "a.toml:9:18: error: button must be a string or a list of strings, not an integer",
            "rules: error: no [fallback] rule: every press needs a decision",
        ]
    );
}

#[test]
fn load_dir_problems_are_clear() {
    let missing = std::env::temp_dir().join("yijian-rules-does-not-exist");
    let err = RuleSet::load_dir(&missing).expect_err("a missing directory fails");
    assert!(
        err.to_string().contains("cannot read the rules directory"),
        "{err}"
    );
    let empty = std::env::temp_dir().join(format!("yijian-rules-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let err = RuleSet::load_dir(&empty).expect_err("no rule files fails");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: error: no *.toml rule files in this directory",
            empty.display()
        )
    );
    std::fs::remove_dir_all(&empty).expect("clean up");
}

#[test]
fn shadowed_rules_are_warned_about() {
    let text = r#"[[rule]]
name = "any single"
gesture = ["single", "double"]
service = "taxi"
priority = "routine"

[[rule]]
name = "red single"
button = "red"
gesture = "single"
resident = { lives_alone = true }
service = "rescue"
priority = "emergency"

[[rule]]
name = "night"
time = "20:00-08:00"
action = "cancel"

[[rule]]
name = "late night"
time = ["23:00-01:00", "02:00-03:00"]
gesture = "long"
action = "cancel"

[[rule]]
name = "evening"
time = "19:00-21:00"
action = "cancel"

[[rule]]
name = "no time"
gesture = "triple"
action = "cancel"

[[rule]]
name = "everything"
service = "hospital"
priority = "routine"

[fallback]
name = "human"
action = "cancel"
"#;
    let loaded = load(&[("w.toml", text)]);
    assert_eq!(
        lines(&loaded.warnings),
        [
            "w.toml:7:1: warning: rule \"red single\" can never match: rule \"any single\" (w.toml:1:1) comes first and matches every press it would",
            "w.toml:20:1: warning: rule \"late night\" can never match: rule \"night\" (w.toml:15:1) comes first and matches every press it would",
            "w.toml:41:1: warning: fallback \"human\" is never used: rule \"everything\" (w.toml:36:1) matches every press",
            "w.toml:41:1: warning: the fallback cancels: a press no rule understands would reach nobody; an unknown press from an elderly person may be an emergency",
        ]
    );
    assert!(loaded
        .warnings
        .iter()
        .all(|d| d.severity == Severity::Warning));
    assert_eq!(loaded.set.len(), 7, "warnings do not drop rules");
}

/// Valid TOML in shapes nobody should write still gets positioned errors, never a crash or a
/// confusing serde message; dotted keys (no span of their own) work.
#[test]
fn odd_shapes_are_reported_not_fatal() {
    let errors = |text: &str| lines(&fail(&[("a.toml", text)]).errors);
    let no_fallback = "rules: error: no [fallback] rule: every press needs a decision";
    assert_eq!(
        errors("rule = 1979-05-27\n"),
        [
            "a.toml:1:1: error: `rule` must be [[rule]] tables, not a TOML date/time",
            no_fallback
        ]
    );
    assert_eq!(
        errors("fallback = 1979-05-27\n"),
        [
            "a.toml:1:1: error: [fallback] must be a table, not a TOML date/time",
            no_fallback
        ]
    );
    assert_eq!(
        errors("rule = [1979-05-27]\n"),
        [
            "a.toml:1:9: error: each rule must be a table, not a TOML date/time",
            no_fallback
        ]
    );
    assert_eq!(
        errors("rule = [1]\n"),
        [
            "a.toml:1:9: error: each rule must be a table, not an integer",
            no_fallback
        ]
    );
    assert_eq!(
        errors("[fallback.x]\na = 1\n"),
        [
            "a.toml:1:2: error: unknown key `x` in fallback (expected one of name, service, priority, tags, action)",
            "a.toml:1:2: error: [fallback] says nothing to do: give service and priority, or action = \"cancel\"",
        ]
    );
    assert_eq!(
        errors("[[rule]]\nname = 'a'\nresident = { born = 1979-05-27, x = [1] }\naction = 'cancel'\n"),
        [
            "a.toml:3:21: error: resident attribute born must be a boolean, an integer or a string, not a TOML date/time",
            "a.toml:3:37: error: resident attribute x must be a boolean, an integer or a string, not a list",
            no_fallback,
        ]
    );
    assert_eq!(
        errors("[[rule]]\nname = 'a'\nresident = { \"lives alone\" = true, floor = 3 }\naction = 'cancel'\n"),
        [
            "a.toml:3:14: error: resident attribute name \"lives alone\" can never match: names are 1-64 characters of A-Z, a-z, 0-9, _ and -",
            no_fallback,
        ]
    );
    let unnamed = "[[rule]]\nname = \"fallback\"\naction = \"cancel\"\n\n\
                   [fallback]\nservice = \"rescue\"\npriority = \"urgent\"\n";
    assert_eq!(
        errors(unnamed),
        ["a.toml:5:1: error: this [fallback] has no name, so it is called \"fallback\", which the rule at a.toml:1:1 already is: name it"]
    );
    let syntax = fail(&[
        ("a.toml", "[[rule]\n"),
        ("b.toml", "[[rule]]\nname = 'r'\naction = 'cancel'\n"),
    ]);
    assert_eq!(syntax.errors.len(), 2, "{syntax}");
    assert!(
        syntax.errors[0]
            .to_string()
            .starts_with("a.toml:1:7: error: invalid TOML: "),
        "{syntax}"
    );
    assert!(
        syntax.errors[1]
            .message
            .contains("a file that could not be read may hold it"),
        "{syntax}"
    );

    let dotted = "[[rule]]\nname = 'alone'\nresident.lives_alone = true\naction = 'cancel'\n\n\
                  [fallback]\nservice = 'rescue'\npriority = 'urgent'\n";
    let set = load(&[("a.toml", dotted)]).set;
    let alone = super::press("p", "main", yijian_wire::Gesture::Long)
        .attr("lives_alone", crate::rules::AttrValue::Bool(true));
    assert_eq!(&*set.evaluate(&alone.ctx()).rule.name, "alone");
    assert_eq!(
        &*set
            .evaluate(&super::press("p", "main", yijian_wire::Gesture::Long).ctx())
            .rule
            .name,
        "fallback"
    );
}

/// The TOML examples in rules/README.md that are whole rules load as documented.
#[test]
fn readme_examples_load() {
    let readme = include_str!("../../../../rules/README.md");
    let fallback =
        "\n[fallback]\nname = \"readme fallback\"\nservice = \"rescue\"\npriority = \"urgent\"\n";
    let mut checked = 0;
    for block in readme.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        if !block.contains("[[rule]]") && !block.contains("[fallback]") {
            continue;
        }
        let text = if block.contains("[fallback]") {
            block.to_string()
        } else {
            format!("{block}{fallback}")
        };
        let loaded = load(&[("README.md", &text)]);
        assert!(loaded.warnings.is_empty(), "{block}: {:?}", loaded.warnings);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples found");
}
