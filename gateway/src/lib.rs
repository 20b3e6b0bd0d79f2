//! Yijian (一键) — the one-touch elderly service gateway.
//!
//! A press travels, one module per stage, each using only the stages after it:
//!
//! ```text
//! device ─MQTT─▶ source ─▶ adapter ─▶ intake ─▶ rules ─▶ store ─▶ dispatch ─HTTP─▶ backends
//!               (broker:  (yijian/v1: (device,   (press →  (journal, (retries, failover,  │
//!                auth,     bytes →     resident, decision) outbox,   breaker, escalation │
//!                ACL)      Press)      dedupe)             lifecycle) to `desk`)          │
//!                                                  │                                      │
//!                                       change feed (every committed transition)          │
//!                                                  ├──▶ feedback ──▶ source ──▶ device    │
//!                                                  └──▶ (console stream, supervision)     │
//!                                        api (operators, callbacks) ◀────────────────────┘
//! ```
//!
//! - [`broker`]: the embedded rumqttd, device authentication, per-device topic ACL, TLS,
//!   eviction; [`source`]: the gateway's own MQTT connections to it (or, later, to an external
//!   broker): read, ack in receive order, publish.
//! - [`adapter`]: what a device's messages mean (`yijian/v1` first): topic + payload → `Press`
//!   or `Status`, or a precise rejection; how a device is answered.
//! - [`intake`]: decode, look up the device ([`devices`]) and its resident ([`residents`]), ask
//!   the [`rules`], hand the press to the journal, answer what is not a transition.
//! - [`store`]: the journal as a port — typed reads, the `Command` write protocol, the pure
//!   request lifecycle, the change feed; SQLite (WAL, group commit) under `store/sqlite/`.
//!   A device hears `received` only after its press's commit.
//! - [`dispatch`]: the backend contract, retries, circuit breakers, escalation, follow-ups.
//! - [`feedback`]: the change feed's subscriber that tells each device of its requests, and
//!   the re-telling for a device that was away.
//! - [`api`]: health, metrics, requests, operator actions, backend callbacks, tokens and roles.
//! - Beside the path: [`config`] (every configuration type; imports no stage), [`telemetry`]
//!   (metric names and one function per event), [`clock`] (injected time), [`admin`] (the CLI
//!   subcommands, through the store's port), [`flood`] and [`lifecycle`] (security controls,
//!   see SECURITY.md).
//!
//! [`Gateway::start`] takes a configuration and a bound HTTP listener and returns once the
//! gateway is ready; `main` only wires. `.ci/imports.py` checks that no import runs in a circle
//! or back up this path.

pub mod adapter;
pub mod admin;
pub mod api;
pub mod broker;
pub mod clock;
pub mod config;
pub mod devices;
pub mod dispatch;
pub mod feedback;
pub mod flood;
pub mod intake;
pub mod lifecycle;
pub mod residents;
pub mod rules;
pub mod source;
pub mod store;
pub mod telemetry;

use config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The rules do not load.
    #[error("rules: {0}")]
    Rules(#[from] rules::CheckFailed),
    /// The journal cannot be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The TLS listener's certificate, key or client CA is unusable.
    #[error(transparent)]
    Tls(#[from] broker::tls::TlsError),
    /// The gateway's own MQTT connections could not reach the broker.
    #[error("MQTT: {0}")]
    Mqtt(#[source] source::SourceError),
    /// A listener could not be set up: `context` says which, `source` why.
    #[error("{context}: {source}")]
    Io {
        /// What was being set up, e.g. `cannot listen for MQTT on 127.0.0.1:1883`.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the rules come from.
pub fn rules_source(cfg: &Config) -> Option<PathBuf> {
    match &cfg.rules.dir {
        Some(d) => Some(d.clone()),
        None => {
            let local = PathBuf::from("rules");
            local.is_dir().then_some(local)
        }
    }
}

/// A running gateway.
pub struct Gateway {
    /// Where the embedded broker listens.
    pub mqtt_addr: SocketAddr,
    /// Where the TLS listener for devices listens, when configured.
    pub mqtt_tls_addr: Option<SocketAddr>,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The journal (tests inspect it, inject failures).
    pub store: store::Store,
    /// Component readiness, as `/readyz` reports it.
    pub ready: Arc<api::Readiness>,
    /// The live rules: reload them (SIGHUP), watch reloads.
    pub rules: Arc<rules::reload::Reloader>,
    shutdown: CancellationToken,
    /// Phase two of shutdown: abandon what is still in flight (it stays in the outbox).
    abort: CancellationToken,
    /// To stop admitting devices when shutting down.
    accounts: broker::Accounts,
    /// How long dispatches in flight may take to finish on shutdown.
    grace: Duration,
    tasks: Vec<JoinHandle<()>>,
    /// Stops the broker's listener thread, and the thread itself.
    broker: Option<(CancellationToken, std::thread::JoinHandle<()>)>,
    /// One gateway per data directory: held until this gateway has stopped.
    _lock: store::lock::DirLock,
}

impl Gateway {
    /// Start every stage; returns once devices are admitted and the API serves. Fails with
    /// [`store::StoreError::InUse`] when another gateway holds the data directory.
    pub async fn start(config: Config, http: TcpListener) -> Result<Gateway, StartError> {
        let lock = store::lock::DirLock::acquire(&config.store.data_dir)?;
        Gateway::start_locked(config, http, lock).await
    }

    /// [`Gateway::start`] with the data directory's lock already taken (`serve` takes it
    /// before it binds its ports, so a second gateway is told why rather than "address in use").
    pub async fn start_locked(
        config: Config,
        http: TcpListener,
        lock: store::lock::DirLock,
    ) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let (reloader, rules_desc) = rules::reload::Reloader::start(rules_source(&config))?;
        let metrics = telemetry::metrics_handle();
        let store = store::Store::open(&config.db_path(), config.store.max_batch)?;
        let ready = Arc::new(api::Readiness::default());
        let auth =
            api::auth::Auth::load(&config.api, &config.store.data_dir).map_err(|problems| {
                config::ConfigError {
                    source_name: None,
                    problems,
                }
            })?;
        let tls = match &config.mqtt.tls {
            Some(t) => Some(Arc::new(broker::tls::TlsHandshake::new(t)?)),
            None => None,
        };

        // rumqttd binds its listeners inside tasks and can only log a failure there; check the
        // addresses first so a busy port is a clear start error.
        std::net::TcpListener::bind(config.mqtt.listen).map_err(|source| StartError::Io {
            context: format!("cannot listen for MQTT on {}", config.mqtt.listen),
            source,
        })?;
        if let Some(t) = &config.mqtt.tls {
            std::net::TcpListener::bind(t.listen).map_err(|source| StartError::Io {
                context: format!("cannot listen for MQTT over TLS on {}", t.listen),
                source,
            })?;
        }
        let directory = devices::Directory::new(store.clone());
        let accounts = broker::Accounts::new(directory.clone(), &config.mqtt);
        let broker_stop = CancellationToken::new();
        let resume = Arc::new(feedback::resume::Resume::default());
        // The embedded broker reports subscriptions (rumqttd patch 11): no status fallback.
        resume.hooks_available(true);
        let broker_thread = broker::start(
            &config.mqtt,
            &config.flood,
            accounts.clone(),
            tls,
            resume.clone(),
            broker_stop.clone(),
        )
        .map_err(|source| StartError::Io {
            context: "cannot start the MQTT listener thread".into(),
            source,
        })?;

        let source = source::Source::embedded(
            config.mqtt.listen,
            config.mqtt.max_payload_size,
            accounts.gateway_secret_arc(),
        );
        let adapter: Arc<dyn adapter::Adapter> = Arc::new(adapter::YijianV1);
        // Alive until the very end: dispatches finishing during the grace period still tell
        // their devices.
        let feedback = feedback::FeedbackSender::connect(
            &source,
            broker::GATEWAY_FEEDBACK_CLIENT,
            adapter.clone(),
            abort.clone(),
        )
        .await
        .map_err(StartError::Mqtt)?;
        ready.broker.store(true, Ordering::Release);
        let resumes = feedback::resume::start(
            resume.clone(),
            store.clone(),
            feedback.clone(),
            shutdown.clone(),
        );
        // Every committed transition is told to its device until the very end (`abort`, after
        // the grace period), so dispatches finishing while the gateway stops are heard. Not
        // among `tasks`: shutdown waits for those, and this one ends only at `abort`.
        feedback::changes::start(store.clone(), feedback.clone(), abort.clone());

        let (dispatch, dispatch_tasks) = dispatch::start(
            config.clone(),
            store.clone(),
            shutdown.clone(),
            abort.clone(),
            clock::Clock::system(),
        )?;
        let residents = residents::Residents::new(store.clone(), &config.rules.time_zone);
        let watch_every = Duration::from_millis(config.rules.watch_interval_ms);
        let mut tasks = dispatch_tasks;
        tasks.push(rules::reload::watch(
            reloader.clone(),
            watch_every,
            shutdown.clone(),
        ));
        // Residents change only by CLI; a second is soon enough even with watching turned off.
        let residents_every = if watch_every.is_zero() {
            Duration::from_secs(1)
        } else {
            watch_every
        };
        tasks.push(residents::cache::watch(
            residents.clone(),
            directory.clone(),
            residents_every,
            shutdown.clone(),
        ));
        for s in yijian_wire::Service::ALL {
            if config.route(*s).notify_contacts && config.notify.backend.is_none() {
                tracing::info!(service = %s, "no [notify] backend: contacts are not notified when requests go to the desk");
            }
        }
        let ctx = Arc::new(intake::IntakeContext {
            store: store.clone(),
            directory,
            residents,
            rules: reloader.live(),
            adapter,
            feedback: feedback.clone(),
            resume,
            dispatch: dispatch.clone(),
            cancel_window_ms: config.rules.cancel_window_s as i64 * 1000,
            attach_window_ms: config.flood.attach_window_s as i64 * 1000,
        });
        let presses = intake::start_presses(
            &source,
            broker::GATEWAY_PRESS_CLIENT,
            ctx.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(StartError::Mqtt)?;
        let statuses = intake::start_statuses(
            &source,
            broker::GATEWAY_STATUS_CLIENT,
            ctx.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(StartError::Mqtt)?;
        // Credential changes from here on drop live connections (revoke, rotate).
        let seen = store.last_credential_change().await?;
        let evictions = broker::evict::start(
            config.mqtt.clone(),
            store.clone(),
            ctx.directory.clone(),
            accounts.changes.clone(),
            accounts.gateway_secret_arc(),
            seen,
            shutdown.clone(),
        );
        // Intake's subscriptions exist: from now on no device message can fall on a topic
        // nobody reads.
        accounts.admit_devices(true);
        ready.intake.store(true, Ordering::Release);

        let pending = store.outbox().await?;
        if !pending.is_empty() {
            tracing::info!(requests = pending.len(), "replaying the dispatch outbox");
        }
        let replay = {
            let dispatch = dispatch.clone();
            tokio::spawn(async move {
                for req in pending {
                    dispatch.submit(req).await;
                }
            })
        };

        let http_addr = http.local_addr().map_err(|source| StartError::Io {
            context: "cannot read the HTTP listener's address".into(),
            source,
        })?;
        let app = api::router(api::ApiState {
            store: store.clone(),
            ready: ready.clone(),
            metrics,
            auth: Arc::new(auth),
            config: config.clone(),
        });
        let http_task = {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(http, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            })
        };

        let sampler = store::sampler::start(store.clone(), shutdown.clone());
        config.log_summary(http_addr, &rules_desc);

        Ok(Gateway {
            mqtt_addr: config.mqtt.listen,
            mqtt_tls_addr: config.mqtt.tls.as_ref().map(|t| t.listen),
            http_addr,
            store,
            ready,
            rules: reloader,
            shutdown,
            abort,
            accounts,
            grace: Duration::from_millis(config.shutdown.grace_ms),
            tasks: {
                tasks.extend([
                    presses, statuses, replay, http_task, sampler, evictions, resumes,
                ]);
                tasks
            },
            broker: Some((broker_stop, broker_thread)),
            _lock: lock,
        })
    }

    /// Reload the rules now (as SIGHUP does): the new set if it passes its check, else the
    /// old one stays. Runs the file reads off the async runtime.
    pub async fn reload_rules(&self, why: &'static str) -> rules::reload::Outcome {
        let r = self.rules.clone();
        tokio::task::spawn_blocking(move || r.reload(why))
            .await
            .unwrap_or_else(|e| rules::reload::Outcome::Refused(format!("reload task failed: {e}")))
    }

    /// A token that stops the gateway when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop gracefully: refuse new device connections, stop reading presses and taking new
    /// dispatches, give dispatches in flight the grace period to finish, abandon the rest to the
    /// outbox, flush the journal and close the broker (dropping every device connection).
    pub async fn stop(self) {
        self.accounts.admit_devices(false);
        self.ready.intake.store(false, Ordering::Release);
        self.shutdown.cancel();
        let tasks = self.tasks;
        let mut all = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        let finished_in_time = tokio::time::timeout(self.grace, &mut all).await.is_ok();
        self.abort.cancel();
        if !finished_in_time {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "grace period over: what is still in flight stays in the outbox"
            );
            let _ = all.await;
        }
        self.store.flush().await;
        if let Some((stop, thread)) = self.broker {
            stop.cancel();
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Run until `signal` resolves, then stop.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        let token = self.shutdown.clone();
        tokio::select! {
            _ = signal => tracing::info!("shutting down"),
            _ = token.cancelled() => {}
        }
        self.stop().await;
    }
}
