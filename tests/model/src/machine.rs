//! A host model of an x86-64 machine: guest-physical frames, cr3, a TLB-flush
//! counter and access checks through a real 4-level walk.

use std::collections::HashMap;
use std::sync::Mutex;

use pvops::{Pfn, PhysMem, VirtAddr, ENTRIES_PER_TABLE};
use pvops_native::NativeCpu;

use crate::walk::{walk, Access, Fault};

type Frame = Box<[u64; ENTRIES_PER_TABLE]>;

#[derive(Default)]
struct State {
    frames: HashMap<u64, Frame>,
    cr3: u64,
    invlpgs: u64,
    full_flushes: u64,
    cr3_writes: u64,
}

/// Frame memory: `nr_frames` frames of 512 words, numbered from 0.
///
/// Frames are allocated lazily (an untouched frame reads as zero), so a model of
/// gigabytes costs only what is written.
pub struct Machine {
    nr_frames: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Machine({} frames)", self.nr_frames)
    }
}

impl Machine {
    /// A machine with `nr_frames` frames of memory.
    pub fn new(nr_frames: u64) -> Self {
        Machine { nr_frames, state: Mutex::new(State::default()) }
    }

    /// A leaked machine, for platforms that need `'static` handles.
    pub fn leaked(nr_frames: u64) -> &'static Machine {
        Box::leak(Box::new(Machine::new(nr_frames)))
    }

    /// Number of frames.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another test thread panicked mid-update of a
        // model value; the data is still plain memory.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads word `index` of `frame` (`None` when out of range).
    pub fn read(&self, frame: u64, index: usize) -> Option<u64> {
        if frame >= self.nr_frames || index >= ENTRIES_PER_TABLE {
            return None;
        }
        Some(self.state().frames.get(&frame).map_or(0, |f| f[index]))
    }

    /// Writes word `index` of `frame`; out-of-range writes are reported as `false`.
    pub fn write(&self, frame: u64, index: usize, value: u64) -> bool {
        if frame >= self.nr_frames || index >= ENTRIES_PER_TABLE {
            return false;
        }
        let mut s = self.state();
        let f = s.frames.entry(frame).or_insert_with(|| Box::new([0; ENTRIES_PER_TABLE]));
        f[index] = value;
        true
    }

    /// The cr3 register.
    pub fn cr3(&self) -> u64 {
        self.state().cr3
    }

    /// Loads cr3.
    pub fn set_cr3(&self, v: u64) {
        let mut s = self.state();
        s.cr3 = v;
        s.cr3_writes += 1;
    }

    /// Walks the tables from `root_frame` for `va`.
    pub fn translate_from(&self, root_frame: u64, va: VirtAddr, access: Access) -> Result<u64, Fault> {
        walk(root_frame, va, access, |f, i| self.read(f, i))
    }

    /// Checks an access through the current cr3: what the CPU would do.
    pub fn access(&self, va: VirtAddr, access: Access) -> Result<u64, Fault> {
        self.translate_from(self.cr3() >> 12, va, access)
    }

    /// (`invlpg` count, full flushes, cr3 writes).
    pub fn tlb_counts(&self) -> (u64, u64, u64) {
        let s = self.state();
        (s.invlpgs, s.full_flushes, s.cr3_writes)
    }
}

impl PhysMem for Machine {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.read(pfn.0, index).unwrap_or(0)
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.write(pfn.0, index, value);
    }

    fn zero_frame(&self, pfn: Pfn) {
        self.state().frames.remove(&pfn.0);
    }
}

impl NativeCpu for Machine {
    fn read_cr3(&self) -> u64 {
        self.cr3()
    }

    fn write_cr3(&self, value: u64) {
        self.set_cr3(value);
    }

    fn invlpg(&self, _va: VirtAddr) {
        self.state().invlpgs += 1;
    }

    fn flush_all(&self) {
        self.state().full_flushes += 1;
    }
}
