//! Why the proxy answers a request itself: one type for every failure on
//! the way to an upstream, carrying its HTTP status, rendered in one place
//! ([`crate::answer::reply::failure`]).

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

/// What failed, with the status the client gets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The client's request cannot be forwarded as it is (400).
    BadRequest,
    /// A routed preview asked for an address it may not reach (403).
    Forbidden,
    /// The upstream's name did not resolve (502).
    Dns,
    /// No address of the upstream accepted a connection (502).
    Refused,
    /// The TLS handshake with the upstream failed (502).
    Tls,
    /// The upstream broke the exchange, or answered a tunnel with an error (502).
    BadGateway,
    /// Connecting, the TLS handshake or the response head took too long (504).
    Timeout,
    /// Too many upstream connections are open in all (503).
    Unavailable,
    /// Too many upstream connections are open for this preview (503).
    PreviewAtCap,
}

/// A failure on the way to an upstream: what failed, a one-line reason for
/// the client, what only the app may learn (the log and its events), and the
/// error that caused it (kept for `source()`).
#[derive(Debug, Clone)]
pub(crate) struct ProxyError {
    failure: Failure,
    reason: String,
    app_detail: Option<String>,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

#[allow(non_snake_case)] // Named as the failures they build, so that call sites read as before.
impl ProxyError {
    pub(crate) fn BadRequest(reason: String) -> Self {
        Self::new(Failure::BadRequest, reason)
    }
    pub(crate) fn Forbidden(reason: String) -> Self {
        Self::new(Failure::Forbidden, reason)
    }
    pub(crate) fn Dns(reason: String) -> Self {
        Self::new(Failure::Dns, reason)
    }
    pub(crate) fn Refused(reason: String) -> Self {
        Self::new(Failure::Refused, reason)
    }
    pub(crate) fn Tls(reason: String) -> Self {
        Self::new(Failure::Tls, reason)
    }
    pub(crate) fn BadGateway(reason: String) -> Self {
        Self::new(Failure::BadGateway, reason)
    }
    pub(crate) fn Timeout(reason: String) -> Self {
        Self::new(Failure::Timeout, reason)
    }
    pub(crate) fn Unavailable(reason: String) -> Self {
        Self::new(Failure::Unavailable, reason)
    }
    pub(crate) fn PreviewAtCap(reason: String) -> Self {
        Self::new(Failure::PreviewAtCap, reason)
    }
}

impl ProxyError {
    pub(crate) fn new(failure: Failure, reason: String) -> Self {
        ProxyError { failure, reason, app_detail: None, cause: None }
    }

    /// Adds what the app's log and events show but the client's answer does not: an untrusted page
    /// must not learn it (which addresses a name of its own resolved to, say).
    pub(crate) fn with_app_detail(mut self, detail: String) -> Self {
        self.app_detail = Some(detail);
        self
    }

    /// The one-line reason the client gets, without the app's detail.
    pub(crate) fn client_reason(&self) -> String {
        let mut line = String::new();
        push_one_line(&mut line, &self.reason);
        line
    }

    /// This failure, caused by `cause`.
    pub(crate) fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    pub(crate) fn failure(&self) -> Failure {
        self.failure
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self.failure {
            Failure::BadRequest => StatusCode::BAD_REQUEST,
            Failure::Forbidden => StatusCode::FORBIDDEN,
            Failure::Dns | Failure::Refused | Failure::Tls | Failure::BadGateway => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::Unavailable | Failure::PreviewAtCap => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What failed, in one word (the `cause` of an error event).
    pub(crate) fn cause(&self) -> &'static str {
        match self.failure {
            Failure::BadRequest => "bad-request",
            Failure::Forbidden => "forbidden",
            Failure::Dns => "dns",
            Failure::Refused => "refused",
            Failure::Tls => "tls",
            Failure::BadGateway => "upstream",
            Failure::Timeout => "timeout",
            Failure::Unavailable | Failure::PreviewAtCap => "busy",
        }
    }

    /// A 504: `upstream` sent no response head within `limit`.
    pub(crate) fn no_response(upstream: impl fmt::Display, limit: std::time::Duration) -> Self {
        ProxyError::Timeout(format!("{upstream} did not answer within {limit:?}"))
    }

    /// A 502 for a failed exchange with `upstream`, with the deepest cause on
    /// one line (and the error itself as the source).
    pub(crate) fn exchange(upstream: impl fmt::Display, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(e) = source {
            reason = e.to_string();
            source = e.source();
        }
        ProxyError::BadGateway(format!("upstream {upstream} failed: {reason}")).caused_by(error)
    }
}

/// Appends `text` to `out` on one line, whatever an upstream put in its error text.
fn push_one_line(out: &mut String, text: &str) {
    for (i, line) in text.split(['\r', '\n']).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line);
    }
}

/// The app's view (log, events): the client's reason, then the app's detail.
impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.client_reason();
        if let Some(detail) = &self.app_detail {
            line.push_str(" (");
            push_one_line(&mut line, detail);
            line.push(')');
        }
        f.write_str(&line)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

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
    fn the_app_detail_reaches_the_app_only() {
        let error = ProxyError::Forbidden("h:80 is off limits".into()).with_app_detail("resolves to\n10.0.0.1".into());
        assert_eq!(error.client_reason(), "h:80 is off limits");
        assert_eq!(error.to_string(), "h:80 is off limits (resolves to 10.0.0.1)");
    }

    #[test]
    fn exchange_failures_name_the_deepest_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let outer = std::io::Error::other(io);
        let error = ProxyError::exchange("h:1", outer);
        assert_eq!(error.to_string(), "upstream h:1 failed: reset by peer");
        // The cause is kept.
        let source = std::error::Error::source(&error).expect("a source");
        assert_eq!(source.to_string(), "reset by peer");
    }
}
