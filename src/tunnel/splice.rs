//! Blind tunnels between two TCP sockets on Linux: splice(2) moves the bytes
//! from one socket into a pipe and from the pipe into the other socket, inside
//! the kernel, so they are never copied to user space.
//!
//! A direction holds a pipe only while bytes are in it, taken from a small
//! pool shared by the proxy's tunnels: an idle tunnel holds no buffer and no
//! extra file descriptor, as with the portable relay.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::conn::pipes::{Pipe, Pipes, CHUNK};
use crate::tunnel::relay::{Joined, Traffic};

/// Splices a direction makes in one poll before it yields to other tasks.
const SPLICES_PER_POLL: usize = 32;

/// Relays `a` and `b` both ways until both directions ended (half-closes
/// passed on). Fails with `TimedOut` once no byte moved for `idle_timeout`.
/// A hand-written future, as the portable relay: a few hundred bytes per
/// tunnel, where `async` pumps joined under a timer took over a kilobyte.
pub(crate) fn splice_sockets<'a>(
    pipes: &'a Pipes,
    a: TcpStream,
    b: TcpStream,
    idle_timeout: Duration,
    traffic: &'a Traffic,
) -> impl Future<Output = io::Result<()>> + 'a {
    SpliceRelay { pipes, a, b, joined: Joined::new(idle_timeout), traffic }
}

struct SpliceRelay<'a> {
    pipes: &'a Pipes,
    a: TcpStream,
    b: TcpStream,
    joined: Joined<Pump>,
    traffic: &'a Traffic,
}

impl Future for SpliceRelay<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let SpliceRelay { pipes, a, b, joined, traffic } = self.get_mut();
        joined.poll(cx, traffic, |pump, cx, a_to_b| match a_to_b {
            true => pump.poll_move(cx, pipes, a, b, &traffic.a_to_b),
            false => pump.poll_move(cx, pipes, b, a, &traffic.b_to_a),
        })
    }
}

/// One direction: socket to pipe to socket.
#[derive(Default)]
struct Pump {
    /// A pipe and the bytes in it, held only while there are some.
    in_flight: Option<(Pipe, usize)>,
}

impl Pump {
    /// Moves bytes from `from` to `to`; `Ready(Ok)` once `from` ended and `to`
    /// was shut down for writing.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        pipes: &Pipes,
        from: &TcpStream,
        to: &TcpStream,
        moved: &AtomicU64,
    ) -> Poll<io::Result<()>> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        for _ in 0..SPLICES_PER_POLL {
            if let Some((pipe, bytes)) = &mut self.in_flight {
                ready!(to.poll_write_ready(cx))?;
                match to.try_io(Interest::WRITABLE, || Ok(splice(&pipe.read, None, to, None, *bytes, flags)?)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => *bytes -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if *bytes == 0 {
                    let (empty, _) = self.in_flight.take().expect("bytes were in flight");
                    pipes.give_back(empty);
                }
                continue;
            }
            ready!(from.poll_read_ready(cx))?;
            let empty = pipes.take()?;
            match from.try_io(Interest::READABLE, || Ok(splice(from, None, &empty.write, None, CHUNK, flags)?)) {
                Ok(0) => {
                    pipes.give_back(empty);
                    return Poll::Ready(socket2::SockRef::from(to).shutdown(Shutdown::Write).or_else(already_closed));
                }
                Ok(n) => {
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    self.in_flight = Some((empty, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipes.give_back(empty),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Still busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Shutting down a socket the peer already closed is not an error of the relay.
fn already_closed(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair of loopback TCP sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_in_order_and_half_closes_pass_on() {
        let (client, proxy_client_side) = socket_pair().await;
        let (proxy_upstream_side, upstream) = socket_pair().await;
        let pipes = std::sync::Arc::new(Pipes::default());
        let traffic = std::sync::Arc::new(Traffic::default());
        let relaying = tokio::spawn({
            let (pipes, traffic) = (pipes.clone(), traffic.clone());
            async move {
                splice_sockets(&pipes, proxy_client_side, proxy_upstream_side, Duration::from_secs(5), &traffic).await
            }
        });
        crate::tunnel::relay::exchange::both_ways(client, upstream, 5_000_000).await;
        relaying.await.unwrap().unwrap();
        assert_eq!(traffic.a_to_b.load(Ordering::Relaxed), 5_000_000);
        assert_eq!(traffic.b_to_a.load(Ordering::Relaxed), 3);
        let pooled = pipes.pooled();
        assert!((1..=2).contains(&pooled), "pipes went back to the pool empty: {pooled}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_times_out() {
        let (_client, a) = socket_pair().await;
        let (b, _upstream) = socket_pair().await;
        let pipes = Pipes::default();
        let error = splice_sockets(&pipes, a, b, Duration::from_secs(600), &Traffic::default()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_peer_that_resets_ends_the_relay_with_an_error() {
        let (client, a) = socket_pair().await;
        let (b, upstream) = socket_pair().await;
        let pipes = Pipes::default();
        // SO_LINGER 0: closing sends RST.
        socket2::SockRef::from(&upstream).set_linger(Some(Duration::ZERO)).unwrap();
        drop(upstream);
        let mut client = client;
        let _writing = tokio::spawn(async move { client.write_all(&[7u8; 200_000]).await });
        let relayed = splice_sockets(&pipes, a, b, Duration::from_secs(5), &Traffic::default()).await;
        assert!(relayed.is_err(), "writing into a reset connection fails: {relayed:?}");
    }
}
