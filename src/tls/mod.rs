//! TLS termination for loopback tunnels: the local CA and the rustls server side.

pub(crate) mod ca;
pub(crate) mod intercept;
