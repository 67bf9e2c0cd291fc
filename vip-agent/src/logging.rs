//! The daemon's logs: where they go and in what form.
//!
//! * `--log-format json`: one JSON object a line on stdout (tracing-subscriber's json format), for
//!   log shippers; under systemd too.
//! * text (the default), under systemd (`$JOURNAL_STREAM` names this process's stderr): the native
//!   journal protocol through tracing-journald, so each level is a journald priority
//!   (`journalctl -p warning -u vip-agent` shows warnings and errors) and fields such as `vip=` stay
//!   journal fields. tracing-journald rather than `<N>` prefixes on stderr: it is the maintained
//!   crate for this and keeps the fields, which a prefixed line would flatten into text.
//! * text elsewhere: human-readable lines on stdout, coloured only on a terminal.
//!
//! The filter is `$VIP_AGENT_LOG` (tracing syntax), else `info` (`debug` with `verbose`).

use std::{io, os::fd::AsFd as _};

use clap::ValueEnum;
use tracing_subscriber::{
    EnvFilter, Layer, fmt::MakeWriter, layer::SubscriberExt as _, registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// The variable systemd sets when stdout/stderr is a journal stream: `<device>:<inode>`.
pub const JOURNAL_STREAM: &str = "JOURNAL_STREAM";

/// The variable that sets the log filter.
pub const FILTER_VAR: &str = "VIP_AGENT_LOG";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people; journald priorities (native protocol) under systemd.
    #[default]
    Text,
    /// One JSON object a line on stdout.
    Json,
}

/// Where [`init`] sent the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Text lines on stdout.
    Text,
    /// JSON lines on stdout.
    Json,
    /// The journal's native protocol.
    Journald,
}

/// Set up the global subscriber. Under systemd, a journal socket that cannot be opened falls back
/// to text lines (which journald still stores, at one priority) and says so.
pub fn init(verbose: bool, format: LogFormat) -> Sink {
    let default = if verbose { "debug" } else { "info" };
    let filter = || EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter());
    match format {
        LogFormat::Json => {
            registry.with(json_layer(io::stdout)).init();
            return Sink::Json;
        }
        LogFormat::Text => {}
    }
    let journal_error = if stderr_is_journal_stream() {
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(layer.with_syslog_identifier(crate::BIN_NAME.to_owned()))
                    .init();
                return Sink::Journald;
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                // Plain text in files and the journal; colours only on a terminal.
                .with_ansi(io::IsTerminal::is_terminal(&io::stdout())),
        )
        .init();
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "cannot open the journal socket; logging text to stdout");
    }
    Sink::Text
}

/// The `--log-format json` layer, writing to `writer`: level, timestamp and the event's fields
/// (`message` among them) in one object a line.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_target(false)
        .with_writer(writer)
}

/// Whether `$JOURNAL_STREAM` names this process's stderr (systemd's test, `sd_journal_stream_fd`
/// documentation): a child that inherited the variable with another stderr must not use it.
#[must_use]
pub fn stderr_is_journal_stream() -> bool {
    let Some(value) = std::env::var_os(JOURNAL_STREAM) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(io::stderr().as_fd()) else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// `<device>:<inode>` (decimal, as systemd writes it) equals `dev`, `ino`.
fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// An error and its causes, `operation: cause: cause`, for log lines (which print `Display` only).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches("8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("812345", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("a:b", 8, 12345));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_level_message_and_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(vip = "10.0.0.30", "fenced: lease expired");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("UTF-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["fields"]["message"], "fenced: lease expired", "{line}");
        assert_eq!(line["fields"]["vip"], "10.0.0.30", "{line}");
    }
}
