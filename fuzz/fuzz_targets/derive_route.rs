#![no_main]
//! deriveRoute never panics, returns only routes the proxy accepts, and reads
//! its own naming back.
use cmux_preview_proxy::fuzzing::derive_route;
use libfuzzer_sys::fuzz_target;

fn is_label(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let Some(route) = derive_route(url) else { return };
    assert!(is_label(&route.morph_id) && is_label(&route.scope), "{route:?}");
    let origin = format!("//port-39379-morphvm-{}.http.cloud.morph.so", route.morph_id);
    assert!(route.cmux_proxy_origin.ends_with(&origin), "{route:?}");
    // The same URL in upper case names the same route.
    if url.is_ascii() {
        assert_eq!(derive_route(&url.to_ascii_uppercase()).as_ref(), Some(&route));
    }
    // The dev box host the proxy builds from a route derives that route again (when the morph id has
    // no empty dash segment, which cmux's reading drops).
    if route.morph_id.split('-').all(|s| !s.is_empty()) && !route.scope.contains('-') {
        let host = format!("https://cmux-{}-{}-1.{}/", route.morph_id, route.scope, route.domain_suffix);
        let again = derive_route(&host).expect("a dev box host has a route");
        assert_eq!((again.morph_id, again.scope), (route.morph_id, route.scope));
    }
});
