#![no_main]
//! The `Proxy-Authorization` parser never panics and only yields non-empty parts.
use cmux_preview_proxy::fuzzing::parse_basic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((user, pass)) = parse_basic(data) {
        assert!(!user.is_empty() && !pass.is_empty() && !user.contains(':'));
    }
});
