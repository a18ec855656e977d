//! Connections to upstreams: name resolution (with `resolve` overrides), TCP
//! with a connect timeout, rustls with the web roots plus extra CAs, and the
//! pooled hyper client (HTTP/2 when the upstream offers it by ALPN).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::pool::Origins;
use super::routing::{HostPort, Scheme};

/// Why an upstream could not be reached; decides between 502 and 504.
#[derive(Debug)]
pub struct ConnectError {
    pub timed_out: bool,
    pub message: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    fn new(addr: &HostPort, what: impl std::fmt::Display) -> Self {
        ConnectError { timed_out: false, message: format!("cannot reach {addr}: {what}") }
    }
}

/// Which application protocols to offer an upstream TLS server.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`: for pooled requests.
    Any,
    /// `http/1.1` only: for WebSocket upgrades, which need HTTP/1.1.
    Http1,
}

pub struct UpstreamOptions {
    pub resolve: HashMap<String, SocketAddr>,
    pub extra_roots_pem: Vec<String>,
    pub connect_timeout: Duration,
}

/// Opens connections to upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    origins: Arc<Origins>,
    resolve: HashMap<String, SocketAddr>,
    tls_any: tokio_rustls::TlsConnector,
    tls_http1: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(options: UpstreamOptions) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for (i, pem) in options.extra_roots_pem.iter().enumerate() {
            let mut found = false;
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("upstreamCaPem[{i}]: {e}"))?;
                roots.add(cert).map_err(|e| format!("upstreamCaPem[{i}]: {e}"))?;
                found = true;
            }
            if !found {
                return Err(format!("upstreamCaPem[{i}]: no PEM certificate found"));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_config = |alpn: &[&[u8]]| -> Result<tokio_rustls::TlsConnector, String> {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
        };
        Ok(Connector {
            inner: Arc::new(ConnectorInner {
                origins: Arc::default(),
                resolve: options.resolve,
                tls_any: tls_config(&[b"h2", b"http/1.1"])?,
                tls_http1: tls_config(&[b"http/1.1"])?,
                connect_timeout: options.connect_timeout,
            }),
        })
    }

    /// The origins this connector has connected to (for the pool's first-connection gate).
    pub fn origins(&self) -> Arc<Origins> {
        self.inner.origins.clone()
    }

    /// A TCP connection to `addr`, through the `resolve` overrides, else DNS.
    pub async fn connect_tcp(&self, addr: &HostPort) -> Result<TcpStream, ConnectError> {
        let attempt = async {
            let overridden = self.inner.resolve.get(&addr.authority()).copied();
            let candidates: Vec<SocketAddr> = match overridden {
                Some(socket_addr) => vec![socket_addr],
                None => tokio::net::lookup_host((addr.host.as_str(), addr.port))
                    .await
                    .map_err(|e| ConnectError::new(addr, format!("DNS lookup failed: {e}")))?
                    .collect(),
            };
            let mut last_error = None;
            for candidate in candidates {
                match TcpStream::connect(candidate).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(stream);
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(ConnectError::new(addr, last_error.map_or("no address".to_string(), |e| e.to_string())))
        };
        match tokio::time::timeout(self.inner.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError {
                timed_out: true,
                message: format!("connecting to {addr} timed out after {:?}", self.inner.connect_timeout),
            }),
        }
    }

    /// A connection to `addr`, with TLS when `scheme` is https.
    pub async fn connect(&self, scheme: Scheme, addr: &HostPort, alpn: Alpn) -> Result<UpstreamStream, ConnectError> {
        let tcp = self.connect_tcp(addr).await?;
        if scheme == Scheme::Http {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let server_name = ServerName::try_from(addr.host.clone()).map_err(|e| ConnectError::new(addr, e))?;
        let tls = match alpn {
            Alpn::Any => &self.inner.tls_any,
            Alpn::Http1 => &self.inner.tls_http1,
        };
        let handshake = tls.connect(server_name, tcp);
        match tokio::time::timeout(self.inner.connect_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(UpstreamStream::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(ConnectError::new(addr, format!("TLS handshake failed: {e}"))),
            Err(_) => Err(ConnectError { timed_out: true, message: format!("TLS handshake with {addr} timed out") }),
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let (scheme, addr) = super::routing::target_of_uri(&uri)
                .map_err(|e| ConnectError { timed_out: false, message: format!("bad upstream URI {uri}: {e}") })?;
            let stream = connector.connect(scheme, &addr, Alpn::Any).await?;
            connector.inner.origins.connected(&addr.host_header(scheme));
            Ok(TokioIo::new(stream))
        })
    }
}

/// A plain or TLS connection to an upstream.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Whether TLS negotiated HTTP/2 by ALPN.
    pub fn is_h2(&self) -> bool {
        matches!(self, UpstreamStream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2"))
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        if self.is_h2() {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Parses the `resolve` option: `"host:port" -> "ip:port"`.
pub fn parse_resolve(entries: HashMap<String, String>) -> Result<HashMap<String, SocketAddr>, String> {
    entries
        .into_iter()
        .map(|(from, to)| {
            let key = super::routing::parse_authority(&from, None)
                .map_err(|e| format!("resolve key {from:?}: {e}"))?
                .authority();
            let addr =
                to.parse::<SocketAddr>().map_err(|_| format!("resolve[{from:?}] must be ip:port, got {to:?}"))?;
            Ok((key, addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_entries_are_normalised() {
        let parsed =
            parse_resolve(HashMap::from([("Cmux-A.Example:443".to_string(), "127.0.0.1:8443".to_string())])).unwrap();
        assert_eq!(parsed.get("cmux-a.example:443"), Some(&"127.0.0.1:8443".parse().unwrap()));
        assert!(parse_resolve(HashMap::from([("h".to_string(), "127.0.0.1:1".to_string())])).is_err());
        assert!(parse_resolve(HashMap::from([("h:1".to_string(), "nowhere".to_string())])).is_err());
    }
}
