//! Where the event log goes: one thread writes it to stderr, so a stderr that
//! nobody drains (an Electron app's, often) never blocks a runtime thread.
//! Lines that find the queue full are dropped and counted.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::LazyLock;

/// Lines waiting for stderr at most.
const QUEUE: usize = 1024;

static DROPPED: AtomicU64 = AtomicU64::new(0);

static WRITER: LazyLock<Option<SyncSender<String>>> = LazyLock::new(|| {
    let (lines, queue) = sync_channel::<String>(QUEUE);
    let spawned = std::thread::Builder::new().name("cmux-proxy-log".into()).spawn(move || {
        for line in queue {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(line.as_bytes());
            let dropped = DROPPED.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let _ = writeln!(stderr, "[cmux-preview-proxy] {dropped} log lines dropped (stderr too slow)");
            }
        }
    });
    spawned.ok().map(|_| lines)
});

/// Queues `line` for stderr without waiting; drops it when the queue is full.
pub(crate) fn write(line: String) {
    let queued = WRITER.as_ref().is_some_and(|writer| writer.try_send(line).is_ok());
    if !queued {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The event log on stderr; off unless asked for. Never given credentials.
pub(crate) struct Log(pub(crate) AtomicBool);

impl Log {
    pub(crate) fn event(&self, message: fmt::Arguments<'_>) {
        if self.0.load(Ordering::Relaxed) {
            write(format!("[cmux-preview-proxy] {message}\n"));
        }
    }
}
