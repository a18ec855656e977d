//! What the proxy tells: events for listeners, the counters of `stats()`,
//! the event log.

pub(crate) mod events;
pub(crate) mod log;
pub(crate) mod stats;
