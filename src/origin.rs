//! Which browser origins may use the API: one policy for HTTP requests and websocket upgrades.
//!
//! Browsers send `Origin` with cross-site requests and with every websocket
//! handshake, and the server cannot tell a page the user trusts from any other
//! page the user happens to open. So a request that carries an `Origin` is
//! served only when that origin is the server's own (the `Host` it was asked
//! for), one named by `--cors-origins`, or, while the server listens on
//! loopback, a local development server (`http://localhost:*`,
//! `http://127.0.0.1:*`). Requests without `Origin` come from programs, not
//! from pages, and are served.

use axum::http::{header, HeaderMap};

/// The origins a server accepts besides its own.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Normalised `scheme://host[:port]` origins from `--cors-origins`.
    allowed: Vec<String>,
    /// Whether the server listens on a loopback address (local development).
    loopback: bool,
}

impl OriginPolicy {
    /// A policy from the configured origins; each must be `http(s)://host[:port]`.
    pub fn new(allowed: &[String], loopback: bool) -> Result<OriginPolicy, String> {
        let allowed = allowed
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OriginPolicy { allowed, loopback })
    }

    /// The origins named by configuration (normalised), e.g. for CORS headers.
    pub fn configured(&self) -> &[String] {
        &self.allowed
    }

    /// Whether the server listens on loopback (so local development origins are allowed).
    pub fn loopback(&self) -> bool {
        self.loopback
    }
}

/// Parses one configured origin into its normalised form (lower case, no trailing slash).
pub fn parse_origin(origin: &str) -> Result<String, String> {
    let normalised = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let bad = || {
        format!("'{origin}' is not an origin like https://app.example.com or http://localhost:5173")
    };
    let rest = normalised
        .strip_prefix("http://")
        .or_else(|| normalised.strip_prefix("https://"))
        .ok_or_else(bad)?;
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@', '*'])
        || rest.contains(char::is_whitespace)
    {
        return Err(bad());
    }
    if let Some((_, port)) = split_port(rest) {
        if port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    Ok(normalised)
}

/// `host:port` into its parts; `None` when there is no port (IPv6 literals keep their brackets).
fn split_port(authority: &str) -> Option<(&str, &str)> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        // A colon inside an IPv6 literal without a port.
        return None;
    }
    Some((host, port))
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// A loopback `host[:port]` (any port).
fn is_loopback_authority(authority: &str) -> bool {
    match split_port(authority) {
        Some((host, port)) => is_loopback_host(host) && port.parse::<u16>().is_ok(),
        None => is_loopback_host(authority),
    }
}

/// Whether a request with these headers may be served under `policy`.
///
/// Same-origin means `Origin` names the `Host` the request was sent to. While
/// the server listens on loopback, that `Host` must itself be a loopback name:
/// otherwise a page on a domain that resolves to 127.0.0.1 (DNS rebinding)
/// would count as same-origin.
pub fn origin_allowed(policy: &OriginPolicy, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().to_ascii_lowercase();
    if policy.allowed.contains(&origin) {
        return true;
    }
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        // `null` (sandboxed frames, file: pages) and anything else.
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    if host.as_deref() == Some(authority) && (!policy.loopback || is_loopback_authority(authority))
    {
        return true;
    }
    policy.loopback && origin.starts_with("http://") && is_loopback_authority(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins_are_allowed_by_the_policy_and_nothing_else() {
        let public = OriginPolicy::new(&["https://App.example.com/".into()], false).unwrap();
        let local = OriginPolicy::new(&[], true).unwrap();
        let cases = [
            (&public, None, "api.example.com", true),
            (
                &public,
                Some("https://api.example.com"),
                "api.example.com",
                true,
            ),
            (
                &public,
                Some("https://app.example.com"),
                "api.example.com",
                true,
            ),
            (
                &public,
                Some("https://evil.example"),
                "api.example.com",
                false,
            ),
            (
                &public,
                Some("http://localhost:5173"),
                "api.example.com",
                false,
            ),
            (&public, Some("null"), "api.example.com", false),
            (
                &local,
                Some("http://localhost:5173"),
                "127.0.0.1:8000",
                true,
            ),
            (
                &local,
                Some("http://127.0.0.1:3000"),
                "127.0.0.1:8000",
                true,
            ),
            (
                &local,
                Some("http://127.0.0.1:8000"),
                "127.0.0.1:8000",
                true,
            ),
            (
                &local,
                Some("https://evil.example"),
                "127.0.0.1:8000",
                false,
            ),
            (
                &local,
                Some("http://localhost.evil.example:80"),
                "127.0.0.1:8000",
                false,
            ),
            // DNS rebinding: a foreign name that resolves to loopback is not same-origin.
            (
                &local,
                Some("http://rebind.example:8000"),
                "rebind.example:8000",
                false,
            ),
        ];
        for (policy, origin, host, allowed) in cases {
            assert_eq!(
                origin_allowed(policy, &headers(origin, host)),
                allowed,
                "{origin:?} to {host}"
            );
        }
    }

    #[test]
    fn configured_origins_must_be_origins() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://x/path",
            "https://*.x",
            "http://x:99999",
            "https://",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_origin("HTTP://Localhost:5173/").unwrap(),
            "http://localhost:5173"
        );
    }
}
