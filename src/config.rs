//! What a proxy is started with: its options and the limits that bound what
//! a client or an upstream can make it hold.

use std::collections::HashMap;
use std::time::Duration;

use crate::policy::address::PrivateNetworks;

pub(crate) struct Options {
    pub(crate) http2: bool,
    pub(crate) limits: Limits,
    pub(crate) resolve: HashMap<String, String>,
    pub(crate) upstream_ca_pem: Vec<String>,
    pub(crate) logging: bool,
    pub(crate) tls_interception: bool,
    /// Terminate TLS on the listener itself: the browser may use the proxy as an `https://` proxy.
    pub(crate) https_proxy: bool,
    /// The CA for intercepted hosts, as (certificate, key) PEM; generated when absent.
    pub(crate) ca_pem: Option<(String, String)>,
    /// The private networks every routed preview may reach (`allowPrivateNetwork`, `allowedNetworks`).
    pub(crate) private_networks: PrivateNetworks,
    /// Test only (cmux's `TEST_CMUX_PROXY_ORIGIN`): every request of a routed
    /// context, whatever its host, goes through this origin.
    pub(crate) test_proxy_origin: Option<String>,
    /// Test only (cmux's `TEST_ALLOW_INSECURE_UPSTREAM`): upstream certificates are not verified.
    pub(crate) insecure_upstream: bool,
}

/// Timeouts and sizes that bound what a client or an upstream can make the proxy hold.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// A request head must arrive within this (slowloris); else the connection is closed.
    pub(crate) header_read_timeout: Duration,
    /// A bigger request head gets `431`.
    pub(crate) max_head_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) tls_handshake_timeout: Duration,
    /// A tunnel or WebSocket with no bytes either way for this long is closed.
    pub(crate) idle_tunnel_timeout: Duration,
    /// Client connections beyond this get `503` and a close.
    pub(crate) max_connections: usize,
    /// An HTTP/2 client connection with no stream for this long gets GOAWAY.
    pub(crate) http2_idle_timeout: Duration,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` towards clients: a module-heavy page sends hundreds at once.
    pub(crate) http2_max_concurrent_streams: u32,
    /// When set, `CONNECT` to hosts that are not rewritten is allowed to these ports only.
    pub(crate) connect_ports: Option<Vec<u16>>,
    /// HTTP/2 streams a client may reset before the proxy accepted them, and
    /// streams the proxy may reset for a client's errors, before it calls the
    /// client abusive (GOAWAY): the "rapid reset" bound.
    pub(crate) http2_max_resets: usize,
    /// Upstream connections (tunnels included) open at once, in all and per context.
    pub(crate) max_upstream_connections: usize,
    pub(crate) max_upstream_per_context: usize,
    /// How long a connection waits for a place under those caps before `503`.
    pub(crate) upstream_slot_wait: Duration,
    /// DNS lookups under way at once.
    pub(crate) max_dns_lookups: usize,
    pub(crate) max_dns_lookups_per_context: usize,
    /// Unused upstream connections kept across origins; the least recently used go first.
    pub(crate) max_idle_upstream: usize,
    /// Client connections that have not authenticated yet, at once; and how long one may take to.
    pub(crate) max_unauthenticated: usize,
    pub(crate) unauthenticated_timeout: Duration,
    /// Contexts with a port of their own, at once.
    pub(crate) max_context_ports: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_head_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_tunnel_timeout: Duration::from_secs(600),
            max_connections: 4096,
            http2_idle_timeout: Duration::from_secs(300),
            http2_max_concurrent_streams: 1000,
            connect_ports: None,
            // The lowest allowance Chromium's reload pattern leaves alone, with half again as margin.
            // Measured with bench/scenarios/h2-resets.mjs (headless Chromium 156 through the HTTPS proxy mode, a
            // 500-module page reloaded mid-load 60 times in about 10 s; h2 counts a reset stream for
            // 30 s): 50 and 100 drew GOAWAYs (4-5 connections, 30 failed requests at 50); 200 behaved
            // as 4000 did (2 connections, no failure). It was 4000 for every client before, authenticated
            // or not.
            http2_max_resets: 300,
            // Far above what a browser opens: 5 000 tunnels of one preview keep working.
            max_upstream_connections: 16_384,
            max_upstream_per_context: 8_192,
            upstream_slot_wait: Duration::from_secs(3),
            max_dns_lookups: 64,
            // A quarter: a preview whose names never answer leaves the rest to the others.
            max_dns_lookups_per_context: 16,
            max_idle_upstream: 256,
            max_unauthenticated: 1024,
            unauthenticated_timeout: Duration::from_secs(10),
            max_context_ports: 256,
        }
    }
}
