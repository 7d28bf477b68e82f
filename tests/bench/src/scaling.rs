//! Target 3: cost per mapped page as address spaces grow, on both backends.
//!
//! One child run per (backend, pages): boot the backend on its host model
//! with enough frames, then six phases, each a Callgrind region and a
//! hypercall delta:
//!
//! | phase  | work |
//! |---|---|
//! | create | `Mm::create` of A |
//! | map    | `Mm::map` of `pages` pages into A (contiguous from 4 MiB; unpinned) |
//! | fork   | `Mm::fork(A)` → B (copies every page; B unpinned) |
//! | pin    | `Mm::activate` of A, then of B (first use: pin + switch) |
//! | switch | `Mm::activate` A, B, then `activate_init` (3 switches of pinned spaces) |
//! | exit   | `Mm::exit` of A and B (unpin, free everything) |
//!
//! Instructions include the host models' own work (the machine model's
//! hash map, the Xen model's validation): flatness per page is what counts.

use std::fmt::Write as _;

use kernel_glue::{FrameAllocator, Mm, PageFlags};
use pvops::{BootEnv, EntryKind, Pfn, PvMmuOps};
use pvops_integration::native_host::native_platform;
use pvops_integration::platform::{boot_backend, KERNEL_VA};
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;

use crate::{cg, overhead};

/// The configurations measured: the native backend on the machine model, the
/// native backend on `DirectMap` over a host buffer (the bare-metal code
/// path: instructions are kernel-glue's and the backend's alone), and the
/// xen64 backend on the Xen model.
pub const BACKENDS: [&str; 3] = ["native", "native-directmap", "xen64"];
/// Address-space sizes, in mapped pages.
pub const SIZES: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];
/// The phases, in order.
pub const PHASES: [&str; 6] = ["create", "map", "fork", "pin", "switch", "exit"];
/// Where A's pages start.
const BASE: u64 = 0x40_0000;

/// Frames a platform needs for two spaces of `pages` pages, their tables and the kernel.
pub fn frames_for(pages: u64) -> u64 {
    2 * pages + pages / 256 + 256
}

/// What one phase cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseCost {
    /// Instructions (`None` without Callgrind).
    pub ir: Option<u64>,
    /// Hypercalls the backend counted.
    pub hypercalls: u64,
    /// Traps the Xen model saw (0 on native).
    pub model_hypercalls: u64,
    /// `mmu_update` records.
    pub mmu_updates: u64,
    /// `update_va_mapping` calls.
    pub update_va_mappings: u64,
    /// Direct stores to page-table memory.
    pub direct_writes: u64,
}

/// One (backend, pages) run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// The backend.
    pub backend: String,
    /// Pages mapped in A.
    pub pages: u64,
    /// Cost of each phase, in [`PHASES`] order.
    pub phases: Vec<PhaseCost>,
    /// Frames allocated by `create` (pgd, plus the user pgd on Xen).
    pub frames_create: u64,
    /// Frames allocated by `map` (pages and tables).
    pub frames_map: u64,
}

impl Run {
    /// Instructions of every phase together (`None` without Callgrind).
    pub fn total_ir(&self) -> Option<u64> {
        self.phases.iter().map(|p| p.ir).sum()
    }
    /// Hypercalls of every phase together.
    pub fn total_hypercalls(&self) -> u64 {
        self.phases.iter().map(|p| p.hypercalls).sum()
    }
}

type Booted =
    (&'static Mm<'static>, &'static dyn PvMmuOps, &'static FrameAllocator<'static>, Option<&'static XenModel>);

/// Boots `backend` (a [`BACKENDS`] name) on a platform of `nr` frames, as the kernel boots.
fn boot(backend: &str, nr: u64) -> Result<Booted, String> {
    let name = if backend == "xen64" { "xen64" } else { "native" };
    let desc = pvops::backends().into_iter().find(|d| d.name == name).ok_or("backend not linked")?;
    if backend == "native-directmap" {
        // `boot_backend`'s steps, on DirectMap memory.
        let (p, mem) = overhead::directmap_platform(nr);
        let boot_pgd = Pfn(1);
        p.cpu.write_cr3(boot_pgd.addr());
        let env = BootEnv { entry: EntryKind::Pvh, handover: "hvm_start_info 0x336ec578", platform: p };
        let ops = (desc.instantiate)(&env).map_err(|e| e.to_string())?;
        let frames: &'static FrameAllocator<'static> = Box::leak(Box::new(FrameAllocator::new(mem, nr)));
        frames.add_free_range(Pfn(0), nr);
        frames.reserve(Pfn(0));
        frames.reserve(boot_pgd);
        let mm = Mm::adopt_boot(ops, frames, boot_pgd).map_err(|e| e.to_string())?;
        let mm: &'static Mm<'static> = Box::leak(Box::new(mm));
        let kpage = frames.alloc_zeroed_frame().map_err(|e| e.to_string())?;
        mm.map_kernel(KERNEL_VA, kpage, true).map_err(|e| e.to_string())?;
        mm.init_metadata().map_err(|e| e.to_string())?;
        return Ok((mm, ops, frames, None));
    }
    let host = if backend == "xen64" { xen_platform(nr) } else { native_platform(nr) };
    let booted = boot_backend(desc, &host).map_err(|e| format!("boot: {e}"))?;
    Ok((booted.mm, booted.ops, booted.frames, host.xen))
}

/// The child side: runs the phases and prints one `phase …` line each, then a `frames …` line.
pub fn child(backend: &str, pages: u64) -> Result<(), String> {
    let (mm, ops, frames, model) = boot(backend, frames_for(pages))?;
    let counters = || model.map_or(0, |m| m.counters().hypercalls);
    let mut out = String::new();
    let mut phase = |name: &str, f: &mut dyn FnMut() -> Result<(), String>| -> Result<(), String> {
        let (s0, m0) = (ops.stats(), counters());
        cg::region(&format!("scaling/{backend}/{pages}/{name}"), &mut *f)?;
        let (d, m) = (ops.stats().since(s0), counters() - m0);
        let _ = writeln!(
            out,
            "phase {name} {} {m} {} {} {}",
            d.hypercalls, d.mmu_updates, d.update_va_mappings, d.direct_writes
        );
        Ok(())
    };
    let free0 = frames.free_count();
    let mut a = None;
    phase("create", &mut || {
        a = Some(mm.create().map_err(|e| e.to_string())?);
        Ok(())
    })?;
    let a = a.ok_or("no space")?;
    let free_created = frames.free_count();
    phase("map", &mut || {
        for i in 0..pages {
            mm.map(&a, BASE + i * 4096, PageFlags::DATA).map_err(|e| format!("map page {i}: {e}"))?;
        }
        Ok(())
    })?;
    let free_mapped = frames.free_count();
    let mut b = None;
    phase("fork", &mut || {
        b = Some(mm.fork(&a).map_err(|e| e.to_string())?);
        Ok(())
    })?;
    let b = b.ok_or("no child")?;
    phase("pin", &mut || {
        mm.activate(&a).map_err(|e| e.to_string())?;
        mm.activate(&b).map_err(|e| e.to_string())
    })?;
    phase("switch", &mut || {
        mm.activate(&a).map_err(|e| e.to_string())?;
        mm.activate(&b).map_err(|e| e.to_string())?;
        mm.activate_init().map_err(|e| e.to_string())
    })?;
    let mut spaces = vec![a, b];
    phase("exit", &mut || {
        for s in spaces.drain(..) {
            mm.exit(s).map_err(|(e, _)| e.to_string())?;
        }
        Ok(())
    })?;
    let leaked = free0 as i64 - frames.free_count() as i64;
    if leaked != 0 {
        return Err(format!("{leaked} frames not returned"));
    }
    if let Some(m) = model {
        m.check_invariants().map_err(|e| format!("model invariants: {e}"))?;
    }
    print!("{out}");
    println!("frames {} {}", free0 - free_created, free_created - free_mapped);
    Ok(())
}

/// The parent side: parses one child run.
pub fn collect(backend: &str, pages: u64, run: &cg::ChildRun) -> Result<Run, String> {
    let mut r = Run { backend: backend.into(), pages, ..Run::default() };
    for line in run.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| format!("bad line {line:?}"));
        match f.first() {
            Some(&"phase") => {
                let name = f.get(1).copied().unwrap_or_default();
                r.phases.push(PhaseCost {
                    ir: run.ir(&format!("scaling/{backend}/{pages}/{name}")),
                    hypercalls: num(2)?,
                    model_hypercalls: num(3)?,
                    mmu_updates: num(4)?,
                    update_va_mappings: num(5)?,
                    direct_writes: num(6)?,
                });
            }
            Some(&"frames") => {
                r.frames_create = num(1)?;
                r.frames_map = num(2)?;
            }
            _ => {}
        }
    }
    if r.phases.len() != PHASES.len() {
        return Err(format!("{backend}/{pages}: {} phases reported", r.phases.len()));
    }
    Ok(r)
}
