//! The proxy: shared state, start and stop. Request handling lives in the
//! submodules, one concern each.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::error::{self, ConfigError};
use crate::policy::address::PrivateNetworks;
use crate::policy::auth::{Context, Contexts};
use crate::policy::routing::{Origin, Route};
use crate::upstream::connector::{self as upstream, Connector, UpstreamOptions};
use crate::upstream::pool::Pool;

use crate::tls::ca::CertificateAuthority;
use crate::tls::intercept::{listener_config, Interceptor};

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

pub(crate) struct Options {
    pub(crate) http2: bool,
    pub(crate) limits: Limits,
    pub(crate) resolve: HashMap<String, String>,
    pub(crate) upstream_ca_pem: Vec<String>,
    pub(crate) logging: bool,
    pub(crate) tls_interception: bool,
    /// Terminate TLS on the listener itself: the browser may use the proxy as an `https://` proxy.
    pub(crate) https_proxy: bool,
    /// The CA for intercepted hosts, as (certificate, key) PEM; generated when absent.
    pub(crate) ca_pem: Option<(String, String)>,
    /// The private networks every routed preview may reach (`allowPrivateNetwork`, `allowedNetworks`).
    pub(crate) private_networks: PrivateNetworks,
    /// Test only (cmux's `TEST_CMUX_PROXY_ORIGIN`): every request of a routed
    /// context, whatever its host, goes through this origin.
    pub(crate) test_proxy_origin: Option<String>,
    /// Test only (cmux's `TEST_ALLOW_INSECURE_UPSTREAM`): upstream certificates are not verified.
    pub(crate) insecure_upstream: bool,
}

/// Timeouts and sizes that bound what a client or an upstream can make the proxy hold.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// A request head must arrive within this (slowloris); else the connection is closed.
    pub(crate) header_read_timeout: Duration,
    /// A bigger request head gets `431`.
    pub(crate) max_head_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) tls_handshake_timeout: Duration,
    /// A tunnel or WebSocket with no bytes either way for this long is closed.
    pub(crate) idle_tunnel_timeout: Duration,
    /// Client connections beyond this get `503` and a close.
    pub(crate) max_connections: usize,
    /// An HTTP/2 client connection with no stream for this long gets GOAWAY.
    pub(crate) http2_idle_timeout: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` towards clients: a module-heavy page sends hundreds at once.
    pub(crate) http2_max_concurrent_streams: u32,
    /// When set, `CONNECT` to hosts that are not rewritten is allowed to these ports only.
    pub(crate) connect_ports: Option<Vec<u16>>,
    /// HTTP/2 streams a client may reset before the proxy accepted them, and
    /// streams the proxy may reset for a client's errors, before it calls the
    /// client abusive (GOAWAY): the "rapid reset" bound.
    pub(crate) http2_max_resets: usize,
    /// Upstream connections (tunnels included) open at once, in all and per context.
    pub(crate) max_upstream_connections: usize,
    pub(crate) max_upstream_per_context: usize,
    /// How long a connection waits for a place under those caps before `503`.
    pub(crate) upstream_slot_wait: Duration,
    /// DNS lookups under way at once.
    pub(crate) max_dns_lookups: usize,
    /// Unused upstream connections kept across origins; the least recently used go first.
    pub(crate) max_idle_upstream: usize,
    /// Client connections that have not authenticated yet, at once; and how long one may take to.
    pub(crate) max_unauthenticated: usize,
    pub(crate) unauthenticated_timeout: Duration,
    /// Contexts with a port of their own, at once.
    pub(crate) max_context_ports: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_head_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_tunnel_timeout: Duration::from_secs(600),
            max_connections: 4096,
            http2_idle_timeout: Duration::from_secs(300),
            http2_max_concurrent_streams: 1000,
            connect_ports: None,
            // The lowest allowance Chromium's reload pattern leaves alone, with half again as margin.
            // Measured with bench/h2-resets.mjs (headless Chromium 156 through the HTTPS proxy mode, a
            // 500-module page reloaded mid-load 60 times in about 10 s; h2 counts a reset stream for
            // 30 s): 50 and 100 drew GOAWAYs (4-5 connections, 30 failed requests at 50); 200 behaved
            // as 4000 did (2 connections, no failure). It was 4000 for every client before, authenticated
            // or not.
            http2_max_resets: 300,
            // Far above what a browser opens: 5 000 tunnels of one preview keep working.
            max_upstream_connections: 16_384,
            max_upstream_per_context: 8_192,
            upstream_slot_wait: Duration::from_secs(3),
            max_dns_lookups: 64,
            max_idle_upstream: 256,
            max_unauthenticated: 1024,
            unauthenticated_timeout: Duration::from_secs(10),
            max_context_ports: 256,
        }
    }
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

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Shared {
    pub(crate) contexts: Contexts,
    pub(crate) pool: Arc<Pool>,
    pub(crate) connector: Connector,
    pub(crate) stats: Stats,
    pub(crate) log: Log,
    pub(crate) events: Arc<crate::observe::events::Events>,
    pub(crate) http2: bool,
    /// Given to every routed context's route (see [`Options::test_proxy_origin`]).
    pub(crate) test_proxy_origin: Option<Origin>,
    /// Added to every routed context's route (see [`Options::private_networks`]).
    pub(crate) private_networks: PrivateNetworks,
    /// Terminates TLS inside loopback tunnels; `None` when interception is off.
    pub(crate) interceptor: Option<Interceptor>,
    /// Terminates TLS on the listener (HTTPS proxy mode); `None` when off.
    pub(crate) listener_tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) ca_cert_pem: String,
    pub(crate) ca_spki_sha256: String,
    pub(crate) limits: Limits,
    /// Cancelled by `stop`: every connection, tunnel and context token descends from it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// One permit per client connection on the listener.
    pub(crate) connection_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per listener connection that has not authenticated a request yet.
    pub(crate) unauthenticated_slots: Arc<tokio::sync::Semaphore>,
    /// One permit per context's own port.
    pub(crate) context_ports: Arc<tokio::sync::Semaphore>,
    /// Pipes for the blind tunnels that splice(2) relays.
    #[cfg(target_os = "linux")]
    pub(crate) pipes: crate::tunnel::splice::Pipes,
}

#[derive(Debug)]
pub(crate) enum StartError {
    AddrInUse(String),
    BadAddress(String),
    BadOption(ConfigError),
    Io(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AddrInUse(addr) => write!(f, "EADDRINUSE: {addr} is already in use"),
            StartError::BadAddress(addr) => {
                write!(f, "invalid listen address {addr:?}: expected ip:port such as 127.0.0.1:0")
            }
            StartError::BadOption(reason) => write!(f, "invalid option: {reason}"),
            StartError::Io(reason) => f.write_str(reason),
        }
    }
}

/// A running proxy server.
pub(crate) struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Proxy {
    /// Binds and starts serving. Must run on [`runtime`].
    pub(crate) async fn start(listen_addr: &str, options: Options) -> Result<Proxy, StartError> {
        let addr: SocketAddr = listen_addr.parse().map_err(|_| StartError::BadAddress(listen_addr.to_owned()))?;
        if options.https_proxy && !addr.ip().is_loopback() {
            // The listener's certificate chain is trusted by key for the whole app: it stays on this machine.
            return Err(StartError::BadOption(ConfigError::new(
                "httpsProxy",
                format!("needs a loopback listen address (127.0.0.1 or ::1), not {}; set httpsProxy: false", addr.ip()),
            )));
        }
        let limits = options.limits;
        let connector = Connector::new(UpstreamOptions {
            resolve: upstream::parse_resolve(options.resolve).map_err(StartError::BadOption)?,
            extra_roots_pem: options.upstream_ca_pem,
            connect_timeout: limits.connect_timeout,
            insecure: options.insecure_upstream,
            max_connections: limits.max_upstream_connections,
            slot_wait: limits.upstream_slot_wait,
            max_dns_lookups: limits.max_dns_lookups,
        })
        .map_err(StartError::BadOption)?;
        let test_proxy_origin = match &options.test_proxy_origin {
            Some(origin) => Some(Origin::parse(origin).ok_or_else(|| {
                StartError::BadOption(ConfigError::new(
                    "testCmuxProxyOrigin",
                    format!("must be an http(s) origin, got {origin:?}"),
                ))
            })?),
            None => None,
        };
        let ca = match &options.ca_pem {
            Some((cert, key)) => CertificateAuthority::from_pem(cert, key),
            None => CertificateAuthority::generate(),
        }
        .map_err(StartError::BadOption)?;
        let ca_cert_pem = ca.cert_pem().to_owned();
        let ca_spki_sha256 = ca.spki_sha256().to_owned();
        let listener_tls = match options.https_proxy {
            true => Some(tokio_rustls::TlsAcceptor::from(
                listener_config(&ca, addr.ip(), options.http2).map_err(StartError::BadOption)?,
            )),
            false => None,
        };
        let interceptor = options.tls_interception.then(|| Interceptor::new(ca, options.http2));
        let listener = listen(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => StartError::AddrInUse(addr.to_string()),
            _ => StartError::Io(format!("cannot listen on {addr}: {e}")),
        })?;
        let addr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            contexts: Contexts::new(shutdown.clone(), limits.max_upstream_per_context),
            pool: Pool::new(connector.clone(), tasks.clone(), shutdown.clone(), limits.max_idle_upstream),
            connector,
            stats: Stats::default(),
            log: Log(AtomicBool::new(options.logging)),
            events: Arc::default(),
            http2: options.http2,
            test_proxy_origin,
            private_networks: options.private_networks,
            interceptor,
            listener_tls,
            ca_cert_pem,
            ca_spki_sha256,
            shutdown,
            tasks,
            connection_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            unauthenticated_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_unauthenticated)),
            context_ports: Arc::new(tokio::sync::Semaphore::new(limits.max_context_ports)),
            #[cfg(target_os = "linux")]
            pipes: crate::tunnel::splice::Pipes::default(),
            limits,
        });
        shared.tasks.spawn(crate::ingress::server::accept_loop(shared.clone(), listener));
        shared.log.event(format_args!("listening on {addr} (http2: {})", options.http2));
        Ok(Proxy { shared, addr })
    }

    pub(crate) fn ca_cert_pem(&self) -> &str {
        &self.shared.ca_cert_pem
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn ca_spki_sha256(&self) -> &str {
        &self.shared.ca_spki_sha256
    }

    /// The `proxyRules` for a session: `https://` (HTTPS proxy mode) when
    /// `https` says so, by default when the listener terminates TLS.
    pub(crate) fn proxy_rules(&self, https: Option<bool>, context_id: Option<&str>) -> Result<String, ConfigError> {
        let https = https.unwrap_or(self.shared.listener_tls.is_some());
        if https && self.shared.listener_tls.is_none() {
            return Err(ConfigError::new("https", "the HTTPS proxy mode is off (StartOptions.httpsProxy: false)"));
        }
        if let Some(id) = context_id {
            let unknown = || ConfigError::new("contextId", format!("no context {id}"));
            let context = self.shared.contexts.by_id(id).ok_or_else(unknown)?;
            let port = context
                .own_port
                .get()
                .ok_or_else(|| ConfigError::new("contextId", format!("context {id} has no port of its own")))?;
            let scheme = if https { "https" } else { "http" };
            return Ok(format!("http={scheme}://127.0.0.1:{port};https={scheme}://127.0.0.1:{port}"));
        }
        let scheme = if https { "https" } else { "http" };
        let ip = match self.addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let proxy = format!("{scheme}://{ip}:{}", self.addr.port());
        Ok(format!("http={proxy};https={proxy}"))
    }

    /// A new context; with `own_port`, also a port of its own on `127.0.0.1`
    /// (see `context_port.rs`), counted against `maxContextPorts`.
    pub(crate) fn create_context(
        &self,
        web_contents_id: u32,
        route: Option<Route>,
        own_port: bool,
    ) -> Result<Arc<Context>, ConfigError> {
        let place = match own_port {
            true => Some(self.shared.context_ports.clone().try_acquire_owned().map_err(|_| {
                let max = self.shared.limits.max_context_ports;
                ConfigError::new(
                    "ownPort",
                    format!("too many contexts with a port of their own (maxContextPorts: {max})"),
                )
            })?),
            false => None,
        };
        let context = self.new_context(web_contents_id, route);
        if let Some(place) = place {
            match crate::ingress::context_port::open(&self.shared, &context, place) {
                Ok(port) => {
                    let _ = context.own_port.set(port);
                }
                Err(e) => {
                    self.release_context(&context.id);
                    return Err(ConfigError::new("ownPort", format!("cannot open a port for the context: {e}")));
                }
            }
        }
        Ok(context)
    }

    fn new_context(&self, web_contents_id: u32, route: Option<Route>) -> Arc<Context> {
        let route = route.map(|route| route.allowing(&self.shared.private_networks));
        let route = match &self.shared.test_proxy_origin {
            Some(origin) => route.map(|route| route.through_test_origin(origin.clone())),
            None => route,
        };
        let context = self.shared.contexts.create(web_contents_id, route);
        self.shared.log.event(format_args!("context {} for WebContents {web_contents_id}", context.id));
        self.shared.events.emit(|| crate::observe::events::Event {
            phase: Some("created"),
            ..crate::observe::events::Event::of("context", Some(&context))
        });
        context
    }

    pub(crate) fn release_context(&self, id: &str) -> bool {
        let Some(context) = self.shared.contexts.by_id(id) else { return false };
        let released = self.shared.contexts.release(id);
        if released {
            self.shared.log.event(format_args!("context {id} released"));
            self.shared.events.emit(|| crate::observe::events::Event {
                phase: Some("released"),
                ..crate::observe::events::Event::of("context", Some(&context))
            });
        }
        released
    }

    pub(crate) fn context(&self, id: &str) -> Option<Arc<Context>> {
        self.shared.contexts.by_id(id)
    }

    /// Delivers every event to `sink` from now on, until [`Proxy::unsubscribe`].
    pub(crate) fn subscribe(&self, sink: Arc<dyn crate::observe::events::EventSink>) -> u64 {
        self.shared.events.subscribe(sink)
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        self.shared.events.unsubscribe(id);
    }

    pub(crate) fn context_for_web_contents(&self, web_contents_id: u32) -> Option<Arc<Context>> {
        self.shared.contexts.for_web_contents(web_contents_id)
    }

    pub(crate) fn set_logging(&self, enabled: bool) {
        self.shared.log.0.store(enabled, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        let stats = &self.shared.stats;
        StatsSnapshot {
            contexts: self.shared.contexts.count(),
            active_connections: stats.connections.load(Ordering::Relaxed),
            active_tunnels: stats.tunnels.load(Ordering::Relaxed),
            total_requests: stats.requests.load(Ordering::Relaxed),
            accepted: std::array::from_fn(|i| stats.accepted[i].load(Ordering::Relaxed)),
            http2_streams: stats.http2_streams.load(Ordering::Relaxed),
            spliced_tunnels: stats.spliced_tunnels.load(Ordering::Relaxed),
            dropped_events: self.shared.events.dropped(),
        }
    }

    /// Stops accepting, closes every connection and tunnel, and returns once
    /// all of them (and the listener) are gone.
    pub(crate) async fn stop(&self) {
        self.shared.shutdown.cancel();
        self.shared.contexts.clear();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.log.event(format_args!("stopped"));
    }
}

impl Shared {
    /// The client's answer for a failure on the way upstream: logged, counted
    /// against the context, and an `error` event.
    pub(crate) fn fail(
        &self,
        context: Option<&Context>,
        error: &error::ProxyError,
    ) -> http::Response<crate::answer::reply::Body> {
        self.events.failure(context, None, error);
        crate::answer::reply::failure(&self.log, error)
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

/// A proxy dropped without `stop()` (its JavaScript object collected) still
/// stops: the listener closes and every connection ends, in the background.
impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.contexts.clear();
        self.shared.tasks.close();
    }
}

/// Counters behind `stats()`.
#[derive(Default)]
pub(crate) struct Stats {
    connections: AtomicUsize,
    tunnels: AtomicUsize,
    requests: AtomicU64,
    /// Client connections accepted on the listener, by [`ClientProtocol`].
    accepted: [AtomicU64; 4],
    http2_streams: AtomicU64,
    /// Blind tunnels relayed in the kernel (splice, Linux).
    spliced_tunnels: AtomicU64,
}

/// How a client connection on the listener talks to the proxy.
#[derive(Clone, Copy)]
pub(crate) enum ClientProtocol {
    Http1 = 0,
    H2c = 1,
    TlsHttp1 = 2,
    TlsH2 = 3,
}

pub(crate) struct StatsSnapshot {
    pub(crate) contexts: usize,
    pub(crate) active_connections: usize,
    pub(crate) active_tunnels: usize,
    pub(crate) total_requests: u64,
    /// Listener connections by protocol: HTTP/1.1, h2c, HTTP/1.1 over TLS, h2 over TLS.
    pub(crate) accepted: [u64; 4],
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
        self.accepted[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http2_stream_served(&self) {
        self.http2_streams.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn tunnel_spliced(&self) {
        self.spliced_tunnels.fetch_add(1, Ordering::Relaxed);
    }
}

/// The event log on stderr; off unless asked for. Never given credentials.
pub(crate) struct Log(AtomicBool);

impl Log {
    pub(crate) fn event(&self, message: fmt::Arguments<'_>) {
        if self.0.load(Ordering::Relaxed) {
            crate::observe::log::write(format!("[cmux-preview-proxy] {message}\n"));
        }
    }
}
