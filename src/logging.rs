//! Where the daemon's logs go and how they look. Under journald (systemd
//! sets `JOURNAL_STREAM` on a service's stderr) each line carries the syslog
//! priority the journal understands (`<3>` error … `<7>` debug) and no
//! timestamp of its own; at a terminal or in a file, plain text with times;
//! `json` for log shippers. The level comes from `VIRT_PERSONA_LOG`, else
//! `RUST_LOG`, else the config's `log_level`, else `info`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `journal` under systemd's journal, `text` otherwise.
    #[default]
    Auto,
    Text,
    Json,
    Journal,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            "journal" => Ok(LogFormat::Journal),
            other => Err(format!(
                "'{other}' is not a log format: expected auto, text, json or journal"
            )),
        }
    }
}

/// The `<N>` syslog priority of a level, as the journal reads it from a line's start.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each line with its syslog priority.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The filter: `VIRT_PERSONA_LOG`, `RUST_LOG`, the configured level, `info`.
fn filter(configured: Option<&str>) -> Result<EnvFilter, String> {
    for var in ["VIRT_PERSONA_LOG", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return EnvFilter::try_new(&v).map_err(|e| format!("{var}={v}: {e}"));
            }
        }
    }
    let level = configured.unwrap_or("info");
    EnvFilter::try_new(level).map_err(|e| format!("log_level '{level}': {e}"))
}

/// Installs the global subscriber (once, at start).
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = filter(level)?;
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Journal => builder
            .with_ansi(false)
            .event_format(Priority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text | LogFormat::Auto => builder
            // colour only for a person at a terminal, not for a log file
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    r.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_priorities() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("auto, text, json or journal"));
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
