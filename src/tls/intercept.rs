//! The rustls server side: intercepted loopback tunnels, and the listener
//! itself when a browser uses the proxy as an `https://` proxy.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::ca::Leaf;
use super::live_ca::{ListenerCert, LiveCa};
use crate::answer::error::ConfigError;

pub(crate) struct Interceptor {
    /// The CA; each of its generations keeps one server config per host (a host's second tunnel reuses its leaf).
    ca: Arc<LiveCa>,
    /// Which SNI names get a leaf of their own (the hosts the proxy intercepts); others get the CONNECT host's.
    names_a_leaf: fn(&str) -> bool,
    alpn: Vec<Vec<u8>>,
}

impl Interceptor {
    /// `names_a_leaf`: whether an SNI name is one the proxy issues leaves for.
    pub(crate) fn new(ca: Arc<LiveCa>, http2: bool, names_a_leaf: fn(&str) -> bool) -> Self {
        Interceptor { ca, alpn: alpn(http2), names_a_leaf }
    }

    fn config_for(&self, host: &str) -> Result<Arc<ServerConfig>, ConfigError> {
        let generation = self.ca.current();
        generation
            .intercepted
            .get_or_try_insert(host, || server_config(generation.ca.issue_leaf(host)?, self.alpn.clone()))
    }

    /// Terminates the client's TLS with a leaf for its SNI (when that is a
    /// host the proxy intercepts) or else for the CONNECT host.
    pub(crate) async fn accept<I>(&self, io: I, connect_host: &str, timeout: Duration) -> io::Result<TlsStream<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
            let host = match start.client_hello().server_name() {
                Some(sni) if (self.names_a_leaf)(sni) => sni.to_ascii_lowercase(),
                _ => connect_host.to_owned(),
            };
            let config = self.config_for(&host).map_err(io::Error::other)?;
            start.into_stream(config).await
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// The listener's own TLS, for a browser that uses the proxy as an
/// `https://` proxy: a leaf for every address it may be reached at, from the
/// CA's current generation.
pub(crate) fn listener_config(
    ca: &Arc<LiveCa>,
    listen_ip: std::net::IpAddr,
    http2: bool,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let listen_ip = listen_ip.to_string();
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !names.contains(&listen_ip) && listen_ip != "0.0.0.0" && listen_ip != "::" {
        names.push(listen_ip);
    }
    let resolver = ListenerCert::new(ca.clone(), names)?;
    let mut config = server_builder()?.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

/// Application protocols offered to clients: `h2` only when HTTP/2 is on.
fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

fn server_config(leaf: Leaf, alpn: Vec<Vec<u8>>) -> Result<ServerConfig, ConfigError> {
    let mut config =
        server_builder()?.with_single_cert(leaf.chain, leaf.key).map_err(|e| ConfigError::new("leaf", e))?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Every TLS server side of the proxy: ring, rustls' safe protocol versions, no client certificates.
fn server_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, ConfigError> {
    Ok(ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", e))?
        .with_no_client_auth())
}
