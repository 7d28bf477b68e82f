//! A recorded trace replays onto a fresh machine and rebuilds the same page tables.

use kernel_glue::{Mm, PageFlags};
use pvops::{Pfn, PvMmuOps};
use pvops_model::host::{self, Platform};
use pvops_native as _;
use pvops_native::NativeBackend;
use pvops_trace::{replay, Event, TraceBackend};

const FRAMES: u64 = 256;

#[test]
fn replaying_a_trace_rebuilds_identical_page_tables() {
    // A host machine, its backend wrapped in a trace.
    let h = host::native(FRAMES).expect("a native host");
    let trace: &'static TraceBackend = Box::leak(Box::new(TraceBackend::new(h.ops)));
    let mm = Mm::adopt_boot(trace, h.frames, h.boot_pgd).expect("boot");
    let (original, frames) = (h.machine, h.frames);
    let a = mm.create().expect("create");
    for i in 0..5 {
        mm.map(&a, 0x40_0000 + i * 0x1000 + i * (1 << 39), PageFlags::DATA).expect("map");
    }
    mm.activate(&a).expect("activate");
    let b = mm.fork(&a).expect("fork");
    mm.unmap(&a, 0x40_0000).expect("unmap");
    // A protection change and an A/D clear of a's second page (L1 slot 1).
    let page = pvops::VirtAddr::new_const(0x40_1000 + (1 << 39));
    let mut l1 = a.pgd();
    for level in [pvops::Level::L4, pvops::Level::L3, pvops::Level::L2] {
        l1 = trace.read_entry(level, l1, page.index(level)).expect("walk").pfn();
    }
    assert_eq!(page.index(pvops::Level::L1), 1);
    let old = trace.protect_start(frames, l1, 1).expect("protect_start");
    let ro = pvops::Pte::new(old.pfn(), old.flags() & !pvops::pte::flags::WRITABLE);
    trace.protect_commit(frames, l1, 1, old, ro).expect("protect_commit");
    trace.clear_accessed_dirty(frames, l1, 1, pvops::pte::flags::ACCESSED).expect("clear");
    let text = trace.trace_text();
    assert!(text.lines().count() > 20, "trace too short:\n{text}");
    assert!(text.contains("cr3 "), "switch not recorded");
    assert!(text.contains("protect ") && text.contains("clear_ad "), "protection change not recorded:\n{text}");

    // Replay onto a fresh machine (data frames are not part of the trace: compare tables).
    let fresh = Platform::native(FRAMES, 1);
    let copy = fresh.machine;
    let target: &'static dyn PvMmuOps = Box::leak(Box::new(NativeBackend::new(copy, copy)));
    let frames2 = fresh.frames();
    frames2.init_metadata();
    let n = replay(&text, target, frames2).expect("replays");
    assert_eq!(n, text.lines().count());
    let tables: Vec<Pfn> = trace
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::AllocPt(_, _, p) | Event::PgdAlloc(p) => Some(*p),
            _ => None,
        })
        .chain([a.pgd(), b.pgd()])
        .collect();
    for t in tables {
        for i in 0..512 {
            assert_eq!(original.read(t.0, i), copy.read(t.0, i), "table {t:?} slot {i}");
        }
    }
    assert_eq!(copy.cr3(), original.cr3(), "cr3 differs after replay");
    mm.activate_init().expect("init");
    mm.exit(a).map_err(|(e, _)| e).expect("exit a");
    mm.exit(b).map_err(|(e, _)| e).expect("exit b");
}

#[test]
fn bad_trace_lines_are_reported_with_their_line_number() {
    let p = Platform::native(FRAMES, 1);
    let target: &'static dyn PvMmuOps = Box::leak(Box::new(NativeBackend::new(p.machine, p.machine)));
    let frames = p.frames();
    let err = replay("flush_all\nset 9 0x1 0 0x0\n", target, frames).expect_err("bad level");
    assert!(matches!(err, pvops_trace::ReplayError::Parse { line: 2, .. }), "{err:?}");
    let err = replay("set 1 0x5 600 0x0\n", target, frames).expect_err("bad index");
    assert!(matches!(err, pvops_trace::ReplayError::Op { line: 1, .. }), "{err:?}");
}

#[test]
fn every_event_round_trips_through_text() {
    use pvops::{Level, Pte, VirtAddr};
    let events = [
        Event::AdoptBootRoot(Pfn(1)),
        Event::MetadataReady,
        Event::PgdAlloc(Pfn(2)),
        Event::PgdFree(Pfn(2)),
        Event::AllocPt(Pfn(2), Level::L3, Pfn(3)),
        Event::ReleasePt(Pfn(2), Level::L1, Pfn(4)),
        Event::SetEntry(Level::L4, Pfn(2), 511, Pte(0x8000_0000_0004_2007)),
        Event::WriteCr3(Pfn(2)),
        Event::ActivateMm(Pfn(2)),
        Event::ExitMm(Pfn(2)),
        Event::FlushAll,
        Event::FlushOne(VirtAddr::new_const(0xffff_8880_0000_1000)),
        Event::LazyEnter,
        Event::LazyLeave,
        Event::Protect(Pfn(5), 17, Pte(0x8000_0000_0004_2005)),
        Event::ClearAd(Pfn(5), 17, 0x60),
    ];
    for e in events {
        assert_eq!(e.to_string().parse::<Event>(), Ok(e), "{e}");
    }
}
