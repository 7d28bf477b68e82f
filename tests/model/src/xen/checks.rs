//! Whole-model checks for tests that run long random sequences: what must
//! hold after every step, and once every address space has gone.

use pvops::pte::flags;
use pvops::{Mfn, MmServices, Pfn, ENTRIES_PER_TABLE, USER_PGD_SLOTS};
use pvops_xen64::abi::{XEN_L4_END, XEN_L4_FIRST};

use super::model::XenModel;

impl XenModel {
    /// After every step: no refused direct store, no TLB hazard, no domain crash, and on
    /// every vCPU the loaded user root (if any) mirrors the loaded kernel root below
    /// `USER_LIMIT` and holds nothing of the guest's above it.
    pub fn check_invariants(&self) -> Result<(), String> {
        let violations = self.violations();
        if !violations.is_empty() {
            return Err(format!("direct stores to live tables: {violations:?}"));
        }
        let hazards = self.tlb_violations();
        if !hazards.is_empty() {
            return Err(format!("TLB hazards (frames as pfns): {hazards:x?}"));
        }
        if let Some(why) = self.crashed() {
            return Err(format!("domain crashed: {why}"));
        }
        for vcpu in 0..self.nr_vcpus() {
            let (kernel, user) = (self.kernel_base_of(vcpu), self.user_base_of(vcpu));
            if user.0 != 0 {
                self.check_pair(kernel, user).map_err(|e| format!("vCPU {vcpu}: {e}"))?;
            }
        }
        Ok(())
    }

    /// With every user address space gone: only the builder's root is
    /// pinned, it is every vCPU's kernel base pointer, and no vCPU has a
    /// user root loaded.
    pub fn check_quiescent(&self) -> Result<(), String> {
        self.check_invariants()?;
        let pinned = self.pinned_count();
        if pinned != 1 {
            return Err(format!("{pinned} frames pinned; only the boot root should be"));
        }
        for vcpu in 0..self.nr_vcpus() {
            let (kernel, user) = (self.kernel_base_of(vcpu), self.user_base_of(vcpu));
            if self.pfn_of(kernel) != Some(self.pt_base()) {
                return Err(format!("vCPU {vcpu}: kernel base {kernel:?} is not the boot root"));
            }
            if user.0 != 0 {
                return Err(format!("vCPU {vcpu}: user base {user:?} still loaded"));
            }
        }
        Ok(())
    }

    /// Every kernel pgd that `mm`'s private words say has a user pgd mirrors
    /// it (the private word holds the user pgd's pfn).
    pub fn check_user_pgd_mirrors(&self, mm: &dyn MmServices) -> Result<(), String> {
        if !mm.has_metadata() {
            return Ok(());
        }
        for pfn in (0..self.nr_pages()).map(Pfn) {
            let Ok(Some(user)) = pvops_xen64::attached_user_pgd(mm, pfn) else { continue };
            let (Some(k), Some(u)) = (self.mfn_of(pfn), self.mfn_of(user)) else {
                return Err(format!("{pfn:?} or its user pgd {user:?} has no mfn"));
            };
            self.check_pair(k, u).map_err(|e| format!("pgd {pfn:?}: {e}"))?;
        }
        Ok(())
    }

    fn check_pair(&self, kernel: Mfn, user: Mfn) -> Result<(), String> {
        for index in 0..ENTRIES_PER_TABLE {
            let (k, u) = (self.read_machine(kernel, index), self.read_machine(user, index));
            if index < USER_PGD_SLOTS {
                // Both validated or both not: Xen rewrites them alike.
                if k & !(flags::USER | flags::ACCESSED) != u & !(flags::USER | flags::ACCESSED) {
                    return Err(format!("slot {index}: kernel {k:#x} user {u:#x}"));
                }
            } else if !(XEN_L4_FIRST..XEN_L4_END).contains(&index) && u != 0 {
                return Err(format!("user pgd slot {index} above USER_LIMIT holds {u:#x}"));
            }
        }
        Ok(())
    }
}
