//! A host platform and the boot sequence the kernel also follows.

use std::any::Any;

use kernel_glue::{FrameAllocator, Mm};
use pvops::{BackendDesc, BootEnv, EntryKind, Pfn, PhysMem, PvError, PvMmuOps};
use pvops_model::host::Platform;

/// The kernel-half address the suite uses as "a kernel mapping" (direct-map slot 273).
pub const KERNEL_VA: u64 = 0xffff_8880_0000_0000;
/// The kernel's probe page (L4 slot 402), as `examples/pvkernel` maps it.
pub const KERNEL_PROBE_VA: u64 = 0xffff_c900_0000_0000;
/// The kernel image's first page (L4 slot 511; physical 0x100000 in the real kernel).
pub const KERNEL_IMAGE_VA: u64 = 0xffff_ffff_8010_0000;
/// The kernel-half slots init_mm has, on the host as in the kernel (README,
/// "Boot flow and memory layout"): direct map, probe page, kernel image.
pub const INIT_MM_KERNEL_SLOTS: [usize; 3] = [273, 402, 511];

/// A check over the allocator and the live pgds; `Err` says what is broken.
pub type InvariantCheck = Box<dyn Fn(&FrameAllocator<'static>, &[Pfn]) -> Result<(), String>>;

/// A modelled machine as the boot path sees it: a
/// [`pvops_model::host::Platform`] (the one constructor of host machines)
/// with what the integration tests check on it. Its fields may be changed
/// before booting (a counting `mem`, a wrapped transport): [`HostPlatform::base`]
/// hands the changed platform to the constructor.
pub struct HostPlatform {
    /// Short name for reports.
    pub label: &'static str,
    /// How the "kernel" was entered.
    pub entry: EntryKind,
    /// What the firmware/hypervisor handed over, as text.
    pub handover: &'static str,
    /// Handles for the backend (`NativePlatform`, `XenPlatform`).
    pub platform: &'static (dyn Any + Send + Sync),
    /// Page-table memory as the guest sees it.
    pub mem: &'static dyn PhysMem,
    /// The access oracle for the conformance suite.
    pub oracle: &'static dyn pvops_conformance::Machine,
    /// Frames of guest memory.
    pub nr_frames: u64,
    /// The root the platform booted on.
    pub boot_pgd: Pfn,
    /// Frames the allocator must never hand out.
    pub reserved: Vec<Pfn>,
    /// Model-side counters, rendered for reports.
    pub counters: Box<dyn Fn() -> String>,
    /// Checks that must hold after every step, given the live pgds (e.g. the
    /// user pgd mirrors the kernel pgd).
    pub invariants: InvariantCheck,
    /// The Xen model behind the platform, for hypercall fault injection.
    pub xen: Option<&'static pvops_model::XenModel>,
    /// The machine behind the platform (under Xen: the model's, by mfn):
    /// its vCPUs' TLBs and `Cpus`.
    pub machine: &'static pvops_model::Machine,
    /// Checks that must hold once every address space has exited (e.g. no pin left).
    pub quiescent: Box<dyn Fn() -> Result<(), String>>,
}

impl HostPlatform {
    /// The platform as [`pvops_model::host`] takes it, with any field
    /// changed since: its [`Platform::frames`] and [`Platform::boot_early`]
    /// are how every host allocator and backend here is made.
    pub fn base(&self) -> Platform {
        Platform {
            entry: self.entry,
            handover: self.handover,
            platform: self.platform,
            mem: self.mem,
            nr_frames: self.nr_frames,
            boot_pgd: self.boot_pgd,
            reserved: self.reserved.clone(),
            machine: self.machine,
            xen: self.xen,
        }
    }

    /// The boot environment to give the registry.
    pub fn env(&self) -> BootEnv<'static> {
        BootEnv { entry: self.entry, handover: self.handover, platform: self.platform }
    }
}

/// Every kind of host platform: one per backend family.
pub fn platforms() -> Vec<HostPlatform> {
    platforms_seeded(DEFAULT_P2M_SEED)
}

/// The p2m seed of [`platforms`].
pub const DEFAULT_P2M_SEED: u64 = pvops_model::host::DEFAULT_P2M_SEED;

/// [`platforms`], with the Xen model's p2m scrambled from `p2m_seed`.
pub fn platforms_seeded(p2m_seed: u64) -> Vec<HostPlatform> {
    vec![crate::native_host::native_platform(4096), crate::xen_host::xen_platform_seeded(4096, p2m_seed)]
}

/// A booted memory manager on a host platform with backend `desc`: the same
/// steps as the kernel (early path, adopt the boot root, the kernel half's
/// three slots — direct map, probe page, kernel image — then frame metadata).
pub fn boot_backend(desc: &BackendDesc, host: &HostPlatform) -> Result<Booted, PvError> {
    let h = host.base().boot_early(desc)?;
    let mm: &'static Mm<'static> = Box::leak(Box::new(Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)?));
    // Early boot: no frame metadata yet.
    for (va, writable) in [(KERNEL_VA, true), (KERNEL_PROBE_VA, true), (KERNEL_IMAGE_VA, false)] {
        let kpage = h.frames.alloc_zeroed_frame()?;
        mm.map_kernel(va, kpage, writable)?;
    }
    mm.init_metadata()?;
    Ok(Booted { ops: h.ops, frames: h.frames, mm })
}

/// The result of [`boot_backend`].
pub struct Booted {
    /// The backend.
    pub ops: &'static dyn PvMmuOps,
    /// The allocator.
    pub frames: &'static FrameAllocator<'static>,
    /// The memory manager.
    pub mm: &'static Mm<'static>,
}

/// Finds a host platform whose environment the backend's probe accepts.
pub fn platform_for(desc: &BackendDesc) -> Option<HostPlatform> {
    platform_for_seeded(desc, DEFAULT_P2M_SEED)
}

/// [`platform_for`] among [`platforms_seeded`]`(p2m_seed)`.
pub fn platform_for_seeded(desc: &BackendDesc, p2m_seed: u64) -> Option<HostPlatform> {
    platforms_seeded(p2m_seed).into_iter().find(|p| (desc.probe)(&p.env()).is_ok())
}

/// The built-in backends (native, xen64), each booted on a host platform it
/// accepts, by name. For tests that run the same steps on both.
///
/// # Panics
/// If a built-in backend has no platform or does not boot (test setup only).
pub fn boot_builtin_backends() -> Vec<(&'static str, HostPlatform, Booted)> {
    pvops::backends()
        .into_iter()
        .filter(|d| ["native", "xen64"].contains(&d.name))
        .map(|d| {
            let host = platform_for(d).expect("a host platform the backend accepts");
            let booted = boot_backend(d, &host).expect("the backend boots");
            (d.name, host, booted)
        })
        .collect()
}

/// Panics, naming the backend and the step, when the platform's invariants
/// (TLB, model, allocator) do not hold.
pub fn assert_invariants(name: &str, host: &HostPlatform, booted: &Booted, what: &str) {
    if let Err(e) = (host.invariants)(booted.frames, &[]) {
        panic!("{name}: {what}: {e}");
    }
}

/// A booted memory manager on a host platform with several vCPUs, for
/// [`pvops_model::explore`]: what every vCPU body shares, all `Sync`.
pub struct SmpBooted {
    /// The backend's name.
    pub name: &'static str,
    /// The backend.
    pub ops: &'static dyn PvMmuOps,
    /// The allocator.
    pub frames: &'static FrameAllocator<'static>,
    /// The memory manager.
    pub mm: &'static Mm<'static>,
    /// The machine (per-vCPU cr3 and TLBs; under Xen indexed by mfn).
    pub machine: &'static pvops_model::Machine,
    /// The Xen model, on the Xen platform.
    pub xen: Option<&'static pvops_model::XenModel>,
}

impl pvops_model::SmpState for SmpBooted {
    fn cpus(&self) -> &pvops_model::ModelCpus {
        self.machine.cpus()
    }
}

impl SmpBooted {
    /// What a user-mode read of `va` on the calling vCPU reaches now, through
    /// its TLB: asked of the model, never of the backend or kernel-glue.
    /// Under Xen it is user mode running on that vCPU (its user root may be
    /// cached from now on).
    pub fn user_read(&self, va: u64) -> Option<Pfn> {
        match self.xen {
            Some(model) => model.access(va, true, false).ok(),
            None => {
                let va = pvops::VirtAddr::try_new(va).ok()?;
                self.machine.access(va, pvops_model::Access::USER_READ).ok().map(Pfn)
            }
        }
    }

    /// What a kernel-mode read of `va` on the calling vCPU reaches now,
    /// through its TLB (asked of the model).
    pub fn kernel_read(&self, va: u64) -> Option<Pfn> {
        match self.xen {
            Some(model) => model.access(va, false, false).ok(),
            None => {
                let va = pvops::VirtAddr::try_new(va).ok()?;
                self.machine.access(va, pvops_model::Access::KERNEL_READ).ok().map(Pfn)
            }
        }
    }

    /// Where the tables under `pgd` take a user read of `va`, walked by the
    /// model with no TLB (what the tables say now, not what a CPU may still
    /// have cached).
    pub fn table_walk(&self, pgd: Pfn, va: u64) -> Option<Pfn> {
        let va = pvops::VirtAddr::try_new(va).ok()?;
        let access = pvops_model::Access::USER_READ;
        match self.xen {
            Some(model) => {
                let root = model.mfn_of(pgd)?;
                let mfn = self.machine.translate_from(root.0, va, access).ok()?;
                model.pfn_of(pvops::Mfn(mfn))
            }
            None => self.machine.translate_from(pgd.0, va, access).ok().map(Pfn),
        }
    }

    /// What must hold after any step: no TLB hazard (a frame freed or
    /// reused while a vCPU's TLB may reach it, a write through a stale
    /// entry) and, under Xen, every rule of the model on every vCPU (no
    /// refused store, no crash, each vCPU's user root the partner of its
    /// kernel root) and every user pgd mirroring its kernel pgd.
    pub fn check(&self) -> Result<(), String> {
        match self.xen {
            Some(model) => {
                model.check_invariants()?;
                model.check_user_pgd_mirrors(self.frames)
            }
            None => self.machine.check_tlb(),
        }
    }

    /// With every address space gone: [`SmpBooted::check`], and under Xen
    /// only the boot root pinned and every vCPU back on it.
    pub fn check_quiescent(&self) -> Result<(), String> {
        self.check()?;
        match self.xen {
            Some(model) => model.check_quiescent(),
            None => Ok(()),
        }
    }
}

/// The built-in backend `name` (`native` or `xen64`) booted on a host
/// platform with `vcpus` vCPUs and `nr_frames` frames (p2m seed `p2m_seed`),
/// the same steps as [`boot_backend`], run as vCPU 0: the host machine a
/// kernel-glue user starts from, already consistent (memory, frame
/// allocator with metadata, backend, `init_mm` on the boot root). Ask the
/// models, not the code under test, what an access reaches
/// ([`pvops_model::AccessOracle`]).
///
/// Natively:
/// ```
/// use kernel_glue::PageFlags;
/// use pvops_model::{Access, AccessOracle};
/// # use pvops_native as _; use pvops_xen64 as _;
/// let b = pvops_integration::platform::boot_smp("native", 1, 1024, 0)?;
/// let space = b.mm.create()?;
/// let page = b.mm.map(&space, 0x40_0000, PageFlags::DATA)?;
/// let va = pvops::VirtAddr::try_new(0x40_0000)?;
/// assert_eq!(b.machine.reach_from(space.pgd(), va, Access::USER_WRITE), Ok(page));
/// b.mm.exit(space).map_err(|(e, _)| e)?;
/// # Ok::<(), pvops::PvError>(())
/// ```
/// On the Xen PV model (the same three lines; the model counts hypercalls):
/// ```
/// use kernel_glue::PageFlags;
/// use pvops_model::{Access, AccessOracle};
/// # use pvops_native as _; use pvops_xen64 as _;
/// let b = pvops_integration::platform::boot_smp("xen64", 1, 1024, 0)?;
/// let xen = b.xen.expect("the Xen model");
/// let space = b.mm.create()?;
/// b.mm.activate(&space)?; // pinned: changes are hypercalls from now on
/// let before = xen.counters().hypercalls;
/// let page = b.mm.map(&space, 0x40_0000, PageFlags::DATA)?;
/// assert!(xen.counters().hypercalls > before);
/// let va = pvops::VirtAddr::try_new(0x40_0000)?;
/// assert_eq!(xen.reach(va, Access::USER_WRITE), Ok(page));
/// b.mm.activate_init()?;
/// b.mm.exit(space).map_err(|(e, _)| e)?;
/// # Ok::<(), pvops::PvError>(())
/// ```
pub fn boot_smp(name: &str, vcpus: usize, nr_frames: u64, p2m_seed: u64) -> Result<SmpBooted, PvError> {
    let host = match name {
        "xen64" => crate::xen_host::xen_platform_smp(nr_frames, p2m_seed, vcpus),
        _ => crate::native_host::native_platform_smp(nr_frames, vcpus),
    };
    let desc = pvops::backends()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or(PvError::WrongState { what: "boot_smp: backend not linked" })?;
    let booted = pvops_model::on_vcpu(0, || boot_backend(desc, &host))?;
    Ok(SmpBooted {
        name: desc.name,
        ops: booted.ops,
        frames: booted.frames,
        mm: booted.mm,
        machine: host.machine,
        xen: host.xen,
    })
}
