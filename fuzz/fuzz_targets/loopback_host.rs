#![no_main]
//! The loopback classifier never panics and ignores case and a trailing dot.
use cmux_preview_proxy::fuzzing::is_loopback_host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else { return };
    let verdict = is_loopback_host(host);
    if host.is_ascii() {
        assert_eq!(is_loopback_host(&host.to_ascii_uppercase()), verdict);
    }
    if !host.ends_with('.') {
        assert_eq!(is_loopback_host(&format!("{host}.")), verdict);
    }
});
