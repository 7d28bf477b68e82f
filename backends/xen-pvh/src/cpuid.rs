//! Finding Xen's CPUID leaves.

/// "XenVMMXenVMM" as CPUID returns it in ebx, ecx, edx.
pub const XEN_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];

/// What Xen's CPUID leaves say (`xen/include/public/arch-x86/cpuid.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenLeaves {
    /// First leaf: 0x40000000, or 0x40000100 when Viridian sits below Xen.
    pub base: u32,
    /// MSR that takes the hypercall page's guest-physical address (leaf
    /// `base + 2`, ebx; `guest_wrmsr_xen`, `xen/arch/x86/traps.c`).
    pub hypercall_msr: u32,
}

/// Scans the hypervisor leaves for Xen, as Linux's `xen_cpuid_base()`
/// (`hypervisor_cpuid_base("XenVMMXenVMM", 2)`): every 0x100 from 0x40000000,
/// the exact signature and at least leaf `base + 2`. Matching the signature
/// matters: QEMU TCG has a hypervisor leaf too ("TCGTCGTCGTCG"), and KVM its
/// own. `cpuid(leaf)` returns eax, ebx, ecx, edx (the instruction, or a fake).
pub fn find_xen(cpuid: impl Fn(u32) -> [u32; 4]) -> Option<XenLeaves> {
    (0x4000_0000u32..0x4001_0000).step_by(0x100).find_map(|base| {
        let [eax, ebx, ecx, edx] = cpuid(base);
        ([ebx, ecx, edx] == XEN_SIGNATURE && eax.wrapping_sub(base) >= 2)
            .then(|| XenLeaves { base, hypercall_msr: cpuid(base + 2)[1] })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU whose hypervisor leaves start at `base` with `sig` and max leaf `max`.
    fn cpu(base: u32, sig: [u32; 3], max: u32) -> impl Fn(u32) -> [u32; 4] {
        move |leaf| match leaf {
            l if l == base => [max, sig[0], sig[1], sig[2]],
            l if l == base + 2 => [1, 0x4000_0000 + (base - 0x4000_0000) * 2, 0, 0],
            _ => [0; 4],
        }
    }

    #[test]
    fn xen_is_found_at_its_base_and_only_with_its_signature() {
        let tcg = [0x5447_4354, 0x4354_4743, 0x4743_5447];
        assert_eq!(find_xen(cpu(0x4000_0000, tcg, 0x4000_0001)), None);
        assert_eq!(find_xen(|_| [0; 4]), None);
        assert_eq!(
            find_xen(cpu(0x4000_0000, XEN_SIGNATURE, 0x4000_0005)),
            Some(XenLeaves { base: 0x4000_0000, hypercall_msr: 0x4000_0000 })
        );
        // Behind Viridian: base and MSR both move.
        assert_eq!(
            find_xen(cpu(0x4000_0100, XEN_SIGNATURE, 0x4000_0105)),
            Some(XenLeaves { base: 0x4000_0100, hypercall_msr: 0x4000_0200 })
        );
        // A Xen too old to have the hypercall-page leaf is not enough.
        assert_eq!(find_xen(cpu(0x4000_0000, XEN_SIGNATURE, 0x4000_0001)), None);
    }
}
