//! Address spaces: create, map, unmap, translate, activate, fork, exit.
//!
//! Everything goes through [`PvMmuOps`]: this module never writes a page
//! table itself, so the same code is correct natively and on Xen.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvops::pte::flags;
use pvops::{
    CpuMask, Cpus, Flush, Level, Pfn, PhysMem, Pte, PvError, PvMmuOps, VirtAddr, ENTRIES_PER_TABLE, USER_LIMIT,
    USER_PGD_SLOTS,
};

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::frames::FrameAllocator;
use crate::walk::{ensure_l1, find_l1, undo, NewTables, KERNEL_TABLE_FLAGS, TABLE_FLAGS};

/// Permissions of a user page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFlags {
    /// Writable from user mode.
    pub writable: bool,
    /// Executable.
    pub executable: bool,
}

impl PageFlags {
    /// Read-write data.
    pub const DATA: PageFlags = PageFlags { writable: true, executable: false };
    /// Read-only code.
    pub const CODE: PageFlags = PageFlags { writable: false, executable: true };
    /// Read-only data.
    pub const RODATA: PageFlags = PageFlags { writable: false, executable: false };

    pub(crate) fn user_bits(self) -> u64 {
        let mut f = flags::PRESENT | flags::USER;
        if self.writable {
            f |= flags::WRITABLE;
        }
        if !self.executable {
            f |= flags::NO_EXECUTE;
        }
        f
    }

    /// The permissions a present user leaf grants (the inverse of `user_bits`).
    /// A copy-on-write leaf grants write: only sharing write-protects it.
    pub(crate) fn of_leaf(e: Pte) -> PageFlags {
        PageFlags { writable: e.is_writable() || e.0 & SOFT_COW != 0, executable: e.0 & flags::NO_EXECUTE == 0 }
    }
}

/// The frame `Mm::map_queued` maps.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backing {
    /// A new zeroed frame.
    Zeroed,
    /// This frame, which gains a reference.
    Shared(Pfn),
}

impl From<Option<Pfn>> for Backing {
    /// `None`: a new zeroed frame; `Some(f)`: `f`, shared.
    #[inline]
    fn from(frame: Option<Pfn>) -> Self {
        frame.map_or(Backing::Zeroed, Backing::Shared)
    }
}

/// A leaf write queued by `Mm::map_queued`, with what is needed to take it
/// back (and the tables it built, in the caller's [`NewTables`]: an
/// out-parameter, so the common map into existing tables moves no list).
pub(crate) struct Queued {
    pub(crate) frame: Pfn,
    pub(crate) l1: Pfn,
    pub(crate) index: usize,
}

/// Software bit (x86 AVL bit 9, free for the OS natively and left to the
/// guest by Xen: `L1_DISALLOW_MASK` in xen/arch/x86/mm.c excludes bits 9–11):
/// the leaf grants write but is write-protected because its frame is shared
/// by a copy-on-write fork; a write fault copies or reuses it.
pub(crate) const SOFT_COW: u64 = 1 << 9;
/// Software bit (AVL bit 10): a shared page ([`Mm::map_frame`]); a fork
/// shares it as it is, never copy-on-write.
pub(crate) const SOFT_SHARED: u64 = 1 << 10;

/// One user address space (Linux's `mm_struct`). Dropping it does nothing:
/// it must be given back with [`Mm::exit`], which is where errors can be seen.
/// Only [`Mm::create`] (and `fork`) make one, on a freshly allocated root, so
/// it is never `init_mm`: no method needs to check that. It belongs to the
/// [`Mm`] that made it: every other `Mm` refuses it with
/// [`PvError::ForeignSpace`] and changes nothing.
///
/// `Sync`: threads of one process run on several CPUs at once. Its tables
/// change under its own lock (Linux's `page_table_lock`), and every update
/// an operation queues is issued before that lock is released, so another
/// CPU never walks a table with updates still queued on this one (Linux
/// likewise leaves lazy-MMU mode before `pte_unmap_unlock`).
pub struct AddressSpace {
    shared: Arc<SpaceState>,
}

/// What an [`AddressSpace`] is, shared with [`Mm`]'s list of live spaces
/// (Linux's `pgd_list`), which kernel-half sync and `pin_all` walk.
pub(crate) struct SpaceState {
    pub(crate) pgd: Pfn,
    /// The id of the [`Mm`] that made it (`Mm::id`).
    pub(crate) owner: u64,
    pub(crate) pinned: AtomicBool,
    /// Pinned by [`Mm::pin_all`] rather than by a first activation (Linux's
    /// `PG_savepinned`): [`Mm::unpin_all`] unpins exactly these.
    pub(crate) save_pinned: AtomicBool,
    /// CPUs that may hold its translations (Linux's `mm_cpumask`): set before
    /// a CPU loads it, cleared only when it exits.
    pub(crate) cpus: AtomicU64,
    pub(crate) lock: AtomicBool,
    /// Demand-zero regions: reserved, backed on first touch. Changed only
    /// under `lock`.
    pub(crate) regions: spin::Mutex<Vec<Region>>,
}

/// A demand-zero region: pages `start..end` (addresses) with `perm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) perm: PageFlags,
}

impl core::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("pgd", &self.pgd())
            .field("pinned", &self.is_pinned())
            .field("cpus", &self.cpumask())
            .finish()
    }
}

impl PartialEq for AddressSpace {
    fn eq(&self, other: &Self) -> bool {
        self.pgd() == other.pgd()
    }
}
impl Eq for AddressSpace {}

impl AddressSpace {
    fn new(pgd: Pfn, pinned: bool, owner: u64) -> Self {
        AddressSpace {
            shared: Arc::new(SpaceState {
                pgd,
                owner,
                pinned: AtomicBool::new(pinned),
                save_pinned: AtomicBool::new(false),
                cpus: AtomicU64::new(0),
                lock: AtomicBool::new(false),
                regions: spin::Mutex::new(Vec::new()),
            }),
        }
    }

    #[inline]
    pub(crate) fn state(&self) -> &Arc<SpaceState> {
        &self.shared
    }

    /// The frame of its top-level table (the kernel pgd on Xen).
    #[inline]
    pub fn pgd(&self) -> Pfn {
        self.shared.pgd
    }
    /// True once it has been activated (pinned on Xen).
    #[inline]
    pub fn is_pinned(&self) -> bool {
        self.shared.pinned.load(Ordering::Acquire)
    }
    /// The CPUs that may hold its translations in their TLBs (every CPU
    /// that activated it since it was created): the targets of a shootdown.
    #[inline]
    pub fn cpumask(&self) -> CpuMask {
        CpuMask(self.shared.cpus.load(Ordering::Acquire))
    }
}

/// Holds an address space's lock; released on drop.
pub(crate) struct Locked<'s>(&'s AtomicBool);

impl Drop for Locked<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Takes `lock`, spinning with [`Cpus::relax`] (a host model runs another
/// vCPU there). The holder may be waiting for this CPU to answer an IPI (a
/// native shootdown): `Mm` methods are called with interrupts (events)
/// enabled, so this CPU answers while it spins.
#[inline]
pub(crate) fn lock<'s>(cpus: &dyn Cpus, lock: &'s AtomicBool) -> Locked<'s> {
    while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        cpus.relax();
    }
    Locked(lock)
}

/// The memory manager: `init_mm`, the frame allocator and the selected backend.
///
/// `O` is how the backend is called: `dyn PvMmuOps` (the default, what the
/// registry hands out) or a concrete type such as an enum declared with
/// `pvops::static_dispatch!`, which makes every call a direct, inlinable one.
///
/// `Sync`: every method may be called from any CPU at once; per-space work is
/// serialised by the space's lock, `init_mm`'s kernel half by its own.
pub struct Mm<'a, O: PvMmuOps + ?Sized = dyn PvMmuOps> {
    /// Unique among the `Mm`s of this program (`NEXT_MM_ID`): the owner
    /// stamped into every space it makes.
    id: u64,
    pub(crate) ops: &'a O,
    pub(crate) mem: &'a dyn PhysMem,
    pub(crate) frames: &'a FrameAllocator<'a>,
    pub(crate) init_pgd: Pfn,
    pub(crate) init_lock: AtomicBool,
    /// Every live address space (Linux's `pgd_list`, under its `pgd_lock`):
    /// a space is added with its kernel half copied in the same critical
    /// section, so a kernel slot added later reaches it. Never held while
    /// taking a space's lock (walkers take a snapshot).
    pub(crate) live: spin::Mutex<Vec<Arc<SpaceState>>>,
    /// Pages copied by copy-on-write faults so far.
    pub(crate) cow_copies: AtomicU64,
    /// The space each CPU runs (pfn of its pgd; `NONE`: init_mm, or only
    /// lazily held since [`Mm::enter_lazy`]). A space some other CPU runs
    /// cannot exit; one it only holds lazily is dropped there first.
    running: [AtomicU64; pvops::MAX_CPUS],
}

/// `Mm::running` of a CPU that runs no user address space.
const NONE: u64 = u64::MAX;

/// The next [`Mm`]'s id: a space carries its maker's, so a space handed to
/// another `Mm` (whose allocator and backend state never saw its frames) is
/// refused rather than torn down with the wrong allocator.
static NEXT_MM_ID: AtomicU64 = AtomicU64::new(1);

impl<O: PvMmuOps + ?Sized> core::fmt::Debug for Mm<'_, O> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Mm(backend {}, init_mm {:?})", self.ops.name(), self.init_pgd)
    }
}

/// The start of `pages` pages from `addr` and the end address: page
/// aligned, canonical, wholly below `USER_LIMIT`, no overflow.
pub(crate) fn user_range(addr: u64, pages: u64) -> Result<(VirtAddr, u64), PvError> {
    let start = user_va(addr)?;
    let end = pages
        .checked_mul(pvops::PAGE_SIZE)
        .and_then(|len| addr.checked_add(len))
        .filter(|&end| end <= USER_LIMIT)
        .ok_or(PvError::NotUserAddress { addr: start })?;
    Ok((start, end))
}

/// The first address of the next L1 table's range after `va`.
pub(crate) fn next_l1(va: u64) -> u64 {
    (va | 0x1f_ffff) + 1
}

pub(crate) fn user_va(addr: u64) -> Result<VirtAddr, PvError> {
    let va = VirtAddr::try_new(addr)?;
    if !va.is_page_aligned() {
        return Err(PvError::Unaligned { addr });
    }
    if addr >= USER_LIMIT {
        return Err(PvError::NotUserAddress { addr: va });
    }
    Ok(va)
}

impl<'a, O: PvMmuOps + ?Sized> Mm<'a, O> {
    /// Takes over the root the platform booted on as `init_mm`. The memory
    /// is the allocator's ([`FrameAllocator::mem`]): one place, so the two
    /// cannot disagree. Works before frame metadata exists (the early-boot
    /// path: call [`Mm::init_metadata`] at its end); if the metadata exists
    /// already, the backend is told at once
    /// ([`PvMmuOps::frame_metadata_ready`], through its adopt of the root).
    ///
    /// On a host model, `pvops_model::host` builds the three arguments
    /// (see the crate docs).
    pub fn adopt_boot(ops: &'a O, frames: &'a FrameAllocator<'a>, boot_pgd: Pfn) -> Result<Self, PvError> {
        ops.adopt_boot_root(frames, boot_pgd)?;
        Ok(Mm {
            id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed),
            ops,
            mem: frames.mem(),
            frames,
            init_pgd: boot_pgd,
            init_lock: AtomicBool::new(false),
            live: spin::Mutex::new(Vec::new()),
            cow_copies: AtomicU64::new(0),
            running: [const { AtomicU64::new(NONE) }; pvops::MAX_CPUS],
        })
    }

    /// The end of early boot: creates the frame metadata
    /// ([`FrameAllocator::init_metadata`]) and tells the backend
    /// ([`PvMmuOps::frame_metadata_ready`]; xen64 marks the boot tables
    /// pinned there). From its return on, the metadata is right (a pin count
    /// taken from it matches the hypervisor's) and [`Mm::create`] works.
    /// Idempotent.
    pub fn init_metadata(&self) -> Result<(), PvError> {
        self.frames.init_metadata();
        self.ops.frame_metadata_ready(self.frames)
    }

    /// Refuses a space another `Mm` made: one private check at the entry
    /// of every public method that takes a space.
    #[inline]
    pub(crate) fn check_owner(&self, space: &AddressSpace) -> Result<(), PvError> {
        if space.state().owner == self.id {
            Ok(())
        } else {
            Err(PvError::ForeignSpace { pgd: space.pgd() })
        }
    }

    /// The backend in use.
    pub fn ops(&self) -> &'a O {
        self.ops
    }

    /// The frame allocator.
    pub fn frames(&self) -> &'a FrameAllocator<'a> {
        self.frames
    }

    /// `init_mm`'s root.
    pub fn init_pgd(&self) -> Pfn {
        self.init_pgd
    }

    /// The root currently loaded, as the backend knows it (`read_cr3`): also
    /// right after a half-failed switch, or one made behind this `Mm`'s back.
    pub fn active_pgd(&self) -> Pfn {
        self.ops.read_cr3()
    }

    /// The CPUs the backend runs on.
    pub fn cpus(&self) -> &'a dyn Cpus {
        self.ops.cpus()
    }

    /// True while `pgd` is the root loaded on this CPU: its TLB entries must
    /// be flushed before a frame it mapped is freed.
    fn is_loaded(&self, pgd: Pfn) -> bool {
        self.ops.read_cr3() == pgd
    }

    /// The CPUs whose TLBs may hold `space`'s translations now: this one if
    /// it has `space` loaded, and every other online CPU that activated it.
    pub(crate) fn holders(&self, space: &AddressSpace) -> CpuMask {
        let cpus = self.cpus();
        let me = cpus.this_cpu();
        let others = space.cpumask().without(me);
        // The online set only matters when another CPU is in the cpumask.
        let others = if others.is_empty() { others } else { others.and(cpus.online()) };
        if self.is_loaded(space.pgd()) {
            others.with(me)
        } else {
            others
        }
    }

    /// The live list, locked. Spins with [`Cpus::relax`] like the space
    /// locks: its holder may be waiting for this CPU (a cross-call), and a
    /// host model runs another vCPU there.
    pub(crate) fn live(&self) -> spin::MutexGuard<'_, Vec<Arc<SpaceState>>> {
        loop {
            if let Some(g) = self.live.try_lock() {
                return g;
            }
            self.cpus().relax();
        }
    }

    #[inline]
    pub(crate) fn lock<'s>(&self, space: &'s AddressSpace) -> Locked<'s> {
        let l = &space.state().lock;
        // Uncontended (the common case): taken without asking for the CPUs.
        if l.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return Locked(l);
        }
        lock(self.cpus(), l)
    }

    /// Maps a kernel page (kernel half, supervisor only) into `init_mm`.
    /// New pgds copy the kernel half's slots; a slot this call adds to
    /// `init_mm` after address spaces exist is also written into every live
    /// pgd (kernel pgds only, never a user pgd: Linux's `pgd_list` sync).
    pub fn map_kernel(&self, addr: u64, frame: Pfn, writable: bool) -> Result<(), PvError> {
        let va = VirtAddr::try_new(addr)?;
        if !va.is_page_aligned() {
            return Err(PvError::Unaligned { addr });
        }
        if addr < USER_LIMIT {
            return Err(PvError::WrongState { what: "map_kernel below USER_LIMIT" });
        }
        if self.ops.reserved_l4_slots().contains(&va.index(Level::L4)) {
            return Err(PvError::ReservedSlot { index: va.index(Level::L4) });
        }
        let _locked = lock(self.cpus(), &self.init_lock);
        let slot = va.index(Level::L4);
        let had_slot = self.ops.read_entry(Level::L4, self.init_pgd, slot)?.is_present();
        self.issued_now(|| {
            // The kernel half is in every space: a table undone there may be cached anywhere.
            let all = self.cpus().online();
            let (l1, _) = ensure_l1(self.ops, self.frames, self.init_pgd, va, KERNEL_TABLE_FLAGS, || all)?;
            if self.ops.read_entry(Level::L1, l1, va.index(Level::L1))?.is_present() {
                return Err(PvError::AlreadyMapped { addr: va });
            }
            let f = flags::PRESENT | if writable { flags::WRITABLE } else { 0 };
            self.ops.set_entry(self.frames, Level::L1, l1, va.index(Level::L1), Pte::new(frame, f))
        })?;
        if had_slot {
            return Ok(());
        }
        let e = self.ops.read_entry(Level::L4, self.init_pgd, slot)?;
        self.sync_kernel_slot(slot, e)
    }

    /// A kernel L4 slot new in `init_mm` goes into every live pgd (Linux's
    /// `sync_global_pgds` over `pgd_list`): kernel pgds only — on xen64 a
    /// slot at or above `USER_PGD_SLOTS` never reaches a user pgd
    /// (`set_entry`'s contract). Under the live list's lock, so a space
    /// being created either copied the slot or is written here.
    fn sync_kernel_slot(&self, slot: usize, e: Pte) -> Result<(), PvError> {
        let live = self.live();
        self.issued_now(|| {
            let mut first = Ok(());
            for s in live.iter() {
                if let Err(err) = self.ops.set_entry(self.frames, Level::L4, s.pgd, slot, e) {
                    log::error!("kernel slot {slot} not synced into {:?}: {err}", s.pgd);
                    first = first.and(Err(err));
                }
            }
            first
        })
    }

    /// Runs `f` in a lazy-MMU section of its own and issues what it queued
    /// before returning, even inside a caller's section (whose earlier updates
    /// go out with it): for work that must have taken effect when it returns.
    /// The result covers only what `f` queued.
    pub(crate) fn issued_now<T>(&self, f: impl FnOnce() -> Result<T, PvError>) -> Result<T, PvError> {
        self.ops.lazy_mmu_enter();
        let r = f();
        let flushed = self.ops.lazy_mmu_flush();
        let left = self.ops.lazy_mmu_leave();
        let v = r?;
        flushed.and(left).map(|()| v)
    }

    /// A new, empty user address space sharing `init_mm`'s kernel half.
    /// Needs frame metadata (the end of early boot): backends keep per-space
    /// state there (xen64: the user pgd, pin flags).
    pub fn create(&self) -> Result<AddressSpace, PvError> {
        if !self.frames.has_metadata() {
            return Err(PvError::WrongState { what: "create before frame metadata exists (early boot)" });
        }
        let pgd = self.frames.alloc_zeroed_frame()?;
        // Copied and listed in one critical section of the live list: a
        // kernel slot `map_kernel` adds meanwhile is either copied here or
        // propagated to this pgd (Linux's `pgd_ctor` under `pgd_lock`).
        let mut live = self.live();
        let reserved = self.ops.reserved_l4_slots();
        for slot in USER_PGD_SLOTS..ENTRIES_PER_TABLE {
            if reserved.contains(&slot) {
                continue;
            }
            let e = self.ops.read_entry(Level::L4, self.init_pgd, slot)?;
            if e.is_present() {
                // A fresh pgd is not live yet: no backend needs a hypercall here.
                if let Err(err) = self.ops.set_entry(self.frames, Level::L4, pgd, slot, e) {
                    let _ = self.frames.free_frame(pgd);
                    return Err(err);
                }
            }
        }
        if let Err(err) = self.ops.pgd_alloc(self.frames, pgd) {
            let _ = self.frames.free_frame(pgd);
            return Err(err);
        }
        let space = AddressSpace::new(pgd, false, self.id);
        live.push(space.state().clone());
        Ok(space)
    }

    /// Maps a new zeroed page at `addr` with `perm`; returns its frame.
    /// On any error nothing changes: new tables are unlinked and freed again.
    /// Only if the hypervisor refuses that undo too does something stay: the
    /// page still mapped (`translate` says so; [`Mm::exit`] frees it), or a
    /// frame or table kept out of circulation (logged) rather than freed
    /// while still reachable or still a table.
    ///
    /// Everything it writes goes out as one batch (it brackets itself in a
    /// lazy-MMU section): on Xen, mapping into a live space that needs new
    /// tables is one multicall — read-only remaps and links in order — not one
    /// hypercall per table.
    ///
    /// Inside a lazy-MMU section of the caller's, the section nests and stays
    /// open, but this map's updates are issued before it returns (with what
    /// the caller queued before, whose failures stay the caller's): they must
    /// be in effect before the space's lock is released, or another CPU
    /// would walk tables whose updates are still queued here.
    pub fn map(&self, space: &AddressSpace, addr: u64, perm: PageFlags) -> Result<Pfn, PvError> {
        self.check_owner(space)?;
        self.map_issued(space, addr, perm.user_bits(), None)
    }

    /// Maps the existing frame `frame` at `addr` with `perm`: a shared page
    /// (Linux's `MAP_SHARED`). The mapping takes a reference on the frame
    /// ([`FrameAllocator::get_frame`]; a free frame is refused), which
    /// `unmap`/`exit` drop: the frame is freed when its last holder lets
    /// go. A copy-on-write fork shares it as it is (writes stay visible to
    /// both). Otherwise as [`Mm::map`]: on error nothing changed, the
    /// reference too.
    pub fn map_frame(&self, space: &AddressSpace, addr: u64, frame: Pfn, perm: PageFlags) -> Result<(), PvError> {
        self.check_owner(space)?;
        self.map_issued(space, addr, perm.user_bits() | SOFT_SHARED, Some(frame)).map(|_| ())
    }

    /// [`Mm::map`]/[`Mm::map_frame`]: a leaf with `bits` for a new frame or `frame`.
    #[inline]
    fn map_issued(&self, space: &AddressSpace, addr: u64, bits: u64, frame: Option<Pfn>) -> Result<Pfn, PvError> {
        let _locked = self.lock(space);
        self.map_locked(space, addr, bits, frame)
    }

    /// [`Mm::map_issued`] with the space's lock held.
    pub(crate) fn map_locked(
        &self,
        space: &AddressSpace,
        addr: u64,
        bits: u64,
        frame: Option<Pfn>,
    ) -> Result<Pfn, PvError> {
        let mut made = NewTables::default();
        self.ops.lazy_mmu_enter();
        let queued = self.map_queued(space, addr, bits, frame.into(), &mut made);
        let flushed = self.ops.lazy_mmu_flush();
        let left = self.ops.lazy_mmu_leave();
        match (queued, flushed.and(left)) {
            (Ok(m), Ok(())) => Ok(m.frame),
            (Ok(m), Err(e)) => {
                // Some record of the batch was refused: take the whole map back,
                // whichever of its records took effect.
                self.take_back(space, &m, &made);
                Err(e)
            }
            // map_queued undid its own work (and issued the undo).
            (Err(e), _) => Err(e),
        }
    }

    /// Undoes a map whose batch failed: clear the leaf (and flush if loaded),
    /// issued before anything is freed; unlink and free the tables it built;
    /// free the frame. Nothing that may still be reachable is freed: if the
    /// hypervisor refuses the clear, the page stays mapped (its tables and
    /// frame are the space's, freed by `exit`); if it refuses the flush, the
    /// frame is kept (lost, logged) rather than handed out.
    #[cold]
    #[inline(never)]
    fn take_back(&self, space: &AddressSpace, m: &Queued, made: &NewTables) {
        let holders = self.holders(space);
        let cleared = self.issued_now(|| {
            self.ops.set_entry(self.frames, Level::L1, m.l1, m.index, Pte::EMPTY)?;
            if !holders.is_empty() {
                // Nothing used the mapping, but no TLB may keep it once the frame is free.
                self.ops.flush_tlb_multi(holders, Flush::All)?;
            }
            Ok(())
        });
        // The slot was empty when `map_queued` checked it and only this map
        // wrote it: anything present there is this map's leaf.
        let still_mapped = self.ops.read_entry(Level::L1, m.l1, m.index).map_or(true, |e| e.is_present());
        if still_mapped {
            log::error!("map undo: {:?} is still mapped ({cleared:?}); left in the space", m.frame);
            return;
        }
        undo(self.ops, self.frames, space.pgd(), made, holders);
        if !holders.is_empty() && cleared.is_err() {
            log::error!("map undo: no flush after unmapping {:?} ({cleared:?}); frame kept", m.frame);
            return;
        }
        let _ = self.frames.put_frame(m.frame);
    }

    /// [`Mm::map`] without issuing what a lazy-MMU batch holds (for `fork_cow`):
    /// a leaf with `bits` for the frame `backing` says (a shared one gains a
    /// reference). On error the frame's reference is dropped again.
    #[inline(always)]
    pub(crate) fn map_queued(
        &self,
        space: &AddressSpace,
        addr: u64,
        bits: u64,
        backing: Backing,
        made: &mut NewTables,
    ) -> Result<Queued, PvError> {
        let va = user_va(addr)?;
        let index = va.index(Level::L1);
        // One walk when the tables are there (the common case): the L1 it
        // finds is the one to write, nothing is built and nothing needs undoing.
        let found = find_l1(self.ops, space.pgd(), va)?;
        if let Some(l1) = found {
            if self.ops.read_entry(Level::L1, l1, index)?.is_present() {
                return Err(PvError::AlreadyMapped { addr: va });
            }
        }
        let frame = match backing {
            Backing::Shared(f) => {
                self.frames.get_frame(f)?;
                f
            }
            Backing::Zeroed => self.frames.alloc_zeroed_frame()?,
        };
        let l1 = match found {
            Some(l1) => l1,
            None => match ensure_l1(self.ops, self.frames, space.pgd(), va, TABLE_FLAGS, || self.holders(space)) {
                Ok((l1, built)) => {
                    *made = built;
                    l1
                }
                Err(e) => {
                    let _ = self.frames.put_frame(frame);
                    return Err(e);
                }
            },
        };
        if let Err(e) = self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::new(frame, bits)) {
            // Tables built for this page alone go again (holders asked only
            // now: under the space's lock they are what they were).
            undo(self.ops, self.frames, space.pgd(), made, self.holders(space));
            let _ = self.frames.put_frame(frame);
            return Err(e);
        }
        Ok(Queued { frame, l1, index })
    }

    /// Unmaps the page at `addr` and drops its frame's reference (freeing
    /// it unless a shared or copy-on-write mapping elsewhere still holds it).
    /// A demand-zero reservation of the page stays (munmap is
    /// [`Mm::unmap_range`]).
    ///
    /// In order: the entry is cleared, then its TLB entry flushed on every
    /// CPU that may hold it (this one if `space` is loaded here, and every
    /// other CPU of its [`AddressSpace::cpumask`]: a remote shootdown), then
    /// the frame freed. The clear and the flush are one batch issued before
    /// it returns (on Xen one hypercall, with `INVLPG_MULTI` for other
    /// vCPUs), even inside a caller's lazy-MMU section. On error: if the
    /// entry was not cleared, nothing changed; if it was but no flush could
    /// be done, the page is unmapped and its frame is kept (never handed out
    /// while a TLB may still reach it), and the error says why.
    pub fn unmap(&self, space: &AddressSpace, addr: u64) -> Result<(), PvError> {
        self.check_owner(space)?;
        let va = user_va(addr)?;
        let _locked = self.lock(space);
        let l1 = find_l1(self.ops, space.pgd(), va)?.ok_or(PvError::NotMapped { addr: va })?;
        let index = va.index(Level::L1);
        let e = self.ops.read_entry(Level::L1, l1, index)?;
        if !e.is_present() {
            return Err(PvError::NotMapped { addr: va });
        }
        let holders = self.holders(space);
        let done = self.issued_now(|| {
            self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::EMPTY)?;
            if !holders.is_empty() {
                self.ops.flush_tlb_multi(holders, Flush::Page(va))?;
            }
            Ok(())
        });
        if let Err(err) = done {
            self.unmap_failed(l1, index, va, holders, err)?;
        }
        self.frames.put_frame(e.pfn()).map(|_| ())
    }

    /// [`Mm::unmap`] whose clear-and-flush batch failed with `e`: `Err` if
    /// the clear did not take effect (nothing changed) or no flush could be
    /// done (the frame is then kept); `Ok` once everything was flushed.
    /// Out of line: the common path keeps its registers.
    #[cold]
    #[inline(never)]
    fn unmap_failed(&self, l1: Pfn, index: usize, va: VirtAddr, holders: CpuMask, e: PvError) -> Result<(), PvError> {
        if self.ops.read_entry(Level::L1, l1, index)?.is_present() {
            // The clear did not take effect: nothing changed.
            return Err(e);
        }
        if !holders.is_empty() {
            // Cleared, but the flush may not have happened: flush everything,
            // or keep the frame rather than hand it out.
            log::warn!("unmap {:#x}: flush failed ({e}); flushing everything", va.as_u64());
            self.issued_now(|| self.ops.flush_tlb_multi(holders, Flush::All))?;
        }
        Ok(())
    }

    /// Unmaps every mapped page of `pages` pages from `addr` (unmapped ones
    /// are skipped, as `munmap` does), forgets the demand-zero reservations
    /// there, and frees their frames (drops their references); returns how
    /// many were unmapped.
    ///
    /// The clears are one lazy-MMU batch and the TLB flush is one for the
    /// whole range, on every CPU that may hold the space (Linux's
    /// `flush_tlb_mm_range` after `zap_pte_range`): on Xen ⌈N/32⌉-ish
    /// multicalls whose last entry is one `INVLPG_MULTI` (one page) or
    /// `TLB_FLUSH_MULTI` (more), not one flush per page; natively one IPI
    /// per other CPU.
    ///
    /// Page tables whose whole span the range covers are unlinked in the
    /// same batch (an L1, then an L2 or L3; never the pgd) and, like
    /// the data frames, gathered and freed only after that flush (Linux's
    /// `mmu_gather`: `pte_free_tlb`, then `tlb_flush_mmu` before
    /// `tlb_remove_table` frees): a paging-structure cache on another CPU
    /// may still hold a table until then. On error, the pages whose entries
    /// were not cleared stay mapped; a cleared page's frame, or an unlinked
    /// table, is freed only once a flush succeeded (else kept, logged).
    pub fn unmap_range(&self, space: &AddressSpace, addr: u64, pages: u64) -> Result<u64, PvError> {
        self.check_owner(space)?;
        let (start, end) = user_range(addr, pages)?;
        let _locked = self.lock(space);
        crate::lifecycle::regions_remove(&mut space.state().regions.lock(), addr, end);
        let mut cleared = Vec::new();
        let mut tables = Vec::new();
        let holders = self.holders(space);
        let done = self.issued_now(|| {
            let mut va = addr;
            while va < end {
                let chunk = next_l1(va).min(end);
                let v = VirtAddr::try_new(va)?;
                if let Some(l1) = find_l1(self.ops, space.pgd(), v)? {
                    for page in (va..chunk).step_by(pvops::PAGE_SIZE as usize) {
                        let index = VirtAddr::try_new(page)?.index(Level::L1);
                        let e = self.ops.read_entry(Level::L1, l1, index)?;
                        if e.is_present() {
                            self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::EMPTY)?;
                            cleared.push((l1, index, e.pfn()));
                        }
                    }
                    self.prune_tables(space.pgd(), v, addr..end, &mut tables)?;
                }
                va = chunk;
            }
            let changed = !cleared.is_empty() || !tables.is_empty();
            if changed && !holders.is_empty() {
                self.ops.flush_tlb_multi(holders, Flush::Range { start, pages })?;
            }
            Ok(())
        });
        let mut flushed = done.is_ok();
        if let Err(e) = &done {
            if !holders.is_empty() {
                log::warn!("unmap_range {:#x}+{pages}: {e}; flushing everything", addr);
                flushed = self.issued_now(|| self.ops.flush_tlb_multi(holders, Flush::All)).is_ok();
            } else {
                flushed = true;
            }
        }
        let mut unmapped = 0;
        for &(l1, index, frame) in &cleared {
            // Queued clears a failed batch did not apply are still present.
            if self.ops.read_entry(Level::L1, l1, index)?.is_present() {
                continue;
            }
            unmapped += 1;
            if flushed {
                self.frames.put_frame(frame)?;
            } else {
                log::error!("unmap_range: no flush after unmapping {frame:?}; frame kept");
            }
        }
        self.free_gathered_tables(space.pgd(), &tables, flushed);
        done.map(|()| unmapped)
    }

    /// Unlinks the L1 table covering `va` if `range` covers all it maps
    /// (2 MiB) and it is empty, then its L2 (1 GiB) and L3 (512 GiB) on the
    /// same terms (never the pgd): Linux's `free_pgtables` frees the tables
    /// an unmapped region spans and nothing shared with what lies outside,
    /// so an unmap inside a table's span keeps it for its neighbours.
    /// Records each in `tables` as (parent level, parent, slot, table) for
    /// [`Mm::free_gathered_tables`] after the flush.
    fn prune_tables(
        &self,
        root: Pfn,
        va: VirtAddr,
        range: Range<u64>,
        tables: &mut Vec<(Level, Pfn, usize, Pfn)>,
    ) -> Result<(), PvError> {
        let mut path = [(Level::L4, root, 0usize, Pfn(0)); 3];
        let mut table = root;
        for (n, level) in [Level::L4, Level::L3, Level::L2].into_iter().enumerate() {
            let slot = va.index(level);
            let e = self.ops.read_entry(level, table, slot)?;
            if !e.is_present() {
                return Ok(());
            }
            path[n] = (level, table, slot, e.pfn());
            table = e.pfn();
        }
        for &(level, parent, slot, child) in path.iter().rev() {
            let child_level = level.lower().unwrap_or(Level::L1);
            // The span the child table maps: what its parent's slot covers.
            let span = 1u64 << (12 + 9 * (level as u32 - 1));
            let first = va.as_u64() & !(span - 1);
            let covered = range.start <= first && first.checked_add(span).is_some_and(|e| e <= range.end);
            if !covered || !self.table_is_empty(child_level, child)? {
                break;
            }
            self.ops.set_entry(self.frames, level, parent, slot, Pte::EMPTY)?;
            tables.push((level, parent, slot, child));
        }
        Ok(())
    }

    pub(crate) fn table_is_empty(&self, level: Level, table: Pfn) -> Result<bool, PvError> {
        for i in 0..ENTRIES_PER_TABLE {
            if self.ops.read_entry(level, table, i)?.is_present() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Releases and frees tables [`Mm::prune_tables`] unlinked, once
    /// `flushed`: only those whose unlink took effect and that are still
    /// empty (a failed batch may have left either undone), lowest first.
    fn free_gathered_tables(&self, root: Pfn, tables: &[(Level, Pfn, usize, Pfn)], flushed: bool) {
        for &(level, parent, slot, table) in tables {
            let child_level = level.lower().unwrap_or(Level::L1);
            let linked = self.ops.read_entry(level, parent, slot).map_or(true, |e| e.is_present());
            if linked || !self.table_is_empty(child_level, table).unwrap_or(false) {
                continue;
            }
            if !flushed {
                log::error!("unmap_range: no flush after unlinking table {table:?}; frame kept");
                continue;
            }
            if let Err(e) = self.ops.release_pt(self.frames, root, child_level, table) {
                log::error!("unmap_range: release of table {table:?} refused ({e}); frame kept");
                continue;
            }
            if let Err(e) = self.frames.free_frame(table) {
                log::error!("unmap_range: table {table:?} not freed ({e})");
            }
        }
    }

    /// The frame and user permissions mapped at `addr`, if any.
    pub fn translate(&self, space: &AddressSpace, addr: u64) -> Result<Option<(Pfn, PageFlags)>, PvError> {
        self.check_owner(space)?;
        let _locked = self.lock(space);
        self.translate_locked(space, addr)
    }

    /// [`Mm::translate`] with the space's lock already held.
    fn translate_locked(&self, space: &AddressSpace, addr: u64) -> Result<Option<(Pfn, PageFlags)>, PvError> {
        let va = user_va(addr)?;
        let Some(l1) = find_l1(self.ops, space.pgd(), va)? else {
            return Ok(None);
        };
        let e = self.ops.read_entry(Level::L1, l1, va.index(Level::L1))?;
        if !e.is_present() {
            return Ok(None);
        }
        Ok(Some((e.pfn(), PageFlags::of_leaf(e))))
    }

    /// Writes a 64-bit word into the page mapped at `addr` (kernel-side access, for loading).
    /// Under the space's lock, so another CPU cannot unmap and free the
    /// frame between the lookup and the store.
    pub fn poke(&self, space: &AddressSpace, addr: u64, value: u64) -> Result<(), PvError> {
        self.check_owner(space)?;
        self.with_frame_at(space, addr, |frame| self.mem.write_entry(frame, ((addr & 0xfff) / 8) as usize, value))
    }

    /// Reads a 64-bit word from the page mapped at `addr` (kernel-side access).
    pub fn peek(&self, space: &AddressSpace, addr: u64) -> Result<u64, PvError> {
        self.check_owner(space)?;
        self.with_frame_at(space, addr, |frame| self.mem.read_entry(frame, ((addr & 0xfff) / 8) as usize))
    }

    /// Runs `f` on the frame of the page containing `addr`, holding the
    /// space's lock; `NotMapped` names that page.
    fn with_frame_at<R>(&self, space: &AddressSpace, addr: u64, f: impl FnOnce(Pfn) -> R) -> Result<R, PvError> {
        let page = addr & !0xfff;
        let _locked = self.lock(space);
        let (frame, _) =
            self.translate_locked(space, page)?.ok_or(PvError::NotMapped { addr: VirtAddr::try_new(page)? })?;
        Ok(f(frame))
    }

    /// Switches this CPU to `space`; its first activation pins it (Xen).
    /// This CPU joins the space's [`AddressSpace::cpumask`] under the space's
    /// lock before the root is loaded, so an unmap racing with the switch
    /// either shoots it down or finished before it could walk the old entry.
    ///
    /// On error: a refused first pin changes nothing (this CPU keeps what it
    /// had loaded); a refused switch leaves the previous space loaded, whole
    /// (the backend's `write_cr3` contract), or, only if the hypervisor also
    /// refused the undo, `space`'s kernel root with no user root.
    /// [`Mm::active_pgd`] tells which. Either way this CPU stays in the
    /// space's cpumask (it only ever costs an extra flush).
    pub fn activate(&self, space: &AddressSpace) -> Result<(), PvError> {
        self.check_owner(space)?;
        if !space.is_pinned() {
            self.first_activation(space)?;
        }
        let me = self.cpus().this_cpu();
        let bit = CpuMask::one(me).0;
        // Under the space's lock: an unmap reads the cpumask under it too,
        // so either it sees this CPU (and shoots it down), or its clear was
        // issued before this CPU loads the root and walks the tables.
        // Only once (Linux's `switch_mm_irqs_off` tests the bit first): only
        // this CPU sets its bit and nothing clears it while the space lives,
        // so seeing it set (this CPU's own earlier store, in program order)
        // means that join already happened under the lock, and every unmap
        // since has seen it — as long as this CPU stayed online, which the
        // `Cpus::online` contract requires (shootdowns skip offline CPUs;
        // pvops has no CPU hotplug). A CPU beyond `MAX_CPUS` has no bit:
        // locked path.
        if bit == 0 || space.state().cpus.load(Ordering::Relaxed) & bit == 0 {
            self.join(space, bit);
        }
        self.set_running(me, space.pgd().0);
        self.ops.write_cr3(self.frames, space.pgd())
    }

    /// [`Mm::activate`]'s pin (once per space), out of line: the switch
    /// itself keeps its registers.
    #[cold]
    #[inline(never)]
    fn first_activation(&self, space: &AddressSpace) -> Result<(), PvError> {
        let _locked = self.lock(space);
        if !space.is_pinned() {
            // Pinned by `pin_all` already: the pin becomes the activation's.
            if !space.state().save_pinned.swap(false, Ordering::AcqRel) {
                self.ops.activate_mm(self.frames, space.pgd())?;
            }
            space.state().pinned.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// [`Mm::activate`]'s join of the cpumask (`bit`), under the space's
    /// lock (once per CPU and space), out of line like `first_activation`.
    #[cold]
    #[inline(never)]
    fn join(&self, space: &AddressSpace, bit: u64) {
        let _locked = self.lock(space);
        space.state().cpus.fetch_or(bit, Ordering::AcqRel);
    }

    /// Switches back to `init_mm` (kernel only: no user pgd).
    pub fn activate_init(&self) -> Result<(), PvError> {
        self.set_running(self.cpus().this_cpu(), NONE);
        self.ops.write_cr3(self.frames, self.init_pgd)
    }

    /// This CPU stops running its user address space but keeps it loaded
    /// (Linux's `enter_lazy_tlb`: an idle CPU or a kernel thread saves a
    /// switch). The space may then exit from another CPU, which makes this
    /// one drop it first.
    pub fn enter_lazy(&self) {
        self.set_running(self.cpus().this_cpu(), NONE);
    }

    fn set_running(&self, cpu: usize, pgd: u64) {
        if let Some(r) = self.running.get(cpu) {
            r.store(pgd, Ordering::Release);
        }
    }

    /// A copy of `parent`'s user half: new tables and new frames with the same
    /// contents. On failure the partial child is destroyed: nothing leaks.
    /// (Its teardown is retried once, as `exit` allows; only if the backend
    /// refuses that too is what is left of the child lost, logged.)
    /// Like [`Mm::map`] it brackets itself in a lazy-MMU section, which nests
    /// in a caller's (the child is not pinned yet: its tables are plain
    /// stores, nothing waits for the caller's leave).
    pub fn fork(&self, parent: &AddressSpace) -> Result<AddressSpace, PvError> {
        self.check_owner(parent)?;
        let _locked = self.lock(parent);
        let child = self.create()?;
        // Filled with plain stores: `pin_all` must wait (see `fork_cow`).
        let child_locked = self.lock(&child);
        self.ops.lazy_mmu_enter();
        let copied = self.copy_user_half(parent, &child);
        let flushed = self.ops.lazy_mmu_leave();
        drop(child_locked);
        match copied.and(flushed) {
            Ok(()) => Ok(child),
            Err(e) => {
                if let Err((first, child)) = self.exit(child) {
                    if let Err((again, child)) = self.exit(child) {
                        log::error!(
                            "fork: teardown of {:?} refused ({first}, {again}); its frames are lost",
                            child.pgd()
                        );
                    }
                }
                Err(e)
            }
        }
    }

    /// Copies every present user page of `parent` into `child` (fresh,
    /// unpinned, not loaded anywhere): a parallel walk, as Linux's
    /// `copy_p4d_range` … `copy_pte_range` does — the child's L1 for a
    /// parent L1 is found or built once, at its first present page (never
    /// for an empty one), then each page is one whole-frame copy into a
    /// fresh frame, not zeroed first, and one leaf write (never a table, so
    /// writable through the direct map on Xen). On error what the child got
    /// so far stays in it: `fork` tears the whole child down.
    fn copy_user_half(&self, parent: &AddressSpace, child: &AddressSpace) -> Result<(), PvError> {
        self.for_each_user_l1(parent.pgd(), |base, l1| self.copy_l1(child, l1, base))
    }

    /// Calls `f` for every present user L1 table below `root`, in address
    /// order, with the address its first slot maps; stops at `f`'s first error.
    fn for_each_user_l1(
        &self,
        root: Pfn,
        mut f: impl FnMut(VirtAddr, Pfn) -> Result<(), PvError>,
    ) -> Result<(), PvError> {
        for i4 in 0..USER_PGD_SLOTS {
            let e4 = self.ops.read_entry(Level::L4, root, i4)?;
            if !e4.is_present() {
                continue;
            }
            for i3 in 0..ENTRIES_PER_TABLE {
                let e3 = self.ops.read_entry(Level::L3, e4.pfn(), i3)?;
                if !e3.is_present() {
                    continue;
                }
                for i2 in 0..ENTRIES_PER_TABLE {
                    let e2 = self.ops.read_entry(Level::L2, e3.pfn(), i2)?;
                    if e2.is_present() {
                        f(VirtAddr::from_indices(i4, i3, i2, 0), e2.pfn())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Mm::copy_user_half`] of one parent L1 table `from`, which maps the
    /// 2 MiB from `base`.
    fn copy_l1(&self, child: &AddressSpace, from: Pfn, base: VirtAddr) -> Result<(), PvError> {
        let mut to = None;
        for i1 in 0..ENTRIES_PER_TABLE {
            let e = self.ops.read_entry(Level::L1, from, i1)?;
            if !e.is_present() {
                continue;
            }
            let l1 = match to {
                Some(l1) => l1,
                None => {
                    let (l1, _) =
                        ensure_l1(self.ops, self.frames, child.pgd(), base, TABLE_FLAGS, || self.holders(child))?;
                    to = Some(l1);
                    l1
                }
            };
            let frame = self.frames.alloc_copy_of(e.pfn())?;
            let leaf = Pte::new(frame, PageFlags::of_leaf(e).user_bits());
            if let Err(err) = self.ops.set_entry(self.frames, Level::L1, l1, i1, leaf) {
                let _ = self.frames.put_frame(frame);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Calls `f` for every present user page below `root`, in address order.
    /// `f` gets the page's address, its L1 table, the slot there and the entry.
    pub(crate) fn for_each_user_page(
        &self,
        root: Pfn,
        f: &mut dyn FnMut(VirtAddr, Pfn, usize, Pte),
    ) -> Result<(), PvError> {
        self.for_each_user_l1(root, |base, l1| {
            for i1 in 0..ENTRIES_PER_TABLE {
                let e1 = self.ops.read_entry(Level::L1, l1, i1)?;
                if e1.is_present() {
                    let va =
                        VirtAddr::from_indices(base.index(Level::L4), base.index(Level::L3), base.index(Level::L2), i1);
                    f(va, l1, i1, e1);
                }
            }
            Ok(())
        })
    }

    /// Tears `space` down: unpin (Xen), free every table, drop every page's
    /// reference (a frame shared with another space lives on), free the pgd.
    /// Refused, with `space` given back unchanged, while it is the one loaded
    /// on this CPU, or while another CPU runs it ([`PvError::RootInUse`]).
    /// Any other CPU that only holds it lazily ([`Mm::enter_lazy`]) is first
    /// made to switch to `init_mm` through a cross-call (Linux's
    /// `xen_drop_mm_ref`): no CPU may keep a root that is unpinned and freed;
    /// if one cannot be reached, `space` comes back unchanged with the error
    /// naming it.
    /// On a later error the space comes back unpinned and partly torn down
    /// (every entry is cleared before what it names is freed, and a table is
    /// emptied before it is unlinked, so what is left is consistent and still
    /// reachable); calling `exit` on it again finishes the job. A table whose
    /// release the backend refuses is the one frame lost (kept, not freed).
    pub fn exit(&self, space: AddressSpace) -> Result<(), (PvError, AddressSpace)> {
        if let Err(e) = self.check_owner(&space) {
            return Err((e, space));
        }
        // Under the space's lock: `pin_all`/`unpin_all` reach it through the
        // live list and must never pin or unpin it mid-teardown.
        let state = space.state().clone();
        let _locked = lock(self.cpus(), &state.lock);
        if self.is_loaded(space.pgd()) {
            return Err((PvError::WrongState { what: "exit of the active address space" }, space));
        }
        let me = self.cpus().this_cpu();
        let running =
            (0..pvops::MAX_CPUS).find(|&c| c != me && self.running[c].load(Ordering::Acquire) == space.pgd().0);
        if let Some(cpu) = running {
            return Err((PvError::RootInUse { pgd: space.pgd(), cpu }, space));
        }
        if let Err(e) = self.drop_root_elsewhere(&space) {
            return Err((e, space));
        }
        if space.is_pinned() || space.state().save_pinned.load(Ordering::Acquire) {
            if let Err(e) = self.ops.exit_mm(self.frames, space.pgd()) {
                return Err((e, space));
            }
            space.state().pinned.store(false, Ordering::Release);
            space.state().save_pinned.store(false, Ordering::Release);
        }
        let root = space.pgd();
        if let Err(e) = self.free_user_half(root) {
            return Err((e, space));
        }
        // Off the live list before the pgd goes: kernel-half sync must never
        // write into a freed frame.
        self.live().retain(|s| !Arc::ptr_eq(s, space.state()));
        let result = self.ops.pgd_free(self.frames, root).and_then(|()| self.frames.free_frame(root));
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.live().push(space.state().clone());
                Err((e, space))
            }
        }
    }

    /// Makes every other CPU that has `space` loaded switch to `init_mm`.
    fn drop_root_elsewhere(&self, space: &AddressSpace) -> Result<(), PvError> {
        let cpus = self.cpus();
        let others = space.cpumask().and(cpus.online()).without(cpus.this_cpu());
        if others.is_empty() {
            return Ok(());
        }
        let (pgd, init) = (space.pgd(), self.init_pgd);
        cpus.call_on(others, &|| {
            if self.ops.read_cr3() == pgd {
                self.ops.write_cr3(self.frames, init)
            } else {
                Ok(())
            }
        })
    }

    /// Tears the user half down, then frees what it held (Linux's
    /// `mmu_gather` in `exit_mmap`): every frame after the whole teardown
    /// was issued. No flush is needed: no CPU has the space loaded any more
    /// (`exit` made them switch away, and a cr3 write flushes every
    /// non-global translation and paging-structure cache; user leaves are
    /// never global). What was unlinked before an error is freed too.
    fn free_user_half(&self, root: Pfn) -> Result<(), PvError> {
        let mut gather = Vec::new();
        let r = self.issued_now(|| self.free_below(root, Level::L4, root, 0..USER_PGD_SLOTS, &mut gather));
        for (frame, leaf) in gather {
            let freed = if leaf { self.frames.put_frame(frame).map(|_| ()) } else { self.frames.free_frame(frame) };
            if let Err(e) = freed {
                log::error!("exit: {frame:?} not freed ({e})");
            }
        }
        r
    }

    /// Frees everything slots `slots` of the `level` table `table` lead to,
    /// deepest first: a table is emptied, then unlinked, released and freed.
    /// Unlinked before freed, so the space never points at a frame given
    /// away; emptied before unlinked, so if anything below fails the rest is
    /// still linked and a second `exit` finds it. Only a table whose release
    /// is refused is lost (unlinked, kept: never freed while still a table).
    fn free_below(
        &self,
        root: Pfn,
        level: Level,
        table: Pfn,
        slots: Range<usize>,
        gather: &mut Vec<(Pfn, bool)>,
    ) -> Result<(), PvError> {
        for i in slots {
            let e = self.ops.read_entry(level, table, i)?;
            if !e.is_present() {
                continue;
            }
            let lower = level.lower();
            if let Some(lower) = lower {
                self.free_below(root, lower, e.pfn(), 0..ENTRIES_PER_TABLE, gather)?;
            }
            self.ops.set_entry(self.frames, level, table, i, Pte::EMPTY)?;
            if let Some(lower) = lower {
                self.ops.release_pt(self.frames, root, lower, e.pfn())?;
            }
            // A leaf drops its reference (a shared frame lives on).
            gather.push((e.pfn(), lower.is_none()));
        }
        Ok(())
    }
}
