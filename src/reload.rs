//! Reloading the configuration without a restart: on SIGHUP, and when the configuration file's
//! content changes (checked every second).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;

/// How often the configuration file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs until aborted.
pub async fn watch(app: Arc<App>) {
    let (file, mut seen) = {
        let config = app.config.load();
        (config.config_file.clone(), config.file_fingerprint)
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                if file.is_none() {
                    tracing::warn!("SIGHUP: there is no configuration file to reload (settings come from the environment)");
                    continue;
                }
                app.reload("SIGHUP").await;
                seen = file.as_deref().and_then(fingerprint);
            }
            () = tokio::time::sleep(POLL), if file.is_some() => {
                let now = file.as_deref().and_then(fingerprint);
                if now.is_some() && now != seen {
                    seen = now;
                    app.reload("file changed").await;
                }
            }
        }
    }
}

/// A hash of the file's content; `None` while it cannot be read (mid-write, say).
fn fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| crate::config::fingerprint(&bytes))
}
