//! Target 1: what a call through the registry costs on native, in instructions.
//!
//! Three ways to call the native backend's `set_pte`, `set_pgd` and `write_cr3`:
//!
//! * **direct** — on `pvops_native::NativeBackend` itself (the concrete type);
//! * **static** — on [`Builtin`], the registry-selected backend with static
//!   dispatch of the built-ins (`pvops::static_dispatch!`);
//! * **dyn** — on the `&'static dyn PvMmuOps` the registry's descriptor instantiates
//!   (what `pvops::init` returns).
//!
//! Each loop is one generic function, monomorphised per mode, so the code
//! around the call is the same; the receiver and every argument pass through
//! `black_box` on every iteration, so nothing is hoisted out of the loop (not
//! the enum's tag check either) and every call really happens. A fourth
//! loop, **loop**, does the same `black_box`es without the call. Each loop runs
//! as two regions, of [`SMALL`] and `SMALL +` [`calls`] iterations; the
//! difference divided by [`calls`] is the cost per iteration, exact (the
//! function's entry and exit cancel out). The memory behind the backend is either the host [`Machine`]
//! model (a mutex and a hash map per access: large but equal in every column)
//! or `pvops_native::DirectMap` over a host buffer (the bare-metal code path).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use kernel_glue::FrameAllocator;
use pvops::{BootEnv, EntryKind, MmServices, Pfn, PhysMem, Pte, PvMmuOps, VirtAddr};
use pvops_model::Machine;
use pvops_native::{DirectMap, NativeBackend, NativeCpu, NativePlatform};

use crate::builtin::Builtin;
use crate::cg;

/// The operations measured.
pub const OPS: [&str; 3] = ["set_pte", "set_pgd", "write_cr3"];
/// The ways of calling, in column order.
pub const MODES: [&str; 4] = ["loop", "direct", "static", "dyn"];
/// The memory models.
pub const MEMS: [&str; 2] = ["machine", "directmap"];
/// How arguments reach the call: `regs` (computed in registers, as at a real
/// call site; only the receiver and the slot index go through `black_box`) or
/// `stack` (every argument through `black_box`, i.e. reloaded from the stack).
pub const ARGS: [&str; 2] = ["regs", "stack"];

/// Iterations of the smaller region of each pair (also the warm-up).
pub const SMALL: u64 = 1_000;

/// Extra iterations of the larger region: per call = `(Ir(SMALL + calls) − Ir(SMALL)) / calls`.
pub fn calls(mem: &str) -> u64 {
    if mem == "machine" {
        20_000
    } else {
        200_000
    }
}

/// The table written (a frame of the small platform) and the slot.
const TABLE: Pfn = Pfn(10);
const INDEX: usize = 7;
const ENTRY: Pte = Pte(0x0000_0000_0002_1067);
const ROOT: Pfn = Pfn(1);
const FRAMES: u64 = 64;

/// A `NativeCpu` that only remembers cr3 (the bare-metal `mov cr3` is one
/// instruction; a relaxed store is the closest host equivalent).
#[derive(Debug, Default)]
pub struct FlatCpu {
    cr3: AtomicU64,
}

impl NativeCpu for FlatCpu {
    fn read_cr3(&self) -> u64 {
        self.cr3.load(Ordering::Relaxed)
    }
    fn write_cr3(&self, value: u64) {
        self.cr3.store(value, Ordering::Relaxed);
    }
    fn invlpg(&self, _va: VirtAddr) {}
    fn flush_all(&self) {}
}

/// The bare-metal code path on the host: `pvops_native::DirectMap` over a
/// leaked buffer of `frames` frames, and a [`FlatCpu`].
pub fn directmap_platform(frames: u64) -> (&'static NativePlatform, &'static dyn PhysMem) {
    let buf: &'static mut [u64] = Box::leak(vec![0u64; (frames * 512) as usize].into_boxed_slice());
    // SAFETY: 1. the leaked buffer holds `frames` frames of 512 words at its
    // base address and lives for the rest of the process.
    let dm: &'static DirectMap = Box::leak(Box::new(unsafe { DirectMap::new(buf.as_mut_ptr() as u64, frames) }));
    let cpu: &'static FlatCpu = Box::leak(Box::new(FlatCpu::default()));
    (Box::leak(Box::new(NativePlatform { mem: dm, cpu, cpus: &pvops::SingleCpu })), dm)
}

fn platform(mem: &str) -> (&'static NativePlatform, &'static dyn PhysMem) {
    if mem != "machine" {
        return directmap_platform(FRAMES);
    }
    let m = Machine::leaked(FRAMES);
    (Box::leak(Box::new(NativePlatform { mem: m, cpu: m, cpus: &pvops::SingleCpu })), m)
}

#[inline(never)]
fn run_loop(ops: &NativeBackend, mm: &dyn MmServices, n: u64, stack_args: bool) {
    if stack_args {
        for _ in 0..n {
            black_box(ops);
            black_box(mm);
            black_box(TABLE);
            black_box(INDEX);
            black_box(ENTRY);
            black_box(true);
        }
    } else {
        for _ in 0..n {
            black_box(ops);
            black_box(INDEX);
        }
    }
}

#[inline(never)]
fn run_set_pte<T: PvMmuOps + ?Sized>(ops: &T, mm: &dyn MmServices, n: u64, stack_args: bool) {
    if stack_args {
        for _ in 0..n {
            let r = black_box(ops).set_pte(black_box(mm), black_box(TABLE), black_box(INDEX), black_box(ENTRY));
            black_box(r.is_ok());
        }
    } else {
        for _ in 0..n {
            if let Err(e) = black_box(ops).set_pte(mm, TABLE, black_box(INDEX), ENTRY) {
                black_box(e);
            }
        }
    }
}

#[inline(never)]
fn run_set_pgd<T: PvMmuOps + ?Sized>(ops: &T, mm: &dyn MmServices, n: u64, stack_args: bool) {
    if stack_args {
        for _ in 0..n {
            let r = black_box(ops).set_pgd(black_box(mm), black_box(TABLE), black_box(INDEX), black_box(ENTRY));
            black_box(r.is_ok());
        }
    } else {
        for _ in 0..n {
            if let Err(e) = black_box(ops).set_pgd(mm, TABLE, black_box(INDEX), ENTRY) {
                black_box(e);
            }
        }
    }
}

#[inline(never)]
fn run_write_cr3<T: PvMmuOps + ?Sized>(ops: &T, mm: &dyn MmServices, n: u64, stack_args: bool) {
    if stack_args {
        for _ in 0..n {
            let r = black_box(ops).write_cr3(black_box(mm), black_box(ROOT));
            black_box(r.is_ok());
        }
    } else {
        for _ in 0..n {
            if let Err(e) = black_box(ops).write_cr3(mm, black_box(ROOT)) {
                black_box(e);
            }
        }
    }
}

fn run_op<T: PvMmuOps + ?Sized>(op: &str, ops: &T, mm: &dyn MmServices, n: u64, stack_args: bool) {
    match op {
        "set_pte" => run_set_pte(ops, mm, n, stack_args),
        "set_pgd" => run_set_pgd(ops, mm, n, stack_args),
        _ => run_write_cr3(ops, mm, n, stack_args),
    }
}

/// The child side: every (args, op, mode) region pair over `mem`.
pub fn child(mem: &str) -> Result<(), String> {
    let (p, phys) = platform(mem);
    let env = BootEnv { entry: EntryKind::Pvh, handover: "hvm_start_info 0x336ec578", platform: p };
    let direct = NativeBackend::new(p.mem, p.cpu);
    // (b) and (c) both come from the registry's own selection over every linked backend.
    let list = pvops::backends();
    let desc = pvops::select(&env, &list, None).map_err(|e| e.to_string())?;
    let stat = Builtin::from_desc(desc, &env).map_err(|e| e.to_string())?;
    if !matches!(stat, Builtin::Native(_)) {
        return Err(format!("the registry selected {stat:?}, not the native backend"));
    }
    let dynamic: &'static dyn PvMmuOps = (desc.instantiate)(&env).map_err(|e| e.to_string())?;
    let frames = FrameAllocator::new(phys, FRAMES);
    frames.add_free_range(Pfn(16), FRAMES - 16);
    frames.init_metadata();
    let mm: &dyn MmServices = &frames;
    let n_big = calls(mem);
    for args in ARGS {
        let stack = args == "stack";
        for op in OPS {
            for mode in MODES {
                let run = |n: u64| match mode {
                    "loop" => run_loop(&direct, mm, n, stack),
                    "direct" => run_op(op, &direct, mm, n, stack),
                    "static" => run_op(op, &stat, mm, n, stack),
                    _ => run_op(op, dynamic, mm, n, stack),
                };
                run(SMALL); // warm-up: first touches (e.g. the model's frame) are not measured
                for n in [SMALL, SMALL + n_big] {
                    cg::region(&format!("overhead/{mem}/{args}/{op}/{mode}/{n}"), || run(n));
                }
            }
        }
    }
    // The three backends wrote the same table: check it is there.
    if phys.read_entry(TABLE, INDEX) != ENTRY.0 {
        return Err("the entry was not written".into());
    }
    Ok(())
}

/// Instructions per iteration of one (mem, args, op, mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Memory model (`MEMS`).
    pub mem: String,
    /// Argument passing (`ARGS`).
    pub args: String,
    /// Operation (`OPS`).
    pub op: String,
    /// Way of calling (`MODES`).
    pub mode: String,
    /// `(Ir(SMALL + N) − Ir(SMALL)) / N`.
    pub ir: f64,
}

/// Every cell of one memory model.
#[derive(Debug, Clone, Default)]
pub struct Overhead {
    /// The cells.
    pub cells: Vec<Cell>,
}

impl Overhead {
    /// Ir per iteration of one cell.
    pub fn get(&self, mem: &str, args: &str, op: &str, mode: &str) -> Option<f64> {
        self.cells.iter().find(|c| c.mem == mem && c.args == args && c.op == op && c.mode == mode).map(|c| c.ir)
    }
}

/// The parent side: per-iteration costs from one child run over `mem`.
pub fn collect(mem: &str, run: &cg::ChildRun) -> Result<Overhead, String> {
    let n_big = calls(mem);
    let mut cells = Vec::new();
    for args in ARGS {
        for op in OPS {
            for mode in MODES {
                let label = |n: u64| format!("overhead/{mem}/{args}/{op}/{mode}/{n}");
                let small = run.ir(&label(SMALL)).ok_or_else(|| format!("no region {}", label(SMALL)))?;
                let big = run.ir(&label(SMALL + n_big)).ok_or_else(|| format!("no region {}", label(SMALL + n_big)))?;
                cells.push(Cell {
                    mem: mem.into(),
                    args: args.into(),
                    op: op.into(),
                    mode: mode.into(),
                    ir: big.saturating_sub(small) as f64 / n_big as f64,
                });
            }
        }
    }
    Ok(Overhead { cells })
}
