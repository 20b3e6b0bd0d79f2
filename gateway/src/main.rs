//! `yijian-gateway`: parse arguments, load the configuration, start telemetry, call the library.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use yijian_gateway::admin::explain::ExplainArgs;
use yijian_gateway::api::auth;
use yijian_gateway::config::{Config, Role, DEFAULT_CONFIG, EXAMPLE_BACKENDS_CONFIG};
use yijian_gateway::telemetry::{self, LogFormat};
use yijian_gateway::{admin, lifecycle, Gateway};
use yijian_wire::Gesture;

/// Yijian (一键): the one-touch elderly service gateway.
///
/// Takes button presses from home call devices over MQTT (embedded broker), journals them,
/// routes them by rules to rescue, taxi and hospital dispatch backends (or the built-in
/// operator desk) and tells the device that help is coming.
///
/// Without a subcommand it runs the gateway (`serve`).
#[derive(Parser)]
#[command(
    name = "yijian-gateway",
    version,
    propagate_version = true,
    after_help = "Each global option can also be set in the environment: YIJIAN_CONFIG, YIJIAN_MQTT_LISTEN, \
                  YIJIAN_HTTP_LISTEN, YIJIAN_DATA_DIR, YIJIAN_RULES_DIR, YIJIAN_LOG_FORMAT."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The heading the options every subcommand honours are listed under, after a subcommand's own.
const GLOBAL: &str = "Global options (every subcommand)";

/// `--mqtt-listen` / `--http-listen`: an IP address and port. A host name is refused with the
/// form to use: the gateway binds exactly the address given, and `localhost` may be IPv6.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP address and port: use an IP address such as 127.0.0.1:1883 (or 0.0.0.0:1883 for every interface); host names such as localhost are not resolved")
    })
}

/// Options every subcommand honours, so `devices add` works on a running gateway's data.
#[derive(Args)]
struct Global {
    /// Configuration file (TOML). Without it the built-in default is used
    /// (print it with `config default`).
    #[arg(short, long, global = true, env = "YIJIAN_CONFIG", value_name = "FILE", help_heading = GLOBAL, hide_env = true)]
    config: Option<PathBuf>,
    /// Override [mqtt] listen, e.g. 127.0.0.1:1883.
    #[arg(long, global = true, env = "YIJIAN_MQTT_LISTEN", value_name = "ADDR", value_parser = parse_listen, help_heading = GLOBAL, hide_env = true)]
    mqtt_listen: Option<SocketAddr>,
    /// Override [http] listen, e.g. 127.0.0.1:8080.
    #[arg(long, global = true, env = "YIJIAN_HTTP_LISTEN", value_name = "ADDR", value_parser = parse_listen, help_heading = GLOBAL, hide_env = true)]
    http_listen: Option<SocketAddr>,
    /// Override [store] data_dir (the journal lives in DIR/yijian.db).
    #[arg(long, global = true, env = "YIJIAN_DATA_DIR", value_name = "DIR", help_heading = GLOBAL, hide_env = true)]
    data_dir: Option<PathBuf>,
    /// Override [rules] dir.
    #[arg(long, global = true, env = "YIJIAN_RULES_DIR", value_name = "DIR", help_heading = GLOBAL, hide_env = true)]
    rules_dir: Option<PathBuf>,
    /// Log format: human | json.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "YIJIAN_LOG_FORMAT",
        help_heading = GLOBAL,
        hide_env = true,
        hide_possible_values = true,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with its embedded broker (the default).
    Serve,
    /// Register and list devices.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Check routing rules, and explain what they decide for a press.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Import and show residents (the people behind the devices).
    #[command(subcommand)]
    Residents(ResidentsCmd),
    /// Make API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Work the desk from the shell: list, show, acknowledge, close and cancel requests
    /// through the running gateway's API (at its [http] listen).
    #[command(subcommand)]
    Requests(RequestsCmd),
}

/// The API token the `requests` subcommands use.
#[derive(Args)]
struct TokenArg {
    /// An operator (or admin) API token.
    #[arg(long, env = "YIJIAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum RequestsCmd {
    /// List requests, newest first.
    List {
        /// Only this state: received, dispatched, escalated, acknowledged, en_route,
        /// arrived, closed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only this service: rescue, taxi, hospital, welfare_check, maintenance.
        #[arg(long)]
        service: Option<String>,
        /// Only this device's requests.
        #[arg(long)]
        device: Option<String>,
        /// Only requests whose resident asked to cancel help already on its way.
        #[arg(long)]
        cancel_requested: bool,
        /// At most this many (default 50, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Show one request: its device, resident, press and history.
    Show {
        /// The request id (rq_...).
        id: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Take an escalated request (you will handle it).
    Ack(ActionArgs),
    /// Close an open request (it is done).
    Close(ActionArgs),
    /// Cancel an open request (after confirming with the resident); its backend is told.
    Cancel(ActionArgs),
}

#[derive(Args)]
struct ActionArgs {
    /// The request id (rq_...).
    id: String,
    /// A note for the request's history, beside your name.
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    #[command(flatten)]
    token: TokenArg,
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Register a device and print its new secret (shown once).
    Add {
        /// Device id: 1-64 of A-Z a-z 0-9 _ -; also its MQTT client id and username.
        id: String,
        /// Device model profile: one the rules name (the shipped rules: one-button,
        /// three-button); anything else is refused with the list.
        #[arg(long, default_value = yijian_gateway::devices::DEFAULT_PROFILE)]
        profile: String,
        /// Resident the device belongs to.
        #[arg(long)]
        resident: Option<String>,
        /// Print {"device_id": ..., "secret": ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register PREFIX1..PREFIXN in one go; prints one JSON line with id and secret per device.
    AddMany {
        /// Id prefix, e.g. `sim-` gives sim-1, sim-2, ...
        #[arg(long)]
        prefix: String,
        /// How many.
        #[arg(long)]
        count: u32,
        /// Device model profile.
        #[arg(long)]
        profile: Option<String>,
    },
    /// List registered devices.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bind a registered device to a resident on record.
    Bind {
        /// The device.
        id: String,
        /// The resident (imported with `residents import`).
        resident: String,
    },
    /// Bind a device to no resident (its presses are dispatched as resident_unknown).
    Unbind {
        /// The device.
        id: String,
    },
    /// Show one device.
    Show {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give a device a new secret (printed once); the old one stops working and a running
    /// gateway drops the connection made with it.
    Rotate {
        /// Device id.
        id: String,
        /// Print {"device_id": ..., "secret": ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: it can never connect again, and a running gateway drops its connection.
    Revoke {
        /// Device id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ResidentsCmd {
    /// Import residents from a CSV file (with a header row) or a TOML file ([[resident]]
    /// tables). Every problem is reported with its line; nothing is imported unless the
    /// whole file is good. Existing residents with the same id are replaced.
    Import {
        /// The file: *.csv or *.toml.
        file: PathBuf,
    },
    /// Show one resident: record, devices, time zone.
    Show {
        /// The resident's id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List residents.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Make a new API token: prints the token (once) and the [[api.tokens]] entry, holding only
    /// its SHA-256, to add to the configuration.
    New {
        /// Who will hold it (a person, a desk, a backend).
        #[arg(long)]
        name: String,
        /// operator | backend | admin | metrics.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// For role backend: the backend (a [backends] name) it speaks for.
        #[arg(long)]
        backend: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "operator" => Ok(Role::Operator),
        "backend" => Ok(Role::Backend),
        "admin" => Ok(Role::Admin),
        "metrics" => Ok(Role::Metrics),
        _ => Err("role must be one of operator|backend|admin|metrics".into()),
    }
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Check every rule file in DIR; report every error with file:line:column.
    Check {
        /// The rules directory.
        dir: PathBuf,
    },
    /// Show which rule decides a press and why each earlier rule did not, using the
    /// configured rules (--rules-dir). With --device, the device's profile and its resident's
    /// attributes and time zone come from the journal.
    Explain {
        /// A registered device.
        #[arg(long, conflicts_with = "profile")]
        device: Option<String>,
        /// The device profile (without --device).
        #[arg(long)]
        profile: Option<String>,
        /// The button label.
        #[arg(long, default_value = "main")]
        button: String,
        /// single | double | triple | long.
        #[arg(long, default_value = "single")]
        gesture: Gesture,
        /// When: RFC 3339 (2026-11-28T22:30:00+08:00), or the resident's local time HH:MM.
        /// Default: now.
        #[arg(long)]
        at: Option<String>,
        /// A resident on record whose attributes and time zone to use (without --device).
        #[arg(long)]
        resident: Option<String>,
        /// A resident attribute, name=value (repeatable; over the resident's own).
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
        /// Judge the time in this IANA zone instead of the resident's / the default.
        #[arg(long)]
        time_zone: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the built-in default configuration.
    Default,
    /// Print an example configuration routing to HTTP backends.
    Example,
    /// Check a configuration file and print the routes it gives.
    Check {
        /// The file.
        file: PathBuf,
    },
}

fn load_config(g: &Global) -> Result<Config, String> {
    let mut cfg = match &g.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default_config(),
    };
    if let Some(a) = g.mqtt_listen {
        cfg.mqtt.listen = a;
    }
    if let Some(a) = g.http_listen {
        cfg.http.listen = a;
    }
    if let Some(d) = &g.data_dir {
        cfg.store.data_dir = d.clone();
    }
    if let Some(d) = &g.rules_dir {
        cfg.rules.dir = Some(d.clone());
    }
    Ok(cfg)
}

/// jemalloc instead of glibc malloc. The broker allocates and frees message copies, commit-log
/// segments and per-connection buffers on different threads; under glibc's per-thread arenas
/// the 10,000-device soak sat ~75 MiB higher and grew faster after warm-up than under jemalloc
/// (+16.9 vs +12.6 MiB per 10 minutes: bench/soak.sh, BENCHMARKS.md "Soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own count of the heap, for `yijian_heap_allocated_bytes` and
/// `yijian_heap_resident_bytes` (the telemetry sampler calls it every 2 s).
#[cfg(not(target_env = "msvc"))]
fn jemalloc_heap() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are cached; advancing the epoch refreshes them.
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve) {
        telemetry::init_logging(cli.global.log_format);
        #[cfg(not(target_env = "msvc"))]
        telemetry::sampler::set_heap_probe(jemalloc_heap);
    }
    let mut out = std::io::stdout().lock();
    let result: Result<(), String> = match command {
        Command::Config(ConfigCmd::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        Command::Config(ConfigCmd::Example) => {
            print!("{EXAMPLE_BACKENDS_CONFIG}");
            Ok(())
        }
        Command::Config(ConfigCmd::Check { file }) => {
            admin::config_check(&file, &mut out).map_err(|e| e.to_string())
        }
        Command::Rules(RulesCmd::Check { dir }) => {
            admin::rules_check(&dir, &mut out).map_err(|e| e.to_string())
        }
        Command::Tokens(TokensCmd::New {
            name,
            role,
            backend,
        }) => {
            if (role == Role::Backend) != backend.is_some() {
                Err("--backend NAME is required for role backend, and only for it".into())
            } else {
                use std::io::Write;
                let (token, digest) = auth::new_token();
                writeln!(out, "token: {token}")
                    .and_then(|_| writeln!(out, "Give it to {name}; it is shown only this once. Add to the configuration and restart:\n"))
                    .and_then(|_| write!(out, "{}", auth::token_snippet(&name, role, backend.as_deref(), &digest)))
                    .map_err(|e| format!("cannot write output: {e}"))
            }
        }
        other => match load_config(&cli.global) {
            Err(e) => Err(e),
            Ok(cfg) => match other {
                Command::Devices(DevicesCmd::Add {
                    id,
                    profile,
                    resident,
                    json,
                }) => admin::devices_add(
                    &cfg,
                    &id,
                    Some(&profile),
                    resident.as_deref(),
                    json,
                    &mut out,
                )
                .map_err(|e| e.to_string()),
                Command::Devices(DevicesCmd::AddMany {
                    prefix,
                    count,
                    profile,
                }) => admin::devices_add_many(&cfg, &prefix, count, profile.as_deref(), &mut out)
                    .map_err(|e| e.to_string()),
                Command::Devices(DevicesCmd::List { json }) => {
                    admin::devices_list(&cfg, json, &mut out).map_err(|e| e.to_string())
                }
                Command::Devices(DevicesCmd::Bind { id, resident }) => {
                    admin::residents::devices_bind(&cfg, &id, Some(&resident), &mut out)
                        .map_err(|e| e.to_string())
                }
                Command::Devices(DevicesCmd::Unbind { id }) => {
                    admin::residents::devices_bind(&cfg, &id, None, &mut out)
                        .map_err(|e| e.to_string())
                }
                Command::Residents(ResidentsCmd::Import { file }) => {
                    admin::residents::residents_import(&cfg, &file, &mut out)
                        .map_err(|e| e.to_string())
                }
                Command::Residents(ResidentsCmd::Show { id, json }) => {
                    admin::residents::residents_show(&cfg, &id, json, &mut out)
                        .map_err(|e| e.to_string())
                }
                Command::Residents(ResidentsCmd::List { json }) => {
                    admin::residents::residents_list(&cfg, json, &mut out)
                        .map_err(|e| e.to_string())
                }
                Command::Rules(RulesCmd::Explain {
                    device,
                    profile,
                    button,
                    gesture,
                    at,
                    resident,
                    attrs,
                    time_zone,
                }) => {
                    let args = ExplainArgs {
                        device,
                        profile,
                        button: Some(button),
                        gesture: Some(gesture),
                        at,
                        resident,
                        attrs,
                        time_zone,
                    };
                    admin::explain::rules_explain(
                        &cfg,
                        &args,
                        yijian_gateway::clock::now_ms(),
                        &mut out,
                    )
                    .map_err(|e| e.to_string())
                }
                Command::Devices(DevicesCmd::Show { id, json }) => {
                    lifecycle::cli_show(&cfg, &id, json, &mut out).map_err(|e| e.to_string())
                }
                Command::Devices(DevicesCmd::Rotate { id, json }) => {
                    lifecycle::cli_rotate(&cfg, &id, json, &mut out).map_err(|e| e.to_string())
                }
                Command::Devices(DevicesCmd::Revoke { id }) => {
                    lifecycle::cli_revoke(&cfg, &id, &mut out).map_err(|e| e.to_string())
                }
                Command::Requests(cmd) => requests(&cfg, cmd, &mut out).map_err(|e| e.to_string()),
                _ => match serve(cfg) {
                    Err(Refused::InUse(e)) => {
                        // Exit 2: nothing is wrong with this gateway's configuration; another
                        // one already serves this journal.
                        eprintln!("yijian-gateway: {e}");
                        return ExitCode::from(2);
                    }
                    Err(Refused::Other(e)) => Err(e),
                    Ok(()) => Ok(()),
                },
            },
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yijian-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `requests ...`, through the running gateway's API.
fn requests(
    cfg: &Config,
    cmd: RequestsCmd,
    out: &mut dyn std::io::Write,
) -> Result<(), admin::AdminError> {
    use admin::requests::{self as rq, Action, Client, ListArgs};
    match cmd {
        RequestsCmd::List {
            state,
            service,
            device,
            cancel_requested,
            limit,
            json,
            token,
        } => {
            let client = Client::new(cfg, token.token.as_deref())?;
            let args = ListArgs {
                state,
                service,
                device,
                cancel_requested,
                limit,
            };
            rq::list(&client, &args, json, out)
        }
        RequestsCmd::Show { id, json, token } => {
            rq::show(&Client::new(cfg, token.token.as_deref())?, &id, json, out)
        }
        RequestsCmd::Ack(a) => act(cfg, a, Action::Ack, out),
        RequestsCmd::Close(a) => act(cfg, a, Action::Close, out),
        RequestsCmd::Cancel(a) => act(cfg, a, Action::Cancel, out),
    }
}

fn act(
    cfg: &Config,
    a: ActionArgs,
    action: admin::requests::Action,
    out: &mut dyn std::io::Write,
) -> Result<(), admin::AdminError> {
    let client = admin::requests::Client::new(cfg, a.token.token.as_deref())?;
    admin::requests::act(&client, &a.id, action, a.note.as_deref(), out)
}

/// Why `serve` did not run.
enum Refused {
    /// Another gateway holds the data directory.
    InUse(String),
    /// Anything else, as the message to print.
    Other(String),
}

impl From<String> for Refused {
    fn from(e: String) -> Self {
        Refused::Other(e)
    }
}

fn serve(cfg: Config) -> Result<(), Refused> {
    // First of all: a second gateway on the same journal is told so, before it would fail on
    // the first gateway's ports.
    let lock = match yijian_gateway::store::lock::DirLock::acquire(&cfg.store.data_dir) {
        Ok(l) => l,
        Err(e @ yijian_gateway::store::StoreError::InUse { .. }) => {
            return Err(Refused::InUse(e.to_string()))
        }
        Err(e) => return Err(Refused::Other(e.to_string())),
    };
    match yijian_wire::os::raise_fd_limit() {
        Some((soft, hard)) => tracing::info!(
            soft,
            hard,
            "open files limit (each device connection takes one)"
        ),
        None => tracing::warn!("cannot read the open files limit"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("yijian")
        .build()
        .map_err(|e| Refused::Other(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        // Listening for SIGTERM before the gateway can say it is ready: a stop that comes right
        // after `/readyz` turns 200 is graceful, not the signal's default action.
        let stop = shutdown_signal();
        let http = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .map_err(|e| format!("cannot listen for HTTP on {}: {e}", cfg.http.listen))?;
        let gateway = Gateway::start_locked(cfg, http, lock)
            .await
            .map_err(|e| e.to_string())?;
        reload_on_sighup(gateway.rules.clone());
        gateway.run_until(stop).await;
        Ok(())
    })
}

/// `kill -HUP`: reload the rules (kept as they are if the new ones fail their check).
fn reload_on_sighup(rules: std::sync::Arc<yijian_gateway::rules::reload::Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let r = rules.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
        }
    });
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives while the gateway starts is kept for it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
