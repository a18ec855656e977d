//! The async core against real sockets, in-process: the pool's gate and
//! retries with hyper upstreams, revocation and `stop()` with a running proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Limits, Options, Proxy};
use crate::answer::error::Failure;
use crate::answer::reply::{empty_body, Body};
use crate::policy::auth::ContextPlaces;
use crate::policy::routing::{upstream_for, HostPort, Scheme, Upstream};
use crate::tls::ca::CertificateAuthority;
use crate::upstream::connector::{Connector, UpstreamOptions};
use crate::upstream::pool::Pool;

/// An HTTP/2-over-TLS upstream that counts its connections.
struct H2Upstream {
    addr: SocketAddr,
    ca_pem: String,
    connections: Arc<AtomicUsize>,
    /// Connections accepted from now on close gracefully (GOAWAY) when this token is cancelled.
    goaway: Arc<parking_lot::Mutex<CancellationToken>>,
}

impl H2Upstream {
    /// Closes the open connections, as a server idling them out does.
    fn close_connections(&self) {
        std::mem::take(&mut *self.goaway.lock()).cancel();
    }
}

async fn h2_upstream(host: &str) -> H2Upstream {
    let ca = CertificateAuthority::generate().unwrap();
    let leaf = ca.issue_leaf(host).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = H2Upstream {
        addr: listener.local_addr().unwrap(),
        ca_pem: ca.cert_pem().to_owned(),
        connections: Arc::default(),
        goaway: Arc::default(),
    };
    let (connections, goaway) = (upstream.connections.clone(), upstream.goaway.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, goaway) = (acceptor.clone(), goaway.lock().clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("ok {}", req.uri().path())))))
                });
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service);
                tokio::pin!(served);
                tokio::select! {
                    _ = &mut served => return,
                    _ = goaway.cancelled() => served.as_mut().graceful_shutdown(),
                }
                let _ = served.await;
            });
        }
    });
    upstream
}

fn pool_for(host_port: &str, addr: SocketAddr, extra_roots_pem: Vec<String>) -> Arc<Pool> {
    let connector = Connector::new(UpstreamOptions {
        resolve: HashMap::from([(host_port.to_owned(), addr)]),
        extra_roots_pem,
        connect_timeout: Duration::from_secs(5),
        insecure: false,
        max_connections: 1024,
        slot_wait: Duration::from_secs(1),
        max_dns_lookups: 4,
    })
    .unwrap();
    Pool::new(connector, TaskTracker::new(), CancellationToken::new(), 256)
}

/// A context's places, for requests sent through the pool directly.
fn slots() -> ContextPlaces {
    ContextPlaces {
        upstream: Arc::new(tokio::sync::Semaphore::new(1024)),
        dns_lookups: Arc::new(tokio::sync::Semaphore::new(4)),
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(empty_body()).unwrap()
}

async fn body_text(response: Response<Body>) -> String {
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// 50 requests at once to `upstream`, all of which must succeed.
async fn burst(pool: &Arc<Pool>, upstream: &Upstream) {
    let sends = (0..50).map(|i| {
        let pool = pool.clone();
        let upstream = upstream.clone();
        tokio::spawn(
            async move { pool.send(&upstream, get(&format!("https://devbox.cmux.local/m/{i}")), &slots()).await },
        )
    });
    for (i, send) in sends.enumerate() {
        let response = send.await.unwrap().unwrap();
        assert_eq!(body_text(response).await, format!("ok /m/{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_shares_one_connection_each_time_the_origin_has_none() {
    let upstream = h2_upstream("devbox.cmux.local").await;
    let pool = pool_for("devbox.cmux.local:443", upstream.addr, vec![upstream.ca_pem.clone()]);
    let target = upstream_for(None, Scheme::Https, &HostPort { host: "devbox.cmux.local".into(), port: 443 });
    burst(&pool, &target).await;
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    // The upstream closes its connection (GOAWAY): the next cold burst opens exactly one more.
    upstream.close_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    burst(&pool, &target).await;
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
}

/// A plain HTTP/1.1 upstream that answers the first request on a connection
/// and closes it, unanswered, when a second one arrives: a stale keep-alive.
/// Counts requests by method.
async fn stale_upstream() -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut answered = false;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    log.lock().push(head.split(' ').next().unwrap_or_default().to_owned());
                    if answered {
                        return; // drops the connection with the request unanswered
                    }
                    answered = true;
                    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nfresh";
                    if tcp.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_meeting_a_stale_connection_goes_again_and_a_post_does_not() {
    let (addr, seen) = stale_upstream().await;
    let pool = pool_for("stale.test:80", addr, Vec::new());
    let target = upstream_for(None, Scheme::Http, &HostPort { host: "stale.test".into(), port: 80 });
    for _ in 0..3 {
        let response = pool.send(&target, get("http://stale.test/"), &slots()).await.unwrap();
        assert_eq!(body_text(response).await, "fresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*seen.lock(), ["GET"; 5], "the 2nd and 3rd GET each met a stale connection once");

    seen.lock().clear();
    let post = Request::post("http://stale.test/")
        .body(Full::new(Bytes::from_static(b"once")).map_err(|never| match never {}).boxed())
        .unwrap();
    let failed = pool.send(&target, post, &slots()).await;
    assert!(matches!(&failed, Err(e) if e.failure() == Failure::BadGateway), "{failed:?}");
    assert_eq!(*seen.lock(), ["POST"], "a POST is never replayed");
}

fn options() -> Options {
    Options {
        http2: false,
        limits: Limits::default(),
        resolve: HashMap::new(),
        upstream_ca_pem: Vec::new(),
        logging: false,
        tls_interception: true,
        https_proxy: true,
        ca_pem: None,
        private_networks: Default::default(),
        test_proxy_origin: None,
        insecure_upstream: false,
    }
}

/// Opens a CONNECT tunnel through the proxy to `target` with `context`'s credentials.
async fn tunnel(proxy: &Proxy, username: &str, password: &str, target: SocketAddr) -> TcpStream {
    use base64::Engine;
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let connect =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {credentials}\r\n\r\n");
    stream.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_context_closes_its_tunnels_and_stop_frees_the_port() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = Proxy::start("127.0.0.1:0", options()).await.unwrap();
    let context = proxy.create_context(1, None, false).unwrap();
    let mut stream = tunnel(&proxy, &context.username, context.password(), echo_addr).await;
    stream.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");

    assert!(proxy.release_context(&context.id));
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut pong)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the tunnel outlived its context: {closed:?}");

    let port = proxy.port();
    tokio::time::timeout(Duration::from_secs(5), proxy.stop()).await.expect("stop() hung");
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the port still accepts after stop()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_proxy_stops() {
    let proxy = Proxy::start("127.0.0.1:0", options()).await.unwrap();
    let port = proxy.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());
    drop(proxy);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the port still accepts after the proxy was dropped");
}
