//! Host platforms in three lines: a booted host machine with a backend,
//! already consistent, for setting up kernel-glue's `Mm` on a model.
//!
//! [`native`] and [`xen64`] return a [`Host`] holding what
//! `Mm::adopt_boot` takes — the backend (picked through the registry's
//! probes, as the kernel picks it), the frame allocator (every frame free but
//! the ones firmware or Xen's domain builder used, boot tables included;
//! frame metadata created and announced to the backend) and the boot root —
//! plus the model handles an oracle asks ([`Host::oracle`], [`Host::machine`],
//! [`Host::xen`]):
//!
//! ```
//! use kernel_glue::{Mm, PageFlags};
//! use pvops_model::Access;
//! # use pvops_native as _; use pvops_xen64 as _;
//! let h = pvops_model::host::xen64(1024)?;
//! let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)?;
//! let space = mm.create()?;
//! let page = mm.map(&space, 0x40_0000, PageFlags::DATA)?;
//! mm.activate(&space)?;
//! let va = pvops::VirtAddr::try_new(0x40_0000)?;
//! assert_eq!(h.oracle().reach(va, Access::USER_WRITE), Ok(page));
//! # Ok::<(), pvops::PvError>(())
//! ```
//!
//! The steps below them ([`Platform`]: the machine as firmware or Xen hands
//! it over, then [`Platform::boot`] or [`Platform::boot_early`]) are public
//! for tests that need another backend or the early-boot path.
//!
//! Everything is leaked (`'static`), as a kernel's boot-time structures are.

use std::any::Any;

use kernel_glue::FrameAllocator;
use pvops::{BackendDesc, BootEnv, EntryKind, Pfn, PhysMem, PvError, PvMmuOps};
use pvops_native::NativePlatform;

use crate::oracle::AccessOracle;
use crate::xen::XenModel;
use crate::Machine;

/// The p2m seed of [`xen64`].
pub const DEFAULT_P2M_SEED: u64 = 0x5eed;

/// The native boot root: frame 0 is never handed out; frame 1 is the root.
const NATIVE_BOOT_PGD: Pfn = Pfn(1);

/// A modelled machine as firmware (or Xen's domain builder) hands it to the
/// kernel: no backend yet, no allocator.
#[derive(Clone)]
pub struct Platform {
    /// How the kernel was entered.
    pub entry: EntryKind,
    /// What the firmware or hypervisor handed over, as text.
    pub handover: &'static str,
    /// The handles a backend's probe downcasts (`NativePlatform`, `XenPlatform`).
    pub platform: &'static (dyn Any + Send + Sync),
    /// Page-table memory as the guest sees it.
    pub mem: &'static dyn PhysMem,
    /// Frames of guest memory.
    pub nr_frames: u64,
    /// The root the platform booted on (loaded on every vCPU).
    pub boot_pgd: Pfn,
    /// Frames the allocator must never hand out (the boot tables among them).
    pub reserved: Vec<Pfn>,
    /// The machine (under Xen the model's, indexed by mfn): TLBs, `Cpus`.
    pub machine: &'static Machine,
    /// The Xen model, on a Xen PV platform.
    pub xen: Option<&'static XenModel>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Platform({:?}, {} frames, boot root {:?})", self.entry, self.nr_frames, self.boot_pgd)
    }
}

impl Platform {
    /// A bare-metal-like machine (PVH entry) of `nr_frames` frames with
    /// `vcpus` vCPUs, every one on the boot root in frame 1 (the APs'
    /// trampoline leaves them on init_mm's root, as Linux's `swapper_pg_dir`).
    pub fn native(nr_frames: u64, vcpus: usize) -> Platform {
        let machine = Machine::leaked_smp(nr_frames, vcpus);
        for cpu in 0..vcpus {
            crate::on_vcpu(cpu, || machine.set_cr3(NATIVE_BOOT_PGD.addr()));
        }
        let platform: &'static NativePlatform =
            Box::leak(Box::new(NativePlatform { mem: machine, cpu: machine, cpus: machine.cpus() }));
        Platform {
            entry: EntryKind::Pvh,
            handover: "hvm_start_info 0x336ec578",
            platform,
            mem: machine,
            nr_frames,
            boot_pgd: NATIVE_BOOT_PGD,
            reserved: vec![Pfn(0), NATIVE_BOOT_PGD],
            machine,
            xen: None,
        }
    }

    /// A Xen PV domain of `nr_frames` pages with `vcpus` vCPUs, as the
    /// builder leaves it (boot L4 pinned and loaded on every vCPU, p2m
    /// scrambled from `p2m_seed`).
    pub fn xen64(nr_frames: u64, vcpus: usize, p2m_seed: u64) -> Platform {
        let model = XenModel::leaked_smp(nr_frames, p2m_seed, vcpus);
        let platform: &'static pvops_xen64::XenPlatform = Box::leak(Box::new(model.platform()));
        Platform {
            entry: EntryKind::XenPv,
            handover: "xen-3.0-x86_64p",
            platform,
            mem: model,
            nr_frames,
            boot_pgd: model.pt_base(),
            reserved: model.reserved_pfns().to_vec(),
            machine: model.machine(),
            xen: Some(model),
        }
    }

    /// The boot environment the registry's probes see.
    pub fn env(&self) -> BootEnv<'static> {
        BootEnv { entry: self.entry, handover: self.handover, platform: self.platform }
    }

    /// The backend the kernel would pick here: the highest-priority
    /// registered one whose probe accepts [`Platform::env`] (only linked
    /// backends are registered: `use pvops_native as _;`).
    pub fn select(&self) -> Result<&'static BackendDesc, PvError> {
        pvops::select(&self.env(), &pvops::backends(), None).map_err(|e| e.error)
    }

    /// A new frame allocator over this platform's memory: every frame free
    /// but the reserved ones; no frame metadata yet (early boot).
    pub fn frames(&self) -> &'static FrameAllocator<'static> {
        let frames: &'static FrameAllocator<'static> =
            Box::leak(Box::new(FrameAllocator::new(self.mem, self.nr_frames)));
        frames.add_free_range(Pfn(0), self.nr_frames);
        for &r in &self.reserved {
            frames.reserve(r);
        }
        frames
    }

    /// Boots backend `desc` (any registered one its probe accepts) in early
    /// boot: the allocator has no frame metadata yet; end early boot with
    /// kernel-glue's `Mm::init_metadata`.
    pub fn boot_early(self, desc: &BackendDesc) -> Result<Host, PvError> {
        (desc.probe)(&self.env()).map_err(|_| PvError::NoBackend)?;
        let ops = (desc.instantiate)(&self.env())?;
        let frames = self.frames();
        Ok(Host {
            ops,
            name: desc.name,
            frames,
            boot_pgd: self.boot_pgd,
            machine: self.machine,
            xen: self.xen,
            platform: self,
        })
    }

    /// Boots the backend [`Platform::select`] picks, past early boot: frame
    /// metadata exists and the backend was told
    /// ([`PvMmuOps::frame_metadata_ready`]), so the metadata is right from now on.
    pub fn boot(self) -> Result<Host, PvError> {
        let desc = self.select()?;
        self.boot_with(desc)
    }

    /// [`Platform::boot`] with backend `desc` instead of the registry's pick.
    pub fn boot_with(self, desc: &BackendDesc) -> Result<Host, PvError> {
        let host = self.boot_early(desc)?;
        host.frames.init_metadata();
        host.ops.frame_metadata_ready(host.frames)?;
        Ok(host)
    }
}

/// A booted host machine: what `Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)`
/// takes, consistent, and the models to ask what an access reaches.
pub struct Host {
    /// The backend, as the registry hands it out.
    pub ops: &'static dyn PvMmuOps,
    /// The backend's registry name.
    pub name: &'static str,
    /// The frame allocator over [`Platform::mem`].
    pub frames: &'static FrameAllocator<'static>,
    /// The root the platform booted on: `init_mm`'s.
    pub boot_pgd: Pfn,
    /// The machine (under Xen the model's, indexed by mfn).
    pub machine: &'static Machine,
    /// The Xen model, on a Xen PV platform.
    pub xen: Option<&'static XenModel>,
    /// The platform it booted on.
    pub platform: Platform,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Host({} on {:?}, {:?})", self.name, self.platform, self.frames)
    }
}

impl Host {
    /// What an access reaches, asked of the model (never of the backend or
    /// kernel-glue): the Xen model on a Xen platform, else the machine.
    pub fn oracle(&self) -> &'static dyn AccessOracle {
        match self.xen {
            Some(xen) => xen,
            None => self.machine,
        }
    }
}

/// A booted native host of `nr_frames` frames, one vCPU (see the module docs).
pub fn native(nr_frames: u64) -> Result<Host, PvError> {
    native_smp(nr_frames, 1)
}

/// [`native`] with `vcpus` vCPUs.
pub fn native_smp(nr_frames: u64, vcpus: usize) -> Result<Host, PvError> {
    Platform::native(nr_frames, vcpus).boot()
}

/// A booted Xen PV host of `nr_frames` pages, one vCPU, the default p2m seed
/// (see the module docs).
pub fn xen64(nr_frames: u64) -> Result<Host, PvError> {
    xen64_smp(nr_frames, 1, DEFAULT_P2M_SEED)
}

/// [`xen64`] with `vcpus` vCPUs and the p2m scrambled from `p2m_seed`.
pub fn xen64_smp(nr_frames: u64, vcpus: usize, p2m_seed: u64) -> Result<Host, PvError> {
    Platform::xen64(nr_frames, vcpus, p2m_seed).boot()
}
