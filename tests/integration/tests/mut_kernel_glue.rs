//! Behaviours of kernel-glue that `cargo mutants` found no test pinning
//! (docs/RELIABILITY.md, "Mutation testing"). Each check asks an oracle
//! outside kernel-glue: the caller's own input, the models' page walks and
//! TLBs, or the Xen model's pin state and counters.

use std::sync::atomic::{AtomicBool, Ordering};

use kernel_glue::PageFlags;
use pvops::{Pfn, PvError, VirtAddr};
use pvops_integration::platform::{assert_invariants, boot_backend, boot_builtin_backends, Booted, HostPlatform};
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;
use pvops_native::NativePlatform;
use pvops_xen64::abi::{errno, Call};
use pvops_xen64::{HypercallTransport, Outcome, XenPlatform};

const VA: u64 = 0x40_0000;
/// In an L4 slot of its own: mapping it builds three tables, one batch.
const FAR_VA: u64 = VA + (3 << 39);

/// `translate` gives back the permissions `map` was given, for every
/// combination a user page can have; fork copies them; user mode (the
/// models' page walk) may write exactly the writable ones.
#[test]
fn translate_and_fork_keep_every_permission_map_was_given() {
    let perms = [PageFlags::DATA, PageFlags::CODE, PageFlags::RODATA, PageFlags { writable: true, executable: true }];
    for (name, host, booted) in boot_builtin_backends() {
        let mm = booted.mm;
        let s = mm.create().expect("create");
        let vas: Vec<u64> = (0..perms.len() as u64).map(|i| VA + i * 0x1000).collect();
        let frames: Vec<Pfn> = vas.iter().zip(perms).map(|(&va, p)| mm.map(&s, va, p).expect("map")).collect();
        let child = mm.fork(&s).expect("fork");
        mm.activate(&s).expect("activate");
        for ((&va, perm), frame) in vas.iter().zip(perms).zip(&frames) {
            assert_eq!(mm.translate(&s, va).expect("translate"), Some((*frame, perm)), "{name}: {va:#x}");
            let (_, child_perm) = mm.translate(&child, va).expect("translate").expect("child has the page");
            assert_eq!(child_perm, perm, "{name}: fork kept {va:#x}'s permissions");
            assert_eq!(host.oracle.user_access(va, false), Some(*frame), "{name}: {va:#x} readable");
            let written = host.oracle.user_access(va, true);
            assert_eq!(written, perm.writable.then_some(*frame), "{name}: {va:#x} writable iff asked");
        }
        mm.activate(&child).expect("activate child");
        for (&va, perm) in vas.iter().zip(perms) {
            let w = host.oracle.user_access(va, true).is_some();
            assert_eq!(w, perm.writable, "{name}: child's {va:#x} writable iff the parent's was");
        }
        mm.activate_init().expect("init");
        mm.exit(child).map_err(|(e, _)| e).expect("exit child");
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
        assert_invariants(name, &host, &booted, "after exit");
    }
}

/// `poke` and `peek` reach the word at `addr` inside its page, as the
/// memory itself holds it (read through the frame user mode reaches); on an
/// unmapped page the error names that page, not the offset.
#[test]
fn poke_and_peek_reach_the_word_inside_the_page_and_name_the_page_when_unmapped() {
    for (name, host, booted) in boot_builtin_backends() {
        let mm = booted.mm;
        let s = mm.create().expect("create");
        mm.map(&s, VA, PageFlags::DATA).expect("map");
        mm.activate(&s).expect("activate");
        let frame = host.oracle.user_access(VA, false).expect("mapped");
        for (offset, value) in [(0x8u64, 0x1111), (0x7f8, 0x2222), (0xff8, 0x3333)] {
            mm.poke(&s, VA + offset, value).expect("poke");
            assert_eq!(host.mem.read_entry(frame, (offset / 8) as usize), value, "{name}: word at +{offset:#x}");
            assert_eq!(mm.peek(&s, VA + offset), Ok(value), "{name}: peek +{offset:#x}");
        }
        let page = VA + 0x5000;
        let not_mapped = Err(PvError::NotMapped { addr: VirtAddr::try_new(page).expect("va") });
        assert_eq!(mm.peek(&s, page + 0x18), not_mapped, "{name}: peek");
        assert_eq!(mm.poke(&s, page + 0x18, 1), not_mapped.map(|_: u64| ()), "{name}: poke");
        mm.activate_init().expect("init");
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
    }
}

/// `Mm`'s `Debug` names the backend and `init_mm`'s root (the platform's boot root).
#[test]
fn mm_debug_names_the_backend_and_the_boot_root() {
    for (name, host, booted) in boot_builtin_backends() {
        let text = format!("{:?}", booted.mm);
        assert!(text.contains(name), "{text}");
        assert!(text.contains(&format!("{:?}", host.boot_pgd)), "{text}");
    }
}

/// `is_pinned` is false until the first activation and true from then on;
/// on Xen the model's own pin state agrees.
#[test]
fn is_pinned_follows_the_first_activation() {
    for (name, host, booted) in boot_builtin_backends() {
        let mm = booted.mm;
        let s = mm.create().expect("create");
        assert!(!s.is_pinned(), "{name}: new space");
        if let Some(x) = host.xen {
            assert!(!x.is_pinned(s.pgd()), "xen model: new space");
        }
        mm.activate(&s).expect("activate");
        mm.activate_init().expect("init");
        assert!(s.is_pinned(), "{name}: after activation");
        if let Some(x) = host.xen {
            assert!(x.is_pinned(s.pgd()), "xen model: after activation");
        }
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
    }
}

/// `active_pgd` names the root the hardware (native machine's cr3, Xen's
/// kernel base pointer) has loaded, after every switch.
#[test]
fn active_pgd_is_the_root_really_loaded() {
    for (name, host, booted) in boot_builtin_backends() {
        let mm = booted.mm;
        // The model's register, not the backend's view of it.
        let loaded = || match host.xen {
            Some(x) => x.pfn_of(x.kernel_base()).expect("guest frame"),
            None => {
                let native = host.platform.downcast_ref::<NativePlatform>().expect("native platform");
                Pfn::containing(native.cpu.read_cr3() & pvops::pte::flags::ADDR_MASK)
            }
        };
        let s = mm.create().expect("create");
        assert_eq!(mm.active_pgd(), loaded(), "{name}: boot root");
        assert_eq!(loaded(), host.boot_pgd, "{name}");
        mm.activate(&s).expect("activate");
        assert_eq!(mm.active_pgd(), loaded(), "{name}: after activate");
        assert_eq!(loaded(), s.pgd(), "{name}");
        mm.activate_init().expect("init");
        assert_eq!(mm.active_pgd(), loaded(), "{name}: after activate_init");
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
    }
}

/// A transport in front of the Xen model that, once armed, runs the next
/// multicall in full and then fails it as `do_multicall`
/// (xen/common/multicall.c) does when it cannot copy the last entry's result
/// back to the guest: -EFAULT, that result never written (the guest still
/// sees its not-run marker) although the entry took effect. Optionally arms
/// a refusal of the sub-operation right after it.
struct LostResult {
    model: &'static XenModel,
    armed: AtomicBool,
    then_refuse: AtomicBool,
}

impl HypercallTransport for LostResult {
    fn call(&self, call: &Call<'_>) -> Outcome {
        self.model.call(call)
    }
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        let status = self.model.multicall(calls, outcomes);
        if !self.armed.swap(false, Ordering::SeqCst) || status != 0 {
            return status;
        }
        if let Some(last) = outcomes.last_mut() {
            *last = Outcome::NOT_RUN;
        }
        if self.then_refuse.load(Ordering::SeqCst) {
            self.model.inject_subop_failure(0, -errno::EINVAL);
        }
        -errno::EFAULT
    }
}

struct Lossy {
    host: HostPlatform,
    booted: Booted,
    model: &'static XenModel,
    transport: &'static LostResult,
}

fn lossy_xen() -> Lossy {
    let mut host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let transport: &'static LostResult =
        Box::leak(Box::new(LostResult { model, armed: AtomicBool::new(false), then_refuse: AtomicBool::new(false) }));
    let platform: &'static XenPlatform = Box::leak(Box::new(XenPlatform { transport, ..model.platform() }));
    host.platform = platform;
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let booted = boot_backend(desc, &host).expect("boot");
    Lossy { host, booted, model, transport }
}

/// A map whose batch took effect in full but is reported failed: `map`
/// takes it all back. In the loaded space the page was reachable, so it is
/// freed only after a TLB flush (the model's TLB records a hazard
/// otherwise); in a space not loaded the take-back adds no flush of its own
/// (counted by the model). Either way nothing leaks and nothing stays mapped.
#[test]
fn a_map_reported_failed_after_it_took_effect_is_taken_back_flushed_only_if_loaded() {
    let t = lossy_xen();
    let (mm, frames, model) = (t.booted.mm, t.booted.frames, t.model);
    let s = mm.create().expect("create");
    let idle = mm.create().expect("create idle");
    mm.map(&s, VA, PageFlags::DATA).expect("map");
    // Both pinned (maps into them are hypercalls), `s` loaded.
    mm.activate(&idle).expect("activate idle");
    mm.activate(&s).expect("activate");
    assert!(t.host.oracle.user_access(VA, true).is_some(), "user mode uses the space");

    for (space, loaded) in [(&s, true), (&idle, false)] {
        let free_before = frames.free_count();
        t.transport.armed.store(true, Ordering::SeqCst);
        model.reset_counters();
        let r = mm.map(space, FAR_VA, PageFlags::DATA);
        assert!(!t.transport.armed.load(Ordering::SeqCst), "the map's batch was a multicall");
        assert!(matches!(r, Err(PvError::Hypercall { .. })), "loaded {loaded}: {r:?}");
        let c = model.counters();
        // Loaded: the take-back flushes, and the tables' undo flushes again
        // before freeing them. Not loaded anywhere (a cr3 switch flushed
        // it when this CPU left): no TLB can reach them, no flush.
        assert_eq!(c.tlb_flushes, 2 * u64::from(loaded), "loaded {loaded}: full flushes {c:?}");
        if let Err(e) = (t.host.invariants)(frames, &[]) {
            panic!("loaded {loaded}: {e}");
        }
        assert_eq!(mm.translate(space, FAR_VA), Ok(None), "loaded {loaded}: taken back");
        assert_eq!(t.host.oracle.user_access(FAR_VA, false), None, "loaded {loaded}");
        assert_eq!(frames.free_count(), free_before, "loaded {loaded}: page and tables freed again");
    }
    mm.activate_init().expect("init");
    mm.exit(s).map_err(|(e, _)| e).expect("exit");
    mm.exit(idle).map_err(|(e, _)| e).expect("exit idle");
    model.check_quiescent().expect("quiescent");
}

/// As above, and Xen refuses the clear that takes the map back: the page
/// stays mapped (user mode reaches it, per the model), neither it nor a
/// table is freed, and `exit` frees it all later.
#[test]
fn a_map_whose_take_back_is_refused_stays_mapped_and_exit_frees_it() {
    let t = lossy_xen();
    let (mm, frames, model) = (t.booted.mm, t.booted.frames, t.model);
    let free_at_start = frames.free_count();
    let s = mm.create().expect("create");
    mm.map(&s, VA, PageFlags::DATA).expect("map");
    mm.activate(&s).expect("activate");

    t.transport.armed.store(true, Ordering::SeqCst);
    t.transport.then_refuse.store(true, Ordering::SeqCst);
    let r = mm.map(&s, FAR_VA, PageFlags::DATA);
    let still_armed = model.clear_injections();
    assert!(!still_armed, "the clear was refused");
    assert!(matches!(r, Err(PvError::Hypercall { .. })), "{r:?}");
    if let Err(e) = (t.host.invariants)(frames, &[]) {
        panic!("{e}");
    }
    let frame = t.host.oracle.user_access(FAR_VA, true).expect("still mapped, per the model");
    assert!(!frames.is_free(frame), "a page user mode reaches is not free");
    assert_eq!(mm.translate(&s, FAR_VA).expect("translate").map(|m| m.0), Some(frame), "translate says so");

    mm.activate_init().expect("init");
    mm.exit(s).map_err(|(e, _)| e).expect("exit");
    assert_eq!(frames.free_count(), free_at_start, "exit freed the page and its tables");
    model.check_quiescent().expect("quiescent");
}
