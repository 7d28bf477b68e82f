//! Finding the CPUs natively: RSDP → RSDT/XSDT → MADT ("APIC"), its
//! enabled local-APIC entries (ACPI 6.5 §5.2.12; smp-notes §5.1).
//!
//! Tables are read through the boot mapping of the first GiB
//! (`KERNEL_VMA + paddr`, live for the whole run): QEMU puts them there.

use crate::entry::KERNEL_VMA;

/// Physical memory reachable through the boot mapping.
const BOOT_MAP_LIMIT: u64 = 1 << 30;

/// Most CPUs we record from the MADT.
pub const MAX_LAPICS: usize = super::NR_CPUS;

/// Why the CPU list could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP address in the PVH start info.
    NoRsdp,
    /// A table lies beyond the first GiB.
    Unreachable(u64),
    /// Bad signature or checksum (what, where).
    Bad(&'static str, u64),
    /// The RSDT/XSDT lists no MADT.
    NoMadt,
}

/// The MADT's view of the CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Madt {
    /// Local APIC physical address (MADT header; an address override
    /// entry replaces it).
    pub lapic_base: u64,
    /// APIC ids of the enabled local APICs, in table order.
    pub apic_ids: [u32; MAX_LAPICS],
    /// How many of `apic_ids` are valid.
    pub count: usize,
    /// Enabled entries beyond [`MAX_LAPICS`] (ignored).
    pub skipped: usize,
    /// Entries present but disabled (flags bit 0 clear: e.g. `maxcpus`).
    pub disabled: usize,
}

fn read_bytes<const N: usize>(paddr: u64) -> Result<[u8; N], AcpiError> {
    if paddr.saturating_add(N as u64) > BOOT_MAP_LIMIT {
        return Err(AcpiError::Unreachable(paddr));
    }
    // SAFETY: below 1 GiB, which the boot tables map at KERNEL_VMA for the
    // whole run; the read has no side effect (firmware tables in RAM).
    Ok(unsafe { ((KERNEL_VMA + paddr) as *const [u8; N]).read_unaligned() })
}

fn u8_at(paddr: u64) -> Result<u8, AcpiError> {
    Ok(read_bytes::<1>(paddr)?[0])
}

fn u32_at(paddr: u64) -> Result<u32, AcpiError> {
    Ok(u32::from_le_bytes(read_bytes::<4>(paddr)?))
}

fn u64_at(paddr: u64) -> Result<u64, AcpiError> {
    Ok(u64::from_le_bytes(read_bytes::<8>(paddr)?))
}

fn checksum_ok(paddr: u64, len: u64) -> Result<bool, AcpiError> {
    let mut sum = 0u8;
    for i in 0..len {
        sum = sum.wrapping_add(u8_at(paddr + i)?);
    }
    Ok(sum == 0)
}

/// A system description table at `paddr` with signature `sig`: its length.
fn table(paddr: u64, sig: &[u8; 4]) -> Result<u64, AcpiError> {
    let len = u32_at(paddr + 4)? as u64;
    if &read_bytes::<4>(paddr)? != sig || len < 36 || !checksum_ok(paddr, len)? {
        return Err(AcpiError::Bad("table", paddr));
    }
    Ok(len)
}

fn sig_str(sig: &[u8; 4]) -> &str {
    core::str::from_utf8(sig).unwrap_or("table")
}

/// Reads the MADT reachable from the RSDP at `rsdp`.
pub fn read_madt(rsdp: u64) -> Result<Madt, AcpiError> {
    if rsdp == 0 {
        return Err(AcpiError::NoRsdp);
    }
    if &read_bytes::<8>(rsdp)? != b"RSD PTR " || !checksum_ok(rsdp, 20)? {
        return Err(AcpiError::Bad("RSDP", rsdp));
    }
    // Revision 0 (QEMU's SeaBIOS): RSDT only, u32 entries; 2+: XSDT, u64.
    let revision = u8_at(rsdp + 15)?;
    let xsdt = if revision >= 2 { u64_at(rsdp + 24)? } else { 0 };
    let (root, sig, width) = if xsdt != 0 { (xsdt, b"XSDT", 8) } else { (u32_at(rsdp + 16)? as u64, b"RSDT", 4) };
    let len = match table(root, sig) {
        Ok(len) => len,
        // Measured under Xen 4.17 as PVH dom0 on QEMU (host RSDP revision 0):
        // the XSDT Xen builds for dom0 (`pvh_setup_acpi_xsdt`,
        // xen/arch/x86/hvm/dom0_build.c) has a valid length and checksum but
        // garbage in its signature and OEM fields. Xen is the firmware there,
        // so the checksum is what we can still check.
        Err(e) if crate::platform::is_xen_pvh() => {
            let len = u32_at(root + 4)? as u64;
            if len < 36 || !checksum_ok(root, len)? {
                return Err(e);
            }
            log::warn!("acpi: Xen's {} at {root:#x} has a bad signature; its checksum holds, using it", sig_str(sig));
            len
        }
        Err(e) => return Err(e),
    };
    let mut madt = None;
    for i in 0..(len - 36) / width {
        let at = root + 36 + i * width;
        let t = if width == 8 { u64_at(at)? } else { u32_at(at)? as u64 };
        if &read_bytes::<4>(t)? == b"APIC" {
            madt = Some(t);
            break;
        }
    }
    let madt = madt.ok_or(AcpiError::NoMadt)?;
    let len = table(madt, b"APIC")?;
    let mut out =
        Madt { lapic_base: u32_at(madt + 36)? as u64, apic_ids: [0; MAX_LAPICS], count: 0, skipped: 0, disabled: 0 };
    let mut at = madt + 44;
    while at + 2 <= madt + len {
        let (kind, elen) = (u8_at(at)?, u8_at(at + 1)? as u64);
        if elen < 2 || at + elen > madt + len {
            return Err(AcpiError::Bad("MADT entry", at));
        }
        let enabled_id = match kind {
            // Processor local APIC {acpi_id @2, apic_id @3, flags u32 @4}.
            0 if elen >= 8 => Some((u32_at(at + 4)? & 1 != 0, u8_at(at + 3)? as u32)),
            // Processor local x2APIC {x2apic_id u32 @4, flags @8}.
            9 if elen >= 12 => Some((u32_at(at + 8)? & 1 != 0, u32_at(at + 4)?)),
            // Local APIC address override {u64 @4}.
            5 if elen >= 12 => {
                out.lapic_base = u64_at(at + 4)?;
                None
            }
            _ => None,
        };
        match enabled_id {
            Some((true, id)) if out.count < MAX_LAPICS => {
                out.apic_ids[out.count] = id;
                out.count += 1;
            }
            Some((true, _)) => out.skipped += 1,
            Some((false, _)) => out.disabled += 1,
            None => {}
        }
        at += elen;
    }
    Ok(out)
}
