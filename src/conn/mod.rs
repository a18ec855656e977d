//! Connection types shared by the layers that serve and relay them: any
//! byte stream, what a tunnel's inner server is bound to, what the first
//! bytes say, a stream whose sniffed bytes are replayed, splice pipes.

#[cfg(target_os = "linux")]
pub(crate) mod pipes;
pub(crate) mod prefixed;
pub(crate) mod sniff;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::either::Either;

use crate::policy::auth::Context;
use crate::policy::target::{HostPort, Scheme};
use prefixed::Prefixed;

/// Any byte stream a connection or a tunnel can carry.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// What a tunnel's inner HTTP server already knows: who opened the tunnel and
/// to where, so the requests inside need no credentials and no absolute URI.
#[derive(Clone)]
pub(crate) struct Binding {
    pub(crate) context: Arc<Context>,
    pub(crate) target: HostPort,
    pub(crate) scheme: Scheme,
}

/// What the HTTP server of a connection reads and writes: the stream as it
/// came, or the TLS inside it (the listener in HTTPS proxy mode).
pub(crate) type ServedIo<I> = Either<Prefixed<I>, tokio_rustls::server::TlsStream<Prefixed<I>>>;
