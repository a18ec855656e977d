//! The route of a preview URL: cmux's `deriveRoute`, the other direction of
//! the rewrite. Pure functions, no IO.

use super::routing::Route;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn derived_routes_rewrite_back_to_their_dev_box() {
        let derived = derive_route("https://cmux-m1-base-3000.cmux.app/").unwrap();
        let route = Route::new(&derived.morph_id, &derived.scope, &derived.domain_suffix, None).unwrap();
        assert_eq!(route.dev_box_host(3000), "cmux-m1-base-3000.cmux.app");
    }
}
