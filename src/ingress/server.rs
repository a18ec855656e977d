//! The accept loop, `serve_stream` (one HTTP server for the listener and for
//! the inside of tunnels), and the service that dispatches each request.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::answer::error::ProxyError;
use crate::answer::error_page;
use crate::answer::reply::{self, Body};
use crate::conn::prefixed::sniff_stream;
use crate::conn::sniff::Protocol;
use crate::conn::{Binding, ServedIo};
use crate::observe::events::{Event, Metered, RequestRecord};
use crate::observe::stats::ClientProtocol;
use crate::policy::auth::Context;
use crate::policy::routing::{upstream_for, Upstream};
use crate::policy::target::target_of_uri;
use crate::shared::{Hold, Shared, Slot};
use crate::tunnel;
use crate::upstream::request::{client_response, upgrade_protocol, upstream_request};

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
                    shared.tasks.spawn(refuse_over_capacity(stream, "proxy is at its connection cap\n"));
                    continue;
                };
                // Connections that have not authenticated yet have a cap of their own: they cannot
                // take every place from the previews.
                let Ok(unauthenticated) = shared.unauthenticated_slots.clone().try_acquire_owned() else {
                    let busy = "too many connections are waiting to authenticate\n";
                    shared.tasks.spawn(refuse_over_capacity(stream, busy));
                    continue;
                };
                let closer = shared.shutdown.child_token();
                let slot = Hold::listener(slot);
                shared.tasks.spawn(serve_listener_stream(shared.clone(), stream, closer, slot, unauthenticated));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                shared.log.event(format_args!("accept failed: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Past `max_connections`: a short `503` and a close. The request is read
/// (a bounded amount) after the answer: closing a socket with unread bytes
/// resets it, and the client would see the reset instead of the 503.
pub(crate) async fn refuse_over_capacity(mut stream: tokio::net::TcpStream, body: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const READ_AT_MOST: usize = 64 * 1024;
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(busy.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < READ_AT_MOST {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Per-connection state the service needs.
struct Connection {
    /// Cancelling it closes the connection at once.
    closer: CancellationToken,
    /// Cancelling it closes the connection once the responses under way are sent.
    drain: CancellationToken,
    slot: Slot,
    /// Served over HTTP/2: streams are counted, and each response holds `slot`
    /// until sent, so that idleness can be seen.
    http2: AtomicBool,
    /// Contexts whose revocation already closes this connection.
    watched: Mutex<Vec<Arc<Context>>>,
    /// The last `Proxy-Authorization` accepted here and its context: a browser
    /// sends the same value with every request, checked once per connection
    /// (revoking the context closes the connection anyway).
    accepted: Mutex<Option<(http::HeaderValue, Arc<Context>)>>,
    /// A listener connection's place under the cap of unauthenticated ones, until its first
    /// authenticated request; `authenticated` is set then (and from the start inside a tunnel).
    unauthenticated: Mutex<Option<OwnedSemaphorePermit>>,
    authenticated: AtomicBool,
    /// The context whose own port the connection came to: every request is its.
    owner: Option<Arc<Context>>,
}

impl Connection {
    fn speaks_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// The context a request's `Proxy-Authorization` names.
    fn authenticate(&self, shared: &Shared, header: Option<&http::HeaderValue>) -> Option<Arc<Context>> {
        use subtle::ConstantTimeEq;
        let header = header?;
        if let Some((value, context)) = &*self.accepted.lock() {
            let same: bool = value.as_bytes().ct_eq(header.as_bytes()).into();
            if same && !context.is_revoked() {
                return Some(context.clone());
            }
        }
        let context = shared.contexts.authenticate(Some(header.as_bytes())).ok()?;
        self.authenticated.store(true, Ordering::Relaxed);
        self.unauthenticated.lock().take();
        self.watch(shared, &context);
        *self.accepted.lock() = Some((header.clone(), context.clone()));
        Some(context)
    }

    /// Makes sure that revoking `context` closes this connection.
    fn watch(&self, shared: &Shared, context: &Arc<Context>) {
        let mut watched = self.watched.lock();
        if watched.iter().any(|c| Arc::ptr_eq(c, context)) {
            return;
        }
        watched.push(context.clone());
        let (revoked, closer) = (context.revoked.clone(), self.closer.clone());
        shared.tasks.spawn(async move {
            tokio::select! {
                _ = revoked.cancelled() => closer.cancel(),
                _ = closer.cancelled() => {}
            }
        });
    }
}

/// Serves a connection of the listener: it must authenticate a request
/// within `unauthenticatedTimeoutMs`, else it is closed.
fn serve_listener_stream(
    shared: Arc<Shared>,
    io: tokio::net::TcpStream,
    closer: CancellationToken,
    slot: Slot,
    unauthenticated: OwnedSemaphorePermit,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    serve(shared, io, Served::ByCredentials(unauthenticated), closer, slot)
}

/// Serves a connection of a context's own port: every request on it is the context's.
pub(crate) fn serve_owned_stream(
    shared: Arc<Shared>,
    io: tokio::net::TcpStream,
    closer: CancellationToken,
    slot: Slot,
    owner: Arc<Context>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    serve(shared, io, Served::Owned(owner), closer, slot)
}

/// Serves HTTP/1.1 (and HTTP/2 when enabled) inside a tunnel bound to a
/// context, until it ends or `closer` is cancelled. Boxed: tunnels call it
/// from inside the service.
pub(crate) fn serve_stream<I>(
    shared: Arc<Shared>,
    io: I,
    binding: Binding,
    closer: CancellationToken,
    slot: Slot,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(shared, io, Served::Bound(binding), closer, slot)
}

/// How a connection's requests are known to be a context's.
enum Served {
    /// By their `Proxy-Authorization` (the shared listener), with the connection's place under
    /// the cap of unauthenticated ones until the first request that authenticates.
    ByCredentials(OwnedSemaphorePermit),
    /// By the port they came to: a context's own.
    Owned(Arc<Context>),
    /// Inside a tunnel of a context, to one target.
    Bound(Binding),
}

/// Closes a connection that has not authenticated a request within `timeout`; never returns otherwise.
async fn authentication_deadline(connection: &Connection, timeout: std::time::Duration) {
    tokio::time::sleep(timeout).await;
    if connection.authenticated.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    served: Served,
    closer: CancellationToken,
    slot: Slot,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let _active = shared.stats.connection_opened();
        let _close_on_exit = closer.clone().drop_guard();
        let drain = CancellationToken::new();
        let (binding, owner, unauthenticated) = match served {
            Served::ByCredentials(place) => (None, None, Some(place)),
            Served::Owned(context) => (None, Some(context), None),
            Served::Bound(binding) => (Some(binding), None, None),
        };
        let connection = Arc::new(Connection {
            closer: closer.clone(),
            drain: drain.clone(),
            slot: Hold::inside(slot),
            http2: AtomicBool::new(false),
            watched: Mutex::new(Vec::new()),
            accepted: Mutex::new(None),
            authenticated: AtomicBool::new(unauthenticated.is_none()),
            unauthenticated: Mutex::new(unauthenticated),
            owner,
        });
        // A listener's connection (the shared one or a context's own): TLS there in the HTTPS mode.
        let on_listener = binding.is_none();
        // Shared by the requests of the connection: a clone per request would copy the target.
        let binding = binding.map(Arc::new);
        let service = {
            let (shared, connection) = (shared.clone(), connection.clone());
            service_fn(move |req| {
                let (shared, connection, binding) = (shared.clone(), connection.clone(), binding.clone());
                async move { Ok::<_, Infallible>(handle_contained(shared, connection, binding, req).await) }
            })
        };
        let limits = &shared.limits;
        let served = async {
            let (protocol, io) = sniff_stream(io, limits.header_read_timeout).await?;
            let Some(protocol) = protocol else { return Ok(()) };
            let listener_tls = if on_listener { shared.listener_tls.clone() } else { None };
            let (io, h2) = match listener_tls {
                // The browser uses the proxy as an `https://` proxy.
                Some(acceptor) if protocol == Protocol::Tls => {
                    let tls = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io)).await.map_err(
                        |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client TLS handshake timed out"),
                    )??;
                    let h2 = shared.http2 && tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    shared.stats.connection_accepted(if h2 { ClientProtocol::TlsH2 } else { ClientProtocol::TlsHttp1 });
                    (ServedIo::Right(tls), h2)
                }
                _ => {
                    let h2 = shared.http2 && protocol == Protocol::Http2;
                    if on_listener {
                        shared.stats.connection_accepted(if h2 { ClientProtocol::H2c } else { ClientProtocol::Http1 });
                    }
                    (ServedIo::Left(io), h2)
                }
            };
            let io = TokioIo::new(io);
            if h2 {
                connection.speaks_http2();
                let served = http2_server(limits).serve_connection(io, service);
                let idle = drain_when_idle(&connection, limits.http2_idle_timeout);
                let served = until_drained(served, &drain, |c| c.graceful_shutdown());
                tokio::pin!(served);
                tokio::select! {
                    result = &mut served => return result.map_err(Into::into),
                    _ = idle => {}
                }
                served.await.map_err(Into::into)
            } else {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_header_size(limits.max_head_bytes);
                let served = builder.serve_connection(io, service).with_upgrades();
                until_drained(served, &drain, |c| c.graceful_shutdown()).await.map_err(Into::into)
            }
        };
        tokio::select! {
            result = served => {
                let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = result;
                if let Err(e) = result {
                    shared.log.event(format_args!("connection ended: {e}"));
                }
            }
            _ = closer.cancelled() => {}
            _ = authentication_deadline(&connection, limits.unauthenticated_timeout) => {
                shared.log.event(format_args!("connection closed: no authenticated request within {:?}", limits.unauthenticated_timeout));
            }
        }
    })
}

/// HTTP/2 towards a browser: a module-heavy page opens hundreds of streams at
/// once and cancels as many on a reload, which must never look like an attack
/// (h2's default allows 20 resets before accept); windows large enough that
/// uploads are not throttled; pings to find peers that vanished.
fn http2_server(limits: &crate::config::Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(limits.http2_max_resets))
        .max_local_error_reset_streams(Some(limits.http2_max_resets))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
    builder
}

/// Keep-alive pings on HTTP/2 client connections find peers that vanished.
const HTTP2_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const HTTP2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Fires `drain` (GOAWAY, then close) once `connection` had no stream and no
/// tunnel for `timeout`; never returns before that.
async fn drain_when_idle(connection: &Connection, timeout: std::time::Duration) {
    let tick = (timeout / 4).max(std::time::Duration::from_millis(10));
    let mut idle_for = std::time::Duration::ZERO;
    while idle_for < timeout {
        tokio::time::sleep(tick).await;
        idle_for = if Hold::is_busy(&connection.slot) { std::time::Duration::ZERO } else { idle_for + tick };
    }
    connection.drain.cancel();
}

/// Drives a connection; once `drain` fires it finishes what is under way and closes.
async fn until_drained<C: Future>(
    connection: C,
    drain: &CancellationToken,
    shut_down: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(connection);
    tokio::select! {
        output = connection.as_mut() => return output,
        _ = drain.cancelled() => shut_down(connection.as_mut()),
    }
    connection.await
}

/// Runs [`handle`] so that a panic in it costs only this connection: the
/// client gets a 500 and the connection closes; the process lives on.
async fn handle_contained(
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
    let protocol = if req.version() == http::Version::HTTP_2 { "h2" } else { "http/1.1" };
    let mut trace = Trace::default();
    let handling = handle(shared.clone(), connection, binding, req, &mut trace);
    let handled = AssertUnwindSafe(handling).catch_unwind().await;
    let response = handled.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        shared.log.event(format_args!("request handler panicked, closing its connection: {message}"));
        drain.cancel();
        let mut response = reply::text(StatusCode::INTERNAL_SERVER_ERROR, "internal proxy error");
        response.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        response
    });
    let response = match held {
        Some(slot) => response.map(|body| reply::Holding::new(body, slot).boxed()),
        None => response,
    };
    // The request's record: its context's counters, and the `request` event once the body is done.
    let Some(context) = trace.context else { return response };
    context.stats.requests.fetch_add(1, Ordering::Relaxed);
    let event = shared.events.listening().then(|| Event {
        method: Some(method.to_string()),
        url: trace.url,
        upstream: trace.upstream,
        status: Some(response.status().as_u16()),
        protocol: Some(protocol),
        ..Event::of("request", Some(&context))
    });
    let record = RequestRecord {
        events: shared.events.clone(),
        context,
        event,
        started,
        bytes_in: trace.bytes_in,
        bytes_out: 0,
    };
    response.map(|body| Metered::new(body, record).boxed())
}

/// What [`handle`] learned about a request, for its record.
#[derive(Default)]
struct Trace {
    context: Option<Arc<Context>>,
    /// The URL as asked and the upstream it went to: only when someone listens for events.
    url: Option<String>,
    upstream: Option<String>,
    /// The request body's bytes, when it has one.
    bytes_in: Option<Arc<AtomicU64>>,
}

async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    binding: Option<Arc<Binding>>,
    req: Request<Incoming>,
    trace: &mut Trace,
) -> Response<Body> {
    shared.stats.request_started();
    #[cfg(feature = "test-hooks")]
    if req.headers().contains_key("x-cmux-test-panic") {
        panic!("deliberate panic from the test hook");
    }
    // Inside a tunnel the context is bound, and its revocation already ends the tunnel.
    let context = match (&binding, &connection.owner) {
        (Some(binding), _) => binding.context.clone(),
        // A context's own port: its connections close when it is released.
        (None, Some(owner)) => owner.clone(),
        (None, None) => match connection.authenticate(&shared, req.headers().get(header::PROXY_AUTHORIZATION)) {
            Some(context) => context,
            None => return reply::proxy_auth_required(),
        },
    };
    trace.context = Some(context.clone());
    if shared.events.listening() {
        trace.url = Some(asked_url(binding.as_deref(), req.uri()));
    }

    if req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none() {
        return tunnel::connect(shared, context, req, connection.slot.clone()).await;
    }
    let (scheme, target) = match &binding {
        Some(binding) => (binding.scheme, Cow::Borrowed(&binding.target)),
        None => match target_of_uri(req.uri()) {
            Ok((scheme, target)) => (scheme, Cow::Owned(target)),
            Err(e) => {
                let error = ProxyError::BadRequest(format!("a proxy request needs an absolute URI: {e}"));
                return shared.fail(Some(&context), &error);
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
    if req.method() == Method::CONNECT {
        // An extended CONNECT (RFC 8441): a WebSocket over an HTTP/2 stream.
        let asked = asked_url(binding.as_deref(), req.uri());
        return tunnel::websocket_over_h2(shared, context, req, (asked, upstream), connection.slot.clone()).await;
    }
    if let Some(protocol) = upgrade_protocol(req.headers()) {
        let asked = asked_url(binding.as_deref(), req.uri());
        return tunnel::upgrade(shared, context, req, (asked, upstream), protocol, connection.slot.clone()).await;
    }
    // A page load that fails gets a page that says why (and recovers by itself).
    let navigation =
        error_page::is_navigation(req.method(), req.headers()).then(|| asked_url(binding.as_deref(), req.uri()));
    // Only a body is counted: a GET allocates nothing for it.
    let req = if hyper::body::Body::is_end_stream(req.body()) {
        req.map(|body| body.boxed())
    } else {
        let bytes_in = trace.bytes_in.insert(Arc::default()).clone();
        req.map(|body| Metered::new(body.boxed(), bytes_in).boxed())
    };
    match forward(&shared, req, &upstream, &context).await {
        Ok(response) => response,
        Err(error) => match navigation.filter(|_| error_page::is_unreachable(&error)) {
            Some(url) => {
                shared.fail(Some(&context), &error);
                error_page::render(&url, &format!("{}://{}", upstream.scheme.as_str(), upstream.addr), &error)
            }
            None => shared.fail(Some(&context), &error),
        },
    }
}

/// The URL a request asked for: absolute on the listener, rebuilt inside a tunnel.
fn asked_url(binding: Option<&Binding>, uri: &http::Uri) -> String {
    match binding {
        Some(b) => format!("{}://{}{}", b.scheme.as_str(), b.target, uri),
        None => uri.to_string(),
    }
}

/// Sends a plain request through the pool and streams the answer back.
async fn forward(
    shared: &Shared,
    req: Request<Body>,
    upstream: &Upstream,
    context: &Context,
) -> Result<Response<Body>, ProxyError> {
    let req = upstream_request(req, upstream, None);
    let send = shared.pool.send(upstream, req, &context.upstream_slots);
    let sent = tokio::time::timeout(shared.limits.response_timeout, send).await;
    sent.unwrap_or_else(|_| Err(ProxyError::no_response(&upstream.addr, shared.limits.response_timeout)))
        .map(client_response)
}
