//! Contexts and their Basic-auth credentials: creation from the OS CSPRNG,
//! `Proxy-Authorization` parsing, constant-time checks, revocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;
use parking_lot::RwLock;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::policy::routing::Route;

/// One preview WebContents' identity at the proxy.
pub(crate) struct Context {
    pub(crate) id: String,
    pub(crate) web_contents_id: u32,
    pub(crate) username: String,
    password: String,
    pub(crate) route: Option<Route>,
    /// Cancelled when the context is released or replaced: every connection and
    /// tunnel that authenticated with it closes.
    pub(crate) revoked: CancellationToken,
    /// Set with `revoked`, read on every request of a connection that already
    /// authenticated (the token's own check takes a mutex).
    revoked_flag: AtomicBool,
    pub(crate) stats: super::context_stats::ContextStats,
    /// Its share of what all contexts share: upstream connections and DNS lookups.
    pub(crate) places: ContextPlaces,
    /// The context's own port on `127.0.0.1`, when it has one.
    pub(crate) own_port: std::sync::OnceLock<OwnPort>,
}

/// What one context may hold at once of what all contexts share, so that one
/// preview cannot take it all: upstream connections (tunnels included) and
/// DNS lookups under way.
pub(crate) struct ContextPlaces {
    pub(crate) upstream: Arc<tokio::sync::Semaphore>,
    pub(crate) dns_lookups: Arc<tokio::sync::Semaphore>,
}

/// Sizes of each context's [`ContextPlaces`].
#[derive(Clone, Copy)]
pub(crate) struct PerContext {
    pub(crate) upstream: usize,
    pub(crate) dns_lookups: usize,
}

/// A context's own listener, as the context sees it: the port, and a channel
/// whose sender the accept loop drops right after the listener.
pub(crate) struct OwnPort {
    pub(crate) port: u16,
    pub(crate) closed: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl OwnPort {
    /// Waits (at most `limit`) until the listener is closed, so that a port is
    /// refusing connections by the time a release returns to JavaScript.
    fn wait_closed(&self, limit: std::time::Duration) {
        // Nothing is ever sent: the wait ends when the sender is dropped.
        let _ = self.closed.lock().recv_timeout(limit);
    }
}

impl Context {
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked_flag.load(Ordering::Acquire)
    }

    fn revoke(&self) {
        self.revoked_flag.store(true, Ordering::Release);
        self.revoked.cancel();
    }

    /// Once revoked: waits until the context's own port, if any, is closed.
    pub(crate) fn wait_own_port_closed(&self) {
        if let Some(own_port) = self.own_port.get() {
            own_port.wait_closed(std::time::Duration::from_secs(2));
        }
    }
}

impl std::fmt::Debug for Context {
    // The password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("id", &self.id).field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Maps {
    by_username: HashMap<String, Arc<Context>>,
    by_id: HashMap<String, Arc<Context>>,
    by_web_contents: HashMap<u32, Arc<Context>>,
}

/// The live contexts of one server.
pub(crate) struct Contexts {
    maps: RwLock<Maps>,
    shutdown: CancellationToken,
    per_context: PerContext,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Rejected,
}

impl Contexts {
    pub(crate) fn new(shutdown: CancellationToken, per_context: PerContext) -> Self {
        Contexts { maps: RwLock::default(), shutdown, per_context }
    }

    /// Creates a context with fresh credentials; replaces (and revokes) any
    /// earlier context of the same WebContents, which it returns second.
    pub(crate) fn create(&self, web_contents_id: u32, route: Option<Route>) -> (Arc<Context>, Option<Arc<Context>>) {
        let context = Arc::new(Context {
            id: uuid::Uuid::new_v4().to_string(),
            web_contents_id,
            username: format!("wc-{web_contents_id}-{}", random_hex::<4>()),
            password: random_hex::<16>(),
            route,
            revoked: self.shutdown.child_token(),
            revoked_flag: AtomicBool::new(false),
            stats: Default::default(),
            places: ContextPlaces {
                upstream: Arc::new(tokio::sync::Semaphore::new(self.per_context.upstream)),
                dns_lookups: Arc::new(tokio::sync::Semaphore::new(self.per_context.dns_lookups)),
            },
            own_port: std::sync::OnceLock::new(),
        });
        let mut maps = self.maps.write();
        let replaced = maps.by_web_contents.insert(web_contents_id, context.clone());
        if let Some(old) = &replaced {
            maps.by_username.remove(&old.username);
            maps.by_id.remove(&old.id);
            old.revoke();
        }
        maps.by_username.insert(context.username.clone(), context.clone());
        maps.by_id.insert(context.id.clone(), context.clone());
        (context, replaced)
    }

    pub(crate) fn release(&self, id: &str) -> bool {
        let mut maps = self.maps.write();
        let Some(context) = maps.by_id.remove(id) else { return false };
        maps.by_username.remove(&context.username);
        if maps.by_web_contents.get(&context.web_contents_id).is_some_and(|c| Arc::ptr_eq(c, &context)) {
            maps.by_web_contents.remove(&context.web_contents_id);
        }
        drop(maps);
        context.revoke();
        true
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Context>> {
        self.maps.read().by_id.get(id).cloned()
    }

    pub(crate) fn for_web_contents(&self, web_contents_id: u32) -> Option<Arc<Context>> {
        self.maps.read().by_web_contents.get(&web_contents_id).cloned()
    }

    pub(crate) fn count(&self) -> usize {
        self.maps.read().by_id.len()
    }

    pub(crate) fn clear(&self) {
        let maps = std::mem::take(&mut *self.maps.write());
        for context in maps.by_id.values() {
            context.revoke();
        }
    }

    /// The live context named by a `Proxy-Authorization` header value.
    pub(crate) fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<Context>, AuthError> {
        let (username, password) = parse_basic(header.ok_or(AuthError::Missing)?)?;
        let context = self.maps.read().by_username.get(&username).cloned();
        // Compare against a dummy when the user is unknown so both paths cost the same.
        let expected = context.as_ref().map_or(DUMMY_PASSWORD, |c| c.password.as_str());
        let matches: bool = expected.as_bytes().ct_eq(password.as_bytes()).into();
        match context {
            Some(context) if matches => Ok(context),
            _ => Err(AuthError::Rejected),
        }
    }
}

const DUMMY_PASSWORD: &str = "00000000000000000000000000000000";

/// Splits `Basic base64(user:pass)` into its parts.
pub fn parse_basic(value: &[u8]) -> Result<(String, String), AuthError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, encoded) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Malformed);
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| AuthError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
    let (user, pass) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
    if user.is_empty() || pass.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok((user.to_owned(), pass.to_owned()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))).into_bytes()
    }

    #[test]
    fn parses_basic_credentials() {
        assert_eq!(parse_basic(&basic("wc-1-ab", "p:w")), Ok(("wc-1-ab".into(), "p:w".into())));
        assert_eq!(parse_basic(b"basic  d2M6cA== "), Ok(("wc".into(), "p".into())));
        assert_eq!(parse_basic(b"Bearer abc"), Err(AuthError::Malformed));
        assert_eq!(parse_basic(b"Basic !!!"), Err(AuthError::Malformed));
        assert_eq!(parse_basic(b"Basic"), Err(AuthError::Malformed));
        let no_colon = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("nocolon"));
        assert_eq!(parse_basic(no_colon.as_bytes()), Err(AuthError::Malformed));
        assert_eq!(parse_basic(&basic("user", "")), Err(AuthError::Malformed));
        assert_eq!(parse_basic(&basic("", "pass")), Err(AuthError::Malformed));
        assert_eq!(parse_basic(b"Basic \xff\xfe"), Err(AuthError::Malformed));
    }

    #[test]
    fn credentials_are_fresh_and_well_formed() {
        let contexts = Contexts::new(CancellationToken::new(), PerContext { upstream: 16, dns_lookups: 4 });
        let (a, _) = contexts.create(7, None);
        let (b, _) = contexts.create(8, None);
        assert!(a.username.starts_with("wc-7-") && a.username.len() == "wc-7-".len() + 8);
        assert!(a.password.len() >= 24 && a.password.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.password, b.password);
        assert_eq!(uuid::Uuid::parse_str(&a.id).unwrap().get_version_num(), 4);
    }

    #[test]
    fn authenticates_only_live_contexts() {
        let contexts = Contexts::new(CancellationToken::new(), PerContext { upstream: 16, dns_lookups: 4 });
        let (a, replaced) = contexts.create(1, None);
        assert!(replaced.is_none());
        let header = basic(&a.username, &a.password);
        assert_eq!(contexts.authenticate(Some(&header)).unwrap().id, a.id);
        assert_eq!(contexts.authenticate(Some(&basic(&a.username, "wrong"))).unwrap_err(), AuthError::Rejected);
        assert_eq!(contexts.authenticate(None).unwrap_err(), AuthError::Missing);
        // A second context for the same WebContents replaces the first.
        let (a2, replaced) = contexts.create(1, None);
        assert!(replaced.is_some_and(|old| Arc::ptr_eq(&old, &a)));
        assert!(a.revoked.is_cancelled() && a.is_revoked());
        assert_eq!(contexts.authenticate(Some(&header)).unwrap_err(), AuthError::Rejected);
        assert!(!contexts.release(&a.id));
        assert!(contexts.release(&a2.id));
        assert!(a2.revoked.is_cancelled() && a2.is_revoked());
        assert_eq!(contexts.count(), 0);
        assert!(contexts.for_web_contents(1).is_none());
    }
}
