//! A local forward proxy for an Electron app's preview WebContents, as a
//! Node.js addon. The folders are the layers: `ingress` (where connections
//! come in) → `tunnel` / `upstream` (where they go) → `policy` (who a request
//! is, where it may go), `answer` (what the proxy says itself), `observe`
//! (what it tells), `tls` and `conn` beneath; `proxy` holds them together and
//! `addon` is the napi surface.
#![deny(clippy::all)]

mod answer;
mod config;
mod conn;
mod ingress;
mod observe;
mod policy;
mod proxy;
mod shared;
mod tls;
mod tunnel;
mod upstream;

/// The pure parsers, for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::conn::sniff::sniff;
    pub use crate::policy::auth::parse_basic;
    pub use crate::policy::derive::derive_route;
    pub use crate::policy::routing::{is_intercepted_host, is_loopback_host};
    pub use crate::policy::target::parse_authority;
}

// The napi surface is left out when the crate is used as a plain library (the fuzz targets).
#[cfg(feature = "addon")]
mod addon;
#[cfg(feature = "addon")]
pub use addon::*;
