//! A stream whose first bytes were read ahead (to sniff them) and are replayed.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::conn::sniff::{sniff, Protocol};

/// Reads a stream's first bytes until they tell what it carries, and gives
/// them back in front of the rest. `None` when the stream ended first;
/// `TimedOut` when it stayed silent for `timeout`.
pub(crate) async fn sniff_stream<I: AsyncRead + Unpin>(
    mut io: I,
    timeout: Duration,
) -> io::Result<(Option<Protocol>, Prefixed<I>)> {
    let mut first = Vec::with_capacity(512);
    let sniffing = async {
        loop {
            if let Some(protocol) = sniff(&first) {
                return Ok(Some(protocol));
            }
            if io.read_buf(&mut first).await? == 0 {
                return Ok::<_, io::Error>(None);
            }
        }
    };
    let protocol = tokio::time::timeout(timeout, sniffing)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first bytes in time"))??;
    Ok((protocol, Prefixed::new(first, io)))
}

/// A stream whose first bytes were already read (to sniff them): they are
/// replayed before the rest.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: impl Into<Bytes>, io: I) -> Self {
        Prefixed { prefix: prefix.into(), io }
    }

    /// The bytes not yet replayed, and the stream.
    pub(crate) fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
