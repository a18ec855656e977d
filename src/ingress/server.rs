//! The shared listener's accept loop and its refusal, and one HTTP server (HTTP/1.1 and HTTP/2) for
//! every connection: the shared listener's, a context's own port's, and the
//! inside of tunnels. Each request goes to [`super::handle`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::conn::prefixed::sniff_stream;
use crate::conn::sniff::Protocol;
use crate::conn::{Binding, ServedIo, Stream};
use crate::observe::stats::ClientProtocol;
use crate::policy::auth::Context;
use crate::shared::{Hold, Shared, Slot};

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let stop = shared.shutdown.clone();
    accept_each(&shared, &listener, &stop, |stream, slot| {
        // Connections that have not authenticated yet have a cap of their own: they cannot
        // take every place from the previews.
        let Ok(unauthenticated) = shared.admission.unauthenticated.clone().try_acquire_owned() else {
            let busy = "too many connections are waiting to authenticate\n";
            shared.tasks.spawn(refuse_over_capacity(stream, busy));
            return;
        };
        let closer = shared.shutdown.child_token();
        shared.tasks.spawn(serve_listener_stream(shared.clone(), stream, closer, slot, unauthenticated));
    })
    .await;
}

/// Accepts connections until `stop` fires, gives each its place under
/// `maxConnections` (or a `503`), and hands it to `serve`.
pub(crate) async fn accept_each(
    shared: &Shared,
    listener: &TcpListener,
    stop: &CancellationToken,
    mut serve: impl FnMut(tokio::net::TcpStream, Slot),
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                match shared.admission.connections.clone().try_acquire_owned() {
                    Ok(place) => serve(stream, Hold::listener(place)),
                    Err(_) => {
                        shared.tasks.spawn(refuse_over_capacity(stream, "proxy is at its connection cap\n"));
                    }
                }
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(e) => {
                shared.log.event(format_args!("accept failed on {:?}: {e}", listener.local_addr().ok()));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Past `max_connections`: a short `503` and a close. The request is read
/// (a bounded amount) after the answer: closing a socket with unread bytes
/// resets it, and the client would see the reset instead of the 503.
async fn refuse_over_capacity(mut stream: tokio::net::TcpStream, body: &'static str) {
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
pub(super) struct Connection {
    /// Cancelling it closes the connection at once.
    closer: CancellationToken,
    /// Cancelling it closes the connection once the responses under way are sent.
    pub(super) drain: CancellationToken,
    pub(super) slot: Slot,
    /// Served over HTTP/2: streams are counted, and each response holds `slot`
    /// until sent, so that idleness can be seen.
    pub(super) http2: AtomicBool,
    /// Contexts whose revocation already closes this connection.
    watched: Mutex<Vec<Arc<Context>>>,
    /// The last `Proxy-Authorization` accepted here and its context: a browser
    /// sends the same value with every request, checked once per connection
    /// (revoking the context closes the connection anyway).
    accepted: Mutex<Option<(http::HeaderValue, Arc<Context>)>>,
    /// A listener connection's place under the cap of unauthenticated ones, until its first
    /// authenticated request (none from the start on an own port or inside a tunnel).
    unauthenticated: Mutex<Option<OwnedSemaphorePermit>>,
    /// The context whose own port the connection came to: every request is its.
    pub(super) owner: Option<Arc<Context>>,
}

impl Connection {
    fn speaks_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// The context a request's `Proxy-Authorization` names.
    pub(super) fn authenticate(&self, shared: &Shared, header: Option<&http::HeaderValue>) -> Option<Arc<Context>> {
        use subtle::ConstantTimeEq;
        let header = header?;
        if let Some((value, context)) = &*self.accepted.lock() {
            let same: bool = value.as_bytes().ct_eq(header.as_bytes()).into();
            if same && !context.is_revoked() {
                return Some(context.clone());
            }
        }
        let context = shared.contexts.authenticate(Some(header.as_bytes())).ok()?;
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
pub(crate) fn serve_stream(
    shared: Arc<Shared>,
    io: Box<dyn Stream>,
    binding: Binding,
    closer: CancellationToken,
    slot: Slot,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
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
    if connection.unauthenticated.lock().is_none() {
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
                async move { Ok::<_, Infallible>(super::handle::handle_contained(shared, connection, binding, req).await) }
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
