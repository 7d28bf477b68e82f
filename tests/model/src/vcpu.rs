//! Which vCPU the calling host thread is.
//!
//! Every per-vCPU part of the models (cr3, the TLB, Xen's base pointers, the
//! event mask) is indexed by [`current`]. The scheduler ([`crate::sched`])
//! sets it once per vCPU thread; a cross-call handler runs as its target; a
//! single-threaded test switches with [`AsVcpu`] or [`on_vcpu`]. A thread
//! nobody set is vCPU 0, so uniprocessor tests need nothing.

use std::cell::Cell;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The vCPU the calling thread runs as.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Makes the calling thread vCPU `id`; returns the previous one.
pub(crate) fn set_current(id: usize) -> usize {
    CURRENT.with(|c| c.replace(id))
}

/// The calling thread runs as vCPU `id` until this guard is dropped.
#[derive(Debug)]
#[must_use = "the thread is the vCPU only while the guard lives"]
pub struct AsVcpu {
    prev: usize,
}

impl AsVcpu {
    /// Switches the calling thread to vCPU `id`.
    pub fn enter(id: usize) -> Self {
        AsVcpu { prev: set_current(id) }
    }
}

impl Drop for AsVcpu {
    fn drop(&mut self) {
        set_current(self.prev);
    }
}

/// Runs `f` as vCPU `id` on the calling thread.
pub fn on_vcpu<R>(id: usize, f: impl FnOnce() -> R) -> R {
    let _as = AsVcpu::enter(id);
    f()
}
