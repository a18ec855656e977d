//! Connections to upstreams: name resolution (with `resolve` overrides and
//! the address policy), TCP raced across addresses (Happy Eyeballs), and
//! rustls with the web roots plus extra CAs.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use super::eyeballs;
use crate::tls::unverified::AnyCertificate;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;

use crate::answer::error::{ConfigError, ProxyError};
use crate::policy::address::{self, Refusal};
use crate::policy::auth::ContextPlaces;
use crate::policy::routing::{AddressPolicy, HostPort, Scheme};

/// Which application protocols to offer an upstream TLS server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2` and `http/1.1`: for pooled requests.
    Any,
    /// `http/1.1` only: for WebSocket upgrades, which need HTTP/1.1.
    Http1,
}

pub(crate) struct UpstreamOptions {
    pub(crate) resolve: HashMap<String, SocketAddr>,
    pub(crate) extra_roots_pem: Vec<String>,
    pub(crate) connect_timeout: Duration,
    /// Test only: accept any upstream certificate (`testAllowInsecureUpstream`).
    pub(crate) insecure: bool,
    /// Upstream connections open at once, tunnels included, across contexts.
    pub(crate) max_connections: usize,
    /// How long a connection waits for a place under a cap before `503`.
    pub(crate) slot_wait: Duration,
    /// DNS lookups under way at once (each holds a thread of the blocking pool).
    pub(crate) max_dns_lookups: usize,
}

/// An upstream connection's places under the global and the context's caps,
/// held for as long as the connection lives.
pub(crate) struct UpstreamSlots {
    _global: OwnedSemaphorePermit,
    _context: OwnedSemaphorePermit,
}

/// A connection with its places under the caps.
pub(crate) struct Counted<T> {
    pub(crate) io: T,
    pub(crate) slots: UpstreamSlots,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Opens connections to upstreams. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    resolve: HashMap<String, SocketAddr>,
    tls_any: tokio_rustls::TlsConnector,
    tls_http1: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    own_addresses: OwnAddresses,
    slots: Arc<Semaphore>,
    slot_wait: Duration,
    dns_lookups: Arc<Semaphore>,
}

impl Connector {
    pub(crate) fn new(options: UpstreamOptions) -> Result<Self, ConfigError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for (i, pem) in options.extra_roots_pem.iter().enumerate() {
            let mut found = false;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ConfigError::new("upstreamCaPem", format!("[{i}]: {e}")))?;
                roots.add(cert).map_err(|e| ConfigError::new("upstreamCaPem", format!("[{i}]: {e}")))?;
                found = true;
            }
            if !found {
                return Err(ConfigError::new("upstreamCaPem", format!("[{i}]: no PEM certificate found")));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_config = |alpn: &[&[u8]]| -> Result<tokio_rustls::TlsConnector, ConfigError> {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ConfigError::new("tls", e))?;
            let builder = match options.insecure {
                true => {
                    builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
                }
                false => builder.with_root_certificates(roots.clone()),
            };
            let mut config = builder.with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        };
        Ok(Connector {
            inner: Arc::new(ConnectorInner {
                resolve: options.resolve,
                tls_any: tls_config(&[b"h2", b"http/1.1"])?,
                tls_http1: tls_config(&[b"http/1.1"])?,
                connect_timeout: options.connect_timeout,
                own_addresses: OwnAddresses::default(),
                slots: Arc::new(Semaphore::new(options.max_connections)),
                slot_wait: options.slot_wait,
                dns_lookups: Arc::new(Semaphore::new(options.max_dns_lookups)),
            }),
        })
    }

    /// The addresses of `addr` by the system resolver. Bounded: each lookup
    /// holds a thread of the blocking pool until the resolver answers, and
    /// keeps its place under the cap until then, even when the request that
    /// asked gave up (timed out) before.
    async fn lookup(&self, addr: &HostPort, context: &ContextPlaces) -> io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        if let Ok(ip) = addr.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, addr.port)]);
        }
        // The context's share first: a preview whose names never answer holds its own places, not all of them.
        let own_place = context.dns_lookups.clone().acquire_owned().await.map_err(io::Error::other)?;
        let place = self.inner.dns_lookups.clone().acquire_owned().await.map_err(io::Error::other)?;
        let (host, port) = (addr.host.clone(), addr.port);
        let lookup = tokio::task::spawn_blocking(move || {
            let _places = (own_place, place);
            (host.as_str(), port).to_socket_addrs().map(Iterator::collect)
        });
        lookup.await.map_err(io::Error::other)?
    }

    /// A place under `context`'s cap and under the global one, waiting at most
    /// `slot_wait` for both together; `503` past that.
    async fn slots(&self, context: &ContextPlaces) -> Result<UpstreamSlots, ProxyError> {
        let deadline = tokio::time::Instant::now() + self.inner.slot_wait;
        let take = |semaphore: Arc<Semaphore>, busy: fn(String) -> ProxyError, whose: &'static str| async move {
            match tokio::time::timeout_at(deadline, semaphore.acquire_owned()).await {
                Ok(Ok(permit)) => Ok(permit),
                _ => Err(busy(format!("too many upstream connections open {whose}; try again when some have closed"))),
            }
        };
        let context = take(context.upstream.clone(), ProxyError::PreviewAtCap, "for this preview").await?;
        let global = take(self.inner.slots.clone(), ProxyError::Unavailable, "in this proxy").await?;
        Ok(UpstreamSlots { _global: global, _context: context })
    }

    /// A TCP connection to `addr`, through the `resolve` overrides, else DNS
    /// (whose answers `policy` filters), counted against `context`'s cap and the global one.
    pub(crate) async fn connect_tcp(
        &self,
        addr: &HostPort,
        policy: &AddressPolicy,
        context: &ContextPlaces,
    ) -> Result<Counted<TcpStream>, ProxyError> {
        let slots = self.slots(context).await?;
        let attempt = async {
            let candidates = match self.inner.resolve.get(&addr.authority()) {
                Some(configured) => vec![*configured],
                None => {
                    let found = self.lookup(addr, context).await.map_err(|e| {
                        ProxyError::Dns(format!("cannot reach {addr}: DNS lookup failed: {e}")).caused_by(e)
                    })?;
                    allowed_addresses(addr, found, policy, &self.inner.own_addresses)?
                }
            };
            let stream = eyeballs::race(candidates)
                .await
                .map_err(|e| ProxyError::Refused(format!("cannot reach {addr}: {e}")).caused_by(e))?;
            let _ = stream.set_nodelay(true);
            Ok(Counted { io: stream, slots })
        };
        match tokio::time::timeout(self.inner.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Timeout(format!(
                "connecting to {addr} timed out after {:?}",
                self.inner.connect_timeout
            ))),
        }
    }

    /// A connection to `addr`, with TLS when `scheme` is https.
    pub(crate) async fn connect(
        &self,
        scheme: Scheme,
        addr: &HostPort,
        alpn: Alpn,
        policy: &AddressPolicy,
        context: &ContextPlaces,
    ) -> Result<UpstreamStream, ProxyError> {
        let Counted { io: tcp, slots } = self.connect_tcp(addr, policy, context).await?;
        if scheme == Scheme::Http {
            return Ok(UpstreamStream { io: UpstreamIo::Plain(tcp), _slots: slots });
        }
        let server_name = ServerName::try_from(addr.host.clone())
            .map_err(|e| ProxyError::Tls(format!("cannot reach {addr}: {e}")))?;
        let tls = match alpn {
            Alpn::Any => &self.inner.tls_any,
            Alpn::Http1 => &self.inner.tls_http1,
        };
        match tokio::time::timeout(self.inner.connect_timeout, tls.connect(server_name, tcp)).await {
            Ok(Ok(stream)) => Ok(UpstreamStream { io: UpstreamIo::Tls(Box::new(stream)), _slots: slots }),
            Ok(Err(e)) => Err(ProxyError::Tls(format!("cannot reach {addr}: TLS handshake failed: {e}")).caused_by(e)),
            Err(_) => Err(ProxyError::Timeout(format!("TLS handshake with {addr} timed out"))),
        }
    }
}

/// The DNS answers `policy` lets a request use (answers it refuses are skipped
/// when others remain); `Forbidden` when it leaves none.
fn allowed_addresses(
    addr: &HostPort,
    found: Vec<SocketAddr>,
    policy: &AddressPolicy,
    own: &OwnAddresses,
) -> Result<Vec<SocketAddr>, ProxyError> {
    let AddressPolicy::PublicOnly(private_networks) = policy else { return Ok(found) };
    if found.is_empty() {
        return Ok(found);
    }
    let own = own.current();
    let mut refusal = None;
    let mut allowed = Vec::with_capacity(found.len());
    for candidate in found {
        match address::check(candidate.ip(), &own, private_networks) {
            Ok(()) => allowed.push(candidate),
            Err(why) => refusal = refusal.or(Some((candidate.ip(), why))),
        }
    }
    match refusal {
        // The page learns only that the address is off limits: which address, and whether it is one of
        // this machine's, would let a page that controls a name's DNS map the user's networks.
        Some((ip, why)) if allowed.is_empty() => Err(ProxyError::Forbidden(format!(
            "{addr} is on this machine or a private network, which a preview may not reach unless the app allows it (allowPrivateNetwork, allowedNetworks)"
        ))
        .with_app_detail(match why {
            Refusal::ThisMachine => format!("resolves to {ip}, an address of this machine"),
            Refusal::PrivateNetwork => format!("resolves to {ip}, on a private or special-purpose network"),
        })),
        _ => Ok(allowed),
    }
}

/// The machine's own interface addresses (LAN, docker, VPN), read again at
/// most once a second: a VPN that comes up is known within a second.
pub(crate) struct OwnAddresses {
    cached: parking_lot::Mutex<(Option<std::time::Instant>, Arc<[std::net::IpAddr]>)>,
}

impl Default for OwnAddresses {
    fn default() -> Self {
        OwnAddresses { cached: parking_lot::Mutex::new((None, Arc::from([]))) }
    }
}

impl OwnAddresses {
    const FRESH_FOR: Duration = Duration::from_secs(1);

    fn current(&self) -> Arc<[std::net::IpAddr]> {
        let mut cached = self.cached.lock();
        if cached.0.is_none_or(|read| read.elapsed() > Self::FRESH_FOR) {
            // On failure keep what was read before: a refusal more is better than one less.
            if let Ok(interfaces) = if_addrs::get_if_addrs() {
                cached.1 = interfaces.iter().map(|interface| interface.ip()).collect();
            }
            cached.0 = Some(std::time::Instant::now());
        }
        cached.1.clone()
    }
}

/// A plain or TLS connection to an upstream, with its places under the caps.
pub(crate) struct UpstreamStream {
    io: UpstreamIo,
    _slots: UpstreamSlots,
}

enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Whether TLS negotiated HTTP/2 by ALPN.
    pub(crate) fn is_h2(&self) -> bool {
        matches!(&self.io, UpstreamIo::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"))
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Parses the `resolve` option: `"host:port" -> "ip:port"`.
pub(crate) fn parse_resolve(entries: HashMap<String, String>) -> Result<HashMap<String, SocketAddr>, ConfigError> {
    entries
        .into_iter()
        .map(|(from, to)| {
            let key = crate::policy::target::parse_authority(&from, None)
                .map_err(|e| ConfigError::new("resolve", format!("key {from:?}: {e}")))?
                .authority();
            let addr = to
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::new("resolve", format!("[{from:?}] must be ip:port, got {to:?}")))?;
            Ok((key, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::error::Failure;

    #[test]
    fn resolve_entries_are_normalised() {
        let parsed =
            parse_resolve(HashMap::from([("Cmux-A.Example:443".to_string(), "127.0.0.1:8443".to_string())])).unwrap();
        assert_eq!(parsed.get("cmux-a.example:443"), Some(&"127.0.0.1:8443".parse().unwrap()));
        assert!(parse_resolve(HashMap::from([("h".to_string(), "127.0.0.1:1".to_string())])).is_err());
        assert!(parse_resolve(HashMap::from([("h:1".to_string(), "nowhere".to_string())])).is_err());
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_routed_preview_keeps_off_local_and_private_answers() {
        let target = HostPort { host: "vm".into(), port: 80 };
        let own = OwnAddresses::default();
        let public_only = AddressPolicy::PublicOnly(Default::default());
        for refused in [addrs(&["127.0.0.1:80"]), addrs(&["10.1.1.1:80", "[fd00::1]:80"])] {
            let result = allowed_addresses(&target, refused.clone(), &public_only, &own);
            assert!(matches!(&result, Err(e) if e.failure() == Failure::Forbidden), "{refused:?}: {result:?}");
            assert_eq!(allowed_addresses(&target, refused.clone(), &AddressPolicy::Any, &own).unwrap(), refused);
        }
        // Refused answers are skipped when others remain.
        let mixed = addrs(&["127.0.0.1:80", "10.1.1.1:80", "93.184.215.14:80"]);
        assert_eq!(allowed_addresses(&target, mixed, &public_only, &own).unwrap(), addrs(&["93.184.215.14:80"]));
        let vpn = AddressPolicy::PublicOnly(
            crate::policy::address::PrivateNetworks::parse(false, &["10.0.0.0/8".into()]).unwrap(),
        );
        assert_eq!(allowed_addresses(&target, addrs(&["10.1.1.1:80"]), &vpn, &own).unwrap(), addrs(&["10.1.1.1:80"]));
    }

    #[test]
    fn own_interface_addresses_are_read() {
        let own = OwnAddresses::default().current();
        assert!(own.iter().any(|ip| ip.is_loopback()), "{own:?}");
    }
}
