//! Why the proxy answers a request itself: one type for every failure on
//! the way to an upstream, carrying its HTTP status, rendered in one place
//! ([`crate::answer::reply::failure`]).

use std::fmt;

use http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The client's request cannot be forwarded as it is (400).
    BadRequest(String),
    /// A routed preview asked for an address on the user's machine (403).
    Forbidden(String),
    /// The upstream's name did not resolve (502).
    Dns(String),
    /// No address of the upstream accepted a connection (502).
    Refused(String),
    /// The TLS handshake with the upstream failed (502).
    Tls(String),
    /// The upstream broke the exchange, or answered a tunnel with an error (502).
    BadGateway(String),
    /// Connecting, the TLS handshake or the response head took too long (504).
    Timeout(String),
    /// Too many upstream connections are open, for the preview or in all (503).
    Unavailable(String),
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::Dns(_) | ProxyError::Refused(_) | ProxyError::Tls(_) | ProxyError::BadGateway(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What failed, in one word (the `cause` of an error event).
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Dns(_) => "dns",
            ProxyError::Refused(_) => "refused",
            ProxyError::Tls(_) => "tls",
            ProxyError::BadGateway(_) => "upstream",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Unavailable(_) => "busy",
        }
    }

    fn reason(&self) -> &str {
        match self {
            ProxyError::BadRequest(r)
            | ProxyError::Forbidden(r)
            | ProxyError::Dns(r)
            | ProxyError::Refused(r)
            | ProxyError::Tls(r)
            | ProxyError::BadGateway(r)
            | ProxyError::Timeout(r)
            | ProxyError::Unavailable(r) => r,
        }
    }

    /// A 504: `upstream` sent no response head within `limit`.
    pub(crate) fn no_response(upstream: impl fmt::Display, limit: std::time::Duration) -> Self {
        ProxyError::Timeout(format!("{upstream} did not answer within {limit:?}"))
    }

    /// A 502 for a failed exchange with `upstream`, with the deepest cause on one line.
    pub(crate) fn exchange(upstream: impl fmt::Display, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(e) = source {
            reason = e.to_string();
            source = e.source();
        }
        ProxyError::BadGateway(format!("upstream {upstream} failed: {reason}"))
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever an upstream put in its error text.
        for (i, line) in self.reason().split(['\r', '\n']).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {}

/// A setting the proxy cannot work with, or a certificate it cannot build:
/// what (`field`, named as the app names it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl fmt::Display) -> Self {
        ConfigError { field, reason: reason.to_string() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_one_line() {
        assert_eq!(ProxyError::BadRequest("x".into()).status(), 400);
        assert_eq!(ProxyError::Forbidden("x".into()).status(), 403);
        assert_eq!(ProxyError::BadGateway("x".into()).status(), 502);
        assert_eq!(ProxyError::Timeout("x".into()).status(), 504);
        assert_eq!(ProxyError::Unavailable("x".into()).status(), 503);
        assert_eq!(ProxyError::BadGateway("a\r\nb".into()).to_string(), "a  b");
    }

    #[test]
    fn exchange_failures_name_the_deepest_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let outer = std::io::Error::other(io);
        let error = ProxyError::exchange("h:1", &outer);
        assert_eq!(error.to_string(), "upstream h:1 failed: reset by peer");
    }
}
