//! The proxy: start, contexts, stats, stop. It puts the layers together;
//! request handling lives in them.

#[cfg(test)]
mod tests;

pub(crate) use crate::config::{Limits, Options};
use crate::policy::address::PrivateNetworks;
pub(crate) use crate::shared::runtime;
use crate::shared::{listen, Admission, Shared};

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::error::ConfigError;
use crate::observe::log::Log;
use crate::observe::stats::{Stats, StatsSnapshot};
use crate::policy::auth::{Context, Contexts, PerContext};
use crate::policy::routing::{Origin, Route};
use crate::upstream::connector::{self as upstream, Connector, UpstreamOptions};
use crate::upstream::pool::Pool;

use crate::tls::ca::CertificateAuthority;
use crate::tls::intercept::{listener_config, Interceptor};
use crate::tls::live_ca::LiveCa;

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
    ca: Arc<LiveCa>,
    ca_spki_sha256: String,
    /// Given to every routed context's route (see [`Options::test_proxy_origin`]).
    test_proxy_origin: Option<Origin>,
    /// Added to every routed context's route (see [`Options::private_networks`]).
    private_networks: PrivateNetworks,
    /// One permit per context's own port.
    context_ports: Arc<tokio::sync::Semaphore>,
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
        // Issued again with the same key (and SPKI) as it nears its end: the SPKI is the CA's for good.
        let ca_spki_sha256 = ca.spki_sha256().to_owned();
        let ca = Arc::new(LiveCa::new(ca));
        let listener_tls = match options.https_proxy {
            true => Some(tokio_rustls::TlsAcceptor::from(
                listener_config(&ca, addr.ip(), options.http2).map_err(StartError::BadOption)?,
            )),
            false => None,
        };
        let interceptor = options
            .tls_interception
            .then(|| Interceptor::new(ca.clone(), options.http2, crate::policy::routing::is_intercepted_host));
        let listener = listen(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => StartError::AddrInUse(addr.to_string()),
            _ => StartError::Io(format!("cannot listen on {addr}: {e}")),
        })?;
        let addr = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared {
            serve_tunnel: crate::ingress::server::serve_stream,
            contexts: Contexts::new(
                shutdown.clone(),
                PerContext {
                    upstream: limits.max_upstream_per_context,
                    dns_lookups: limits.max_dns_lookups_per_context,
                },
            ),
            pool: Pool::new(connector.clone(), tasks.clone(), shutdown.clone(), limits.max_idle_upstream),
            connector,
            stats: Stats::default(),
            log: Log(AtomicBool::new(options.logging)),
            events: Arc::default(),
            http2: options.http2,
            interceptor,
            listener_tls,
            shutdown,
            tasks,
            admission: Admission::new(&limits),
            #[cfg(target_os = "linux")]
            pipes: crate::conn::pipes::Pipes::default(),
            limits,
        });
        shared.tasks.spawn(crate::ingress::server::accept_loop(shared.clone(), listener));
        shared.log.event(format_args!("listening on {addr} (http2: {})", options.http2));
        let context_ports = Arc::new(tokio::sync::Semaphore::new(shared.limits.max_context_ports));
        let private_networks = options.private_networks;
        Ok(Proxy { shared, addr, ca, ca_spki_sha256, test_proxy_origin, private_networks, context_ports })
    }

    /// The CA's current certificate (a CA the addon made is issued again before it ends).
    pub(crate) fn ca_cert_pem(&self) -> String {
        self.ca.current().ca.cert_pem().to_owned()
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn ca_spki_sha256(&self) -> &str {
        &self.ca_spki_sha256
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
                .map(|own| own.port)
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
        // The context first: one that replaces an earlier context of this WebContents has given back its
        // place among own ports by then, so a replacement works at the cap.
        let context = self.new_context(web_contents_id, route);
        if own_port {
            let opened = match self.context_ports.clone().try_acquire_owned() {
                Ok(place) => crate::ingress::context_port::open(&self.shared, &context, place)
                    .map_err(|e| ConfigError::new("ownPort", format!("cannot open a port for the context: {e}"))),
                Err(_) => {
                    let max = self.shared.limits.max_context_ports;
                    Err(ConfigError::new(
                        "ownPort",
                        format!("too many contexts with a port of their own (maxContextPorts: {max})"),
                    ))
                }
            };
            match opened {
                Ok(own_port) => {
                    let _ = context.own_port.set(own_port);
                }
                Err(e) => {
                    self.release_context(&context.id);
                    return Err(e);
                }
            }
        }
        Ok(context)
    }

    fn new_context(&self, web_contents_id: u32, route: Option<Route>) -> Arc<Context> {
        let route = route.map(|route| route.allowing(&self.private_networks));
        let route = match &self.test_proxy_origin {
            Some(origin) => route.map(|route| route.through_test_origin(origin.clone())),
            None => route,
        };
        let (context, replaced) = self.shared.contexts.create(web_contents_id, route);
        if let Some(replaced) = replaced {
            replaced.wait_own_port_closed();
        }
        self.shared.log.event(format_args!("context {} for WebContents {web_contents_id}", context.id));
        self.shared.events.emit(|| crate::observe::events::Event {
            phase: Some(crate::observe::events::Phase::Created),
            ..crate::observe::events::Event::of(crate::observe::events::EventKind::Context, Some(&context))
        });
        context
    }

    pub(crate) fn release_context(&self, id: &str) -> bool {
        let Some(context) = self.shared.contexts.by_id(id) else { return false };
        let released = self.shared.contexts.release(id);
        if released {
            context.wait_own_port_closed();
            self.shared.log.event(format_args!("context {id} released"));
            self.shared.events.emit(|| crate::observe::events::Event {
                phase: Some(crate::observe::events::Phase::Released),
                ..crate::observe::events::Event::of(crate::observe::events::EventKind::Context, Some(&context))
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
        self.shared.stats.snapshot(self.shared.contexts.count(), self.shared.events.dropped())
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

/// A proxy dropped without `stop()` (its JavaScript object collected) still
/// stops: the listener closes and every connection ends, in the background.
impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.contexts.clear();
        self.shared.tasks.close();
    }
}
