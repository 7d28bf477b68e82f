//! The PV `start_info` page (xen/include/public/xen.h, x86-64 layout).

/// `SIF_PRIVILEGED`.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// `struct start_info` (1168 bytes on x86-64).
#[repr(C)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    /// Machine address of the shared_info page.
    pub shared_info: u64,
    pub flags: u32,
    _pad0: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    _pad1: u32,
    /// dom0: info_off (u32) / info_size (u32); domU: mfn + evtchn.
    pub console: [u64; 2],
    /// VA of the bootstrap L4 (current CR3).
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    /// VA of the p2m: `u64[nr_pages]` of MFNs.
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; 1024],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

const _: () = assert!(core::mem::size_of::<StartInfo>() == 1168);
const _: () = assert!(core::mem::offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);

impl StartInfo {
    /// The magic string ("xen-3.0-x86_64p" for a PAE_MODE=yes 64-bit guest).
    pub fn magic_str(&self) -> &str {
        let len = self.magic.iter().position(|&b| b == 0).unwrap_or(self.magic.len());
        core::str::from_utf8(&self.magic[..len]).unwrap_or("<bad magic>")
    }

    /// `true` if the magic says x86-64 PV.
    pub fn is_valid(&self) -> bool {
        self.magic_str().starts_with("xen-3.0-x86_64")
    }

    /// The dom0 command line.
    pub fn cmdline(&self) -> &str {
        let len = self.cmd_line.iter().position(|&b| b == 0).unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..len]).unwrap_or("")
    }
}
