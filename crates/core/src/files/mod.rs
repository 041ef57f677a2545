//! Files from a backup without restoring it: a volume's partition table
//! (MBR or GPT) and its ext2/3/4 filesystems, read straight from the
//! backup's chunks (fetched on demand and verified, as `lifeboat nbd`
//! serves them) by userspace code. Nothing is mounted: a hostile
//! filesystem in a backup never reaches the host's kernel.
//!
//! Paths name the filesystem first: `p1/etc/hosts` is `/etc/hosts` on
//! partition 1; `disk/…` when the whole volume is one filesystem.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::jobs::CancellationToken;

mod entry;
mod ext4;
mod extract;
mod image;
mod partitions;
mod probe;

pub use entry::{Entry, Filesystem, Kind, Time};
pub use extract::Extracted;
pub use image::{Image, Window};
pub use partitions::{Partition, Table};
pub use probe::Detected;

/// One filesystem (or would-be filesystem) of a volume.
#[derive(Debug, Clone)]
pub struct FsInfo {
    /// `p1`, `p5`, or `disk` for a filesystem on the whole volume.
    pub name: String,
    pub start: u64,
    pub len: u64,
    pub detected: Detected,
    /// "MBR 0x83", "GPT Linux filesystem", or empty for the whole disk.
    pub partition_kind: String,
    /// The filesystem's label, or the GPT partition's name.
    pub label: String,
}

pub struct Volume {
    image: Arc<dyn Image>,
    /// "mbr", "gpt" or "none".
    pub scheme: &'static str,
    pub filesystems: Vec<FsInfo>,
}

/// Where a path leads: the filesystem, and the path inside it.
pub struct Located {
    pub fs: Box<dyn Filesystem>,
    pub fs_name: String,
    /// Absolute within the filesystem (`/etc/hosts`).
    pub inner: Vec<u8>,
}

/// What a path shows: a volume's filesystems, or entries with their
/// full paths (`p1/etc/hosts`).
pub enum Listing {
    Filesystems(Vec<FsInfo>),
    Entries(Vec<(String, Entry)>),
}

/// Results one search returns at most.
pub const MAX_FOUND: usize = 10_000;

/// Directories one search walks at most, and how deep.
const MAX_WALK: u64 = 5_000_000;
const MAX_DEPTH: usize = 512;

impl Volume {
    pub fn open(image: Arc<dyn Image>) -> Result<Volume> {
        let (scheme, parts) = match partitions::read_table(image.as_ref())? {
            Table::None => ("none", Vec::new()),
            Table::Mbr(p) => ("mbr", p),
            Table::Gpt(p) => ("gpt", p),
        };
        let mut filesystems = Vec::new();
        let whole = Partition {
            number: 0,
            start: 0,
            len: image.size(),
            kind: String::new(),
            label: String::new(),
        };
        let listed = if scheme == "none" { vec![whole] } else { parts };
        for p in listed {
            let w = Window {
                image: image.clone(),
                start: p.start,
                len: p.len,
            };
            let detected = probe::detect(&w)?;
            let name = if p.number == 0 {
                "disk".to_string()
            } else {
                format!("p{}", p.number)
            };
            let label = match detected {
                Detected::Ext => ext4::Ext::open(w, &name)
                    .map(|e| e.label())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            filesystems.push(FsInfo {
                name,
                start: p.start,
                len: p.len,
                detected,
                partition_kind: p.kind,
                label: if label.is_empty() { p.label } else { label },
            });
        }
        Ok(Volume {
            image,
            scheme,
            filesystems,
        })
    }

    fn names(&self) -> String {
        self.filesystems
            .iter()
            .map(|f| format!("{} ({})", f.name, f.detected.word()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Splits `p1/etc/hosts` into the filesystem and `/etc/hosts`.
    pub fn locate(&self, path: &str) -> Result<Located> {
        let trimmed = path.trim_start_matches('/');
        let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let Some(info) = self.filesystems.iter().find(|f| f.name == first) else {
            return Err(Error::BadInput(format!(
                "no filesystem {first:?} on this volume; it has {}: paths start with one of them, e.g. {}/etc/hosts",
                if self.filesystems.is_empty() { "none".to_string() } else { self.names() },
                self.filesystems.first().map_or("p1", |f| f.name.as_str())
            )));
        };
        if let Some(why) = info.detected.not_readable() {
            return Err(Error::BadInput(format!(
                "{} ({}): {why}",
                info.name,
                info.detected.word()
            )));
        }
        let w = Window {
            image: self.image.clone(),
            start: info.start,
            len: info.len,
        };
        let fs = Box::new(ext4::Ext::open(w, &info.name)?);
        let inner = format!("/{}", rest.trim_end_matches('/'));
        Ok(Located {
            fs,
            fs_name: info.name.clone(),
            inner: inner.into_bytes(),
        })
    }

    /// Entries under `dir` (in any filesystem of the volume) whose name
    /// holds `needle` (case-insensitive), at most `max`: (path, entry).
    pub fn find(&self, dir: &str, needle: &str, max: usize) -> Result<Vec<(String, Entry)>> {
        let at = self.locate(dir)?;
        let needle = needle.to_lowercase();
        let mut found = Vec::new();
        let mut stack = vec![(at.inner.clone(), 0usize)];
        let mut walked = 0u64;
        while let Some((d, depth)) = stack.pop() {
            walked += 1;
            if walked > MAX_WALK || depth > MAX_DEPTH {
                return Err(Error::BadInput(format!(
                    "the search walked more than {MAX_WALK} directories or deeper than {MAX_DEPTH} (damaged or hostile filesystem: a directory loop?)"
                )));
            }
            for e in at.fs.list(&d)? {
                let p = entry::join(&d, &e.name);
                if e.name_text().to_lowercase().contains(&needle) {
                    found.push((
                        format!("{}{}", at.fs_name, String::from_utf8_lossy(&p)),
                        e.clone(),
                    ));
                    if found.len() >= max {
                        return Ok(found);
                    }
                }
                if e.kind == Kind::Dir {
                    stack.push((p, depth + 1));
                }
            }
        }
        Ok(found)
    }

    /// What `path` shows (None: the filesystems), or with `find`, the
    /// entries under it (or under every readable filesystem) whose name
    /// holds that text. A directory's entries come sorted by name.
    pub fn browse(&self, path: Option<&str>, find: Option<&str>) -> Result<Listing> {
        if let Some(needle) = find {
            let dirs: Vec<String> = match path {
                Some(p) => vec![p.to_string()],
                None => self
                    .filesystems
                    .iter()
                    .filter(|f| f.detected.not_readable().is_none())
                    .map(|f| f.name.clone())
                    .collect(),
            };
            let mut all = Vec::new();
            for d in dirs {
                let left = MAX_FOUND.saturating_sub(all.len());
                all.extend(self.find(&d, needle, left)?);
            }
            return Ok(Listing::Entries(all));
        }
        let Some(p) = path else {
            return Ok(Listing::Filesystems(self.filesystems.clone()));
        };
        let at = self.locate(p)?;
        let e = at.fs.stat(&at.inner)?;
        let shown = format!("{}{}", at.fs_name, String::from_utf8_lossy(&at.inner));
        if e.kind != Kind::Dir {
            return Ok(Listing::Entries(vec![(shown, e)]));
        }
        let mut list = at.fs.list(&at.inner)?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let base = shown.trim_end_matches('/').to_string();
        Ok(Listing::Entries(
            list.into_iter()
                .map(|c| (format!("{base}/{}", c.name_text()), c))
                .collect(),
        ))
    }

    /// Extracts the file or directory at `path` into `to`.
    pub fn extract(
        &self,
        path: &str,
        to: &std::path::Path,
        cancel: &CancellationToken,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Extracted> {
        let at = self.locate(path)?;
        let mut entry = at.fs.stat(&at.inner)?;
        if at.inner == b"/" {
            // The root has no name of its own: it comes out as `p1`.
            entry.name = at.fs_name.clone().into_bytes();
        }
        extract::extract(at.fs.as_ref(), &at.inner, &entry, to, cancel, progress)
    }
}

#[cfg(test)]
mod tests {
    //! The filesystem is hostile input: a real ext4 image (mkfs.ext4 -d)
    //! behind an MBR, read whole, then read again after thousands of
    //! seeded random corruptions of its metadata — every run must end in
    //! a result or a clean error, never a panic, a hang or a half-made
    //! extraction.

    use super::*;
    use rand::{Rng, SeedableRng};
    use std::process::Command;

    const MIB: usize = 1 << 20;

    /// An 8 MiB disk: MBR, partition 1 from 1 MiB holding ext4 made
    /// from a small tree (with or without metadata checksums, which
    /// catch most flips before the parser meets them).
    fn disk(checksums: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/nginx/conf.d")).unwrap();
        std::fs::create_dir_all(tree.join("var/empty")).unwrap();
        std::fs::write(tree.join("etc/nginx/nginx.conf"), "events {}\n").unwrap();
        std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n".repeat(300)).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(tree.join("var/big.bin"), big).unwrap();
        std::os::unix::fs::symlink("nginx/nginx.conf", tree.join("etc/link")).unwrap();
        for i in 0..40 {
            std::fs::write(tree.join(format!("etc/nginx/conf.d/site{i}.conf")), "x").unwrap();
        }
        let img = dir.path().join("fs.img");
        std::fs::write(&img, vec![0u8; 7 * MIB]).unwrap();
        let features = if checksums {
            "metadata_csum"
        } else {
            "^metadata_csum"
        };
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-O", features, "-L", "fuzz", "-d"])
            .arg(&tree)
            .arg(&img)
            .output()
            .expect("mkfs.ext4 (e2fsprogs; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut d = vec![0u8; MIB];
        d.extend(std::fs::read(&img).unwrap());
        let e = 446;
        d[e + 4] = 0x83;
        d[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        d[e + 12..e + 16].copy_from_slice(&((7 * MIB / 512) as u32).to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    /// Everything a user can ask of the volume: list it, walk it, read
    /// every small file, extract a directory. Returns what was seen.
    fn exercise(d: Vec<u8>, out: &std::path::Path) -> Result<usize> {
        let vol = Volume::open(Arc::new(d))?;
        let all = vol.find("p1", "", 100_000)?;
        let at = vol.locate("p1")?;
        let mut seen = all.len();
        for (path, e) in &all {
            if e.kind == Kind::File && e.size <= 4 * MIB as u64 {
                let inner = path.strip_prefix("p1").unwrap_or(path).as_bytes();
                at.fs.read(inner, &mut |b| {
                    seen += b.len();
                    Ok(())
                })?;
            }
        }
        if all.iter().all(|(_, e)| e.size <= 4 * MIB as u64) {
            vol.extract("p1/etc", out, &CancellationToken::new(), &mut |_| {})?;
        }
        Ok(seen)
    }

    #[test]
    fn a_clean_image_reads_whole() {
        let out = tempfile::tempdir().unwrap();
        let vol = Volume::open(Arc::new(disk(true))).unwrap();
        assert_eq!(vol.scheme, "mbr");
        assert_eq!(vol.filesystems[0].label, "fuzz");
        assert!(exercise(disk(true), out.path()).unwrap() > 300_000);
        let conf = std::fs::read(out.path().join("etc/nginx/nginx.conf")).unwrap();
        assert_eq!(conf, b"events {}\n");
        let link = std::fs::read_link(out.path().join("etc/link")).unwrap();
        assert_eq!(link, std::path::Path::new("nginx/nginx.conf"));
    }

    #[test]
    fn corrupted_images_never_panic() {
        for checksums in [false, true] {
            let clean = disk(checksums);
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x11feb0a7 + checksums as u64);
            let (mut ok, mut failed) = (0, 0);
            for case in 0..600 {
                let mut d = clean.clone();
                // Metadata lives in the partition's first 512 KiB
                // (superblock, descriptors, bitmaps, inode tables,
                // directories); now and then the partition table too.
                for _ in 0..rng.random_range(1..24) {
                    let at = if rng.random_bool(0.05) {
                        rng.random_range(446..512)
                    } else {
                        MIB + rng.random_range(0..512 * 1024)
                    };
                    d[at] = rng.random();
                }
                let out = tempfile::tempdir().unwrap();
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    exercise(d, out.path())
                }));
                match res {
                    Err(_) => panic!("case {case} (checksums {checksums}) panicked"),
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(_)) => {
                        failed += 1;
                        // A failed extraction leaves nothing behind.
                        let left: Vec<_> = std::fs::read_dir(out.path())
                            .map(|r| r.flatten().map(|e| e.file_name()).collect())
                            .unwrap_or_default();
                        assert!(left.is_empty(), "case {case}: {left:?} left");
                    }
                }
            }
            // Both outcomes occur: the corruption reached the parser.
            assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
        }
    }
}
