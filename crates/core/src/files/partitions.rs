//! MBR and GPT partition tables, read from a disk image that came out of
//! a backup — hostile input: every field is bounded by the image's size
//! before it is used, GPT checksums are checked (the backup GPT at the
//! disk's end is read when the primary is damaged), and an extended
//! partition's chain of boot records is followed at most `MAX_LOGICAL`
//! steps.
//!
//! Written here rather than taken from `gptman`/`mbrman`: they are
//! read-write editors that bring `nix` and a serialization framework with
//! proc macros to parse two small tables, and we need only where each
//! partition starts and ends.

use crate::error::{Error, Result};

use super::image::Image;

/// A partition: where it lies in the image, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based as Linux numbers them (MBR logical partitions from 5).
    pub number: u32,
    pub start: u64,
    pub len: u64,
    /// "MBR 0x83", "GPT Linux filesystem", …
    pub kind: String,
    /// A GPT partition's own name (empty for MBR).
    pub label: String,
}

/// What the image's first sectors say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// No partition table: the whole image is one filesystem (or nothing
    /// lifeboat knows).
    None,
    Mbr(Vec<Partition>),
    Gpt(Vec<Partition>),
}

const SECTOR: u64 = 512;
const MAX_LOGICAL: u32 = 128;
const MAX_GPT_ENTRIES: u32 = 4096;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn bad(what: &str) -> Error {
    Error::BadInput(format!(
        "the volume's partition table is damaged: {what}; restore the disk whole and repair it with fdisk/gdisk"
    ))
}

fn read(img: &dyn Image, at: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    img.read_at(at, &mut b)?;
    Ok(b)
}

/// Reads the image's partition table.
pub fn read_table(img: &dyn Image) -> Result<Table> {
    let size = img.size();
    if size < 2 * SECTOR {
        return Ok(Table::None);
    }
    let mbr = read(img, 0, SECTOR as usize)?;
    if le16(&mbr, 510) != 0xAA55 {
        return Ok(Table::None);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        return read_gpt(img).map(Table::Gpt);
    }
    // A boot sector of a filesystem on the whole disk (FAT, NTFS) also ends
    // in 55AA: its "entries" are code, so status bytes other than 0 and
    // 0x80 say this is no partition table.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(Table::None);
    }
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let (start, sectors) = (le32(e, 8) as u64, le32(e, 12) as u64);
        if kind == 0 || sectors == 0 {
            continue;
        }
        let (start, len) = (start * SECTOR, sectors * SECTOR);
        if start + len > size {
            return Err(bad(&format!(
                "MBR partition {} ends at byte {} of a {size}-byte disk",
                i + 1,
                start + len
            )));
        }
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            logical(img, start, len, &mut parts)?;
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len,
            kind: format!("MBR 0x{kind:02x}"),
            label: String::new(),
        });
    }
    parts.sort_by_key(|p| p.number);
    Ok(Table::Mbr(parts))
}

/// An extended partition's chain of extended boot records: each holds one
/// logical partition (relative to itself) and a link to the next
/// (relative to the extended partition).
fn logical(img: &dyn Image, ext_start: u64, ext_len: u64, out: &mut Vec<Partition>) -> Result<()> {
    let mut ebr = ext_start;
    for n in 0..MAX_LOGICAL {
        let b = read(img, ebr, SECTOR as usize)?;
        if le16(&b, 510) != 0xAA55 {
            return Err(bad(&format!(
                "extended boot record at byte {ebr} has no signature"
            )));
        }
        let (this, next) = (&b[446..462], &b[462..478]);
        let (start, sectors) = (le32(this, 8) as u64, le32(this, 12) as u64);
        if this[4] != 0 && sectors > 0 {
            let (start, len) = (ebr + start * SECTOR, sectors * SECTOR);
            if start + len > ext_start + ext_len {
                return Err(bad(&format!(
                    "logical partition {} lies outside its extended partition",
                    5 + n
                )));
            }
            out.push(Partition {
                number: 5 + n,
                start,
                len,
                kind: format!("MBR 0x{:02x}", this[4]),
                label: String::new(),
            });
        }
        let link = le32(next, 8) as u64 * SECTOR;
        if next[4] == 0 || link == 0 {
            return Ok(());
        }
        if link >= ext_len {
            return Err(bad("an extended boot record links outside its partition"));
        }
        ebr = ext_start + link;
    }
    Err(bad(&format!(
        "more than {MAX_LOGICAL} logical partitions (a loop in the chain?)"
    )))
}

fn read_gpt(img: &dyn Image) -> Result<Vec<Partition>> {
    let last = img.size() / SECTOR - 1;
    match gpt_at(img, 1) {
        Ok(p) => Ok(p),
        Err(primary) => gpt_at(img, last).map_err(|_| primary),
    }
}

fn gpt_at(img: &dyn Image, lba: u64) -> Result<Vec<Partition>> {
    let sectors = img.size() / SECTOR;
    let h = read(img, lba * SECTOR, SECTOR as usize)?;
    if &h[0..8] != b"EFI PART" {
        return Err(bad(&format!("no GPT header at sector {lba}")));
    }
    let hsize = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(bad(&format!("GPT header size {hsize}")));
    }
    let mut zeroed = h[..hsize].to_vec();
    zeroed[16..20].fill(0);
    if crc32(&zeroed) != le32(&h, 16) {
        return Err(bad(&format!(
            "the GPT header at sector {lba} fails its checksum"
        )));
    }
    let (first_usable, last_usable) = (le64(&h, 40), le64(&h, 48));
    let entries_lba = le64(&h, 72);
    let (count, esize) = (le32(&h, 80), le32(&h, 84));
    if count > MAX_GPT_ENTRIES || !(128..=1024).contains(&esize) || esize % 8 != 0 {
        return Err(bad(&format!("{count} GPT entries of {esize} bytes")));
    }
    let table_len = count as u64 * esize as u64;
    if entries_lba >= sectors || entries_lba * SECTOR + table_len > img.size() {
        return Err(bad("the GPT entries lie beyond the disk's end"));
    }
    let table = read(img, entries_lba * SECTOR, table_len as usize)?;
    if crc32(&table) != le32(&h, 88) {
        return Err(bad("the GPT partition entries fail their checksum"));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks(esize as usize).enumerate() {
        let guid = &e[0..16];
        if guid.iter().all(|&b| b == 0) {
            continue;
        }
        let (first, lastl) = (le64(e, 32), le64(e, 40));
        if first > lastl || first < first_usable || lastl > last_usable || lastl >= sectors {
            return Err(bad(&format!(
                "GPT partition {} spans sectors {first}..{lastl} outside the usable {first_usable}..{last_usable}",
                i + 1
            )));
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(Partition {
            number: i as u32 + 1,
            start: first * SECTOR,
            len: (lastl - first + 1) * SECTOR,
            kind: format!("GPT {}", gpt_type_name(guid)),
            label: String::from_utf16_lossy(&name),
        });
    }
    Ok(parts)
}

fn crc32(b: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(b)
}

/// A GUID as text: its first three fields are little-endian on disk.
fn guid_text(g: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(g, 0),
        le16(g, 4),
        le16(g, 6),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

fn gpt_type_name(g: &[u8]) -> String {
    let t = guid_text(g);
    let name = match t.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        _ => return t,
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 8 << 20];
        for (i, (kind, start, n)) in entries.iter().enumerate() {
            let e = 446 + 16 * i;
            d[e + 4] = *kind;
            d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_primary_partitions() {
        let d = mbr(&[(0x83, 2048, 4096), (0x82, 6144, 2048)]);
        let Table::Mbr(p) = read_table(&d).unwrap() else {
            panic!("not MBR")
        };
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].start, p[0].len), (2048 * 512, 4096 * 512));
        assert_eq!(p[1].kind, "MBR 0x82");
    }

    #[test]
    fn mbr_beyond_the_disk_is_refused() {
        let d = mbr(&[(0x83, 2048, 1 << 30)]);
        let e = read_table(&d).unwrap_err().to_string();
        assert!(e.contains("partition 1 ends at byte"), "{e}");
    }

    #[test]
    fn extended_chain_that_loops_is_bounded() {
        let mut d = mbr(&[(0x05, 2048, 8192)]);
        // An EBR whose "next" points back at itself.
        let ebr = 2048 * 512;
        d[ebr + 510] = 0x55;
        d[ebr + 511] = 0xAA;
        d[ebr + 446 + 4] = 0x83;
        d[ebr + 446 + 8..ebr + 446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[ebr + 446 + 12..ebr + 446 + 16].copy_from_slice(&8u32.to_le_bytes());
        d[ebr + 462 + 4] = 0x05;
        d[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
        // link 0 ends the chain: one logical partition
        let Table::Mbr(p) = read_table(&d).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].number, 5);
        // A link to another EBR that links back: bounded, refused.
        d[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&16u32.to_le_bytes());
        let ebr2 = ebr + 16 * 512;
        d[ebr2 + 510] = 0x55;
        d[ebr2 + 511] = 0xAA;
        d[ebr2 + 462 + 4] = 0x05;
        d[ebr2 + 462 + 8..ebr2 + 462 + 12].copy_from_slice(&16u32.to_le_bytes());
        let e = read_table(&d).unwrap_err().to_string();
        assert!(e.contains("logical partitions"), "{e}");
    }

    #[test]
    fn no_signature_is_no_table() {
        assert_eq!(read_table(&vec![0u8; 1 << 20]).unwrap(), Table::None);
    }

    #[test]
    fn gpt_type_guid_reads_mixed_endian() {
        // 0FC63DAF-8483-4772-8E79-3D69D8477DE4 as stored on disk.
        let g = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        assert_eq!(gpt_type_name(&g), "Linux filesystem");
    }
}
