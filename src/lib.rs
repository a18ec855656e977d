//! The napi surface: `ProxyServer` and its option and result objects. All the
//! work happens in [`proxy`].
#![deny(clippy::all)]

mod answer;
mod conn;
mod ingress;
mod observe;
mod policy;
mod proxy;
mod tls;
mod tunnel;
mod upstream;

/// The pure parsers, for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::conn::sniff::sniff;
    pub use crate::policy::auth::parse_basic;
    pub use crate::policy::routing::{derive_route, is_intercepted_host, is_loopback_host, parse_authority};
}

// The napi surface is left out when the crate is used as a plain library (the fuzz targets).
#[cfg(feature = "addon")]
pub use addon::*;

#[cfg(feature = "addon")]
mod addon {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use napi::bindgen_prelude::*;
    use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
    use napi_derive::napi;
    use parking_lot::Mutex;

    use crate::policy::address::PrivateNetworks;
    use crate::proxy;

    /// Where a WebContents' loopback traffic goes: `https://cmux-<morphId>-<scope>-<port>.<domainSuffix>`.
    #[napi(object)]
    pub struct ProxyRoute {
        /// `[a-z0-9_-]+`
        pub morph_id: String,
        /// `[a-z0-9_-]+`
        pub scope: String,
        /// A hostname, e.g. `cmux.app`.
        pub domain_suffix: String,
        /// e.g. `https://port-39379-morphvm-abc.http.cloud.morph.so`: loopback traffic goes there instead,
        /// with `X-Cmux-Port-Internal` and `X-Cmux-Host-Override`.
        pub cmux_proxy_origin: Option<String>,
        /// Lets this preview's forwarded requests reach private and other non-global networks (never
        /// this machine), on top of what the server allows: for a preview that calls an API over a VPN.
        pub allow_private_network: Option<bool>,
        /// Like `allowPrivateNetwork`, for these networks only (`10.0.0.0/8`, `fd00::/8`, an address).
        pub allowed_networks: Option<Vec<String>>,
    }

    /// The route of a preview URL, by cmux's `deriveRoute` rules: `port-<n>-morphvm-<id>.<suffix>`, or
    /// `<cmux-|manaflow-><morphId>-<scope>-<port>.<domain>` under one of cmux's ten domains (`cmux.app`,
    /// `cmux.sh`, `cmux.dev`, `cmux.com`, `cmux.local`, `cmux.localhost`, `manaflow.com`, `manaflow.local`,
    /// `manaflow.localhost`, `autobuild.app`); `null` for any other URL.
    #[napi(catch_unwind)]
    pub fn derive_route(url: String) -> Option<ProxyRoute> {
        crate::policy::routing::derive_route(&url).map(|d| ProxyRoute {
            morph_id: d.morph_id,
            scope: d.scope,
            domain_suffix: d.domain_suffix,
            cmux_proxy_origin: Some(d.cmux_proxy_origin),
            allow_private_network: None,
            allowed_networks: None,
        })
    }

    /// Whether `host` means this machine to a page: `localhost`, `*.localhost`, `127.0.0.0/8`, `::1`,
    /// `0.0.0.0`, `::` and `::ffff:127.x`, bracketed or not, with or without a trailing dot. For a routed
    /// context these go to the dev box instead.
    #[napi(catch_unwind)]
    pub fn is_loopback_host(host: String) -> bool {
        crate::policy::routing::is_loopback_host(&host)
    }

    /// Whether a routed context's `CONNECT` to `host` is looked into (and its TLS terminated with a leaf of
    /// the proxy's CA): loopback hosts, and hosts under `.cmux.local` or `.manaflow.local`.
    #[napi(catch_unwind)]
    pub fn is_intercepted_host(host: String) -> bool {
        crate::policy::routing::is_intercepted_host(&host)
    }

    #[napi(object)]
    pub struct ProxyContext {
        pub id: String,
        pub username: String,
        pub password: String,
        pub web_contents_id: u32,
        /// The context's own port on `127.0.0.1` (with `ownPort: true`): every connection there is this
        /// context's, with no 407. Closed when the context is released.
        pub port: Option<u32>,
    }

    #[napi(object)]
    pub struct CreateContextOptions {
        /// A listener of the context's own on `127.0.0.1` (HTTP/1.1, h2c, and TLS with h2 in the HTTPS proxy
        /// mode), so that a first request Chromium will not authenticate (a WebSocket, a service worker's
        /// fetch) still works. Counted against `maxContextPorts`.
        pub own_port: Option<bool>,
    }

    #[napi(object)]
    pub struct ProxyCredentials {
        pub username: String,
        pub password: String,
    }

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
        /// DNS lookups under way at once (default 64); more wait their turn within the connect timeout.
        pub max_concurrent_dns_lookups: Option<f64>,
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
        /// against Chromium's reloads (`bench/h2-resets.mjs`).
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
    fn limits_from(options: &StartOptions) -> Result<proxy::Limits> {
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
        if let Some(n) =
            whole_number("http2MaxConcurrentStreams", options.http2_max_concurrent_streams, 1.0, 100_000.0)?
        {
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

    fn private_networks(
        all: Option<bool>,
        listed: Option<&[String]>,
    ) -> std::result::Result<PrivateNetworks, crate::answer::error::ConfigError> {
        PrivateNetworks::parse(all.unwrap_or(false), listed.unwrap_or_default())
    }

    /// `value` when it is a whole number within `min..=max` (NaN and fractions are refused).
    fn whole_number(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<Option<u64>> {
        match value {
            None => Ok(None),
            Some(v) if v.fract() == 0.0 && (min..=max).contains(&v) => Ok(Some(v as u64)),
            Some(v) => Err(Error::new(
                Status::InvalidArg,
                format!("{name} must be a whole number from {min} to {max}, got {v}"),
            )),
        }
    }

    #[napi(object)]
    pub struct ProxyStats {
        pub contexts: u32,
        pub active_connections: u32,
        pub active_tunnels: u32,
        pub total_requests: i64,
        /// Client connections accepted on the listener, by how they talk to the proxy.
        pub accepted: AcceptedConnections,
        /// Requests (streams) served over HTTP/2, inside tunnels included.
        pub http2_streams: i64,
        /// Blind `CONNECT` tunnels relayed in the kernel (splice(2), Linux only; 0 elsewhere).
        pub spliced_tunnels: i64,
        /// Events no listener could take in time (its queue was full): dropped, never waited for.
        pub dropped_events: i64,
    }

    /// Something that happened, for the app's logs and devtools (`onEvent`). Never carries credentials.
    #[napi(object)]
    pub struct ProxyEvent {
        /// `request`, `tunnel`, `websocket`, `error` or `context`.
        pub kind: String,
        /// `open`/`close` for tunnels and WebSockets, `created`/`released` for contexts.
        pub phase: Option<String>,
        pub context_id: Option<String>,
        pub web_contents_id: Option<u32>,
        pub method: Option<String>,
        /// The URL (or CONNECT target) as the client asked for it.
        pub url: Option<String>,
        /// Where it went: `scheme://host:port`.
        pub upstream: Option<String>,
        pub status: Option<u32>,
        pub duration_ms: Option<f64>,
        /// Bytes from the client, and to it.
        pub bytes_in: Option<f64>,
        pub bytes_out: Option<f64>,
        /// `http/1.1` or `h2`: how the client spoke.
        pub protocol: Option<String>,
        /// `blind`, `looked-into` or `intercepted` (tunnels), `relayed` (WebSockets).
        pub handling: Option<String>,
        /// What failed (errors): `dns`, `refused`, `timeout`, `tls`, `forbidden`, `bad-request`, `upstream`.
        pub cause: Option<String>,
        pub message: Option<String>,
    }

    impl From<crate::observe::events::Event> for ProxyEvent {
        fn from(e: crate::observe::events::Event) -> Self {
            ProxyEvent {
                kind: e.kind.to_owned(),
                phase: e.phase.map(str::to_owned),
                context_id: e.context_id,
                web_contents_id: e.web_contents_id,
                method: e.method,
                url: e.url,
                upstream: e.upstream,
                status: e.status.map(u32::from),
                duration_ms: e.duration_ms,
                bytes_in: e.bytes_in.map(|b| b as f64),
                bytes_out: e.bytes_out.map(|b| b as f64),
                protocol: e.protocol.map(str::to_owned),
                handling: e.handling.map(str::to_owned),
                cause: e.cause.map(str::to_owned),
                message: e.message,
            }
        }
    }

    /// Events a listener may have waiting before new ones are dropped.
    const EVENT_QUEUE: usize = 1024;

    /// A JavaScript listener, called on the Node thread; never keeps Node alive, never waited for.
    struct JsListener(ThreadsafeFunction<ProxyEvent, (), ProxyEvent, Status, false, true, EVENT_QUEUE>);

    impl crate::observe::events::EventSink for JsListener {
        fn deliver(&self, event: crate::observe::events::Event) -> bool {
            self.0.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
        }
    }

    /// One preview's traffic so far (`contextStats`).
    #[napi(object)]
    pub struct ContextStats {
        pub requests: i64,
        /// Failures the proxy answered itself (DNS, refused, timeout, TLS, forbidden, bad request).
        pub errors: i64,
        /// Bytes from the preview, and to it (bodies and tunnel payloads).
        pub bytes_in: i64,
        pub bytes_out: i64,
        pub open_tunnels: u32,
        pub last_error: Option<String>,
        /// When `lastError` happened, in ms since the Unix epoch.
        pub last_error_at: Option<f64>,
    }

    #[napi(object)]
    pub struct AcceptedConnections {
        /// Plain HTTP/1.1.
        pub http1: i64,
        /// HTTP/2 with prior knowledge, without TLS.
        #[napi(js_name = "h2c")]
        pub h2c: i64,
        /// HTTP/1.1 over TLS (HTTPS proxy mode).
        pub tls_http1: i64,
        /// HTTP/2 over TLS (HTTPS proxy mode).
        pub tls_h2: i64,
    }

    #[napi(object)]
    pub struct ProxyRulesOptions {
        /// `https://` proxy URLs (the HTTPS proxy mode); defaults to whether it is on.
        pub https: Option<bool>,
        /// The rules for this context's own port instead of the shared one.
        pub context_id: Option<String>,
    }

    /// A CA as PEM, for `StartOptions.caCertPem` / `caKeyPem`.
    #[napi(object)]
    pub struct GenerateCaOptions {
        /// How long the CA is valid, in days: 1 to 365 (default 365).
        pub validity_days: Option<f64>,
    }

    #[napi(object)]
    pub struct CaPem {
        pub cert_pem: String,
        pub key_pem: String,
    }

    /// The local proxy in front of preview WebContents. Garbage-collected
    /// without `stop()`, it stops all the same: its port is freed.
    #[napi]
    pub struct ProxyServer {
        // `None` once stopped.
        proxy: Mutex<Option<Arc<proxy::Proxy>>>,
    }

    fn stopped() -> Error {
        Error::new(Status::GenericFailure, "ProxyServer is stopped")
    }

    fn clamp_u32(n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn clamp_i64(n: u64) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    #[napi]
    impl ProxyServer {
        /// Binds `listenAddr` (`"127.0.0.1:0"` picks a free port) and starts serving.
        #[napi]
        pub async fn start(
            listen_addr: String,
            enable_http2: Option<bool>,
            options: Option<StartOptions>,
        ) -> Result<ProxyServer> {
            let options = options.unwrap_or_default();
            let limits = limits_from(&options)?;
            let ca_pem = match (options.ca_cert_pem, options.ca_key_pem) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(Error::new(Status::InvalidArg, "caCertPem and caKeyPem must be given together")),
            };
            let options = proxy::Options {
                limits,
                tls_interception: options.tls_interception.unwrap_or(true),
                https_proxy: options.https_proxy.unwrap_or(true),
                ca_pem,
                http2: enable_http2.unwrap_or(false),
                resolve: options.resolve.unwrap_or_default(),
                upstream_ca_pem: options.upstream_ca_pem.unwrap_or_default(),
                logging: options.logging.unwrap_or(false),
                private_networks: private_networks(options.allow_private_network, options.allowed_networks.as_deref())
                    .map_err(|e| Error::new(Status::InvalidArg, format!("invalid option {e}")))?,
                test_proxy_origin: options.test_cmux_proxy_origin,
                insecure_upstream: options.test_allow_insecure_upstream.unwrap_or(false),
            };
            let started = proxy::runtime().spawn(async move { proxy::Proxy::start(&listen_addr, options).await });
            match started.await {
                Ok(Ok(proxy)) => Ok(ProxyServer { proxy: Mutex::new(Some(Arc::new(proxy))) }),
                Ok(Err(e)) => Err(Error::new(Status::GenericFailure, e.to_string())),
                Err(e) => Err(Error::new(Status::GenericFailure, format!("proxy failed to start: {e}"))),
            }
        }

        /// A new CA (ECDSA P-256) to keep and pass back as `caCertPem`/`caKeyPem`, valid for
        /// `validityDays` (1 to 365, default 365) and constrained to the names the proxy intercepts
        /// (`localhost`, `*.localhost`, `*.cmux.local`, `*.manaflow.local`, `127.0.0.0/8`, `::1`). Only for an
        /// app that must trust the proxy's certificate before it is ready and chooses to keep it: without
        /// `caCertPem`, every start generates a CA of its own, in memory, for 30 days.
        #[napi(catch_unwind)]
        pub fn generate_ca(options: Option<GenerateCaOptions>) -> Result<CaPem> {
            let max = f64::from(crate::tls::ca::MAX_KEPT_CA_DAYS);
            let days = whole_number("validityDays", options.and_then(|o| o.validity_days), 1.0, max)?;
            let days = days.map_or(crate::tls::ca::MAX_KEPT_CA_DAYS, |d| d as u32);
            let (cert_pem, key_pem) =
                crate::tls::ca::generate_ca_pem(days).map_err(|e| Error::new(Status::GenericFailure, e))?;
            Ok(CaPem { cert_pem, key_pem })
        }

        fn running(&self) -> Result<Arc<proxy::Proxy>> {
            self.proxy.lock().clone().ok_or_else(stopped)
        }

        /// The CA the app must trust for intercepted hosts (PEM).
        #[napi(catch_unwind)]
        pub fn ca_certificate_pem(&self) -> Result<String> {
            Ok(self.running()?.ca_cert_pem().to_owned())
        }

        /// base64 SHA-256 of the CA's SubjectPublicKeyInfo: the value for Chromium's
        /// `--ignore-certificate-errors-spki-list`.
        #[napi(catch_unwind)]
        pub fn ca_spki_sha256(&self) -> Result<String> {
            Ok(self.running()?.ca_spki_sha256().to_owned())
        }

        /// The `proxyRules` for `session.setProxy`: `http=https://127.0.0.1:PORT;https=https://127.0.0.1:PORT`
        /// in the HTTPS proxy mode (the default when it is on), else with `http://`.
        #[napi(catch_unwind)]
        pub fn proxy_rules(&self, options: Option<ProxyRulesOptions>) -> Result<String> {
            let (https, context_id) = options.map_or((None, None), |o| (o.https, o.context_id));
            self.running()?.proxy_rules(https, context_id.as_deref()).map_err(|e| Error::new(Status::InvalidArg, e))
        }

        #[napi(catch_unwind)]
        pub fn port(&self) -> Result<u32> {
            Ok(u32::from(self.running()?.port()))
        }

        /// New credentials for a WebContents (and, with `ownPort`, a port of its own); replaces any earlier
        /// context of the same WebContents.
        #[napi(catch_unwind)]
        pub fn create_context(
            &self,
            web_contents_id: u32,
            route: Option<ProxyRoute>,
            options: Option<CreateContextOptions>,
        ) -> Result<ProxyContext> {
            let proxy = self.running()?;
            let route = route
                .map(|r| {
                    let route = crate::policy::routing::Route::new(
                        &r.morph_id,
                        &r.scope,
                        &r.domain_suffix,
                        r.cmux_proxy_origin.as_deref(),
                    )?;
                    let networks = private_networks(r.allow_private_network, r.allowed_networks.as_deref())
                        .map_err(|e| crate::answer::error::ConfigError { field: "route.allowedNetworks", ..e })?;
                    Ok(route.allowing(&networks))
                })
                .transpose()
                .map_err(|e: crate::answer::error::ConfigError| {
                    Error::new(Status::InvalidArg, format!("invalid {e}"))
                })?;
            let own_port = options.and_then(|o| o.own_port).unwrap_or(false);
            let context = proxy
                .create_context(web_contents_id, route, own_port)
                .map_err(|e| Error::new(Status::GenericFailure, e))?;
            Ok(ProxyContext {
                id: context.id.clone(),
                username: context.username.clone(),
                password: context.password().to_owned(),
                web_contents_id,
                port: context.own_port.get().map(|&port| u32::from(port)),
            })
        }

        /// Revokes a context's credentials and closes its connections and tunnels.
        #[napi(catch_unwind)]
        pub fn release_context(&self, id: String) -> Result<bool> {
            Ok(self.running()?.release_context(&id))
        }

        /// The credentials to answer the proxy's 407 with, for `app.on('login')`.
        #[napi(catch_unwind)]
        pub fn credentials_for_web_contents(&self, web_contents_id: u32) -> Result<Option<ProxyCredentials>> {
            Ok(self
                .running()?
                .context_for_web_contents(web_contents_id)
                .map(|c| ProxyCredentials { username: c.username.clone(), password: c.password().to_owned() }))
        }

        #[napi(catch_unwind)]
        pub fn set_logging_enabled(&self, enabled: bool) -> Result<()> {
            self.running()?.set_logging(enabled);
            Ok(())
        }

        #[napi(catch_unwind)]
        pub fn stats(&self) -> Result<ProxyStats> {
            let stats = self.running()?.stats();
            Ok(ProxyStats {
                contexts: clamp_u32(stats.contexts),
                active_connections: clamp_u32(stats.active_connections),
                active_tunnels: clamp_u32(stats.active_tunnels),
                total_requests: clamp_i64(stats.total_requests),
                accepted: AcceptedConnections {
                    http1: clamp_i64(stats.accepted[0]),
                    h2c: clamp_i64(stats.accepted[1]),
                    tls_http1: clamp_i64(stats.accepted[2]),
                    tls_h2: clamp_i64(stats.accepted[3]),
                },
                http2_streams: clamp_i64(stats.http2_streams),
                spliced_tunnels: clamp_i64(stats.spliced_tunnels),
                dropped_events: clamp_i64(stats.dropped_events),
            })
        }

        /// Calls `listener` with every event from now on (on the Node thread); returns the function
        /// that unsubscribes it. A listener that falls behind loses events (`stats().droppedEvents`);
        /// the proxy never waits for it.
        #[napi(ts_return_type = "() => void")]
        pub fn on_event<'env>(
            &self,
            env: &'env Env,
            listener: Function<ProxyEvent, ()>,
        ) -> Result<Function<'env, (), ()>> {
            let proxy = self.running()?;
            let listener =
                listener.build_threadsafe_function().weak::<true>().max_queue_size::<EVENT_QUEUE>().build()?;
            let id = proxy.subscribe(Arc::new(JsListener(listener)));
            let proxy = Arc::downgrade(&proxy);
            env.create_function_from_closure("unsubscribe", move |_| {
                if let Some(proxy) = proxy.upgrade() {
                    proxy.unsubscribe(id);
                }
                Ok(())
            })
        }

        /// A context's traffic so far, or `null` for an unknown (or released) context.
        #[napi(catch_unwind)]
        pub fn context_stats(&self, id: String) -> Result<Option<ContextStats>> {
            use std::sync::atomic::Ordering::Relaxed;
            let Some(context) = self.running()?.context(&id) else { return Ok(None) };
            let stats = &context.stats;
            let last_error = stats.last_error.lock().clone();
            Ok(Some(ContextStats {
                requests: clamp_i64(stats.requests.load(Relaxed)),
                errors: clamp_i64(stats.errors.load(Relaxed)),
                bytes_in: clamp_i64(stats.bytes_in.load(Relaxed)),
                bytes_out: clamp_i64(stats.bytes_out.load(Relaxed)),
                open_tunnels: clamp_u32(stats.open_tunnels.load(Relaxed)),
                last_error_at: last_error.as_ref().and_then(|(_, at)| {
                    at.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64() * 1000.0)
                }),
                last_error: last_error.map(|(message, _)| message),
            }))
        }

        /// Stops accepting, closes every connection and tunnel; resolves once the port is free. Idempotent.
        #[napi]
        pub async fn stop(&self) -> Result<()> {
            let Some(proxy) = self.proxy.lock().take() else { return Ok(()) };
            proxy::runtime()
                .spawn(async move { proxy.stop().await })
                .await
                .map_err(|e| Error::new(Status::GenericFailure, format!("stop failed: {e}")))
        }
    }
}
