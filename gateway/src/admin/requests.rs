//! `requests list|show|ack|close|cancel`: the desk from the shell, for an operator without a
//! browser.
//!
//! NOTE: through the running gateway's HTTP API, not the journal: an action must be a
//! transition the gateway itself commits, so that its change feed tells the device (and the
//! backend that has the request, on a cancel). Reads go the same way, so one token and one
//! address serve every subcommand.

use super::AdminError;
use crate::config::Config;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Which action `requests ack|close|cancel` takes (the API's path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Take an escalated request.
    Ack,
    /// Finish an open request.
    Close,
    /// Cancel an open request; its backend is told.
    Cancel,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Ack => "ack",
            Action::Close => "close",
            Action::Cancel => "cancel",
        }
    }
}

/// What `requests list` asks for.
#[derive(Debug, Default, Clone)]
pub struct ListArgs {
    /// Only requests in this state.
    pub state: Option<String>,
    /// Only requests for this service.
    pub service: Option<String>,
    /// Only this device's requests.
    pub device: Option<String>,
    /// Only requests whose resident asked to cancel help on its way.
    pub cancel_requested: bool,
    /// At most this many (the API's default: 50).
    pub limit: Option<u32>,
}

/// The running gateway's API as the CLI reaches it.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

/// Where the gateway configured by `cfg` answers: its `[http] listen`, with an unspecified
/// address (0.0.0.0, ::) dialled on loopback.
pub fn api_base(cfg: &Config) -> String {
    let mut a: SocketAddr = cfg.http.listen;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{a}")
}

impl Client {
    /// A client for the gateway `cfg` describes, with an operator (or admin) `token`.
    pub fn new(cfg: &Config, token: Option<&str>) -> Result<Client, AdminError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
            AdminError::Refused(format!(
                "no API token: pass --token or set YIJIAN_TOKEN (an operator token from `tokens new --role operator`, \
                 or the admin token the gateway wrote to {})",
                crate::api::auth::admin_token_path(&cfg.store.data_dir).display()
            ))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AdminError::Refused(format!("cannot make an HTTP client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Client {
            base: api_base(cfg),
            token: token.to_owned(),
            http,
            rt,
        })
    }

    /// `method` on `path` with an optional JSON body: the JSON answer, or why not.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut rb = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.rt.block_on(async {
            let resp = rb.send().await.map_err(|e| {
                if e.is_connect() {
                    AdminError::Refused(format!(
                        "no gateway answers at {} (is it running? `requests` works through the running gateway's API; \
                         start it with `yijian-gateway serve`, or give the --config / --http-listen it runs with)",
                        self.base
                    ))
                } else {
                    AdminError::Refused(format!("{url}: {e}"))
                }
            })?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(v);
            }
            let why = v["error"].as_str().unwrap_or("no reason given").to_owned();
            Err(AdminError::Refused(match status.as_u16() {
                401 => format!("the gateway refused the token: {why} (pass an operator token with --token or YIJIAN_TOKEN)"),
                403 => format!("this token may not do that: {why} (an operator or admin token is needed)"),
                code => format!("{why} (HTTP {code})"),
            }))
        })
    }
}

/// `requests list`: newest first, one line each.
pub fn list(
    client: &Client,
    args: &ListArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let mut q = Vec::new();
    if let Some(s) = &args.state {
        q.push(format!("state={s}"));
    }
    if let Some(s) = &args.service {
        q.push(format!("service={s}"));
    }
    if let Some(d) = &args.device {
        q.push(format!("device={d}"));
    }
    if args.cancel_requested {
        q.push("cancel_requested=true".into());
    }
    if let Some(n) = args.limit {
        q.push(format!("limit={n}"));
    }
    let path = if q.is_empty() {
        "/api/v1/requests".to_owned()
    } else {
        format!("/api/v1/requests?{}", q.join("&"))
    };
    let v = client.call(reqwest::Method::GET, &path, None)?;
    if json {
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let list = v["requests"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        writeln!(out, "no requests")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<30} {:<11} {:<13} {:<9} {:<16} CREATED",
        "REQUEST", "STATE", "SERVICE", "PRIORITY", "DEVICE"
    )?;
    for r in list {
        let flag = if r["cancel_requested_at"].is_string() {
            " (cancel requested)"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<30} {:<11} {:<13} {:<9} {:<16} {}{flag}",
            text(&r["request_id"]),
            text(&r["state"]),
            text(&r["service"]),
            text(&r["priority"]),
            text(&r["device_id"]),
            text(&r["created_at"]),
        )?;
    }
    Ok(())
}

/// `requests show ID`: the request, its resident and its history.
pub fn show(client: &Client, id: &str, json: bool, out: &mut dyn Write) -> Result<(), AdminError> {
    let v = client.call(
        reqwest::Method::GET,
        &format!("/api/v1/requests/{}", seg(id)),
        None,
    )?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON prints")
        )?;
        return Ok(());
    }
    describe(&v, out)
}

/// `requests ack|close|cancel ID [--note TEXT]`: prints the request's new state.
pub fn act(
    client: &Client,
    id: &str,
    action: Action,
    note: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let body = serde_json::json!({ "note": note });
    let v = client.call(
        reqwest::Method::POST,
        &format!("/api/v1/requests/{}/{}", seg(id), action.path()),
        Some(body),
    )?;
    writeln!(
        out,
        "request {} is {}",
        text(&v["request_id"]),
        text(&v["state"])
    )?;
    Ok(())
}

fn describe(v: &Value, out: &mut dyn Write) -> Result<(), AdminError> {
    writeln!(
        out,
        "request  {} ({} {}, {})",
        text(&v["request_id"]),
        text(&v["priority"]),
        text(&v["service"]),
        text(&v["state"])
    )?;
    let resident = match &v["resident"] {
        Value::Null => "resident unknown".to_owned(),
        r => format!(
            "resident {} ({}, {})",
            text(&r["id"]),
            text(&r["name"]),
            text(&r["phone"])
        ),
    };
    writeln!(out, "device   {}, {resident}", text(&v["device_id"]))?;
    if let Some(p) = v["press"].as_object() {
        writeln!(
            out,
            "press    {} ({} {}) at {}",
            text(&p["id"].clone()),
            text(&p["button"].clone()),
            text(&p["gesture"].clone()),
            text(&p["at"].clone())
        )?;
    }
    if let Some(b) = v["backend"].as_str() {
        writeln!(out, "backend  {b} (ref {})", text(&v["ref"]))?;
    }
    writeln!(out, "history")?;
    for e in v["history"].as_array().into_iter().flatten() {
        let detail = match &e["detail"] {
            Value::Null => String::new(),
            d => format!("  {d}"),
        };
        writeln!(out, "  {}  {}{detail}", text(&e["at"]), text(&e["kind"]))?;
    }
    Ok(())
}

/// A JSON value as plain text (`-` for null).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A request id as one path segment (ids are `rq_` and base32; anything else is escaped).
fn seg(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
