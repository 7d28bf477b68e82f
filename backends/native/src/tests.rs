//! Host unit tests of the parts the machine model does not reach: the
//! bare-metal direct map's address arithmetic (over a heap buffer standing in
//! for the direct map), the identity entry encoding, and the Debug names.

extern crate std;

use std::boxed::Box;
use std::format;
use std::vec;

use pvops::{Pfn, PhysMem, Pte, PvMmuOps, VirtAddr};

use crate::{DirectMap, NativeBackend, NativeCpu, NativePlatform};

/// Frames of the stand-in direct map.
const FRAMES: u64 = 3;

fn direct_map() -> (&'static mut [u64], DirectMap) {
    let buf: &'static mut [u64] = Box::leak(vec![0u64; FRAMES as usize * 512].into_boxed_slice());
    // SAFETY: the buffer holds FRAMES frames of 512 words and is leaked, so it
    // maps every frame below FRAMES for the rest of the test.
    let map = unsafe { DirectMap::new(buf.as_mut_ptr() as u64, FRAMES) };
    (buf, map)
}

#[test]
fn direct_map_addresses_frame_times_page_plus_index_times_eight() {
    let (buf, map) = direct_map();
    map.write_entry(Pfn(1), 3, 0xabc);
    map.write_entry(Pfn(2), 511, 0xdef);
    map.write_entry(Pfn(0), 0, 0x123);
    assert_eq!(buf[512 + 3], 0xabc);
    assert_eq!(buf[2 * 512 + 511], 0xdef);
    assert_eq!(buf[0], 0x123);
    assert_eq!(buf.iter().filter(|w| **w != 0).count(), 3, "nothing else written");
    buf[512 + 7] = 0x77;
    assert_eq!(map.read_entry(Pfn(1), 7), 0x77);
    assert_eq!(map.read_entry(Pfn(1), 3), 0xabc);
}

#[test]
fn direct_map_ignores_out_of_range_frames_and_indices() {
    let (buf, map) = direct_map();
    buf.fill(0x5a5a);
    map.write_entry(Pfn(FRAMES), 0, 1);
    map.write_entry(Pfn(0), 512, 1);
    assert!(buf.iter().all(|w| *w == 0x5a5a), "an out-of-range store wrote memory");
    assert_eq!(map.read_entry(Pfn(FRAMES), 0), 0);
    assert_eq!(map.read_entry(Pfn(0), 512), 0);
    assert_eq!(map.read_entry(Pfn(FRAMES - 1), 511), 0x5a5a);
}

/// A cpu that refuses to be used: these tests never switch or flush.
struct NoCpu;
impl NativeCpu for NoCpu {
    fn read_cr3(&self) -> u64 {
        0
    }
    fn write_cr3(&self, _: u64) {}
    fn invlpg(&self, _: VirtAddr) {}
    fn flush_all(&self) {}
}

#[test]
fn entries_are_encoded_as_they_are() {
    let (_, map) = direct_map();
    let mem: &'static DirectMap = Box::leak(Box::new(map));
    let ops = NativeBackend::new(mem, &NoCpu);
    for raw in [0u64, 1, 0x8000_0000_0012_3067, u64::MAX] {
        assert_eq!(ops.make_entry(Pte(raw)), Ok(raw));
        assert_eq!(ops.entry_value(raw), Pte(raw));
    }
}

#[test]
fn debug_names_the_value() {
    let (_, map) = direct_map();
    let mem: &'static DirectMap = Box::leak(Box::new(map));
    assert_eq!(format!("{:?}", NativeBackend::new(mem, &NoCpu)), "NativeBackend");
    assert_eq!(format!("{:?}", NativePlatform { mem, cpu: &NoCpu, cpus: &pvops::SingleCpu }), "NativePlatform");
}

#[test]
fn direct_map_compare_exchange_writes_only_on_a_match_and_only_in_range() {
    let (buf, map) = direct_map();
    buf[512 + 9] = 0x67;
    assert_eq!(map.compare_exchange_entry(Pfn(1), 9, 0x66, 0), Err(0x67));
    assert_eq!(buf[512 + 9], 0x67, "no match, no write");
    assert_eq!(map.compare_exchange_entry(Pfn(1), 9, 0x67, 0x5), Ok(0x67));
    assert_eq!(buf[512 + 9], 0x5);
    assert_eq!(map.compare_exchange_entry(Pfn(FRAMES), 0, 0, 1), Err(0));
    assert_eq!(map.compare_exchange_entry(Pfn(0), 512, 0, 1), Err(0));
    assert_eq!(buf.iter().filter(|w| **w != 0).count(), 1, "nothing else written");
}

#[test]
fn protect_and_clear_over_the_direct_map() {
    use pvops::pte::flags::{ACCESSED, DIRTY, PRESENT, USER, WRITABLE};
    let (buf, map) = direct_map();
    let mem: &'static DirectMap = Box::leak(Box::new(map));
    let ops = NativeBackend::new(mem, &NoCpu);
    let mm = NoMm;
    buf[2 * 512 + 3] = 0x42000 | PRESENT | USER | WRITABLE | ACCESSED | DIRTY;
    let old = ops.protect_start(&mm, Pfn(2), 3).unwrap();
    assert_eq!(buf[2 * 512 + 3], 0, "withdrawn");
    ops.protect_commit(&mm, Pfn(2), 3, old, Pte(0x42000 | PRESENT | USER)).unwrap();
    assert_eq!(buf[2 * 512 + 3], 0x42000 | PRESENT | USER | ACCESSED | DIRTY);
    let was = ops.clear_accessed_dirty(&mm, Pfn(2), 3, DIRTY).unwrap();
    assert_eq!(was.0, 0x42000 | PRESENT | USER | ACCESSED | DIRTY);
    assert_eq!(buf[2 * 512 + 3], 0x42000 | PRESENT | USER | ACCESSED);
}

/// The native backend never uses the frame metadata.
struct NoMm;
impl pvops::MmServices for NoMm {
    fn has_metadata(&self) -> bool {
        true
    }
    fn alloc_zeroed_frame(&self) -> Result<Pfn, pvops::PvError> {
        Err(pvops::PvError::OutOfMemory)
    }
    fn free_frame(&self, _: Pfn) -> Result<(), pvops::PvError> {
        Ok(())
    }
    fn private(&self, _: Pfn) -> Result<u64, pvops::PvError> {
        Ok(0)
    }
    fn set_private(&self, _: Pfn, _: u64) -> Result<(), pvops::PvError> {
        Ok(())
    }
    fn is_pinned(&self, _: Pfn) -> Result<bool, pvops::PvError> {
        Ok(false)
    }
    fn set_pinned(&self, _: Pfn, _: bool) -> Result<(), pvops::PvError> {
        Ok(())
    }
}
