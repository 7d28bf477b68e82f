//! What Linux's `arch/x86/xen/mmu_pv.c` needs for the same operations,
//! derived by replaying its calls through a model of its batching rules
//! (`arch/x86/xen/multicalls.c`, reference notes §7):
//!
//! * a per-CPU batch of [`MC_BATCH`] = 32 multicall entries, [`MC_ARGS`] = 512
//!   bytes of arguments and 32 post-flush callbacks; a new entry (or a
//!   callback) that does not fit flushes the batch first;
//! * `xen_extend_mmu_update`/`xen_extend_mmuext_op` append a record to the
//!   previous entry when it is the same hypercall and the arguments fit;
//! * a flush issues one hypercall (a one-entry batch as the plain hypercall).
//!
//! The operation sequences are those of `xen_write_cr3`, `xen_set_p4d`,
//! `__xen_pgd_pin`/`__xen_pgd_unpin` (with split PTE locks, the default on SMP
//! builds: every L1 page is pinned on its own, right after its read-only
//! remap, with an unlock callback) and `xen_batched_set_pte` in lazy-MMU mode.

/// Linux's `MC_BATCH`: multicall entries per batch.
pub const MC_BATCH: usize = 32;
/// Linux's `MC_ARGS`: argument bytes per batch.
pub const MC_ARGS: usize = 512;
/// `sizeof(struct mmu_update)`.
const MMU_UPDATE: usize = 16;
/// `sizeof(struct mmuext_op)`.
const MMUEXT_OP: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Mmu,
    Mmuext,
    UpdateVa,
}

/// A replay of `multicalls.c`: counts the hypercalls a sequence of calls issues.
#[derive(Debug, Default)]
pub struct Batch {
    entries: usize,
    args: usize,
    callbacks: usize,
    last: Option<Op>,
    /// Hypercalls issued so far.
    pub hypercalls: u64,
}

impl Batch {
    /// `xen_mc_flush`.
    pub fn flush(&mut self) {
        if self.entries > 0 {
            self.hypercalls += 1;
        }
        self.entries = 0;
        self.args = 0;
        self.callbacks = 0;
        self.last = None;
    }

    /// `__xen_mc_entry(bytes)`.
    fn entry(&mut self, op: Op, bytes: usize) {
        if self.entries == MC_BATCH || self.args + bytes > MC_ARGS {
            self.flush();
        }
        self.entries += 1;
        self.args += bytes;
        self.last = Some(op);
    }

    /// `xen_mc_extend_args`, falling back to a new entry.
    fn extend(&mut self, op: Op, bytes: usize) {
        if self.last == Some(op) && self.args + bytes <= MC_ARGS {
            self.args += bytes;
        } else {
            self.entry(op, bytes);
        }
    }

    /// `xen_extend_mmu_update`.
    fn mmu_update(&mut self) {
        self.extend(Op::Mmu, MMU_UPDATE);
    }

    /// `xen_extend_mmuext_op` (via `xen_do_pin` for pins).
    fn mmuext_op(&mut self) {
        self.extend(Op::Mmuext, MMUEXT_OP);
    }

    /// `MULTI_update_va_mapping` in a `__xen_mc_entry(0)`.
    fn update_va_mapping(&mut self) {
        self.entry(Op::UpdateVa, 0);
    }

    /// `xen_mc_callback`.
    fn callback(&mut self) {
        if self.callbacks == MC_BATCH {
            self.flush();
        }
        self.callbacks += 1;
    }
}

/// Hypercalls of a finished sequence.
fn run(f: impl FnOnce(&mut Batch)) -> u64 {
    let mut b = Batch::default();
    f(&mut b);
    b.flush();
    b.hypercalls
}

/// The shape of an address space's user half: table pages below `USER_LIMIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    /// L3 (pud) pages.
    pub l3: u64,
    /// L2 (pmd) pages.
    pub l2: u64,
    /// L1 (pte) pages.
    pub l1: u64,
}

/// `xen_write_cr3` on a context switch: `NEW_BASEPTR` and `NEW_USER_BASEPTR`
/// extend one `mmuext_op` entry, plus the callback that publishes cr3.
/// (Linux issues it at the end of the context switch's lazy-CPU section, in
/// the same multicall as the TLS and kernel-stack updates.)
pub fn context_switch() -> u64 {
    run(|b| {
        b.mmuext_op();
        b.callback();
        b.mmuext_op();
    })
}

/// `xen_set_p4d` on a pinned pgd, below `USER_LIMIT`: the kernel slot and the
/// user slot, two `mmu_update`s extending one entry.
pub fn set_pgd_pinned() -> u64 {
    run(|b| {
        b.mmu_update();
        b.mmu_update();
    })
}

/// `__xen_pgd_pin`: the walk remaps every table page read-only (L3, then each
/// L2 followed by its L1s, each L1 remap followed by its `PIN_L1_TABLE` and an
/// unlock callback), the kernel pgd last; then `PIN_L4_TABLE` of the kernel
/// pgd, the user pgd's remap and its `PIN_L4_TABLE`.
pub fn pin(t: Tables) -> u64 {
    run(|b| {
        walk(b, t, |b, is_l1| {
            b.update_va_mapping();
            if is_l1 {
                b.mmuext_op();
                b.callback();
            }
        });
        b.update_va_mapping(); // the kernel pgd, last in the walk
        b.mmuext_op(); // PIN_L4_TABLE kernel pgd
        b.update_va_mapping(); // the user pgd
        b.mmuext_op(); // PIN_L4_TABLE user pgd
    })
}

/// `__xen_pgd_unpin`: `UNPIN_TABLE` of both pgds (one entry), the user pgd's
/// writable remap, then the walk: each L1 unpinned and remapped (with its
/// unlock callback), every other table page remapped, the kernel pgd last.
pub fn unpin(t: Tables) -> u64 {
    run(|b| {
        b.mmuext_op();
        b.mmuext_op();
        b.update_va_mapping();
        walk(b, t, |b, is_l1| {
            if is_l1 {
                b.mmuext_op();
            }
            b.update_va_mapping();
            if is_l1 {
                b.callback();
            }
        });
        b.update_va_mapping();
    })
}

/// Mapping `n` pages in lazy-MMU mode (`xen_batched_set_pte`): one
/// `mmu_update` each, extending the open entry until the 512 argument bytes
/// are used: 32 per hypercall.
pub fn lazy_map(n: u64) -> u64 {
    run(|b| {
        for _ in 0..n {
            b.mmu_update();
        }
    })
}

/// `__xen_pgd_walk` order: the L3 page, then each L2 page followed by its L1
/// pages (L1s spread evenly over the L2s).
fn walk(b: &mut Batch, t: Tables, mut page: impl FnMut(&mut Batch, bool)) {
    for _ in 0..t.l3 {
        page(b, false);
    }
    let mut l1_left = t.l1;
    for i in 0..t.l2 {
        page(b, false);
        let here = l1_left.div_ceil(t.l2 - i);
        for _ in 0..here {
            page(b, true);
        }
        l1_left -= here;
    }
    for _ in 0..l1_left {
        page(b, true);
    }
}

/// Entries Linux's pin puts in its batches: `2·L1 + L2 + L3 + 4`.
pub fn pin_entries(t: Tables) -> u64 {
    2 * t.l1 + t.l2 + t.l3 + 4
}
