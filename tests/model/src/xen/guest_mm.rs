//! A small `MmServices` for tests: a frame allocator over the model's pfns
//! and per-frame metadata (private word, pinned flag), Linux's `struct page`
//! in miniature. The real one is kernel-glue's; this one exists so the xen64
//! backend can be tested on its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use pvops::{MmServices, Pfn, PhysMem, PvError};

use super::model::XenModel;

#[derive(Debug, Default)]
struct State {
    free: Vec<Pfn>,
    allocated: BTreeSet<Pfn>,
    private: HashMap<Pfn, u64>,
    pinned: BTreeSet<Pfn>,
    has_metadata: bool,
    allocations_left: Option<usize>,
}

/// Frames and metadata for one guest, over any [`PhysMem`].
pub struct GuestMm {
    mem: &'static dyn PhysMem,
    nr_pages: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for GuestMm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        write!(f, "GuestMm({} free, {} allocated)", s.free.len(), s.allocated.len())
    }
}

impl GuestMm {
    /// Every pfn of `model` but the builder's, lowest handed out first; with
    /// metadata (steady state).
    pub fn new(model: &'static XenModel) -> Self {
        let reserved: BTreeSet<Pfn> = model.reserved_pfns().iter().copied().collect();
        let nr_pages = model.nr_pages();
        let free: Vec<Pfn> = (0..nr_pages).rev().map(Pfn).filter(|p| !reserved.contains(p)).collect();
        GuestMm { mem: model, nr_pages, state: Mutex::new(State { free, has_metadata: true, ..State::default() }) }
    }

    /// Like [`GuestMm::new`] but in early boot: no metadata yet.
    pub fn early(model: &'static XenModel) -> Self {
        let mm = GuestMm::new(model);
        mm.set_has_metadata(false);
        mm
    }

    /// A leaked [`GuestMm::new`].
    pub fn leaked(model: &'static XenModel) -> &'static GuestMm {
        Box::leak(Box::new(GuestMm::new(model)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches metadata on (steady state) or off (early boot).
    pub fn set_has_metadata(&self, on: bool) {
        self.lock().has_metadata = on;
    }

    /// After `n` more successful allocations, allocation fails (`None`: never).
    pub fn fail_allocation_after(&self, n: Option<usize>) {
        self.lock().allocations_left = n;
    }

    /// Frames free now.
    pub fn free_frames(&self) -> usize {
        self.lock().free.len()
    }

    /// Frames allocated now.
    pub fn allocated_frames(&self) -> usize {
        self.lock().allocated.len()
    }

    /// True when `pfn` is allocated.
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        self.lock().allocated.contains(&pfn)
    }

    fn check(&self, s: &State, pfn: Pfn) -> Result<(), PvError> {
        if pfn.0 >= self.nr_pages {
            return Err(PvError::BadFrame { pfn });
        }
        if !s.has_metadata {
            return Err(PvError::WrongState { what: "frame metadata does not exist yet" });
        }
        Ok(())
    }
}

impl MmServices for GuestMm {
    fn has_metadata(&self) -> bool {
        self.lock().has_metadata
    }

    fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError> {
        let pfn = {
            let mut s = self.lock();
            if let Some(left) = s.allocations_left.as_mut() {
                if *left == 0 {
                    return Err(PvError::OutOfMemory);
                }
                *left -= 1;
            }
            let pfn = s.free.pop().ok_or(PvError::OutOfMemory)?;
            s.allocated.insert(pfn);
            pfn
        };
        // Through the guest's direct map: zeroing a frame that is still a
        // live table is a violation the model records.
        self.mem.zero_frame(pfn);
        Ok(pfn)
    }

    fn free_frame(&self, pfn: Pfn) -> Result<(), PvError> {
        let mut s = self.lock();
        if !s.allocated.contains(&pfn) {
            return Err(PvError::BadFrame { pfn });
        }
        // Strict, like Linux's free-page checks: a frame still pinned or still
        // carrying a private word is a leak of whatever it points at.
        if s.pinned.contains(&pfn) {
            return Err(PvError::WrongState { what: "freeing a frame still marked pinned" });
        }
        if s.private.get(&pfn).is_some_and(|v| *v != 0) {
            return Err(PvError::WrongState { what: "freeing a frame whose private word is set" });
        }
        s.allocated.remove(&pfn);
        s.private.remove(&pfn);
        s.free.push(pfn);
        drop(s);
        self.mem.frame_freed(pfn);
        Ok(())
    }

    fn private(&self, pfn: Pfn) -> Result<u64, PvError> {
        let s = self.lock();
        self.check(&s, pfn)?;
        Ok(s.private.get(&pfn).copied().unwrap_or(0))
    }

    fn set_private(&self, pfn: Pfn, value: u64) -> Result<(), PvError> {
        let mut s = self.lock();
        self.check(&s, pfn)?;
        s.private.insert(pfn, value);
        Ok(())
    }

    fn is_pinned(&self, pfn: Pfn) -> Result<bool, PvError> {
        let s = self.lock();
        self.check(&s, pfn)?;
        Ok(s.pinned.contains(&pfn))
    }

    fn set_pinned(&self, pfn: Pfn, pinned: bool) -> Result<(), PvError> {
        let mut s = self.lock();
        self.check(&s, pfn)?;
        if pinned {
            s.pinned.insert(pfn);
        } else {
            s.pinned.remove(&pfn);
        }
        Ok(())
    }
}
