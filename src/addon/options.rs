//! `StartOptions` and the limits they set.

use std::collections::HashMap;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::policy::address::PrivateNetworks;
use crate::proxy;

#[napi(object)]
#[derive(Default)]
pub struct StartOptions {
    /// `"host:port" -> "ip:port"`, consulted before DNS (like curl --resolve).
    pub resolve: Option<HashMap<String, String>>,
    /// Extra PEM roots trusted for upstream TLS, on top of the public web roots.
    pub upstream_ca_pem: Option<Vec<String>>,
    /// Event log on stderr, prefix `[cmux-preview-proxy]`.
    pub logging: Option<bool>,
    /// Terminate TLS inside `CONNECT` tunnels to loopback hosts of routed contexts (default true).
    pub tls_interception: Option<bool>,
    /// Accept TLS on the listener, so that a browser can use the proxy as an `https://` proxy and speak
    /// HTTP/2 to it (default true); see `proxyRules()`.
    pub https_proxy: Option<bool>,
    /// Use this CA (with `caKeyPem`) for intercepted hosts instead of generating one.
    pub ca_cert_pem: Option<String>,
    pub ca_key_pem: Option<String>,
    /// A request head must arrive within this many ms, else the connection closes (default 30000).
    pub header_read_timeout_ms: Option<f64>,
    /// Larger request heads get 431 (default 65536, at least 8192).
    pub max_head_bytes: Option<f64>,
    /// Connecting to an upstream (TCP and TLS) longer than this gives 504 (default 10000).
    pub upstream_connect_timeout_ms: Option<f64>,
    /// An upstream's response head later than this gives 504 (default 60000).
    pub upstream_response_timeout_ms: Option<f64>,
    /// Upstream connections open at once, tunnels included, across contexts (default 16384) and per
    /// context (default 8192). A connection past a cap waits up to 3 s for a place, then gets 503.
    pub max_upstream_connections: Option<f64>,
    pub max_upstream_connections_per_context: Option<f64>,
    /// DNS lookups under way at once, in all (default 64) and per context (default 16); more wait their
    /// turn within the connect timeout.
    pub max_concurrent_dns_lookups: Option<f64>,
    pub max_concurrent_dns_lookups_per_context: Option<f64>,
    /// Unused upstream connections kept across origins (default 256); the least recently used close first.
    pub max_idle_upstream_connections: Option<f64>,
    /// Client connections that have not authenticated a request yet, at once (default 1024): more get
    /// 503 and a close. Each must authenticate within `unauthenticatedTimeoutMs` (default 10000) or is closed.
    pub max_unauthenticated_connections: Option<f64>,
    pub unauthenticated_timeout_ms: Option<f64>,
    /// Contexts with a port of their own (`createContext(..., { ownPort: true })`) at once (default 256).
    pub max_context_ports: Option<f64>,
    /// A TLS handshake the proxy terminates (the HTTPS listener, intercepted tunnels) must finish within
    /// this many ms, else the connection is closed (default 10000).
    pub tls_handshake_timeout_ms: Option<f64>,
    /// A tunnel or WebSocket with no bytes either way for this long is closed (default 600000).
    pub idle_tunnel_timeout_ms: Option<f64>,
    /// Client connections (tunnels included) beyond this get 503 and a close (default 4096).
    pub max_connections: Option<f64>,
    /// Restricts CONNECT to hosts that are not rewritten to these ports (default: any port).
    pub connect_ports: Option<Vec<f64>>,
    /// An HTTP/2 client connection with no open stream or tunnel for this many ms gets GOAWAY and
    /// closes (default 300000).
    pub http2_idle_timeout_ms: Option<f64>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` for HTTP/2 clients (default 1000).
    pub http2_max_concurrent_streams: Option<f64>,
    /// HTTP/2 streams a client may reset before they were accepted (and streams reset for its
    /// errors) before the connection is closed as abusive (GOAWAY ENHANCE_YOUR_CALM); default 300, measured
    /// against Chromium's reloads (`bench/scenarios/h2-resets.mjs`).
    pub http2_max_resets: Option<f64>,
    /// Lets every routed preview's forwarded requests reach private and other non-global networks
    /// (never this machine). Default: refused with 403.
    pub allow_private_network: Option<bool>,
    /// Like `allowPrivateNetwork`, for these networks only (`10.0.0.0/8`, `fd00::/8`, an address).
    pub allowed_networks: Option<Vec<String>>,
    /// Test only (cmux's `TEST_CMUX_PROXY_ORIGIN`): every request of a routed context, whatever its
    /// host, goes through this cmux-proxy origin (which may be a loopback address).
    pub test_cmux_proxy_origin: Option<String>,
    /// Test only (cmux's `TEST_ALLOW_INSECURE_UPSTREAM`): upstream certificates are not verified.
    pub test_allow_insecure_upstream: Option<bool>,
}

/// The limits `options` asks for, on top of the defaults.
pub(super) fn limits_from(options: &StartOptions) -> Result<proxy::Limits> {
    const DAY_MS: f64 = 86_400_000.0;
    let mut limits = proxy::Limits::default();
    let millis = |name, value| Ok::<_, Error>(whole_number(name, value, 1.0, DAY_MS)?.map(Duration::from_millis));
    if let Some(timeout) = millis("headerReadTimeoutMs", options.header_read_timeout_ms)? {
        limits.header_read_timeout = timeout;
    }
    if let Some(timeout) = millis("upstreamConnectTimeoutMs", options.upstream_connect_timeout_ms)? {
        limits.connect_timeout = timeout;
    }
    if let Some(timeout) = millis("tlsHandshakeTimeoutMs", options.tls_handshake_timeout_ms)? {
        limits.tls_handshake_timeout = timeout;
    }
    if let Some(timeout) = millis("unauthenticatedTimeoutMs", options.unauthenticated_timeout_ms)? {
        limits.unauthenticated_timeout = timeout;
    }
    let count = |name, value| Ok::<_, Error>(whole_number(name, value, 1.0, 1_000_000.0)?.map(|n| n as usize));
    if let Some(n) = count("maxUpstreamConnections", options.max_upstream_connections)? {
        limits.max_upstream_connections = n;
    }
    if let Some(n) = count("maxUpstreamConnectionsPerContext", options.max_upstream_connections_per_context)? {
        limits.max_upstream_per_context = n;
    }
    if let Some(n) = count("maxConcurrentDnsLookups", options.max_concurrent_dns_lookups)? {
        limits.max_dns_lookups = n;
    }
    if let Some(n) = count("maxConcurrentDnsLookupsPerContext", options.max_concurrent_dns_lookups_per_context)? {
        limits.max_dns_lookups_per_context = n;
    }
    if let Some(n) = count("http2MaxResets", options.http2_max_resets)? {
        limits.http2_max_resets = n;
    }
    if let Some(n) = count("maxIdleUpstreamConnections", options.max_idle_upstream_connections)? {
        limits.max_idle_upstream = n;
    }
    if let Some(n) = count("maxContextPorts", options.max_context_ports)? {
        limits.max_context_ports = n;
    }
    if let Some(n) = count("maxUnauthenticatedConnections", options.max_unauthenticated_connections)? {
        limits.max_unauthenticated = n;
    }
    if let Some(timeout) = millis("upstreamResponseTimeoutMs", options.upstream_response_timeout_ms)? {
        limits.response_timeout = timeout;
    }
    if let Some(timeout) = millis("idleTunnelTimeoutMs", options.idle_tunnel_timeout_ms)? {
        limits.idle_tunnel_timeout = timeout;
    }
    if let Some(timeout) = millis("http2IdleTimeoutMs", options.http2_idle_timeout_ms)? {
        limits.http2_idle_timeout = timeout;
    }
    if let Some(n) = whole_number("http2MaxConcurrentStreams", options.http2_max_concurrent_streams, 1.0, 100_000.0)? {
        limits.http2_max_concurrent_streams = n as u32;
    }
    if let Some(n) = whole_number("maxConnections", options.max_connections, 1.0, 1_000_000.0)? {
        limits.max_connections = n as usize;
    }
    if let Some(bytes) = whole_number("maxHeadBytes", options.max_head_bytes, 8192.0, 16_777_216.0)? {
        limits.max_head_bytes = bytes as usize;
    }
    if let Some(ports) = &options.connect_ports {
        let ports = ports
            .iter()
            .map(|&port| Ok(whole_number("connectPorts[]", Some(port), 1.0, 65535.0)?.unwrap_or_default() as u16))
            .collect::<Result<Vec<u16>>>()?;
        limits.connect_ports = Some(ports);
    }
    Ok(limits)
}

pub(super) fn private_networks(
    all: Option<bool>,
    listed: Option<&[String]>,
) -> std::result::Result<PrivateNetworks, crate::answer::error::ConfigError> {
    PrivateNetworks::parse(all.unwrap_or(false), listed.unwrap_or_default())
}

/// `value` when it is a whole number within `min..=max` (NaN and fractions are refused).
pub(super) fn whole_number(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<Option<u64>> {
    match value {
        None => Ok(None),
        Some(v) if v.fract() == 0.0 && (min..=max).contains(&v) => Ok(Some(v as u64)),
        Some(v) => {
            Err(Error::new(Status::InvalidArg, format!("{name} must be a whole number from {min} to {max}, got {v}")))
        }
    }
}
