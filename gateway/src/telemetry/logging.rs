//! Logs: the tracing subscriber (human lines or JSON) and the spans that carry a press's and a
//! request's ids, so those ids are on every log line and never a metric label.

use yijian_wire::Service;

/// The span every log line about one press runs in. `request_id` is filled in once the
/// journal has made the press a request.
pub fn press_span(device_id: &str) -> tracing::Span {
    tracing::info_span!(
        "press",
        device_id,
        press_id = tracing::field::Empty,
        request_id = tracing::field::Empty
    )
}

/// The span every log line about one request runs in (dispatch, escalation).
pub fn request_span(
    request_id: &str,
    device_id: &str,
    press_id: &str,
    service: Service,
) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id,
        device_id,
        press_id,
        service = service.as_str()
    )
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The default log filter. rumqttd logs every disconnect and refused login at error level from
/// `rumqttd::server::broker`; the gateway counts those itself (`yijian_mqtt_auth_total`), so a
/// reconnect storm does not bury real errors.
pub const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off,rumqttc=warn";

/// Install the tracing subscriber on stderr. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_owned());
    use std::io::IsTerminal;
    init_logging_with(
        format,
        &filter,
        std::io::stderr().is_terminal(),
        std::io::stderr,
    );
}

/// Install the tracing subscriber with this filter and writer (tests capture the output).
///
/// Human lines show the span of the press or request first (`press{device_id=.. press_id=..}:`);
/// JSON lines are one object each, with the event's fields at the top level and the current
/// span's fields (the ids) under `span`.
pub fn init_logging_with<W>(format: LogFormat, filter: &str, ansi: bool, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Human => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = result;
}
