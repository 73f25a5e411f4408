//! Who may call, and from where: the checks every request passes before anything else is done
//! with it. Each refusal is JSON, logged, and never forwarded.
//!
//! - The caller's address: loopback and Unix-socket peers always; others only from
//!   `UEM_PROXY_ALLOW_CIDRS`.
//! - The `Host` it asked for: `localhost`, `127.0.0.1`, `[::1]`, the listen address, or a name in
//!   `UEM_PROXY_ALLOWED_HOSTS`. A page that rebinds its own DNS name to this address cannot pass.
//!   An HTTP/1.1 request without a `Host`, or with an empty one, is refused with 400 (RFC 9112
//!   §3.2). The health endpoints skip these checks and the address check, for probes. A `Host`,
//!   or an absolute-form target's authority, with user information (`a@b`) or characters no host
//!   name holds is refused with 400 on every endpoint: URLs in `Location` and bodies are built
//!   from it.
//! - Web pages: an `Origin` not in `UEM_PROXY_ALLOWED_ORIGINS`, or `Sec-Fetch-Site: cross-site`
//!   without one, is refused; CORS preflights are answered here.
//! - `TRACE` (it would echo the injected token), over-long targets, and bodies declared larger
//!   than the limit.
//!
//! Then what they may do: the [`policy`] decides on the request's [`target`].

pub mod policy;
pub mod target;

use std::fmt;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, Version};
use ipnet::IpNet;

use crate::error::ProxyError;
use crate::listen::{Listen, Peer};
use policy::{Decision, Policy};
use target::Target;

/// Who may call and what a request may look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Networks whose callers are served besides loopback (and Unix-socket peers).
    pub allow_cidrs: Vec<IpNet>,
    /// Host names callers may use besides localhost and the loopback addresses.
    pub allowed_hosts: Vec<String>,
    /// Web origins whose pages may call (CORS); any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_url_bytes: usize,
    /// `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// The longest a caller may pause while sending a request body or while receiving a
    /// response body; then the connection is closed and what it held is freed.
    pub body_idle_timeout: Duration,
    /// The most caller connections at once; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
}

/// The checks, built once from the configuration.
pub struct Checks {
    allow_cidrs: Vec<IpNet>,
    /// Lower-case host names and addresses (without port or brackets); `*.x` entries match
    /// subdomains of `x`.
    hosts: Vec<String>,
    origins: Vec<String>,
    max_url_bytes: usize,
    max_body_bytes: Option<u64>,
}

impl Checks {
    pub fn new(inbound: &Inbound, listen: &Listen) -> Checks {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
        if let Listen::Tcp(addr) = listen
            && !addr.ip().is_unspecified()
        {
            hosts.push(addr.ip().to_string());
        }
        hosts.extend(inbound.allowed_hosts.iter().cloned());
        Checks {
            allow_cidrs: inbound.allow_cidrs.clone(),
            hosts,
            origins: inbound.allowed_origins.clone(),
            max_url_bytes: inbound.max_url_bytes,
            max_body_bytes: inbound.max_body_bytes,
        }
    }

    /// The same, letting callers also name these listeners' addresses (tenants' own) in `Host`.
    pub fn with_listeners(mut self, addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> Checks {
        let addrs = addrs.into_iter().filter(|addr| !addr.ip().is_unspecified());
        self.hosts.extend(addrs.map(|addr| addr.ip().to_string()));
        self
    }

    #[cfg(test)]
    fn peer_allowed(&self, peer: Option<&Peer>) -> bool {
        peer.and_then(|peer| self.caller(peer)).is_some()
    }

    /// Why a caller is let in, for the audit trail. `None`: it is not let in.
    pub fn caller(&self, peer: &Peer) -> Option<Caller> {
        match peer {
            Peer::Tcp(addr) => {
                let ip = addr.ip().to_canonical();
                if ip.is_loopback() {
                    return Some(Caller::Loopback);
                }
                self.allow_cidrs.iter().find(|net| net.contains(&ip)).map(|net| Caller::Listed(*net))
            }
            Peer::Unix(Some(uid)) => Some(Caller::Uid(*uid)),
            Peer::Unix(None) => Some(Caller::Unix),
        }
    }

    /// The networks whose callers are let in besides loopback and Unix-socket peers, for the log
    /// line of a refused caller (never the caller's answer: it must not learn them).
    pub fn allowed_networks(&self) -> String {
        if self.allow_cidrs.is_empty() {
            return "none (loopback only)".to_owned();
        }
        self.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).as_bytes();
        self.hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
            // A subdomain: at least one character and a dot before the parent.
            Some(parent) => {
                let parent = parent.as_bytes();
                name.len() >= parent.len() + 2
                    && name[name.len() - parent.len()..].eq_ignore_ascii_case(parent)
                    && name[name.len() - parent.len() - 1] == b'.'
            }
            None => allowed.as_bytes().eq_ignore_ascii_case(name),
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }

    /// The first refusal that applies to a request from `caller` (`None`: a peer not let in),
    /// if any.
    pub fn refusal(&self, req: &Parts, caller: Option<&Caller>) -> Option<ProxyError> {
        // Probes (a kubelet, a load balancer) reach the health endpoints from anywhere and by any
        // name; those endpoints forward nothing and tell nothing but "alive" and "has a token".
        let health = matches!(req.uri.path(), "/_proxy/healthz" | "/_proxy/readyz");
        if !health && caller.is_none() {
            return Some(ProxyError::CallerNotAllowed);
        }
        // URLs in `Location` and in bodies are built from the Host: it must be a plain host. One
        // with bytes outside ASCII is no host name, and never reads as an empty one.
        let asked = Asked::of(&req.headers);
        let host = match asked.host.map(|h| h.to_str()) {
            None => "",
            Some(Ok(host)) => host,
            Some(Err(_)) => return Some(ProxyError::BadHost("(not ASCII)".to_owned())),
        };
        if !host_well_formed(host) {
            return Some(ProxyError::BadHost(host.to_owned()));
        }
        // An absolute-form target (`GET http://name/…`) names the host the request is for, and
        // takes precedence over `Host` (RFC 9112 §3.2.2): it must be allowed too.
        let authority = req.uri.authority().map(|a| a.as_str());
        if let Some(authority) = authority
            && !host_well_formed(authority)
        {
            return Some(ProxyError::BadHost(authority.to_owned()));
        }
        if !health && host.is_empty() && req.version >= Version::HTTP_11 {
            return Some(ProxyError::MissingHost);
        }
        // An HTTP/1.0 request may name its host in the target alone.
        let named_in_target = host.is_empty() && authority.is_some();
        if !health && !named_in_target && !self.host_allowed(host) {
            return Some(ProxyError::HostNotAllowed(host.to_owned()));
        }
        // `CONNECT host:port` names a tunnel's end, not this host: it is refused as a target later.
        if let Some(authority) = authority
            && !health
            && req.method != Method::CONNECT
            && !self.host_allowed(authority)
        {
            return Some(ProxyError::HostNotAllowed(authority.to_owned()));
        }
        let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > self.max_url_bytes {
            return Some(ProxyError::UriTooLong(self.max_url_bytes));
        }
        if req.method == Method::TRACE {
            return Some(ProxyError::MethodNotAllowed(Method::TRACE));
        }
        match asked.origin.map(|o| o.to_str().unwrap_or("?")) {
            Some(origin) if !self.origin_allowed(origin) => {
                return Some(ProxyError::OriginNotAllowed(origin.to_owned()));
            }
            Some(_) => {}
            None if asked.sec_fetch_site.is_some_and(is_cross_site) => return Some(ProxyError::CrossSite),
            None => {}
        }
        if let (Some(limit), Some(length)) = (self.max_body_bytes, asked.content_length.and_then(content_length))
            && length > limit
        {
            return Some(ProxyError::BodyTooLarge(limit));
        }
        None
    }
}

/// A `Host` (or a target's authority) as RFC 9110 §7.2 has it, `host [":" port]`: a name of
/// letters, digits, `-`, `.` and `_`, or a bracketed IPv6 address. No user information (`a@b`),
/// no percent-encoding, no port without a name (`:80`). An empty one is well-formed (and
/// matches no allowed host).
fn host_well_formed(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) => (inside.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => (false, ""),
        },
        None => {
            let (name, port) = host.find(':').map_or((host, ""), |i| host.split_at(i));
            let named = !name.is_empty() || port.is_empty();
            (named && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')), port)
        }
    };
    // A port is digits naming one of the 65 536 (RFC 3986 allows it empty).
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()));
    name_ok && port_ok
}

/// The host part of a `Host` header: no port, no IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// A browser's word on where a request comes from (Fetch Metadata).
static SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// The request headers the gate reads, each the first of its name (as `HeaderMap::get` gives
/// it), found in one pass over the headers instead of a lookup each.
#[derive(Default, Debug, PartialEq)]
struct Asked<'a> {
    host: Option<&'a HeaderValue>,
    origin: Option<&'a HeaderValue>,
    sec_fetch_site: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
}

impl<'a> Asked<'a> {
    fn of(headers: &'a HeaderMap) -> Asked<'a> {
        let mut asked = Asked::default();
        for (name, value) in headers {
            let slot = if name == header::HOST {
                &mut asked.host
            } else if name == header::ORIGIN {
                &mut asked.origin
            } else if name == header::CONTENT_LENGTH {
                &mut asked.content_length
            } else if name == SEC_FETCH_SITE {
                &mut asked.sec_fetch_site
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        asked
    }
}

fn is_cross_site(value: &HeaderValue) -> bool {
    value.as_bytes().eq_ignore_ascii_case(b"cross-site")
}

fn content_length(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse().ok()
}

/// Why a caller is let in, for the audit trail.
#[derive(Clone, Debug)]
pub enum Caller {
    Loopback,
    /// A Unix-socket peer and its user id.
    Uid(u32),
    /// A Unix-socket peer whose user id the system did not tell.
    Unix,
    /// The allow-list entry the peer's address matched.
    Listed(IpNet),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Loopback => f.write_str("loopback"),
            Caller::Uid(uid) => write!(f, "uid={uid}"),
            Caller::Unix => f.write_str("unix"),
            Caller::Listed(net) => net.fmt(f),
        }
    }
}

/// The answer to a CORS preflight from an allowed origin, which is never forwarded; `None` when
/// the request is not one.
pub fn preflight(req: &Parts) -> Option<Response> {
    let origin = req.headers.get(header::ORIGIN)?;
    (req.method == Method::OPTIONS && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
        .then(|| preflight_answer(origin, &req.headers))
}

/// Lets the page at `origin` (already allowed) read the answer.
pub fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("x-request-id"));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// What the policy says of a request to `target`: first the methods it asks the server behind to
/// take it as (override headers and query parameters), then its own method.
pub fn decide(policy: &Policy, req: &Parts, target: &Target) -> Result<(), ProxyError> {
    if policy.is_open() {
        return Ok(());
    }
    let decision = match policy.decide_overrides(&req.headers, req.uri.query(), &target.path) {
        Decision::Allow => policy.decide_mapped(&req.method, &target.path, target.required),
        deny => deny,
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny { permission, reason } => {
            Err(ProxyError::PolicyDenied { permission: permission.map(|p| p.name), reason })
        }
    }
}

/// Answers a CORS preflight from an allowed origin without forwarding it.
fn preflight_answer(origin: &HeaderValue, request: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(hosts: &[&str], cidrs: &[&str], listen: &str) -> Checks {
        let inbound = Inbound {
            allow_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allowed_origins: vec!["http://localhost:3000".into()],
            header_timeout: std::time::Duration::from_secs(30),
            max_header_bytes: 65536,
            max_url_bytes: 8192,
            max_body_bytes: None,
            body_idle_timeout: std::time::Duration::from_secs(30),
            max_connections: None,
        };
        Checks::new(&inbound, &Listen::Tcp(listen.parse().unwrap()))
    }

    #[test]
    fn hosts_are_matched_without_port_and_case() {
        let c = checks(&["uem-proxy.corp.example", "*.svc.cluster.local"], &[], "10.1.2.3:8080");
        for ok in
            ["localhost:8080", "LOCALHOST", "127.0.0.1:1", "[::1]:8080", "10.1.2.3:8080", "uem-proxy.corp.example"]
        {
            assert!(c.host_allowed(ok), "{ok}");
        }
        assert!(c.host_allowed("proxy.ns.svc.cluster.local:8080"));
        assert!(c.host_allowed("PROXY.ns.SVC.cluster.local"));
        assert!(!c.host_allowed("evilsvc.cluster.local"), "a suffix without its dot is no subdomain");
        assert!(!c.host_allowed(".svc.cluster.local"));
        for bad in ["evil.example", "localhost.evil.example", "svc.cluster.local", "127.0.0.2", "", "10.1.2.4"] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_with_user_information_or_odd_characters_are_malformed() {
        for ok in [
            "",
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8080",
            "a-b.c_d:",
            "[::ffff:1.2.3.4]",
            "localhost:65535",
            "localhost:0080",
        ] {
            assert!(host_well_formed(ok), "{ok}");
        }
        for bad in [
            "[::1]@evil.example",
            "user@localhost:8080",
            "user:pw@localhost",
            "localhost%40evil.example",
            "%5B::1%5D",
            "localhost:80:80",
            "localhost:8o",
            "127.0.0.1:99999",
            "[::1]:65536",
            "localhost:+80",
            "[::1]:8080@evil",
            ":80",
            ":",
            "[::1",
            "[evil.example]",
            "local host",
            "localhost/x",
            "localhost\\x",
            "caf\u{e9}.example",
        ] {
            assert!(!host_well_formed(bad), "{bad}");
        }
    }

    fn parts(method: &str, target: &str, version: Version, host: Option<&str>) -> Parts {
        let mut request = http::Request::builder().method(method).uri(target).version(version);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_http_1_1_request_must_name_a_host_and_an_http_1_0_one_a_known_one() {
        let c = checks(&[], &[], "127.0.0.1:8080");
        let refusal =
            |path: &str, version, host| c.refusal(&parts("GET", path, version, host), Some(&Caller::Loopback));
        for host in [None, Some("")] {
            assert!(matches!(refusal("/api/x", Version::HTTP_11, host), Some(ProxyError::MissingHost)), "{host:?}");
            assert!(
                matches!(refusal("/api/x", Version::HTTP_10, host), Some(ProxyError::HostNotAllowed(_))),
                "{host:?}"
            );
            assert!(refusal("/_proxy/healthz", Version::HTTP_11, host).is_none(), "probes may send none");
        }
        assert!(refusal("/api/x", Version::HTTP_10, Some("localhost")).is_none());
        assert!(refusal("/api/x", Version::HTTP_11, Some("localhost:8080")).is_none());
    }

    #[test]
    fn peers_from_loopback_unix_and_listed_networks_only() {
        let c = checks(&[], &["10.20.0.0/16", "192.168.1.7/32"], "0.0.0.0:8080");
        let tcp = |a: &str| Peer::Tcp(a.parse().unwrap());
        assert!(c.peer_allowed(Some(&tcp("127.0.0.1:5000"))));
        assert!(c.peer_allowed(Some(&tcp("[::1]:5000"))));
        assert!(c.peer_allowed(Some(&tcp("10.20.3.4:5000"))));
        assert!(c.peer_allowed(Some(&tcp("[::ffff:10.20.3.4]:5000"))), "IPv4-mapped addresses count as IPv4");
        assert!(c.peer_allowed(Some(&Peer::Unix(Some(1000)))));
        assert!(!c.peer_allowed(Some(&tcp("10.21.0.1:5000"))));
        assert!(!c.peer_allowed(Some(&tcp("192.168.1.8:5000"))));
        assert!(!c.peer_allowed(None));
    }

    proptest::proptest! {
        /// The one pass finds what a lookup by each name finds: the first value of the name,
        /// whatever the other headers, their order, their repeats and their letter case.
        #[test]
        fn the_headers_asked_in_one_pass_are_those_looked_up(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just("Host"), proptest::strategy::Just("host"),
                        proptest::strategy::Just("Origin"), proptest::strategy::Just("ORIGIN"),
                        proptest::strategy::Just("Sec-Fetch-Site"), proptest::strategy::Just("sec-fetch-sitE"),
                        proptest::strategy::Just("Content-Length"), proptest::strategy::Just("content-length"),
                        proptest::strategy::Just("Accept"), proptest::strategy::Just("x-host"),
                        proptest::strategy::Just("sec-fetch-mode"), proptest::strategy::Just("origins"),
                    ],
                    "[ -~]{0,12}",
                ),
                0..12,
            ),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &fields {
                headers.append(header::HeaderName::try_from(*name).unwrap(), HeaderValue::try_from(value.as_str()).unwrap());
            }
            let looked_up = Asked {
                host: headers.get(header::HOST),
                origin: headers.get(header::ORIGIN),
                sec_fetch_site: headers.get(&SEC_FETCH_SITE),
                content_length: headers.get(header::CONTENT_LENGTH),
            };
            // The same values, not only equal ones.
            let same = |a: Option<&HeaderValue>, b: Option<&HeaderValue>| match (a, b) {
                (Some(a), Some(b)) => std::ptr::eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let asked = Asked::of(&headers);
            proptest::prop_assert!(same(asked.host, looked_up.host), "{:?} {:?}", asked, looked_up);
            proptest::prop_assert!(same(asked.origin, looked_up.origin));
            proptest::prop_assert!(same(asked.sec_fetch_site, looked_up.sec_fetch_site));
            proptest::prop_assert!(same(asked.content_length, looked_up.content_length));
        }
    }
}
