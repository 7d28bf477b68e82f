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

/// Fills the stand-in memory with words that differ in every frame and slot.
fn fill_distinct(buf: &mut [u64]) {
    for (i, w) in buf.iter_mut().enumerate() {
        *w = 0x1000_0000_0000_0000 | (i as u64 * 0x9e37_79b9) | 1;
    }
}

#[test]
fn direct_map_zero_frame_zeroes_exactly_the_frame() {
    let (buf, map) = direct_map();
    fill_distinct(buf);
    let before = buf.to_vec();
    map.zero_frame(Pfn(1));
    assert!(buf[512..1024].iter().all(|w| *w == 0), "frame 1 not all zero");
    assert_eq!(buf[..512], before[..512], "frame 0 (below) touched");
    assert_eq!(buf[1024..], before[1024..], "frame 2 (above) touched");
    // Out of range: nothing, as `write_entry`.
    let before = buf.to_vec();
    map.zero_frame(Pfn(FRAMES));
    assert_eq!(buf[..], before[..]);
}

#[test]
fn direct_map_copy_frame_copies_exactly_the_frame() {
    let (buf, map) = direct_map();
    fill_distinct(buf);
    let before = buf.to_vec();
    map.copy_frame(Pfn(0), Pfn(2));
    assert_eq!(buf[1024..], before[..512], "frame 2 is not frame 0's copy");
    assert_eq!(buf[..1024], before[..1024], "the source or frame 1 changed");
    let before = buf.to_vec();
    map.copy_frame(Pfn(2), Pfn(1));
    assert_eq!(buf[512..1024], before[1024..], "frame 1 is not frame 2's copy");
    assert_eq!(buf[..512], before[..512], "frame 0 (below) touched");
    assert_eq!(buf[1024..], before[1024..], "the source changed");
    // Onto itself: unchanged.
    let before = buf.to_vec();
    map.copy_frame(Pfn(1), Pfn(1));
    assert_eq!(buf[..], before[..]);
}

/// `DirectMap` with only the required word methods: the trait's defaults.
struct WordByWord(DirectMap);
impl PhysMem for WordByWord {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.0.read_entry(pfn, index)
    }
    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.0.write_entry(pfn, index, value)
    }
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.0.compare_exchange_entry(pfn, index, current, new)
    }
}

#[test]
fn direct_map_bulk_operations_equal_the_word_by_word_defaults() {
    let (bulk_buf, bulk) = direct_map();
    let (word_buf, word) = direct_map();
    let word = WordByWord(word);
    fill_distinct(bulk_buf);
    fill_distinct(word_buf);
    // In range, onto itself, and with either frame out of range (a source
    // out of range reads as zeros, a destination out of range is dropped).
    let copies = [(0, 2), (2, 1), (1, 1), (FRAMES, 0), (0, FRAMES), (FRAMES + 7, FRAMES)];
    for (step, (from, to)) in copies.into_iter().enumerate() {
        bulk.copy_frame(Pfn(from), Pfn(to));
        word.copy_frame(Pfn(from), Pfn(to));
        assert_eq!(bulk_buf[..], word_buf[..], "copy {from} -> {to} (step {step})");
        let z = Pfn((from + to) % (FRAMES + 1));
        bulk.zero_frame(z);
        word.zero_frame(z);
        assert_eq!(bulk_buf[..], word_buf[..], "zero {z:?} (step {step})");
        bulk_buf[step * 300 % bulk_buf.len()] = step as u64 + 5;
        word_buf[step * 300 % word_buf.len()] = step as u64 + 5;
    }
}

#[test]
fn from_env_with_takes_only_the_platforms_own_memory() {
    use pvops::{BootEnv, EntryKind, Level};
    let (buf, map) = direct_map();
    let mem: &'static DirectMap = Box::leak(Box::new(map));
    let platform = NativePlatform { mem, cpu: &NoCpu, cpus: &pvops::SingleCpu };
    let env = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &platform };
    let typed: NativeBackend<DirectMap> = NativeBackend::from_env_with(&env, mem).unwrap();
    let mm = NoMm;
    typed.set_entry(&mm, Level::L1, Pfn(2), 5, Pte(0x77)).unwrap();
    assert_eq!(buf[2 * 512 + 5], 0x77, "the typed backend writes the platform's memory");
    assert_eq!(typed.read_entry(Level::L1, Pfn(2), 5), Ok(Pte(0x77)));
    // The same frames through another object: not the platform's seam.
    let copy: &'static DirectMap = Box::leak(Box::new(*mem));
    assert!(matches!(NativeBackend::from_env_with(&env, copy), Err(pvops::PvError::WrongState { .. })));
    // Not a native platform at all.
    let wrong = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &0u32 };
    assert!(matches!(NativeBackend::from_env_with(&wrong, mem), Err(pvops::PvError::WrongState { .. })));
}

/// A zero-sized memory type has no address of its own (every value shares
/// one dangling pointer), so it can never prove it is the platform's.
#[test]
fn from_env_with_refuses_a_zero_sized_memory() {
    use pvops::{BootEnv, EntryKind};
    struct Nothing;
    impl PhysMem for Nothing {
        fn read_entry(&self, _: Pfn, _: usize) -> u64 {
            0
        }
        fn write_entry(&self, _: Pfn, _: usize, _: u64) {}
        fn compare_exchange_entry(&self, _: Pfn, _: usize, _: u64, _: u64) -> Result<u64, u64> {
            Err(0)
        }
    }
    let a: &'static Nothing = Box::leak(Box::new(Nothing));
    let b: &'static Nothing = Box::leak(Box::new(Nothing));
    assert!(core::ptr::addr_eq(a, b), "zero-sized boxes share an address");
    let platform = NativePlatform { mem: a, cpu: &NoCpu, cpus: &pvops::SingleCpu };
    let env = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &platform };
    assert!(matches!(NativeBackend::from_env_with(&env, b), Err(pvops::PvError::WrongState { .. })));
}
