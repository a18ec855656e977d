//! The local certificate authority: generated in memory (or given), it signs
//! one leaf per intercepted host. A CA the addon made can be issued again with
//! the same key (see `live_ca.rs`).

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::answer::error::ConfigError;

/// A leaf certificate with its chain (leaf, then CA) and key.
pub(crate) struct Leaf {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

pub(crate) struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// base64 SHA-256 of the CA's SubjectPublicKeyInfo, for `--ignore-certificate-errors-spki-list`.
    spki_sha256: String,
    /// No leaf outlives its CA.
    not_after: OffsetDateTime,
    /// A CA the addon made (generated now, or by `generateCa`): it may be issued again with the same key.
    renewable: bool,
}

/// A CA the addon made is issued again, with the same key, once it has fewer days than this left.
const RENEW_WITHIN: Duration = Duration::days(10);
/// The subject of every CA the addon makes: how a CA handed back in is known as one of them.
const CA_COMMON_NAME: &str = "Cmux Preview Proxy Local CA";
const CA_ORGANIZATION: &str = "cmux";

/// How long a CA generated for one run of the proxy lives: days, not years,
/// and long enough for an app left open for weeks.
pub(crate) const PER_LAUNCH_CA_DAYS: u32 = 30;
/// The longest a CA generated to be kept (`generateCa`) may live.
pub(crate) const MAX_KEPT_CA_DAYS: u32 = 365;

/// A new CA as PEM (certificate, PKCS#8 key), valid for `days`, for an app to keep across runs.
pub(crate) fn generate_ca_pem(days: u32) -> Result<(String, String), ConfigError> {
    let key = new_ca_key()?;
    let cert = ca_params(days, OffsetDateTime::now_utc()).self_signed(&key).map_err(|e| ConfigError::new("ca", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn new_ca_key() -> Result<KeyPair, ConfigError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ConfigError::new("ca", e))
}

/// What every CA the proxy generates may sign for: the names and addresses it
/// intercepts (loopback, and the local development suffixes it looks into),
/// nothing else. A stolen key cannot then sign for any other site.
fn name_constraints() -> NameConstraints {
    let dns = ["localhost", ".localhost", "cmux.local", ".cmux.local", "manaflow.local", ".manaflow.local"];
    let mut permitted: Vec<GeneralSubtree> = dns.iter().map(|name| GeneralSubtree::DnsName((*name).into())).collect();
    // Every address the proxy takes for loopback (routing's `is_loopback_host`): 127/8, ::1, the unspecified
    // addresses (which connect to loopback) and IPv4-mapped loopback.
    permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)));
    permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([0, 0, 0, 0], 32)));
    permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(std::net::Ipv6Addr::LOCALHOST.octets(), 128)));
    permitted
        .push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(std::net::Ipv6Addr::UNSPECIFIED.octets(), 128)));
    let mapped_loopback = std::net::Ipv4Addr::new(127, 0, 0, 0).to_ipv6_mapped().octets();
    permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(mapped_loopback, 104)));
    NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() }
}

/// CA parameters, valid from a day before `now` for `days`, constrained to the
/// names the proxy intercepts.
fn ca_params(days: u32, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.name_constraints = Some(name_constraints());
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(i64::from(days));
    // A serial of its own for each issue: rcgen's default derives it from the key, and a CA issued again with
    // the same key would repeat its issuer and serial, which verifiers (NSS) refuse.
    params.serial_number = Some(rcgen::SerialNumber::from(uuid::Uuid::new_v4().as_bytes().to_vec()));
    params
}

fn spki_sha256(cert_der: &[u8]) -> Result<String, ConfigError> {
    use base64::Engine;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| ConfigError::new("caCertPem", format!("not a certificate: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, parsed.public_key().raw);
    Ok(base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

impl CertificateAuthority {
    /// A fresh ECDSA P-256 CA for this run only (kept in memory), valid for
    /// [`PER_LAUNCH_CA_DAYS`] and constrained to the names the proxy intercepts.
    pub(crate) fn generate() -> Result<Self, ConfigError> {
        Self::self_signed(new_ca_key()?, PER_LAUNCH_CA_DAYS, OffsetDateTime::now_utc())
    }

    fn self_signed(key: KeyPair, days: u32, now: OffsetDateTime) -> Result<Self, ConfigError> {
        let params = ca_params(days, now);
        let cert = params.self_signed(&key).map_err(|e| ConfigError::new("ca", e))?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            spki_sha256: spki_sha256(cert.der())?,
            cert_der: cert.der().clone(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
            renewable: true,
        })
    }

    /// Whether this is a CA the addon made that ends within [`RENEW_WITHIN`] of `now`.
    pub(crate) fn renewal_due(&self, now: OffsetDateTime) -> bool {
        self.renewable && self.not_after - now < RENEW_WITHIN
    }

    /// The same CA issued again for [`PER_LAUNCH_CA_DAYS`] from `now`: the same key (so the same SPKI,
    /// which an app may have pinned), subject and name constraints. Leaves it signs verify against the
    /// earlier certificate too. Kept in memory only.
    pub(crate) fn renewed(&self, now: OffsetDateTime) -> Result<Self, ConfigError> {
        let key = KeyPair::try_from(self.issuer.key().serialized_der()).map_err(|e| ConfigError::new("ca", e))?;
        Self::self_signed(key, PER_LAUNCH_CA_DAYS, now)
    }

    /// A CA given as PEM; the key must belong to the certificate.
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ConfigError> {
        let bad_cert = |reason: &dyn std::fmt::Display| ConfigError::new("caCertPem", reason);
        let key = key_pair_from_pem(key_pem)?;
        let cert_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| bad_cert(&"holds no PEM certificate"))?
            .map_err(|e| bad_cert(&e))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| bad_cert(&format!("is not a certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(ConfigError::new("caKeyPem", "does not belong to caCertPem"));
        }
        if !parsed.is_ca() {
            return Err(bad_cert(&"is not a CA certificate (basicConstraints CA:TRUE missing)"));
        }
        let not_after =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp()).map_err(|e| bad_cert(&e))?;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(bad_cert(&"has expired"));
        }
        let made_here = {
            let subject = parsed.subject();
            let common_names: Vec<_> = subject.iter_common_name().map(|a| a.as_str().ok()).collect();
            let organizations: Vec<_> = subject.iter_organization().map(|a| a.as_str().ok()).collect();
            common_names == [Some(CA_COMMON_NAME)] && organizations == [Some(CA_ORGANIZATION)]
        };
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad_cert(&e))?;
        Ok(CertificateAuthority {
            issuer,
            not_after,
            renewable: made_here,
            spki_sha256: spki_sha256(&cert_der)?,
            cert_der,
            cert_pem: cert_pem.trim().to_owned() + "\n",
        })
    }

    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    #[cfg(test)]
    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub(crate) fn spki_sha256(&self) -> &str {
        &self.spki_sha256
    }

    /// A new leaf for `host`: DNS SAN for names, IP SAN for addresses.
    pub(crate) fn issue_leaf(&self, host: &str) -> Result<Leaf, ConfigError> {
        self.issue_leaf_for(&[host])
    }

    /// A new leaf valid for every name or address in `names` (the first is its common name).
    pub(crate) fn issue_leaf_for(&self, names: &[&str]) -> Result<Leaf, ConfigError> {
        let leaf_error =
            |e: &dyn std::fmt::Display| ConfigError::new("leaf", format!("no certificate for {names:?}: {e}"));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| leaf_error(&e))?;
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|e| leaf_error(&e))?;
        // The common name is the first name, unless that is an address: verifiers (OpenSSL) check a common
        // name that looks like a DNS name against the CA's DNS name constraints, and an address is no DNS name.
        let first = names.first().copied().unwrap_or("localhost");
        let common_name = if first.parse::<std::net::IpAddr>().is_ok() { "Cmux Preview Proxy leaf" } else { first };
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        // Under Chromium's 398-day ceiling for leaf certificates, and never past the CA's own end.
        params.not_after = (now + Duration::days(390)).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| leaf_error(&e))?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// Reads a PKCS#8 key, an RSA key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`, as
/// `openssl genrsa` and node-forge write it) or an EC key in SEC1 form
/// (`BEGIN EC PRIVATE KEY`), the last two wrapped in PKCS#8, which is what ring reads.
fn key_pair_from_pem(key_pem: &str) -> Result<KeyPair, ConfigError> {
    let unusable =
        |e: &dyn std::fmt::Display| ConfigError::new("caKeyPem", format!("is not a usable private key: {e}"));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| unusable(&e))?;
    let candidates = match &key {
        PrivateKeyDer::Pkcs8(der) => vec![der.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(der) => vec![pkcs8_of(RSA_ENCRYPTION, der.secret_pkcs1_der())],
        // SEC1 names its curve only inside; ring checks that it matches the one we try.
        PrivateKeyDer::Sec1(der) => {
            [EC_P256, EC_P384].iter().map(|algorithm| pkcs8_of(algorithm, der.secret_sec1_der())).collect()
        }
        _ => return Err(unusable(&"use a PKCS#8, RSA PKCS#1 or EC SEC1 key")),
    };
    let mut last_error = None;
    for pkcs8 in candidates {
        match KeyPair::try_from(pkcs8.as_slice()) {
            Ok(key) => return Ok(key),
            Err(e) => last_error = Some(e),
        }
    }
    Err(unusable(&last_error.map_or_else(|| "no key".to_owned(), |e| e.to_string())))
}

/// DER AlgorithmIdentifiers: rsaEncryption with NULL parameters, and
/// id-ecPublicKey with the named curves P-256 and P-384.
const RSA_ENCRYPTION: &[u8] =
    &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
const EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
    0x01, 0x07,
];
const EC_P384: &[u8] =
    &[0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// PrivateKeyInfo { version 0, `algorithm`, the key as an OCTET STRING }.
fn pkcs8_of(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    const VERSION_0: &[u8] = &[0x02, 0x01, 0x00];
    let key = der_element(0x04, key);
    der_element(0x30, &[VERSION_0, algorithm, &key].concat())
}

fn der_element(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_generated_ca_reloads_with_the_same_spki() {
        let (cert, key) = generate_ca_pem(MAX_KEPT_CA_DAYS).unwrap();
        let ca = CertificateAuthority::from_pem(&cert, &key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        let expected = ring::digest::digest(&ring::digest::SHA256, parsed.public_key().raw);
        use base64::Engine;
        assert_eq!(ca.spki_sha256(), base64::engine::general_purpose::STANDARD.encode(expected.as_ref()));
        assert_eq!(ca.spki_sha256().len(), 44);
        let leaf = ca.issue_leaf_for(&["localhost", "127.0.0.1", "::1"]).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
        let rendered = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(
            rendered.contains("DNSName(\"localhost\")") && rendered.matches("IPAddress").count() == 2,
            "{rendered}"
        );
    }

    /// rustls' own verdict on `leaf` for `name`, with `ca` the only root.
    fn webpki_verdict(ca: &CertificateAuthority, leaf: &Leaf, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(&leaf.chain[0], &[], &name, &[], rustls::pki_types::UnixTime::now()).map(|_| ())
    }

    #[test]
    fn generated_cas_are_short_lived_and_sign_only_for_intercepted_names() {
        let ca = CertificateAuthority::generate().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
        let lifetime = cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!(lifetime <= i64::from(PER_LAUNCH_CA_DAYS) * 86_400 && lifetime > 86_400 * 29, "{lifetime}");
        let constraints = cert.name_constraints().unwrap().expect("name constraints").value;
        assert!(constraints.excluded_subtrees.is_none());
        assert_eq!(constraints.permitted_subtrees.as_ref().map(Vec::len), Some(11));
        for name in [
            "localhost",
            "app.localhost",
            "cmux-test-base-8080.cmux.local",
            "x.manaflow.local",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(crate::policy::routing::is_intercepted_host(name), "{name}");
            let leaf = ca.issue_leaf(name).unwrap();
            assert_eq!(webpki_verdict(&ca, &leaf, name), Ok(()), "{name}");
            let (_, leaf) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
            assert!(leaf.validity().not_after <= cert.validity().not_after, "a leaf never outlives its CA");
        }
        // Whatever the proxy were made to sign outside them, a verifier refuses.
        for name in
            ["example.com", "localhost.example.com", "cmux.local.evil.com", "10.0.0.1", "::ffff:10.0.0.1", "::2"]
        {
            let leaf = ca.issue_leaf(name).unwrap();
            assert!(webpki_verdict(&ca, &leaf, name).is_err(), "{name}");
        }
        let (kept, _) = generate_ca_pem(MAX_KEPT_CA_DAYS).unwrap();
        let kept = x509_parser::pem::parse_x509_pem(kept.as_bytes()).unwrap().1;
        let kept = kept.parse_x509().unwrap();
        let lifetime = kept.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!(lifetime <= i64::from(MAX_KEPT_CA_DAYS) * 86_400, "{lifetime}");
        assert!(kept.name_constraints().unwrap().is_some());
    }

    /// The content of the DER element at the start of `der`, and what follows it.
    fn der_content(der: &[u8]) -> (&[u8], &[u8]) {
        let (len, header) = match der[1] {
            n if n < 0x80 => (n as usize, 2),
            0x81 => (der[2] as usize, 3),
            _ => (u16::from_be_bytes([der[2], der[3]]) as usize, 4),
        };
        (&der[header..header + len], &der[header + len..])
    }

    #[test]
    fn a_ca_key_in_sec1_form_is_accepted_for_p256_and_p384() {
        use base64::Engine;
        for algorithm in [&PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let key = KeyPair::generate_for(algorithm).unwrap();
            let mut params = ca_params(30, OffsetDateTime::now_utc());
            params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
            let cert = params.self_signed(&key).unwrap();
            // PKCS#8 = SEQUENCE { version, algorithm, OCTET STRING { the SEC1 ECPrivateKey } }
            let pkcs8 = key.serialize_der();
            let (info, _) = der_content(&pkcs8);
            let (_, rest) = der_content(info); // version
            let (_, rest) = der_content(rest); // algorithm
            let (sec1, _) = der_content(rest);
            let body = base64::engine::general_purpose::STANDARD.encode(sec1);
            let sec1_pem = format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n");
            let ca = CertificateAuthority::from_pem(&cert.pem(), &sec1_pem).unwrap();
            let leaf = ca.issue_leaf("app.cmux.local").unwrap();
            let (_, leaf) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
            let (_, ca_cert) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
            leaf.verify_signature(Some(ca_cert.public_key())).expect("the leaf is signed by the given key");
        }
    }

    #[test]
    fn leaves_chain_to_the_ca_with_the_right_san() {
        let ca = CertificateAuthority::generate().unwrap();
        for host in ["localhost", "app.localhost", "127.0.0.1", "::1"] {
            let leaf = ca.issue_leaf(host).unwrap();
            assert_eq!(leaf.chain.len(), 2);
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let rendered = format!("{:?}", san.value.general_names);
            if host.parse::<std::net::IpAddr>().is_ok() {
                assert!(rendered.contains("IPAddress"), "{host}: {rendered}");
            } else {
                assert!(rendered.contains(&format!("DNSName(\"{host}\")")), "{host}: {rendered}");
            }
            let (_, ca_cert) = x509_parser::parse_x509_certificate(&leaf.chain[1]).unwrap();
            assert_eq!(cert.issuer(), ca_cert.subject());
            assert!(cert.validity().not_before.timestamp() < OffsetDateTime::now_utc().unix_timestamp() - 3600);
        }
    }

    #[test]
    fn a_given_ca_must_match_its_key() {
        let ca = CertificateAuthority::generate().unwrap();
        let key = ca.issuer.key().serialize_pem();
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), &key).unwrap();
        assert_eq!(reloaded.cert_der, ca.cert_der);
        reloaded.issue_leaf("localhost").unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let mismatch = CertificateAuthority::from_pem(ca.cert_pem(), &other).err().expect("a foreign key is refused");
        assert_eq!((mismatch.field, mismatch.reason.as_str()), ("caKeyPem", "does not belong to caCertPem"));
        assert!(CertificateAuthority::from_pem("garbage", &key).is_err());
        assert!(CertificateAuthority::from_pem(ca.cert_pem(), "garbage").is_err());
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_element(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(&der_element(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(&der_element(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
