//! Target 2: hypercalls per operation on the Xen model, beside Linux's.
//!
//! Every operation runs on the xen64 backend over the strict PV MMU model
//! (`pvops_integration::xen_host`), booted like the kernel boots. Each count
//! is read twice, from the backend's own `stats()` and from the model's
//! `counters()` (traps into the modelled Xen), and the two must agree.

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::pte::flags;
use pvops::{Level, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};
use pvops_integration::platform::{boot_backend, Booted, HostPlatform};
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;

use crate::linux::{self, Tables};

/// Hypervisor traffic of one operation, as the backend and the model counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// The backend's `stats()` delta.
    pub backend: OpStats,
    /// Traps the model saw.
    pub model_hypercalls: u64,
    /// Multicall entries the model ran.
    pub model_entries: u64,
    /// Heap allocations made while it ran (all transient: freed again).
    pub allocations: u64,
}

impl Cost {
    /// Hypercalls (the backend's count; [`measure`] checks the model agrees).
    pub fn hypercalls(&self) -> u64 {
        self.backend.hypercalls
    }
}

/// One row of the table: an operation, what it cost us, what Linux needs.
#[derive(Clone, Debug)]
pub struct Row {
    /// The operation.
    pub what: String,
    /// Table pages below `USER_LIMIT` involved (pin/unpin), or pages mapped.
    pub size: Option<u64>,
    /// Our cost.
    pub cost: Cost,
    /// Linux `mmu_pv.c`'s hypercalls for the same operation.
    pub linux: u64,
    /// The target for us, if it sets one.
    pub target: Option<u64>,
}

/// A booted Xen guest on the model.
pub struct Guest {
    /// The host platform (model handle, frames).
    pub host: HostPlatform,
    /// The booted memory manager and backend.
    pub booted: Booted,
}

impl Guest {
    /// Boots the xen64 backend on a model of `nr_pages` pages.
    pub fn boot(nr_pages: u64) -> Result<Guest, String> {
        let host = xen_platform(nr_pages);
        let desc =
            pvops::backends().into_iter().find(|d| d.name == "xen64").ok_or("the xen64 backend is not linked")?;
        let booted = boot_backend(desc, &host).map_err(|e| format!("boot: {e}"))?;
        Ok(Guest { host, booted })
    }

    /// The model.
    pub fn model(&self) -> &'static XenModel {
        self.host.xen.expect("a Xen platform has a model")
    }

    /// The memory manager.
    pub fn mm(&self) -> &'static Mm<'static> {
        self.booted.mm
    }

    /// The backend.
    pub fn ops(&self) -> &'static dyn PvMmuOps {
        self.booted.ops
    }

    /// Runs `f` and returns its value with what it cost; fails if the
    /// backend's and the model's hypercall counts disagree.
    pub fn cost<T>(&self, f: impl FnOnce() -> Result<T, PvError>) -> Result<(T, Cost), String> {
        let (s0, m0) = (self.ops().stats(), self.model().counters());
        let a0 = crate::memory::allocations();
        let v = f().map_err(|e| e.to_string())?;
        let a1 = crate::memory::allocations();
        let (s1, m1) = (self.ops().stats(), self.model().counters());
        let cost = Cost {
            backend: s1.since(s0),
            model_hypercalls: m1.hypercalls - m0.hypercalls,
            model_entries: m1.multicall_entries - m0.multicall_entries,
            allocations: a1 - a0,
        };
        if cost.backend.hypercalls != cost.model_hypercalls {
            return Err(format!(
                "backend counted {} hypercalls, the model saw {}",
                cost.backend.hypercalls, cost.model_hypercalls
            ));
        }
        Ok((v, cost))
    }

    /// A new address space with one page mapped at each of `vas` (unpinned:
    /// direct stores, no hypercall).
    pub fn space_with(&self, vas: impl IntoIterator<Item = u64>) -> Result<AddressSpace, String> {
        let mm = self.mm();
        let s = mm.create().map_err(|e| e.to_string())?;
        for va in vas {
            mm.map(&s, va, PageFlags::DATA).map_err(|e| format!("map {va:#x}: {e}"))?;
        }
        Ok(s)
    }

    /// The L1 table mapping `va` in `pgd`'s tree.
    pub fn l1_of(&self, pgd: Pfn, va: u64) -> Result<Pfn, String> {
        let va = VirtAddr::try_new(va).map_err(|e| e.to_string())?;
        let mut table = pgd;
        for level in [Level::L4, Level::L3, Level::L2] {
            let e = self.ops().read_entry(level, table, va.index(level)).map_err(|e| e.to_string())?;
            if !e.is_present() {
                return Err(format!("no table under {level:?} for {:#x}", va.as_u64()));
            }
            table = e.pfn();
        }
        Ok(table)
    }
}

/// Base of the pin/unpin address spaces: 1 GiB, so L1 pages fill L2s from slot 0.
const PIN_BASE: u64 = 0x4000_0000;
/// Bytes one L1 page maps.
const L1_SPAN: u64 = 2 << 20;

/// The L1 counts of the pin/unpin rows.
pub const PIN_L1S: [u64; 4] = [1, 10, 100, 1000];
/// The page counts of the lazy-map rows.
pub const LAZY_PAGES: [u64; 6] = [1, 32, 33, 100, 1000, 10_000];

/// The user-half tables of a space with one page in each of `l1` consecutive
/// 2 MiB regions from 1 GiB.
pub fn pin_tables(l1: u64) -> Tables {
    Tables { l3: 1, l2: l1.div_ceil(512), l1 }
}

/// Pin and unpin of a space whose user half has `l1` L1 pages.
pub fn pin_unpin(g: &Guest, l1: u64) -> Result<(Cost, Cost), String> {
    let s = g.space_with((0..l1).map(|i| PIN_BASE + i * L1_SPAN))?;
    let frames = g.booted.frames;
    let (_, pin) = g.cost(|| g.ops().activate_mm(frames, s.pgd()))?;
    let (_, unpin) = g.cost(|| g.ops().exit_mm(frames, s.pgd()))?;
    // Unpinned again behind the Mm's back, as it was created: exit frees it.
    g.mm().exit(s).map_err(|(e, _)| e.to_string())?;
    Ok((pin, unpin))
}

/// Maps `n` pages into a pinned space's existing L1 tables in lazy-MMU mode.
pub fn lazy_map(g: &Guest, n: u64) -> Result<Cost, String> {
    const PER_L1: u64 = 511; // slot 511 of each L1 holds the page that made it
    let regions = n.div_ceil(PER_L1);
    let s = g.space_with((0..regions).map(|r| PIN_BASE + r * L1_SPAN + PER_L1 * 4096))?;
    let mm = g.mm();
    mm.activate(&s).map_err(|e| e.to_string())?;
    let l1s = (0..regions).map(|r| g.l1_of(s.pgd(), PIN_BASE + r * L1_SPAN)).collect::<Result<Vec<_>, _>>()?;
    let frames = g.booted.frames;
    let pages =
        (0..n).map(|_| frames.alloc_zeroed_frame()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let leaf = flags::PRESENT | flags::USER | flags::WRITABLE | flags::NO_EXECUTE;
    let ops = g.ops();
    let (_, cost) = g.cost(|| {
        ops.lazy_mmu_enter();
        for (i, &page) in pages.iter().enumerate() {
            let i = i as u64;
            ops.set_pte(frames, l1s[(i / PER_L1) as usize], (i % PER_L1) as usize, Pte::new(page, leaf))?;
        }
        ops.lazy_mmu_leave()
    })?;
    mm.activate_init().map_err(|e| e.to_string())?;
    mm.exit(s).map_err(|(e, _)| e.to_string())?;
    Ok(cost)
}

/// Every row of the table, measured on one guest.
pub fn measure() -> Result<Vec<Row>, String> {
    let g = Guest::boot(16_384)?;
    let mm = g.mm();
    let mut rows = Vec::new();

    // Two pinned address spaces to switch between.
    let a = g.space_with([0x40_0000])?;
    let b = g.space_with([0x40_0000])?;
    mm.activate(&a).map_err(|e| e.to_string())?;
    mm.activate(&b).map_err(|e| e.to_string())?;
    let (_, c) = g.cost(|| mm.activate(&a))?;
    rows.push(Row {
        what: "context switch (both base pointers)".into(),
        size: None,
        cost: c,
        linux: linux::context_switch(),
        target: Some(1),
    });
    let (_, c) = g.cost(|| mm.activate_init())?;
    rows.push(Row {
        what: "switch to init_mm (user base pointer 0)".into(),
        size: None,
        cost: c,
        linux: linux::context_switch(),
        target: Some(1),
    });
    let frames = g.booted.frames;
    let slot = VirtAddr::try_new(0x40_0000).map_err(|e| e.to_string())?.index(Level::L4);
    let e = g.ops().read_entry(Level::L4, a.pgd(), slot).map_err(|e| e.to_string())?;
    let (_, c) = g.cost(|| g.ops().set_pgd(frames, a.pgd(), slot, e))?;
    rows.push(Row {
        what: "set_pgd on a pinned pgd (kernel + user slot)".into(),
        size: None,
        cost: c,
        linux: linux::set_pgd_pinned(),
        target: Some(1),
    });
    mm.exit(a).map_err(|(e, _)| e.to_string())?;
    mm.exit(b).map_err(|(e, _)| e.to_string())?;

    // One multicall entry per table page remapped, plus both pgds' and the
    // pin operation's: a batch of `MAX_ENTRIES` (Linux's `MC_BATCH`) per
    // hypercall, a full one issued before the next entry (no heap growth).
    let pin_target = |pages: u64| (pages + 3).div_ceil(pvops_xen64::MAX_ENTRIES as u64);
    for l1 in PIN_L1S {
        let t = pin_tables(l1);
        let (pin, unpin) = pin_unpin(&g, l1)?;
        let pages = t.l1 + t.l2 + t.l3;
        rows.push(Row {
            what: format!("pin, K = {l1} L1 pages"),
            size: Some(pages),
            cost: pin,
            linux: linux::pin(t),
            target: Some(pin_target(pages)),
        });
        rows.push(Row {
            what: format!("unpin, K = {l1} L1 pages"),
            size: Some(pages),
            cost: unpin,
            linux: linux::unpin(t),
            target: Some(pin_target(pages)),
        });
    }
    for n in LAZY_PAGES {
        let c = lazy_map(&g, n)?;
        rows.push(Row {
            what: format!("map {n} pages, lazy MMU"),
            size: Some(n),
            cost: c,
            linux: linux::lazy_map(n),
            target: Some(n.div_ceil(batch_ptes())),
        });
    }
    if let Err(e) = g.model().check_invariants() {
        return Err(format!("model invariants after the economy run: {e}"));
    }
    Ok(rows)
}

/// `mmu_update` records one of our batches holds.
pub fn batch_ptes() -> u64 {
    (pvops_xen64::MAX_ARG_BYTES / core::mem::size_of::<pvops_xen64::abi::MmuUpdate>()) as u64
}
