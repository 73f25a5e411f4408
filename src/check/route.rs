//! The route `check` tests: the one the proxy's HTTP client takes to a host (straight, or through
//! the egress proxy named by the setting or by the environment), hop by hop, so that a failure
//! names the hop that failed.

use std::time::{Duration, Instant};

use hyper_util::client::proxy::matcher::Intercept;
pub use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use crate::config::{Egress, mask_userinfo};

/// The proxy rules of [`crate::http_client`], in the form that says where a URL goes.
pub fn matcher(egress: &Egress, env: &dyn Fn(&str) -> Option<String>) -> Matcher {
    match egress {
        // What reqwest reads for its system proxy.
        Egress::FromEnvironment => Matcher::from_system(),
        Egress::Direct => Matcher::builder().build(),
        Egress::Via(url) => {
            let no = env("NO_PROXY").or_else(|| env("no_proxy")).unwrap_or_default();
            Matcher::builder().all(url.as_str().to_owned()).no(no).build()
        }
    }
}

/// The egress proxy a request to `url` goes through, if any.
pub fn proxy_for(matcher: &Matcher, url: &Url) -> Option<Intercept> {
    matcher.intercept(&url.as_str().parse().ok()?)
}

/// Which hop failed, and how.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The egress proxy itself: unresolvable, unreachable, or it refused the tunnel.
    Proxy(String),
    /// The destination: unresolvable or unreachable, directly or as the egress proxy says.
    Target(String),
}

/// Opens the route to `url` as the proxy would: through the egress proxy (and, for https, its
/// `CONNECT` tunnel) or straight to the host. Returns what worked, or which hop failed.
pub async fn open(matcher: &Matcher, url: &Url, timeout: Duration) -> Result<String, Failure> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let Some(proxy) = proxy_for(matcher, url) else {
        return reach(host, port, timeout).await.map(|(detail, _)| detail).map_err(Failure::Target);
    };
    let shown = mask_userinfo(&proxy.uri().to_string());
    let proxy_host = proxy.uri().host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let https_proxy = proxy.uri().scheme_str() == Some("https");
    let proxy_port = proxy.uri().port_u16().unwrap_or(if https_proxy { 443 } else { 80 });
    let (detail, stream) = reach(proxy_host, proxy_port, timeout)
        .await
        .map_err(|e| Failure::Proxy(format!("the egress proxy {shown} cannot be reached: {e}")))?;
    let plain_proxy = proxy.uri().scheme_str() == Some("http");
    if url.scheme() != "https" || !plain_proxy {
        // A plain request through an HTTP proxy opens no tunnel; a SOCKS or HTTPS proxy's
        // handshake is left to the requests that follow.
        return Ok(format!("through the egress proxy {shown}: {detail}"));
    }
    let started = Instant::now();
    let status = tokio::time::timeout(timeout, connect(stream, host, port, proxy.basic_auth()))
        .await
        .map_err(|_| Failure::Proxy(format!("the egress proxy {shown} did not answer CONNECT within {timeout:?}")))?
        .map_err(|e| Failure::Proxy(format!("the egress proxy {shown} dropped the CONNECT request: {e}")))?;
    let took = started.elapsed().as_millis();
    match status.code {
        200..=299 => {
            Ok(format!("through the egress proxy {shown} ({detail}): CONNECT {host}:{port} accepted ({took} ms)"))
        }
        // The proxy tried the host and could not reach it: the hop beyond the proxy failed.
        502..=504 => Err(Failure::Target(format!(
            "the egress proxy {shown} could not reach {host}:{port}: it answered CONNECT with {}",
            status.line
        ))),
        407 => Err(Failure::Proxy(format!(
            "the egress proxy {shown} wants credentials: it answered CONNECT {host}:{port} with {} (put the user \
             and password in the proxy URL, like http://user:password@proxy.corp:3128)",
            status.line
        ))),
        _ => Err(Failure::Proxy(format!(
            "the egress proxy {shown} refused CONNECT {host}:{port}: it answered {} (is the host allowed by the \
             proxy?)",
            status.line
        ))),
    }
}

struct Status {
    code: u16,
    /// `HTTP 403 Forbidden`: printable characters of the status line only.
    line: String,
}

/// Sends `CONNECT host:port` on `stream` and reads the proxy's status line.
async fn connect(
    mut stream: tokio::net::TcpStream,
    host: &str,
    port: u16,
    auth: Option<&http::HeaderValue>,
) -> std::io::Result<Status> {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = auth.and_then(|a| a.to_str().ok()) {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without an answer"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line: String = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    let mut parts = line.splitn(3, ' ');
    let code = match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code,
        _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer")),
    };
    let reason = parts.next().unwrap_or_default();
    Ok(Status { code, line: format!("HTTP {code} {reason}").trim_end().to_owned() })
}

/// Resolves `host` and opens a TCP connection to it, timing both.
pub async fn reach(host: &str, port: u16, timeout: Duration) -> Result<(String, tokio::net::TcpStream), String> {
    let started = Instant::now();
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("{host} does not resolve within {}", humantime::format_duration(timeout)))?;
    let addresses: Vec<_> = lookup.map_err(|e| format!("{host} does not resolve: {e}"))?.collect();
    let dns = started.elapsed();
    let first = *addresses.first().ok_or_else(|| format!("{host} resolves to no address"))?;
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(stream)) => Ok((
            format!(
                "{host} resolves ({} address{}, {} ms), TCP connect to {first} {} ms",
                addresses.len(),
                if addresses.len() == 1 { "" } else { "es" },
                dns.as_millis(),
                started.elapsed().as_millis()
            ),
            stream,
        )),
        Ok(Err(e)) => Err(format!("{host} resolves, but {first} refuses or drops the connection: {e}")),
        Err(_) => {
            Err(format!("{host} resolves, but {first} does not answer within {}", humantime::format_duration(timeout)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn the_setting_wins_and_no_proxy_is_honoured_as_the_client_does() {
        let via = Egress::Via(url("http://bob:pa55@proxy.corp:3128"));
        let env = |name: &str| (name == "NO_PROXY").then(|| "internal.corp,10.0.0.0/8".to_owned());
        let m = matcher(&via, &env);
        let hop = proxy_for(&m, &url("https://as1.awmdm.com/api")).expect("through the proxy");
        assert_eq!(hop.uri().host(), Some("proxy.corp"));
        assert!(hop.basic_auth().is_some(), "the URL's user and password go along");
        assert!(proxy_for(&m, &url("https://uem.internal.corp/")).is_none());
        assert!(proxy_for(&m, &url("https://10.1.2.3/")).is_none());
        assert!(proxy_for(&matcher(&Egress::Direct, &env), &url("https://as1.awmdm.com")).is_none());
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_fails_the_target_hop() {
        let m = matcher(&Egress::Direct, &|_| None);
        let failure = open(&m, &url("https://uem-proxy-check.invalid/"), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(&failure, Failure::Target(e) if e.contains("does not resolve")), "{failure:?}");
    }
}
