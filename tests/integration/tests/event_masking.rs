//! A vCPU's events are masked while its batch is open (xen64): an event
//! handler that uses the MMU never runs in the middle of a backend call, and
//! never adds to (or sees) a lazy section's half-built batch.
//!
//! The platform here has one vCPU whose "event" is pending all the time: it
//! is delivered at every hypercall made while events are unmasked, and when
//! they are unmasked again (as Xen delivers a pending upcall). The handler
//! flushes the TLB through the backend and checks, with the Xen model's own
//! counter, that its flush was issued at once — not refused as a re-entry,
//! not queued into the interrupted code's batch.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use kernel_glue::PageFlags;
use pvops::{CpuMask, Cpus, PvError, PvMmuOps};
use pvops_integration::platform::boot_backend;
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;
use pvops_native as _;
use pvops_xen64::abi::Call;
use pvops_xen64::{HypercallTransport, Outcome, XenPlatform};

const VA: u64 = 0x40_0000;

/// One vCPU with an event pending forever.
struct Irq {
    masked: AtomicBool,
    ops: OnceLock<&'static dyn PvMmuOps>,
    model: OnceLock<&'static XenModel>,
    delivered: AtomicU64,
    violations: Mutex<Vec<String>>,
}

thread_local! {
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

impl Irq {
    /// Delivers the event now if events are unmasked (and not already in the handler).
    fn maybe_deliver(&self) {
        if self.masked.load(Ordering::SeqCst) || IN_HANDLER.with(|h| h.get()) {
            return;
        }
        let (Some(ops), Some(model)) = (self.ops.get(), self.model.get()) else { return };
        IN_HANDLER.with(|h| h.set(true));
        // Xen masks events on entry to the upcall.
        let was = self.masked.swap(true, Ordering::SeqCst);
        self.delivered.fetch_add(1, Ordering::SeqCst);
        let before = model.counters().hypercalls;
        match ops.flush_tlb_all() {
            Err(e) => self.violations.lock().unwrap().push(format!("handler's flush refused: {e}")),
            Ok(()) if model.counters().hypercalls == before => {
                self.violations.lock().unwrap().push("handler's flush was queued into an open batch".into())
            }
            Ok(()) => {}
        }
        self.masked.store(was, Ordering::SeqCst);
        IN_HANDLER.with(|h| h.set(false));
    }
}

impl Cpus for Irq {
    fn this_cpu(&self) -> usize {
        0
    }
    fn online(&self) -> CpuMask {
        CpuMask::one(0)
    }
    fn mask_events(&self) -> bool {
        self.masked.swap(true, Ordering::SeqCst)
    }
    fn restore_events(&self, was_masked: bool) {
        self.masked.store(was_masked, Ordering::SeqCst);
        if !was_masked {
            self.maybe_deliver();
        }
    }
    fn call_on(&self, cpus: CpuMask, _f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError> {
        match cpus.without(0).iter().next() {
            Some(cpu) => Err(PvError::CpuOffline { cpu }),
            None => Ok(()),
        }
    }
}

/// The model's transport, with the pending event delivered before each trap.
struct Interrupting {
    model: &'static XenModel,
    irq: &'static Irq,
}

impl HypercallTransport for Interrupting {
    fn call(&self, call: &Call<'_>) -> Outcome {
        self.irq.maybe_deliver();
        self.model.call(call)
    }
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        self.irq.maybe_deliver();
        self.model.multicall(calls, outcomes)
    }
}

#[test]
fn an_event_handler_never_runs_inside_a_backend_call_or_an_open_batch() {
    let mut host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let irq: &'static Irq = Box::leak(Box::new(Irq {
        masked: AtomicBool::new(true),
        ops: OnceLock::new(),
        model: OnceLock::new(),
        delivered: AtomicU64::new(0),
        violations: Mutex::new(Vec::new()),
    }));
    let transport: &'static Interrupting = Box::leak(Box::new(Interrupting { model, irq }));
    let platform: &'static XenPlatform = Box::leak(Box::new(XenPlatform { transport, cpus: irq, ..model.platform() }));
    host.platform = platform;
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let b = boot_backend(desc, &host).expect("boot");
    let _ = irq.ops.set(b.ops);
    let _ = irq.model.set(model);
    irq.masked.store(false, Ordering::SeqCst);

    // Work with batches: maps into a pinned space (new tables in one
    // multicall), a lazy section spanning several calls, a fork, teardown.
    let mm = b.mm;
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    mm.ops().lazy_mmu_enter();
    for i in 1..40 {
        mm.map(&s, VA + (i << 21), PageFlags::DATA).unwrap();
    }
    mm.ops().flush_tlb_one(pvops::VirtAddr::try_new(VA).unwrap()).unwrap();
    mm.ops().lazy_mmu_leave().unwrap();
    let child = mm.fork(&s).unwrap();
    mm.unmap_range(&s, VA, 1 << 9).unwrap();
    mm.activate_init().unwrap();
    mm.exit(child).map_err(|(e, _)| e).unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();

    let delivered = irq.delivered.load(Ordering::SeqCst);
    assert!(delivered > 10, "the event was delivered only {delivered} times: the test exercised nothing");
    let v = irq.violations.lock().unwrap();
    assert!(
        v.is_empty(),
        "{} of {delivered} deliveries saw a backend call or batch in progress: {:?}",
        v.len(),
        &v[..v.len().min(3)]
    );
    assert!(!irq.masked.load(Ordering::SeqCst), "events left masked after the last call");
    model.check_quiescent().unwrap();
}
