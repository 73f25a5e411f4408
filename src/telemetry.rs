//! Logging set-up: `RUST_LOG` filters (default `info`), text or JSON lines on standard error.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::record::line::{self, AccessLines};

/// Installs the global subscriber. Standard output stays free for command output. Access lines
/// are written by [`line::Access::write`] (or, from an event, [`AccessLines`]) in the same shape
/// as every other line.
///
/// No layer has a filter of its own: with one, `tracing::enabled!` (which the access line asks
/// before it is written) leaves that filter's verdict behind for the next event on the thread,
/// and the general formatter then dropped it. The general formatter leaves access events out
/// through its writer instead.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_access = std::io::stderr.with_filter(|meta: &tracing::Metadata<'_>| meta.target() != line::TARGET);
    let general = tracing_subscriber::fmt::layer().with_writer(not_access);
    let json = format == LogFormat::Json;
    let general = match format {
        LogFormat::Json => general.json().flatten_event(true).boxed(),
        LogFormat::Text => general.with_ansi(false).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(general).with(AccessLines { json }).try_init().is_ok() {
        line::install(json);
    }
}
