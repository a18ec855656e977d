//! Where a request goes: loopback classification, the cmux rewrite, and the
//! parsing of request targets. Pure functions, no IO.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

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

/// The cloud dev box a context's loopback traffic goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) morph_id: String,
    pub(crate) scope: String,
    pub(crate) domain_suffix: String,
    pub(crate) proxy_origin: Option<Origin>,
}

/// A `scheme://host[:port]` origin, such as a cmux-proxy endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) addr: HostPort,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RouteError {
    pub(crate) field: &'static str,
    pub(crate) reason: &'static str,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid route.{}: {}", self.field, self.reason)
    }
}

impl Route {
    pub(crate) fn new(
        morph_id: &str,
        scope: &str,
        domain_suffix: &str,
        proxy_origin: Option<&str>,
    ) -> Result<Route, RouteError> {
        let slug = |field, value: &str| {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                Ok(value.to_owned())
            } else {
                Err(RouteError { field, reason: "must match [a-z0-9-]+" })
            }
        };
        let suffix = domain_suffix.trim_end_matches('.').to_ascii_lowercase();
        if suffix.parse::<IpAddr>().is_ok() || !is_valid_hostname(&suffix) || suffix.contains('_') {
            return Err(RouteError { field: "domainSuffix", reason: "must be a hostname such as cmux.app" });
        }
        let proxy_origin = proxy_origin
            .map(|o| {
                parse_origin(o).ok_or(RouteError {
                    field: "cmuxProxyOrigin",
                    reason: "must be an http(s) origin such as https://host[:port]",
                })
            })
            .transpose()?;
        Ok(Route {
            morph_id: slug("morphId", morph_id)?,
            scope: slug("scope", scope)?,
            domain_suffix: suffix,
            proxy_origin,
        })
    }

    /// `cmux-<morphId>-<scope>-<port>.<domainSuffix>`
    pub(crate) fn dev_box_host(&self, port: u16) -> String {
        format!("cmux-{}-{}-{}.{}", self.morph_id, self.scope, port, self.domain_suffix)
    }
}

/// The domains a cmux dev box URL can be under.
const CMUX_DOMAINS: [&str; 6] = ["cmux.app", "cmux.sh", "cmux.dev", "cmux.local", "cmux.localhost", "autobuild.app"];
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

/// The route of a preview URL, the other direction of [`Route::dev_box_host`]:
/// `port-<n>-morphvm-<id><suffix>` (a Morph URL) or
/// `cmux-<morphId>-<scope>-<port>.<cmux domain>`. `None` for anything else,
/// and for what [`Route::new`] would refuse.
pub fn derive_route(url: &str) -> Option<DerivedRoute> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let scheme = if uri.scheme_str()?.eq_ignore_ascii_case("http") { "http:" } else { "https:" };
    if uri.authority()?.as_str().contains('@') {
        return None;
    }
    let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
    let derived = match host.strip_prefix("port-") {
        Some(rest) => {
            let (port, rest) = rest.split_once('-')?;
            let rest = rest.strip_prefix("morphvm-").filter(|_| is_digits(port))?;
            let id = rest.split('.').next().unwrap_or_default();
            DerivedRoute {
                morph_id: id.to_owned(),
                scope: "base".to_owned(),
                domain_suffix: "cmux.app".to_owned(),
                cmux_proxy_origin: format!("{scheme}//port-{CMUX_PROXY_PORT}-morphvm-{rest}"),
            }
        }
        None => {
            let rest = host.strip_prefix("cmux-")?;
            let (label, domain) =
                CMUX_DOMAINS.iter().find_map(|d| Some((rest.strip_suffix(d)?.strip_suffix('.')?, *d)))?;
            let mut parts = label.rsplitn(3, '-');
            let (port, scope, morph_id) = (parts.next()?, parts.next()?, parts.next()?);
            if !is_digits(port) || label.contains('.') {
                return None;
            }
            DerivedRoute {
                morph_id: morph_id.to_owned(),
                scope: scope.to_owned(),
                domain_suffix: domain.to_owned(),
                cmux_proxy_origin: format!("{scheme}//port-{CMUX_PROXY_PORT}-morphvm-{morph_id}.http.cloud.morph.so"),
            }
        }
    };
    Route::new(&derived.morph_id, &derived.scope, &derived.domain_suffix, Some(&derived.cmux_proxy_origin)).ok()?;
    Some(derived)
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressPolicy {
    Any,
    /// A routed preview's own requests: never an address on the user's machine,
    /// whatever name leads there (its loopback names go to the dev box instead).
    RemoteOnly,
}

/// Addresses that reach the user's machine or its link: loopback,
/// unspecified (`0.0.0.0` connects to loopback) and link-local.
pub(crate) fn is_local_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_address(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
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
    if !is_loopback_host(&target.host) {
        return Upstream {
            scheme,
            addr: target.clone(),
            extra_headers: Vec::new(),
            rewritten: false,
            policy: AddressPolicy::RemoteOnly,
        };
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

    #[test]
    fn routes_derived_from_preview_urls() {
        let morph = |id: &str, origin: &str| DerivedRoute {
            morph_id: id.into(),
            scope: "base".into(),
            domain_suffix: "cmux.app".into(),
            cmux_proxy_origin: origin.into(),
        };
        let cmux = |id: &str, scope: &str, domain: &str, scheme: &str| DerivedRoute {
            morph_id: id.into(),
            scope: scope.into(),
            domain_suffix: domain.into(),
            cmux_proxy_origin: format!("{scheme}//port-39379-morphvm-{id}.http.cloud.morph.so"),
        };
        let cases: Vec<(&str, Option<DerivedRoute>)> = vec![
            (
                "https://port-5173-morphvm-abc123.http.cloud.morph.so/",
                Some(morph("abc123", "https://port-39379-morphvm-abc123.http.cloud.morph.so")),
            ),
            (
                "http://port-3000-morphvm-abc.http.cloud.morph.so/x?y=1",
                Some(morph("abc", "http://port-39379-morphvm-abc.http.cloud.morph.so")),
            ),
            (
                "HTTPS://PORT-8080-MORPHVM-XYZ.HTTP.CLOUD.MORPH.SO",
                Some(morph("xyz", "https://port-39379-morphvm-xyz.http.cloud.morph.so")),
            ),
            ("https://port-1-morphvm-a", Some(morph("a", "https://port-39379-morphvm-a"))),
            (
                "wss://port-5173-morphvm-abc.example.com:8443/hmr",
                Some(morph("abc", "https://port-39379-morphvm-abc.example.com")),
            ),
            ("https://port-x-morphvm-abc.cloud", None),
            ("https://port--morphvm-abc.cloud", None),
            ("https://port-5173-morphvm-.cloud", None),
            ("https://port-5173-vm-abc.cloud", None),
            ("https://port-5173-morphvm-a_b.cloud", None),
            ("https://cmux-m1-base-3000.cmux.app/", Some(cmux("m1", "base", "cmux.app", "https:"))),
            ("http://cmux-m1-base-3000.cmux.app/", Some(cmux("m1", "base", "cmux.app", "http:"))),
            ("https://cmux-m1-base-3000.cmux.sh", Some(cmux("m1", "base", "cmux.sh", "https:"))),
            ("https://cmux-m1-base-3000.cmux.dev", Some(cmux("m1", "base", "cmux.dev", "https:"))),
            ("https://cmux-m1-base-3000.cmux.local", Some(cmux("m1", "base", "cmux.local", "https:"))),
            ("https://cmux-m1-base-3000.cmux.localhost", Some(cmux("m1", "base", "cmux.localhost", "https:"))),
            ("https://cmux-m1-base-3000.autobuild.app", Some(cmux("m1", "base", "autobuild.app", "https:"))),
            (
                "https://cmux-morph-with-dashes-pr-12-5173.cmux.app",
                Some(cmux("morph-with-dashes-pr", "12", "cmux.app", "https:")),
            ),
            ("https://cmux-a-b-c-feature-8080.cmux.app", Some(cmux("a-b-c", "feature", "cmux.app", "https:"))),
            ("HTTPS://CMUX-M1-BASE-3000.CMUX.APP:443/Path", Some(cmux("m1", "base", "cmux.app", "https:"))),
            ("https://cmux-m1-base-3000.cmux.app.:8443", Some(cmux("m1", "base", "cmux.app", "https:"))),
            ("ws://cmux-m1-base-3000.cmux.app/hmr", Some(cmux("m1", "base", "cmux.app", "https:"))),
            ("https://cmux-m1-base-3000.cmux.app.evil.com", None),
            ("https://cmux-m1-base-3000.xcmux.app", None),
            ("https://xcmux-m1-base-3000.cmux.app", None),
            ("https://cmux-m1-base-30a0.cmux.app", None),
            ("https://cmux-m1-base-.cmux.app", None),
            ("https://cmux-base-3000.cmux.app", None),
            ("https://cmux--base-3000.cmux.app", None),
            ("https://cmux-m1-base-3000.sub.cmux.app", None),
            ("https://cmux-m1-base-3000.other.app", None),
            ("https://cmux.app", None),
            ("https://user@cmux-m1-base-3000.cmux.app", None),
            ("http://localhost:3000/", None),
            ("not a url", None),
            ("", None),
            ("cmux-m1-base-3000.cmux.app", None),
        ];
        for (url, expected) in cases {
            assert_eq!(derive_route(url), expected, "{url}");
        }
    }

    #[test]
    fn derived_routes_rewrite_back_to_their_dev_box() {
        let derived = derive_route("https://cmux-m1-base-3000.cmux.app/").unwrap();
        let route = Route::new(&derived.morph_id, &derived.scope, &derived.domain_suffix, None).unwrap();
        assert_eq!(route.dev_box_host(3000), "cmux-m1-base-3000.cmux.app");
    }

    #[test]
    fn local_addresses() {
        for ip in ["127.0.0.1", "127.1.2.3", "0.0.0.0", "169.254.1.1", "::1", "::", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(is_local_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "fec0::1", "::ffff:8.8.8.8"] {
            assert!(!is_local_address(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_a_routed_previews_forwarded_requests_keep_off_local_addresses() {
        let route = Route::new("m", "s", "cmux.app", None).unwrap();
        let policy = |route: Option<&Route>, host: &str| upstream_for(route, Scheme::Http, &hp(host, 80)).policy;
        assert_eq!(policy(Some(&route), "example.com"), AddressPolicy::RemoteOnly);
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
        assert_eq!(Route::new("M1", "base", "cmux.app", None).unwrap_err().field, "morphId");
        assert_eq!(Route::new("", "base", "cmux.app", None).unwrap_err().field, "morphId");
        assert_eq!(Route::new("m", "a_b", "cmux.app", None).unwrap_err().field, "scope");
        assert_eq!(Route::new("m", "s", "bad host", None).unwrap_err().field, "domainSuffix");
        assert_eq!(Route::new("m", "s", "1.2.3.4", None).unwrap_err().field, "domainSuffix");
        assert_eq!(Route::new("m", "s", "cmux.app", Some("ftp://x")).unwrap_err().field, "cmuxProxyOrigin");
        assert_eq!(Route::new("m", "s", "cmux.app", Some("https://x/path")).unwrap_err().field, "cmuxProxyOrigin");
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
