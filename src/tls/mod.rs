//! TLS: the local CA and the rustls server side for terminated connections,
//! and the test-only upstream verifier.

pub(crate) mod ca;
pub(crate) mod intercept;
pub(crate) mod unverified;
