//! Xen system time (ns since boot) from this vCPU's `vcpu_time_info`
//! (xen/include/public/xen.h): `system_time + scale(rdtsc - tsc_timestamp)`,
//! read under the version protocol (odd = Xen is updating it). Used for
//! bounded waits and for timing vCPU bring-up and IPIs.

use core::sync::atomic::{fence, Ordering};

/// Nanoseconds of Xen system time, or 0 before shared_info is mapped.
pub fn now_ns() -> u64 {
    let Some(vi) = super::vcpu_info_va(crate::smp::xen::this_cpu()) else { return 0 };
    let t = vi + 32;
    loop {
        // SAFETY: `t` is this vCPU's vcpu_time_info in the mapped shared_info
        // (version u32 @0, tsc_timestamp @8, system_time @16,
        // tsc_to_system_mul u32 @24, tsc_shift i8 @28).
        let (v0, stamp, sys, mul, shift) = unsafe {
            let v0 = (t as *const u32).read_volatile();
            fence(Ordering::Acquire);
            (
                v0,
                ((t + 8) as *const u64).read_volatile(),
                ((t + 16) as *const u64).read_volatile(),
                ((t + 24) as *const u32).read_volatile(),
                ((t + 28) as *const i8).read_volatile(),
            )
        };
        // SAFETY: rdtsc is allowed in PV guests (the default TSC mode).
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let v1 = unsafe { (t as *const u32).read_volatile() };
        if v0 & 1 != 0 || v0 != v1 {
            core::hint::spin_loop();
            continue;
        }
        let mut delta = tsc.wrapping_sub(stamp);
        if shift >= 0 {
            delta <<= shift;
        } else {
            delta >>= -shift;
        }
        return sys.wrapping_add(((delta as u128 * mul as u128) >> 32) as u64);
    }
}
