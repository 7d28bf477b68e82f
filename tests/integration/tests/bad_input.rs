//! Bad input to every public entry point, on every backend: each gets a
//! specific error, none panics, none changes state (every guest frame, the
//! allocator and the hypervisor traffic are compared before and after).
//!
//! The table in docs/RELIABILITY.md is rendered from these cases; set
//! `PVOPS_UPDATE_DOCS=1` to rewrite it after changing a case.

use std::collections::BTreeMap;
use std::fmt::Write;

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::{Level, MmServices, Pfn, Pte, PvError, PvMmuOps, ENTRIES_PER_TABLE};
use pvops_integration::platform::{boot_backend, platforms, Booted, HostPlatform};
use pvops_native as _;
use pvops_xen64 as _;

/// A snapshot of everything a bad call could have changed.
#[derive(PartialEq, Eq, Debug)]
struct Snapshot {
    frames: u64,
    memory_hash: u64,
    hypercalls: u64,
    active: Pfn,
}

fn snapshot(host: &HostPlatform, b: &Booted) -> Snapshot {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // Frames in use (tables, pages, the boot root). Free frames are covered by the
    // free count: a bad call that touched one would have had to allocate it.
    for f in (0..host.nr_frames).filter(|&f| !b.frames.is_free(Pfn(f))) {
        for i in 0..ENTRIES_PER_TABLE {
            let w = host.mem.read_entry(Pfn(f), i);
            if w != 0 {
                h = (h ^ w ^ (f << 9 | i as u64)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    Snapshot {
        frames: b.frames.free_count(),
        memory_hash: h,
        hypercalls: b.ops.stats().hypercalls,
        active: b.mm.active_pgd(),
    }
}

/// The fixture every case starts from: one active space with a page, one
/// inactive (never activated) space.
struct Fixture {
    active: AddressSpace,
    idle: AddressSpace,
}

type Check = fn(&Mm<'_>, &dyn PvMmuOps, &Fixture) -> Result<(), PvError>;

struct Case {
    entry_point: &'static str,
    input: &'static str,
    call: Check,
}

const VA: u64 = 0x40_0000;

fn cases() -> Vec<Case> {
    vec![
        Case {
            entry_point: "Mm::map",
            input: "unaligned address",
            call: |mm, _, f| mm.map(&f.active, VA + 8, PageFlags::DATA).map(|_| ()),
        },
        Case {
            entry_point: "Mm::map",
            input: "non-canonical address",
            call: |mm, _, f| mm.map(&f.active, 0x0000_9000_0000_0000, PageFlags::DATA).map(|_| ()),
        },
        Case {
            entry_point: "Mm::map",
            input: "address at USER_LIMIT",
            call: |mm, _, f| mm.map(&f.active, pvops::USER_LIMIT, PageFlags::DATA).map(|_| ()),
        },
        Case {
            entry_point: "Mm::map",
            input: "kernel-half address",
            call: |mm, _, f| mm.map(&f.active, 0xffff_8880_0000_0000, PageFlags::DATA).map(|_| ()),
        },
        Case {
            entry_point: "Mm::map",
            input: "page already mapped (duplicate)",
            call: |mm, _, f| mm.map(&f.active, VA, PageFlags::CODE).map(|_| ()),
        },
        Case {
            entry_point: "Mm::map",
            input: "a space another Mm made",
            call: |mm, _, f| {
                let other = Mm::adopt_boot(mm.ops(), mm.frames(), mm.init_pgd())?;
                other.map(&f.active, VA + 0x1000, PageFlags::DATA).map(|_| ())
            },
        },
        Case {
            entry_point: "Mm::unmap",
            input: "nothing mapped there",
            call: |mm, _, f| mm.unmap(&f.active, VA + 0x1000),
        },
        Case {
            entry_point: "Mm::unmap",
            input: "no tables at all there",
            call: |mm, _, f| mm.unmap(&f.active, 0x7000_0000_0000),
        },
        Case { entry_point: "Mm::unmap", input: "unaligned address", call: |mm, _, f| mm.unmap(&f.active, VA + 1) },
        Case {
            entry_point: "Mm::translate",
            input: "non-canonical address",
            call: |mm, _, f| mm.translate(&f.active, 1 << 63).map(|_| ()),
        },
        Case { entry_point: "Mm::peek", input: "unmapped address", call: |mm, _, f| mm.peek(&f.idle, VA).map(|_| ()) },
        Case { entry_point: "Mm::poke", input: "unmapped address", call: |mm, _, f| mm.poke(&f.idle, VA, 1) },
        Case {
            entry_point: "Mm::map_kernel",
            input: "address below USER_LIMIT",
            call: |mm, _, _| mm.map_kernel(VA, Pfn(5), false),
        },
        Case {
            entry_point: "Mm::map_kernel",
            input: "unaligned address",
            call: |mm, _, _| mm.map_kernel(0xffff_8880_0000_0010, Pfn(5), false),
        },
        Case {
            entry_point: "Mm::map_kernel",
            input: "hypervisor-reserved L4 slot (Xen 256..272)",
            call: |mm, ops, _| {
                if ops.reserved_l4_slots().is_empty() {
                    return Err(PvError::WrongState { what: "no reserved slots on this backend" });
                }
                mm.map_kernel(0xffff_8000_0000_0000, Pfn(5), false)
            },
        },
        Case {
            entry_point: "FrameAllocator::free_frame",
            input: "frame beyond memory",
            call: |mm, _, _| mm.frames().free_frame(Pfn(1 << 40)),
        },
        Case {
            entry_point: "FrameAllocator::free_frame",
            input: "frame already free (double free)",
            call: |mm, _, _| {
                let f = mm.frames().alloc_zeroed_frame()?;
                mm.frames().free_frame(f)?;
                mm.frames().free_frame(f)
            },
        },
        Case {
            entry_point: "FrameAllocator::set_private",
            input: "frame beyond memory",
            call: |mm, _, _| mm.frames().set_private(Pfn(1 << 40), 1),
        },
        Case {
            entry_point: "PvMmuOps::set_entry",
            input: "index 512",
            call: |mm, ops, f| ops.set_entry(mm.frames(), Level::L1, f.idle.pgd(), 512, Pte::EMPTY),
        },
        Case {
            entry_point: "PvMmuOps::read_entry",
            input: "index 4096",
            call: |_, ops, f| ops.read_entry(Level::L4, f.idle.pgd(), 4096).map(|_| ()),
        },
        Case {
            entry_point: "PvMmuOps::set_pgd",
            input: "hypervisor-reserved L4 slot",
            call: |mm, ops, f| {
                if ops.reserved_l4_slots().is_empty() {
                    return Err(PvError::WrongState { what: "no reserved slots on this backend" });
                }
                ops.set_pgd(mm.frames(), f.active.pgd(), 256, Pte::EMPTY)
            },
        },
        Case {
            entry_point: "PvMmuOps::exit_mm",
            input: "the loaded pgd",
            call: |mm, ops, f| ops.exit_mm(mm.frames(), f.active.pgd()),
        },
        Case {
            entry_point: "PvMmuOps::pgd_free",
            input: "the loaded pgd",
            call: |mm, ops, f| ops.pgd_free(mm.frames(), f.active.pgd()),
        },
        Case {
            entry_point: "PvMmuOps::activate_mm",
            input: "already pinned (pin twice)",
            call: |mm, ops, f| {
                if ops.name() == "native" {
                    return Err(PvError::WrongState { what: "native has no pins" });
                }
                ops.activate_mm(mm.frames(), f.active.pgd())
            },
        },
        Case {
            entry_point: "PvMmuOps::exit_mm",
            input: "not pinned (unpin what is not pinned)",
            call: |mm, ops, f| {
                if ops.name() == "native" {
                    return Err(PvError::WrongState { what: "native has no pins" });
                }
                ops.exit_mm(mm.frames(), f.idle.pgd())
            },
        },
        Case {
            entry_point: "PvMmuOps::pgd_alloc",
            input: "pgd that already has a user pgd",
            call: |mm, ops, f| {
                if ops.name() == "native" {
                    return Err(PvError::WrongState { what: "native attaches nothing" });
                }
                ops.pgd_alloc(mm.frames(), f.idle.pgd())
            },
        },
        Case {
            entry_point: "PvMmuOps::make_entry",
            input: "pfn with no machine frame",
            call: |_, ops, _| {
                if ops.name() == "native" {
                    return Err(PvError::WrongState { what: "native: every pfn is a machine frame" });
                }
                ops.make_entry(Pte::new(Pfn(1 << 30), 1)).map(|_| ())
            },
        },
    ]
}

fn setup(b: &Booted) -> Fixture {
    let mm = b.mm;
    let active = mm.create().expect("create");
    mm.map(&active, VA, PageFlags::DATA).expect("map");
    mm.activate(&active).expect("activate");
    let idle = mm.create().expect("create idle");
    Fixture { active, idle }
}

fn short(e: &PvError) -> String {
    let s = format!("{e:?}");
    s.split([' ', '{', '(']).next().unwrap_or_default().to_string()
}

#[test]
fn bad_input_gets_a_specific_error_and_changes_nothing() {
    let mut table: BTreeMap<(usize, &str), BTreeMap<&str, String>> = BTreeMap::new();
    let mut names = Vec::new();
    for host in platforms() {
        let desc = pvops::backends()
            .into_iter()
            .find(|d| (d.probe)(&host.env()).is_ok() && d.priority > i32::MIN)
            .expect("a backend");
        names.push(desc.name);
        let booted = boot_backend(desc, &host).expect("boot");
        let fx = setup(&booted);
        for (i, case) in cases().iter().enumerate() {
            let before = snapshot(&host, &booted);
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.call)(booted.mm, booted.ops, &fx)));
            let cell = match result {
                Err(_) => panic!("{} {} ({}): panicked", desc.name, case.entry_point, case.input),
                Ok(Ok(())) => panic!("{} {} ({}): accepted", desc.name, case.entry_point, case.input),
                Ok(Err(PvError::WrongState { what }))
                    if what.starts_with("native") || what.starts_with("no reserved") =>
                {
                    "n/a".to_string()
                }
                Ok(Err(e)) => short(&e),
            };
            let after = snapshot(&host, &booted);
            assert_eq!(before, after, "{} {} ({}): state changed", desc.name, case.entry_point, case.input);
            table.entry((i, case.entry_point)).or_default().insert(desc.name, cell);
        }
        (host.invariants)(booted.frames, &[fx.active.pgd(), fx.idle.pgd()]).expect("model invariants hold");
    }
    // Render the table and compare with the doc.
    let mut md = String::from("| entry point | bad input |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    md.push_str("\n|---|---|");
    for _ in &names {
        md.push_str("---|");
    }
    md.push('\n');
    let cs = cases();
    for ((i, ep), cells) in &table {
        let _ = write!(md, "| `{ep}` | {} |", cs[*i].input);
        for n in &names {
            let _ = write!(md, " {} |", cells.get(n).map_or("", String::as_str));
        }
        md.push('\n');
    }
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/RELIABILITY.md");
    let doc = std::fs::read_to_string(doc_path).unwrap_or_default();
    let begin = "<!-- bad-input table: generated by tests/integration/tests/bad_input.rs -->\n";
    let end = "<!-- end of bad-input table -->";
    if std::env::var_os("PVOPS_UPDATE_DOCS").is_some() {
        let (head, tail) = match (doc.find(begin), doc.find(end)) {
            (Some(b), Some(e)) => (doc[..b].to_string(), doc[e..].to_string()),
            _ => (doc.clone() + "\n", end.to_string() + "\n"),
        };
        std::fs::write(doc_path, format!("{head}{begin}{md}{tail}")).expect("write doc");
    } else {
        assert!(
            doc.contains(&format!("{begin}{md}")),
            "docs/RELIABILITY.md is out of date; rerun with PVOPS_UPDATE_DOCS=1:\n{md}"
        );
    }
    println!("{} bad inputs on {} backends", cs.len(), names.len());
}
