//! Unmapping from the loaded space on Xen is one hypercall: the entry update
//! and its TLB flush in one batch, cleared first, flushed second, and the
//! frame freed only after both. Counted by the Xen model (its own counters)
//! and observed by a transport that records every trap on its way to the model.

use std::cell::Cell;
use std::sync::Mutex;

use kernel_glue::{FrameAllocator, PageFlags};
use pvops::Pfn;
use pvops_integration::platform::boot_backend;
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;
use pvops_native as _;
use pvops_xen64::abi::{mmuext, Call};
use pvops_xen64::{HypercallTransport, Outcome, XenPlatform};

const VA: u64 = 0x40_0000;

thread_local! {
    /// The allocator, for the recorder to ask whether the watched frame is free
    /// (the backend calls the transport on the test's thread).
    static FRAMES: Cell<Option<&'static FrameAllocator<'static>>> = const { Cell::new(None) };
}

/// What one trap carried, in order: `"mmu_update(n)"`, `"invlpg"`, …, and
/// whether the watched frame was still allocated when it was issued.
struct Recorder {
    model: &'static XenModel,
    watched: Mutex<Option<Pfn>>,
    traps: Mutex<Vec<(Vec<String>, bool)>>,
}

fn describe(c: &Call<'_>) -> Vec<String> {
    match c {
        Call::MmuUpdate(r) => vec![format!("mmu_update({})", r.len())],
        Call::MmuextOp(ops) => ops
            .iter()
            .map(|o| if o.cmd == mmuext::INVLPG_LOCAL { "invlpg".into() } else { mmuext::name(o.cmd).into() })
            .collect(),
        Call::UpdateVaMapping { flags, .. } => vec![format!("update_va_mapping(flags {flags})")],
    }
}

impl Recorder {
    fn note(&self, calls: &[Call<'_>]) {
        let allocated = match (*self.watched.lock().unwrap(), FRAMES.with(Cell::get)) {
            (Some(pfn), Some(f)) => !f.is_free(pfn),
            _ => true,
        };
        self.traps.lock().unwrap().push((calls.iter().flat_map(describe).collect(), allocated));
    }
}

impl HypercallTransport for Recorder {
    fn call(&self, call: &Call<'_>) -> Outcome {
        self.note(std::slice::from_ref(call));
        self.model.call(call)
    }
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        self.note(calls);
        self.model.multicall(calls, outcomes)
    }
}

#[test]
fn unmap_from_the_loaded_space_is_one_hypercall_clear_then_flush_then_free() {
    let mut host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let rec: &'static Recorder =
        Box::leak(Box::new(Recorder { model, watched: Mutex::new(None), traps: Mutex::new(Vec::new()) }));
    let platform: &'static XenPlatform = Box::leak(Box::new(XenPlatform { transport: rec, ..model.platform() }));
    host.platform = platform;
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let b = boot_backend(desc, &host).expect("boot");
    FRAMES.with(|f| f.set(Some(b.frames)));
    let mm = b.mm;
    let s = mm.create().unwrap();
    let frame = mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.map(&s, VA + 0x1000, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    assert_eq!(host.oracle.user_access(VA, false), Some(frame));

    *rec.watched.lock().unwrap() = Some(frame);
    rec.traps.lock().unwrap().clear();
    model.reset_counters();
    mm.unmap(&s, VA).unwrap();
    let c = model.counters();
    assert_eq!(c.hypercalls, 1, "one trap into Xen: {c:?}");
    assert_eq!((c.mmu_updates, c.invlpgs + c.tlb_flushes), (1, 1), "the clear and one flush: {c:?}");
    let traps = rec.traps.lock().unwrap().clone();
    assert_eq!(
        traps,
        vec![(vec!["mmu_update(1)".to_string(), "invlpg".to_string()], true)],
        "clear, then flush, frame not yet free"
    );
    assert!(b.frames.is_free(frame), "then the frame is freed");
    assert_eq!(host.oracle.user_access(VA, false), None);

    // Not loaded: no flush at all, still one trap (the clear of a pinned L1).
    mm.activate_init().unwrap();
    model.reset_counters();
    mm.unmap(&s, VA + 0x1000).unwrap();
    let c = model.counters();
    assert_eq!((c.hypercalls, c.mmu_updates, c.invlpgs + c.tlb_flushes), (1, 1, 0), "{c:?}");
    assert_eq!(b.ops.read_cr3(), mm.init_pgd());
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}
