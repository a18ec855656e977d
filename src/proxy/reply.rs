//! The response body type and the proxy's own short answers.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Every response body the proxy hands to hyper: relayed or its own.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text answer from the proxy itself; `reason` is one line.
pub fn text(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

const REALM: &str = "Basic realm=\"Cmux Preview Proxy\"";

pub fn proxy_auth_required() -> Response<Body> {
    let mut response = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy authentication required");
    response.headers_mut().insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static(REALM));
    response
}
