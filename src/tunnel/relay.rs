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

impl Traffic {
    fn total(&self) -> u64 {
        self.a_to_b.load(Ordering::Relaxed) + self.b_to_a.load(Ordering::Relaxed)
    }
}

/// The two directions of a relay, which of them ended, and the idle timeout:
/// what this relay and the splice relay (Linux) share. `D` moves bytes one way.
pub(crate) struct Joined<D> {
    a_to_b: D,
    b_to_a: D,
    ended: [bool; 2],
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl<D: Default> Joined<D> {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        let idle = Box::pin(tokio::time::sleep(idle_timeout));
        Joined { a_to_b: D::default(), b_to_a: D::default(), ended: [false; 2], idle, idle_timeout }
    }

    /// Polls each direction that has not ended with `poll_move(direction, cx,
    /// a_to_b)`: `Ready(Ok)` once both ended, `Ready(Err)` on the first error or
    /// once no byte moved for the idle timeout.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        traffic: &Traffic,
        mut poll_move: impl FnMut(&mut D, &mut Context<'_>, bool) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let before = traffic.total();
        for (i, (direction, a_to_b)) in [(&mut self.a_to_b, true), (&mut self.b_to_a, false)].into_iter().enumerate() {
            if !self.ended[i] {
                if let Poll::Ready(result) = poll_move(direction, cx, a_to_b) {
                    result?;
                    self.ended[i] = true;
                }
            }
        }
        if self.ended == [true; 2] {
            return Poll::Ready(Ok(()));
        }
        if traffic.total() != before {
            self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
        }
        ready!(self.idle.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "tunnel idle")))
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions have ended; fails
/// with `TimedOut` when no byte moved either way for `idle_timeout`.
pub(crate) async fn join_streams<A, B>(a: A, b: B, idle_timeout: Duration, traffic: Arc<Traffic>) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Relay { a, b, joined: Joined::new(idle_timeout), traffic }.await
}

struct Relay<A, B> {
    a: A,
    b: B,
    joined: Joined<Direction>,
    traffic: Arc<Traffic>,
}

#[derive(Default)]
struct Direction {
    /// Read but not yet written; empty (and unallocated) in the common case.
    pending: Vec<u8>,
    written: usize,
    eof: bool,
    unflushed: bool,
}

impl Direction {
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
        let Relay { a, b, joined, traffic } = self.get_mut();
        joined.poll(cx, traffic, |direction, cx, a_to_b| match a_to_b {
            true => direction.poll_move(cx, a, b, &traffic.a_to_b),
            false => direction.poll_move(cx, b, a, &traffic.b_to_a),
        })
    }
}

/// The ends of a relay under test, as a client and an upstream use them.
#[cfg(test)]
pub(crate) mod exchange {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// The client sends `size` patterned bytes and half-closes; the upstream
    /// checks it got them all in order, answers `bye` and closes; the client
    /// must get `bye` and its end.
    pub(crate) async fn both_ways<C, U>(mut client: C, mut upstream: U, size: u32)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let sent: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let client_side = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap();
        assert!(received == expected, "the upstream got every byte, in order");
        upstream.write_all(b"bye").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), b"bye");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_closes_pass_on() {
        let (client, proxy_client_side) = tokio::io::duplex(1024);
        let (proxy_upstream_side, upstream) = tokio::io::duplex(1024);
        let traffic = Arc::new(Traffic::default());
        let relaying =
            tokio::spawn(join_streams(proxy_client_side, proxy_upstream_side, Duration::from_secs(5), traffic.clone()));
        exchange::both_ways(client, upstream, 300_000).await;
        relaying.await.unwrap().unwrap();
        assert_eq!(traffic.a_to_b.load(Ordering::Relaxed), 300_000);
        assert_eq!(traffic.b_to_a.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_times_out() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _upstream) = tokio::io::duplex(64);
        let error = join_streams(a, b, Duration::from_secs(600), Arc::default()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
