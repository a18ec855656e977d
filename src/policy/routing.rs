//! Where a request goes: loopback classification, the cmux rewrite, and the
//! parsing of request targets. Pure functions, no IO.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::answer::error::ConfigError;
use crate::policy::address::PrivateNetworks;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn parse(s: &str) -> Option<Scheme> {
        let is = |name: &str| s.eq_ignore_ascii_case(name);
        match () {
            _ if is("http") || is("ws") => Some(Scheme::Http),
            _ if is("https") || is("wss") => Some(Scheme::Https),
            _ => None,
        }
    }
}

/// A host and port as the client asked for them. `host` is lowercase, without
/// brackets around IPv6 literals and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port`, with IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }

    /// The value of a `Host` header: the port is left out when it is the scheme's default.
    pub(crate) fn host_header(&self, scheme: Scheme) -> String {
        if self.port == scheme.default_port() {
            bracketed(&self.host).into_owned()
        } else {
            self.authority()
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

fn bracketed(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    MissingHost,
    BadHost,
    MissingPort,
    BadPort,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::MissingHost => "request target has no host",
            TargetError::BadHost => "request target has an invalid host",
            TargetError::MissingPort => "CONNECT target needs host:port",
            TargetError::BadPort => "request target has an invalid port",
        })
    }
}

/// Parses `host[:port]` (IPv6 in brackets). Without a port, `default_port` is
/// used, or `MissingPort` when there is none (CONNECT).
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<HostPort, TargetError> {
    // Userinfo has no place in a proxy target.
    if input.contains('@') {
        return Err(TargetError::BadHost);
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(TargetError::BadHost)?;
        host.parse::<Ipv6Addr>().map_err(|_| TargetError::BadHost)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or(TargetError::BadHost)?)),
        }
    } else {
        match input.rsplit_once(':') {
            // More than one colon without brackets: an unbracketed IPv6 literal.
            Some((host, _)) if host.contains(':') => return Err(TargetError::BadHost),
            Some((host, port)) => (host, Some(port)),
            None => (input, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(TargetError::MissingPort)?,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(TargetError::MissingHost);
    }
    if !host.contains(':') && !is_valid_hostname(host) {
        return Err(TargetError::BadHost);
    }
    Ok(HostPort { host: host.to_ascii_lowercase(), port })
}

fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::BadPort),
        Ok(port) => Ok(port),
    }
}

/// Letters, digits, `-`, `_` and dots; what DNS names and IPv4 literals use.
fn is_valid_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The scheme and host:port of an absolute request URI (`http://h:p/x`).
pub(crate) fn target_of_uri(uri: &http::Uri) -> Result<(Scheme, HostPort), TargetError> {
    let scheme = uri.scheme_str().and_then(Scheme::parse).ok_or(TargetError::MissingHost)?;
    let authority = uri.authority().ok_or(TargetError::MissingHost)?;
    let target = parse_authority(authority.as_str(), Some(scheme.default_port()))?;
    Ok((scheme, target))
}

/// Hosts that mean "this machine" to the page: for a routed context they mean
/// the cloud dev box instead.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // Bytes, not a str slice: the cut may fall inside a multi-byte character (found by fuzzing).
    let suffix = b".localhost";
    if host.len() > suffix.len() && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix) {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback() || v4.is_unspecified(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Hosts under these suffixes are the developer's own machine by design
/// (cmux's local development domains): a routed preview may reach them
/// wherever they resolve.
const LOCAL_DEV_SUFFIXES: [&str; 4] = ["cmux.local", "cmux.localhost", "manaflow.local", "manaflow.localhost"];
/// Besides loopback names, a routed context's CONNECTs to hosts under these
/// are looked into (cmux's `shouldInterceptTls`).
const INTERCEPTED_SUFFIXES: [&str; 2] = ["cmux.local", "manaflow.local"];

/// `host` (lowercase, no trailing dot) is a subdomain of `suffix`.
fn is_under(host: &str, suffix: &str) -> bool {
    host.strip_suffix(suffix).is_some_and(|rest| rest.ends_with('.'))
}

/// `host` or a subdomain of it is a local development domain.
pub(crate) fn is_local_dev_host(host: &str) -> bool {
    LOCAL_DEV_SUFFIXES.iter().any(|suffix| host == *suffix || is_under(host, suffix))
}

/// Whether a routed context's `CONNECT` to `host` is looked into: loopback
/// names, and hosts under `.cmux.local` or `.manaflow.local`.
pub fn is_intercepted_host(host: &str) -> bool {
    if is_loopback_host(host) {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    INTERCEPTED_SUFFIXES.iter().any(|suffix| is_under(&host, suffix))
}

/// The cloud dev box a context's loopback traffic goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) morph_id: String,
    pub(crate) scope: String,
    pub(crate) domain_suffix: String,
    pub(crate) proxy_origin: Option<Origin>,
    /// Every host is rewritten, not only loopback ones: cmux's test hook
    /// (`TEST_CMUX_PROXY_ORIGIN`), set by [`Route::through_test_origin`].
    pub(crate) every_host: bool,
    /// The private networks the preview's forwarded requests may reach.
    pub(crate) private_networks: PrivateNetworks,
}

/// A `scheme://host[:port]` origin, such as a cmux-proxy endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) addr: HostPort,
}

impl Origin {
    pub(crate) fn parse(s: &str) -> Option<Origin> {
        parse_origin(s)
    }
}

impl Route {
    pub(crate) fn new(
        morph_id: &str,
        scope: &str,
        domain_suffix: &str,
        proxy_origin: Option<&str>,
    ) -> Result<Route, ConfigError> {
        // What a DNS label may hold: these end up in the dev box's host name.
        let slug = |field, value: &str| {
            if !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                Ok(value.to_owned())
            } else {
                Err(ConfigError::new(field, "must match [a-z0-9_-]+"))
            }
        };
        let suffix = domain_suffix.trim_end_matches('.').to_ascii_lowercase();
        if suffix.parse::<IpAddr>().is_ok() || !is_valid_hostname(&suffix) || suffix.contains('_') {
            return Err(ConfigError::new("route.domainSuffix", "must be a hostname such as cmux.app"));
        }
        let proxy_origin = proxy_origin
            .map(|o| {
                parse_origin(o).ok_or_else(|| {
                    ConfigError::new("route.cmuxProxyOrigin", "must be an http(s) origin such as https://host[:port]")
                })
            })
            .transpose()?;
        Ok(Route {
            morph_id: slug("route.morphId", morph_id)?,
            scope: slug("route.scope", scope)?,
            domain_suffix: suffix,
            proxy_origin,
            every_host: false,
            private_networks: PrivateNetworks::default(),
        })
    }

    /// This route, also allowed to reach `networks`.
    pub(crate) fn allowing(self, networks: &PrivateNetworks) -> Route {
        Route { private_networks: self.private_networks.union(networks), ..self }
    }

    /// This route with every request, whatever its host, sent through `origin`.
    pub(crate) fn through_test_origin(self, origin: Origin) -> Route {
        Route { proxy_origin: Some(origin), every_host: true, ..self }
    }

    /// `cmux-<morphId>-<scope>-<port>.<domainSuffix>`
    pub(crate) fn dev_box_host(&self, port: u16) -> String {
        format!("cmux-{}-{}-{}.{}", self.morph_id, self.scope, port, self.domain_suffix)
    }
}

/// The domains a cmux dev box URL can be under, in cmux's order.
const CMUX_DOMAINS: [&str; 10] = [
    "cmux.app",
    "cmux.sh",
    "cmux.dev",
    "cmux.com",
    "cmux.local",
    "cmux.localhost",
    "manaflow.com",
    "manaflow.local",
    "manaflow.localhost",
    "autobuild.app",
];
/// The port of the cmux-proxy inside every dev box.
const CMUX_PROXY_PORT: u16 = 39379;

/// A route read off a preview URL, with the cmux-proxy origin as a string.
#[derive(Debug, PartialEq, Eq)]
pub struct DerivedRoute {
    pub morph_id: String,
    pub scope: String,
    pub domain_suffix: String,
    pub cmux_proxy_origin: String,
}

/// The route of a preview URL: cmux's `deriveRoute`, rule for rule. The URL is
/// parsed as a browser parses it (WHATWG, the `url` crate), then:
/// - a host `port-<digits>-morphvm-<id>.<anything>` gives morph id `<id>`,
///   scope `base`, suffix `cmux.app` and the origin
///   `http://port-39379-morphvm-<id>.http.cloud.morph.so`, whatever the URL's scheme;
/// - a host `<cmux-|manaflow-><segments>.<domain>` under one of
///   [`CMUX_DOMAINS`] (tried in order), whose dash segments (empty ones
///   dropped) are at least three and end in a numeric port: the scope is the
///   second-to-last segment, the morph id the ones before it joined by `-`, and
///   the origin `<http: for http, else https:>//port-39379-morphvm-<id>.http.cloud.morph.so`.
///
/// One deliberate difference: a route whose morph id or scope holds more than
/// a DNS label may (`.` from `cmux-a.b-c-1.cmux.app`, or `$`, `!`...) is `None`,
/// where cmux would return a route that names no dev box; [`Route::new`]
/// refuses those fields.
pub fn derive_route(url: &str) -> Option<DerivedRoute> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    let scheme = if parsed.scheme() == "http" { "http:" } else { "https:" };
    let derived = match morph_vm_id(&host) {
        Some(id) => Some(DerivedRoute {
            morph_id: id.to_owned(),
            scope: "base".to_owned(),
            domain_suffix: "cmux.app".to_owned(),
            cmux_proxy_origin: format!("http://port-{CMUX_PROXY_PORT}-morphvm-{id}.http.cloud.morph.so"),
        }),
        None => CMUX_DOMAINS.iter().find_map(|domain| {
            let subdomain = host.strip_suffix(domain)?.strip_suffix('.')?;
            let rest = subdomain.strip_prefix("manaflow-").or_else(|| subdomain.strip_prefix("cmux-"))?;
            let mut segments: Vec<&str> = rest.split('-').filter(|s| !s.is_empty()).collect();
            if segments.len() < 3 {
                return None;
            }
            let (port, scope) = (segments.pop()?, segments.pop()?);
            if !is_digits(port) {
                return None;
            }
            let morph_id = segments.join("-");
            Some(DerivedRoute {
                cmux_proxy_origin: format!("{scheme}//port-{CMUX_PROXY_PORT}-morphvm-{morph_id}.http.cloud.morph.so"),
                morph_id,
                scope: scope.to_owned(),
                domain_suffix: (*domain).to_owned(),
            })
        }),
    }?;
    Route::new(&derived.morph_id, &derived.scope, &derived.domain_suffix, Some(&derived.cmux_proxy_origin)).ok()?;
    Some(derived)
}

/// `<id>` of `port-<digits>-morphvm-<id>.<suffix>` (`<id>` without dots, `<suffix>` not empty).
fn morph_vm_id(host: &str) -> Option<&str> {
    let rest = host.strip_prefix("port-")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let rest = rest[digits..].strip_prefix("-morphvm-").filter(|_| digits > 0)?;
    let (id, suffix) = rest.split_once('.')?;
    (!id.is_empty() && !suffix.is_empty()).then_some(id)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_origin(s: &str) -> Option<Origin> {
    let uri: http::Uri = s.parse().ok()?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let scheme = match uri.scheme_str()? {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let addr = parse_authority(uri.authority()?.as_str(), Some(scheme.default_port())).ok()?;
    Some(Origin { scheme, addr })
}

/// Where a request is actually sent, and what it must carry to get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub(crate) scheme: Scheme,
    pub(crate) addr: HostPort,
    /// Headers to set on the forwarded request (`X-Cmux-*` for a cmux-proxy origin).
    pub(crate) extra_headers: Vec<(&'static str, String)>,
    /// True when the loopback rewrite applied.
    pub(crate) rewritten: bool,
    /// Which addresses a name may resolve to for this request.
    pub(crate) policy: AddressPolicy,
}

/// What DNS may send a request to. Addresses the app configured (`resolve`)
/// are trusted either way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressPolicy {
    Any,
    /// A routed preview's own requests: only globally reachable addresses that
    /// are not the user's machine, plus the private networks the app opted into
    /// (see `address.rs`), whatever name leads there (its loopback names go to
    /// the dev box instead).
    PublicOnly(PrivateNetworks),
}

impl Upstream {
    pub(crate) fn host_header(&self) -> String {
        self.addr.host_header(self.scheme)
    }
}

pub(crate) const HEADER_PORT_INTERNAL: &str = "x-cmux-port-internal";
pub(crate) const HEADER_HOST_OVERRIDE: &str = "x-cmux-host-override";

/// Decides the upstream of a request for `target` reached with `scheme`.
pub(crate) fn upstream_for(route: Option<&Route>, scheme: Scheme, target: &HostPort) -> Upstream {
    let Some(route) = route else {
        return Upstream {
            scheme,
            addr: target.clone(),
            extra_headers: Vec::new(),
            rewritten: false,
            policy: AddressPolicy::Any,
        };
    };
    if !route.every_host && !is_loopback_host(&target.host) {
        // The developer's own local domains are meant to reach their machine.
        let policy = match is_local_dev_host(&target.host) {
            true => AddressPolicy::Any,
            false => AddressPolicy::PublicOnly(route.private_networks.clone()),
        };
        return Upstream { scheme, addr: target.clone(), extra_headers: Vec::new(), rewritten: false, policy };
    }
    match &route.proxy_origin {
        Some(origin) => Upstream {
            scheme: origin.scheme,
            addr: origin.addr.clone(),
            extra_headers: vec![
                (HEADER_PORT_INTERNAL, target.port.to_string()),
                (HEADER_HOST_OVERRIDE, target.authority()),
            ],
            rewritten: true,
            policy: AddressPolicy::Any,
        },
        None => Upstream {
            scheme: Scheme::Https,
            addr: HostPort { host: route.dev_box_host(target.port), port: 443 },
            extra_headers: Vec::new(),
            rewritten: true,
            policy: AddressPolicy::Any,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort { host: host.into(), port }
    }

    /// The shared table of `__test__/fixtures/derive-route.txt` (also checked through the addon).
    #[test]
    fn routes_derived_from_preview_urls() {
        let table = include_str!("../../__test__/fixtures/derive-route.txt");
        let mut cases = 0;
        for line in table.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (url, expected) = line.split_once(" => ").expect("a case is `<url> => <route>`");
            let got = derive_route(url)
                .map(|r| format!("{} {} {} {}", r.morph_id, r.scope, r.domain_suffix, r.cmux_proxy_origin));
            assert_eq!(got.as_deref().unwrap_or("null"), expected, "{url:?}");
            cases += 1;
        }
        assert!(cases >= 40, "{cases} cases");
        // What the one-line format cannot hold: the spaces, tabs and newlines a browser's parser ignores.
        let spaced = derive_route(" \thttps://cmux-m1-ba\nse-3000.cmux.app/ \n").expect("a route");
        assert_eq!((spaced.morph_id.as_str(), spaced.scope.as_str()), ("m1", "base"));
    }

    #[test]
    fn intercepted_and_local_development_hosts() {
        for host in
            ["localhost", "127.0.0.1", "[::1]", "a.localhost", "app.cmux.local", "X.Manaflow.Local.", "a.b.cmux.local"]
        {
            assert!(is_intercepted_host(host), "{host}");
        }
        for host in [
            "cmux.local",
            "cmux.localhost.evil",
            "app.cmux.local.evil",
            "xcmux.local",
            "app.manaflow.com",
            "example.com",
        ] {
            assert!(!is_intercepted_host(host), "{host}");
        }
        for host in ["cmux.local", "a.cmux.local", "a.cmux.localhost", "manaflow.local", "b.manaflow.localhost"] {
            assert!(is_local_dev_host(host), "{host}");
        }
        for host in ["xcmux.local", "cmux.local.evil.com", "a.cmux.app", "a.manaflow.com"] {
            assert!(!is_local_dev_host(host), "{host}");
        }
    }

    #[test]
    fn local_development_hosts_may_reach_the_users_machine() {
        let route = Route::new("m", "s", "cmux.app", None).unwrap();
        let up = upstream_for(Some(&route), Scheme::Https, &hp("app.cmux.local", 443));
        assert_eq!((up.addr, up.rewritten, up.policy), (hp("app.cmux.local", 443), false, AddressPolicy::Any));
        let up = upstream_for(Some(&route), Scheme::Https, &hp("app.cmux.local.evil.com", 443));
        assert_eq!(up.policy, AddressPolicy::PublicOnly(PrivateNetworks::default()));
    }

    #[test]
    fn a_test_origin_takes_every_host_of_a_routed_context() {
        let origin = Origin::parse("https://127.0.0.1:8081").unwrap();
        let route = Route::new("test", "base", "cmux.local", None).unwrap().through_test_origin(origin);
        let up = upstream_for(Some(&route), Scheme::Https, &hp("example.com", 443));
        assert_eq!((up.scheme, up.addr, up.rewritten), (Scheme::Https, hp("127.0.0.1", 8081), true));
        assert_eq!(
            up.extra_headers,
            vec![(HEADER_PORT_INTERNAL, "443".to_string()), (HEADER_HOST_OVERRIDE, "example.com:443".to_string())]
        );
        assert_eq!(up.policy, AddressPolicy::Any);
    }

    #[test]
    fn derived_routes_rewrite_back_to_their_dev_box() {
        let derived = derive_route("https://cmux-m1-base-3000.cmux.app/").unwrap();
        let route = Route::new(&derived.morph_id, &derived.scope, &derived.domain_suffix, None).unwrap();
        assert_eq!(route.dev_box_host(3000), "cmux-m1-base-3000.cmux.app");
    }

    #[test]
    fn only_a_routed_previews_forwarded_requests_keep_off_local_addresses() {
        let route = Route::new("m", "s", "cmux.app", None).unwrap();
        let policy = |route: Option<&Route>, host: &str| upstream_for(route, Scheme::Http, &hp(host, 80)).policy;
        assert_eq!(policy(Some(&route), "example.com"), AddressPolicy::PublicOnly(PrivateNetworks::default()));
        assert_eq!(policy(Some(&route), "localhost"), AddressPolicy::Any);
        assert_eq!(policy(None, "example.com"), AddressPolicy::Any);
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "app.localhost",
            "a.b.localhost",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "example.com",
            "localhost.com",
            "notlocalhost",
            "xlocalhost",
            "128.0.0.1",
            "10.0.0.1",
            "::2",
            "cmux.app",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(parse_authority("localhost:3000", None), Ok(hp("localhost", 3000)));
        assert_eq!(parse_authority("Example.COM.", Some(80)), Ok(hp("example.com", 80)));
        assert_eq!(parse_authority("[::1]:8080", None), Ok(hp("::1", 8080)));
        assert_eq!(parse_authority("[::1]", Some(443)), Ok(hp("::1", 443)));
        assert_eq!(parse_authority("host", None), Err(TargetError::MissingPort));
        assert_eq!(parse_authority(":80", None), Err(TargetError::MissingHost));
        assert_eq!(parse_authority("", None), Err(TargetError::MissingPort));
        assert_eq!(parse_authority("h:", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:0", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:65536", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:+80", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("h:99999999999", None), Err(TargetError::BadPort));
        assert_eq!(parse_authority("::1:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("[::1]80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("[nope]:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("user@h:80", None), Err(TargetError::BadHost));
        assert_eq!(parse_authority("a b:80", None), Err(TargetError::BadHost));
        assert_eq!(hp("::1", 80).authority(), "[::1]:80");
        assert_eq!(hp("::1", 80).host_header(Scheme::Http), "[::1]");
        assert_eq!(hp("a", 8080).host_header(Scheme::Http), "a:8080");
    }

    #[test]
    fn uri_targets() {
        let uri: http::Uri = "http://LocalHost:3000/x?y".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Http, hp("localhost", 3000))));
        let uri: http::Uri = "https://example.com/".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Https, hp("example.com", 443))));
        let uri: http::Uri = "ws://[::1]/hmr".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Ok((Scheme::Http, hp("::1", 80))));
        let uri: http::Uri = "/relative".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Err(TargetError::MissingHost));
        let uri: http::Uri = "ftp://h/".parse().unwrap();
        assert_eq!(target_of_uri(&uri), Err(TargetError::MissingHost));
    }

    fn route(origin: Option<&str>) -> Route {
        Route::new("m1", "base", "cmux.app", origin).unwrap()
    }

    #[test]
    fn route_validation_names_the_field() {
        assert_eq!(Route::new("M1", "base", "cmux.app", None).unwrap_err().field, "route.morphId");
        assert_eq!(Route::new("", "base", "cmux.app", None).unwrap_err().field, "route.morphId");
        assert_eq!(Route::new("m", "a.b", "cmux.app", None).unwrap_err().field, "route.scope");
        assert_eq!(Route::new("m", "a$b", "cmux.app", None).unwrap_err().field, "route.scope");
        assert!(Route::new("m_1", "a_b", "cmux.app", None).is_ok());
        assert_eq!(Route::new("m", "s", "bad host", None).unwrap_err().field, "route.domainSuffix");
        assert_eq!(Route::new("m", "s", "1.2.3.4", None).unwrap_err().field, "route.domainSuffix");
        assert_eq!(Route::new("m", "s", "cmux.app", Some("ftp://x")).unwrap_err().field, "route.cmuxProxyOrigin");
        assert_eq!(
            Route::new("m", "s", "cmux.app", Some("https://x/path")).unwrap_err().field,
            "route.cmuxProxyOrigin"
        );
        let r = route(Some("https://Port-1.example.com"));
        assert_eq!(r.proxy_origin, Some(Origin { scheme: Scheme::Https, addr: hp("port-1.example.com", 443) }));
    }

    #[test]
    fn loopback_is_rewritten_to_the_dev_box() {
        let up = upstream_for(Some(&route(None)), Scheme::Http, &hp("localhost", 3000));
        assert_eq!(up.scheme, Scheme::Https);
        assert_eq!(up.addr, hp("cmux-m1-base-3000.cmux.app", 443));
        assert_eq!(up.host_header(), "cmux-m1-base-3000.cmux.app");
        assert!(up.rewritten && up.extra_headers.is_empty());
        let up = upstream_for(Some(&route(None)), Scheme::Https, &hp("::1", 443));
        assert_eq!(up.addr.host, "cmux-m1-base-443.cmux.app");
    }

    #[test]
    fn loopback_through_a_cmux_proxy_origin() {
        let up = upstream_for(Some(&route(Some("http://origin.test:8080"))), Scheme::Http, &hp("app.localhost", 5173));
        assert_eq!(up.scheme, Scheme::Http);
        assert_eq!(up.host_header(), "origin.test:8080");
        assert_eq!(
            up.extra_headers,
            vec![(HEADER_PORT_INTERNAL, "5173".to_string()), (HEADER_HOST_OVERRIDE, "app.localhost:5173".to_string())]
        );
    }

    #[test]
    fn other_hosts_and_unrouted_contexts_pass_unchanged() {
        let up = upstream_for(Some(&route(None)), Scheme::Http, &hp("example.com", 80));
        assert_eq!((up.scheme, up.addr, up.rewritten), (Scheme::Http, hp("example.com", 80), false));
        let up = upstream_for(None, Scheme::Http, &hp("localhost", 3000));
        assert_eq!((up.addr, up.rewritten), (hp("localhost", 3000), false));
    }
}
