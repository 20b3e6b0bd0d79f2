//! A newcomer's first hour with the real binary: what the command line accepts, refuses and
//! says when something is wrong (issue 14). Each test runs `yijian-gateway` as a user would.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_yijian-gateway");

/// Run `yijian-gateway ARGS...` from `cwd` with none of the YIJIAN_* variables of the caller.
fn run(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("YIJIAN_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_subcommands_help_shows_its_own_options_first_and_the_global_ones_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["devices", "add", "--help"]);
    assert!(out.status.success());
    let help = text(&out);
    let own = help.find("--profile").expect("its own option");
    let heading = help
        .find("Global options")
        .unwrap_or_else(|| panic!("no heading for the global options:\n{help}"));
    let global = help.find("--mqtt-listen").expect("a global option");
    assert!(own < heading && heading < global, "{help}");
    assert_eq!(help.matches("--mqtt-listen").count(), 1, "{help}");
    assert!(
        !help.contains("[env: "),
        "not in full in every subcommand:\n{help}"
    );
    assert!(
        help.contains("[default: one-button]"),
        "the default profile:\n{help}"
    );
    // The environment variables are named once, in the top-level help.
    let top = text(&run(dir.path(), &["--help"]));
    assert!(top.contains("YIJIAN_MQTT_LISTEN"), "{top}");
}

#[test]
fn a_misspelt_profile_is_refused_with_the_profiles_the_rules_know() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let rules = rules.to_str().expect("utf-8 path");
    let out = run(
        dir.path(),
        &[
            "--data-dir",
            "data",
            "--rules-dir",
            rules,
            "devices",
            "add",
            "b-1",
            "--profile",
            "three-buttons",
        ],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(
            "profile \"three-buttons\" is not one the rules know (one-button, three-button)"
        ),
        "{said}"
    );
    let ok = run(
        dir.path(),
        &[
            "--data-dir",
            "data",
            "--rules-dir",
            rules,
            "devices",
            "add",
            "b-1",
            "--profile",
            "three-button",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn config_check_reports_every_problem_in_one_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("c.toml"),
        "[mqtt]\nlisen = \"127.0.0.1:1883\"\n\n[dispatch]\nattempts_per_backend = 0\n",
    )
    .expect("write");
    let said = text(&run(dir.path(), &["config", "check", "c.toml"]));
    assert!(said.contains("2:1: unknown field `lisen`"), "{said}");
    assert!(said.contains("did you mean `listen`?"), "{said}");
    assert!(
        said.contains("[dispatch]: attempts_per_backend must be greater than 0"),
        "the bad value is reported with the unknown key:\n{said}"
    );

    // What `serve` would only find at start: a token variable that is not set.
    std::fs::write(
        dir.path().join("b.toml"),
        "[backends.r]\nurl = \"http://127.0.0.1:9100/rescue\"\ntoken_env = \"YIJIAN_TEST_SURELY_UNSET_TOKEN\"\n",
    )
    .expect("write");
    let out = run(dir.path(), &["config", "check", "b.toml"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("environment variable YIJIAN_TEST_SURELY_UNSET_TOKEN (token_env) is not set"),
        "{said}"
    );
}

#[test]
fn a_host_name_for_a_listen_address_says_to_use_an_ip_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(
        dir.path(),
        &["--mqtt-listen", "localhost:1883", "devices", "list"],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("use an IP address such as 127.0.0.1:1883"),
        "{said}"
    );
}

#[test]
fn an_unwritable_data_directory_says_permission_denied() {
    let dir = tempfile::tempdir().expect("temp dir");
    // root may write anywhere a mode allows nothing; sysfs refuses even root.
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let data = if is_root.unwrap_or(false) {
        std::path::PathBuf::from("/sys/kernel")
    } else {
        let d = dir.path().join("ro");
        std::fs::create_dir(&d).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        d
    };
    let out = run(
        dir.path(),
        &[
            "--data-dir",
            data.to_str().expect("utf-8"),
            "devices",
            "add",
            "d-1",
        ],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("Permission denied"), "{said}");
}

#[test]
fn requests_say_clearly_when_no_gateway_runs_or_no_token_is_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A port nothing listens on: bound, read and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = run(
        dir.path(),
        &[
            "--http-listen",
            &addr,
            "requests",
            "list",
            "--token",
            "t-0123456789abcdef",
        ],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "no gateway answers at http://{addr} (is it running?"
        )),
        "{said}"
    );
    let said = text(&run(
        dir.path(),
        &["--http-listen", &addr, "requests", "list"],
    ));
    assert!(
        said.contains("no API token: pass --token or set YIJIAN_TOKEN"),
        "{said}"
    );
}

#[test]
fn the_readme_lists_every_subcommand() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let block = readme
        .split("## Command line")
        .nth(1)
        .and_then(|s| s.split("\n```\n").nth(1))
        .expect("the README's command line block");
    let dir = tempfile::tempdir().expect("temp dir");
    for group in [
        "devices",
        "residents",
        "tokens",
        "rules",
        "config",
        "requests",
    ] {
        let help = text(&run(dir.path(), &[group, "--help"]));
        let subs = help
            .split("Commands:")
            .nth(1)
            .unwrap_or_else(|| panic!("{group} has subcommands:\n{help}"))
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|s| *s != "help")
            .map(str::to_owned)
            .collect::<Vec<_>>();
        // `devices add ...`, `config default|example|check FILE`: every word after the group.
        let listed: Vec<&str> = block
            .split(&format!("{group} "))
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .flat_map(|w| w.split('|'))
            .collect();
        for sub in subs {
            assert!(
                listed.contains(&sub.as_str()),
                "README's command list lacks `yijian-gateway {group} {sub}`"
            );
        }
    }
}
