//! Who a request is and where it may go: contexts and credentials, the
//! cmux routing, the address policy. Pure but for the contexts' registry.

pub(crate) mod address;
pub(crate) mod auth;
pub(crate) mod context_stats;
pub(crate) mod derive;
pub(crate) mod routing;
pub(crate) mod target;
