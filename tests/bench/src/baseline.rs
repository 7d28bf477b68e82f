//! Issue 15 item 6: the framework against hand-written page-table code, side
//! by side in one Callgrind run.
//!
//! [`Hand`] is what a kernel without pvops would write for the same five
//! operations — map one page (allocating missing tables), change its
//! permission (`Mm::protect`), unmap it, fork an address space (copying
//! every page, as `Mm::fork` does) and switch (a cr3 write) — as straight-line code over the same memory: the host buffer that
//! `pvops_native::DirectMap` maps (the bare-metal path), read and written
//! through its own direct-map pointer, its own 4-level walk, its own frame
//! allocator, and the TLB through the same [`NativeCpu`] seam. It is as
//! SMP-careful as the framework where that costs instructions in a real
//! kernel: a per-space lock (Linux's `page_table_lock`) around map, unmap and
//! fork, a locked frame allocator, the space's cpumask tested on unmap and
//! set on switch (Linux's `mm_cpumask`); it runs on one CPU only (an unmap
//! of a space another CPU holds is refused, not shot down).
//!
//! **Frame allocator**: a LIFO free list threaded through a per-frame `next`
//! array (Linux's per-CPU page lists are LIFO lists threaded through
//! `struct page`, mm/page_alloc.c `rmqueue_pcplist`), under a spin lock:
//! pop and push are O(1), no bitmap scan. Frames are zeroed with `rep stosq`
//! (Linux's `clear_page_rep`, arch/x86/lib/clear_page_64.S) and copied with
//! `rep movsq` (`copy_page`, arch/x86/lib/copy_page_64.S); Callgrind counts
//! each of their 512 iterations as one instruction. A frame fork copies into
//! is not zeroed first (Linux allocates it without `__GFP_ZERO`).
//!
//! The framework is `kernel_glue::Mm` on the native backend over the same
//! memory, called two ways: `Mm<dyn PvMmuOps>` (the registry's trait object,
//! as the scaling bench's native-directmap) and `Mm<Builtin>` (static
//! dispatch with the native backend typed over its `DirectMap`, as the
//! example kernel's `KernelOps` is over its counted direct map). All three share one platform, one
//! `init_mm` (its kernel half) and one CPU; each has its own frames.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::fmt::Write as _;

use kernel_glue::{FrameAllocator, Mm, PageFlags};
use pvops::{BootEnv, EntryKind, Pfn, PhysMem, PvMmuOps, VirtAddr, USER_LIMIT};
use pvops_native::{DirectMap, NativeBackend, NativeCpu, NativePlatform};

use crate::cg;

pvops::static_dispatch! {
    /// The example kernel's `KernelOps` as this bench needs it: the native
    /// backend by value and typed over its memory (`DirectMap`, word
    /// accesses inlined), any other registered backend through its vtable.
    pub enum Builtin {
        /// A registered backend that is not built in.
        dyn Other,
        /// Bare metal, over the platform's own `DirectMap`.
        Native(NativeBackend<DirectMap>) = "native" => native_on_platform_mem,
    }
}

std::thread_local! {
    /// The `DirectMap` of the platform being booted on this thread: where
    /// [`Builtin`]'s constructor (a plain function of the boot environment)
    /// finds the memory by its type, as a kernel would in a static.
    static PLATFORM_MEM: core::cell::Cell<Option<&'static DirectMap>> = const { core::cell::Cell::new(None) };
}

/// [`NativeBackend::from_env_with`] on the platform memory [`boot`] set.
fn native_on_platform_mem(env: &BootEnv<'_>) -> Result<NativeBackend<DirectMap>, pvops::PvError> {
    let mem = PLATFORM_MEM.get().ok_or(pvops::PvError::WrongState { what: "baseline: no platform memory set" })?;
    NativeBackend::from_env_with(env, mem)
}

/// Entry bits the hand-written code uses (x86-64 SDM vol. 3, 4.5).
mod bits {
    pub const P: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const U: u64 = 1 << 2;
    pub const NX: u64 = 1 << 63;
    /// Accessed and dirty: the hardware's, kept across a protection change.
    pub const AD: u64 = (1 << 5) | (1 << 6);
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
    /// Intermediate tables: present, writable, user (the leaf decides).
    pub const TABLE: u64 = P | W | U;
    /// What a leaf's permission is made of (fork copies these).
    pub const PERM: u64 = P | W | U | NX;
}

/// The root the platform boots on (`init_mm`).
pub const BOOT_PGD: Pfn = Pfn(1);
/// Where the kernel page of `init_mm` is mapped (a kernel-half slot every space copies).
pub const KERNEL_VA: u64 = pvops_integration::platform::KERNEL_VA;

/// A `NativeCpu` that remembers cr3 and counts TLB flushes (plain loads and
/// stores: the bare-metal `mov cr3`/`invlpg` are one instruction each).
#[derive(Debug, Default)]
pub struct CountingCpu {
    cr3: AtomicU64,
    invlpgs: AtomicU64,
    full_flushes: AtomicU64,
}

impl CountingCpu {
    /// `invlpg`s so far.
    pub fn invlpgs(&self) -> u64 {
        self.invlpgs.load(Ordering::Relaxed)
    }
    /// Full flushes so far.
    pub fn full_flushes(&self) -> u64 {
        self.full_flushes.load(Ordering::Relaxed)
    }
}

impl NativeCpu for CountingCpu {
    fn read_cr3(&self) -> u64 {
        self.cr3.load(Ordering::Relaxed)
    }
    fn write_cr3(&self, value: u64) {
        self.cr3.store(value, Ordering::Relaxed);
    }
    fn invlpg(&self, _va: VirtAddr) {
        self.invlpgs.store(self.invlpgs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    fn flush_all(&self) {
        self.full_flushes.store(self.full_flushes.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// The shared platform: a leaked host buffer of `nr` frames, `DirectMap` over it, one CPU.
pub struct Platform {
    /// Host address of frame 0 (the direct map's base).
    pub base: usize,
    /// Frames in the buffer.
    pub nr: u64,
    /// The memory as the framework sees it.
    pub mem: &'static DirectMap,
    /// The CPU.
    pub cpu: &'static CountingCpu,
    /// What the native backend is built from.
    pub native: &'static NativePlatform,
}

impl Platform {
    /// A platform of `nr` frames, cr3 = [`BOOT_PGD`].
    pub fn new(nr: u64) -> Self {
        let buf: &'static mut [u64] = Box::leak(vec![0u64; (nr * 512) as usize].into_boxed_slice());
        let base = buf.as_mut_ptr() as usize;
        // SAFETY: 1. the leaked buffer holds `nr` frames of 512 words from
        // `base` and lives for the rest of the process.
        let mem: &'static DirectMap = Box::leak(Box::new(unsafe { DirectMap::new(base as u64, nr) }));
        let cpu: &'static CountingCpu = Box::leak(Box::new(CountingCpu::default()));
        cpu.write_cr3(BOOT_PGD.addr());
        let native = Box::leak(Box::new(NativePlatform { mem, cpu, cpus: &pvops::SingleCpu }));
        Platform { base, nr, mem, cpu, native }
    }

    /// Reads word `i` of frame `pfn` straight from the buffer (the oracle's
    /// view: neither implementation's code).
    pub fn word(&self, pfn: u64, i: usize) -> u64 {
        assert!(pfn < self.nr && i < 512, "frame {pfn} word {i} outside the platform");
        // SAFETY: 2. in the buffer (checked above), which lives forever.
        unsafe { ((self.base + (pfn as usize) * 4096 + i * 8) as *const u64).read_volatile() }
    }

    /// Writes word `i` of frame `pfn` straight into the buffer (test data).
    pub fn set_word(&self, pfn: u64, i: usize, v: u64) {
        assert!(pfn < self.nr && i < 512, "frame {pfn} word {i} outside the platform");
        // SAFETY: 3. in the buffer (checked above); only frames mapped as user
        // pages are filled, never a table.
        unsafe { ((self.base + (pfn as usize) * 4096 + i * 8) as *mut u64).write_volatile(v) }
    }

    /// The frame `va` maps below `pgd`, walking the raw tables.
    pub fn lookup(&self, pgd: u64, va: u64) -> Option<(u64, u64)> {
        let mut t = pgd;
        for shift in [39, 30, 21, 12] {
            let e = self.word(t, ((va >> shift) & 511) as usize);
            if e & bits::P == 0 {
                return None;
            }
            if shift == 12 {
                return Some(((e & bits::ADDR) >> 12, e & !bits::ADDR));
            }
            t = (e & bits::ADDR) >> 12;
        }
        None
    }

    /// Fills the page mapped at `va` below `pgd` with words derived from `seed`.
    pub fn fill(&self, pgd: u64, va: u64, seed: u64) -> Result<(), String> {
        let (f, _) = self.lookup(pgd, va).ok_or_else(|| format!("{va:#x} not mapped"))?;
        for i in 0..512 {
            self.set_word(f, i, seed ^ (va + i as u64 * 0x9e37_79b9) | 1);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The hand-written code.

/// Why a hand-written operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandError {
    /// No free frame.
    OutOfMemory,
    /// Not a page-aligned user address.
    BadAddress,
    /// Something is mapped there already.
    AlreadyMapped,
    /// Nothing is mapped there.
    NotMapped,
    /// The space is loaded (exit) or held by another CPU (this code runs on one CPU).
    InUse,
}

/// Takes a spin lock; the guard releases it.
struct Guard<'l>(&'l AtomicBool);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn spin(lock: &AtomicBool) -> Guard<'_> {
    while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    Guard(lock)
}

/// `NIL` ends the free list.
const NIL: u64 = u64::MAX;

struct FreeInner {
    head: u64,
    next: Box<[u64]>,
    count: u64,
}

/// A LIFO free list of frames under a spin lock.
struct FreeList {
    lock: AtomicBool,
    inner: UnsafeCell<FreeInner>,
}

// SAFETY: 4. `inner` is only touched with `lock` held (`pop`, `push`, `count`).
unsafe impl Sync for FreeList {}

impl FreeList {
    fn pop(&self) -> Option<u64> {
        let _g = spin(&self.lock);
        // SAFETY: 5. the lock is held: no other reference to `inner` exists.
        let inner = unsafe { &mut *self.inner.get() };
        let f = inner.head;
        if f == NIL {
            return None;
        }
        inner.head = inner.next[f as usize];
        inner.count -= 1;
        Some(f)
    }

    fn push(&self, f: u64) {
        let _g = spin(&self.lock);
        // SAFETY: 6. the lock is held: no other reference to `inner` exists.
        let inner = unsafe { &mut *self.inner.get() };
        inner.next[f as usize] = inner.head;
        inner.head = f;
        inner.count += 1;
    }

    fn count(&self) -> u64 {
        let _g = spin(&self.lock);
        // SAFETY: 7. the lock is held.
        unsafe { (*self.inner.get()).count }
    }
}

/// One hand-written address space.
#[derive(Debug)]
pub struct HandSpace {
    pgd: u64,
    lock: AtomicBool,
    cpus: AtomicU64,
}

impl HandSpace {
    /// Its root.
    pub fn pgd(&self) -> u64 {
        self.pgd
    }
}

/// Hand-written page-table code for one CPU (CPU 0) over a direct map.
pub struct Hand {
    base: usize,
    cpu: &'static dyn NativeCpu,
    init_pgd: u64,
    free: FreeList,
    /// The space this CPU runs (Linux's `cpu_tlbstate.loaded_mm`).
    loaded: AtomicU64,
}

/// This CPU's bit in a cpumask.
const ME: u64 = 1;

impl Hand {
    /// Hand-written code over `plat`, owning frames `first..first + count`;
    /// `init_pgd`'s kernel half is what new spaces share.
    pub fn new(plat: &Platform, first: u64, count: u64, init_pgd: u64) -> Self {
        let mut next = vec![NIL; plat.nr as usize].into_boxed_slice();
        let end = (first + count).min(plat.nr);
        // Lowest frame first out, as the framework's allocator hands them.
        for f in first..end {
            next[f as usize] = if f + 1 < end { f + 1 } else { NIL };
        }
        let head = if first < end { first } else { NIL };
        Hand {
            base: plat.base,
            cpu: plat.cpu,
            init_pgd,
            free: FreeList {
                lock: AtomicBool::new(false),
                inner: UnsafeCell::new(FreeInner { head, next, count: end - first }),
            },
            loaded: AtomicU64::new(init_pgd),
        }
    }

    #[inline(always)]
    fn slot(&self, pfn: u64, i: u64) -> *mut u64 {
        (self.base + ((pfn << 12) | (i << 3)) as usize) as *mut u64
    }

    #[inline(always)]
    fn rd(&self, pfn: u64, i: u64) -> u64 {
        // SAFETY: 8. every pfn this code follows is one its allocator handed
        // out (inside the platform, by `new`'s range) or `init_mm`'s, and
        // i < 512: in the direct map. Volatile: the CPU sets A/D bits.
        unsafe { self.slot(pfn, i).read_volatile() }
    }

    #[inline(always)]
    fn wr(&self, pfn: u64, i: u64, v: u64) {
        // SAFETY: 9. as for `rd`; only frames this code owns are written.
        unsafe { self.slot(pfn, i).write_volatile(v) }
    }

    /// Linux's `clear_page_rep`.
    #[inline(always)]
    fn clear_page(&self, pfn: u64) {
        // SAFETY: 10. the frame is one this code just took off its free list:
        // 4096 bytes of the direct map nobody else uses; `rep stosq` writes
        // exactly rcx = 512 quadwords from rdi (direction flag clear per ABI).
        unsafe {
            core::arch::asm!("rep stosq", inout("rcx") 512u64 => _, inout("rdi") self.slot(pfn, 0) => _,
                in("rax") 0u64, options(nostack, preserves_flags));
        }
    }

    /// Linux's `copy_page` (the `rep movsq` variant).
    #[inline(always)]
    fn copy_page(&self, dst: u64, src: u64) {
        // SAFETY: 11. `dst` is a frame just taken off the free list, `src` a
        // mapped user page: distinct 4096-byte frames of the direct map.
        unsafe {
            core::arch::asm!("rep movsq", inout("rcx") 512u64 => _, inout("rdi") self.slot(dst, 0) => _,
                inout("rsi") self.slot(src, 0) => _, options(nostack, preserves_flags));
        }
    }

    #[inline(always)]
    fn alloc(&self, zero: bool) -> Result<u64, HandError> {
        let f = self.free.pop().ok_or(HandError::OutOfMemory)?;
        if zero {
            self.clear_page(f);
        }
        Ok(f)
    }

    /// Frames on the free list.
    pub fn free_frames(&self) -> u64 {
        self.free.count()
    }

    fn check(va: u64) -> Result<(), HandError> {
        if va >= USER_LIMIT || va & 0xfff != 0 {
            return Err(HandError::BadAddress);
        }
        Ok(())
    }

    /// A new space sharing `init_mm`'s kernel half (Linux's `pgd_alloc`).
    pub fn create(&self) -> Result<HandSpace, HandError> {
        let pgd = self.alloc(true)?;
        for i in 256..512 {
            let e = self.rd(self.init_pgd, i);
            if e & bits::P != 0 {
                self.wr(pgd, i, e);
            }
        }
        Ok(HandSpace { pgd, lock: AtomicBool::new(false), cpus: AtomicU64::new(0) })
    }

    /// The table below slot `i` of `t`, allocated and linked if missing.
    #[inline(always)]
    fn table(&self, t: u64, i: u64) -> Result<u64, HandError> {
        let e = self.rd(t, i);
        if e & bits::P != 0 {
            return Ok((e & bits::ADDR) >> 12);
        }
        let n = self.alloc(true)?;
        self.wr(t, i, (n << 12) | bits::TABLE);
        Ok(n)
    }

    /// Maps a new zeroed page at `va`. Tables built before a failure stay
    /// (empty, freed at exit), as in Linux.
    pub fn map(&self, s: &HandSpace, va: u64, writable: bool, executable: bool) -> Result<u64, HandError> {
        Self::check(va)?;
        let _g = spin(&s.lock);
        let l3 = self.table(s.pgd, (va >> 39) & 511)?;
        let l2 = self.table(l3, (va >> 30) & 511)?;
        let l1 = self.table(l2, (va >> 21) & 511)?;
        let i = (va >> 12) & 511;
        if self.rd(l1, i) & bits::P != 0 {
            return Err(HandError::AlreadyMapped);
        }
        let f = self.alloc(true)?;
        let mut e = (f << 12) | bits::P | bits::U;
        if writable {
            e |= bits::W;
        }
        if !executable {
            e |= bits::NX;
        }
        self.wr(l1, i, e);
        Ok(f)
    }

    /// The L1 table covering `va`, if built.
    #[inline(always)]
    fn find_l1(&self, pgd: u64, va: u64) -> Option<u64> {
        let mut t = pgd;
        for shift in [39, 30, 21] {
            let e = self.rd(t, (va >> shift) & 511);
            if e & bits::P == 0 {
                return None;
            }
            t = (e & bits::ADDR) >> 12;
        }
        Some(t)
    }

    /// Unmaps the page at `va`, flushes it from this CPU's TLB if the space
    /// is loaded here, frees the frame.
    pub fn unmap(&self, s: &HandSpace, va: u64) -> Result<(), HandError> {
        Self::check(va)?;
        let _g = spin(&s.lock);
        if s.cpus.load(Ordering::Acquire) & !ME != 0 {
            return Err(HandError::InUse); // another CPU: a shootdown this code does not do
        }
        let l1 = self.find_l1(s.pgd, va).ok_or(HandError::NotMapped)?;
        let i = (va >> 12) & 511;
        let e = self.rd(l1, i);
        if e & bits::P == 0 {
            return Err(HandError::NotMapped);
        }
        self.wr(l1, i, 0);
        if self.cpu.read_cr3() == s.pgd << 12 {
            self.cpu.invlpg(VirtAddr::new_const(va));
        }
        self.free.push((e & bits::ADDR) >> 12);
        Ok(())
    }

    /// Gives the page at `va` the permission (`writable`, `executable`)
    /// (Linux's `change_pte_range`): the entry is taken with an atomic
    /// exchange to 0 (`ptep_modify_prot_start`), written back with the new
    /// bits and the accessed/dirty bits the exchange returned
    /// (`ptep_modify_prot_commit`), and flushed from this CPU's TLB if the
    /// space is loaded here; an entry that already has them is left alone.
    pub fn protect(&self, s: &HandSpace, va: u64, writable: bool, executable: bool) -> Result<(), HandError> {
        Self::check(va)?;
        let _g = spin(&s.lock);
        if s.cpus.load(Ordering::Acquire) & !ME != 0 {
            return Err(HandError::InUse); // another CPU: a shootdown this code does not do
        }
        let l1 = self.find_l1(s.pgd, va).ok_or(HandError::NotMapped)?;
        let i = (va >> 12) & 511;
        let e = self.rd(l1, i);
        if e & bits::P == 0 {
            return Err(HandError::NotMapped);
        }
        let mut want = e & !(bits::W | bits::NX);
        if writable {
            want |= bits::W;
        }
        if !executable {
            want |= bits::NX;
        }
        if want == e {
            return Ok(());
        }
        // SAFETY: 12. as for `rd`: a slot of an L1 table of this space, in the
        // direct map, 8-byte aligned; the hardware updates entries only with
        // locked operations, so an atomic view of the word is sound.
        let slot = unsafe { AtomicU64::from_ptr(self.slot(l1, i)) };
        let old = slot.swap(0, Ordering::AcqRel);
        slot.store((want & !bits::AD) | (old & bits::AD), Ordering::Release);
        if self.cpu.read_cr3() == s.pgd << 12 {
            self.cpu.invlpg(VirtAddr::new_const(va));
        }
        Ok(())
    }

    /// A copy of `parent`'s user half: a parallel walk (Linux's
    /// `copy_p4d_range` … `copy_pte_range`), each child table allocated
    /// once (only above present pages, as `Mm::fork` does), each page
    /// copied into a fresh frame.
    pub fn fork(&self, parent: &HandSpace) -> Result<HandSpace, HandError> {
        let _g = spin(&parent.lock);
        let child = self.create()?;
        match self.copy_user_half(parent.pgd, child.pgd) {
            Ok(()) => Ok(child),
            Err(e) => {
                self.exit(child).map_err(|(e, _)| e)?;
                Err(e)
            }
        }
    }

    /// Child tables are built on the first present page below them (0 =
    /// not yet: frame 0 is never a table), so an empty parent table is not
    /// copied.
    fn copy_user_half(&self, p4: u64, c4: u64) -> Result<(), HandError> {
        for i4 in 0..256 {
            let e4 = self.rd(p4, i4);
            if e4 & bits::P == 0 {
                continue;
            }
            let (p3, mut c3) = ((e4 & bits::ADDR) >> 12, 0);
            for i3 in 0..512 {
                let e3 = self.rd(p3, i3);
                if e3 & bits::P == 0 {
                    continue;
                }
                let (p2, mut c2) = ((e3 & bits::ADDR) >> 12, 0);
                for i2 in 0..512 {
                    let e2 = self.rd(p2, i2);
                    if e2 & bits::P == 0 {
                        continue;
                    }
                    let (p1, mut c1) = ((e2 & bits::ADDR) >> 12, 0);
                    for i1 in 0..512 {
                        let e1 = self.rd(p1, i1);
                        if e1 & bits::P == 0 {
                            continue;
                        }
                        if c1 == 0 {
                            if c2 == 0 {
                                if c3 == 0 {
                                    c3 = self.table(c4, i4)?;
                                }
                                c2 = self.table(c3, i3)?;
                            }
                            c1 = self.table(c2, i2)?;
                        }
                        let f = self.alloc(false)?;
                        self.copy_page(f, (e1 & bits::ADDR) >> 12);
                        self.wr(c1, i1, (f << 12) | (e1 & bits::PERM));
                    }
                }
            }
        }
        Ok(())
    }

    /// Switches this CPU to `s` (Linux's `switch_mm_irqs_off`: join the
    /// cpumask if not in it, load cr3, record the loaded space).
    pub fn switch(&self, s: &HandSpace) {
        if s.cpus.load(Ordering::Relaxed) & ME == 0 {
            s.cpus.fetch_or(ME, Ordering::AcqRel);
        }
        self.cpu.write_cr3(s.pgd << 12);
        self.loaded.store(s.pgd, Ordering::Release);
    }

    /// Switches this CPU to `init_mm`.
    pub fn switch_init(&self) {
        self.cpu.write_cr3(self.init_pgd << 12);
        self.loaded.store(self.init_pgd, Ordering::Release);
    }

    /// Frees every page and table of `s`, then its root; refused while loaded.
    pub fn exit(&self, s: HandSpace) -> Result<(), (HandError, HandSpace)> {
        if self.cpu.read_cr3() == s.pgd << 12 || s.cpus.load(Ordering::Acquire) & !ME != 0 {
            return Err((HandError::InUse, s));
        }
        for i4 in 0..256 {
            let e4 = self.rd(s.pgd, i4);
            if e4 & bits::P == 0 {
                continue;
            }
            let l3 = (e4 & bits::ADDR) >> 12;
            for i3 in 0..512 {
                let e3 = self.rd(l3, i3);
                if e3 & bits::P == 0 {
                    continue;
                }
                let l2 = (e3 & bits::ADDR) >> 12;
                for i2 in 0..512 {
                    let e2 = self.rd(l2, i2);
                    if e2 & bits::P == 0 {
                        continue;
                    }
                    let l1 = (e2 & bits::ADDR) >> 12;
                    for i1 in 0..512 {
                        let e1 = self.rd(l1, i1);
                        if e1 & bits::P != 0 {
                            self.wr(l1, i1, 0);
                            self.free.push((e1 & bits::ADDR) >> 12);
                        }
                    }
                    self.wr(l2, i2, 0);
                    self.free.push(l1);
                }
                self.wr(l3, i3, 0);
                self.free.push(l2);
            }
            self.wr(s.pgd, i4, 0);
            self.free.push(l3);
        }
        self.free.push(s.pgd);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// One interface over the three implementations, so the workload is the same code.

/// The operations measured, on one implementation.
pub trait Impl {
    /// Its address space.
    type Space;
    /// New empty space.
    fn create(&self) -> Result<Self::Space, String>;
    /// Map a zeroed page.
    fn map(&self, s: &Self::Space, va: u64, perm: PageFlags) -> Result<(), String>;
    /// Unmap a page.
    fn unmap(&self, s: &Self::Space, va: u64) -> Result<(), String>;
    /// Change a page's permission.
    fn protect(&self, s: &Self::Space, va: u64, perm: PageFlags) -> Result<(), String>;
    /// Fork (copy every page).
    fn fork(&self, s: &Self::Space) -> Result<Self::Space, String>;
    /// Load it on this CPU.
    fn switch(&self, s: &Self::Space) -> Result<(), String>;
    /// Load `init_mm`.
    fn switch_init(&self) -> Result<(), String>;
    /// Tear it down.
    fn exit(&self, s: Self::Space) -> Result<(), String>;
    /// Its root.
    fn pgd(&self, s: &Self::Space) -> u64;
    /// Free frames.
    fn free_frames(&self) -> u64;
}

impl<O: PvMmuOps + ?Sized> Impl for Mm<'static, O> {
    type Space = kernel_glue::AddressSpace;
    fn create(&self) -> Result<Self::Space, String> {
        Mm::create(self).map_err(|e| e.to_string())
    }
    #[inline]
    fn map(&self, s: &Self::Space, va: u64, perm: PageFlags) -> Result<(), String> {
        match Mm::map(self, s, va, perm) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
    #[inline]
    fn unmap(&self, s: &Self::Space, va: u64) -> Result<(), String> {
        Mm::unmap(self, s, va).map_err(|e| e.to_string())
    }
    #[inline]
    fn protect(&self, s: &Self::Space, va: u64, perm: PageFlags) -> Result<(), String> {
        Mm::protect(self, s, va, perm).map_err(|e| e.to_string())
    }
    fn fork(&self, s: &Self::Space) -> Result<Self::Space, String> {
        Mm::fork(self, s).map_err(|e| e.to_string())
    }
    #[inline]
    fn switch(&self, s: &Self::Space) -> Result<(), String> {
        Mm::activate(self, s).map_err(|e| e.to_string())
    }
    fn switch_init(&self) -> Result<(), String> {
        Mm::activate_init(self).map_err(|e| e.to_string())
    }
    fn exit(&self, s: Self::Space) -> Result<(), String> {
        Mm::exit(self, s).map_err(|(e, _)| e.to_string())
    }
    fn pgd(&self, s: &Self::Space) -> u64 {
        s.pgd().0
    }
    fn free_frames(&self) -> u64 {
        self.frames().free_count()
    }
}

impl Impl for Hand {
    type Space = HandSpace;
    fn create(&self) -> Result<HandSpace, String> {
        Hand::create(self).map_err(|e| format!("{e:?}"))
    }
    #[inline]
    fn map(&self, s: &HandSpace, va: u64, perm: PageFlags) -> Result<(), String> {
        match Hand::map(self, s, va, perm.writable, perm.executable) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{e:?}")),
        }
    }
    #[inline]
    fn unmap(&self, s: &HandSpace, va: u64) -> Result<(), String> {
        Hand::unmap(self, s, va).map_err(|e| format!("{e:?}"))
    }
    #[inline]
    fn protect(&self, s: &HandSpace, va: u64, perm: PageFlags) -> Result<(), String> {
        Hand::protect(self, s, va, perm.writable, perm.executable).map_err(|e| format!("{e:?}"))
    }
    fn fork(&self, s: &HandSpace) -> Result<HandSpace, String> {
        Hand::fork(self, s).map_err(|e| format!("{e:?}"))
    }
    #[inline]
    fn switch(&self, s: &HandSpace) -> Result<(), String> {
        Hand::switch(self, s);
        Ok(())
    }
    fn switch_init(&self) -> Result<(), String> {
        Hand::switch_init(self);
        Ok(())
    }
    fn exit(&self, s: HandSpace) -> Result<(), String> {
        Hand::exit(self, s).map_err(|(e, _)| format!("{e:?}"))
    }
    fn pgd(&self, s: &HandSpace) -> u64 {
        s.pgd
    }
    fn free_frames(&self) -> u64 {
        Hand::free_frames(self)
    }
}

/// The three implementations on one platform.
pub struct Trio {
    /// The platform.
    pub plat: Platform,
    /// `Mm` through `&dyn PvMmuOps`.
    pub dyn_mm: &'static Mm<'static>,
    /// `Mm` with static dispatch.
    pub static_mm: &'static Mm<'static, Builtin>,
    /// Hand-written.
    pub hand: &'static Hand,
}

/// Frames each implementation owns for spaces of up to `pages` pages (two
/// spaces: the parent and its fork), tables included.
pub fn frames_each(pages: u64) -> u64 {
    2 * pages + 2 * (pages / 512 + 8) + 16
}

/// Boots the three on one platform: frame 0 reserved, frame 1 `init_mm`'s
/// root, then `each` frames for each implementation; the kernel page of
/// `init_mm` (and its tables) comes from the first.
pub fn boot(each: u64) -> Result<Trio, String> {
    let nr = 2 + 3 * each;
    let plat = Platform::new(nr);
    let env = BootEnv { entry: EntryKind::Pvh, handover: "hvm_start_info 0x336ec578", platform: plat.native };
    let desc = pvops::backends().into_iter().find(|d| d.name == "native").ok_or("native backend not linked")?;
    let dyn_ops: &'static dyn PvMmuOps = (desc.instantiate)(&env).map_err(|e| e.to_string())?;
    PLATFORM_MEM.set(Some(plat.mem));
    let builtin: &'static Builtin = Box::leak(Box::new(Builtin::from_desc(desc, &env).map_err(|e| e.to_string())?));
    if !matches!(builtin, Builtin::Native(_)) {
        return Err("the registry did not give the native backend".into());
    }
    let mem: &'static dyn PhysMem = plat.mem;
    let allocator = |first: u64| -> &'static FrameAllocator<'static> {
        let f: &'static FrameAllocator<'static> = Box::leak(Box::new(FrameAllocator::new(mem, nr)));
        f.add_free_range(Pfn(first), each);
        f
    };
    let (fa, fb) = (allocator(2), allocator(2 + each));
    let dyn_mm: &'static Mm<'static> =
        Box::leak(Box::new(Mm::adopt_boot(dyn_ops, fa, BOOT_PGD).map_err(|e| e.to_string())?));
    let static_mm: &'static Mm<'static, Builtin> =
        Box::leak(Box::new(Mm::adopt_boot(builtin, fb, BOOT_PGD).map_err(|e| e.to_string())?));
    let kpage = fa.alloc_zeroed_frame().map_err(|e| e.to_string())?;
    dyn_mm.map_kernel(KERNEL_VA, kpage, true).map_err(|e| e.to_string())?;
    dyn_mm.init_metadata().map_err(|e| e.to_string())?;
    static_mm.init_metadata().map_err(|e| e.to_string())?;
    let hand: &'static Hand = Box::leak(Box::new(Hand::new(&plat, 2 + 2 * each, each, BOOT_PGD.0)));
    Ok(Trio { plat, dyn_mm, static_mm, hand })
}

// ---------------------------------------------------------------------------
// The measured workload.

/// The implementations, in column order.
pub const IMPLS: [&str; 3] = ["dyn", "static", "hand"];
/// The operations, in row order.
pub const OPS: [&str; 7] = ["map_first", "map", "protect", "unmap", "fork", "switch", "exit"];
/// Pages of the measured space (besides its first page).
pub const PAGES: u64 = 1_000;
/// Switches measured.
pub const SWITCHES: u64 = 1_000;
/// Where the space's pages start (4 MiB: a fresh L3, L2 and L1 for the first).
pub const BASE: u64 = 0x40_0000;

#[inline(never)]
fn map_pages<I: Impl>(i: &I, s: &I::Space, first: u64, n: u64) -> Result<(), String> {
    for k in 0..n {
        i.map(s, first + k * 4096, PageFlags::DATA)?;
    }
    Ok(())
}

#[inline(never)]
fn unmap_pages<I: Impl>(i: &I, s: &I::Space, first: u64, n: u64) -> Result<(), String> {
    for k in 0..n {
        i.unmap(s, first + k * 4096)?;
    }
    Ok(())
}

#[inline(never)]
fn protect_pages<I: Impl>(i: &I, s: &I::Space, first: u64, n: u64, perm: PageFlags) -> Result<(), String> {
    for k in 0..n {
        i.protect(s, first + k * 4096, perm)?;
    }
    Ok(())
}

#[inline(never)]
fn switches<I: Impl>(i: &I, a: &I::Space, b: &I::Space, n: u64) -> Result<(), String> {
    for _ in 0..n / 2 {
        i.switch(a)?;
        i.switch(b)?;
    }
    Ok(())
}

/// Runs the workload on one implementation, each operation a Callgrind
/// region `baseline/<name>/<op>`; returns the divisor of each op.
fn workload<I: Impl>(name: &str, i: &I, plat: &Platform) -> Result<Vec<(&'static str, u64)>, String> {
    let label = |op: &str| format!("baseline/{name}/{op}");
    // Warm-up: every path once (first-use costs are not measured).
    let w = i.create()?;
    i.switch(&w)?;
    map_pages(i, &w, BASE, 2)?;
    plat.fill(i.pgd(&w), BASE, 7)?;
    let wc = i.fork(&w)?;
    switches(i, &w, &wc, 2)?;
    i.switch(&w)?;
    protect_pages(i, &w, BASE, 2, PageFlags::RODATA)?;
    unmap_pages(i, &w, BASE, 2)?;
    i.switch_init()?;
    i.exit(wc)?;
    i.exit(w)?;

    let n = PAGES;
    let a = i.create()?;
    i.switch(&a)?;
    cg::region(&label("map_first"), || map_pages(i, &a, BASE, 1))?;
    cg::region(&label("map"), || map_pages(i, &a, BASE + 4096, n))?;
    for k in 0..=n {
        plat.fill(i.pgd(&a), BASE + k * 4096, 0x5eed)?;
    }
    let b = cg::region(&label("fork"), || i.fork(&a))?;
    i.switch(&b)?;
    cg::region(&label("switch"), || switches(i, &a, &b, SWITCHES))?;
    if plat.cpu.read_cr3() != i.pgd(&b) << 12 {
        return Err(format!("{name}: the last switch did not load the fork"));
    }
    i.switch(&a)?;
    cg::region(&label("protect"), || protect_pages(i, &a, BASE, n + 1, PageFlags::RODATA))?;
    cg::region(&label("unmap"), || unmap_pages(i, &a, BASE, n + 1))?;
    i.switch_init()?;
    cg::region(&label("exit"), || i.exit(b))?;
    i.exit(a)?;
    Ok(vec![
        ("map_first", 1),
        ("map", n),
        ("protect", n + 1),
        ("unmap", n + 1),
        ("fork", n + 1),
        ("switch", SWITCHES),
        ("exit", n + 1),
    ])
}

/// The child side (`child baseline`): the workload on each implementation,
/// one `count <impl> <op> <divisor>` line per region.
pub fn child() -> Result<(), String> {
    let t = boot(frames_each(PAGES))?;
    let mut out = String::new();
    for name in IMPLS {
        let counts = match name {
            "dyn" => workload(name, t.dyn_mm, &t.plat)?,
            "static" => workload(name, t.static_mm, &t.plat)?,
            _ => workload(name, t.hand, &t.plat)?,
        };
        for (op, d) in counts {
            let _ = writeln!(out, "count {name} {op} {d}");
        }
    }
    print!("{out}");
    Ok(())
}

/// Instructions per unit of one (impl, op).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// [`IMPLS`].
    pub imp: String,
    /// [`OPS`].
    pub op: String,
    /// Instructions of the region.
    pub ir: u64,
    /// Units it covered (pages, switches).
    pub units: u64,
}

impl Cell {
    /// Instructions per unit.
    pub fn per(&self) -> f64 {
        self.ir as f64 / self.units as f64
    }
}

/// What one baseline child run measured.
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    /// Every cell.
    pub cells: Vec<Cell>,
    /// Per-function costs of each region (`baseline/<impl>/<op>`), when profiled.
    pub profiles: std::collections::BTreeMap<String, cg::Profile>,
}

impl Baseline {
    /// Instructions per unit of (impl, op).
    pub fn per(&self, imp: &str, op: &str) -> Option<f64> {
        self.cells.iter().find(|c| c.imp == imp && c.op == op).map(Cell::per)
    }
    /// framework ÷ hand-written.
    pub fn ratio(&self, imp: &str, op: &str) -> Option<f64> {
        Some(self.per(imp, op)? / self.per("hand", op)?)
    }
}

/// The parent side: parses one child run.
pub fn collect(run: &cg::ChildRun) -> Result<Baseline, String> {
    let mut b = Baseline::default();
    for line in run.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let ["count", imp, op, units] = f[..] {
            let units = units.parse().map_err(|e| format!("{line:?}: {e}"))?;
            let label = format!("baseline/{imp}/{op}");
            let ir = run.ir(&label).ok_or_else(|| format!("no region {label}"))?;
            b.cells.push(Cell { imp: imp.into(), op: op.into(), ir, units });
        }
    }
    if b.cells.len() != IMPLS.len() * OPS.len() {
        return Err(format!("baseline: {} regions reported", b.cells.len()));
    }
    b.profiles = run.profiles.clone();
    Ok(b)
}

/// Runs the child under Callgrind (`valgrind`), dumps under `work`.
pub fn measure(valgrind: &std::path::Path, work: &std::path::Path) -> Result<Baseline, String> {
    let run = cg::run_child_profiled(valgrind, work, &["baseline".into()])?;
    collect(&run)
}

/// The target of an operation (framework ÷ hand-written), if it has one.
pub fn target(op: &str) -> Option<f64> {
    match op {
        "map_first" | "map" | "protect" | "unmap" | "switch" => Some(1.25),
        "fork" => Some(1.1),
        _ => None,
    }
}

fn what(op: &str) -> String {
    match op {
        "map_first" => "map the first page of an empty space (3 new tables), per page".into(),
        "map" => format!("map, per page ({PAGES} contiguous pages after the first)"),
        "protect" => format!(
            "protect (`Mm::protect`: read-write to read-only), per page ({} pages, space loaded: one `invlpg` each)",
            PAGES + 1
        ),
        "unmap" => format!("unmap, per page ({} pages, space loaded: one `invlpg` each)", PAGES + 1),
        "fork" => format!("fork, per page ({} pages, every page copied)", PAGES + 1),
        "switch" => "switch (cr3 write), per switch".into(),
        _ => format!("exit, per page ({} pages; no target)", PAGES + 1),
    }
}

/// Marks the start of the generated section in `docs/PERFORMANCE.md`
/// (`--baseline` rewrites only what lies between the markers).
pub const BEGIN: &str = "<!-- baseline:begin -->";
/// Marks its end.
pub const END: &str = "<!-- baseline:end -->";

/// The targets missed: `(impl, op, ratio, target)`.
pub fn misses(b: &Baseline) -> Vec<(&'static str, &'static str, f64, f64)> {
    let mut v = Vec::new();
    for imp in ["dyn", "static"] {
        for op in OPS {
            if let (Some(r), Some(t)) = (b.ratio(imp, op), target(op)) {
                if r > t + 0.005 {
                    v.push((imp, op, r, t));
                }
            }
        }
    }
    v
}

fn ir(v: f64) -> String {
    let r = v.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The section "Framework vs hand-written", between [`BEGIN`] and [`END`].
pub fn markdown(b: &Baseline) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "{BEGIN}");
    let _ = writeln!(w, "## Framework vs hand-written\n");
    let _ = writeln!(
        w,
        "The same operations done by `kernel_glue::Mm` on the native backend and by hand-written code, \
         in one Callgrind run over the same memory (`pvops_native::DirectMap` over a host buffer: the \
         bare-metal path), one platform, one `init_mm` and one CPU (`tests/bench/src/baseline.rs`; \
         `cargo xtask bench --baseline` regenerates this section alone). *hand* is straight-line code \
         with its own 4-level walk, its own frame allocator — a LIFO free list threaded through a \
         per-frame array under a spin lock (Linux's per-CPU page lists), O(1) with no bitmap scan — \
         a permission change as an atomic exchange to 0 and a store keeping the accessed/dirty bits \
         (Linux's `ptep_modify_prot_start`/`commit`), frames zeroed with `rep stosq` and copied with `rep movsq` (Linux's `clear_page_rep` and \
         `copy_page`; Callgrind counts each of their 512 iterations), a frame for a copy not zeroed \
         first, the TLB through the same `NativeCpu` seam, a per-space lock around map/unmap/fork and \
         the space's cpumask set on switch (Linux's `page_table_lock`, `mm_cpumask`). *dyn* is \
         `Mm<dyn PvMmuOps>` (the registry's trait object, as §3's native-directmap); *static* is \
         `Mm<Builtin>` (static dispatch, the native backend typed over its memory, \
         `NativeBackend<DirectMap>`, as the example kernel's `KernelOps` is over its counted direct map). \
         Every operation is warmed up first; \
         the space being mapped and unmapped is loaded (cr3). A unit test checks that the three leave \
         the same page tables (kernel half, every table entry and its flags, every page's permissions \
         and contents), free the same number of frames and flush the same TLB entries \
         (`baseline::tests`). What the hand-written code leaves out costs the framework nothing on these \
         successful paths, or little: undoing the tables a failed map built (Linux keeps them too), \
         keeping a frame when a flush fails, remote shootdowns (it runs on one CPU and refuses an unmap of \
         a space another CPU holds), any other backend.\n"
    );
    let _ = writeln!(
        w,
        "| operation | hand (Ir) | dyn (Ir) | static (Ir) | **dyn ÷ hand** | **static ÷ hand** | target | verdict (dyn / static) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---|");
    for op in OPS {
        let cell = |imp: &str| b.per(imp, op).map_or("—".into(), ir);
        let ratio = |imp: &str| b.ratio(imp, op).map_or("—".into(), |r| format!("**{r:.2}×**"));
        let verdict = |imp: &str| match (b.ratio(imp, op), target(op)) {
            (Some(r), Some(t)) if r <= t + 0.005 => "met",
            (Some(_), Some(_)) => "**missed**",
            _ => "—",
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            what(op),
            cell("hand"),
            cell("dyn"),
            cell("static"),
            ratio("dyn"),
            ratio("static"),
            target(op).map_or("—".into(), |t| format!("≤ {t}×")),
            verdict("dyn"),
            verdict("static")
        );
    }
    let m = misses(b);
    let _ = writeln!(w);
    if m.is_empty() {
        let _ = writeln!(w, "Every target met.\n");
    } else {
        let list: Vec<String> = m.iter().map(|(i, o, r, t)| format!("{o} ({i}) {r:.2}× > {t}×")).collect();
        let _ = writeln!(w, "Missed: {}.\n", list.join("; "));
        what_is_left(w, b);
        where_it_goes(w, b, &m);
    }
    let _ = writeln!(w, "{END}\n");
    s
}

/// Self instructions per call of the first function whose name contains
/// `frag` in the `imp` profile of `op`.
fn per_call_in(b: &Baseline, imp: &str, op: &str, frag: &str) -> Option<f64> {
    let p = b.profiles.get(&format!("baseline/{imp}/{op}"))?;
    let (_, c) = p.funcs.iter().find(|(n, c)| n.contains(frag) && c.calls > 0)?;
    Some(c.self_ir as f64 / c.calls as f64)
}

/// Inclusive instructions per unit of `op` of the first function whose
/// name contains `frag` in the `static` profile, as text (— if absent).
fn incl_per_unit(b: &Baseline, op: &str, frag: &str) -> String {
    let cost = b
        .profiles
        .get(&format!("baseline/static/{op}"))
        .and_then(|p| p.funcs.iter().find(|(n, c)| n.contains(frag) && c.calls > 0).map(|(_, c)| c.inclusive));
    let units = b.cells.iter().find(|c| c.imp == "static" && c.op == op).map(|c| c.units);
    match (cost, units) {
        (Some(ir), Some(u)) if u > 0 => format!("{:.0}", ir as f64 / u as f64),
        _ => "—".into(),
    }
}

/// Why the missed ratios are missed: what the framework does per operation
/// on this path that the hand-written code does not, with the profile's
/// figures where one function carries them.
fn what_is_left(w: &mut String, b: &Baseline) {
    let word = per_call_in(b, "dyn", "map", "DirectMap as pvops::services::PhysMem>::read_entry")
        .map_or("—".into(), |v| format!("{v:.0}"));
    let switch = match (b.per("static", "switch"), b.per("hand", "switch")) {
        (Some(f), Some(h)) => format!("{} Ir", ir(f - h)),
        _ => "—".into(),
    };
    let put = incl_per_unit(b, "unmap", "FrameAllocator::put_frame");
    let lazy = incl_per_unit(b, "unmap", "Mm<O>::issued_now");
    let holders = incl_per_unit(b, "unmap", "Mm<O>::holders");
    let flush = incl_per_unit(b, "unmap", "as pvops::ops::PvMmuOps>::flush_tlb_multi");
    let _ = writeln!(
        w,
        "**What is left, and why** (`Mm<Builtin>`; the tables below give the figures). The gap is \
         structural on this path: \n\n\
         * **Page-table words** are no longer the gap: `Mm<Builtin>` holds the native backend typed over \
         its memory (`NativeBackend<DirectMap>`, built by `NativeBackend::from_env_with`; the example \
         kernel's `KernelOps` likewise, over its counted direct map), so every word is an inlined load, store or `cmpxchg` behind two range \
         checks (the backend's index, the direct map's frame bound) — the *one word per call* row is 0 \
         for it. `Mm<dyn PvMmuOps>` still pays a call into `DirectMap` per word ({word} Ir a call, \
         bounds check included). What stays a `&dyn PhysMem` call is the frame allocator's (its memory \
         is part of `FrameAllocator`'s public signature): one per whole-frame zeroing or copy (a few Ir \
         beside its 512 counted iterations) and one `frame_freed` per free (a no-op natively).\n\
         * **The frame allocator** keeps a bitmap (next fit from a hint), per-frame metadata (reset on \
         every allocation: private word, pinned flag, reference count), allocation counters and fault \
         injection under its lock: an allocation, inlined into map and fork, is ~37 Ir where the \
         hand-written free list pops one word under its lock (~12; counted in the disassembly of \
         `Mm::map`). Unmap frees through the reference count (`put_frame`: an atomic decrement, then for \
         the last reference the bitmap bit, the pinned check, the metadata reset and `frame_freed`): \
         {put} Ir a page, one lookup of the frame, without re-testing what the decrement settled.\n\
         * **Every operation** brackets a lazy-MMU section and returns `Result<_, PvError>` \
         (on unmap, `issued_now` with the clear and the flush it brackets: {lazy} Ir a page — three \
         backend hooks, no-ops natively, the merging of their results, and `flush_tlb_multi`'s {flush} \
         Ir: `this_cpu`, the cpumask, then `invlpg`); unmap and protect ask which CPUs hold the space \
         (`holders`: {holders} Ir); protect also takes the space's demand-zero region list lock (its \
         reservations take the new permission too).\n\
         * **A switch** checks the space is pinned, records the space this CPU runs (`Mm::exit` refuses \
         a space another CPU runs) and the backend records its root per CPU (`pgd_free` refuses a root \
         still loaded anywhere), each asking `this_cpu` through `&dyn Cpus`: {switch} more than the hand-written \
         switch, which keeps one `loaded` word.\n"
    );
}

/// Kinds of framework code, each with the name fragments of its functions
/// (Callgrind's full names); the first kind whose fragment a name contains
/// gets its cost.
const KINDS: [(&str, &[&str]); 8] = [
    (
        "one word of page-table memory per call (`<DirectMap as PhysMem>::read_entry`/`write_entry`)",
        &["DirectMap as pvops::services::PhysMem>::read_entry", "DirectMap as pvops::services::PhysMem>::write_entry"],
    ),
    ("zeroing and copying whole frames (`PhysMem::zero_frame`, `copy_frame`)", &["zero_frame", "copy_frame"]),
    ("frame allocator (`FrameAllocator`: bitmap, metadata, its lock)", &["FrameAllocator", "spin::"]),
    ("table walks (`find_l1`, `ensure_l1`)", &["kernel_glue::walk::"]),
    (
        "locks, cpumask, CPU ids (`lock`, `holders`, `this_cpu`, `set_running`)",
        &["address_space::lock", "Locked", "holders", "Cpus>", "is_pinned", "set_running", "cpumask"],
    ),
    (
        "backend (`NativeBackend`, `PvMmuOps` defaults, `NativeCpu`)",
        &["NativeBackend", "PvMmuOps", "NativeCpu", "Builtin"],
    ),
    ("`Mm`'s own code, with what is inlined into it (fork's copy loop)", &["kernel_glue", "Mm<O>"]),
    ("bench harness (the loop calling the operation)", &[""]),
];

fn kind_of(name: &str) -> usize {
    KINDS.iter().position(|(_, frags)| frags.iter().any(|f| name.contains(f))).unwrap_or(KINDS.len() - 1)
}

/// Functions shown per missed operation.
const TOP: usize = 8;

/// `Mm<O>::map`, `<DirectMap as PhysMem>::read_entry`: a Callgrind function
/// name without its module paths (an identifier starting lower-case and
/// followed by `::` is a module, unless a closure follows).
pub fn short_name(name: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        let rest: String = std::iter::once(c).chain(chars.clone().take(3)).collect();
        let module = c == ':'
            && rest.starts_with("::")
            && !rest.starts_with("::{")
            && word.starts_with(|x: char| x.is_ascii_lowercase());
        if module {
            chars.next(); // the second ':'
        } else {
            out.push_str(&word);
            out.push(c);
        }
        word.clear();
    }
    out.push_str(&word);
    out
}

/// For each missed operation, where the framework's instructions go (the
/// `static` column's Callgrind profile, the `dyn` one beside it): the
/// functions with the largest own cost, per unit.
fn where_it_goes(w: &mut String, b: &Baseline, misses: &[(&str, &str, f64, f64)]) {
    if b.profiles.is_empty() {
        return;
    }
    let _ = writeln!(
        w,
        "**Where the instructions go** (Callgrind's per-function costs of each region, as \
         `callgrind_annotate --inclusive=yes` shows them, divided by the units of the row; *self* is the \
         function's own instructions with what was inlined into it — the self costs of a region add up \
         to its total —, *incl.* adds its callees, *calls* is calls per unit) of every missed operation.\n"
    );
    let mut ops: Vec<&str> = misses.iter().map(|m| m.1).collect();
    ops.sort_unstable();
    ops.dedup();
    let ops: Vec<&str> = OPS.into_iter().filter(|o| ops.contains(o)).collect();
    // The partition by kind first: every instruction of a region is in exactly one bucket.
    let _ = writeln!(
        w,
        "By kind, `Mm<Builtin>`, Ir per unit (each function's self cost goes to the first bucket its \
         name matches; the buckets add up to the total):\n"
    );
    let _ = writeln!(w, "| kind | {} |", ops.join(" | "));
    let _ = writeln!(w, "|---|{}", "---:|".repeat(ops.len()));
    let units =
        |imp: &str, op: &str| b.cells.iter().find(|c| c.imp == imp && c.op == op).map_or(1.0, |c| c.units as f64);
    let _ = writeln!(
        w,
        "| *hand-written, whole operation* | {} |",
        ops.iter().map(|o| b.per("hand", o).map_or("—".into(), ir)).collect::<Vec<_>>().join(" | ")
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let cells: Vec<String> = ops
            .iter()
            .map(|o| {
                b.profiles.get(&format!("baseline/static/{o}")).map_or("—".into(), |p| {
                    let v: u64 = p.funcs.iter().filter(|(n, _)| kind_of(n) == k).map(|(_, c)| c.self_ir).sum();
                    ir(v as f64 / units("static", o))
                })
            })
            .collect();
        let _ = writeln!(w, "| {} | {} |", kind.0, cells.join(" | "));
    }
    let _ = writeln!(
        w,
        "| **`Mm<Builtin>`, whole operation** | {} |",
        ops.iter()
            .map(|o| b.per("static", o).map_or("—".into(), |v| format!("**{}**", ir(v))))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        w,
        "| *gap: `Mm<Builtin>` − hand-written* | {} |\n",
        ops.iter()
            .map(|o| match (b.per("static", o), b.per("hand", o)) {
                (Some(f), Some(h)) => format!("+{}", ir(f - h)),
                _ => "—".into(),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        w,
        "The {TOP} largest self costs of `Mm<Builtin>` per missed operation, `Mm<dyn PvMmuOps>` beside them:\n"
    );
    for op in ops {
        let (Some(ps), Some(pd)) =
            (b.profiles.get(&format!("baseline/static/{op}")), b.profiles.get(&format!("baseline/dyn/{op}")))
        else {
            continue;
        };
        let units = b.cells.iter().find(|c| c.imp == "static" && c.op == op).map_or(1, |c| c.units) as f64;
        let total = b.per("static", op).unwrap_or(0.0);
        let _ = writeln!(
            w,
            "*{}* — hand-written {} Ir, `Mm<Builtin>` {} Ir, `Mm<dyn PvMmuOps>` {} Ir per unit:\n",
            what(op),
            b.per("hand", op).map_or("—".into(), ir),
            ir(total),
            b.per("dyn", op).map_or("—".into(), ir)
        );
        let _ = writeln!(w, "| function | static self | share | static incl. | calls | dyn self | dyn incl. |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|");
        // Half an instruction per unit or more: the harness's client request is not a cost.
        let mut top: Vec<(&String, &cg::FnCost)> =
            ps.funcs.iter().filter(|(_, c)| c.self_ir as f64 >= units / 2.0).collect();
        top.sort_by(|a, b| b.1.self_ir.cmp(&a.1.self_ir).then(a.0.cmp(b.0)));
        for (name, c) in top.into_iter().take(TOP) {
            // Absent from the dyn profile: inlined there (or not called).
            let d = pd.funcs.get(name).copied();
            let per = |v: u64| ir(v as f64 / units);
            let dyn_per = |f: fn(&cg::FnCost) -> u64| d.as_ref().map_or("—".into(), |c| per(f(c)));
            let _ = writeln!(
                w,
                "| `{}` | {} | {:.0} % | {} | {} | {} | {} |",
                short_name(name),
                per(c.self_ir),
                100.0 * c.self_ir as f64 / units / total.max(1.0),
                per(c.inclusive),
                fmt_calls(c.calls as f64 / units),
                dyn_per(|c| c.self_ir),
                dyn_per(|c| c.inclusive)
            );
        }
        let _ = writeln!(w);
    }
}

fn fmt_calls(v: f64) -> String {
    if v == 0.0 {
        "—".into()
    } else if v < 0.01 {
        "< 0.01".into()
    } else if (v - v.round()).abs() < 0.005 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `doc` with this section replaced by `section`; without markers, it goes
/// before the SMP section (or "## Reproduce", or the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::splice_section(doc, BEGIN, END, section, &[crate::smp::BEGIN, "## Reproduce"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the raw memory says about one space: the oracle reads the
    /// buffer itself, through neither implementation's code.
    #[derive(Debug, PartialEq)]
    struct Snap {
        /// Raw kernel-half L4 slots.
        kernel: Vec<u64>,
        /// Present table entries above the leaves: (level, first va, flags).
        tables: Vec<(u8, u64, u64)>,
        /// Present leaves: (va, flags, FNV-1a hash of every word of the page, words that are 0).
        pages: Vec<(u64, u64, u64, usize)>,
    }

    fn snapshot(p: &Platform, pgd: u64) -> Snap {
        let mut s = Snap { kernel: (256..512).map(|i| p.word(pgd, i)).collect(), tables: vec![], pages: vec![] };
        let flags = |e: u64| e & !bits::ADDR;
        let next = |e: u64| (e & bits::ADDR) >> 12;
        for i4 in 0..256u64 {
            let e4 = p.word(pgd, i4 as usize);
            if e4 & bits::P == 0 {
                continue;
            }
            s.tables.push((4, i4 << 39, flags(e4)));
            for i3 in 0..512u64 {
                let e3 = p.word(next(e4), i3 as usize);
                if e3 & bits::P == 0 {
                    continue;
                }
                s.tables.push((3, (i4 << 39) | (i3 << 30), flags(e3)));
                for i2 in 0..512u64 {
                    let e2 = p.word(next(e3), i2 as usize);
                    if e2 & bits::P == 0 {
                        continue;
                    }
                    s.tables.push((2, (i4 << 39) | (i3 << 30) | (i2 << 21), flags(e2)));
                    for i1 in 0..512u64 {
                        let e1 = p.word(next(e2), i1 as usize);
                        if e1 & bits::P != 0 {
                            let va = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12);
                            let words: Vec<u64> = (0..512).map(|i| p.word(next(e1), i)).collect();
                            let hash = words
                                .iter()
                                .fold(0xcbf2_9ce4_8422_2325u64, |h, &w| (h ^ w).wrapping_mul(0x0000_0100_0000_01b3));
                            s.pages.push((va, flags(e1), hash, words.iter().filter(|&&w| w == 0).count()));
                        }
                    }
                }
            }
        }
        s
    }

    /// Everything one implementation did, as the oracle sees it.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        parent: Snap,
        child: Snap,
        /// Which calls failed, in order.
        refused: Vec<bool>,
        /// Frames in use after the maps, after the unmaps, after the fork.
        used: Vec<u64>,
        /// `invlpg`s and full flushes while the space was loaded, then while not.
        flushes: Vec<(u64, u64)>,
        /// cr3 was the fork's root after switching to it, `init_mm`'s after switching back.
        cr3_ok: bool,
        /// Frames in use after both exited.
        leaked: u64,
    }

    const PAGES: [(u64, PageFlags); 7] = [
        (BASE, PageFlags::DATA),
        (BASE + 0x1000, PageFlags::DATA),
        (BASE + 0x5000, PageFlags::CODE),
        (BASE + (1 << 21), PageFlags::RODATA),  // a second L1
        (1 << 30, PageFlags::DATA),             // a second L2
        ((1 << 39) + 0x3000, PageFlags::CODE),  // a second L4 slot
        (USER_LIMIT - 0x1000, PageFlags::DATA), // the last user page
    ];

    fn script<I: Impl>(i: &I, p: &Platform) -> Result<Outcome, String> {
        let free0 = i.free_frames();
        let flushes = || (p.cpu.invlpgs(), p.cpu.full_flushes());
        let a = i.create()?;
        i.switch(&a)?;
        let mut refused = vec![];
        for (va, perm) in PAGES {
            i.map(&a, va, perm)?;
            p.fill(i.pgd(&a), va, va.rotate_left(17))?;
        }
        // Refusals: mapped already, unaligned, not a user address, unmapped (table there / none).
        refused.push(i.map(&a, BASE, PageFlags::DATA).is_err());
        refused.push(i.map(&a, BASE + 8, PageFlags::DATA).is_err());
        refused.push(i.map(&a, USER_LIMIT, PageFlags::DATA).is_err());
        refused.push(i.unmap(&a, BASE + 0x2000).is_err());
        refused.push(i.unmap(&a, 0x7000_0000_0000).is_err());
        refused.push(i.protect(&a, BASE + 0x2000, PageFlags::RODATA).is_err());
        let mut used = vec![free0 - i.free_frames()];
        let f0 = flushes();
        i.unmap(&a, BASE + 0x1000)?;
        i.unmap(&a, 1 << 30)?;
        // Data to code, code to data, and one that changes nothing (no flush).
        i.protect(&a, BASE, PageFlags::CODE)?;
        i.protect(&a, BASE + 0x5000, PageFlags::DATA)?;
        i.protect(&a, BASE + (1 << 21), PageFlags::RODATA)?;
        let f1 = flushes();
        used.push(free0 - i.free_frames());
        let b = i.fork(&a)?;
        used.push(free0 - i.free_frames());
        i.switch(&b)?;
        let mut cr3_ok = p.cpu.read_cr3() == i.pgd(&b) << 12;
        // `a` is not loaded now: its unmap flushes nothing here.
        let f2 = flushes();
        i.map(&a, BASE + 0x7000, PageFlags::DATA)?;
        i.unmap(&a, BASE + 0x7000)?;
        let f3 = flushes();
        let (parent, child) = (snapshot(p, i.pgd(&a)), snapshot(p, i.pgd(&b)));
        i.switch_init()?;
        cr3_ok &= p.cpu.read_cr3() == BOOT_PGD.addr();
        i.exit(a)?;
        i.exit(b)?;
        Ok(Outcome {
            parent,
            child,
            refused,
            used,
            flushes: vec![(f1.0 - f0.0, f1.1 - f0.1), (f3.0 - f2.0, f3.1 - f2.1)],
            cr3_ok,
            leaked: free0 - i.free_frames(),
        })
    }

    /// The comparison is honest: the hand-written code does what the
    /// framework does — the same page tables (kernel half, every table entry
    /// and its flags, every leaf's flags and page contents, parent and
    /// fork), the same refusals, the same frames used, the same TLB flushes,
    /// the same cr3 — on both ways of calling the framework.
    #[test]
    fn hand_written_code_leaves_the_same_page_tables_as_the_framework() {
        let t = boot(64).unwrap();
        let hand = script(t.hand, &t.plat).unwrap();
        // Not vacuous: what the script must have done.
        assert_eq!(hand.parent.pages.len(), PAGES.len() - 2);
        let contents = |s: &Snap| s.pages.iter().map(|x| (x.0, x.2)).collect::<Vec<_>>();
        assert_eq!(contents(&hand.parent), contents(&hand.child), "fork copies every page");
        assert!(hand.parent.pages.iter().all(|x| x.3 == 0), "pages were filled");
        assert_eq!(hand.refused, [true; 6]);
        assert_eq!(
            hand.flushes,
            [(4, 0), (0, 0)],
            "one invlpg per unmap or protection change of the loaded space, none otherwise"
        );
        assert!(hand.cr3_ok);
        assert_eq!(hand.leaked, 0);
        assert!(hand.parent.kernel.iter().any(|&e| e & bits::P != 0), "the kernel half is shared");
        same(&script(t.dyn_mm, &t.plat).unwrap(), &hand, "Mm<dyn PvMmuOps> vs hand-written");
        same(&script(t.static_mm, &t.plat).unwrap(), &hand, "Mm<Builtin> vs hand-written");
    }

    /// Field by field, so a failure names what differs.
    fn same(fw: &Outcome, hand: &Outcome, what: &str) {
        for (name, a, b) in [("parent", &fw.parent, &hand.parent), ("fork", &fw.child, &hand.child)] {
            assert_eq!(a.kernel, b.kernel, "{what}: {name}'s kernel half");
            assert_eq!(a.tables, b.tables, "{what}: {name}'s tables (level, va, flags)");
            assert_eq!(a.pages, b.pages, "{what}: {name}'s pages (va, flags, contents hash, zero words)");
        }
        assert_eq!(fw.refused, hand.refused, "{what}: refusals");
        assert_eq!(fw.used, hand.used, "{what}: frames in use after maps, unmaps, fork");
        assert_eq!(fw.flushes, hand.flushes, "{what}: TLB flushes (loaded, not loaded)");
        assert_eq!(fw.cr3_ok, hand.cr3_ok, "{what}: cr3");
        assert_eq!(fw.leaked, hand.leaked, "{what}: frames left after exit");
    }

    #[test]
    fn module_paths_are_dropped_from_function_names() {
        assert_eq!(
            short_name("<pvops_native::direct_map::DirectMap as pvops::services::PhysMem>::read_entry"),
            "<DirectMap as PhysMem>::read_entry"
        );
        assert_eq!(short_name("kernel_glue::address_space::Mm<O>::map_queued"), "Mm<O>::map_queued");
        assert_eq!(short_name("kernel_glue::walk::ensure_l1"), "ensure_l1");
        assert_eq!(short_name("pvops_bench::baseline::child::{{closure}}"), "child::{{closure}}");
    }

    #[test]
    fn the_section_is_spliced_between_its_markers_or_before_smp() {
        let section = format!("{BEGIN}\nnew\n{END}\n\n");
        let smp = crate::smp::BEGIN;
        let doc = format!("# P\n\n{BEGIN}\nold\n{END}\n\n{smp}\n## Reproduce\n");
        assert_eq!(splice(&doc, &section), format!("# P\n\n{BEGIN}\nnew\n{END}\n\n{smp}\n## Reproduce\n"));
        let bare = format!("# P\n\n{smp}\n## Reproduce\n");
        assert_eq!(splice(&bare, &section), doc.replace("old", "new"));
        assert_eq!(splice(&splice(&bare, &section), &section), splice(&bare, &section), "idempotent");
    }
}
