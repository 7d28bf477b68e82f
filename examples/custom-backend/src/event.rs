//! One recorded MMU operation, and its one-line text form.

use core::fmt;
use core::str::FromStr;

use pvops::{Level, Pfn, Pte, VirtAddr};

/// An operation the wrapped backend performed (successfully).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `adopt_boot_root(pgd)`.
    AdoptBootRoot(Pfn),
    /// `frame_metadata_ready()`: the end of early boot.
    MetadataReady,
    /// `pgd_alloc(pgd)`.
    PgdAlloc(Pfn),
    /// `pgd_free(pgd)`.
    PgdFree(Pfn),
    /// `alloc_pt(root, level, pfn)`.
    AllocPt(Pfn, Level, Pfn),
    /// `release_pt(root, level, pfn)`.
    ReleasePt(Pfn, Level, Pfn),
    /// `set_entry(level, table, index, pte)`.
    SetEntry(Level, Pfn, usize, Pte),
    /// `write_cr3(pgd)`.
    WriteCr3(Pfn),
    /// `activate_mm(pgd)`.
    ActivateMm(Pfn),
    /// `exit_mm(pgd)`.
    ExitMm(Pfn),
    /// `flush_tlb_all()`.
    FlushAll,
    /// `flush_tlb_one(va)`.
    FlushOne(VirtAddr),
    /// `lazy_mmu_enter()`.
    LazyEnter,
    /// `lazy_mmu_leave()`.
    LazyLeave,
    /// `protect_commit(table, index, _, new)` (after its `protect_start`):
    /// the L1 slot's protection changed to `new`.
    Protect(Pfn, usize, Pte),
    /// `clear_accessed_dirty(table, index, bits)`.
    ClearAd(Pfn, usize, u64),
}

fn level_digit(l: Level) -> u8 {
    l as u8
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::AdoptBootRoot(p) => write!(f, "adopt {:#x}", p.0),
            Event::MetadataReady => write!(f, "metadata_ready"),
            Event::PgdAlloc(p) => write!(f, "pgd_alloc {:#x}", p.0),
            Event::PgdFree(p) => write!(f, "pgd_free {:#x}", p.0),
            Event::AllocPt(r, l, p) => write!(f, "alloc_pt {:#x} {} {:#x}", r.0, level_digit(l), p.0),
            Event::ReleasePt(r, l, p) => write!(f, "release_pt {:#x} {} {:#x}", r.0, level_digit(l), p.0),
            Event::SetEntry(l, t, i, e) => write!(f, "set {} {:#x} {} {:#x}", level_digit(l), t.0, i, e.0),
            Event::WriteCr3(p) => write!(f, "cr3 {:#x}", p.0),
            Event::ActivateMm(p) => write!(f, "activate {:#x}", p.0),
            Event::ExitMm(p) => write!(f, "exit {:#x}", p.0),
            Event::FlushAll => write!(f, "flush_all"),
            Event::FlushOne(va) => write!(f, "flush_one {:#x}", va.as_u64()),
            Event::LazyEnter => write!(f, "lazy_enter"),
            Event::LazyLeave => write!(f, "lazy_leave"),
            Event::Protect(t, i, e) => write!(f, "protect {:#x} {} {:#x}", t.0, i, e.0),
            Event::ClearAd(t, i, b) => write!(f, "clear_ad {:#x} {} {:#x}", t.0, i, b),
        }
    }
}

/// Why a trace line did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What was wrong.
    pub what: &'static str,
}

fn num(word: Option<&str>) -> Result<u64, ParseError> {
    let w = word.ok_or(ParseError { what: "missing field" })?;
    let r = match w.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => w.parse(),
    };
    r.map_err(|_| ParseError { what: "bad number" })
}

fn level(word: Option<&str>) -> Result<Level, ParseError> {
    match num(word)? {
        1 => Ok(Level::L1),
        2 => Ok(Level::L2),
        3 => Ok(Level::L3),
        4 => Ok(Level::L4),
        _ => Err(ParseError { what: "bad level" }),
    }
}

impl FromStr for Event {
    type Err = ParseError;

    /// Parses the text [`Event`]'s `Display` writes.
    ///
    /// ```
    /// use pvops_trace::Event;
    /// let e: Event = "set 1 0x20 5 0x8000000000042007".parse().unwrap();
    /// assert_eq!(e.to_string(), "set 1 0x20 5 0x8000000000042007");
    /// ```
    fn from_str(line: &str) -> Result<Self, ParseError> {
        let mut w = line.split_whitespace();
        let op = w.next().ok_or(ParseError { what: "empty line" })?;
        let pfn = |x: Result<u64, ParseError>| x.map(Pfn);
        let e = match op {
            "adopt" => Event::AdoptBootRoot(pfn(num(w.next()))?),
            "metadata_ready" => Event::MetadataReady,
            "pgd_alloc" => Event::PgdAlloc(pfn(num(w.next()))?),
            "pgd_free" => Event::PgdFree(pfn(num(w.next()))?),
            "alloc_pt" => Event::AllocPt(pfn(num(w.next()))?, level(w.next())?, pfn(num(w.next()))?),
            "release_pt" => Event::ReleasePt(pfn(num(w.next()))?, level(w.next())?, pfn(num(w.next()))?),
            "set" => {
                let l = level(w.next())?;
                let t = pfn(num(w.next()))?;
                let i = num(w.next())? as usize;
                Event::SetEntry(l, t, i, Pte(num(w.next())?))
            }
            "cr3" => Event::WriteCr3(pfn(num(w.next()))?),
            "activate" => Event::ActivateMm(pfn(num(w.next()))?),
            "exit" => Event::ExitMm(pfn(num(w.next()))?),
            "flush_all" => Event::FlushAll,
            "flush_one" => {
                Event::FlushOne(VirtAddr::try_new(num(w.next())?).map_err(|_| ParseError { what: "bad address" })?)
            }
            "lazy_enter" => Event::LazyEnter,
            "lazy_leave" => Event::LazyLeave,
            "protect" => {
                let t = pfn(num(w.next()))?;
                let i = num(w.next())? as usize;
                Event::Protect(t, i, Pte(num(w.next())?))
            }
            "clear_ad" => {
                let t = pfn(num(w.next()))?;
                let i = num(w.next())? as usize;
                Event::ClearAd(t, i, num(w.next())?)
            }
            _ => return Err(ParseError { what: "unknown operation" }),
        };
        if w.next().is_some() {
            return Err(ParseError { what: "trailing fields" });
        }
        Ok(e)
    }
}
