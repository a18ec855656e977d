#![no_main]
//! The CONNECT authority parser never panics, and what it accepts round-trips.
use cmux_preview_proxy::fuzzing::parse_authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(target) = parse_authority(text, None) {
        assert!(target.port > 0 && !target.host.is_empty());
        assert_eq!(parse_authority(&target.authority(), None).as_ref(), Ok(&target));
    }
    let _ = parse_authority(text, Some(443));
});
