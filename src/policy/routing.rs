//! Where a request goes: loopback classification, the cmux rewrite and the
//! address policy it carries. Pure functions, no IO.

use std::net::IpAddr;

use super::target::{is_valid_hostname, parse_authority};
pub(crate) use super::target::{HostPort, Scheme};
use crate::answer::error::ConfigError;
use crate::policy::address::PrivateNetworks;

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
