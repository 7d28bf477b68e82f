//! A TLB and paging-structure caches, per vCPU, filled as cautiously as the
//! hardware may fill them (Intel SDM vol. 3A §4.10): any translation reachable
//! from a loaded root since the last flush of its address may be cached,
//! whether or not anything used it.
//!
//! The model never stores what is still live: a translation the loaded tables
//! give now is "cached" by definition. What it stores is what hardware may keep
//! after the tables changed: when an entry reachable from a loaded root is
//! overwritten or cleared, every translation it provided — the leaves below it
//! (TLB) and the table frames below it (paging-structure caches) — becomes a
//! *stale* cached entry for its virtual range, until something that
//! invalidates real TLBs drops it:
//!
//! * `invlpg va`: the leaf for `va` (global or not) and, per the SDM
//!   ("INVLPG also invalidates all entries in all paging-structure caches"),
//!   every paging-structure-cache entry;
//! * a cr3 write: every non-global entry (and all paging-structure caches);
//!   the old root's global leaves stay cached;
//! * a full flush (cr4.PGE toggled, or Xen's `do_tlb_flush`): everything.
//!
//! A flush issued before the entry is cleared finds nothing stale and so does
//! not count. Reachability from the loaded roots is cached and recomputed only
//! after a table reachable from them (or a root) changed, so a data write
//! costs one hash lookup.

use std::collections::{HashMap, HashSet};

use pvops::pte::flags;
use pvops::{Level, ENTRIES_PER_TABLE};

use crate::walk::{Access, Fault};

/// What made a cached translation dangerous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbHazard {
    /// The frame went back to the allocator while a TLB or paging-structure
    /// cache may still map it.
    Freed,
    /// The frame was zeroed for reuse while a cache may still map it.
    Reused,
    /// The frame became a page table while a writable translation of it may
    /// still be cached (the guest could write the live table).
    BecameTable,
    /// A write went through a stale writable translation.
    StaleWrite,
    /// A leaf was pointed at another frame while a TLB may still hold the
    /// old translation: CPUs of one space may see different pages at one
    /// address (one writes the new frame, another reads the old). The rule
    /// is clear, flush, then install (Linux's `ptep_clear_flush` in
    /// `wp_page_copy`, mm/memory.c).
    Diverged,
}

/// One recorded hazard. Frames are the memory's own numbers (pfns natively,
/// mfns under the Xen model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbViolation {
    /// What happened.
    pub hazard: TlbHazard,
    /// The frame.
    pub frame: u64,
    /// A virtual address that may still reach it.
    pub va: u64,
    /// True when it is reached by a stale cached entry, false when the loaded
    /// tables still map it.
    pub stale: bool,
}

/// One cached translation that the tables no longer give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// Base of the virtual range it covers.
    pub va: u64,
    /// The level of the entry that provided it: `L1` is a 4 KiB leaf (TLB
    /// proper); `L2..=L4` is a paging-structure-cache entry whose `frame` is
    /// the table one level down.
    pub level: Level,
    /// The data page (leaf) or the next table.
    pub frame: u64,
    /// User bit at every level down to this entry.
    pub user: bool,
    /// Writable at every level down to this entry.
    pub writable: bool,
    /// NX at some level down to this entry.
    pub nx: bool,
    /// A global leaf (`G` in the L1 entry): survives cr3 writes.
    pub global: bool,
}

/// A table reachable from a loaded root: at this level, for this range.
#[derive(Clone, Copy, Debug)]
struct Pos {
    level: Level,
    va: u64,
    user: bool,
    writable: bool,
    nx: bool,
}

/// What the loaded roots reach now.
#[derive(Debug, Default)]
struct Reach {
    /// Table frame → where it sits.
    tables: HashMap<u64, Vec<Pos>>,
    /// Data frame → (number of leaves mapping it, one of their addresses).
    leaves: HashMap<u64, (u32, u64)>,
}

/// One virtual CPU's caches.
#[derive(Debug, Default)]
struct Vcpu {
    /// Roots whose translations may be cached (native: cr3; Xen: the kernel
    /// and, after user mode ran, the user base pointer).
    roots: Vec<u64>,
    stale: Vec<Cached>,
    /// What `roots` reach now (recomputed lazily).
    reach: Option<Reach>,
}

/// Entry bits that grant something: losing one of them makes the old
/// translation stale.
const GRANTS: u64 = flags::WRITABLE | flags::USER;

/// Size of the range one entry at `level` covers, as a shift.
pub(crate) fn shift(level: Level) -> u32 {
    12 + 9 * (level as u32 - 1)
}

fn canonical(raw: u64) -> u64 {
    ((raw << 16) as i64 >> 16) as u64
}

fn target(entry: u64) -> u64 {
    (entry & flags::ADDR_MASK) >> 12
}

/// True when `new` no longer gives the translation `old` gave.
fn lost(old: u64, new: u64) -> bool {
    if old & flags::PRESENT == 0 {
        return false;
    }
    new & flags::PRESENT == 0
        || target(old) != target(new)
        || old & GRANTS & !new != 0
        || (new & flags::NO_EXECUTE != 0 && old & flags::NO_EXECUTE == 0)
        || (old & flags::GLOBAL != new & flags::GLOBAL)
}

/// Memory as the TLB reads it, a whole frame at a time.
pub(crate) trait Frames {
    /// Frame `f`'s words (`None` outside memory).
    fn frame(&self, f: u64) -> Option<&[u64; ENTRIES_PER_TABLE]>;
    /// Word `i` of frame `f`.
    fn word(&self, f: u64, i: usize) -> Option<u64> {
        self.frame(f).and_then(|w| w.get(i).copied())
    }
}

type Reader<'a> = &'a dyn Frames;

/// The TLBs of every vCPU and what their loaded roots reach.
#[derive(Debug)]
pub(crate) struct Tlb {
    vcpus: Vec<Vcpu>,
    /// How often a vCPU's reach was recomputed (tests keep it rare).
    reach_builds: u64,
    violations: Vec<TlbViolation>,
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb::new(1)
    }
}

impl Tlb {
    /// Caches for `n` vCPUs.
    pub(crate) fn new(n: usize) -> Self {
        Tlb { vcpus: (0..n.max(1)).map(|_| Vcpu::default()).collect(), reach_builds: 0, violations: Vec::new() }
    }

    /// The calling vCPU ([`crate::vcpu::current`]).
    ///
    /// # Panics
    /// If the thread runs as a vCPU this TLB does not have (test setup).
    fn current(&self) -> usize {
        let c = crate::vcpu::current();
        assert!(c < self.vcpus.len(), "running as vCPU {c} on a machine with {} vCPUs", self.vcpus.len());
        c
    }

    /// Stale entries of the calling vCPU.
    pub(crate) fn stale(&self) -> &[Cached] {
        &self.vcpus[self.current()].stale
    }

    /// Stale entries of `vcpu` (none for a vCPU the machine lacks).
    pub(crate) fn stale_of(&self, vcpu: usize) -> &[Cached] {
        self.vcpus.get(vcpu).map_or(&[], |v| &v.stale)
    }

    pub(crate) fn reach_builds(&self) -> u64 {
        self.reach_builds
    }

    pub(crate) fn violations(&self) -> &[TlbViolation] {
        &self.violations
    }

    pub(crate) fn forgive(&mut self, hazard: TlbHazard) -> usize {
        let before = self.violations.len();
        self.violations.retain(|v| v.hazard != hazard);
        before - self.violations.len()
    }

    pub(crate) fn clear_violations(&mut self) {
        self.violations.clear();
    }

    /// The roots whose translations the calling vCPU may cache now.
    pub(crate) fn set_roots(&mut self, roots: &[u64]) {
        self.set_roots_of(self.current(), roots);
    }

    /// The roots whose translations `vcpu` may cache now.
    pub(crate) fn set_roots_of(&mut self, vcpu: usize, roots: &[u64]) {
        let Some(v) = self.vcpus.get_mut(vcpu) else { return };
        if v.roots != roots {
            v.roots = roots.to_vec();
            v.reach = None;
        }
    }

    /// The loaded roots of `vcpu`.
    pub(crate) fn roots_of(&self, vcpu: usize) -> &[u64] {
        self.vcpus.get(vcpu).map_or(&[], |v| &v.roots)
    }

    fn reach(&mut self, vcpu: usize, read: Reader<'_>) -> &Reach {
        let v = &mut self.vcpus[vcpu];
        if v.reach.is_none() {
            v.reach = Some(build_reach(&v.roots, read));
            self.reach_builds += 1;
        }
        v.reach.get_or_insert_with(Reach::default)
    }

    /// A word of `frame` is about to change from `old` to `new`: every vCPU
    /// whose loaded roots reach `frame` may keep what the word gave.
    pub(crate) fn on_write(&mut self, frame: u64, index: usize, old: u64, new: u64, read: Reader<'_>) {
        if old == new {
            return;
        }
        let writer = crate::vcpu::current();
        for vcpu in 0..self.vcpus.len() {
            self.on_write_of(vcpu, writer, frame, index, old, new, read);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_write_of(
        &mut self,
        vcpu: usize,
        writer: usize,
        frame: u64,
        index: usize,
        old: u64,
        new: u64,
        read: Reader<'_>,
    ) {
        let Some(positions) = self.reach(vcpu, read).tables.get(&frame).cloned() else {
            return;
        };
        let v = &mut self.vcpus[vcpu];
        for pos in &positions {
            let va = canonical(pos.va + ((index as u64) << shift(pos.level)));
            if pos.level == Level::L1 && new & flags::PRESENT != 0 && vcpu != writer {
                // The old leaf, or a stale copy of an earlier one, may still
                // be cached on another vCPU while the tables now give another
                // frame. (The writer itself is in the kernel until its own
                // flush; a later use of its stale entry is a `StaleWrite`.)
                let cached = (old & flags::PRESENT != 0)
                    .then(|| target(old))
                    .into_iter()
                    .chain(v.stale.iter().filter(|c| c.level == Level::L1 && c.va == va).map(|c| c.frame));
                for frame in cached {
                    if frame != target(new) {
                        let seen = TlbViolation { hazard: TlbHazard::Diverged, frame, va, stale: true };
                        // Once per write, however many vCPUs reach the table.
                        if self.violations.last() != Some(&seen) {
                            self.violations.push(seen);
                        }
                        break;
                    }
                }
            }
            if lost(old, new) {
                let mut out = Vec::new();
                enumerate(pos, va, old, read, &mut out);
                v.stale.extend(out);
            }
        }
        let structural = positions.iter().any(|p| p.level != Level::L1);
        match v.reach.as_mut() {
            Some(r) if !structural => {
                // A leaf write: adjust the live leaf counts in place.
                for pos in &positions {
                    let va = canonical(pos.va + ((index as u64) << shift(pos.level)));
                    if old & flags::PRESENT != 0 {
                        if let Some(c) = r.leaves.get_mut(&target(old)) {
                            c.0 -= 1;
                            if c.0 == 0 {
                                r.leaves.remove(&target(old));
                            }
                        }
                    }
                    if new & flags::PRESENT != 0 {
                        r.leaves.entry(target(new)).or_insert((0, va)).0 += 1;
                    }
                }
            }
            _ => v.reach = None,
        }
    }

    /// Every translation reachable from `root` stays cached although the root
    /// is no longer loaded (`global_only`: only global leaves survive, as
    /// after a cr3 write).
    pub(crate) fn retire_root(&mut self, root: u64, global_only: bool, read: Reader<'_>) {
        let mut out = Vec::new();
        let top = Pos { level: Level::L4, va: 0, user: true, writable: true, nx: false };
        let Some(words) = read.frame(root) else { return };
        for (index, &e) in words.iter().enumerate() {
            let va = canonical((index as u64) << shift(Level::L4));
            enumerate(&top, va, e, read, &mut out);
        }
        out.retain(|c| !global_only || (c.level == Level::L1 && c.global));
        let c = self.current();
        self.vcpus[c].stale.extend(out);
    }

    /// A cr3 write on `vcpu`: non-global entries and paging-structure caches go.
    pub(crate) fn flush_non_global_of(&mut self, vcpu: usize) {
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            v.stale.retain(|c| c.level == Level::L1 && c.global);
        }
    }

    /// A full flush on `vcpu`, global entries included.
    pub(crate) fn flush_all_of(&mut self, vcpu: usize) {
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            v.stale.clear();
        }
    }

    /// `invlpg va` on `vcpu`: its leaf and every paging-structure-cache entry.
    pub(crate) fn invlpg_of(&mut self, vcpu: usize, va: u64) {
        let page = va & !0xfff;
        if let Some(v) = self.vcpus.get_mut(vcpu) {
            v.stale.retain(|c| c.level == Level::L1 && c.va != page);
        }
    }

    /// A cr3 write on the calling vCPU.
    pub(crate) fn flush_non_global(&mut self) {
        self.flush_non_global_of(self.current());
    }

    /// A full flush on the calling vCPU.
    pub(crate) fn flush_all(&mut self) {
        self.flush_all_of(self.current());
    }

    /// `invlpg va` on the calling vCPU.
    pub(crate) fn invlpg(&mut self, va: u64) {
        self.invlpg_of(self.current(), va);
    }

    /// Records `hazard` if any vCPU's caches may still map `frame` (only
    /// writable leaves count when `writable_only`). True when one was recorded.
    pub(crate) fn check_frame(&mut self, frame: u64, hazard: TlbHazard, writable_only: bool, read: Reader<'_>) -> bool {
        let stale = self
            .vcpus
            .iter()
            .flat_map(|v| v.stale.iter())
            .find(|c| c.frame == frame && (!writable_only || (c.level == Level::L1 && c.writable)));
        if let Some(c) = stale {
            let v = TlbViolation { hazard, frame, va: c.va, stale: true };
            self.violations.push(v);
            return true;
        }
        if writable_only {
            return false;
        }
        for vcpu in 0..self.vcpus.len() {
            let reach = self.reach(vcpu, read);
            let live = reach
                .leaves
                .get(&frame)
                .map(|&(_, va)| va)
                .or_else(|| reach.tables.get(&frame).and_then(|p| p.first()).map(|p| p.va));
            if let Some(va) = live {
                self.violations.push(TlbViolation { hazard, frame, va, stale: false });
                return true;
            }
        }
        false
    }

    /// An access at `va` walking from `root`, through the caches: if a stale
    /// entry allows the access and reaches another frame than the tables do,
    /// that frame is the answer (the worst case: hardware may use it), and a
    /// write through it is a [`TlbHazard::StaleWrite`]. `global_only`: only
    /// global stale leaves can be in the TLB (Xen user mode: entering it
    /// rewrote cr3).
    pub(crate) fn access(
        &mut self,
        root: u64,
        vaddr: pvops::VirtAddr,
        access: Access,
        global_only: bool,
        read: Reader<'_>,
    ) -> Result<u64, Fault> {
        let va = vaddr.as_u64();
        let live = crate::walk::walk(root, vaddr, access, |f, i| read.word(f, i));
        let mut stale_hit = None;
        for c in self.stale() {
            if global_only && !(c.level == Level::L1 && c.global) {
                continue;
            }
            let span = 1u64 << shift(c.level);
            if va & !(span - 1) != c.va & !(span - 1) || !allows(c, access) {
                continue;
            }
            let frame = match c.level.lower() {
                None => Some(c.frame),
                Some(lower) => walk_from(c, lower, va, access, read),
            };
            if let Some(f) = frame {
                if live != Ok(f) {
                    stale_hit = Some(f);
                    break;
                }
            }
        }
        match stale_hit {
            Some(f) => {
                if access.write {
                    self.violations.push(TlbViolation {
                        hazard: TlbHazard::StaleWrite,
                        frame: f,
                        va: va & !0xfff,
                        stale: true,
                    });
                }
                Ok(f)
            }
            None => live,
        }
    }
}

fn idx(va: u64, level: Level) -> usize {
    ((va >> shift(level)) & 0x1ff) as usize
}

fn allows(c: &Cached, access: Access) -> bool {
    (!access.user || c.user) && (!access.write || c.writable) && (!access.execute || !c.nx)
}

/// Continues a walk below a cached paging-structure entry, from the table it
/// points at (whatever that frame holds now).
fn walk_from(c: &Cached, start: Level, va: u64, access: Access, read: Reader<'_>) -> Option<u64> {
    let mut frame = c.frame;
    let mut level = start;
    loop {
        let e = read.word(frame, idx(va, level))?;
        if e & flags::PRESENT == 0
            || (access.user && e & flags::USER == 0)
            || (access.write && e & flags::WRITABLE == 0)
            || (access.execute && e & flags::NO_EXECUTE != 0)
        {
            return None;
        }
        frame = target(e);
        match level.lower() {
            Some(l) if e & flags::HUGE == 0 => level = l,
            Some(_) => return None,
            None => return Some(frame),
        }
    }
}

/// The cached translations entry `entry` (at `va`, in a table at `pos`)
/// provides: itself and, for a table entry, everything below it.
fn enumerate(pos: &Pos, va: u64, entry: u64, read: Reader<'_>, out: &mut Vec<Cached>) {
    if entry & flags::PRESENT == 0 {
        return;
    }
    let level = pos.level;
    let here = Pos {
        level,
        va,
        user: pos.user && entry & flags::USER != 0,
        writable: pos.writable && entry & flags::WRITABLE != 0,
        nx: pos.nx || entry & flags::NO_EXECUTE != 0,
    };
    let global = level == Level::L1 && entry & flags::GLOBAL != 0;
    out.push(Cached { va, level, frame: target(entry), user: here.user, writable: here.writable, nx: here.nx, global });
    let Some(lower) = level.lower() else { return };
    if entry & flags::HUGE != 0 {
        return;
    }
    let child = Pos { level: lower, ..here };
    let Some(words) = read.frame(target(entry)) else { return };
    for (index, &e) in words.iter().enumerate() {
        if e & flags::PRESENT != 0 {
            let cva = canonical(va + ((index as u64) << shift(lower)));
            enumerate(&child, cva, e, read, out);
        }
    }
}

fn build_reach(roots: &[u64], read: Reader<'_>) -> Reach {
    let mut reach = Reach::default();
    let mut seen: HashSet<(u64, u8, u64)> = HashSet::new();
    let mut stack: Vec<(u64, Pos)> =
        roots.iter().map(|&r| (r, Pos { level: Level::L4, va: 0, user: true, writable: true, nx: false })).collect();
    while let Some((frame, pos)) = stack.pop() {
        if !seen.insert((frame, pos.level as u8, pos.va)) {
            continue;
        }
        reach.tables.entry(frame).or_default().push(pos);
        let Some(words) = read.frame(frame) else { continue };
        for (index, &e) in words.iter().enumerate() {
            if e & flags::PRESENT == 0 {
                continue;
            }
            let va = canonical(pos.va + ((index as u64) << shift(pos.level)));
            match pos.level.lower() {
                None => reach.leaves.entry(target(e)).or_insert((0, va)).0 += 1,
                Some(_) if e & flags::HUGE != 0 => {}
                Some(lower) => stack.push((
                    target(e),
                    Pos {
                        level: lower,
                        va,
                        user: pos.user && e & flags::USER != 0,
                        writable: pos.writable && e & flags::WRITABLE != 0,
                        nx: pos.nx || e & flags::NO_EXECUTE != 0,
                    },
                )),
            }
        }
    }
    reach
}
