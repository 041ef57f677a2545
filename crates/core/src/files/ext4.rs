//! ext2/3/4 through `ext4-view`: a pure-Rust, read-only reader written to
//! take untrusted images (it validates checksums and bounds, replays the
//! journal in memory, and never writes), so a hostile filesystem in a
//! backup meets userspace code and never the host's kernel.

use ext4_view::{Ext4, Ext4Error, FileType, Metadata};

use crate::error::{Error, Result};

use super::entry::{join, Entry, Filesystem, Kind};
use super::image::Window;

/// ext2/3/4 superblock magic, at byte 1024 + 56.
pub fn is_ext(b: &[u8]) -> bool {
    b.len() >= 1082 && b[1080] == 0x53 && b[1081] == 0xEF
}

struct Source(Window);

impl ext4_view::Ext4Read for Source {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.read_at(start, dst).map_err(|e| Box::new(e) as _)
    }
}

pub struct Ext {
    fs: Ext4,
    /// Which filesystem this is, for errors (`p1`).
    name: String,
}

impl Ext {
    pub fn open(window: Window, name: &str) -> Result<Ext> {
        let fs = Ext4::load(Box::new(Source(window))).map_err(|e| convert(e, name, b""))?;
        Ok(Ext {
            fs,
            name: name.to_string(),
        })
    }

    pub fn label(&self) -> String {
        self.fs.label().to_str().unwrap_or_default().to_string()
    }

    fn err(&self, path: &[u8]) -> impl Fn(Ext4Error) -> Error + '_ {
        let path = path.to_vec();
        move |e| convert(e, &self.name, &path)
    }
}

fn convert(e: Ext4Error, fs: &str, path: &[u8]) -> Error {
    let at = format!("{fs}{}", String::from_utf8_lossy(path));
    match e {
        Ext4Error::NotFound => {
            Error::BadInput(format!("{at}: no such file or directory in this backup"))
        }
        Ext4Error::NotADirectory => Error::BadInput(format!("{at} is not a directory")),
        Ext4Error::IsADirectory => Error::BadInput(format!("{at} is a directory")),
        Ext4Error::Encrypted => Error::BadInput(format!(
            "{at} is encrypted (fscrypt): lifeboat cannot read it without the key; restore the disk and unlock it in a VM"
        )),
        Ext4Error::Io(inner) => match inner.downcast::<Error>() {
            // The repository's own error (a corrupt chunk, a remote gone):
            // as it was, with its advice.
            Ok(ours) => *ours,
            Err(other) => Error::BadInput(format!("reading {at}: {other}")),
        },
        Ext4Error::Incompatible(i) => Error::BadInput(format!(
            "the ext filesystem {fs} uses features this reader does not support ({i}); restore the disk and mount it in a VM"
        )),
        Ext4Error::Corrupt(c) => Error::BadInput(format!(
            "the ext filesystem {fs} is damaged at {at}: {c}; restore the disk whole and run e2fsck on the copy"
        )),
        other => Error::BadInput(format!("{at}: {other}")),
    }
}

fn kind(t: FileType) -> Kind {
    match t {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::BlockDevice => Kind::BlockDevice,
        FileType::CharacterDevice => Kind::CharDevice,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        _ => Kind::File,
    }
}

fn entry(name: &[u8], m: &Metadata) -> Entry {
    let t = |ts: ext4_view::Timestamp| (ts.seconds(), ts.nanoseconds());
    Entry {
        name: name.to_vec(),
        kind: kind(m.file_type()),
        size: m.len(),
        mode: u32::from(m.mode()) & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: t(m.modified()),
        atime: t(m.accessed()),
        target: None,
    }
}

fn base(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

impl Ext {
    fn with_target(&self, path: &[u8], mut e: Entry) -> Result<Entry> {
        if e.kind == Kind::Symlink {
            let t = self
                .fs
                .read_link(ext4_view::Path::new(path))
                .map_err(self.err(path))?;
            e.target = Some(t.as_ref().to_vec());
        }
        Ok(e)
    }
}

impl Filesystem for Ext {
    fn stat(&self, path: &[u8]) -> Result<Entry> {
        let p = ext4_view::Path::try_from(path)
            .map_err(|e| Error::BadInput(format!("{}: {e}", String::from_utf8_lossy(path))))?;
        let m = self.fs.symlink_metadata(p).map_err(self.err(path))?;
        self.with_target(path, entry(base(path), &m))
    }

    fn list(&self, dir: &[u8]) -> Result<Vec<Entry>> {
        let p = ext4_view::Path::try_from(dir)
            .map_err(|e| Error::BadInput(format!("{}: {e}", String::from_utf8_lossy(dir))))?;
        let mut out = Vec::new();
        for d in self.fs.read_dir(p).map_err(self.err(dir))? {
            let d = d.map_err(self.err(dir))?;
            let name = d.file_name();
            let name = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            let m = d.metadata().map_err(self.err(&join(dir, name)))?;
            out.push(self.with_target(&join(dir, name), entry(name, &m))?);
        }
        Ok(out)
    }

    fn read(&self, path: &[u8], out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let p = ext4_view::Path::try_from(path)
            .map_err(|e| Error::BadInput(format!("{}: {e}", String::from_utf8_lossy(path))))?;
        let mut f = self.fs.open(p).map_err(self.err(path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read_bytes(&mut buf).map_err(self.err(path))?;
            if n == 0 {
                return Ok(());
            }
            out(&buf[..n])?;
        }
    }
}
