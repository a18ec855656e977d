//! Joins two byte streams both ways, with half-closes passed on and an idle
//! timeout. A direction reads into a buffer on the stack of the poll that
//! found data ready, so an idle tunnel holds no buffer at all; bytes the other
//! side cannot take yet wait in a heap buffer that is freed once written.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;
/// Chunks a direction moves in one poll before it yields to other tasks.
const CHUNKS_PER_POLL: usize = 16;

/// Bytes a relay moved each way, readable while it runs and after it was dropped.
#[derive(Default)]
pub(crate) struct Traffic {
    pub(crate) a_to_b: AtomicU64,
    pub(crate) b_to_a: AtomicU64,
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended; fails
/// with `TimedOut` when no byte moved either way for `idle_timeout`.
pub(crate) async fn relay<A, B>(a: A, b: B, idle_timeout: Duration, traffic: Arc<Traffic>) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let idle = Box::pin(tokio::time::sleep(idle_timeout));
    Relay { a, b, a_to_b: Direction::default(), b_to_a: Direction::default(), idle, idle_timeout, traffic }.await
}

struct Relay<A, B> {
    a: A,
    b: B,
    a_to_b: Direction,
    b_to_a: Direction,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    traffic: Arc<Traffic>,
}

#[derive(Default)]
struct Direction {
    /// Read but not yet written; empty (and unallocated) in the common case.
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    unflushed: bool,
    done: bool,
}

impl Direction {
    /// Polls this direction unless it has ended; an error ends the relay.
    fn step<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W, moved: &AtomicU64) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if !self.done {
            if let Poll::Ready(result) = self.poll_move(cx, reader, writer, moved) {
                result?;
                self.done = true;
            }
        }
        Ok(())
    }

    /// Moves bytes from `reader` to `writer`, adding what it read to `moved`;
    /// `Ready(Ok)` once the reader ended and the writer was shut down.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        for _ in 0..CHUNKS_PER_POLL {
            while self.written < self.pending.len() {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.pending[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                if self.unflushed {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Pin::new(&mut *writer).poll_shutdown(cx);
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut chunk = ReadBuf::uninit(&mut stack);
            if Pin::new(&mut *reader).poll_read(cx, &mut chunk)?.is_pending() {
                // Nothing more to read for now: push out what the writer buffers.
                if self.unflushed {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            let data = chunk.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            moved.fetch_add(data.len() as u64, Ordering::Relaxed);
            match Pin::new(&mut *writer).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.unflushed = true;
                    self.pending.extend_from_slice(&data[n..]);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => self.pending.extend_from_slice(data),
            }
        }
        // Still busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<A, B> Future for Relay<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = this.traffic.a_to_b.load(Ordering::Relaxed) + this.traffic.b_to_a.load(Ordering::Relaxed);
        this.a_to_b.step(cx, &mut this.a, &mut this.b, &this.traffic.a_to_b)?;
        this.b_to_a.step(cx, &mut this.b, &mut this.a, &this.traffic.b_to_a)?;
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok(()));
        }
        let after = this.traffic.a_to_b.load(Ordering::Relaxed) + this.traffic.b_to_a.load(Ordering::Relaxed);
        if after != before {
            this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
        }
        match this.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_closes_pass_on() {
        let (mut client, proxy_client_side) = tokio::io::duplex(1024);
        let (proxy_upstream_side, mut upstream) = tokio::io::duplex(1024);
        let traffic = Arc::new(Traffic::default());
        let relaying =
            tokio::spawn(relay(proxy_client_side, proxy_upstream_side, Duration::from_secs(5), traffic.clone()));
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, big);
        upstream.write_all(b"bye").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        relaying.await.unwrap().unwrap();
        assert_eq!(traffic.a_to_b.load(Ordering::Relaxed), 300_000);
        assert_eq!(traffic.b_to_a.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_times_out() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _upstream) = tokio::io::duplex(64);
        let error = relay(a, b, Duration::from_secs(600), Arc::default()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
