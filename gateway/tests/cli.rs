//! The operator's command line, run as the real binary: import residents, register and bind a
//! device, and ask `rules explain` about a press — golden output, byte for byte.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_yijian-gateway");

/// Run `yijian-gateway --data-dir DATA --rules-dir RULES ARGS...` from `cwd`.
fn run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(cwd)
        .args(["--data-dir", "data", "--rules-dir", "rules"])
        .args(args)
        .env_remove("YIJIAN_CONFIG")
        .output()
        .expect("the binary runs")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = run(cwd, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

const RULES: &str = r#"[[rule]]
name = "night: anyone alone pressing is an emergency"
time = "22:00-06:00"
resident = { lives_alone = true }
service = "rescue"
priority = "emergency"
tags = ["night"]

[[rule]]
name = "pendant: taxi for a wheelchair user"
profile = "pendant"
gesture = "double"
resident = { mobility = "wheelchair" }
service = "taxi"
priority = "routine"
tags = ["wheelchair_accessible"]

[[rule]]
name = "pendant: long press cancels"
profile = "pendant"
gesture = "long"
action = "cancel"

[fallback]
name = "fallback: a human decides"
service = "rescue"
priority = "urgent"
"#;

const RESIDENTS: &str = "id,name,phone,time_zone,attr.lives_alone,attr.mobility
r-1001,Wang Xiuying,+86 138 0000 0001,,true,wheelchair
r-1002,Li Hua,+86 138 0000 0003,America/New_York,false,walker
";

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("rules/10-site.toml"), RULES).expect("rules");
    std::fs::write(dir.path().join("residents.csv"), RESIDENTS).expect("residents");
    assert_eq!(
        ok(dir.path(), &["residents", "import", "residents.csv"]),
        "imported 2 resident(s) from residents.csv (2 new, 0 replaced)\n"
    );
    ok(
        dir.path(),
        &["devices", "add", "pendant-7", "--profile", "pendant"],
    );
    assert_eq!(
        ok(dir.path(), &["devices", "bind", "pendant-7", "r-1001"]),
        "device pendant-7 is bound to resident r-1001\n"
    );
    dir
}

#[test]
fn explain_a_devices_press_at_a_given_instant() {
    let dir = setup();
    // 2026-11-28T15:30:00Z is 23:30 in Shanghai (the default zone): night, and she lives alone.
    let got = ok(
        dir.path(),
        &[
            "rules",
            "explain",
            "--device",
            "pendant-7",
            "--gesture",
            "double",
            "--at",
            "2026-11-28T15:30:00Z",
        ],
    );
    assert_eq!(
        got,
        r#"press:      profile pendant, button main, gesture double
device:     pendant-7 (resident r-1001)
resident:   r-1001 (Wang Xiuying): lives_alone = true, mobility = "wheelchair"
local time: 23:30 in Asia/Shanghai (at 2026-11-28T15:30:00Z)
rules:      rules (10-site.toml)

decision: rescue request, priority emergency, tags night
      by: rule "night: anyone alone pressing is an emergency" (rules/10-site.toml:1)

it is the first rule: nothing was skipped
"#
    );
    // The same instant with an offset, four hours earlier in Shanghai: daytime.
    let got = ok(
        dir.path(),
        &[
            "rules",
            "explain",
            "--device",
            "pendant-7",
            "--gesture",
            "double",
            "--at",
            "2026-11-28T19:30:00+08:00",
        ],
    );
    assert_eq!(
        got,
        r#"press:      profile pendant, button main, gesture double
device:     pendant-7 (resident r-1001)
resident:   r-1001 (Wang Xiuying): lives_alone = true, mobility = "wheelchair"
local time: 19:30 in Asia/Shanghai (at 2026-11-28T11:30:00Z)
rules:      rules (10-site.toml)

decision: taxi request, priority routine, tags wheelchair_accessible
      by: rule "pendant: taxi for a wheelchair user" (rules/10-site.toml:9)

1 earlier rule did not match:
  rule "night: anyone alone pressing is an emergency" (rules/10-site.toml:1)
    - local time 19:30 is outside 22:00-06:00
"#
    );
}

#[test]
fn explain_by_hand_and_with_a_rebound_device() {
    let dir = setup();
    // HH:MM is the resident's local time; a resident in New York who does not live alone.
    ok(dir.path(), &["devices", "bind", "pendant-7", "r-1002"]);
    let got = ok(
        dir.path(),
        &[
            "rules",
            "explain",
            "--device",
            "pendant-7",
            "--gesture",
            "long",
            "--at",
            "23:00",
        ],
    );
    assert_eq!(
        got,
        r#"press:      profile pendant, button main, gesture long
device:     pendant-7 (resident r-1002)
resident:   r-1002 (Li Hua): lives_alone = false, mobility = "walker"
local time: 23:00 (given)
rules:      rules (10-site.toml)

decision: cancel the device's open request
      by: rule "pendant: long press cancels" (rules/10-site.toml:18)

2 earlier rules did not match:
  rule "night: anyone alone pressing is an emergency" (rules/10-site.toml:1)
    - resident lives_alone is false, rule wants true
  rule "pendant: taxi for a wheelchair user" (rules/10-site.toml:9)
    - gesture is long, rule wants double
    - resident mobility is "walker", rule wants "wheelchair"

A cancel applies to the device's most recent open request of the last 120 s ([rules] cancel_window_s).
"#
    );
    // No device: a profile and attributes by hand; a model no rule knows goes to the fallback.
    let got = ok(
        dir.path(),
        &[
            "rules",
            "explain",
            "--profile",
            "wall-unit",
            "--button",
            "sos",
            "--attr",
            "lives_alone=false",
            "--at",
            "2026-11-28T15:30:00Z",
            "--time-zone",
            "Europe/London",
        ],
    );
    assert_eq!(
        got,
        r#"press:      profile wall-unit, button sos, gesture single
resident:   (given) lives_alone = false
local time: 15:30 in Europe/London (at 2026-11-28T15:30:00Z)
rules:      rules (10-site.toml)

decision: rescue request, priority urgent
      by: fallback "fallback: a human decides" (rules/10-site.toml:24), because no rule matched

3 earlier rules did not match:
  rule "night: anyone alone pressing is an emergency" (rules/10-site.toml:1)
    - local time 15:30 is outside 22:00-06:00
    - resident lives_alone is false, rule wants true
  rule "pendant: taxi for a wheelchair user" (rules/10-site.toml:9)
    - profile is wall-unit, rule wants pendant
    - gesture is single, rule wants double
    - resident has no attribute mobility
  rule "pendant: long press cancels" (rules/10-site.toml:18)
    - profile is wall-unit, rule wants pendant
    - gesture is single, rule wants long
"#
    );
    let out = run(dir.path(), &["rules", "explain", "--device", "nobody"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "yijian-gateway: device nobody is not registered\n"
    );
}

#[test]
fn a_bad_import_names_every_line_and_imports_nothing() {
    let dir = setup();
    let before = ok(dir.path(), &["residents", "show", "r-1001", "--json"]);
    std::fs::write(
        dir.path().join("more.csv"),
        "id,name,phone,time_zone,attr.lives_alone\n\
         r-1001,Wang Xiuying (moved),+86 138 0000 0009,,false\n\
         r-1003,,12,Mars/Olympus,\n\
         r-1004,Zhao Min,+86 138 0000 0004,,\n\
         r-1004,Zhao Min again,+86 138 0000 0005,,\n",
    )
    .expect("file");
    let out = run(dir.path(), &["residents", "import", "more.csv"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "more.csv:3: resident r-1003: name is missing
more.csv:3: resident r-1003: phone \"12\" must be a phone number: digits, spaces, + - ( ), at most 32 characters
more.csv:3: resident r-1003: time_zone \"Mars/Olympus\" is not a known IANA time zone (e.g. Asia/Shanghai, UTC)
more.csv:5: resident r-1004: the same id is already on line 4
"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "yijian-gateway: more.csv: 4 problem(s); nothing was imported\n"
    );
    // Not even the good rows: the resident on record is untouched and no new one exists.
    assert_eq!(
        ok(dir.path(), &["residents", "show", "r-1001", "--json"]),
        before
    );
    let out = run(dir.path(), &["residents", "show", "r-1004"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "yijian-gateway: resident r-1004 is not on record\n"
    );
}
