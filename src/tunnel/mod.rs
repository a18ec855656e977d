//! Byte streams that outlive a request: CONNECT tunnels (blind or looked
//! into), WebSocket upgrades over HTTP/1.1 and over HTTP/2 (RFC 8441).

pub(crate) mod relay;
#[cfg(target_os = "linux")]
pub(crate) mod splice;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::answer::error::ProxyError;
use crate::answer::reply::{self, empty_body, Body};
use crate::conn::prefixed::sniff_stream;
use crate::conn::sniff::Protocol;
use crate::conn::{Binding, Stream};
use crate::observe::events::{Event, EventKind, Handling, HandlingCell, OpenTunnel, Phase};
use crate::policy::auth::{Context, ContextPlaces};
use crate::policy::routing::{is_intercepted_host, upstream_for, Upstream};
use crate::policy::target::{parse_authority, HostPort, Scheme};
use crate::shared::{Shared, Slot};
use crate::upstream::connector::{Alpn, Counted};
use crate::upstream::request::{client_response, to_origin_form, upstream_request};
use relay::{join_streams, Traffic};

/// Answers a `CONNECT`. A routed context's CONNECTs to loopback names and to
/// hosts under `.cmux.local`/`.manaflow.local` are looked into; everything else
/// is relayed blindly once the target (or the cmux-proxy origin it is
/// rewritten to) accepted the connection.
pub(crate) async fn connect(
    shared: Arc<Shared>,
    context: Arc<Context>,
    mut req: Request<Incoming>,
    slot: Slot,
) -> Response<Body> {
    let target = match req.uri().authority().map(|a| parse_authority(a.as_str(), None)) {
        Some(Ok(target)) => target,
        Some(Err(e)) => {
            return shared.fail(Some(&context), &ProxyError::BadRequest(format!("bad CONNECT target: {e}")))
        }
        None => {
            return shared
                .fail(Some(&context), &ProxyError::BadRequest("bad CONNECT target: expected host:port".into()))
        }
    };
    let client = hyper::upgrade::on(&mut req);
    let cancel = context.revoked.child_token();
    let upstream = upstream_for(context.route.as_ref(), Scheme::Https, &target);
    let through_origin = upstream.rewritten && !upstream.extra_headers.is_empty();
    if through_origin && (shared.interceptor.is_none() || !is_intercepted_host(&target.host)) {
        // Nothing to look into: the cmux-proxy origin carries the tunnel, and its answer is ours.
        let upstream_stream = match open_tunnel(&shared, &upstream, &target, &context.places).await {
            Ok(stream) => stream,
            Err(error) => return shared.fail(Some(&context), &error),
        };
        let record = TunnelRecord::new(EventKind::Tunnel, &target, Some(&upstream.addr), &context, Handling::Blind);
        spawn_relay(shared, cancel, slot, record, client, upstream_stream);
        return established();
    }
    if context.route.is_some() && is_intercepted_host(&target.host) {
        shared.log.event(format_args!("CONNECT {target}: looking inside"));
        let record = TunnelRecord::new(EventKind::Tunnel, &target, None, &context, Handling::LookedInto);
        spawn_tunnel(shared.clone(), cancel.clone(), slot.clone(), record.clone(), async move {
            let client = TokioIo::new(client.await.map_err(client_lost)?);
            look_inside(shared, context, target, client, cancel, slot, &record).await
        });
        return established();
    }
    if shared.limits.connect_ports.as_ref().is_some_and(|ports| !ports.contains(&target.port)) {
        let error = ProxyError::Forbidden(format!("CONNECT to port {} is not allowed", target.port));
        return shared.fail(Some(&context), &error);
    }
    let upstream = match shared.connector.connect_tcp(&target, &upstream.policy, &context.places).await {
        Ok(upstream) => upstream,
        Err(error) => return shared.fail(Some(&context), &error),
    };
    shared.log.event(format_args!("CONNECT {target}: tunnel open"));
    let record = TunnelRecord::new(EventKind::Tunnel, &target, Some(&target), &context, Handling::Blind);
    let traffic = record.traffic.clone();
    spawn_tunnel(shared.clone(), cancel, slot, record, async move {
        let client = client.await.map_err(client_lost)?;
        relay_to_socket(&shared, client, upstream, &traffic).await.map_err(relay_failed)
    });
    established()
}

/// A tunnel that ended on a failure of its relay (idle too long, a peer reset).
fn relay_failed(e: io::Error) -> ProxyError {
    ProxyError::BadGateway(format!("the tunnel's relay failed: {e}")).caused_by(e)
}

/// The client's side of an upgrade never came (the connection went away first).
fn client_lost(e: hyper::Error) -> ProxyError {
    ProxyError::exchange("the client", e)
}

fn established() -> Response<Body> {
    let mut response = Response::new(empty_body());
    response.extensions_mut().insert(ReasonPhrase::from_static(b"Connection Established"));
    response
}

/// A tunnel or WebSocket, for its `open`/`close` events and its context's stats.
struct TunnelRecord {
    /// A tunnel or a WebSocket.
    kind: EventKind,
    /// What the client asked for: the CONNECT target, or the WebSocket's URL.
    target: String,
    /// Where the bytes go, when the proxy relays them itself.
    upstream: Option<String>,
    context: Arc<Context>,
    /// Known for sure once the first bytes were seen.
    handling: HandlingCell,
    /// Bytes relayed: from the client (`a_to_b`) and to it.
    traffic: Arc<Traffic>,
}

impl TunnelRecord {
    fn new(
        kind: EventKind,
        target: &dyn std::fmt::Display,
        upstream: Option<&dyn std::fmt::Display>,
        context: &Arc<Context>,
        handling: Handling,
    ) -> Arc<Self> {
        Arc::new(TunnelRecord {
            kind,
            target: target.to_string(),
            upstream: upstream.map(|u| u.to_string()),
            context: context.clone(),
            handling: HandlingCell::new(handling),
            traffic: Arc::default(),
        })
    }

    fn event(&self, phase: Phase) -> Event {
        Event {
            phase: Some(phase),
            url: Some(self.target.clone()),
            upstream: self.upstream.clone(),
            handling: Some(self.handling.get()),
            ..Event::of(self.kind, Some(&self.context))
        }
    }
}

/// Runs a tunnel's work as a tracked task that ends when `cancel` fires.
fn spawn_tunnel<F>(shared: Arc<Shared>, cancel: CancellationToken, slot: Slot, record: Arc<TunnelRecord>, work: F)
where
    F: std::future::Future<Output = Result<(), ProxyError>> + Send + 'static,
{
    let tasks = shared.tasks.clone();
    // Boxed: moved into `select!` below, it would take its size twice in the task.
    let work = Box::pin(work);
    tasks.spawn(async move {
        let _active = shared.stats.tunnel_opened();
        let _open = OpenTunnel::new(record.context.clone());
        let _slot = slot;
        let started = std::time::Instant::now();
        shared.events.emit(|| record.event(Phase::Open));
        tokio::select! {
            result = work => {
                if let Err(e) = result {
                    shared.log.event(format_args!("tunnel ended: {e}"));
                }
            }
            _ = cancel.cancelled() => {}
        }
        let (bytes_in, bytes_out) = (record.traffic.a_to_b.load(Relaxed), record.traffic.b_to_a.load(Relaxed));
        record.context.stats.bytes_in.fetch_add(bytes_in, Relaxed);
        record.context.stats.bytes_out.fetch_add(bytes_out, Relaxed);
        shared.events.emit(|| Event {
            duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            bytes_in: Some(bytes_in),
            bytes_out: Some(bytes_out),
            ..record.event(Phase::Close)
        });
    });
}

/// Once the client's side of the upgrade is handed over, relays it to `upstream`.
fn spawn_relay(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    slot: Slot,
    record: Arc<TunnelRecord>,
    client: OnUpgrade,
    upstream: impl Stream,
) {
    let (idle, traffic) = (shared.limits.idle_tunnel_timeout, record.traffic.clone());
    spawn_tunnel(shared, cancel, slot, record, async move {
        let client = TokioIo::new(client.await.map_err(client_lost)?);
        join_streams(client, upstream, idle, traffic).await.map_err(relay_failed)
    });
}

/// Relays a blind tunnel's client to the target's socket; in the kernel
/// (splice) when the client is a plain TCP connection of the listener on Linux.
async fn relay_to_socket(
    shared: &Shared,
    client: Upgraded,
    upstream: Counted<TcpStream>,
    traffic: &Arc<Traffic>,
) -> io::Result<()> {
    // The upstream's places under the caps are held until the tunnel ends.
    let Counted { io: upstream, slots: _slots } = upstream;
    let idle = shared.limits.idle_tunnel_timeout;
    #[cfg(target_os = "linux")]
    let client = match client_socket(client) {
        Ok((socket, first)) => {
            let mut upstream = upstream;
            // What the client sent after its CONNECT, already read. Let go of before the relay:
            // it holds on to the HTTP server's whole read buffer.
            for bytes in first {
                tokio::io::AsyncWriteExt::write_all(&mut upstream, &bytes).await?;
                traffic.a_to_b.fetch_add(bytes.len() as u64, Relaxed);
            }
            shared.stats.tunnel_spliced();
            return splice::splice_sockets(&shared.pipes, socket, upstream, idle, traffic).await;
        }
        Err(client) => client,
    };
    #[cfg(not(target_os = "linux"))]
    let client = TokioIo::new(client);
    join_streams(client, upstream, idle, traffic.clone()).await
}

/// The client's socket of a blind tunnel, with the bytes it sent that were
/// already read, when it is a plain TCP connection of the listener; otherwise
/// the upgraded stream as it is. A function apart, so that the tunnel's task
/// does not hold the TLS variant's large state while it waits.
#[cfg(target_os = "linux")]
fn client_socket(client: Upgraded) -> Result<(TcpStream, [bytes::Bytes; 2]), Box<dyn Stream>> {
    use crate::conn::prefixed::Prefixed;
    use crate::conn::ServedIo;
    match client.downcast::<TokioIo<ServedIo<TcpStream>>>() {
        Ok(hyper::upgrade::Parts { io, read_buf, .. }) => match io.into_inner() {
            ServedIo::Left(plain) => {
                let (unread, socket) = plain.into_parts();
                Ok((socket, [unread, read_buf]))
            }
            tls => Err(Box::new(Prefixed::new(read_buf, tls))),
        },
        Err(client) => Err(Box::new(TokioIo::new(client))),
    }
}

/// Serves plaintext HTTP inside a loopback tunnel itself; TLS and anything
/// else goes on to where the route says.
async fn look_inside(
    shared: Arc<Shared>,
    context: Arc<Context>,
    target: HostPort,
    client: impl Stream,
    cancel: CancellationToken,
    slot: Slot,
    record: &TunnelRecord,
) -> Result<(), ProxyError> {
    // A tunnel that stays silent is idle like any other.
    let (protocol, client) = sniff_stream(client, shared.limits.idle_tunnel_timeout).await.map_err(relay_failed)?;
    let Some(protocol) = protocol else { return Ok(()) };
    let interceptor = shared.interceptor.as_ref();
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            let binding = Binding { context, target, scheme: Scheme::Http };
            (shared.serve_tunnel)(shared.clone(), Box::new(client), binding, cancel, slot).await;
            Ok(())
        }
        Protocol::Tls if interceptor.is_some() => {
            let timeout = shared.limits.tls_handshake_timeout;
            let accepted = interceptor.expect("checked above").accept(client, &target.host, timeout).await;
            let tls = accepted
                .map_err(|e| ProxyError::BadRequest(format!("TLS inside the tunnel failed: {e}")).caused_by(e))?;
            shared.log.event(format_args!("CONNECT {target}: TLS intercepted"));
            record.handling.set(Handling::Intercepted);
            let binding = Binding { context, target, scheme: Scheme::Https };
            (shared.serve_tunnel)(shared.clone(), Box::new(tls), binding, cancel, slot).await;
            Ok(())
        }
        Protocol::Tls | Protocol::Opaque => {
            let upstream = upstream_for(context.route.as_ref(), Scheme::Https, &target);
            record.handling.set(Handling::Blind);
            let upstream_stream = match open_tunnel(&shared, &upstream, &target, &context.places).await {
                Ok(stream) => stream,
                Err(error) => {
                    shared.events.failure(Some(&context), None, &error);
                    return Err(error);
                }
            };
            let idle = shared.limits.idle_tunnel_timeout;
            join_streams(client, upstream_stream, idle, record.traffic.clone()).await.map_err(relay_failed)
        }
    }
}

/// A raw byte stream to where a routed loopback `target` lives: through the
/// cmux-proxy origin's own `CONNECT` when the route names one, else the dev box.
async fn open_tunnel(
    shared: &Shared,
    upstream: &Upstream,
    target: &HostPort,
    slots: &ContextPlaces,
) -> Result<Box<dyn Stream>, ProxyError> {
    if upstream.extra_headers.is_empty() {
        let stream = shared.connector.connect_tcp(&upstream.addr, &upstream.policy, slots).await?;
        return Ok(Box::new(stream));
    }
    let mut req = Request::connect(target.authority())
        .body(empty_body())
        .map_err(|e| ProxyError::BadRequest(format!("bad CONNECT target {target}: {e}")))?;
    for (name, value) in &upstream.extra_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            req.headers_mut().insert(*name, value);
        }
    }
    if let Ok(host) = HeaderValue::from_str(&target.authority()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let response = send_http1(shared, upstream, req, slots).await?;
    if response.status() != StatusCode::OK {
        return Err(ProxyError::BadGateway(format!("{} answered CONNECT with {}", upstream.addr, response.status())));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| ProxyError::exchange(&upstream.addr, e))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Sends one request on a fresh HTTP/1.1 connection that may be upgraded.
async fn send_http1(
    shared: &Shared,
    upstream: &Upstream,
    mut req: Request<Body>,
    slots: &ContextPlaces,
) -> Result<Response<Incoming>, ProxyError> {
    // Connecting is bounded by the connect timeout, the answer by the response timeout.
    let stream =
        shared.connector.connect(upstream.scheme, &upstream.addr, Alpn::Http1, &upstream.policy, slots).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::exchange(&upstream.addr, e))?;
    shared.tasks.spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    // A direct connection takes origin-form targets (authority-form for CONNECT).
    to_origin_form(&mut req);
    match tokio::time::timeout(shared.limits.response_timeout, sender.send_request(req)).await {
        Ok(sent) => sent.map_err(|e| ProxyError::exchange(&upstream.addr, e)),
        Err(_) => Err(ProxyError::no_response(&upstream.addr, shared.limits.response_timeout)),
    }
}

/// Sends a WebSocket handshake upstream. On `101`, joins the client's side
/// to the upgraded upstream and returns the cleaned `101`; on anything else,
/// the answer the client gets instead.
async fn switch_protocols(
    shared: &Arc<Shared>,
    context: &Arc<Context>,
    slot: Slot,
    client: OnUpgrade,
    (asked, upstream): (&str, &Upstream),
    req: Request<Body>,
) -> Result<Response<Body>, Response<Body>> {
    let mut response =
        send_http1(shared, upstream, req, &context.places).await.map_err(|e| shared.fail(Some(context), &e))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(client_response(response.map(|body| body.boxed())));
    }
    let upgraded = hyper::upgrade::on(&mut response);
    let idle = shared.limits.idle_tunnel_timeout;
    let record = TunnelRecord::new(EventKind::WebSocket, &asked, Some(&upstream.addr), context, Handling::Relayed);
    let traffic = record.traffic.clone();
    spawn_tunnel(shared.clone(), context.revoked.child_token(), slot, record, async move {
        let (client, upstream) = tokio::try_join!(client, upgraded).map_err(client_lost)?;
        join_streams(TokioIo::new(client), TokioIo::new(upstream), idle, traffic).await.map_err(relay_failed)
    });
    Ok(client_response(response.map(|_| empty_body())))
}

/// Relays an HTTP/1.1 upgrade (a WebSocket handshake): the client gets the
/// upstream's `101` and then both byte streams are joined.
pub(crate) async fn upgrade(
    shared: Arc<Shared>,
    context: Arc<Context>,
    mut req: Request<Incoming>,
    (asked, upstream): (String, Upstream),
    protocol: HeaderValue,
    slot: Slot,
) -> Response<Body> {
    let client = hyper::upgrade::on(&mut req);
    let req = upstream_request(req.map(|body| body.boxed()), &upstream, Some(protocol));
    switch_protocols(&shared, &context, slot, client, (&asked, &upstream), req).await.unwrap_or_else(|answer| answer)
}

/// Bridges an HTTP/2 extended `CONNECT` with `:protocol websocket` to the
/// upstream's HTTP/1.1 WebSocket: same frames, different handshake.
pub(crate) async fn websocket_over_h2(
    shared: Arc<Shared>,
    context: Arc<Context>,
    mut req: Request<Incoming>,
    (asked, upstream): (String, Upstream),
    slot: Slot,
) -> Response<Body> {
    let protocol = req.extensions().get::<hyper::ext::Protocol>().map(|p| p.as_str().to_owned());
    if !protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("websocket")) {
        return reply::text(
            StatusCode::NOT_IMPLEMENTED,
            "only the websocket protocol can be used with extended CONNECT",
        );
    }
    let client = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    parts.method = Method::GET;
    parts.headers.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
    let req = upstream_request(
        Request::from_parts(parts, empty_body()),
        &upstream,
        Some(HeaderValue::from_static("websocket")),
    );
    match switch_protocols(&shared, &context, slot, client, (&asked, &upstream), req).await {
        Ok(mut accepted) => {
            // RFC 8441: a 200 on the stream stands for the 101.
            *accepted.status_mut() = StatusCode::OK;
            for name in [header::UPGRADE, header::CONNECTION, header::SEC_WEBSOCKET_ACCEPT] {
                accepted.headers_mut().remove(name);
            }
            accepted
        }
        // On an HTTP/2 CONNECT a 2xx means "accepted": an upstream that answered the handshake with
        // a 2xx instead of 101 did not take the WebSocket, and must not look as if it did.
        Err(answer) if answer.status().is_success() => {
            let error = ProxyError::BadGateway(format!(
                "{} answered the WebSocket handshake with {} instead of 101",
                upstream.addr,
                answer.status()
            ));
            shared.fail(Some(&context), &error)
        }
        Err(answer) => answer,
    }
}

fn websocket_key() -> HeaderValue {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random number generator is unavailable");
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}
