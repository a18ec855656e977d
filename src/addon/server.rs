//! `ProxyServer`: start, contexts, rules, stats, events, stop.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::Mutex;

use super::objects::{JsListener, EVENT_QUEUE};
use super::options::{limits_from, private_networks, whole_number};
use super::*;
use crate::proxy;

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
    /// (`localhost`, `*.localhost`, `*.cmux.local`, `*.manaflow.local`, `127.0.0.0/8`, `::1` and the other
    /// loopback forms). Only for an app that must trust the proxy's certificate before it is ready and
    /// chooses to keep it: without `caCertPem`, every start generates a CA of its own, in memory, for 30
    /// days. A running proxy issues either again for 30 days, with the same key (and SPKI), once fewer than
    /// 10 days are left.
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

    /// The CA the app must trust for intercepted hosts (PEM), as it is now: a CA the addon made (generated at
    /// start, or by `generateCa`) is issued again, with the same key, once fewer than 10 days are left.
    #[napi(catch_unwind)]
    pub fn ca_certificate_pem(&self) -> Result<String> {
        Ok(self.running()?.ca_cert_pem())
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
            .map_err(|e: crate::answer::error::ConfigError| Error::new(Status::InvalidArg, format!("invalid {e}")))?;
        let own_port = options.and_then(|o| o.own_port).unwrap_or(false);
        let context = proxy
            .create_context(web_contents_id, route, own_port)
            .map_err(|e| Error::new(Status::GenericFailure, e))?;
        Ok(ProxyContext {
            id: context.id.clone(),
            username: context.username.clone(),
            password: context.password().to_owned(),
            web_contents_id,
            port: context.own_port.get().map(|own| u32::from(own.port)),
        })
    }

    /// Revokes a context's credentials and closes its connections and tunnels; its own port, if any, is
    /// closed by the time this returns.
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
                http1: clamp_i64(stats.accepted.http1),
                h2c: clamp_i64(stats.accepted.h2c),
                tls_http1: clamp_i64(stats.accepted.tls_http1),
                tls_h2: clamp_i64(stats.accepted.tls_h2),
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
    pub fn on_event<'env>(&self, env: &'env Env, listener: Function<ProxyEvent, ()>) -> Result<Function<'env, (), ()>> {
        let proxy = self.running()?;
        let listener = listener.build_threadsafe_function().weak::<true>().max_queue_size::<EVENT_QUEUE>().build()?;
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
            last_error_at: last_error
                .as_ref()
                .and_then(|(_, at)| at.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64() * 1000.0)),
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
