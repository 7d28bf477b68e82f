//! The publish-once cell behind [`crate::ops`].
//!
//! The selected backend is written once, by the boot CPU, and read lock-free
//! by everyone after: a compare-and-swap from null publishes it (a second
//! publisher loses and gets [`PvError::AlreadyInitialized`]), an acquire load
//! reads it. Normally this is `once_cell::race::OnceRef`; under `--cfg loom`
//! the same protocol is built on loom's atomics so `tests/loom.rs` can check
//! every interleaving.

use crate::error::PvError;

#[cfg(not(loom))]
pub(crate) use once_cell::race::OnceRef as Cell;

#[cfg(loom)]
pub use loom_cell::Cell;

/// Publishes `value` in `cell` unless something already is.
pub(crate) fn publish<'a, T>(cell: &Cell<'a, T>, value: &'a T) -> Result<&'a T, PvError> {
    if cell.get().is_some() {
        return Err(PvError::AlreadyInitialized);
    }
    cell.set(value).map_err(|()| PvError::AlreadyInitialized)?;
    Ok(value)
}

/// [`publish`] for the loom model test.
#[cfg(loom)]
pub fn publish_for_loom<'a, T>(cell: &Cell<'a, T>, value: &'a T) -> Result<&'a T, PvError> {
    publish(cell, value)
}

#[cfg(loom)]
mod loom_cell {
    use core::marker::PhantomData;
    use core::ptr;

    use loom::sync::atomic::{AtomicPtr, Ordering};

    /// `once_cell::race::OnceRef`'s protocol on loom atomics.
    #[derive(Debug)]
    pub struct Cell<'a, T> {
        inner: AtomicPtr<T>,
        ghost: PhantomData<&'a T>,
    }

    impl<'a, T> Cell<'a, T> {
        /// An empty cell (not `const` under loom).
        pub fn new() -> Self {
            Cell { inner: AtomicPtr::new(ptr::null_mut()), ghost: PhantomData }
        }

        /// The published value, if any.
        pub fn get(&self) -> Option<&'a T> {
            let p = self.inner.load(Ordering::Acquire);
            // SAFETY: 1. only `set` stores a non-null pointer, and it comes from
            // a `&'a T`, so it is valid for `'a`.
            unsafe { p.as_ref() }
        }

        /// Publishes `value`; `Err` if the cell was already set.
        pub fn set(&self, value: &'a T) -> Result<(), ()> {
            let p = value as *const T as *mut T;
            self.inner
                .compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())
                .map_err(|_| ())
        }
    }

    impl<T> Default for Cell<'_, T> {
        fn default() -> Self {
            Self::new()
        }
    }
}
