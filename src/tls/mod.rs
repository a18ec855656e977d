//! TLS termination for loopback tunnels: the local CA and the rustls server side.

pub mod ca;
pub mod intercept;
