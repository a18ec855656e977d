//! One request, in named phases: who it is (auth), what it asks (classify),
//! where it goes (route), doing it (execute), and its record (the context's
//! counters and the `request` event, once the body is done).

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::server::Connection;
use crate::answer::error::ProxyError;
use crate::answer::error_page;
use crate::answer::reply::{self, Body};
use crate::conn::Binding;
use crate::observe::events::{Event, EventKind, Metered, RequestProtocol, RequestRecord};
use crate::policy::auth::Context;
use crate::policy::routing::{upstream_for, Upstream};
use crate::policy::target::target_of_uri;
use crate::shared::Shared;
use crate::tunnel;
use crate::upstream::request::{client_response, upgrade_protocol, upstream_request};

/// What a request asks of the proxy, read from its method and headers alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `CONNECT host:port`: a tunnel.
    Connect,
    /// An extended `CONNECT` with `:protocol` (RFC 8441): a WebSocket over an HTTP/2 stream.
    WebSocketOverH2,
    /// `Upgrade` named in `Connection` (a WebSocket handshake), with the protocol asked for.
    Upgrade(HeaderValue),
    /// Everything else: forwarded through the pool.
    Forward,
}

/// The phase that decides what a request asks for.
pub(crate) fn classify<B>(req: &Request<B>) -> Action {
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<hyper::ext::Protocol>() {
            None => Action::Connect,
            Some(_) => Action::WebSocketOverH2,
        };
    }
    match upgrade_protocol(req.headers()) {
        Some(protocol) => Action::Upgrade(protocol),
        None => Action::Forward,
    }
}

/// A handled request: the response, and what its record needs (nothing for a
/// request that named no context, such as the one answered `407`).
struct Handled {
    response: Response<Body>,
    record: Option<Trace>,
}

/// What a request's record needs, built as soon as its context is known.
struct Trace {
    context: Arc<Context>,
    /// The URL as asked and the upstream it went to: only when someone listens for events.
    url: Option<String>,
    upstream: Option<String>,
    /// The request body's bytes, when it has one.
    bytes_in: Option<Arc<AtomicU64>>,
}

/// Runs [`handle`] so that a panic in it costs only this connection: the
/// client gets a 500 and the connection closes; the process lives on. Then
/// the record phase.
pub(super) async fn handle_contained(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    binding: Option<Arc<Binding>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let drain = connection.drain.clone();
    let held = connection.http2.load(Ordering::Relaxed).then(|| connection.slot.clone());
    if held.is_some() {
        shared.stats.http2_stream_served();
    }
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let protocol = if req.version() == http::Version::HTTP_2 { RequestProtocol::H2 } else { RequestProtocol::Http1 };
    let handling = handle(shared.clone(), connection, binding, req);
    let Handled { response, record } = AssertUnwindSafe(handling).catch_unwind().await.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        shared.log.event(format_args!("request handler panicked, closing its connection: {message}"));
        drain.cancel();
        let mut response = reply::text(StatusCode::INTERNAL_SERVER_ERROR, "internal proxy error");
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Handled { response, record: None }
    });
    let response = match held {
        Some(slot) => response.map(|body| reply::Holding::new(body, slot).boxed()),
        None => response,
    };
    // Record: the context's counters, and the `request` event once the body is done.
    let Some(trace) = record else { return response };
    trace.context.stats.requests.fetch_add(1, Ordering::Relaxed);
    let event = shared.events.listening().then(|| Event {
        method: Some(method.to_string()),
        url: trace.url,
        upstream: trace.upstream,
        status: Some(response.status().as_u16()),
        protocol: Some(protocol),
        ..Event::of(EventKind::Request, Some(&trace.context))
    });
    let record = RequestRecord {
        events: shared.events.clone(),
        context: trace.context,
        event,
        started,
        bytes_in: trace.bytes_in,
        bytes_out: 0,
    };
    response.map(|body| Metered::new(body, record).boxed())
}

/// Auth, classify, route, execute.
async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    binding: Option<Arc<Binding>>,
    req: Request<Incoming>,
) -> Handled {
    shared.stats.request_started();
    #[cfg(feature = "test-hooks")]
    if req.headers().contains_key("x-cmux-test-panic") {
        panic!("deliberate panic from the test hook");
    }
    // Auth. Inside a tunnel the context is bound, and its revocation already ends the tunnel.
    let context = match (&binding, &connection.owner) {
        (Some(binding), _) => binding.context.clone(),
        // A context's own port: its connections close when it is released.
        (None, Some(owner)) => owner.clone(),
        (None, None) => match connection.authenticate(&shared, req.headers().get(header::PROXY_AUTHORIZATION)) {
            Some(context) => context,
            None => return Handled { response: reply::proxy_auth_required(), record: None },
        },
    };
    let url = shared.events.listening().then(|| asked_url(binding.as_deref(), req.uri()));
    let mut trace = Trace { context: context.clone(), url, upstream: None, bytes_in: None };
    let action = classify(&req);
    if action == Action::Connect {
        let response = tunnel::connect(shared, context, req, connection.slot.clone()).await;
        return Handled { response, record: Some(trace) };
    }
    // Route.
    let (scheme, target) = match &binding {
        Some(binding) => (binding.scheme, Cow::Borrowed(&binding.target)),
        None => match target_of_uri(req.uri()) {
            Ok((scheme, target)) => (scheme, Cow::Owned(target)),
            Err(e) => {
                let error = ProxyError::BadRequest(format!("a proxy request needs an absolute URI: {e}"));
                return Handled { response: shared.fail(Some(&context), &error), record: Some(trace) };
            }
        },
    };
    let upstream = upstream_for(context.route.as_ref(), scheme, &target);
    if shared.events.listening() {
        trace.upstream = Some(format!("{}://{}", upstream.scheme.as_str(), upstream.addr));
    }
    if upstream.rewritten {
        shared.log.event(format_args!("{} {target} -> {}", req.method(), upstream.addr));
    }
    // Execute.
    let slot = connection.slot.clone();
    let response = match action {
        Action::Connect => unreachable!("tunnels are answered before routing"),
        Action::WebSocketOverH2 => {
            let asked = asked_url(binding.as_deref(), req.uri());
            tunnel::websocket_over_h2(shared, context, req, (asked, upstream), slot).await
        }
        Action::Upgrade(protocol) => {
            let asked = asked_url(binding.as_deref(), req.uri());
            tunnel::upgrade(shared, context, req, (asked, upstream), protocol, slot).await
        }
        Action::Forward => forward(&shared, &context, binding.as_deref(), req, &upstream, &mut trace).await,
    };
    Handled { response, record: Some(trace) }
}

/// A plain request: through the pool, its answer streamed back; a page load
/// that fails gets a page that says why (and recovers by itself).
async fn forward(
    shared: &Shared,
    context: &Context,
    binding: Option<&Binding>,
    req: Request<Incoming>,
    upstream: &Upstream,
    trace: &mut Trace,
) -> Response<Body> {
    let navigation = error_page::is_navigation(req.method(), req.headers()).then(|| asked_url(binding, req.uri()));
    // Only a body is counted: a GET allocates nothing for it.
    let req = if hyper::body::Body::is_end_stream(req.body()) {
        req.map(|body| body.boxed())
    } else {
        let bytes_in = trace.bytes_in.insert(Arc::default()).clone();
        req.map(|body| Metered::new(body.boxed(), bytes_in).boxed())
    };
    let req = upstream_request(req, upstream, None);
    let send = shared.pool.send(upstream, req, &context.places);
    let limit = shared.limits.response_timeout;
    let sent = tokio::time::timeout(limit, send).await;
    match sent.unwrap_or_else(|_| Err(ProxyError::no_response(&upstream.addr, limit))) {
        Ok(response) => client_response(response),
        Err(error) => match navigation.filter(|_| error_page::is_unreachable(&error)) {
            Some(url) => {
                shared.fail(Some(context), &error);
                error_page::render(&url, &format!("{}://{}", upstream.scheme.as_str(), upstream.addr), &error)
            }
            None => shared.fail(Some(context), &error),
        },
    }
}

/// The URL a request asked for: absolute on the listener, rebuilt inside a tunnel.
fn asked_url(binding: Option<&Binding>, uri: &http::Uri) -> String {
    match (binding, uri.authority().map(|a| a.as_str())) {
        // Inside a tunnel the binding names the target; only the path is the request's own.
        (Some(b), _) => {
            format!("{}://{}{}", b.scheme.as_str(), b.target, uri.path_and_query().map_or("/", |p| p.as_str()))
        }
        // Credentials in a URL never reach an event (such a request is refused, and its record still goes out).
        (None, Some(authority)) if authority.contains('@') => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            let scheme = uri.scheme_str().map(|s| format!("{s}://")).unwrap_or_default();
            format!("{scheme}{host}{}", uri.path_and_query().map_or("", |p| p.as_str()))
        }
        (None, _) => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn asked_urls_carry_no_credentials() {
        let url = |uri: &str| asked_url(None, &uri.parse().unwrap());
        assert_eq!(url("http://user:secret@example.test:8080/a?b=c"), "http://example.test:8080/a?b=c");
        assert_eq!(url("user:secret@example.test:443"), "example.test:443");
        assert_eq!(url("http://example.test/a"), "http://example.test/a");
        // Inside a tunnel: the binding's target, the request's path, whatever form its target came in.
        let contexts = crate::policy::auth::Contexts::new(
            tokio_util::sync::CancellationToken::new(),
            crate::policy::auth::PerContext { upstream: 1, dns_lookups: 1 },
        );
        let target = crate::policy::target::HostPort { host: "localhost".into(), port: 3000 };
        let binding =
            Binding { context: contexts.create(1, None).0, target, scheme: crate::policy::routing::Scheme::Https };
        for uri in ["/m.js?v=1", "https://localhost:3000/m.js?v=1", "http://u:p@elsewhere.test/m.js?v=1"] {
            assert_eq!(asked_url(Some(&binding), &uri.parse().unwrap()), "https://localhost:3000/m.js?v=1", "{uri}");
        }
    }

    #[test]
    fn requests_are_classified_by_method_and_headers() {
        assert_eq!(classify(&request("CONNECT", "localhost:3000", &[])), Action::Connect);
        let mut extended = request("CONNECT", "http://localhost:3000/hmr", &[]);
        extended.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(classify(&extended), Action::WebSocketOverH2);
        let handshake =
            request("GET", "http://localhost:3000/hmr", &[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(classify(&handshake), Action::Upgrade(HeaderValue::from_static("websocket")));
        // An Upgrade that Connection does not name is no upgrade.
        assert_eq!(classify(&request("GET", "http://h/", &[("upgrade", "websocket")])), Action::Forward);
        assert_eq!(classify(&request("POST", "http://h/x", &[])), Action::Forward);
    }
}
