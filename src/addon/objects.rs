//! The result objects: stats, events, context stats, CA PEM.

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

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
            kind: e.kind.as_str().to_owned(),
            phase: e.phase.map(|p| p.as_str().to_owned()),
            context_id: e.context_id,
            web_contents_id: e.web_contents_id,
            method: e.method,
            url: e.url,
            upstream: e.upstream,
            status: e.status.map(u32::from),
            duration_ms: e.duration_ms,
            bytes_in: e.bytes_in.map(|b| b as f64),
            bytes_out: e.bytes_out.map(|b| b as f64),
            protocol: e.protocol.map(|p| p.as_str().to_owned()),
            handling: e.handling.map(|h| h.as_str().to_owned()),
            cause: e.cause.map(str::to_owned),
            message: e.message,
        }
    }
}

/// Events a listener may have waiting before new ones are dropped.
pub(super) const EVENT_QUEUE: usize = 1024;

/// A JavaScript listener, called on the Node thread; never keeps Node alive, never waited for.
pub(super) struct JsListener(
    pub(super) ThreadsafeFunction<ProxyEvent, (), ProxyEvent, Status, false, true, EVENT_QUEUE>,
);

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
