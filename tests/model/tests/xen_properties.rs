//! Property test: random create / map / unmap / fork / switch / exit
//! sequences through kernel-glue on the xen64 backend over the Xen model.
//! After every step: no direct store to a live table, no crash, every user
//! pgd mirrors its kernel pgd below USER_LIMIT and is empty above it, and
//! user mode sees exactly the reference's pages. After all exits: no frame
//! leaked, no pin left.

use std::collections::BTreeMap;

use kernel_glue::{AddressSpace, FrameAllocator, Mm, PageFlags};
use proptest::prelude::*;
use pvops::{BootEnv, EntryKind, MmServices, Pfn, PhysMem};
use pvops_model::xen::XenModel;
use pvops_native as _;

const KERNEL_VA: u64 = 0xffff_8880_0000_0000;

#[derive(Clone, Debug)]
enum Op {
    Create,
    Map { space: usize, page: u64, tag: u64 },
    Unmap { space: usize, page: u64 },
    Fork { space: usize },
    Switch { space: usize },
    SwitchInit,
    Exit { space: usize },
}

/// Distinct pages over several L4/L2/L1 tables.
fn page_va(page: u64) -> u64 {
    0x40_0000 + (page % 4) * 0x1000 + ((page / 4) % 2) * (1 << 21) + (page / 8) * (1 << 39)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        6 => (0..3usize, 0..24u64, 1..1000u64).prop_map(|(space, page, tag)| Op::Map { space, page, tag }),
        2 => (0..3usize, 0..24u64).prop_map(|(space, page)| Op::Unmap { space, page }),
        1 => (0..3usize).prop_map(|space| Op::Fork { space }),
        3 => (0..3usize).prop_map(|space| Op::Switch { space }),
        1 => Just(Op::SwitchInit),
        1 => (0..3usize).prop_map(|space| Op::Exit { space }),
    ]
}

struct Guest {
    model: &'static XenModel,
    frames: &'static FrameAllocator<'static>,
    mm: &'static Mm<'static>,
}

fn boot(seed: u64) -> Guest {
    let model = XenModel::leaked(2048, seed);
    let platform: &'static pvops_xen64::XenPlatform = Box::leak(Box::new(model.platform()));
    let env = BootEnv { entry: EntryKind::XenPv, handover: "xen-3.0-x86_64", platform };
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 registered");
    let ops = (desc.instantiate)(&env).expect("instantiate");
    let frames: &'static FrameAllocator<'static> = Box::leak(Box::new(FrameAllocator::new(model, model.nr_pages())));
    frames.add_free_range(Pfn(0), model.nr_pages());
    for &r in model.reserved_pfns() {
        frames.reserve(r);
    }
    let mm: &'static Mm<'static> =
        Box::leak(Box::new(Mm::adopt_boot(ops, model, frames, model.pt_base()).expect("adopt")));
    let kpage = frames.alloc_zeroed_frame().expect("frame");
    mm.map_kernel(KERNEL_VA, kpage, true).expect("kernel page");
    frames.init_metadata();
    Guest { model, frames, mm }
}

/// Each space's pages: page → tag written in its first word.
type Reference = Vec<BTreeMap<u64, u64>>;

fn check(g: &Guest, spaces: &[AddressSpace], reference: &Reference, active: Option<usize>) -> Result<(), String> {
    g.model.check_invariants()?;
    g.model.check_user_pgd_mirrors(g.frames)?;
    for page in 0..24 {
        let seen = g.model.probe(page_va(page), true, false).ok().map(|f| PhysMem::read_entry(g.model, f, 0));
        let want = active.and_then(|a| reference[a].get(&page).copied());
        if seen != want {
            return Err(format!("page {page}: user mode sees {seen:?}, want {want:?}"));
        }
    }
    if spaces.len() != reference.len() {
        return Err("bookkeeping".into());
    }
    Ok(())
}

fn run(ops: &[Op], seed: u64) -> Result<(), String> {
    let g = boot(seed);
    let free_at_start = g.frames.free_frames();
    let mut spaces: Vec<AddressSpace> = Vec::new();
    let mut reference: Reference = Vec::new();
    let mut active: Option<usize> = None;
    for (step, op) in ops.iter().enumerate() {
        let at = |e: String| format!("step {step} {op:?}: {e}");
        match *op {
            Op::Create => {
                if spaces.len() < 3 {
                    spaces.push(g.mm.create().map_err(|e| at(e.to_string()))?);
                    reference.push(BTreeMap::new());
                }
            }
            Op::Map { space, page, tag } => {
                if space < spaces.len() && !reference[space].contains_key(&page) {
                    let va = page_va(page);
                    g.mm.map(&spaces[space], va, PageFlags::DATA).map_err(|e| at(e.to_string()))?;
                    g.mm.poke(&spaces[space], va, tag).map_err(|e| at(e.to_string()))?;
                    reference[space].insert(page, tag);
                }
            }
            Op::Unmap { space, page } => {
                if space < spaces.len() && reference[space].remove(&page).is_some() {
                    g.mm.unmap(&spaces[space], page_va(page)).map_err(|e| at(e.to_string()))?;
                }
            }
            Op::Fork { space } => {
                if space < spaces.len() && spaces.len() < 3 {
                    spaces.push(g.mm.fork(&spaces[space]).map_err(|e| at(e.to_string()))?);
                    reference.push(reference[space].clone());
                }
            }
            Op::Switch { space } => {
                if space < spaces.len() {
                    g.mm.activate(&mut spaces[space]).map_err(|e| at(e.to_string()))?;
                    active = Some(space);
                }
            }
            Op::SwitchInit => {
                g.mm.activate_init().map_err(|e| at(e.to_string()))?;
                active = None;
            }
            Op::Exit { space } => {
                if space < spaces.len() && active != Some(space) {
                    let s = spaces.remove(space);
                    reference.remove(space);
                    g.mm.exit(s).map_err(|(e, _)| at(e.to_string()))?;
                    active = active.map(|a| if a > space { a - 1 } else { a });
                }
            }
        }
        check(&g, &spaces, &reference, active).map_err(at)?;
    }
    g.mm.activate_init().map_err(|e| e.to_string())?;
    for s in spaces {
        g.mm.exit(s).map_err(|(e, _)| e.to_string())?;
    }
    g.model.check_quiescent()?;
    if g.frames.free_frames() != free_at_start {
        return Err(format!("{} frames leaked", free_at_start - g.frames.free_frames()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_address_space_lifecycles_keep_xens_rules(ops in prop::collection::vec(op(), 1..40), seed in 1..1000u64) {
        if let Err(e) = run(&ops, seed) {
            prop_assert!(false, "{}", e);
        }
    }
}
