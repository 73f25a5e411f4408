//! Logging set-up: `RUST_LOG` filters (default `info`), text or JSON lines on standard error.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::record::line::{self, AccessLines};

/// Installs the global subscriber. Standard output stays free for command output. Access events
/// are written by [`AccessLines`], in the same shape as every other line.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The general lines go out after the access lines the thread holds, in the order they happened.
    let general = tracing_subscriber::fmt::layer().with_writer(line::held::stderr);
    let not_access = filter_fn(|meta| meta.target() != line::TARGET);
    let json = format == LogFormat::Json;
    let general = match format {
        LogFormat::Json => general.json().flatten_event(true).with_filter(not_access).boxed(),
        LogFormat::Text => general.with_ansi(false).with_filter(not_access).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(general).with(AccessLines { json }).try_init().is_ok() {
        line::install(json);
    }
}
