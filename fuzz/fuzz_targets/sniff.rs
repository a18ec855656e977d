#![no_main]
//! The first-bytes sniffer never panics, and its verdict is stable: once it
//! decides, more bytes do not change the decision.
use cmux_preview_proxy::fuzzing::sniff;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len() {
        match (decided, sniff(&data[..end])) {
            (None, verdict) => decided = verdict,
            (Some(earlier), Some(later)) => assert_eq!(earlier, later, "verdict changed at {end} bytes"),
            (Some(_), None) => panic!("sniff forgot its verdict at {end} bytes"),
        }
    }
});
