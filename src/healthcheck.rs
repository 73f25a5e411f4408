//! `uem-proxy healthcheck`: asks a running proxy's `/_proxy/healthz` (or, with `--ready`,
//! `/_proxy/readyz`), for container probes in images that carry no HTTP client of their own.
//! Blocking and dependency-free on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where the proxy listens as seen from inside its own host: an unspecified address (`0.0.0.0`,
/// `[::]`) is reached through loopback.
pub fn local_target(listen: SocketAddr) -> SocketAddr {
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    target
}

/// Alive: the process answers.
pub const LIVE: &str = "/_proxy/healthz";
/// Ready: a token is held that may be injected now.
pub const READY: &str = "/_proxy/readyz";

/// Returns `Ok` when the proxy at `addr` (`host:port` or `unix:/path`) answered 200 on its
/// health endpoint, else a message saying what happened.
pub fn check(addr: &str, timeout: Duration) -> Result<(), String> {
    check_path(addr, LIVE, timeout)
}

/// Like [`check`], asking `path` (one of [`LIVE`], [`READY`]).
pub fn check_path(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    if let Some(socket) = addr.strip_prefix("unix:") {
        let stream =
            std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        return ask(stream, path, addr, "localhost");
    }
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let target = local_target(target);
    let stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("cannot connect to {target}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    ask(stream, path, &target.to_string(), &target.to_string())
}

/// Sends the health request on `stream` and reads the status line.
fn ask(mut stream: impl Read + Write, path: &str, target: &str, host: &str) -> Result<(), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("cannot send to {target}: {e}"))?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("no answer from {target}: {e}"))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status_line = status_line.lines().next().unwrap_or("");
    if status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("{target} answered '{status_line}'"))
    }
}
