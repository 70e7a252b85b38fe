//! Log set-up: human-readable by default, one JSON object per line with
//! `--log-format json`. Filtered by `RUST_LOG` (default `info`). Logs go
//! to stderr, so a command's own output (the demo's report) stays clean.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests, `up` starting
/// several services) are no-ops.
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// Like [`init_logging`] with another default level (when `RUST_LOG` is unset).
pub fn init_logging_at(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal, never in files or pipes.
    let ansi = std::io::stderr().is_terminal();
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already installed: keep the first.
    let _ = result;
}
