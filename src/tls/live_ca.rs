//! The CA as it is now. A CA the addon made is issued again with the same key
//! shortly before it ends, so that an app left running for weeks keeps getting
//! valid leaves (the key, and the SPKI an app may have pinned, stay the same).
//! Each issue of the CA is a generation with its own leaves: none outlives it.

use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use time::OffsetDateTime;

use super::ca::{CertificateAuthority, Leaf};
use super::host_cache::HostCache;
use crate::answer::error::ConfigError;

pub(crate) struct LiveCa {
    current: RwLock<Arc<Generation>>,
}

/// One issue of the CA, with what was built from it.
pub(crate) struct Generation {
    pub(crate) ca: CertificateAuthority,
    /// Intercepted hosts' server configs.
    pub(crate) intercepted: HostCache<ServerConfig>,
    /// The listener's own certificate (the HTTPS proxy mode), built on first use.
    listener: OnceLock<Result<Arc<CertifiedKey>, ConfigError>>,
}

impl LiveCa {
    pub(crate) fn new(ca: CertificateAuthority) -> Self {
        LiveCa { current: RwLock::new(Arc::new(Generation::of(ca))) }
    }

    /// The current generation, issuing the CA again first when it is due (a timestamp compared on
    /// each use: no timer to miss while the machine sleeps).
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current_at(OffsetDateTime::now_utc())
    }

    fn current_at(&self, now: OffsetDateTime) -> Arc<Generation> {
        let generation = self.current.read().clone();
        if !generation.ca.renewal_due(now) {
            return generation;
        }
        let mut current = self.current.write();
        if Arc::ptr_eq(&current, &generation) {
            // Should issuing fail, the CA in use stays, and the next use tries again.
            if let Ok(ca) = generation.ca.renewed(now) {
                *current = Arc::new(Generation::of(ca));
            }
        }
        current.clone()
    }
}

impl Generation {
    fn of(ca: CertificateAuthority) -> Self {
        Generation { ca, intercepted: HostCache::default(), listener: OnceLock::new() }
    }
}

/// The certificate of the listener in the HTTPS proxy mode: a leaf for every
/// address the proxy may be reached at, from the current generation.
pub(crate) struct ListenerCert {
    ca: Arc<LiveCa>,
    names: Vec<String>,
}

impl ListenerCert {
    /// Fails when no leaf can be built for `names`, so that a bad listen address fails the start.
    pub(crate) fn new(ca: Arc<LiveCa>, names: Vec<String>) -> Result<Self, ConfigError> {
        let cert = ListenerCert { ca, names };
        cert.key()?;
        Ok(cert)
    }

    fn key(&self) -> Result<Arc<CertifiedKey>, ConfigError> {
        let generation = self.ca.current();
        generation
            .listener
            .get_or_init(|| {
                let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
                certified_key(generation.ca.issue_leaf_for(&names)?)
            })
            .clone()
    }
}

impl std::fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCert").field("names", &self.names).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ListenerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key().ok()
    }
}

fn certified_key(leaf: Leaf) -> Result<Arc<CertifiedKey>, ConfigError> {
    let key = rustls::crypto::ring::sign::any_supported_type(&leaf.key).map_err(|e| ConfigError::new("leaf", e))?;
    Ok(Arc::new(CertifiedKey::new(leaf.chain, key)))
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn not_after(generation: &Generation) -> i64 {
        let der = generation.ca.cert_der();
        x509_parser::parse_x509_certificate(der).unwrap().1.validity().not_after.timestamp()
    }

    #[test]
    fn a_ca_the_addon_made_is_issued_again_before_it_ends_with_the_same_key() {
        let live = LiveCa::new(CertificateAuthority::generate().unwrap());
        let first = live.current();
        let now = OffsetDateTime::now_utc();
        // Not yet due: the same generation.
        assert!(Arc::ptr_eq(&first, &live.current_at(now + Duration::days(19))));
        // Due (fewer than 10 days left): a new generation, valid 30 days from now, same key and subject.
        let second = live.current_at(now + Duration::days(21));
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&second, &live.current()), "the new generation stays");
        assert_eq!(second.ca.spki_sha256(), first.ca.spki_sha256());
        assert!(not_after(&second) > not_after(&first));
        let parse = |der| x509_parser::parse_x509_certificate(der).unwrap().1;
        let (old, new) = (parse(first.ca.cert_der()), parse(second.ca.cert_der()));
        assert_eq!(old.subject(), new.subject());
        assert_ne!(old.raw_serial(), new.raw_serial(), "each issue has a serial of its own");
        assert_eq!(
            new.name_constraints().unwrap().map(|c| c.value.clone()),
            old.name_constraints().unwrap().map(|c| c.value.clone())
        );
        // A leaf of the new generation is signed by the same key: it verifies against the first certificate too.
        let leaf = second.ca.issue_leaf("localhost").unwrap();
        let leaf = parse(&leaf.chain[0]);
        assert_eq!(leaf.issuer(), old.subject());
        leaf.verify_signature(Some(old.public_key())).expect("signed by the same key");
    }

    #[test]
    fn a_ca_the_app_made_is_used_as_it_is() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "Cmux Preview Proxy CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(5);
        let cert = params.self_signed(&key).unwrap();
        let live = LiveCa::new(CertificateAuthority::from_pem(&cert.pem(), &key.serialize_pem()).unwrap());
        let first = live.current();
        assert!(Arc::ptr_eq(&first, &live.current_at(OffsetDateTime::now_utc() + Duration::days(4))));
    }

    #[test]
    fn a_generated_ca_handed_back_in_is_known_as_the_addons() {
        let (cert, key) = super::super::ca::generate_ca_pem(5).unwrap();
        let live = LiveCa::new(CertificateAuthority::from_pem(&cert, &key).unwrap());
        let first = live.current_at(OffsetDateTime::now_utc() - Duration::days(10));
        let renewed = live.current();
        assert!(!Arc::ptr_eq(&first, &renewed), "5 days left: issued again at once");
        assert_eq!(renewed.ca.spki_sha256(), first.ca.spki_sha256());
    }

    #[test]
    fn the_listener_certificate_follows_the_generation() {
        let live = Arc::new(LiveCa::new(CertificateAuthority::generate().unwrap()));
        let listener = ListenerCert::new(live.clone(), vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let before = listener.key().unwrap();
        assert!(Arc::ptr_eq(&before, &listener.key().unwrap()), "built once per generation");
        live.current_at(OffsetDateTime::now_utc() + Duration::days(25));
        let after = listener.key().unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.cert[1].as_ref(), live.current().ca.cert_der().as_ref());
    }
}
