//! Which web origins may call the API (HTTP and websocket upgrades): the server's own, those of `--cors-origins`, and local dev servers while on loopback; and which `Host` names a request may be addressed to (DNS-rebinding protection).
//!
//! A browser sends `Origin` with every cross-origin request and websocket
//! upgrade (and with same-origin POSTs), and it cannot be forged by a page.
//! Without a check, any page the user happens to open could post mutations to
//! the server or read a session over a websocket. Clients that are not
//! browsers (curl, server-side code, the graphql-ws library in node) send no
//! `Origin`, and a request without one is allowed: the check is against
//! cross-site requests from browsers, not an authentication.
//!
//! The server's own origin is taken from `Host`, and a page can choose that:
//! DNS rebinding points the page's own name (`evil.example`) at 127.0.0.1, so
//! its requests are same-origin and carry `Host: evil.example`. A server on
//! loopback therefore only answers requests addressed to a loopback name
//! (`localhost`, `*.localhost`), an IP literal (which cannot be rebound), or a
//! name of `--allowed-hosts`; with `--allowed-hosts` given, that check applies
//! on every address.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::http::{header, HeaderMap};

/// One entry of `--cors-origins`: `scheme://host[:port]`, or `scheme://host:*` for any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: String,
    host: String,
    /// None for any port (`:*`); otherwise the port as written (empty for the scheme's default).
    port: Option<String>,
}

impl AllowedOrigin {
    fn matches(&self, origin: &Origin<'_>) -> bool {
        self.scheme == origin.scheme
            && self.host == origin.host
            && self.port.as_ref().is_none_or(|p| p == origin.port)
    }
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (head, wildcard) = match lower.strip_suffix(":*") {
            Some(head) => (head, true),
            None => (lower.as_str(), false),
        };
        let origin = Origin::parse(head).ok_or_else(|| {
            format!(
                "'{s}' is not an origin: write scheme://host[:port], e.g. https://app.example.com or http://localhost:5173 (or http://localhost:* for any port)"
            )
        })?;
        if wildcard && !origin.port.is_empty() {
            return Err(format!("'{s}' has a port and ':*'; write one of them"));
        }
        Ok(AllowedOrigin {
            scheme: origin.scheme.to_string(),
            host: origin.host.to_string(),
            port: (!wildcard).then(|| origin.port.to_string()),
        })
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match &self.port {
            None => write!(f, ":*"),
            Some(p) if p.is_empty() => Ok(()),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

/// The origins allowed besides the server's own, and the `Host` names requests may use.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<AllowedOrigin>,
    /// None: any `Host`. Some: loopback names, IP literals and these (lower case, no port).
    hosts: Option<Vec<String>>,
}

impl OriginPolicy {
    /// `--cors-origins`, plus `http://localhost:*` and `http://127.0.0.1:*` (and `http://[::1]:*`)
    /// when the server listens on a loopback address: a frontend's dev server on
    /// the same machine (Vite on :5173, say) then works without configuration,
    /// and nothing beyond this machine can be one of them.
    pub fn new(cors_origins: &[AllowedOrigin], listening: SocketAddr) -> OriginPolicy {
        let mut allowed = cors_origins.to_vec();
        if listening.ip().is_loopback() {
            for host in ["localhost", "127.0.0.1", "[::1]"] {
                allowed.push(AllowedOrigin {
                    scheme: "http".to_string(),
                    host: host.to_string(),
                    port: None,
                });
            }
        }
        OriginPolicy {
            allowed,
            hosts: listening.ip().is_loopback().then(Vec::new),
        }
    }

    /// Also answers requests addressed to `hosts` (`--allowed-hosts`, names
    /// without a port); when there are any, the `Host` check applies on every
    /// address, not only on loopback.
    pub fn with_hosts(mut self, hosts: &[String]) -> OriginPolicy {
        if !hosts.is_empty() {
            let known = self.hosts.get_or_insert_with(Vec::new);
            known.extend(hosts.iter().map(|h| h.trim().to_ascii_lowercase()));
        }
        self
    }

    /// The allowed origins besides the server's own, for the log.
    pub fn allowed(&self) -> &[AllowedOrigin] {
        &self.allowed
    }
}

/// Whether a request's `Host` is one this server answers: any, unless it
/// listens on loopback or has `--allowed-hosts`; then a loopback name, an IP
/// literal or an allowed name. A request without `Host` (HTTP/1.0) is not a
/// browser's and is allowed.
pub fn host_allowed(policy: &OriginPolicy, headers: &HeaderMap) -> bool {
    let Some(known) = &policy.hosts else {
        return true;
    };
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let lower = host.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let url = format!("http://{lower}");
    let Some(authority) = Origin::parse(&url) else {
        return false;
    };
    let name = authority.host;
    let ip_literal = name.starts_with('[') || name.parse::<std::net::Ipv4Addr>().is_ok();
    ip_literal
        || name == "localhost"
        || name.ends_with(".localhost")
        || known.iter().any(|k| k == name)
}

/// Whether a request may proceed: it has no `Origin`, or its `Origin` is the
/// server's own (the `Host` it was sent to) or one the policy allows.
pub fn origin_allowed(policy: &OriginPolicy, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let lower = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let Some(origin) = Origin::parse(&lower) else {
        // `Origin: null` (sandboxed frames, file: pages) and anything malformed.
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|host| origin.same_authority(host)) {
        return true;
    }
    policy.allowed.iter().any(|a| a.matches(&origin))
}

/// A parsed, lower-cased origin: scheme, host and port (empty for the scheme's default).
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: &'a str,
}

impl<'a> Origin<'a> {
    /// `scheme://host[:port]` with nothing after it; `s` must be lower case.
    fn parse(s: &'a str) -> Option<Origin<'a>> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return None;
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (inside, after) = v6.split_once(']')?;
            let host = &rest[..inside.len() + 2];
            match after {
                "" => (host, ""),
                p => (host, p.strip_prefix(':')?),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, port),
                None => (rest, ""),
            }
        };
        let bracketed = host.starts_with('[');
        if host.is_empty()
            || (!bracketed && host.contains(':'))
            || !port.chars().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let port = match (scheme, port) {
            ("http" | "ws", "80") | ("https" | "wss", "443") => "",
            _ => port,
        };
        Some(Origin { scheme, host, port })
    }

    /// Whether this origin names the authority a request was sent to (its `Host`).
    ///
    /// The scheme is not compared: behind a TLS-terminating proxy the page is
    /// `https://` while this server is reached over plain HTTP with the same
    /// `Host`.
    fn same_authority(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let url = format!("{}://{host}", self.scheme);
        let Some(h) = Origin::parse(&url) else {
            return false;
        };
        h.host == self.host && h.port == self.port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    fn policy(origins: &[&str], addr: &str) -> OriginPolicy {
        let origins: Vec<AllowedOrigin> = origins.iter().map(|o| o.parse().unwrap()).collect();
        OriginPolicy::new(&origins, addr.parse().unwrap())
    }

    #[test]
    fn a_request_without_origin_and_a_same_origin_request_are_allowed() {
        let p = policy(&[], "0.0.0.0:8000");
        assert!(origin_allowed(&p, &headers(None, "example.com:8000")));
        assert!(origin_allowed(
            &p,
            &headers(Some("http://example.com:8000"), "example.com:8000")
        ));
        assert!(origin_allowed(
            &p,
            &headers(Some("https://Example.com"), "example.com")
        ));
    }

    #[test]
    fn a_foreign_or_null_origin_is_refused() {
        let p = policy(&[], "0.0.0.0:8000");
        assert!(!origin_allowed(
            &p,
            &headers(Some("https://evil.example"), "example.com:8000")
        ));
        assert!(!origin_allowed(
            &p,
            &headers(Some("null"), "example.com:8000")
        ));
        assert!(!origin_allowed(
            &p,
            &headers(Some("http://example.com:9000"), "example.com:8000")
        ));
        assert!(!origin_allowed(
            &p,
            &headers(Some("http://localhost:5173"), "example.com:8000")
        ));
    }

    #[test]
    fn local_dev_servers_are_allowed_only_while_listening_on_loopback() {
        let p = policy(&[], "127.0.0.1:8000");
        for o in [
            "http://localhost:5173",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "http://localhost",
        ] {
            assert!(
                origin_allowed(&p, &headers(Some(o), "127.0.0.1:8000")),
                "{o}"
            );
        }
        assert!(!origin_allowed(
            &p,
            &headers(Some("https://localhost:5173"), "127.0.0.1:8000")
        ));
        assert!(!origin_allowed(
            &p,
            &headers(Some("http://localhost.evil.example"), "127.0.0.1:8000")
        ));
    }

    #[test]
    fn configured_origins_match_exactly_or_on_any_port() {
        let p = policy(
            &["https://app.example.com", "http://dev.example.com:*"],
            "0.0.0.0:8000",
        );
        let h = |o| headers(Some(o), "api.example.com");
        assert!(origin_allowed(&p, &h("https://app.example.com")));
        assert!(origin_allowed(&p, &h("https://app.example.com:443")));
        assert!(!origin_allowed(&p, &h("https://app.example.com:8443")));
        assert!(!origin_allowed(&p, &h("http://app.example.com")));
        assert!(origin_allowed(&p, &h("http://dev.example.com:5173")));
    }

    #[test]
    fn on_loopback_only_loopback_names_ip_literals_and_allowed_hosts_are_answered() {
        let p = policy(&[], "127.0.0.1:8000").with_hosts(&["Talus.Internal".to_string()]);
        for host in [
            "127.0.0.1:8000",
            "localhost:8000",
            "app.localhost",
            "[::1]:8000",
            "10.0.0.7:8000",
            "talus.internal:8000",
        ] {
            assert!(host_allowed(&p, &headers(None, host)), "{host}");
        }
        // A rebound name: the page's own origin, so the origin check passes.
        let rebound = headers(Some("http://evil.example:8000"), "evil.example:8000");
        assert!(origin_allowed(&p, &rebound));
        assert!(!host_allowed(&p, &rebound));
        for host in [
            "localhost.evil.example",
            "talus.internal.evil.example",
            "",
            "a b",
        ] {
            assert!(!host_allowed(&p, &headers(None, host)), "{host}");
        }
    }

    #[test]
    fn off_loopback_any_host_is_answered_unless_allowed_hosts_are_given() {
        let open = policy(&[], "0.0.0.0:8000");
        assert!(host_allowed(&open, &headers(None, "api.example.com")));
        let strict = open.with_hosts(&["api.example.com".to_string()]);
        assert!(host_allowed(&strict, &headers(None, "api.example.com")));
        assert!(!host_allowed(&strict, &headers(None, "other.example.com")));
    }

    #[test]
    fn malformed_origin_settings_are_refused_with_a_message() {
        for bad in [
            "example.com",
            "https://app.example.com/path",
            "http://a:1:*",
            "http://:80",
            "",
        ] {
            let e = bad.parse::<AllowedOrigin>().unwrap_err();
            assert!(e.contains("origin") || e.contains("port"), "{bad}: {e}");
        }
        assert_eq!(
            "HTTP://LocalHost:*"
                .parse::<AllowedOrigin>()
                .unwrap()
                .to_string(),
            "http://localhost:*"
        );
    }
}
