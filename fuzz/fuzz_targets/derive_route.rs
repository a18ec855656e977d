#![no_main]
use cmux_preview_proxy::fuzzing::derive_route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    if let Some(route) = derive_route(url) {
        assert!(!route.morph_id.is_empty() && !route.scope.is_empty());
        assert!(route.cmux_proxy_origin.starts_with("http"));
        // The same URL in upper case names the same route.
        if url.is_ascii() {
            assert_eq!(derive_route(&url.to_ascii_uppercase()), Some(route));
        }
    }
});
