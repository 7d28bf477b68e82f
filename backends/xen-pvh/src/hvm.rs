//! The one hypercall this backend makes: `HVMOP_flush_tlbs`.

use pvops::PvError;

/// Xen's HVM operations the backend needs, as a seam: the kernel issues the
/// real hypercall, a host test flushes the machine model's vCPUs.
pub trait XenHvm: Sync {
    /// `HVMOP_flush_tlbs` (`hvm_op` 34, sub-op 5, NULL argument): flushes the
    /// TLB of every vCPU of the domain, the caller's included, global entries
    /// included, and returns once all are flushed (`hvmop_flush_tlb_all`,
    /// xen/arch/x86/hvm/hvm.c; under HAP it tickles every vCPU's ASID/VPID
    /// and IPIs the pCPUs running them). It takes no address and no mask.
    ///
    /// MUST return only after every vCPU's TLB is flushed, or fail.
    fn flush_tlbs(&self) -> Result<(), PvError>;
}
