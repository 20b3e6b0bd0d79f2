//! The update call: tells the backend that holds a request that the resident pressed the same
//! service again (flood control joins such presses to the open request; repeated presses
//! signal urgency). The contract is in README.md beside the backend contract:
//!
//! `POST {backend.url}/{request_id}/updates` with `Idempotency-Key: {request_id}/{press_id}`,
//! the backend's bearer token, and `{"request_id", "event": "pressed_again", "count", "press",
//! "at"}`. Any 2xx or 4xx ends it; 5xx, 408, 429, timeouts and connection errors are retried a
//! few times. Best effort: the request itself is already with the backend and the event is in
//! the journal's history, which operators see.

use crate::clock::rfc3339_ms;
use crate::store::RequestUpdate;
use crate::telemetry::security as telemetry;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Attempts per update.
const ATTEMPTS: u32 = 3;
/// Timeout of one attempt.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Sends updates; cheap to clone.
#[derive(Clone)]
pub struct Updater {
    client: reqwest::Client,
    /// Backend name → (base URL, bearer token).
    backends: Arc<HashMap<String, (reqwest::Url, Option<String>)>>,
}

impl Updater {
    /// An updater over the configured backends.
    pub fn new(
        client: reqwest::Client,
        backends: HashMap<String, (reqwest::Url, Option<String>)>,
    ) -> Self {
        for name in backends.keys() {
            telemetry::backend_updates_known(name);
        }
        Updater {
            client,
            backends: Arc::new(backends),
        }
    }

    /// Where the update for `request_id` goes: the backend URL with `/{request_id}/updates`
    /// appended to its path.
    pub fn url(base: &reqwest::Url, request_id: &str) -> reqwest::Url {
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(request_id).push("updates");
        }
        url
    }

    /// Send one update in the background.
    pub fn send(&self, update: RequestUpdate) {
        let Some((base, token)) = self.backends.get(&update.backend).cloned() else {
            // Configuration changed since the request was dispatched: nobody to tell.
            telemetry::backend_update(&update.backend, "unknown_backend");
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let url = Updater::url(&base, &update.request_id);
            let body = json!({
                "request_id": update.request_id,
                "event": "pressed_again",
                "count": update.count,
                "press": {
                    "id": update.press.id,
                    "button": update.press.button,
                    "gesture": update.press.gesture,
                    "at": rfc3339_ms(update.press.at),
                },
                "at": rfc3339_ms(update.at),
            });
            let key = format!("{}/{}", update.request_id, update.press.id);
            for attempt in 1..=ATTEMPTS {
                let mut rb = client
                    .post(url.clone())
                    .timeout(TIMEOUT)
                    .header("Idempotency-Key", &key)
                    .header("X-Yijian-Attempt", attempt.to_string())
                    .json(&body);
                if let Some(t) = &token {
                    rb = rb.bearer_auth(t);
                }
                let retry = match rb.send().await {
                    Ok(r) if r.status().is_success() => {
                        telemetry::backend_update(&update.backend, "accepted");
                        return;
                    }
                    Ok(r) => {
                        let s = r.status().as_u16();
                        s >= 500 || s == 408 || s == 429
                    }
                    Err(_) => true,
                };
                if !retry {
                    telemetry::backend_update(&update.backend, "refused");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            telemetry::backend_update(&update.backend, "failed");
            tracing::warn!(request_id = %update.request_id, backend = %update.backend, "pressed-again update not delivered");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::Mutex;

    /// What a test backend was sent: (Idempotency-Key, X-Yijian-Attempt), in arrival order.
    type Calls = Arc<Mutex<Vec<(String, String)>>>;

    /// A backend on loopback that answers every update with `status`.
    async fn backend(status: u16) -> (reqwest::Url, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/b/:rid/updates",
            axum::routing::post(move |h: HeaderMap| {
                let seen = seen.clone();
                async move {
                    let header = |n: &str| {
                        h.get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    seen.lock()
                        .expect("test lock")
                        .push((header("idempotency-key"), header("x-yijian-attempt")));
                    StatusCode::from_u16(status).expect("a status")
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/b", l.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(l, app).await });
        (url.parse().expect("URL"), calls)
    }

    fn update() -> RequestUpdate {
        RequestUpdate {
            request_id: "rq_1".into(),
            backend: "b".into(),
            count: 2,
            press: yijian_wire::Press {
                id: "p-2".into(),
                button: "main".into(),
                gesture: yijian_wire::Gesture::Double,
                at: 1_764_324_000_000,
                battery: None,
            },
            at: 1_764_324_000_100,
        }
    }

    /// Send one update to a backend answering `status`: what the backend was sent, once it
    /// has `expect` calls and a second more (longer than the updater's next backoff would be)
    /// has brought no other.
    async fn sent(status: u16, expect: usize) -> Vec<(String, String)> {
        let (url, calls) = backend(status).await;
        let u = Updater::new(
            reqwest::Client::new(),
            HashMap::from([("b".to_owned(), (url, None))]),
        );
        u.send(update());
        let n = || calls.lock().expect("test lock").len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while n() < expect {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{status}: {} of {expect} calls",
                n()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let calls = calls.lock().expect("test lock").clone();
        calls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_the_backend_cannot_take_is_retried_twice_then_dropped() {
        let key = || "rq_1/p-2".to_owned();
        let (unavailable, refused, accepted) =
            tokio::join!(sent(503, 3), sent(422, 1), sent(200, 1));
        assert_eq!(
            unavailable,
            [
                (key(), "1".into()),
                (key(), "2".into()),
                (key(), "3".into())
            ],
            "three attempts with one key, then dropped"
        );
        // A 4xx is an answer: not retried. So is a 2xx.
        assert_eq!(refused, [(key(), "1".into())]);
        assert_eq!(accepted, [(key(), "1".into())]);
    }

    #[test]
    fn the_update_url_extends_the_backend_path() {
        let u = |s: &str| Updater::url(&reqwest::Url::parse(s).unwrap(), "rq_1").to_string();
        assert_eq!(u("http://h:1/taxi"), "http://h:1/taxi/rq_1/updates");
        assert_eq!(u("http://h:1/taxi/"), "http://h:1/taxi/rq_1/updates");
        assert_eq!(
            u("https://h/api/requests?x=1"),
            "https://h/api/requests/rq_1/updates?x=1"
        );
    }
}
