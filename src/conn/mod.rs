//! Connection types shared by the layers that serve and relay them: what
//! the first bytes say, and a stream whose sniffed bytes are replayed.

#[cfg(target_os = "linux")]
pub(crate) mod pipes;
pub(crate) mod prefixed;
pub(crate) mod sniff;
