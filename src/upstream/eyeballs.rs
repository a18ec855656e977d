//! Happy Eyeballs (RFC 8305): a host's addresses raced, families
//! alternating, so that a black-holed address cannot use up the connect timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

/// How long an attempt to one address runs alone before the next address is
/// tried beside it (RFC 8305 §5 recommends 250 ms).
const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to the first address that answers. Addresses are tried in the
/// order of RFC 8305 (families alternating, the resolver's first family first);
/// each attempt gets [`CONNECTION_ATTEMPT_DELAY`] alone before the next one
/// starts beside it, so a black-holed address cannot use up the connect timeout.
pub(super) async fn race(candidates: Vec<SocketAddr>) -> io::Result<TcpStream> {
    let mut queue = interleave_families(candidates).into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
    loop {
        if attempts.is_empty() {
            match queue.next() {
                Some(addr) => attempts.push(Box::pin(TcpStream::connect(addr))),
                None => return Err(last_error),
            }
        }
        tokio::select! {
            Some(result) = attempts.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = e,
            },
            _ = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY), if queue.len() > 0 => {
                if let Some(addr) = queue.next() {
                    attempts.push(Box::pin(TcpStream::connect(addr)));
                }
            }
        }
    }
}

/// Alternates address families, starting with the family of the first address.
fn interleave_families(candidates: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = candidates.first() else { return candidates };
    let first_is_v6 = first.is_ipv6();
    let (mut preferred, mut other): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    preferred.reverse();
    other.reverse();
    let mut ordered = Vec::with_capacity(preferred.len() + other.len());
    while let Some(next) = preferred.pop() {
        ordered.push(next);
        ordered.extend(other.pop());
    }
    ordered.extend(other.into_iter().rev());
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_from_the_first() {
        let ordered = interleave_families(addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]));
        assert_eq!(ordered, addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"]));
        let ordered = interleave_families(addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "10.0.0.3:1"]));
        assert_eq!(ordered, addrs(&["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "10.0.0.3:1"]));
    }

    /// A loopback address whose SYNs go unanswered: a listener that never
    /// accepts, its accept queue filled until a connect attempt hangs.
    async fn black_hole() -> (SocketAddr, Vec<TcpStream>, tokio::net::TcpListener) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        (addr, queued, listener)
    }

    #[tokio::test]
    async fn a_black_holed_address_does_not_hold_up_the_next() {
        let (hole, _queued, _listener) = black_hole().await;
        let live_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = live_listener.local_addr().unwrap();
        // Without racing, the first attempt would wait for the kernel's connect timeout (minutes).
        let stream = tokio::time::timeout(Duration::from_secs(5), race(vec![hole, live])).await;
        let stream = stream.expect("the next address was never tried").unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live);
    }
}
