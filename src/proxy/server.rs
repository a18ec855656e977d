//! The accept loop, `serve_stream` (one HTTP server for the listener and for
//! the inside of tunnels), and the service that dispatches each request.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::Context;
use super::forward::{client_response, upgrade_protocol, upstream_request};
use super::prefixed::Prefixed;
use super::reply::{self, Body};
use super::routing::{target_of_uri, upstream_for, HostPort, Scheme, Upstream};
use super::sniff::{sniff, Protocol};
use super::upstream::ConnectError;
use super::{tunnel, Shared, Slot};

/// What a tunnel's inner HTTP server already knows: who opened the tunnel and
/// to where, so the requests inside need no credentials and no absolute URI.
#[derive(Clone)]
pub struct Binding {
    pub context: Arc<Context>,
    pub target: HostPort,
    pub scheme: Scheme,
}

pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let Ok(slot) = shared.connection_slots.clone().try_acquire_owned() else {
                    shared.tasks.spawn(refuse_over_capacity(stream));
                    continue;
                };
                let closer = shared.shutdown.child_token();
                shared.tasks.spawn(serve_stream(shared.clone(), stream, None, closer, Some(Arc::new(slot))));
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                shared.log.event(format_args!("accept failed: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Past `max_connections`: a short `503` and a close, without reading the request.
async fn refuse_over_capacity(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 30\r\nConnection: close\r\n\r\nproxy is at its connection cap\n";
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
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
    /// Contexts whose revocation already closes this connection.
    watched: Mutex<Vec<Arc<Context>>>,
}

impl Connection {
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

/// Serves HTTP/1.1 (and HTTP/2 when enabled) on any byte stream until it ends
/// or `closer` is cancelled. Boxed: tunnels call it from inside the service.
pub fn serve_stream<I>(
    shared: Arc<Shared>,
    io: I,
    binding: Option<Binding>,
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
        let connection = Arc::new(Connection {
            closer: closer.clone(),
            drain: drain.clone(),
            slot,
            watched: Mutex::new(Vec::new()),
        });
        let service = {
            let shared = shared.clone();
            service_fn(move |req| {
                let (shared, connection, binding) = (shared.clone(), connection.clone(), binding.clone());
                async move { Ok::<_, Infallible>(handle_contained(shared, connection, binding, req).await) }
            })
        };
        let limits = &shared.limits;
        let served = async {
            let mut io = io;
            let mut first = Vec::new();
            let h2 = shared.http2 && reads_h2_preface(&mut io, &mut first, limits.header_read_timeout).await?;
            let io = TokioIo::new(Prefixed::new(first, io));
            if h2 {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .enable_connect_protocol()
                    .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
                let served = builder.serve_connection(io, service);
                until_drained(served, &drain, |c| c.graceful_shutdown()).await.map_err(Into::into)
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
        }
    })
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

/// Reads until the first bytes tell HTTP/2's preface from anything else
/// (served as HTTP/1.1). `Err` when the client sends nothing in time.
async fn reads_h2_preface<I: AsyncRead + Unpin>(
    io: &mut I,
    first: &mut Vec<u8>,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    let sniffing = async {
        loop {
            if let Some(protocol) = sniff(first) {
                return Ok(protocol == Protocol::Http2);
            }
            if io.read_buf(first).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    tokio::time::timeout(timeout, sniffing).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Runs [`handle`] so that a panic in it costs only this connection: the
/// client gets a 500 and the connection closes; the process lives on.
async fn handle_contained(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    binding: Option<Binding>,
    req: Request<Incoming>,
) -> Response<Body> {
    let drain = connection.drain.clone();
    let handled = AssertUnwindSafe(handle(shared.clone(), connection, binding, req)).catch_unwind().await;
    handled.unwrap_or_else(|panic| {
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
    })
}

async fn handle(
    shared: Arc<Shared>,
    connection: Arc<Connection>,
    binding: Option<Binding>,
    req: Request<Incoming>,
) -> Response<Body> {
    shared.stats.request_started();
    #[cfg(feature = "test-hooks")]
    if req.headers().contains_key("x-cmux-test-panic") {
        panic!("deliberate panic from the test hook");
    }
    let context = match &binding {
        Some(binding) => binding.context.clone(),
        None => {
            match shared.contexts.authenticate(req.headers().get(header::PROXY_AUTHORIZATION).map(|v| v.as_bytes())) {
                Ok(context) => context,
                Err(_) => return reply::proxy_auth_required(),
            }
        }
    };
    connection.watch(&shared, &context);

    if req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none() {
        return tunnel::connect(shared, context, req, connection.slot.clone()).await;
    }
    let (scheme, target) = match &binding {
        Some(binding) => (binding.scheme, binding.target.clone()),
        None => match target_of_uri(req.uri()) {
            Ok(found) => found,
            Err(e) => {
                return reply::text(StatusCode::BAD_REQUEST, &format!("a proxy request needs an absolute URI: {e}"))
            }
        },
    };
    let upstream = upstream_for(context.route.as_ref(), scheme, &target);
    if upstream.rewritten {
        shared.log.event(format_args!("{} {target} -> {}", req.method(), upstream.addr));
    }
    if req.method() == Method::CONNECT {
        // An extended CONNECT (RFC 8441): a WebSocket over an HTTP/2 stream.
        return tunnel::websocket_over_h2(shared, context, req, upstream, connection.slot.clone()).await;
    }
    if let Some(protocol) = upgrade_protocol(req.headers()) {
        return tunnel::upgrade(shared, context, req, upstream, protocol, connection.slot.clone()).await;
    }
    forward(&shared, req, &upstream).await
}

/// Sends a plain request through the pooled client and streams the answer back.
async fn forward(shared: &Shared, req: Request<Incoming>, upstream: &Upstream) -> Response<Body> {
    let req = upstream_request(req.map(|body| body.boxed()), upstream, None);
    let sent = tokio::time::timeout(shared.limits.response_timeout, shared.client.send(req)).await;
    match sent {
        Ok(Ok(response)) => client_response(response.map(|body| body.boxed())),
        Ok(Err(e)) => upstream_failure(shared, upstream, &e),
        Err(_) => response_timed_out(shared, upstream),
    }
}

pub fn response_timed_out(shared: &Shared, upstream: &Upstream) -> Response<Body> {
    let reason = format!("{} did not answer within {:?}", upstream.addr, shared.limits.response_timeout);
    shared.log.event(format_args!("{reason}"));
    reply::text(StatusCode::GATEWAY_TIMEOUT, &reason)
}

/// 504 when connecting timed out, else 502, with the deepest reason on one line.
pub fn upstream_failure(
    shared: &Shared,
    upstream: &Upstream,
    error: &(dyn std::error::Error + 'static),
) -> Response<Body> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reason = error.to_string();
    let mut status = StatusCode::BAD_GATEWAY;
    while let Some(e) = source {
        if let Some(connect) = e.downcast_ref::<ConnectError>() {
            if connect.timed_out {
                status = StatusCode::GATEWAY_TIMEOUT;
            }
            reason = connect.message.clone();
            break;
        }
        reason = e.to_string();
        source = e.source();
    }
    let reason = format!("upstream {} failed: {}", upstream.addr, reason.replace(['\r', '\n'], " "));
    shared.log.event(format_args!("{reason}"));
    reply::text(status, &reason)
}
