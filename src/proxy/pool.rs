//! The client plain requests go through: hyper-util's pool, keep-alive for
//! HTTP/1.1 and one multiplexed connection for origins that choose HTTP/2 by
//! ALPN. In front of it, the first connection to an origin is opened once:
//! a burst of first requests waits for it instead of racing to open its own
//! (the pool only learns from ALPN, once connected, that the origin
//! multiplexes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::reply::Body;
use super::upstream::Connector;

/// Origins remembered at most; past it the memory starts over (it is only an optimisation).
const MAX_ORIGINS: usize = 4096;

pub type SendError = hyper_util::client::legacy::Error;

/// Which origins have been connected to, shared with the connector that learns it.
#[derive(Default)]
pub struct Origins {
    by_authority: Mutex<HashMap<String, Arc<Origin>>>,
}

#[derive(Default)]
pub struct Origin {
    /// The first connection exists, or its attempt is over: requests go straight to the pool.
    settled: AtomicBool,
    connected: Notify,
    /// Held by the request that opens the first connection.
    first: tokio::sync::Mutex<()>,
}

impl Origins {
    fn get(&self, authority: &str) -> Arc<Origin> {
        let mut map = self.by_authority.lock();
        if let Some(origin) = map.get(authority) {
            return origin.clone();
        }
        if map.len() >= MAX_ORIGINS {
            map.clear();
        }
        map.entry(authority.to_owned()).or_default().clone()
    }

    /// Called by the connector for every new upstream connection.
    pub fn connected(&self, authority: &str) {
        if let Some(origin) = self.by_authority.lock().get(authority) {
            origin.settled.store(true, Ordering::Release);
            origin.connected.notify_waiters();
        }
    }
}

pub struct UpstreamClient {
    pool: Client<Connector, Body>,
    origins: Arc<Origins>,
}

impl UpstreamClient {
    pub fn new(connector: Connector) -> Self {
        let origins = connector.origins();
        let pool = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Fixed, generous windows: h2 sizes its allowance for small unread DATA frames from the
            // connection window, and a dev server answering a burst of modules sends many of them.
            .http2_initial_stream_window_size(1 << 20)
            .http2_initial_connection_window_size(8 << 20)
            // Host from the URI, on HTTP/1.1 connections only: see `send`.
            .set_host(true)
            .build(connector);
        UpstreamClient { pool, origins }
    }

    /// Sends `req` (absolute URI) and returns the response head; the body streams.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, SendError> {
        // HTTP/2 names the host in `:authority`; a `Host` beside it makes some servers (nginx
        // before 1.27) answer 400. The pool adds `Host` on HTTP/1.1 connections, from the URI,
        // which carries the same authority.
        req.headers_mut().remove(http::header::HOST);
        // The URI was built from a parsed target: its authority is already lowercase.
        let origin = self.origins.get(req.uri().authority().map_or("", |a| a.as_str()));
        if origin.settled.load(Ordering::Acquire) {
            return self.pool.request(req).await;
        }
        let first = origin.first.lock().await;
        if origin.settled.load(Ordering::Acquire) {
            drop(first);
            return self.pool.request(req).await;
        }
        // This request opens the origin's first connection; the others may go once it exists.
        let connected = origin.connected.notified();
        let response = self.pool.request(req);
        tokio::pin!(connected, response);
        tokio::select! {
            result = &mut response => {
                // Even a failed attempt opens the gate: waiters must not fail one after another.
                origin.settled.store(true, Ordering::Release);
                result
            }
            _ = &mut connected => {
                drop(first);
                response.await
            }
        }
    }
}
