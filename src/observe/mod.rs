//! What the proxy tells: events for listeners, the event log.

pub(crate) mod events;
pub(crate) mod log;
