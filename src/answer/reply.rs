//! The response body type and the proxy's own short answers.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

use crate::answer::error::ProxyError;

/// Every response body the proxy hands to hyper: relayed or its own.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text answer from the proxy itself; `reason` is one line.
pub(crate) fn text(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A response body that keeps `T` alive until the body is sent or dropped.
pub(crate) struct Holding<T> {
    body: Body,
    _held: T,
}

impl<T> Holding<T> {
    pub(crate) fn new(body: Body, held: T) -> Self {
        Holding { body, _held: held }
    }
}

impl<T: Unpin> hyper::body::Body for Holding<T> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Marks the proxy's own failure answers (its value is the cause), so that a
/// client can tell them from an upstream's: the error page's re-check does.
pub(crate) const PROXY_ERROR_HEADER: &str = "x-cmux-proxy-error";

/// The client's answer when the proxy could not get one from upstream.
pub(crate) fn failure(error: &ProxyError) -> Response<Body> {
    let mut response = text(error.status(), &error.client_reason());
    response.headers_mut().insert(PROXY_ERROR_HEADER, HeaderValue::from_static(error.cause()));
    response
}

const REALM: &str = "Basic realm=\"Cmux Preview Proxy\"";

pub(crate) fn proxy_auth_required() -> Response<Body> {
    let mut response = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy authentication required");
    response.headers_mut().insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}
