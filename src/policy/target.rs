//! Request targets: the scheme, `host:port`, and how they are parsed from a
//! CONNECT authority or an absolute URI. Pure functions, no IO.

use std::fmt;
use std::net::Ipv6Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn parse(s: &str) -> Option<Scheme> {
        let is = |name: &str| s.eq_ignore_ascii_case(name);
        match () {
            _ if is("http") || is("ws") => Some(Scheme::Http),
            _ if is("https") || is("wss") => Some(Scheme::Https),
            _ => None,
        }
    }
}

/// A host and port as the client asked for them. `host` is lowercase, without
/// brackets around IPv6 literals and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port`, with IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }

    /// The value of a `Host` header: the port is left out when it is the scheme's default.
    pub(crate) fn host_header(&self, scheme: Scheme) -> String {
        if self.port == scheme.default_port() {
            bracketed(&self.host).into_owned()
        } else {
            self.authority()
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

fn bracketed(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    MissingHost,
    BadHost,
    MissingPort,
    BadPort,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::MissingHost => "request target has no host",
            TargetError::BadHost => "request target has an invalid host",
            TargetError::MissingPort => "CONNECT target needs host:port",
            TargetError::BadPort => "request target has an invalid port",
        })
    }
}

/// Parses `host[:port]` (IPv6 in brackets). Without a port, `default_port` is
/// used, or `MissingPort` when there is none (CONNECT).
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<HostPort, TargetError> {
    // Userinfo has no place in a proxy target.
    if input.contains('@') {
        return Err(TargetError::BadHost);
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(TargetError::BadHost)?;
        host.parse::<Ipv6Addr>().map_err(|_| TargetError::BadHost)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or(TargetError::BadHost)?)),
        }
    } else {
        match input.rsplit_once(':') {
            // More than one colon without brackets: an unbracketed IPv6 literal.
            Some((host, _)) if host.contains(':') => return Err(TargetError::BadHost),
            Some((host, port)) => (host, Some(port)),
            None => (input, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(TargetError::MissingPort)?,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(TargetError::MissingHost);
    }
    if !host.contains(':') && !is_valid_hostname(host) {
        return Err(TargetError::BadHost);
    }
    Ok(HostPort { host: host.to_ascii_lowercase(), port })
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::BadPort),
        Ok(port) => Ok(port),
    }
}

/// Letters, digits, `-`, `_` and dots; what DNS names and IPv4 literals use.
pub(crate) fn is_valid_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The scheme and host:port of an absolute request URI (`http://h:p/x`).
pub(crate) fn target_of_uri(uri: &http::Uri) -> Result<(Scheme, HostPort), TargetError> {
    let scheme = uri.scheme_str().and_then(Scheme::parse).ok_or(TargetError::MissingHost)?;
    let authority = uri.authority().ok_or(TargetError::MissingHost)?;
    let target = parse_authority(authority.as_str(), Some(scheme.default_port()))?;
    Ok((scheme, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort { host: host.into(), port }
    }

    #[test]
    fn authorities() {
        assert_eq!(parse_authority("localhost:3000", None), Ok(hp("localhost", 3000)));
        assert_eq!(parse_authority("Example.COM.", Some(80)), Ok(hp("example.com", 80)));
        assert_eq!(parse_authority("[::1]:8080", None), Ok(hp("::1", 8080)));
        assert_eq!(parse_authority("[::1]", Some(443)), Ok(hp("::1", 443)));
        assert_eq!(parse_authority("host", None), Err(TargetError::MissingPort));
        assert_eq!(parse_authority(":80", None), Err(TargetError::MissingHost));
        assert_eq!(parse_authority("", None), Err(TargetError::MissingPort));
        assert_eq!(parse_authority("h:", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:0", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:65536", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:+80", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:99999999999", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("::1:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("[::1]80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("[nope]:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("user@h:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("a b:80", None), Err(TargetError::BadHost));
        assert_eq!(hp("::1", 80).authority(), "[::1]:80");
        assert_eq!(hp("::1", 80).host_header(Scheme::Http), "[::1]");
        assert_eq!(hp("a", 8080).host_header(Scheme::Http), "a:8080");
    }

    #[test]
    fn uri_targets() {
        let uri: http::Uri = "http://LocalHost:3000/x?y".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Http, hp("localhost", 3000))));
        let uri: http::Uri = "https://example.com/".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Https, hp("example.com", 443))));
        let uri: http::Uri = "ws://[::1]/hmr".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Http, hp("::1", 80))));
        let uri: http::Uri = "/relative".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Err(TargetError::MissingHost));
        let uri: http::Uri = "ftp://h/".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Err(TargetError::MissingHost));
    }
}
