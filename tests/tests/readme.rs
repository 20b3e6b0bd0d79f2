//! README.md, followed in order by a newcomer, against a fresh gateway: every shell block runs
//! as written (with the release binaries this test command built) and prints what the README
//! says it prints, so the walk-through cannot drift from the code.
//!
//! How the README is read:
//! - Each ```sh block runs in order, one command at a time, in a fresh directory holding a copy
//!   of `rules/` and `gateway/config/` (a fresh clone's working tree, as far as the README uses
//!   it). `cargo ...` lines are skipped: this test command has built the binaries already.
//! - A line `#   text` (a `#` and at least three spaces) under a command is what it prints: each
//!   such line must match a line of its output, in order. Words containing `...` are
//!   placeholders: they match any word, and the first match binds them, so a later command
//!   using `rq_01M8H1...` or `5f0c...e1` gets the real request id or secret. Numbers match any
//!   number (timings), and ` ← note` is a note to the reader, not output.
//! - The gateway (`yijian-gateway` without a subcommand) and the mock backends
//!   (`yijian-sim backends`) run in the background, as in a terminal of their own; starting a
//!   gateway stops the one before (the README says to stop it with Ctrl-C).
//! - Ports: 127.0.0.1:1883, :8080 and :9100 become free loopback ports (the gateway and the
//!   simulator read `YIJIAN_MQTT_LISTEN` / `YIJIAN_HTTP_LISTEN`).
//! - `<!-- readme-test: skip REASON -->` before a block skips it (load tests, minutes long);
//!   `<!-- readme-test: file NAME -->` writes the block to NAME instead of running it.
//!
//! Needs `bash`, `curl` and `jq` (`.ci/run` installs them).

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use yijian_tests::child::{gateway_binary, stable_port};

/// How long one command may take.
const COMMAND_WAIT: Duration = Duration::from_secs(60);
/// How long a background server may take to answer.
const START_WAIT: Duration = Duration::from_secs(30);

/// One step of a block.
#[derive(Debug)]
enum Step {
    Run {
        line: usize,
        cmd: String,
        expect: Vec<String>,
    },
    File {
        name: String,
        text: String,
    },
}

/// The runnable steps of `readme`, in order.
fn steps(readme: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut lines = readme.lines().enumerate().peekable();
    let mut directive: Option<String> = None;
    while let Some((n, line)) = lines.next() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("<!-- readme-test:") {
            directive = Some(d.trim_end_matches("-->").trim().to_owned());
            continue;
        }
        let Some(lang) = t.strip_prefix("```") else {
            if !t.is_empty() {
                directive = None;
            }
            continue;
        };
        let mut body = Vec::new();
        for (m, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push((m, l));
        }
        let d = directive.take().unwrap_or_default();
        if d.starts_with("skip") {
            continue;
        }
        if let Some(name) = d.strip_prefix("file ") {
            let text = body.iter().map(|(_, l)| format!("{l}\n")).collect();
            out.push(Step::File {
                name: name.trim().to_owned(),
                text,
            });
            continue;
        }
        if lang.trim() != "sh" {
            continue;
        }
        let mut pending: Option<(usize, String)> = None;
        for (m, l) in body {
            // A block inside a list item is indented as a whole.
            let l = l.trim_start();
            if let Some(rest) = l.strip_prefix('#') {
                if rest.starts_with("   ") {
                    if let Some(Step::Run { expect, .. }) = out.last_mut() {
                        let e = rest.split(" ← ").next().unwrap_or_default();
                        expect.push(e.trim().to_owned());
                    }
                }
                continue;
            }
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            let (start, mut cmd) = pending.take().unwrap_or((m + 1, String::new()));
            if let Some(cont) = l.strip_suffix('\\') {
                cmd.push_str(cont);
                pending = Some((start, cmd));
                continue;
            }
            cmd.push_str(l);
            // `cargo run --release` is the README's way to start the gateway: the binary this
            // test command has built, run as the README runs it.
            if let Some(rest) = cmd.strip_prefix("cargo run --release") {
                cmd = format!("target/release/yijian-gateway{rest}");
            }
            if cmd.starts_with("cargo ") {
                continue;
            }
            out.push(Step::Run {
                line: start,
                cmd,
                expect: Vec::new(),
            });
        }
        let _ = n;
    }
    out
}

/// Whether `expected` (a README output line) matches `actual`; placeholders it binds go to
/// `bound`.
fn matches(expected: &str, actual: &str, bound: &mut Vec<(String, String)>) -> bool {
    let e: Vec<&str> = expected.split_whitespace().collect();
    let a: Vec<&str> = actual.split_whitespace().collect();
    if e.len() != a.len() {
        return false;
    }
    let mut binds = Vec::new();
    for (e, a) in e.iter().zip(&a) {
        if e == a {
            continue;
        }
        if let Some(i) = e.find("...") {
            let word = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
            let start = e[..i].rfind(|c: char| !word(c)).map_or(0, |p| p + 1);
            let end = i
                + 3
                + e[i + 3..]
                    .find(|c: char| !word(c))
                    .unwrap_or(e.len() - i - 3);
            let (prefix, placeholder, suffix) = (&e[..start], &e[start..end], &e[end..]);
            if a.len() < prefix.len() + suffix.len()
                || !a.starts_with(prefix)
                || !a.ends_with(suffix)
            {
                return false;
            }
            binds.push((
                placeholder.to_owned(),
                a[prefix.len()..a.len() - suffix.len()].to_owned(),
            ));
            continue;
        }
        let num = |s: &str| {
            let s = s.trim_end_matches([',', '}', ')']);
            s.parse::<f64>().ok().map(|_| s.len())
        };
        let tail = |s: &str| s.len() - s.trim_end_matches([',', '}', ')']).len();
        if num(e).is_some() && num(a).is_some() && e[e.len() - tail(e)..] == a[a.len() - tail(a)..]
        {
            continue;
        }
        return false;
    }
    for (k, v) in binds {
        if k != "..." && !bound.iter().any(|(b, _)| *b == k) {
            bound.push((k, v));
        }
    }
    true
}

/// A background process, ended when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SIGTERM first (the gateway stops gracefully), then make sure.
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until something accepts TCP connections at `addr`.
fn wait_listening(addr: &str, what: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before listening on {addr}");
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within {START_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the gateway's /readyz answers 200.
fn wait_ready(http: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", &format!("http://{http}/readyz")])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the gateway exited ({status}) before it was ready");
        }
        ensure!(
            Instant::now() < deadline,
            "the gateway was not ready within {START_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copy the tree under `from` to `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// The last lines of the log file at `path`.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn tool(name: &str) -> Result<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        ok,
        "the README walk-through needs `{name}` on PATH (apt-get install {name})"
    );
    Ok(())
}

#[test]
fn the_readme_walk_through_works_in_the_order_written() -> Result<()> {
    for t in ["bash", "curl", "jq"] {
        tool(t)?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let bin_dir: PathBuf = gateway_binary()?
        .parent()
        .context("the binaries' directory")?
        .to_owned();
    ensure!(
        bin_dir.join("yijian-sim").is_file(),
        "{} is missing: run the tests as the README says (`cargo test --release --workspace` builds it)",
        bin_dir.join("yijian-sim").display()
    );
    let work = tempfile::tempdir()?;
    let cwd = work.path();
    let mqtt = format!("127.0.0.1:{}", stable_port()?);
    let http = format!("127.0.0.1:{}", stable_port()?);
    let backends = format!("127.0.0.1:{}", stable_port()?);
    let ports = |s: &str| {
        s.replace("127.0.0.1:1883", &mqtt)
            .replace("localhost:8080", &http)
            .replace("127.0.0.1:8080", &http)
            .replace("127.0.0.1:9100", &backends)
    };
    copy_dir(&root.join("rules"), &cwd.join("rules"))?;
    copy_dir(&root.join("gateway/config"), &cwd.join("gateway/config"))?;
    let example = cwd.join("gateway/config/example-backends.toml");
    std::fs::write(&example, ports(&std::fs::read_to_string(&example)?))?;

    let mut bound: Vec<(String, String)> = Vec::new();
    let mut exports: Vec<String> = Vec::new();
    let mut gateway: Option<Background> = None;
    // The running gateway's log (each start its own file), shown when a step fails.
    let mut gateway_log: Option<PathBuf> = None;
    let mut starts = 0;
    let mut servers: Vec<Background> = Vec::new();
    let bin = format!("{}/", bin_dir.display());
    let steps = steps(&readme);
    ensure!(
        steps.len() > 10,
        "README.md has too few commands to be the walk-through: {steps:?}"
    );
    for step in steps {
        let (line, cmd, expect) = match step {
            Step::File { name, text } => {
                std::fs::write(cwd.join(&name), text)?;
                continue;
            }
            Step::Run { line, cmd, expect } => (line, cmd, expect),
        };
        let mut run = ports(&cmd).replace("target/release/", &bin);
        for (k, v) in &bound {
            run = run.replace(k, v);
        }
        ensure!(
            !run.contains("..."),
            "README.md:{line}: `{cmd}` uses a placeholder no earlier output showed"
        );
        if let Some(e) = run.strip_prefix("export ") {
            exports.push(format!("export {e}"));
            continue;
        }
        let words: Vec<&str> = run.split_whitespace().collect();
        let program = words.first().copied().unwrap_or_default();
        let sub = words
            .iter()
            .skip(1)
            .scan(false, |skip_value, w| {
                let is_value = std::mem::replace(skip_value, false);
                if w.starts_with("--") || w.starts_with('-') {
                    *skip_value = !w.contains('=') && *w != "--help";
                    Some(None)
                } else if is_value {
                    Some(None)
                } else {
                    Some(Some(*w))
                }
            })
            .flatten()
            .next()
            .filter(|w| !w.starts_with('#'));
        let script = format!("set -o pipefail\n{}\n{run}", exports.join("\n"));
        let mut command = Command::new("bash");
        command
            .args(["-c", &script])
            .current_dir(cwd)
            .env("YIJIAN_MQTT_LISTEN", &mqtt)
            .env("YIJIAN_HTTP_LISTEN", &http)
            .env_remove("YIJIAN_CONFIG")
            .env_remove("YIJIAN_DATA_DIR")
            .env_remove("YIJIAN_RULES_DIR")
            .env_remove("YIJIAN_TOKEN");
        let is_gateway =
            program.ends_with("/yijian-gateway") && matches!(sub, None | Some("serve"));
        let is_backends = program.ends_with("/yijian-sim") && sub == Some("backends");
        if is_gateway || is_backends {
            // `exec` so that the signal reaches the server, not bash.
            let script = format!(
                "set -o pipefail\n{}\nexec {}",
                exports.join("\n"),
                run.split(" #").next().unwrap_or(&run)
            );
            let mut command = Command::new("bash");
            command
                .args(["-c", &script])
                .current_dir(cwd)
                .env("YIJIAN_MQTT_LISTEN", &mqtt)
                .env("YIJIAN_HTTP_LISTEN", &http)
                .env_remove("YIJIAN_CONFIG")
                .env_remove("YIJIAN_DATA_DIR")
                .env_remove("YIJIAN_RULES_DIR")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if is_gateway {
                // One gateway per data directory: the README stops the first one.
                drop(gateway.take());
                starts += 1;
                let log = cwd.join(format!("gateway-{starts}.log"));
                let mut child = command.stderr(std::fs::File::create(&log)?).spawn()?;
                gateway_log = Some(log.clone());
                wait_ready(&http, &mut child)
                    .with_context(|| format!("README.md:{line}: `{cmd}`:\n{}", tail(&log)))?;
                gateway = Some(Background(child));
            } else {
                let mut child = command.stderr(Stdio::null()).spawn()?;
                wait_listening(&backends, "yijian-sim backends", &mut child)
                    .with_context(|| format!("README.md:{line}: `{cmd}`"))?;
                servers.push(Background(child));
            }
            continue;
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (mut out, mut err) = (
            child.stdout.take().context("stdout")?,
            child.stderr.take().context("stderr")?,
        );
        let reader = std::thread::spawn(move || {
            let mut o = String::new();
            let mut e = String::new();
            let _ = out.read_to_string(&mut o);
            let _ = err.read_to_string(&mut e);
            (o, e)
        });
        let deadline = Instant::now() + COMMAND_WAIT;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("README.md:{line}: `{cmd}` did not finish within {COMMAND_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let (stdout, stderr) = reader
            .join()
            .map_err(|_| anyhow!("output reader panicked"))?;
        let log = gateway_log.as_deref().map(tail).unwrap_or_default();
        ensure!(
            status.success(),
            "README.md:{line}: `{cmd}` failed ({status}):\n{stdout}{stderr}\nthe gateway's log:\n{log}"
        );
        let printed: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
        let mut at = 0;
        for e in &expect {
            // A placeholder an earlier output bound stands for the same value here.
            let e = bound.iter().fold(e.clone(), |e, (k, v)| e.replace(k, v));
            let found = printed[at..]
                .iter()
                .position(|a| matches(&e, a, &mut bound));
            match found {
                Some(i) => at += i + 1,
                None => bail!(
                    "README.md:{line}: `{cmd}` should print\n    {e}\nin this order, but printed:\n{}\nthe gateway's log:\n{log}",
                    printed.join("\n")
                ),
            }
        }
    }
    drop(servers);
    drop(gateway);
    Ok(())
}

#[test]
fn every_curl_to_the_api_carries_a_token() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["README.md", "dashboards/README.md"] {
        let text = std::fs::read_to_string(root.join(file))?;
        for (n, l) in text.lines().enumerate() {
            if l.contains("curl ") && l.contains("/api/v1/") {
                ensure!(
                    l.contains("-H \"Authorization: Bearer $TOKEN\""),
                    "{file}:{}: a curl to the API without `-H \"Authorization: Bearer $TOKEN\"`: {l}",
                    n + 1
                );
            }
        }
    }
    Ok(())
}

#[test]
fn the_matcher_binds_placeholders_and_lets_numbers_vary() {
    let mut b = Vec::new();
    assert!(matches(
        "2.7 ms  received  request=rq_01M8H1... service=rescue",
        "      3.1 ms  received  request=rq_ABC service=rescue",
        &mut b
    ));
    assert_eq!(b, [("rq_01M8H1...".to_owned(), "rq_ABC".to_owned())]);
    assert!(matches("secret: 5f0c...e1", "secret: 0123abcd", &mut b));
    assert!(matches("sha256 = \"5d1e...\"", "sha256 = \"ffee\"", &mut b));
    assert!(!matches("escalated", "dispatched", &mut b));
    assert!(!matches("\"press\": 0,", "\"press\": 0", &mut b));
    assert!(matches("\"press\": 0,", "\"press\": 12,", &mut b));
}
