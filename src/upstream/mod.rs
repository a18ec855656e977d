//! Towards the upstreams: connections (resolve, the address policy, Happy
//! Eyeballs, TLS), the pool, and the request as it is sent on.

pub(crate) mod connector;
mod eyeballs;
pub(crate) mod pool;
pub(crate) mod request;
