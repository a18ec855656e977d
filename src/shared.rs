//! The state every connection task shares, the runtime they run on, and the
//! place each connection holds under the cap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::error::ProxyError;
use crate::answer::reply::{self, Body};
use crate::config::Limits;
use crate::conn::{Binding, Stream};
use crate::observe::log::Log;
use crate::observe::stats::Stats;
use crate::policy::auth::{Context, Contexts};
use crate::tls::intercept::Interceptor;
use crate::upstream::connector::Connector;
use crate::upstream::pool::Pool;

/// The proxy's own runtime, apart from napi's, shared by every server in the process.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads())
            .thread_name("cmux-proxy")
            .enable_all()
            .build()
            .expect("cannot start the proxy's tokio runtime")
    });
    &RUNTIME
}

/// Half the machine's cores, 1 to 4. The proxy shares the machine with the
/// browser it serves, and one thread already relays about 30k small requests
/// a second. Fewer threads also wake each other less: on 2 cores (bench s1,
/// s6), 1 thread used 25.8 µs of CPU per request against 35.2 µs for 2, at
/// the same request rate.
fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}

/// A client connection's place under `max_connections`. The connection, its
/// responses under way and the tunnels it turns into each hold a clone: the
/// place frees when the last of them ends, and a connection whose hold no one
/// else has is idle. A connection served inside a tunnel holds its parent's.
pub(crate) type Slot = Arc<Hold>;

pub(crate) struct Hold {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _parent: Option<Slot>,
}

impl Hold {
    pub(crate) fn listener(permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        Arc::new(Hold { _permit: Some(permit), _parent: None })
    }

    pub(crate) fn inside(parent: Slot) -> Slot {
        Arc::new(Hold { _permit: None, _parent: Some(parent) })
    }

    /// Whether anyone but `slot`'s own connection holds it.
    pub(crate) fn is_busy(slot: &Slot) -> bool {
        Arc::strong_count(slot) > 1
    }
}

/// Serves HTTP inside a tunnel bound to a context: the ingress's server,
/// handed to the tunnels (which the ingress calls) so that neither layer
/// names the other.
pub(crate) type ServeTunnel =
    fn(Arc<Shared>, Box<dyn Stream>, Binding, CancellationToken, Slot) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Shared {
    pub(crate) serve_tunnel: ServeTunnel,
    pub(crate) contexts: Contexts,
    pub(crate) pool: Arc<Pool>,
    pub(crate) connector: Connector,
    pub(crate) stats: Stats,
    pub(crate) log: Log,
    pub(crate) events: Arc<crate::observe::events::Events>,
    pub(crate) http2: bool,
    /// Terminates TLS inside loopback tunnels; `None` when interception is off.
    pub(crate) interceptor: Option<Interceptor>,
    /// Terminates TLS on the listener (HTTPS proxy mode); `None` when off.
    pub(crate) listener_tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) limits: Limits,
    /// Cancelled by `stop`: every connection, tunnel and context token descends from it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) admission: Admission,
    /// Pipes for the blind tunnels that splice(2) relays.
    #[cfg(target_os = "linux")]
    pub(crate) pipes: crate::conn::pipes::Pipes,
}

/// The places client connections take: one each under `maxConnections`,
/// and one under `maxUnauthenticatedConnections` until a listener
/// connection authenticates a request.
pub(crate) struct Admission {
    pub(crate) connections: Arc<tokio::sync::Semaphore>,
    pub(crate) unauthenticated: Arc<tokio::sync::Semaphore>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        Admission {
            connections: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            unauthenticated: Arc::new(tokio::sync::Semaphore::new(limits.max_unauthenticated)),
        }
    }
}

impl Shared {
    /// The client's answer for a failure on the way upstream: logged, counted
    /// against the context, and an `error` event.
    pub(crate) fn fail(&self, context: Option<&Context>, error: &ProxyError) -> http::Response<Body> {
        self.log.event(format_args!("{error}"));
        self.events.failure(context, None, error);
        reply::failure(error)
    }
}

/// Connections a burst may queue before the proxy accepts them. Rust's
/// default (128) overflowed under a browser's burst, and every dropped SYN
/// costs the client a one-second retry; nginx uses 511, Envoy 1024.
const LISTEN_BACKLOG: u32 = 1024;

pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
