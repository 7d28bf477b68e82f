//! Differential runs: one sequence of address-space operations applied to
//! every backend over its host model, checked against a reference after every
//! step and compared across backends. Used by the property tests and the fuzzer.

use std::collections::BTreeMap;

use kernel_glue::{AddressSpace, PageFlags};

use crate::platform::{boot_backend, platform_for_seeded, Booted, HostPlatform, DEFAULT_P2M_SEED};

/// One address-space operation.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    Create,
    Map { space: usize, page: u64, tag: u64 },
    Unmap { space: usize, page: u64 },
    Fork { space: usize },
    Switch { space: usize },
    SwitchInit,
    Exit { space: usize },
}

/// Pages spread over several L4/L3/L2/L1 tables.
/// The address of test page `page` (0..30).
pub fn page_va(page: u64) -> u64 {
    // page = 10a + 5b + c maps to L4 slot a, L2 slot b, L1 slot c: distinct pages, distinct tables.
    0x40_0000 + (page % 5) * 0x1000 + ((page / 5) % 2) * (1 << 21) + (page / 10) * (1 << 39)
}

/// One backend under test, with its own spaces.
pub struct Runner {
    name: &'static str,
    host: HostPlatform,
    booted: Booted,
    spaces: Vec<AddressSpace>,
    active: Option<usize>,
    free_at_start: u64,
}

/// The reference: per space, page → tag.
type Reference = Vec<BTreeMap<u64, u64>>;

/// Boots every registered backend on its host platform.
pub fn runners() -> Vec<Runner> {
    runners_seeded(DEFAULT_P2M_SEED)
}

/// [`runners`] with the Xen model's p2m scrambled from `p2m_seed`.
pub fn runners_seeded(p2m_seed: u64) -> Vec<Runner> {
    pvops::backends()
        .into_iter()
        .filter_map(|d| {
            let host = platform_for_seeded(d, p2m_seed)?;
            let booted = boot_backend(d, &host).ok()?;
            let free_at_start = booted.frames.free_count();
            Some(Runner { name: d.name, host, booted, spaces: Vec::new(), active: None, free_at_start })
        })
        .collect()
}

fn apply(r: &mut Runner, op: &Op, reference: &Reference) -> Result<(), String> {
    let mm = r.booted.mm;
    let n = r.spaces.len();
    match *op {
        Op::Create => r.spaces.push(mm.create().map_err(|e| e.to_string())?),
        Op::Map { space, page, tag } if space < n => {
            let va = page_va(page);
            let res = mm.map(&r.spaces[space], va, PageFlags::DATA);
            let expect_ok = !reference[space].contains_key(&page);
            match res {
                Ok(_) if expect_ok => mm.poke(&r.spaces[space], va, tag).map_err(|e| e.to_string())?,
                Err(pvops::PvError::AlreadyMapped { .. }) if !expect_ok => {}
                other => return Err(format!("map: {other:?}, expected ok={expect_ok}")),
            }
        }
        Op::Unmap { space, page } if space < n => {
            let res = mm.unmap(&r.spaces[space], page_va(page));
            let expect_ok = reference[space].contains_key(&page);
            if res.is_ok() != expect_ok {
                return Err(format!("unmap: {res:?}, expected ok={expect_ok}"));
            }
        }
        Op::Fork { space } if space < n => {
            let child = mm.fork(&r.spaces[space]).map_err(|e| e.to_string())?;
            r.spaces.push(child);
        }
        Op::Switch { space } if space < n => {
            mm.activate(&r.spaces[space]).map_err(|e| e.to_string())?;
            r.active = Some(space);
        }
        Op::SwitchInit => {
            mm.activate_init().map_err(|e| e.to_string())?;
            r.active = None;
        }
        Op::Exit { space } if space < n => {
            if r.active == Some(space) {
                mm.activate_init().map_err(|e| e.to_string())?;
                r.active = None;
            }
            let s = r.spaces.remove(space);
            mm.exit(s).map_err(|(e, _)| e.to_string())?;
            r.active = r.active.map(|a| if a > space { a - 1 } else { a });
        }
        _ => {}
    }
    Ok(())
}

fn update_reference(reference: &mut Reference, op: &Op) {
    let n = reference.len();
    match *op {
        Op::Create => reference.push(BTreeMap::new()),
        Op::Map { space, page, tag } if space < n => {
            reference[space].entry(page).or_insert(tag);
        }
        Op::Unmap { space, page } if space < n => {
            reference[space].remove(&page);
        }
        Op::Fork { space } if space < n => {
            let copy = reference[space].clone();
            reference.push(copy);
        }
        Op::Exit { space } if space < n => {
            reference.remove(space);
        }
        _ => {}
    }
}

/// After every step: contents match the reference, and what user mode can
/// reach in the active space is exactly the reference's pages.
fn check(r: &Runner, reference: &Reference) -> Result<Vec<(u64, bool)>, String> {
    let mm = r.booted.mm;
    for (i, (space, pages)) in r.spaces.iter().zip(reference).enumerate() {
        for page in 0..30u64 {
            let va = page_va(page);
            let t = mm.translate(space, va).map_err(|e| e.to_string())?;
            match (pages.get(&page), t) {
                (Some(&tag), Some(_)) => {
                    let got = mm.peek(space, va).map_err(|e| e.to_string())?;
                    if got != tag {
                        return Err(format!("space {i} page {page}: content {got} != {tag}"));
                    }
                }
                (None, None) => {}
                (want, got) => return Err(format!("space {i} page {page}: reference {want:?}, backend {got:?}")),
            }
        }
    }
    // The user-mode view of the active space (for the differential check).
    let mut view = Vec::new();
    for page in 0..30u64 {
        let va = page_va(page);
        let reachable = r.host.oracle.user_access(va, true).is_some();
        let expected = r.active.is_some_and(|a| reference[a].contains_key(&page));
        if reachable != expected {
            return Err(format!("user view of page {page}: reachable={reachable}, expected {expected}"));
        }
        view.push((va, reachable));
    }
    let pgds: Vec<_> = r.spaces.iter().map(|s| s.pgd()).collect();
    (r.host.invariants)(r.booted.frames, &pgds).map_err(|e| format!("model invariant: {e}"))?;
    Ok(view)
}

/// Runs `ops` on every registered backend; `Err` describes the first disagreement.
pub fn run_sequence(ops: &[Op]) -> Result<(), String> {
    run_sequence_on(&mut runners(), ops)
}

/// [`run_sequence`] with the Xen model's p2m scrambled from `p2m_seed`.
pub fn run_sequence_seeded(ops: &[Op], p2m_seed: u64) -> Result<(), String> {
    run_sequence_on(&mut runners_seeded(p2m_seed), ops)
}

/// [`run_sequence`] on already booted backends. A successful run leaves them
/// as it found them (every space exited, nothing pinned), so a fuzzer can
/// reuse them instead of booting (and leaking) new models for every input.
pub fn run_sequence_on(runners: &mut [Runner], ops: &[Op]) -> Result<(), String> {
    if runners.is_empty() {
        return Err("no backend could be booted".into());
    }
    let mut reference: Reference = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let mut views = Vec::new();
        for r in runners.iter_mut() {
            apply(r, op, &reference).map_err(|e| format!("step {step} {op:?} on {}: {e}", r.name))?;
        }
        update_reference(&mut reference, op);
        for r in runners.iter() {
            views.push((r.name, check(r, &reference).map_err(|e| format!("step {step} {op:?} on {}: {e}", r.name))?));
        }
        if let Some((first, v0)) = views.first() {
            for (name, v) in &views[1..] {
                if v != v0 {
                    return Err(format!("step {step}: user view differs between {first} and {name}"));
                }
            }
        }
    }
    for r in runners.iter_mut() {
        let mm = r.booted.mm;
        mm.activate_init().map_err(|e| e.to_string())?;
        r.active = None;
        for s in r.spaces.drain(..) {
            mm.exit(s).map_err(|(e, _)| format!("{}: final exit: {e}", r.name))?;
        }
        let free = r.booted.frames.free_count();
        if free != r.free_at_start {
            return Err(format!("{}: {} frame(s) leaked", r.name, r.free_at_start as i64 - free as i64));
        }
        (r.host.invariants)(r.booted.frames, &[]).map_err(|e| format!("{}: after all exits: {e}", r.name))?;
        (r.host.quiescent)().map_err(|e| format!("{}: after all exits: {e}", r.name))?;
    }
    Ok(())
}

/// Number of distinct test pages.
pub const PAGES: u64 = 30;

impl Op {
    /// Decodes fuzzer bytes into operations (3 bytes each; any input is valid).
    pub fn decode(bytes: &[u8]) -> Vec<Op> {
        bytes
            .chunks(3)
            .map(|c| {
                let (a, b, t) = (c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(1));
                let space = (b % 4) as usize;
                let page = u64::from(b / 4) % PAGES;
                match a % 16 {
                    0 | 1 => Op::Create,
                    2..=7 => Op::Map { space, page, tag: u64::from(t) + 1 },
                    8 | 9 => Op::Unmap { space, page },
                    10 => Op::Fork { space },
                    11..=13 => Op::Switch { space },
                    14 => Op::SwitchInit,
                    _ => Op::Exit { space },
                }
            })
            .collect()
    }
}
