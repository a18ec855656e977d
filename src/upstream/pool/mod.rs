//! The pool plain requests go through, on hyper's connection API: kept-alive
//! HTTP/1.1 connections, or one multiplexed HTTP/2 connection for an origin
//! that chose HTTP/2 by ALPN. It behaves as an HTTP/2 client should:
//!
//! - an origin with no live connection opens one, and a burst of requests
//!   waits for it instead of racing to open its own;
//! - a response is read to its end (`END_STREAM`) even when the client's side
//!   stopped reading at the last byte, so no completed stream is reset;
//! - a request the upstream did not process (refused, past a GOAWAY, met a
//!   connection that was closing) goes again on a fresh connection, and so
//!   does an idempotent request without a body that met a stale kept-alive
//!   connection (RFC 9112 §9.3.1); a POST is never replayed.

mod body;
mod retry;

use body::{InFlight, PooledBody, Release};
use retry::{is_idempotent, rebuild, refusal, Refusal};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, Request, Response, Uri};
use hyper::body::Body as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::error::{Failure, ProxyError};
use crate::answer::reply::Body;
use crate::policy::auth::ContextPlaces;
use crate::policy::routing::{AddressPolicy, HostPort, Scheme, Upstream};
use crate::upstream::connector::{Alpn, Connector};
use crate::upstream::request::to_origin_form;

/// A connection unused for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Kept-alive HTTP/1.1 connections kept per origin; more are closed. Large
/// enough for an HTTP/2 client's hundreds of concurrent streams to an HTTP/1.1
/// upstream: a smaller cap closed and reopened connections under such a load
/// (s4 of the bench fell from 28k to 8k req/s at 32).
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// Tries of one request: the first and up to two retries.
const MAX_ATTEMPTS: usize = 3;
/// How long a fully received response may take to deliver its `END_STREAM`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, PartialEq, Eq, Hash)]
struct OriginKey {
    scheme: Scheme,
    addr: HostPort,
    policy: AddressPolicy,
}

pub(crate) struct Pool {
    connector: Connector,
    origins: Mutex<HashMap<OriginKey, Arc<Origin>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    next_connection_id: AtomicU64,
    /// Unused connections kept across origins; past it the least recently used close.
    max_idle: usize,
}

struct Origin {
    key: OriginKey,
    /// Unused HTTP/1.1 connections kept for this origin (at most the pool's `max_idle`).
    max_idle: usize,
    state: Mutex<OriginState>,
    /// Fired when an opening attempt is over, to wake the requests that waited for it.
    opened: Notify,
    tasks: TaskTracker,
}

#[derive(Default)]
struct OriginState {
    multiplexed: Option<Multiplexed>,
    idle: Vec<Idle>,
    /// A connection is being opened and the origin may multiplex: others wait for it.
    opening: bool,
    /// The last connection negotiated HTTP/1.1: each request may open its own.
    speaks_http1: bool,
    /// Counts finished opening attempts; with `failure`, tells waiters theirs failed.
    attempts: u64,
    failure: Option<ProxyError>,
    /// The upstream places of the preview whose attempt made `failure`.
    failed_opener: Option<Arc<Semaphore>>,
}

#[derive(Clone)]
struct Multiplexed {
    id: u64,
    sender: http2::SendRequest<Body>,
    in_flight: Arc<AtomicUsize>,
    last_used: Instant,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Multiplexed {
    /// No stream under way: the connection is only kept for later requests.
    fn is_unused(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(Multiplexed),
}

/// A connection taken for one request; `reused` when it carried others before.
struct Lease {
    sender: Sender,
    reused: bool,
}

/// A request attempt that got no response head.
struct Failed {
    error: hyper::Error,
    /// Handed back by hyper: the request never left.
    unsent: Option<Request<Body>>,
    /// The upstream said it did not process the request (REFUSED_STREAM, past a GOAWAY).
    unprocessed: bool,
    /// The multiplexed connection it was sent on, if any.
    multiplexed: Option<u64>,
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        max_idle: usize,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            connector,
            origins: Mutex::default(),
            tasks,
            shutdown,
            next_connection_id: AtomicU64::new(1),
            max_idle,
        });
        pool.tasks.spawn(sweep_idle(Arc::downgrade(&pool), pool.shutdown.clone()));
        pool
    }

    /// Sends `req` (absolute URI) to `upstream` and returns the response head; the body streams. A
    /// connection it opens counts against `slots` (the context's cap) for as long as it lives.
    pub(crate) async fn send(
        &self,
        upstream: &Upstream,
        req: Request<Body>,
        slots: &ContextPlaces,
    ) -> Result<Response<Body>, ProxyError> {
        let origin = self.origin(upstream);
        let (mut parts, body) = req.into_parts();
        let uri = std::mem::take(&mut parts.uri);
        // Without a body, the request can be built again for a retry.
        let replay = body.is_end_stream().then(|| (parts.method.clone(), parts.headers.clone()));
        let idempotent = is_idempotent(&parts.method);
        let mut req = Request::from_parts(parts, body);
        for attempt in 1..=MAX_ATTEMPTS {
            let lease = self.checkout(&origin, slots).await?;
            let reused = lease.reused;
            let failed = match lease.send(&origin, req, &uri).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            let Failed { error, unsent, unprocessed, multiplexed } = failed;
            let fault = ProxyError::exchange(&upstream.addr, error);
            if reused && multiplexed.is_none() {
                // A stale kept-alive connection is rarely alone: its siblings went idle with it.
                origin.state.lock().idle.clear();
            }
            let retry = match unsent {
                Some(unsent) => Some(unsent),
                None if unprocessed || (reused && idempotent) => {
                    replay.as_ref().map(|(method, headers)| rebuild(method, headers))
                }
                None => None,
            };
            match retry {
                Some(again) if attempt < MAX_ATTEMPTS => req = again,
                _ => return Err(fault),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn origin(&self, upstream: &Upstream) -> Arc<Origin> {
        let key = OriginKey { scheme: upstream.scheme, addr: upstream.addr.clone(), policy: upstream.policy.clone() };
        let mut origins = self.origins.lock();
        origins
            .entry(key)
            .or_insert_with_key(|key| {
                Arc::new(Origin {
                    key: key.clone(),
                    max_idle: self.max_idle.min(MAX_IDLE_PER_ORIGIN),
                    state: Mutex::default(),
                    opened: Notify::new(),
                    tasks: self.tasks.clone(),
                })
            })
            .clone()
    }

    /// A live connection of `origin`, or a new one. While an origin that may
    /// multiplex has none, one request opens it and the others wait.
    async fn checkout(&self, origin: &Arc<Origin>, slots: &ContextPlaces) -> Result<Lease, ProxyError> {
        loop {
            let waiting = {
                let mut state = origin.state.lock();
                if let Some(lease) = state.take_live() {
                    return Ok(lease);
                }
                if !state.opening || state.speaks_http1 {
                    let gated = !state.speaks_http1;
                    state.opening |= gated;
                    Err(gated)
                } else {
                    Ok((origin.opened.notified(), state.attempts))
                }
            };
            let (opened, attempt) = match waiting {
                Ok(waiting) => waiting,
                Err(gated) => return self.open(origin, gated, slots).await,
            };
            opened.await;
            let state = origin.state.lock();
            if let Some(failure) = state.failure.as_ref().filter(|_| state.attempts != attempt) {
                // The attempt this request waited for failed: so does the request, at once. Unless the opener
                // had no place under its own preview's cap and this request is another preview's: that says
                // nothing of this one, which opens a connection itself on the next turn.
                let others_cap = failure.failure() == Failure::PreviewAtCap
                    && !state.failed_opener.as_ref().is_some_and(|opener| Arc::ptr_eq(opener, &slots.upstream));
                if !others_cap {
                    return Err(failure.clone());
                }
            }
        }
    }

    /// Opens a connection to `origin`; `gated` when others wait for it.
    async fn open(&self, origin: &Arc<Origin>, gated: bool, slots: &ContextPlaces) -> Result<Lease, ProxyError> {
        // A new connection may take the pool past its cap of unused ones once it is unused
        // itself: the oldest go first, leaving it room.
        self.trim_idle(1);
        let mut gate = OpeningGate { origin, gated, failure: None, opener: slots.upstream.clone() };
        let key = &origin.key;
        let opened = async {
            let stream = self.connector.connect(key.scheme, &key.addr, Alpn::Any, &key.policy, slots).await?;
            let multiplexed = stream.is_h2();
            let io = TokioIo::new(stream);
            let handshake_failed = |e: hyper::Error| ProxyError::exchange(&key.addr, e);
            if multiplexed {
                let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    // Fixed, generous windows: h2 sizes its allowance for small unread DATA frames from
                    // the connection window, and a dev server answering a burst of modules sends many.
                    .initial_stream_window_size(1 << 20)
                    .initial_connection_window_size(8 << 20)
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
                self.run_connection(connection);
                let connection = Multiplexed {
                    id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
                    sender,
                    in_flight: Arc::default(),
                    last_used: Instant::now(),
                };
                let mut state = origin.state.lock();
                state.speaks_http1 = false;
                state.multiplexed = Some(connection.clone());
                Ok::<_, ProxyError>(Lease { sender: Sender::Http2(connection), reused: false })
            } else {
                let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(handshake_failed)?;
                self.run_connection(connection);
                origin.state.lock().speaks_http1 = true;
                Ok(Lease { sender: Sender::Http1(sender), reused: false })
            }
        };
        let opened = opened.await;
        if let Err(e) = &opened {
            gate.failure = Some(e.clone());
        }
        opened
    }

    /// Closes the least recently used unused connections (kept-alive HTTP/1.1
    /// ones, and HTTP/2 ones with no stream) past `max_idle - room`, across origins:
    /// a page that touches hundreds of origins must not leave a socket open
    /// for each.
    fn trim_idle(&self, room: usize) {
        let max_idle = self.max_idle.saturating_sub(room);
        let origins: Vec<Arc<Origin>> = self.origins.lock().values().cloned().collect();
        let mut unused_since: Vec<Instant> = Vec::new();
        for origin in &origins {
            let state = origin.state.lock();
            unused_since.extend(state.idle.iter().map(|idle| idle.since));
            unused_since.extend(state.multiplexed.as_ref().filter(|c| c.is_unused()).map(|c| c.last_used));
        }
        if unused_since.len() <= max_idle {
            return;
        }
        // Everything unused since this moment or before goes.
        let excess = unused_since.len() - max_idle;
        let (_, cutoff, _) = unused_since.select_nth_unstable(excess - 1);
        let cutoff = *cutoff;
        for origin in &origins {
            let mut state = origin.state.lock();
            state.idle.retain(|idle| idle.since > cutoff);
            if state.multiplexed.as_ref().is_some_and(|c| c.is_unused() && c.last_used <= cutoff) {
                state.multiplexed = None;
            }
        }
    }

    /// Drives an upstream connection until it ends or the server stops.
    fn run_connection<C>(&self, connection: C)
    where
        C: std::future::Future + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Closes the opening attempt, whatever ends it (a dropped request included),
/// and wakes the requests that waited for it.
struct OpeningGate<'a> {
    origin: &'a Origin,
    gated: bool,
    failure: Option<ProxyError>,
    /// The opening preview's upstream places: whose cap a `PreviewAtCap` failure was.
    opener: Arc<Semaphore>,
}

impl Drop for OpeningGate<'_> {
    fn drop(&mut self) {
        if !self.gated {
            return;
        }
        let mut state = self.origin.state.lock();
        state.opening = false;
        state.attempts += 1;
        state.failure = self.failure.take();
        state.failed_opener = state.failure.is_some().then(|| self.opener.clone());
        drop(state);
        self.origin.opened.notify_waiters();
    }
}

impl OriginState {
    fn take_live(&mut self) -> Option<Lease> {
        if let Some(connection) = self.multiplexed.as_mut() {
            if !connection.sender.is_closed() {
                connection.last_used = Instant::now();
                return Some(Lease { sender: Sender::Http2(connection.clone()), reused: true });
            }
            self.multiplexed = None;
        }
        while let Some(idle) = self.idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(Lease { sender: Sender::Http1(idle.sender), reused: true });
            }
        }
        None
    }
}

impl Origin {
    /// Stops handing out multiplexed connection `id` (it is going away or gone).
    fn forget_multiplexed(&self, id: u64) {
        let mut state = self.state.lock();
        if state.multiplexed.as_ref().is_some_and(|c| c.id == id) {
            state.multiplexed = None;
        }
    }

    fn keep_idle(&self, sender: http1::SendRequest<Body>) {
        let mut state = self.state.lock();
        if state.idle.len() < self.max_idle {
            state.idle.push(Idle { sender, since: Instant::now() });
        }
    }
}

impl Lease {
    async fn send(self, origin: &Arc<Origin>, mut req: Request<Body>, uri: &Uri) -> Result<Response<Body>, Failed> {
        match self.sender {
            Sender::Http1(mut sender) => {
                *req.uri_mut() = uri.clone();
                to_origin_form(&mut req);
                if let Err(error) = sender.ready().await {
                    return Err(Failed { error, unsent: Some(req), unprocessed: false, multiplexed: None });
                }
                match sender.try_send_request(req).await {
                    Ok(response) => Ok(PooledBody::wrap(response, Release::Http1(origin.clone(), sender))),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        Err(Failed { error: e.into_error(), unsent, unprocessed: false, multiplexed: None })
                    }
                }
            }
            Sender::Http2(mut connection) => {
                // HTTP/2 names the host in `:authority`; a `Host` beside it (a retry of a request first
                // tried over HTTP/1.1 carries one) makes some servers (nginx before 1.27) answer 400.
                *req.uri_mut() = uri.clone();
                req.headers_mut().remove(header::HOST);
                connection.in_flight.fetch_add(1, Ordering::Relaxed);
                let in_flight = InFlight(connection.in_flight.clone());
                match connection.sender.try_send_request(req).await {
                    Ok(response) => Ok(PooledBody::wrap(response, Release::Http2(origin.clone(), in_flight))),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let error = e.into_error();
                        let refusal = refusal(&error);
                        if refusal != Some(Refusal::Stream) {
                            // Past a GOAWAY or broken: the connection takes no more requests.
                            origin.forget_multiplexed(connection.id);
                        }
                        let unprocessed = refusal.is_some();
                        Err(Failed { error, unsent, unprocessed, multiplexed: Some(connection.id) })
                    }
                }
            }
        }
    }
}

/// Closes connections unused for [`IDLE_TIMEOUT`] and forgets origins with none.
async fn sweep_idle(pool: std::sync::Weak<Pool>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(IDLE_TIMEOUT / 3);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(pool) = pool.upgrade() else { return };
        pool.trim_idle(0);
        pool.origins.lock().retain(|_, origin| {
            let mut state = origin.state.lock();
            state.idle.retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT);
            let unused = |c: &Multiplexed| {
                c.sender.is_closed()
                    || (c.in_flight.load(Ordering::Relaxed) == 0 && c.last_used.elapsed() >= IDLE_TIMEOUT)
            };
            if state.multiplexed.as_ref().is_some_and(unused) {
                state.multiplexed = None;
            }
            let empty = state.multiplexed.is_none() && state.idle.is_empty() && !state.opening;
            drop(state);
            !(empty && Arc::strong_count(origin) == 1)
        });
    }
}
