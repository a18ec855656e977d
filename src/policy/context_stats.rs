//! What `contextStats(id)` reports, kept with the context it counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::answer::error::ProxyError;

/// What `contextStats(id)` reports: a preview's traffic so far.
#[derive(Default)]
pub(crate) struct ContextStats {
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) open_tunnels: AtomicUsize,
    pub(crate) last_error: Mutex<Option<(String, SystemTime)>>,
}

impl ContextStats {
    pub(crate) fn record_error(&self, error: &ProxyError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some((error.to_string(), SystemTime::now()));
    }
}
