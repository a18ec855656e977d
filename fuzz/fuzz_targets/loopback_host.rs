#![no_main]
//! The loopback and interception classifiers never panic, ignore case and a
//! trailing dot, and every loopback host is intercepted.
use cmux_preview_proxy::fuzzing::{is_intercepted_host, is_loopback_host};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else { return };
    let verdict = is_loopback_host(host);
    let intercepted = is_intercepted_host(host);
    assert!(!verdict || intercepted, "{host:?}");
    if host.is_ascii() {
        assert_eq!(is_loopback_host(&host.to_ascii_uppercase()), verdict);
        assert_eq!(is_intercepted_host(&host.to_ascii_uppercase()), intercepted);
    }
    if !host.ends_with('.') {
        assert_eq!(is_loopback_host(&format!("{host}.")), verdict);
        assert_eq!(is_intercepted_host(&format!("{host}.")), intercepted);
    }
});
