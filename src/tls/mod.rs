//! TLS: the local CA (and its renewal while the app runs), the rustls server
//! side for terminated connections, and the test-only upstream verifier.

pub(crate) mod ca;
pub(crate) mod host_cache;
pub(crate) mod intercept;
pub(crate) mod live_ca;
pub(crate) mod unverified;
