//! The counters behind `stats()`, each updated in one place.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Default)]
pub(crate) struct Stats {
    connections: AtomicUsize,
    tunnels: AtomicUsize,
    requests: AtomicU64,
    accepted: Accepted<AtomicU64>,
    http2_streams: AtomicU64,
    /// Blind tunnels relayed in the kernel (splice, Linux).
    spliced_tunnels: AtomicU64,
}

/// How a client connection on a listener talks to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientProtocol {
    Http1,
    H2c,
    TlsHttp1,
    TlsH2,
}

/// Listener connections counted by [`ClientProtocol`].
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Accepted<T> {
    pub(crate) http1: T,
    pub(crate) h2c: T,
    pub(crate) tls_http1: T,
    pub(crate) tls_h2: T,
}

impl Accepted<AtomicU64> {
    fn counter(&self, protocol: ClientProtocol) -> &AtomicU64 {
        match protocol {
            ClientProtocol::Http1 => &self.http1,
            ClientProtocol::H2c => &self.h2c,
            ClientProtocol::TlsHttp1 => &self.tls_http1,
            ClientProtocol::TlsH2 => &self.tls_h2,
        }
    }

    fn read(&self) -> Accepted<u64> {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Accepted {
            http1: read(&self.http1),
            h2c: read(&self.h2c),
            tls_http1: read(&self.tls_http1),
            tls_h2: read(&self.tls_h2),
        }
    }
}

pub(crate) struct StatsSnapshot {
    pub(crate) contexts: usize,
    pub(crate) active_connections: usize,
    pub(crate) active_tunnels: usize,
    pub(crate) total_requests: u64,
    pub(crate) accepted: Accepted<u64>,
    pub(crate) http2_streams: u64,
    pub(crate) spliced_tunnels: u64,
    pub(crate) dropped_events: u64,
}

/// Decrements its gauge when dropped, however the task ends (even by panic).
pub(crate) struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub(crate) fn connection_opened(&self) -> Active<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        Active(&self.connections)
    }

    pub(crate) fn tunnel_opened(&self) -> Active<'_> {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        Active(&self.tunnels)
    }

    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_accepted(&self, protocol: ClientProtocol) {
        self.accepted.counter(protocol).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http2_stream_served(&self) {
        self.http2_streams.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn tunnel_spliced(&self) {
        self.spliced_tunnels.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter as it is now, with the two kept elsewhere.
    pub(crate) fn snapshot(&self, contexts: usize, dropped_events: u64) -> StatsSnapshot {
        StatsSnapshot {
            contexts,
            active_connections: self.connections.load(Ordering::Relaxed),
            active_tunnels: self.tunnels.load(Ordering::Relaxed),
            total_requests: self.requests.load(Ordering::Relaxed),
            accepted: self.accepted.read(),
            http2_streams: self.http2_streams.load(Ordering::Relaxed),
            spliced_tunnels: self.spliced_tunnels.load(Ordering::Relaxed),
            dropped_events,
        }
    }
}
