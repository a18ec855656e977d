//! Linux: the pipes blind tunnels are spliced through, pooled.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use parking_lot::Mutex;

/// A pipe's capacity, and the bytes asked of one splice. Linux counts a
/// pipe's capacity against its user's quota (`pipe-user-pages-soft`, 64 MiB
/// by default, shared with every process of the user), so pipes stay small
/// and few are pooled.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Empty pipes kept for the next tunnel that has bytes to move.
const POOLED_PIPES: usize = 16;
/// A pipe: bytes spliced into `write` come out of `read`.
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

/// Empty pipes, reused: creating one per burst of bytes would cost three syscalls.
#[derive(Default)]
pub(crate) struct Pipes(Mutex<Vec<Pipe>>);

impl Pipes {
    pub(crate) fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = self.0.lock().pop() {
            return Ok(pipe);
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Fewer, larger splices than with the default 64 KiB (1 MiB took a fifth less CPU per
        // GiB; see CHUNK for why not that). Past the user's quota, the default it is.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
        Ok(Pipe { read, write })
    }

    /// Empty pipes waiting in the pool.
    #[cfg(test)]
    pub(crate) fn pooled(&self) -> usize {
        self.0.lock().len()
    }

    /// Takes back an empty pipe; past the pool's size it is closed.
    pub(crate) fn give_back(&self, pipe: Pipe) {
        let mut pool = self.0.lock();
        if pool.len() < POOLED_PIPES {
            pool.push(pipe);
        }
    }
}
