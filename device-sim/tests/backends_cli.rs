//! `yijian-sim backends --keep-bodies`, run as a newcomer runs it: it shows the body a real
//! backend would get.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_yijian-sim");

/// Kills the mock backends when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_bodies_prints_each_body_a_backend_receives() {
    let mut child = Command::new(SIM)
        .args(["backends", "--listen", "127.0.0.1:0", "--keep-bodies"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("yijian-sim runs");
    let out = child.stdout.take().expect("stdout");
    let _running = Running(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let next = |what: &str| -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("yijian-sim backends printed no {what} in time"))
    };
    let first = next("first line");
    let base = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    let body = serde_json::json!({
        "request_id": "rq_KEEP1", "service": "rescue", "priority": "emergency",
        "device": {"id": "d-keep"}, "press": {"id": "p-keep"},
        "resident": {"id": "r-1001", "name": "Wang Xiuying"}
    });
    let status = reqwest::Client::new()
        .post(format!("{base}/rescue"))
        .header("Idempotency-Key", "rq_KEEP1")
        .header("X-Yijian-Attempt", "1")
        .json(&body)
        .send()
        .await
        .expect("the mock answers")
        .status();
    assert!(status.is_success(), "{status}");
    let mut seen = Vec::new();
    loop {
        let line = tokio::task::block_in_place(|| next("body"));
        if line.contains("\"name\": \"Wang Xiuying\"") {
            break;
        }
        seen.push(line);
        assert!(seen.len() < 100, "no body among {seen:#?}");
    }
}
