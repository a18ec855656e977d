//! The napi surface: `ProxyServer`, the free functions, and the option and
//! result objects. All the work happens in the layers below; this only
//! converts.

mod objects;
mod options;
mod server;

pub use objects::*;
pub use options::*;
pub use server::*;

use napi_derive::napi;

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
    crate::policy::derive::derive_route(&url).map(|d| ProxyRoute {
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
