//! Building the request an upstream sees and the response the client sees:
//! absolute URI, `Host`, hop-by-hop stripping, `X-Cmux-*`. Written once, used
//! by plain requests, upgrades and HTTP/2 streams alike.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};

use crate::policy::routing::{Scheme, Upstream, HEADER_HOST_OVERRIDE, HEADER_PORT_INTERNAL};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers of this proxy's own protocol with the app, never forwarded.
const INTERNAL: [HeaderName; 2] =
    [HeaderName::from_static(HEADER_PORT_INTERNAL), HeaderName::from_static(HEADER_HOST_OVERRIDE)];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Copied first: `Connection` itself goes, and with it the list.
    let connection: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
    let listed = |name: &HeaderName| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
    };
    remove_where(headers, |name| HOP_BY_HOP.contains(name) || listed(name));
}

/// Removes every header `unwanted` picks. A removal hashes its name; a scan of
/// the dozen names a message carries compares them, which costs less than
/// asking for each of the names that could be there.
fn remove_where(headers: &mut HeaderMap, unwanted: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|name| unwanted(name)).cloned() {
        headers.remove(name);
    }
}

/// One `Cookie` line: an HTTP/2 client sends each cookie as its own field
/// (RFC 9113 §8.2.3), HTTP/1.1 allows a single line (RFC 6265 §5.4), and many
/// servers read only the first.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// Whether a request asks to switch protocols (a WebSocket handshake).
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Turns a client's request into the one `upstream` receives: its absolute
/// URI names the upstream (HTTP/2's `:authority`), and the client's `Host`
/// is gone; [`to_origin_form`] makes it an HTTP/1.1 request. `upgrade` keeps
/// the protocol switch that hop-by-hop stripping would otherwise drop.
pub(crate) fn upstream_request<B>(req: Request<B>, upstream: &Upstream, upgrade: Option<HeaderValue>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    parts.uri = absolute_uri(&parts.uri, upstream, &upstream.host_header());
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    remove_where(headers, |name| INTERNAL.contains(name));
    join_cookies(headers);
    for (name, value) in &upstream.extra_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    headers.remove(header::HOST);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    Request::from_parts(parts, body)
}

/// The URI of `asked`'s path and query at `upstream` (whose `Host` is `host`),
/// built from parts: the path is not parsed again.
fn absolute_uri(asked: &Uri, upstream: &Upstream, host: &str) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(match upstream.scheme {
        Scheme::Http => http::uri::Scheme::HTTP,
        Scheme::Https => http::uri::Scheme::HTTPS,
    });
    parts.authority = host.parse().ok();
    let path_and_query = asked.path_and_query().filter(|pq| pq.as_str().starts_with('/'));
    parts.path_and_query = Some(path_and_query.cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// An upstream request for HTTP/1.1: the origin-form target and the `Host`
/// its absolute URI names. A `CONNECT` keeps its authority-form target.
pub(crate) fn to_origin_form<B>(req: &mut Request<B>) {
    if req.method() == http::Method::CONNECT {
        return;
    }
    if let Some(host) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let origin_form = req.uri().path_and_query().map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    *req.uri_mut() = origin_form;
}

/// Cleans an upstream's response for the client; a `101` keeps its handshake headers.
pub(crate) fn client_response<B>(mut response: Response<B>) -> Response<B> {
    let upgrade = (response.status() == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| response.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(response.headers_mut());
    if let Some(protocol) = upgrade {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(header::UPGRADE, protocol);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::routing::{upstream_for, HostPort, Route, Scheme};

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let req = request(
            "http://example.com/a?b=1",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("x-other", "2"),
                ("connection", " X-Other "),
                ("keep-alive", "timeout=5"),
                ("te", "gzip"),
                ("proxy-authorization", "Basic abc"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("cookie", "a=1"),
                ("x-cmux-port-internal", "1"),
                ("x-cmux-host-override", "a.test"),
            ],
        );
        let target = HostPort { host: "example.com".into(), port: 80 };
        let out = upstream_request(req, &upstream_for(None, Scheme::Http, &target), None);
        let names: Vec<&str> = out.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["cookie"]);
        assert_eq!(out.uri(), "http://example.com/a?b=1");
        // For HTTP/1.1, the Host the absolute URI names.
        let mut out = out;
        to_origin_form(&mut out);
        assert_eq!(out.uri(), "/a?b=1");
        assert_eq!(out.headers()["host"], "example.com");
    }

    #[test]
    fn rewritten_requests_carry_the_route() {
        let route = Route::new("m1", "base", "cmux.app", Some("https://origin.test")).unwrap();
        let target = HostPort { host: "localhost".into(), port: 3000 };
        let req =
            request("/hmr", &[("x-cmux-host-override", "evil:1"), ("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = upgrade_protocol(req.headers());
        let out = upstream_request(req, &upstream_for(Some(&route), Scheme::Http, &target), upgrade);
        assert_eq!(out.uri(), "https://origin.test/hmr");
        assert!(out.headers().get("host").is_none(), "the client's Host never goes upstream");
        assert_eq!(out.headers()["x-cmux-host-override"], "localhost:3000");
        assert_eq!(out.headers()["x-cmux-port-internal"], "3000");
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["connection"], "upgrade");
    }

    #[test]
    fn cookie_fields_become_one_line() {
        let req = request("http://example.com/", &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        let target = HostPort { host: "example.com".into(), port: 80 };
        let out = upstream_request(req, &upstream_for(None, Scheme::Http, &target), None);
        let cookies: Vec<_> = out.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(upgrade_protocol(request("/", &[("upgrade", "websocket")]).headers()).is_none());
        assert!(upgrade_protocol(
            request("/", &[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]).headers()
        )
        .is_some());
    }

    #[test]
    fn responses_keep_set_cookie_and_handshakes() {
        let response = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "x")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("keep-alive", "1")
            .body(())
            .unwrap();
        let out = client_response(response);
        assert_eq!(out.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(out.headers()["upgrade"], "websocket");
        assert_eq!(out.headers()["sec-websocket-accept"], "x");
        assert!(out.headers().get("keep-alive").is_none());
    }
}
