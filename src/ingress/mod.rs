//! Where client connections come in: the shared listener, a context's own
//! port, and the HTTP server on each connection.

pub(crate) mod context_port;
mod handle;
pub(crate) mod server;
