//! What a partition (or a whole disk) holds, told by its magic numbers —
//! never by the partition type, which is only a label.

use crate::error::Result;

use super::ext4::is_ext;
use super::image::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Ext,
    Xfs,
    Btrfs,
    Ntfs,
    Fat,
    Swap,
    Lvm,
    Luks,
    Unknown,
}

impl Detected {
    pub fn word(self) -> &'static str {
        match self {
            Detected::Ext => "ext2/3/4",
            Detected::Xfs => "xfs",
            Detected::Btrfs => "btrfs",
            Detected::Ntfs => "ntfs",
            Detected::Fat => "fat",
            Detected::Swap => "swap",
            Detected::Lvm => "lvm2-pv",
            Detected::Luks => "luks",
            Detected::Unknown => "unknown",
        }
    }

    /// Why lifeboat does not list its files (None: it does).
    pub fn not_readable(self) -> Option<&'static str> {
        match self {
            Detected::Ext => None,
            Detected::Swap => Some("swap space holds no files"),
            Detected::Luks => Some("encrypted (LUKS): its files need the key; restore the disk and unlock it"),
            Detected::Lvm => Some("an LVM physical volume: lifeboat does not map logical volumes yet; restore the disk and activate it in a VM"),
            Detected::Unknown => Some("no filesystem lifeboat recognises"),
            _ => Some("lifeboat reads ext2/3/4 only so far; restore the disk and mount it in a VM"),
        }
    }
}

/// Enough of the start to see every magic number below.
const PROBE: u64 = 0x10048;

pub fn detect(w: &Window) -> Result<Detected> {
    let n = PROBE.min(w.len) as usize;
    let mut b = vec![0u8; n];
    w.read_at(0, &mut b)?;
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    Ok(if is_ext(&b) {
        Detected::Ext
    } else if at(0, b"XFSB") {
        Detected::Xfs
    } else if at(0x10040, b"_BHRfS_M") {
        Detected::Btrfs
    } else if at(3, b"NTFS    ") {
        Detected::Ntfs
    } else if at(0, b"LUKS\xba\xbe") {
        Detected::Luks
    } else if at(512, b"LABELONE") && at(536, b"LVM2 001") {
        Detected::Lvm
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Detected::Swap
    } else if at(54, b"FAT1") || at(82, b"FAT32   ") {
        Detected::Fat
    } else {
        Detected::Unknown
    })
}
