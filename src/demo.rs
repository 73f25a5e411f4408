//! `uem-proxy demo`: a sandbox tenant and the proxy in front of it, in one process, with commands
//! that work as printed. The quickest way to see what the proxy does.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Config;
use crate::sandbox::{self, Options};

/// The commands the demo prints; each answers JSON through the proxy.
pub fn commands(proxy: &str) -> [String; 3] {
    [
        format!("curl -sS {proxy}/api/system/info"),
        format!("curl -sS '{proxy}/api/mdm/devices/search?platform=Android&pagesize=2'"),
        format!("curl -sS '{proxy}/api/system/users/search?lastname=Tanaka&pagesize=3'"),
    ]
}

/// Runs the sandbox on `sandbox_listener` and the proxy on `proxy_listener` until `shutdown`,
/// after writing where they are and what to try to `out`.
pub async fn run(
    proxy_listener: TcpListener,
    sandbox_listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
    out: &mut (dyn Write + Send),
) -> io::Result<()> {
    let sandbox_addr = sandbox_listener.local_addr()?;
    let proxy_addr = proxy_listener.local_addr()?;
    let env: HashMap<&str, String> = [
        ("UEM_API_URL", format!("http://{sandbox_addr}")),
        ("UEM_TOKEN_URL", format!("http://{sandbox_addr}/connect/token")),
        ("UEM_CLIENT_ID", options.client_id.clone()),
        ("UEM_CLIENT_SECRET", options.client_secret.expose_secret().to_owned()),
        ("UEM_PROXY_LISTEN", proxy_addr.to_string()),
    ]
    .into();
    let config = Config::load(None, &|name| env.get(name).cloned()).map_err(io::Error::other)?;

    let proxy = format!("http://{proxy_addr}");
    writeln!(out, "uem-proxy demo")?;
    writeln!(
        out,
        "  sandbox tenant  http://{sandbox_addr}  (token service at /connect/token, tokens live {}, role {:?})",
        humantime::format_duration(options.token_lifetime),
        options.role
    )?;
    writeln!(out, "  proxy           {proxy}  (callers send no credentials)")?;
    writeln!(out, "  inspector       {proxy}/_proxy/ui  (every call, as it finishes)")?;
    writeln!(out)?;
    writeln!(out, "Try:")?;
    for command in commands(&proxy) {
        writeln!(out, "  {command}")?;
    }
    writeln!(out)?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()?;

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let sandbox = sandbox::serve(sandbox_listener, options, wait(stopped.clone()));
    let proxy = crate::run(config, proxy_listener, wait(stopped));
    let (sandbox, proxy) = tokio::join!(sandbox, proxy);
    sandbox.and(proxy)
}
