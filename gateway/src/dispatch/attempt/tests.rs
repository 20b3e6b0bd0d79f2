//! The attempt loop with real breakers and plan: on tokio's paused clock against a scripted
//! backend (the deadline, in no real time), and over real HTTP against a mock on loopback.

use super::*;
use crate::dispatch::breaker::Breaker;
use crate::dispatch::decide::reason;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// The journal's part, in memory.
#[derive(Default)]
struct Log(Mutex<Vec<AttemptRecord>>);

impl AttemptLog for Log {
    fn attempt(&self, a: AttemptRecord) -> impl Future<Output = ()> + Send {
        self.0.lock().expect("test lock").push(a);
        std::future::ready(())
    }
}

/// A backend that answers every attempt 503 after `latency`, waiting on tokio's timers only.
struct Unavailable {
    latency: Duration,
    /// When each attempt came in.
    calls: Mutex<Vec<Instant>>,
}

impl Transport for Unavailable {
    fn post(
        &self,
        _: &HttpBackend,
        _: &str,
        _: u32,
        _: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = AttemptResult> + Send {
        self.calls.lock().expect("test lock").push(Instant::now());
        let latency = self.latency;
        async move {
            if latency >= timeout {
                tokio::time::sleep(timeout).await;
                return AttemptResult::Failed {
                    label: "timeout",
                    retry_after: None,
                };
            }
            tokio::time::sleep(latency).await;
            AttemptResult::Failed {
                label: "http_503",
                retry_after: None,
            }
        }
    }
}

fn backends(name: &str, url: &str, clock: &Clock) -> HashMap<String, Backend> {
    let b = Backend {
        http: HttpBackend {
            name: name.to_owned(),
            url: url.parse().expect("test URL"),
            token: None,
        },
        breaker: Breaker::new(name, 5, Duration::from_secs(30), clock.clone()),
    };
    HashMap::from([(name.to_owned(), b)])
}

#[tokio::test(start_paused = true)]
async fn a_dead_backend_escalates_at_the_service_deadline_on_the_driven_clock() {
    let real = std::time::Instant::now();
    let clock = Clock::tokio_at(1_764_324_000_000);
    // Replayed after a restart: created 5 s ago with two attempts behind it, so of its 120 s
    // deadline 115 s are left.
    let created_at = clock.now_ms() - 5_000;
    let deadline_ms = created_at + 120_000;
    let list = vec!["ambulance-co".to_owned()];
    let backends = backends("ambulance-co", "http://127.0.0.1:9/", &clock);
    let backend = Unavailable {
        latency: Duration::from_millis(20),
        calls: Mutex::new(Vec::new()),
    };
    let (log, shutdown) = (Log::default(), CancellationToken::new());
    let policy = Policy {
        backends: &list,
        attempts_per_backend: 3,
        attempt_timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(10),
    };
    let ending = Attempts {
        transport: &backend,
        backends: &backends,
        clock: &clock,
        log: &log,
        shutdown: &shutdown,
    }
    .route(
        "rq_1",
        2,
        policy,
        deadline(&clock, created_at, Duration::from_secs(120)),
        Bytes::from_static(b"{}"),
        &shutdown.child_token(),
    )
    .await;

    assert_eq!(ending, Ending::Escalated(reason::DEADLINE));
    assert_eq!(
        clock.now_ms(),
        deadline_ms,
        "escalated at the deadline, to the millisecond"
    );
    let log = log.0.lock().expect("test lock");
    let calls = backend.calls.lock().expect("test lock");
    assert_eq!(log.len(), calls.len());
    for (k, a) in log.iter().enumerate() {
        assert_eq!(
            a.attempt,
            3 + k as u32,
            "numbered on from the earlier attempts"
        );
        assert_eq!(a.result, "http_503");
        assert_eq!(a.backend, "ambulance-co");
        assert!(a.started_at < deadline_ms);
    }
    // Five failures in a row open the circuit; from then on one probe per 30 s cooldown.
    assert!(
        calls.len() > 5 && calls.len() <= 5 + 115 / 30,
        "{} attempts",
        calls.len()
    );
    for w in calls[4..].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_secs(30),
            "an open circuit is not hammered: {:?}",
            w[1] - w[0]
        );
    }
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "two minutes of dispatch took {:?} of real time",
        real.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_a_backoff_abandons_the_request() {
    let clock = Clock::tokio_at(1_764_324_000_000);
    let list = vec!["taxi-co".to_owned()];
    let backends = backends("taxi-co", "http://127.0.0.1:9/", &clock);
    let backend = Unavailable {
        latency: Duration::from_millis(20),
        calls: Mutex::new(Vec::new()),
    };
    let (log, shutdown) = (Log::default(), CancellationToken::new());
    let token = shutdown.child_token();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let policy = Policy {
        backends: &list,
        attempts_per_backend: 3,
        attempt_timeout: Duration::from_secs(3),
        backoff_initial: Duration::from_secs(2),
        backoff_max: Duration::from_secs(10),
    };
    let ending = Attempts {
        transport: &backend,
        backends: &backends,
        clock: &clock,
        log: &log,
        shutdown: &shutdown,
    }
    .route(
        "rq_2",
        0,
        policy,
        deadline(&clock, clock.now_ms(), Duration::from_secs(120)),
        Bytes::from_static(b"{}"),
        &token,
    )
    .await;
    assert_eq!(ending, Ending::Abandoned);
    assert_eq!(
        log.0.lock().expect("test lock").len(),
        1,
        "no attempt after the cancel"
    );
}

/// Over real HTTP (so on real time, briefly): a mock backend on loopback answers 503, then
/// 201 with a reference; the retry carries the same Idempotency-Key and the next attempt number.
#[tokio::test]
async fn a_real_backend_that_recovers_gets_the_request_on_the_retry() {
    use axum::http::{HeaderMap, StatusCode};
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let hits = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post({
            let (seen, hits) = (seen.clone(), hits.clone());
            move |headers: HeaderMap| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                seen.lock()
                    .expect("test lock")
                    .push((h("idempotency-key"), h("x-yijian-attempt")));
                if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (
                        StatusCode::CREATED,
                        r#"{"ref":"AMB-7","eta_s":420}"#.to_owned(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}/", listener.local_addr().expect("bound"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let clock = Clock::system();
    let list = vec!["ambulance-co".to_owned()];
    let backends = backends("ambulance-co", &url, &clock);
    let (log, shutdown, client) = (
        Log::default(),
        CancellationToken::new(),
        reqwest::Client::new(),
    );
    let policy = Policy {
        backends: &list,
        attempts_per_backend: 3,
        attempt_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
    };
    let ending = Attempts {
        transport: &client,
        backends: &backends,
        clock: &clock,
        log: &log,
        shutdown: &shutdown,
    }
    .route(
        "rq_3",
        0,
        policy,
        deadline(&clock, clock.now_ms(), Duration::from_secs(30)),
        Bytes::from_static(b"{}"),
        &shutdown.child_token(),
    )
    .await;
    server.abort();

    assert_eq!(
        ending,
        Ending::Dispatched {
            backend: "ambulance-co".into(),
            reference: Some("AMB-7".into()),
            eta_s: Some(420),
        }
    );
    let results: Vec<_> = log
        .0
        .lock()
        .expect("test lock")
        .iter()
        .map(|a| (a.attempt, a.result))
        .collect();
    assert_eq!(results, vec![(1, "http_503"), (2, "accepted")]);
    assert_eq!(
        *seen.lock().expect("test lock"),
        vec![
            ("rq_3".to_owned(), "1".to_owned()),
            ("rq_3".to_owned(), "2".to_owned())
        ]
    );
}
