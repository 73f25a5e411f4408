//! `uem-proxy demo`: two sandbox tenants (`prod`, the default, and `uat`) and the proxy in front
//! of them, in one process, with commands that work as printed. The quickest way to see what the
//! proxy does.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Config;
use crate::sandbox::{self, Options};

/// The commands the demo prints; each answers JSON through the proxy. The last one reaches the
/// second tenant.
pub fn commands(proxy: &str) -> [String; 4] {
    [
        format!("curl -sS {proxy}/api/system/info"),
        format!("curl -sS '{proxy}/api/mdm/devices/search?platform=Android&pagesize=2'"),
        format!("curl -sS '{proxy}/api/system/users/search?lastname=Tanaka&pagesize=3'"),
        format!("curl -sS {proxy}/t/uat/api/system/info"),
    ]
}

/// The proxy's configuration for the demo's two sandbox tenants at `sandbox`.
fn configuration(sandbox: &str, tenants: &[Options]) -> String {
    let mut text = String::from("default_tenant = \"prod\"\n");
    for tenant in tenants {
        let name = tenant.name.as_deref().unwrap_or("prod");
        text.push_str(&format!(
            "[tenants.{name}]\napi_url = \"{sandbox}/{name}\"\ntoken_url = \"{sandbox}/{name}/connect/token\"\n\
             client_id = \"{}\"\nclient_secret = \"{}\"\n",
            tenant.client_id,
            tenant.client_secret.expose_secret()
        ));
    }
    text
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
    let tenants = vec![Options { name: Some("prod".to_owned()), ..options.clone() }, options.tenant("uat", 1)];
    let env: HashMap<&str, String> = [("UEM_PROXY_LISTEN", proxy_addr.to_string())].into();
    let text = configuration(&format!("http://{sandbox_addr}"), &tenants);
    let config = Config::load_toml(&text, &|name| env.get(name).cloned()).map_err(io::Error::other)?;

    let proxy = format!("http://{proxy_addr}");
    writeln!(out, "uem-proxy demo")?;
    writeln!(
        out,
        "  sandbox tenants http://{sandbox_addr}/prod and /uat  (tokens live {}, role {:?})",
        humantime::format_duration(options.token_lifetime),
        options.role
    )?;
    writeln!(out, "  proxy           {proxy}  (callers send no credentials)")?;
    writeln!(out, "                  prod is the default tenant; {proxy}/t/uat/… reaches uat")?;
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
    let sandbox = sandbox::serve_tenants(sandbox_listener, tenants, wait(stopped.clone()));
    let proxy = crate::run(config, proxy_listener, wait(stopped));
    let (sandbox, proxy) = tokio::join!(sandbox, proxy);
    sandbox.and(proxy)
}
