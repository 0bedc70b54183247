//! Where log lines go and how they look.
//!
//! - On a terminal: tracing's usual lines, with time and colour.
//! - Under journald (`JOURNAL_STREAM` set, or stderr not a terminal): no time (the
//!   journal stamps each line itself), no colour, and the level as an sd-daemon(3)
//!   priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace),
//!   so that `journalctl -p warning` filters them.
//! - `--log-format json`: one JSON object a line, for log shippers.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    // `journald` when stderr is not a terminal or JOURNAL_STREAM is set, else `text`.
    // (Plain comments: doc comments would turn `--help` into its long layout.)
    #[default]
    Auto,
    // Timestamped lines, coloured on a terminal.
    Text,
    // `<priority>` prefix, no timestamp, no colour (sd-daemon style).
    Journald,
    // One JSON object per line.
    Json,
}

impl LogFormat {
    /// What `Auto` stands for here.
    pub fn resolve(self) -> LogFormat {
        if self != LogFormat::Auto {
            return self;
        }
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if std::env::var_os("JOURNAL_STREAM").is_some() || !terminal {
            LogFormat::Journald
        } else {
            LogFormat::Text
        }
    }
}

/// The syslog priority of a level, as sd-daemon(3) prefixes take it.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<N>` + spans + message and fields: what the journal stores, one line per event.
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// How the daemon's other stderr text (the project's warnings at start) is written:
/// 0 as is, 1 with journal priorities, 2 as JSON lines.
static STDERR_STYLE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// A block of text for stderr (a diagnostic with its source lines), as it is to be
/// written: under the journal each line gets the priority, so that none lands as an
/// info line of its own; in JSON it is one object, so that shippers parse every line.
pub fn block(text: &str, error: bool) -> String {
    match STDERR_STYLE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => {
            let p = if error { 3 } else { 4 };
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("<{p}>{l}\n"))
                .collect()
        }
        2 => format!(
            "{}\n",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": if error { "ERROR" } else { "WARN" },
                "message": text,
            })
        ),
        _ => format!("{text}\n\n"),
    }
}

/// Installs the global subscriber. `daemon`: `run` logs at info by default, the other
/// commands at warn. FOLLOWUP_LOG overrides the filter (`debug`, `followup=trace`, …).
pub fn init(daemon: bool, format: LogFormat) {
    let default = if daemon { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("FOLLOWUP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let format = format.resolve();
    let style = match format {
        LogFormat::Journald if daemon => 1,
        LogFormat::Json => 2,
        _ => 0,
    };
    STDERR_STYLE.store(style, std::sync::atomic::Ordering::Relaxed);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
        LogFormat::Text | LogFormat::Auto => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
