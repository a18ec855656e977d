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

/// One thing that happened, as the app sees it. Never carries credentials.
#[derive(Clone, Debug, Default)]
pub(crate) struct Event {
    /// `request`, `tunnel`, `websocket`, `error` or `context`.
    pub(crate) kind: &'static str,
    /// `open`/`close` (tunnel, websocket), `created`/`released` (context).
    pub(crate) phase: Option<&'static str>,
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
    /// How the client spoke: `http/1.1` or `h2`.
    pub(crate) protocol: Option<&'static str>,
    /// `blind`, `looked-into` or `intercepted` (tunnels).
    pub(crate) handling: Option<&'static str>,
    /// What failed (errors): `dns`, `refused`, `timeout`, `tls`, `forbidden`, `bad-request`, `upstream`.
    pub(crate) cause: Option<&'static str>,
    pub(crate) message: Option<String>,
}

impl Event {
    pub(crate) fn of(kind: &'static str, context: Option<&Context>) -> Event {
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
            ..Event::of("error", context)
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
        events.emit(|| Event::of("context", None));
        assert_eq!(taker.0.lock().len(), 1);
        assert_eq!(events.dropped(), 1);
        events.unsubscribe(id);
        events.emit(|| Event::of("context", None));
        assert_eq!(taker.0.lock().len(), 1);
        assert_eq!(events.dropped(), 2);
    }
}
