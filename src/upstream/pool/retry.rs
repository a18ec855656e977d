//! What may be sent again: requests an HTTP/2 server said it never processed,
//! and idempotent ones without a body.

use http::{HeaderMap, Method, Request};

use crate::answer::reply::{empty_body, Body};

/// How an HTTP/2 server said it never processed a request (RFC 9113 §8.7).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Refusal {
    /// `REFUSED_STREAM`: this stream only.
    Stream,
    /// The stream was past the last one a GOAWAY let through, or opened after it.
    GoAway,
}

pub(super) fn refusal(error: &hyper::Error) -> Option<Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match () {
                _ if !h2.is_remote() => None,
                _ if h2.is_go_away() => Some(Refusal::GoAway),
                _ if h2.reason() == Some(h2::Reason::REFUSED_STREAM) => Some(Refusal::Stream),
                _ => None,
            };
        }
        source = e.source();
    }
    None
}

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

pub(super) fn rebuild(method: &Method, headers: &HeaderMap) -> Request<Body> {
    let mut req = Request::new(empty_body());
    *req.method_mut() = method.clone();
    *req.headers_mut() = headers.clone();
    req
}
