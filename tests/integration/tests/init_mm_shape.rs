//! The host init_mm has the kernel's shape (three kernel-half slots: direct
//! map 273, probe page 402, kernel image 511), and every new address space
//! carries all three: measured with the model's access check after loading
//! the new space, not read back from the backend.

use pvops::Level;
use pvops_integration::platform::{
    boot_backend, platform_for, INIT_MM_KERNEL_SLOTS, KERNEL_IMAGE_VA, KERNEL_PROBE_VA, KERNEL_VA,
};
use pvops_native as _;
use pvops_xen64 as _;

const KERNEL_HALF: [u64; 3] = [KERNEL_VA, KERNEL_PROBE_VA, KERNEL_IMAGE_VA];

#[test]
fn the_host_init_mm_has_the_kernels_three_kernel_slots() {
    for (va, slot) in KERNEL_HALF.iter().zip(INIT_MM_KERNEL_SLOTS) {
        assert_eq!(pvops::VirtAddr::try_new(*va).unwrap().index(Level::L4), slot);
    }
    for desc in pvops::backends().into_iter().filter(|d| ["native", "xen64"].contains(&d.name)) {
        let host = platform_for(desc).expect("platform");
        let booted = boot_backend(desc, &host).expect("boot");
        let init = booted.mm.init_pgd();
        for slot in 256..512 {
            let present = booted.ops.read_entry(Level::L4, init, slot).expect("read").is_present();
            let reserved = booted.ops.reserved_l4_slots().contains(&slot);
            assert_eq!(present && !reserved, INIT_MM_KERNEL_SLOTS.contains(&slot), "{}: slot {slot}", desc.name);
        }
    }
}

#[test]
fn every_new_address_space_reaches_the_whole_kernel_half_of_init_mm() {
    for desc in pvops::backends().into_iter().filter(|d| ["native", "xen64"].contains(&d.name)) {
        let host = platform_for(desc).expect("platform");
        let booted = boot_backend(desc, &host).expect("boot");
        let mm = booted.mm;
        let want: Vec<_> = KERNEL_HALF.iter().map(|&va| host.oracle.kernel_access(va, false)).collect();
        assert!(want.iter().all(Option::is_some), "{}: init_mm maps {want:?}", desc.name);
        let space = mm.create().expect("create");
        let child = mm.fork(&space).expect("fork");
        mm.activate(&space).expect("activate");
        for (&va, w) in KERNEL_HALF.iter().zip(&want) {
            assert_eq!(host.oracle.kernel_access(va, false), *w, "{}: {va:#x} in a new space", desc.name);
            assert_eq!(host.oracle.user_access(va, false), None, "{}: user mode reaches {va:#x}", desc.name);
        }
        mm.activate(&child).expect("activate child");
        for (&va, w) in KERNEL_HALF.iter().zip(&want) {
            assert_eq!(host.oracle.kernel_access(va, false), *w, "{}: {va:#x} in a forked space", desc.name);
        }
        mm.activate_init().expect("init");
        mm.exit(space).map_err(|(e, _)| e).expect("exit");
        mm.exit(child).map_err(|(e, _)| e).expect("exit child");
        (host.invariants)(booted.frames, &[]).expect("invariants");
    }
}
