//! One HTTP attempt against a dispatch backend, per the contract of DESIGN §4, and the
//! classification of its answer.

use crate::clock::rfc3339_ms;
use crate::store::Request;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// A configured HTTP backend.
#[derive(Debug)]
pub struct HttpBackend {
    /// Its name in the configuration (metric label).
    pub name: String,
    /// Where requests are POSTed.
    pub url: reqwest::Url,
    /// `Authorization: Bearer` token, from the environment.
    pub token: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// 2xx: accepted, with what the backend said about it.
    Accepted {
        reference: Option<String>,
        eta_s: Option<u32>,
    },
    /// 409: the backend already has this request (an earlier attempt got through).
    Conflict,
    /// Other 4xx: this backend will never take it.
    Refused(u16),
    /// 5xx, timeout, connection error: try again later. `retry_after` from a 503's header.
    Failed {
        label: &'static str,
        retry_after: Option<Duration>,
    },
}

impl AttemptResult {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptResult::Accepted { .. } => "accepted",
            AttemptResult::Conflict => "conflict",
            AttemptResult::Refused(_) => "refused",
            AttemptResult::Failed { label, .. } => label,
        }
    }
}

#[derive(Deserialize)]
struct AcceptBody {
    #[serde(rename = "ref")]
    reference: Option<serde_json::Value>,
    eta_s: Option<u32>,
}

/// The request body (DESIGN §4), built once per request and reused by every attempt. `press`
/// is there exactly for a request a press started, as before origins existed, so backends
/// written for presses keep working; `origin` says what started it.
pub fn body(req: &Request, resident: serde_json::Value, callback_url: &str) -> Bytes {
    let press = req.press();
    let mut v = json!({
        "request_id": req.id,
        "service": req.service,
        "priority": req.priority,
        "tags": req.tags,
        "created_at": rfc3339_ms(req.created_at),
        "origin": req.origin.to_json(),
        "device": req.device_id.as_ref().map(|id| json!({"id": id, "battery": press.and_then(|p| p.battery)})),
        "resident": resident,
    });
    if let Some(p) = press {
        v["press"] = json!({
            "id": p.id,
            "button": p.button,
            "gesture": p.gesture,
            "at": rfc3339_ms(p.at),
        });
    }
    v["callback_url"] = json!(callback_url);
    Bytes::from(serde_json::to_vec(&v).expect("json values serialize"))
}

/// Largest accept body read; anything longer is not parsed (the request is still accepted).
const MAX_ACCEPT_BODY: usize = 64 * 1024;

/// POST once.
pub async fn attempt(
    client: &reqwest::Client,
    backend: &HttpBackend,
    request_id: &str,
    attempt: u32,
    body: Bytes,
    timeout: Duration,
) -> AttemptResult {
    post(
        client,
        backend.url.clone(),
        backend.token.as_deref(),
        request_id,
        attempt,
        body,
        timeout,
    )
    .await
}

/// POST `body` to `url` once with the contract's headers (`Idempotency-Key: key`), and
/// classify the answer. Follow-ups (cancellations, notifications) use it with their own URL
/// and key.
pub async fn post(
    client: &reqwest::Client,
    url: reqwest::Url,
    token: Option<&str>,
    key: &str,
    attempt: u32,
    body: Bytes,
    timeout: Duration,
) -> AttemptResult {
    let mut rb = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .header("X-Yijian-Attempt", attempt.to_string())
        .body(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return AttemptResult::Failed {
                label: "timeout",
                retry_after: None,
            }
        }
        Err(e) if e.is_connect() => {
            return AttemptResult::Failed {
                label: "connect_error",
                retry_after: None,
            }
        }
        Err(_) => {
            return AttemptResult::Failed {
                label: "error",
                retry_after: None,
            }
        }
    };
    let status = resp.status();
    if status.is_success() {
        let (reference, eta_s) = accept_details(resp).await;
        return AttemptResult::Accepted { reference, eta_s };
    }
    if status == reqwest::StatusCode::CONFLICT {
        return AttemptResult::Conflict;
    }
    if status.is_client_error()
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        && status != reqwest::StatusCode::REQUEST_TIMEOUT
    {
        return AttemptResult::Refused(status.as_u16());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let label = match status.as_u16() {
        429 => "http_429",
        408 => "http_408",
        500 => "http_500",
        502 => "http_502",
        503 => "http_503",
        504 => "http_504",
        _ => "http_5xx",
    };
    AttemptResult::Failed { label, retry_after }
}

async fn accept_details(mut resp: reqwest::Response) -> (Option<String>, Option<u32>) {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if buf.len() + c.len() <= MAX_ACCEPT_BODY => buf.extend_from_slice(&c),
            Ok(Some(_)) => return (None, None),
            Ok(None) => break,
            // The status already said "accepted": a broken body does not undo that.
            Err(_) => return (None, None),
        }
    }
    match serde_json::from_slice::<AcceptBody>(&buf) {
        Ok(b) => {
            let reference = match b.reference {
                Some(serde_json::Value::String(s)) if s.len() <= 128 => Some(s),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (reference, b.eta_s)
        }
        Err(_) => (None, None),
    }
}
