//! A host model of an x86-64 machine: guest-physical frames, one or more
//! vCPUs each with its own cr3 and TLB with paging-structure caches
//! ([`crate::tlb`]), access checks through a real 4-level walk and the
//! calling vCPU's TLB, and the vCPUs' [`pvops::Cpus`] ([`ModelCpus`]).
//!
//! Register and TLB operations act on the calling vCPU
//! ([`crate::vcpu::current`]); a store to a table any vCPU has loaded leaves
//! stale entries in that vCPU's TLB, which only a flush on that vCPU drops.
//! Every seam call ([`PhysMem`], [`NativeCpu`]) is a preemption point of the
//! scheduler ([`crate::sched`]).

use std::collections::HashMap;
use std::sync::Mutex;

use pvops::pte::flags;
use pvops::{Level, Pfn, PhysMem, VirtAddr, ENTRIES_PER_TABLE};
use pvops_native::NativeCpu;

use crate::cpus::ModelCpus;
use crate::sched::Point;
use crate::tlb::{Cached, Frames, Tlb, TlbHazard, TlbViolation};
use crate::walk::{walk, Access, Fault};

type Frame = Box<[u64; ENTRIES_PER_TABLE]>;

struct State {
    frames: HashMap<u64, Frame>,
    /// Per vCPU.
    cr3: Vec<u64>,
    invlpgs: u64,
    full_flushes: u64,
    cr3_writes: u64,
    tlb: Tlb,
    /// "The hardware" sets these A/D bits in (frame, index) right after the
    /// guest's next read of that word ([`Machine::touch_after_guest_read`]).
    touch: Option<(u64, usize, u64)>,
}

/// The frames as the TLB reads them: absent frames read as zeros.
struct View<'a> {
    frames: &'a HashMap<u64, Frame>,
    nr_frames: u64,
}

static ZEROS: [u64; ENTRIES_PER_TABLE] = [0; ENTRIES_PER_TABLE];

impl Frames for View<'_> {
    fn frame(&self, f: u64) -> Option<&[u64; ENTRIES_PER_TABLE]> {
        if f >= self.nr_frames {
            return None;
        }
        Some(self.frames.get(&f).map_or(&ZEROS, |fr| &**fr))
    }
}

impl State {
    /// Splits the state into the frames (read-only) and the TLB.
    fn parts(&mut self, nr_frames: u64) -> (View<'_>, &mut Tlb) {
        (View { frames: &self.frames, nr_frames }, &mut self.tlb)
    }
}

/// Frame memory: `nr_frames` frames of 512 words, numbered from 0.
///
/// Frames are allocated lazily (an untouched frame reads as zero), so a model of
/// gigabytes costs only what is written.
pub struct Machine {
    nr_frames: u64,
    state: Mutex<State>,
    cpus: ModelCpus,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Machine({} frames)", self.nr_frames)
    }
}

impl Machine {
    /// A machine with `nr_frames` frames of memory and one vCPU.
    pub fn new(nr_frames: u64) -> Self {
        Machine::with_vcpus(nr_frames, 1)
    }

    /// A machine with `nr_frames` frames and `vcpus` vCPUs (1..=64), each
    /// with cr3 0 and an empty TLB.
    ///
    /// # Panics
    /// If `vcpus` is 0 or above 64 (test setup only).
    pub fn with_vcpus(nr_frames: u64, vcpus: usize) -> Self {
        let cpus = ModelCpus::new(vcpus);
        let state = State {
            frames: HashMap::new(),
            cr3: vec![0; vcpus],
            invlpgs: 0,
            full_flushes: 0,
            cr3_writes: 0,
            tlb: Tlb::new(vcpus),
            touch: None,
        };
        Machine { nr_frames, state: Mutex::new(state), cpus }
    }

    /// A leaked machine, for platforms that need `'static` handles.
    pub fn leaked(nr_frames: u64) -> &'static Machine {
        Box::leak(Box::new(Machine::new(nr_frames)))
    }

    /// A leaked machine with `vcpus` vCPUs.
    pub fn leaked_smp(nr_frames: u64, vcpus: usize) -> &'static Machine {
        Box::leak(Box::new(Machine::with_vcpus(nr_frames, vcpus)))
    }

    /// The vCPUs: their event masks, cross-calls, and the [`pvops::Cpus`]
    /// a platform on this machine hands its backend.
    pub fn cpus(&self) -> &ModelCpus {
        &self.cpus
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.cpus.count()
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
        let old = s.frames.get(&frame).map_or(0, |f| f[index]);
        self.store_locked(&mut s, frame, index, old, value);
        true
    }

    /// Atomically (one lock with every access and A/D update): word `index`
    /// of `frame` becomes `new` if it holds `current` — a locked `cmpxchg`.
    /// `Err(actual)` otherwise, and `Err(0)` out of range.
    pub fn compare_exchange(&self, frame: u64, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        if frame >= self.nr_frames || index >= ENTRIES_PER_TABLE {
            return Err(0);
        }
        let mut s = self.state();
        let old = s.frames.get(&frame).map_or(0, |f| f[index]);
        if old != current {
            return Err(old);
        }
        self.store_locked(&mut s, frame, index, old, new);
        Ok(old)
    }

    fn store_locked(&self, s: &mut State, frame: u64, index: usize, old: u64, value: u64) {
        if old == value {
            return;
        }
        {
            let (read, tlb) = s.parts(self.nr_frames);
            tlb.on_write(frame, index, old, value, &read);
        }
        let f = s.frames.entry(frame).or_insert_with(|| Box::new([0; ENTRIES_PER_TABLE]));
        f[index] = value;
    }

    /// Arms a one-shot stand-in for the hardware racing the guest: right
    /// after the guest's next read of word `index` of `frame` (through
    /// [`PhysMem::read_entry`], or the Xen model's), `bits` (accessed/dirty)
    /// are set in it, as another CPU's access would set them between a
    /// backend's read of an entry and its update. A backend that updates
    /// the entry with a plain store after that read loses them. The bits are
    /// set even in a non-present entry, as a CPU without CET may do through
    /// a cached translation after the entry was withdrawn.
    pub fn touch_after_guest_read(&self, frame: u64, index: usize, bits: u64) {
        self.state().touch = Some((frame, index, bits & (flags::ACCESSED | flags::DIRTY)));
    }

    /// True while a [`Machine::touch_after_guest_read`] has not fired.
    pub fn touch_pending(&self) -> bool {
        self.state().touch.is_some()
    }

    /// The guest read word `index` of `frame`: fires an armed touch.
    pub(crate) fn guest_read_done(&self, frame: u64, index: usize) {
        let mut s = self.state();
        if let Some((f, i, bits)) = s.touch {
            if (f, i) == (frame, index) {
                s.touch = None;
                // Present or not: a CPU writing through a cached clean
                // translation ORs D into whatever the entry holds by then
                // (without CET it does not re-check it, SDM vol. 3A §4.8).
                let words = s.frames.entry(frame).or_insert_with(|| Box::new([0; ENTRIES_PER_TABLE]));
                words[index] |= bits;
            }
        }
    }

    /// What the MMU does to the entries of a successful walk (SDM vol. 3A
    /// §4.8): ACCESSED on the entry at every level it used, DIRTY on the
    /// leaf of a write, by locked updates of memory. Only when the live
    /// tables gave the answer (a stale cached translation walks nothing).
    /// A/D never change what an entry grants, so the TLB model is not told.
    fn set_accessed_dirty(&self, s: &mut State, root: u64, va: VirtAddr, access: Access, frame: u64) {
        let mut path = [(0u64, 0usize); 4];
        let mut table = root;
        for (n, level) in Level::TOP_DOWN.into_iter().enumerate() {
            let index = va.index(level);
            let Some(e) = s.frames.get(&table).map(|f| f[index]) else { return };
            path[n] = (table, index);
            table = (e & flags::ADDR_MASK) >> 12;
        }
        if table != frame {
            return;
        }
        for (n, &(t, i)) in path.iter().enumerate() {
            let leaf = n == 3;
            let bits = flags::ACCESSED | if leaf && access.write { flags::DIRTY } else { 0 };
            if let Some(words) = s.frames.get_mut(&t) {
                words[i] |= bits;
            }
        }
    }

    /// Copies frame `from` into frame `to` under one lock (one `memcpy`),
    /// with the TLB told of every word that changes, as 512 stores would:
    /// `false` (nothing written) if `to` is out of range; a source out of
    /// range reads as zeros. An armed [`Machine::touch_after_guest_read`] on
    /// the source fires after the copy: the copy holds the word as read.
    pub fn copy(&self, from: u64, to: u64) -> bool {
        let mut s = self.state();
        let in_range = to < self.nr_frames;
        if in_range {
            let src = match s.frames.get(&from) {
                Some(f) if from < self.nr_frames => **f,
                _ => [0; ENTRIES_PER_TABLE],
            };
            let dst = s.frames.get(&to).map_or([0; ENTRIES_PER_TABLE], |f| **f);
            for index in 0..ENTRIES_PER_TABLE {
                self.store_locked(&mut s, to, index, dst[index], src[index]);
            }
        }
        if let Some((f, i, bits)) = s.touch {
            if f == from && from < self.nr_frames {
                s.touch = None;
                let words = s.frames.entry(from).or_insert_with(|| Box::new([0; ENTRIES_PER_TABLE]));
                words[i] |= bits;
            }
        }
        in_range
    }

    /// Zeroes a frame under one lock (every present entry of a loaded table
    /// goes stale).
    pub(crate) fn clear_frame(&self, frame: u64) {
        let mut s = self.state();
        let Some(words) = s.frames.get(&frame).map(|f| f.to_vec()) else { return };
        {
            let (read, tlb) = s.parts(self.nr_frames);
            for (index, old) in words.into_iter().enumerate() {
                tlb.on_write(frame, index, old, 0, &read);
            }
        }
        s.frames.remove(&frame);
    }

    /// The calling vCPU's cr3 register.
    pub fn cr3(&self) -> u64 {
        self.cr3_of(self.cpus.index())
    }

    /// `vcpu`'s cr3 register (0 for a vCPU the machine lacks).
    pub fn cr3_of(&self, vcpu: usize) -> u64 {
        self.state().cr3.get(vcpu).copied().unwrap_or(0)
    }

    /// Loads the calling vCPU's cr3: its non-global TLB entries and every
    /// paging-structure cache are flushed; the old root's global leaves stay
    /// cached (SDM §4.10.4.1).
    pub fn set_cr3(&self, v: u64) {
        let me = self.cpus.index();
        let mut s = self.state();
        let old = s.cr3[me] >> 12;
        s.cr3[me] = v;
        s.cr3_writes += 1;
        let (read, tlb) = s.parts(self.nr_frames);
        tlb.flush_non_global();
        if old != v >> 12 && old != 0 {
            tlb.retire_root(old, true, &read);
        }
        tlb.set_roots(&[v >> 12]);
    }

    /// Walks the tables from `root_frame` for `va` (no TLB: what the tables say).
    pub fn translate_from(&self, root_frame: u64, va: VirtAddr, access: Access) -> Result<u64, Fault> {
        walk(root_frame, va, access, |f, i| self.read(f, i))
    }

    /// An access through the current cr3 and the TLB: what the CPU may do.
    pub fn access(&self, va: VirtAddr, access: Access) -> Result<u64, Fault> {
        let root = self.cr3() >> 12;
        self.tlb_access(root, va, access, false)
    }

    /// An access walking from `root` through the TLB: if a stale cached entry
    /// allows it and reaches another frame than the tables, that frame is the
    /// answer (the worst case), and a write through it is recorded as a
    /// [`TlbHazard::StaleWrite`]. `global_only`: only global stale leaves can
    /// be in the TLB.
    ///
    /// A successful access through the live tables sets ACCESSED on every
    /// entry of its walk and DIRTY on the leaf of a write, as hardware does.
    pub fn tlb_access(&self, root: u64, va: VirtAddr, access: Access, global_only: bool) -> Result<u64, Fault> {
        let mut s = self.state();
        let r = {
            let (read, tlb) = s.parts(self.nr_frames);
            tlb.access(root, va, access, global_only, &read)
        };
        if let Ok(frame) = r {
            let live =
                walk(root, va, access, |f, i| (f < self.nr_frames).then(|| s.frames.get(&f).map_or(0, |w| w[i])));
            if live == Ok(frame) {
                self.set_accessed_dirty(&mut s, root, va, access, frame);
            }
        }
        r
    }

    /// The roots whose translations may be cached (the loaded ones). Changing
    /// them flushes nothing: callers flush or [`Machine::tlb_retire_root`].
    pub fn tlb_set_roots(&self, roots: &[u64]) {
        self.state().tlb.set_roots(roots);
    }

    /// What `root` reaches stays cached after it is unloaded (`global_only`:
    /// only its global leaves, as across a cr3 write).
    pub fn tlb_retire_root(&self, root: u64, global_only: bool) {
        let mut s = self.state();
        let (read, tlb) = s.parts(self.nr_frames);
        tlb.retire_root(root, global_only, &read);
    }

    /// The roots `vcpu`'s TLB may cache now.
    pub fn tlb_roots_of(&self, vcpu: usize) -> Vec<u64> {
        self.state().tlb.roots_of(vcpu).to_vec()
    }

    /// [`Machine::tlb_set_roots`] for `vcpu`.
    pub fn tlb_set_roots_of(&self, vcpu: usize, roots: &[u64]) {
        self.state().tlb.set_roots_of(vcpu, roots);
    }

    /// Flushes every cached entry of the calling vCPU, global ones included
    /// (cr4.PGE toggle).
    pub fn tlb_flush_everything(&self) {
        self.state().tlb.flush_all();
    }

    /// [`Machine::tlb_flush_everything`] on `vcpu`.
    pub fn tlb_flush_everything_of(&self, vcpu: usize) {
        self.state().tlb.flush_all_of(vcpu);
    }

    /// Flushes the calling vCPU's non-global entries and paging-structure
    /// caches (a cr3 reload).
    pub fn tlb_flush_non_global(&self) {
        self.state().tlb.flush_non_global();
    }

    /// [`Machine::tlb_flush_non_global`] on `vcpu`.
    pub fn tlb_flush_non_global_of(&self, vcpu: usize) {
        self.state().tlb.flush_non_global_of(vcpu);
    }

    /// `invlpg va` on the calling vCPU: its leaf (global or not) and every
    /// paging-structure-cache entry.
    pub fn tlb_invlpg(&self, va: u64) {
        self.state().tlb.invlpg(va);
    }

    /// [`Machine::tlb_invlpg`] on `vcpu`.
    pub fn tlb_invlpg_of(&self, vcpu: usize, va: u64) {
        self.state().tlb.invlpg_of(vcpu, va);
    }

    /// Records `hazard` if any vCPU's caches may still map `frame` (a stale
    /// entry, or the tables it has loaded); `writable_only`: only stale
    /// writable leaves count.
    /// True when it was recorded.
    pub fn tlb_check_frame(&self, frame: u64, hazard: TlbHazard, writable_only: bool) -> bool {
        let mut s = self.state();
        let (read, tlb) = s.parts(self.nr_frames);
        tlb.check_frame(frame, hazard, writable_only, &read)
    }

    /// Cached translations the tables no longer give (calling vCPU).
    pub fn tlb_stale(&self) -> Vec<Cached> {
        self.state().tlb.stale().to_vec()
    }

    /// [`Machine::tlb_stale`] of `vcpu`.
    pub fn tlb_stale_of(&self, vcpu: usize) -> Vec<Cached> {
        self.state().tlb.stale_of(vcpu).to_vec()
    }

    /// How often the set of tables the loaded roots reach was recomputed:
    /// only after a reachable table or a root changed.
    pub fn tlb_reach_builds(&self) -> u64 {
        self.state().tlb.reach_builds()
    }

    /// TLB hazards recorded so far, oldest first.
    pub fn tlb_violations(&self) -> Vec<TlbViolation> {
        self.state().tlb.violations().to_vec()
    }

    /// Forgets the recorded TLB hazards of kind `hazard` (for a test that
    /// causes one on purpose) and says how many there were.
    pub fn forgive_tlb_hazards(&self, hazard: TlbHazard) -> usize {
        self.state().tlb.forgive(hazard)
    }

    /// Forgets recorded TLB hazards.
    pub fn clear_tlb_violations(&self) {
        self.state().tlb.clear_violations();
    }

    /// For checks after every step: `Err` lists the TLB hazards recorded.
    pub fn check_tlb(&self) -> Result<(), String> {
        let v = self.tlb_violations();
        if v.is_empty() {
            Ok(())
        } else {
            Err(format!("TLB hazards: {v:x?}"))
        }
    }

    /// (`invlpg` count, full flushes, cr3 writes).
    pub fn tlb_counts(&self) -> (u64, u64, u64) {
        let s = self.state();
        (s.invlpgs, s.full_flushes, s.cr3_writes)
    }
}

impl PhysMem for Machine {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.cpus.yield_point(Point::Load);
        let v = self.read(pfn.0, index).unwrap_or(0);
        self.guest_read_done(pfn.0, index);
        v
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.cpus.yield_point(Point::Store);
        self.write(pfn.0, index, value);
    }

    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.cpus.yield_point(Point::Store);
        self.compare_exchange(pfn.0, index, current, new)
    }

    fn zero_frame(&self, pfn: Pfn) {
        self.cpus.yield_point(Point::Zero);
        // Only the allocator zeroes frames: this is reuse.
        self.tlb_check_frame(pfn.0, TlbHazard::Reused, false);
        self.clear_frame(pfn.0);
    }

    /// [`Machine::copy`]: one locked copy, not 512 locked loads and stores.
    fn copy_frame(&self, from: Pfn, to: Pfn) {
        self.cpus.yield_point(Point::Store);
        // As with zeroing: only a frame being handed out is copied into
        // (fork, copy-on-write): this is reuse.
        self.tlb_check_frame(to.0, TlbHazard::Reused, false);
        self.copy(from.0, to.0);
    }

    fn frame_freed(&self, pfn: Pfn) {
        self.tlb_check_frame(pfn.0, TlbHazard::Freed, false);
    }
}

/// The calling vCPU's registers and TLB.
impl NativeCpu for Machine {
    fn read_cr3(&self) -> u64 {
        self.cpus.yield_point(Point::Cr3);
        self.cr3()
    }

    fn write_cr3(&self, value: u64) {
        self.cpus.yield_point(Point::Cr3);
        self.set_cr3(value);
    }

    fn invlpg(&self, va: VirtAddr) {
        self.cpus.yield_point(Point::Invlpg);
        let mut s = self.state();
        s.invlpgs += 1;
        s.tlb.invlpg(va.as_u64());
    }

    /// The native backend's full flush is a cr3 reload (`x86::tlb::flush_all`):
    /// global entries survive it.
    fn flush_all(&self) {
        self.cpus.yield_point(Point::Flush);
        let mut s = self.state();
        s.full_flushes += 1;
        s.tlb.flush_non_global();
    }
}
