//! One file, directory or link as a filesystem in a backup describes it,
//! and the interface every filesystem reader offers.

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::BlockDevice => "block-device",
            Kind::CharDevice => "char-device",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
        }
    }

    fn letter(self) -> char {
        match self {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::BlockDevice => 'b',
            Kind::CharDevice => 'c',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        }
    }
}

/// Seconds and nanoseconds since the epoch.
pub type Time = (i64, u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name's bytes as stored (not always UTF-8).
    pub name: Vec<u8>,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits, with setuid/setgid/sticky (0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    pub atime: Time,
    /// A symlink's target, as stored.
    pub target: Option<Vec<u8>>,
}

impl Entry {
    /// The name for people (invalid UTF-8 replaced; escape it before a
    /// terminal sees it).
    pub fn name_text(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// `drwxr-xr-x`, as `ls -l` writes it.
    pub fn mode_text(&self) -> String {
        let m = self.mode;
        let mut s = String::with_capacity(10);
        s.push(self.kind.letter());
        for (shift, special, lower, upper) in [
            (6, 0o4000, 's', 'S'),
            (3, 0o2000, 's', 'S'),
            (0, 0o1000, 't', 'T'),
        ] {
            let bits = (m >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(match (bits & 1 != 0, m & special != 0) {
                (true, true) => lower,
                (false, true) => upper,
                (true, false) => 'x',
                (false, false) => '-',
            });
        }
        s
    }
}

/// `dir/name`, as bytes (`dir` with or without its trailing `/`).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// What every filesystem reader offers. Paths are absolute within the
/// filesystem, as bytes (`/etc/hosts`).
pub trait Filesystem {
    /// The entry itself (a symlink is not followed).
    fn stat(&self, path: &[u8]) -> Result<Entry>;
    /// A directory's entries, without `.` and `..`, in stored order.
    fn list(&self, dir: &[u8]) -> Result<Vec<Entry>>;
    /// A regular file's bytes, in order, a block at a time.
    fn read(&self, path: &[u8], out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_text_is_ls_l() {
        let mut e = Entry {
            name: b"x".to_vec(),
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            atime: (0, 0),
            target: None,
        };
        assert_eq!(e.mode_text(), "drwxr-xr-x");
        e.kind = Kind::File;
        e.mode = 0o4754;
        assert_eq!(e.mode_text(), "-rwsr-xr--");
        e.mode = 0o1777;
        e.kind = Kind::Dir;
        assert_eq!(e.mode_text(), "drwxrwxrwt");
    }
}
