//! The hypercall sweeps of `docs/PERFORMANCE.md` §2 on the real Xen (Xen PV
//! only): pin/unpin of an address space with one page in each of K
//! consecutive 2 MiB regions, and N lazy-MMU `set_pte`s into existing L1s of
//! a pinned space — the workloads `tests/bench/src/economy.rs` runs on the
//! model. Counted at the hypercall transport ([`SeamCounts`]), not by the
//! backend's `stats()`; one `XENSWEEP` line per row, which xtask checks
//! against its table (`xtask/src/sweep.rs`).
//!
//! N = 10,000 (the model's largest row) is left out: 10,000 zeroed frames are
//! 40 MiB of the 64 MiB dom0, and zeroing them under TCG would cost more
//! than the sweep's time budget.

use alloc::vec::Vec;

use kernel_glue::PageFlags;
use pvops::pte::flags;
use pvops::{Pfn, Pte, PvError, PvMmuOps};

use crate::seams::SeamCounts;
use crate::vm::{self, Vm};
use crate::{kprintln, platform};

/// Base of the sweep spaces: 1 GiB, so L1 pages fill L2s from slot 0 (as the model's).
const BASE: u64 = 0x4000_0000;
/// Bytes one L1 page maps.
const L1_SPAN: u64 = 2 << 20;
/// The L1 counts of the pin/unpin rows (the model's).
pub const PIN_L1S: [u64; 4] = [1, 10, 100, 1000];
/// The page counts of the lazy-map rows (the model's, without 10,000).
pub const LAZY_PAGES: [u64; 5] = [1, 32, 33, 100, 1000];

/// Prints one row.
fn row(what: &str, size: &str, c: &SeamCounts) {
    kprintln!(
        "XENSWEEP {what} {size} hypercalls={} entries={} failures={}",
        c.hypercalls(),
        c.traps.multicall_entries,
        c.traps.failures
    );
}

/// Pin (`activate_mm`) and unpin (`exit_mm`) of a space with `l1` L1 pages.
fn pin_unpin(v: &Vm, l1: u64) -> Result<(), PvError> {
    let s = v.mm.create()?;
    for i in 0..l1 {
        if let Err(e) = v.mm.map(&s, BASE + i * L1_SPAN, PageFlags::DATA) {
            let _ = v.mm.exit(s);
            return Err(e);
        }
    }
    let before = SeamCounts::now();
    let pinned = v.ops.activate_mm(v.frames, s.pgd());
    let pin = SeamCounts::now().since(&before);
    let before = SeamCounts::now();
    let unpinned = if pinned.is_ok() { v.ops.exit_mm(v.frames, s.pgd()) } else { Ok(()) };
    let unpin = SeamCounts::now().since(&before);
    // Unpinned again behind the Mm's back, as it was created: exit frees it.
    let exited = v.mm.exit(s).map_err(|(e, _)| e);
    pinned?;
    unpinned?;
    exited?;
    row("pin", &alloc::format!("K={l1}"), &pin);
    row("unpin", &alloc::format!("K={l1}"), &unpin);
    Ok(())
}

/// `n` `set_pte`s into existing L1s of a pinned space, in one lazy-MMU section.
fn lazy_map(v: &Vm, n: u64) -> Result<(), PvError> {
    const PER_L1: u64 = 511; // slot 511 of each L1 holds the page that made it
    let regions = n.div_ceil(PER_L1);
    let s = v.mm.create()?;
    let mut pages = Vec::new();
    let r = (|| {
        for r in 0..regions {
            v.mm.map(&s, BASE + r * L1_SPAN + PER_L1 * 4096, PageFlags::DATA)?;
        }
        v.mm.activate(&s)?;
        let l1s = (0..regions)
            .map(|r| vm::path(v.ops, s.pgd(), BASE + r * L1_SPAN).map(|p| p[3].0))
            .collect::<Result<Vec<Pfn>, _>>()?;
        for _ in 0..n {
            pages.push(v.frames.alloc_zeroed_frame()?);
        }
        let leaf = flags::PRESENT | flags::USER | flags::WRITABLE | flags::NO_EXECUTE;
        let before = SeamCounts::now();
        v.ops.lazy_mmu_enter();
        let mut set = Ok(());
        for (i, &page) in pages.iter().enumerate() {
            let i = i as u64;
            set = v.ops.set_pte(v.frames, l1s[(i / PER_L1) as usize], (i % PER_L1) as usize, Pte::new(page, leaf));
            if set.is_err() {
                break;
            }
        }
        let left = v.ops.lazy_mmu_leave();
        let c = SeamCounts::now().since(&before);
        set?;
        left?;
        // Mapped now: the space's exit frees them.
        pages.clear();
        row("lazy-map", &alloc::format!("N={n}"), &c);
        Ok(())
    })();
    let back = v.mm.activate_init();
    let exited = v.mm.exit(s).map_err(|(e, _)| e);
    for p in pages {
        let _ = v.frames.free_frame(p);
    }
    r.and(back).and(exited)
}

/// Runs both sweeps (Xen PV only) and prints `XENSWEEP` lines; `Ok(false)`
/// if frames were not all given back.
pub fn run(v: &Vm) -> Result<bool, PvError> {
    if !platform::is_xen() {
        return Ok(true);
    }
    let free = v.frames.free_count();
    let t0 = crate::xen::time::now_ns();
    for l1 in PIN_L1S {
        pin_unpin(v, l1)?;
    }
    for n in LAZY_PAGES {
        lazy_map(v, n)?;
    }
    let ms = (crate::xen::time::now_ns() - t0) / 1_000_000;
    let leaked = free as i64 - v.frames.free_count() as i64;
    let rows = 2 * PIN_L1S.len() + LAZY_PAGES.len();
    kprintln!("XENSWEEP done rows={rows} frames_leaked={leaked} took={ms}ms (Xen system time)");
    Ok(leaked == 0)
}
