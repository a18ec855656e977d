//! Structured events for the app (`onEvent`) and per-context counters
//! (`contextStats`). An event is only built when someone listens, and it is
//! handed to sinks that never block: a sink that cannot take it drops it, and
//! the drop is counted.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use parking_lot::RwLock;

use crate::answer::error::ProxyError;
use crate::answer::reply::Body;
use crate::policy::auth::Context;

/// What an event is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum EventKind {
    #[default]
    Request,
    Tunnel,
    WebSocket,
    Error,
    Context,
}

/// Where a tunnel, WebSocket or context is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    Close,
    Created,
    Released,
}

/// How the proxy carries a tunnel's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Handling {
    /// Relayed as they are, to the target.
    Blind,
    /// Served by the proxy itself (plaintext HTTP inside a loopback tunnel); known for sure once
    /// the first bytes were seen.
    LookedInto,
    /// TLS terminated with the proxy's leaf, then served.
    Intercepted,
    /// A WebSocket joined to its upstream after the handshake.
    Relayed,
}

impl Handling {
    fn from_u8(value: u8) -> Handling {
        match value {
            0 => Handling::Blind,
            1 => Handling::LookedInto,
            2 => Handling::Intercepted,
            _ => Handling::Relayed,
        }
    }
}

/// A tunnel's [`Handling`], which may change once its first bytes were seen; read by its events.
pub(crate) struct HandlingCell(std::sync::atomic::AtomicU8);

impl HandlingCell {
    pub(crate) fn new(handling: Handling) -> Self {
        HandlingCell(std::sync::atomic::AtomicU8::new(handling as u8))
    }

    pub(crate) fn set(&self, handling: Handling) {
        self.0.store(handling as u8, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> Handling {
        Handling::from_u8(self.0.load(Ordering::Relaxed))
    }
}

/// How a client sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestProtocol {
    Http1,
    H2,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Request => "request",
            EventKind::Tunnel => "tunnel",
            EventKind::WebSocket => "websocket",
            EventKind::Error => "error",
            EventKind::Context => "context",
        }
    }
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Close => "close",
            Phase::Created => "created",
            Phase::Released => "released",
        }
    }
}

impl Handling {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Handling::Blind => "blind",
            Handling::LookedInto => "looked-into",
            Handling::Intercepted => "intercepted",
            Handling::Relayed => "relayed",
        }
    }
}

impl RequestProtocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http1 => "http/1.1",
            RequestProtocol::H2 => "h2",
        }
    }
}

/// One thing that happened, as the app sees it. Never carries credentials.
#[derive(Clone, Debug, Default)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    pub(crate) phase: Option<Phase>,
    pub(crate) context_id: Option<String>,
    pub(crate) web_contents_id: Option<u32>,
    pub(crate) method: Option<String>,
    /// The URL (or CONNECT authority) as the client asked for it.
    pub(crate) url: Option<String>,
    /// Where it went: `scheme://host:port` of the upstream.
    pub(crate) upstream: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) duration_ms: Option<f64>,
    /// Bytes from the client, and to it.
    pub(crate) bytes_in: Option<u64>,
    pub(crate) bytes_out: Option<u64>,
    pub(crate) protocol: Option<RequestProtocol>,
    pub(crate) handling: Option<Handling>,
    /// What failed (errors): `dns`, `refused`, `timeout`, `tls`, `forbidden`, `bad-request`, `upstream`, `busy`.
    pub(crate) cause: Option<&'static str>,
    pub(crate) message: Option<String>,
}

impl Event {
    pub(crate) fn of(kind: EventKind, context: Option<&Context>) -> Event {
        Event {
            kind,
            context_id: context.map(|c| c.id.clone()),
            web_contents_id: context.map(|c| c.web_contents_id),
            ..Event::default()
        }
    }
}

/// Where events go; `deliver` must not block, and says whether it took the event.
pub(crate) trait EventSink: Send + Sync {
    fn deliver(&self, event: Event) -> bool;
}

#[derive(Default)]
pub(crate) struct Events {
    sinks: RwLock<Vec<(u64, Arc<dyn EventSink>)>>,
    listening: AtomicBool,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl Events {
    pub(crate) fn subscribe(&self, sink: Arc<dyn EventSink>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sinks = self.sinks.write();
        sinks.push((id, sink));
        self.listening.store(true, Ordering::Relaxed);
        id
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        let mut sinks = self.sinks.write();
        sinks.retain(|(sink_id, _)| *sink_id != id);
        self.listening.store(!sinks.is_empty(), Ordering::Relaxed);
    }

    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Builds the event (only when someone listens) and hands it to every sink.
    pub(crate) fn emit(&self, build: impl FnOnce() -> Event) {
        if !self.listening() {
            return;
        }
        let event = build();
        for (_, sink) in self.sinks.read().iter() {
            if !sink.deliver(event.clone()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// An upstream failure the proxy answered itself.
    pub(crate) fn failure(&self, context: Option<&Context>, url: Option<&str>, error: &ProxyError) {
        if let Some(context) = context {
            context.stats.record_error(error);
        }
        self.emit(|| Event {
            cause: Some(error.cause()),
            status: Some(error.status().as_u16()),
            message: Some(error.to_string()),
            url: url.map(str::to_owned),
            ..Event::of(EventKind::Error, context)
        });
    }
}

/// One open tunnel or WebSocket of a context, counted until dropped.
pub(crate) struct OpenTunnel(Arc<Context>);

impl OpenTunnel {
    pub(crate) fn new(context: Arc<Context>) -> Self {
        context.stats.open_tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(context)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.stats.open_tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A body whose data bytes are added to its [`Meter`] as they pass.
pub(crate) struct Metered<M> {
    inner: Body,
    meter: M,
}

impl<M> Metered<M> {
    pub(crate) fn new(inner: Body, meter: M) -> Self {
        Metered { inner, meter }
    }
}

/// Where a [`Metered`] body's bytes go.
pub(crate) trait Meter: Unpin {
    fn add(&mut self, bytes: u64);
}

/// A request body's bytes, shared with its record.
impl Meter for Arc<AtomicU64> {
    fn add(&mut self, bytes: u64) {
        self.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl<M: Meter> hyper::body::Body for Metered<M> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            let bytes = frame.data_ref().map_or(0, |d| d.len() as u64);
            self.meter.add(bytes);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's record, the meter of its response body: completed when that
/// body is done (sent or dropped) with the context's byte counters and the
/// `request` event.
pub(crate) struct RequestRecord {
    pub(crate) events: Arc<Events>,
    pub(crate) context: Arc<Context>,
    /// Built only when someone listens.
    pub(crate) event: Option<Event>,
    pub(crate) started: Instant,
    /// The request body's bytes (absent without a body).
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
    pub(crate) bytes_out: u64,
}

impl Meter for RequestRecord {
    fn add(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
        self.context.stats.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.context.stats.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        if let Some(mut event) = self.event.take() {
            event.duration_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
            event.bytes_in = Some(bytes_in);
            event.bytes_out = Some(self.bytes_out);
            self.events.emit(|| event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn telemetry_names_are_the_documented_strings() {
        let kinds = [EventKind::Request, EventKind::Tunnel, EventKind::WebSocket, EventKind::Error, EventKind::Context];
        assert_eq!(kinds.map(EventKind::as_str), ["request", "tunnel", "websocket", "error", "context"]);
        let phases = [Phase::Open, Phase::Close, Phase::Created, Phase::Released];
        assert_eq!(phases.map(Phase::as_str), ["open", "close", "created", "released"]);
        assert_eq!([RequestProtocol::Http1, RequestProtocol::H2].map(RequestProtocol::as_str), ["http/1.1", "h2"]);
        for handling in [Handling::Blind, Handling::LookedInto, Handling::Intercepted, Handling::Relayed] {
            let cell = HandlingCell::new(Handling::LookedInto);
            cell.set(handling);
            assert_eq!(cell.get(), handling);
        }
        assert_eq!(Handling::LookedInto.as_str(), "looked-into");
    }

    struct Collect(Mutex<Vec<Event>>, bool);

    impl EventSink for Collect {
        fn deliver(&self, event: Event) -> bool {
            if self.1 {
                self.0.lock().push(event);
            }
            self.1
        }
    }

    #[test]
    fn events_are_built_only_for_listeners_and_drops_are_counted() {
        let events = Events::default();
        events.emit(|| unreachable!("nobody listens"));
        let taker = Arc::new(Collect(Mutex::default(), true));
        let refuser = Arc::new(Collect(Mutex::default(), false));
        let id = events.subscribe(taker.clone());
        events.subscribe(refuser);
        events.emit(|| Event::of(EventKind::Context, None));
        assert_eq!(taker.0.lock().len(), 1);
        assert_eq!(events.dropped(), 1);
        events.unsubscribe(id);
        events.emit(|| Event::of(EventKind::Context, None));
        assert_eq!(taker.0.lock().len(), 1);
        assert_eq!(events.dropped(), 2);
    }
}
