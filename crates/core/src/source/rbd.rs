//! Ceph RBD images: named `rbd:POOL/IMAGE` wherever a volume path goes.
//!
//! Everything goes through Ceph's and QEMU's own tools, as bounded child
//! processes: `rbd` for sizes, snapshots and `rbd diff` (the extents that
//! changed between two snapshots), and `qemu-nbd` with QEMU's rbd driver
//! (librbd) to read a snapshot through the same NBD client as qcow2
//! images. The kernel RBD client is never used (it maps devices into the
//! host; it is not even available on many hosts). Credentials: the
//! cluster's conf, the client id and its keyring file from `[ceph]`; the
//! key never appears on a command line (only the keyring's path).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::source::{Extents, VolumeReader};

/// An image, `rbd:POOL/IMAGE` (`rbd:POOL/NAMESPACE/IMAGE` is not
/// supported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdImage {
    pub pool: String,
    pub image: String,
}

/// Names Ceph accepts and that are safe in QEMU's `rbd:` syntax (which
/// splits on `:`, `@` and `/`).
fn ceph_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl RbdImage {
    /// Whether a volume path names an RBD image.
    pub fn is_rbd(path: &Path) -> bool {
        path.as_os_str().as_encoded_bytes().starts_with(b"rbd:")
    }

    pub fn parse(path: &Path) -> Result<RbdImage> {
        let s = path.to_string_lossy();
        let bad = |why: &str| {
            Error::BadInput(format!(
                "{}: {why}: an RBD volume is rbd:POOL/IMAGE (names of A-Z a-z 0-9 . _ -)",
                crate::text::escape(&s)
            ))
        };
        let rest = s
            .strip_prefix("rbd:")
            .ok_or_else(|| bad("not an rbd: path"))?;
        let (pool, image) = rest.split_once('/').ok_or_else(|| bad("no pool"))?;
        if !ceph_name(pool) || !ceph_name(image) {
            return Err(bad("a pool or image name lifeboat does not accept"));
        }
        Ok(RbdImage {
            pool: pool.into(),
            image: image.into(),
        })
    }

    /// A pool, `rbd:POOL` (a whole VM restored onto it).
    pub fn parse_pool(path: &Path) -> Result<String> {
        let s = path.to_string_lossy();
        match s.strip_prefix("rbd:").map(|p| p.trim_end_matches('/')) {
            Some(pool) if ceph_name(pool) => Ok(pool.to_string()),
            _ => Err(Error::BadInput(format!(
                "{}: a whole VM is restored onto a pool, rbd:POOL (names of A-Z a-z 0-9 . _ -); its images are named after its volumes",
                crate::text::escape(&s)
            ))),
        }
    }

    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("rbd:{}", self.spec()))
    }
}

/// How to reach the cluster (`[ceph]`): all optional, Ceph's defaults
/// (/etc/ceph/ceph.conf, client.admin) otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephConfig {
    pub conf: Option<PathBuf>,
    /// The client id (`backup` for client.backup).
    pub id: Option<String>,
    /// The keyring file holding that client's key.
    pub keyring: Option<PathBuf>,
}

impl CephConfig {
    /// Refuses ids that would not survive QEMU's `rbd:` syntax, and a
    /// keyring others can read (it holds a secret).
    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(id) = &self.id {
            if !ceph_name(id) {
                return Err(format!("[ceph] id {id:?}: use A-Z a-z 0-9 . _ -"));
            }
        }
        for (what, p) in [("conf", &self.conf), ("keyring", &self.keyring)] {
            if let Some(p) = p {
                let s = p.to_string_lossy();
                if s.contains(':') || s.contains('@') || s.chars().any(char::is_control) {
                    return Err(format!("[ceph] {what} {s:?}: a path without ':' or '@'"));
                }
            }
        }
        if let Some(k) = &self.keyring {
            use std::os::unix::fs::PermissionsExt;
            // A missing one is Ceph's to report, when it is used.
            if let Ok(md) = std::fs::metadata(k) {
                if md.permissions().mode() & 0o077 != 0 {
                    return Err(format!(
                        "[ceph] keyring {}: others can read this key; make it private (chmod 600)",
                        k.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(c) = &self.conf {
            a.push(format!("--conf={}", c.display()));
        }
        if let Some(i) = &self.id {
            a.push(format!("--id={i}"));
        }
        if let Some(k) = &self.keyring {
            a.push(format!("--keyring={}", k.display()));
        }
        a
    }

    /// QEMU's `rbd:` filename for `image@snap` with these credentials.
    pub fn qemu_filename(&self, image: &RbdImage, snap: Option<&str>) -> String {
        let mut f = format!("rbd:{}", image.spec());
        if let Some(s) = snap {
            f.push('@');
            f.push_str(s);
        }
        if let Some(c) = &self.conf {
            f.push_str(&format!(":conf={}", c.display()));
        }
        if let Some(i) = &self.id {
            f.push_str(&format!(":id={i}"));
        }
        if let Some(k) = &self.keyring {
            f.push_str(&format!(":keyring={}", k.display()));
        }
        f
    }

    /// Runs `rbd ARGS` (bounded: a cluster that does not answer must not
    /// hang a backup).
    pub fn rbd(&self, image: &RbdImage, args: &[&str]) -> Result<String> {
        let mut cmd = std::process::Command::new("rbd");
        cmd.args(self.args()).args(args);
        let what = args.first().copied().unwrap_or("");
        let fail = |reason: String| Error::Source {
            path: image.path(),
            reason,
        };
        let out = crate::vm::run_bounded(&mut cmd, Duration::from_secs(120)).map_err(|e| {
            fail(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "the rbd tool is not installed here (apt-get install ceph-common)".into()
                }
                _ => format!("rbd {what}: {e}"),
            })
        })?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            let hint = if said.contains("(13) Permission denied")
                || said.contains("(1) Operation not permitted")
                || said.contains("handle_auth_bad_method")
            {
                " (Ceph refused these credentials: check [ceph] id and keyring)"
            } else if said.contains("couldn't connect to the cluster") {
                " (could not reach or log in to the cluster: check [ceph] conf, id and keyring)"
            } else if said.contains("(2) No such file or directory") {
                " (no such pool, image or snapshot)"
            } else if said.contains("(110) Connection timed out") || said.contains("timed out") {
                " (the cluster did not answer: check [ceph] conf and that its monitors run)"
            } else {
                ""
            };
            return Err(fail(format!(
                "rbd {what} failed: {}{hint}",
                crate::text::escape(&said)
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| fail(format!("rbd {what} printed non-UTF-8")))
    }

    /// The image's size in bytes.
    pub fn size(&self, image: &RbdImage) -> Result<u64> {
        #[derive(Deserialize)]
        struct Info {
            size: u64,
        }
        let out = self.rbd(image, &["info", "--format=json", &image.spec()])?;
        let i: Info = serde_json::from_str(&out).map_err(|e| Error::Source {
            path: image.path(),
            reason: format!("rbd info printed something unexpected: {e}"),
        })?;
        Ok(i.size)
    }

    pub fn snapshots(&self, image: &RbdImage) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Snap {
            name: String,
        }
        let out = self.rbd(image, &["snap", "ls", "--format=json", &image.spec()])?;
        let v: Vec<Snap> = serde_json::from_str(&out).map_err(|e| Error::Source {
            path: image.path(),
            reason: format!("rbd snap ls printed something unexpected: {e}"),
        })?;
        Ok(v.into_iter().map(|s| s.name).collect())
    }

    pub fn snap_create(&self, image: &RbdImage, snap: &str) -> Result<()> {
        self.rbd(
            image,
            &["snap", "create", &format!("{}@{snap}", image.spec())],
        )
        .map(|_| ())
    }

    pub fn snap_remove(&self, image: &RbdImage, snap: &str) -> Result<()> {
        self.rbd(image, &["snap", "rm", &format!("{}@{snap}", image.spec())])
            .map(|_| ())
    }

    /// A reader of `image@snap` through a private read-only `qemu-nbd`:
    /// its data extents, and with `base` only what changed since that
    /// snapshot (`rbd diff`).
    pub fn open_snapshot(
        &self,
        image: &RbdImage,
        snap: &str,
        base: Option<&str>,
    ) -> Result<crate::source::qemu::Qcow2Reader> {
        let extents = self.diff(image, snap, None)?;
        let dirty = match base {
            Some(b) => Some(self.diff(image, snap, Some(b))?),
            None => None,
        };
        crate::source::qemu::Qcow2Reader::open_rbd(
            &image.path(),
            &self.qemu_filename(image, Some(snap)),
            extents,
            dirty,
        )
    }

    /// Extents of `image@snap` that hold data (None) or that changed since
    /// `from` (Some), merged and sorted.
    pub fn diff(&self, image: &RbdImage, snap: &str, from: Option<&str>) -> Result<Extents> {
        #[derive(Deserialize)]
        struct Ext {
            offset: u64,
            length: u64,
        }
        let at = format!("{}@{snap}", image.spec());
        let mut args = vec!["diff", "--format=json"];
        if let Some(f) = from {
            args.extend(["--from-snap", f]);
        }
        args.push(&at);
        let out = self.rbd(image, &args)?;
        let mut v: Vec<Ext> = serde_json::from_str(&out).map_err(|e| Error::Source {
            path: image.path(),
            reason: format!("rbd diff printed something unexpected: {e}"),
        })?;
        v.sort_by_key(|e| e.offset);
        let mut merged: Extents = Vec::new();
        for e in v {
            let end = e.offset.saturating_add(e.length);
            match merged.last_mut() {
                Some(last) if last.1 >= e.offset => last.1 = last.1.max(end),
                _ => merged.push((e.offset, end)),
            }
        }
        Ok(merged)
    }
}

/// A live image read at one instant: through a snapshot taken for the
/// read (`lifeboat-read-<hex>`, not a backup's, so no lineage ever takes
/// it for a base) and removed when the reader goes.
pub struct LiveImageReader {
    inner: crate::source::qemu::Qcow2Reader,
    cluster: CephConfig,
    image: RbdImage,
    snap: String,
}

/// Opens a live RBD image (hash, compare) at one instant.
pub fn open_live(path: &Path, cluster: &CephConfig) -> Result<LiveImageReader> {
    let image = RbdImage::parse(path)?;
    let snap = format!("lifeboat-read-{}", hex::encode(rand::random::<[u8; 8]>()));
    cluster.snap_create(&image, &snap)?;
    let inner = match cluster.open_snapshot(&image, &snap, None) {
        Ok(r) => r,
        Err(e) => {
            let _ = cluster.snap_remove(&image, &snap);
            return Err(e);
        }
    };
    Ok(LiveImageReader {
        inner,
        cluster: cluster.clone(),
        image,
        snap,
    })
}

impl VolumeReader for LiveImageReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn data_extents(&mut self) -> Result<Extents> {
        self.inner.data_extents()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn bytes_read(&self) -> Option<u64> {
        self.inner.bytes_read()
    }
}

impl Drop for LiveImageReader {
    fn drop(&mut self) {
        // The reader (qemu-nbd) goes first: its field drops after this.
        let _ = self.cluster.snap_remove(&self.image, &self.snap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbd_paths_parse_and_hostile_names_are_refused() {
        let i = RbdImage::parse(Path::new("rbd:vms/web01-root")).unwrap();
        assert_eq!((i.pool.as_str(), i.image.as_str()), ("vms", "web01-root"));
        assert_eq!(i.path(), PathBuf::from("rbd:vms/web01-root"));
        assert!(RbdImage::is_rbd(Path::new("rbd:a/b")));
        assert!(!RbdImage::is_rbd(Path::new("/var/rbd:a")));
        for bad in [
            "rbd:",
            "rbd:pool",
            "rbd:/img",
            "rbd:p/a:b",
            "rbd:p/a@s",
            "rbd:p/a/b",
            "rbd:p/\x1b",
        ] {
            assert!(RbdImage::parse(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_filenames_carry_credentials_and_bad_ones_are_refused() {
        let c = CephConfig {
            conf: Some("/etc/ceph/ceph.conf".into()),
            id: Some("backup".into()),
            keyring: Some("/etc/ceph/k".into()),
        };
        assert!(c.check().is_ok());
        let i = RbdImage::parse(Path::new("rbd:vms/a")).unwrap();
        assert_eq!(
            c.qemu_filename(&i, Some("lifeboat-0")),
            "rbd:vms/a@lifeboat-0:conf=/etc/ceph/ceph.conf:id=backup:keyring=/etc/ceph/k"
        );
        // A keyring others can read is refused; a private one is not.
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, "[client.backup]\n").unwrap();
        let open = CephConfig {
            keyring: Some(k.clone()),
            ..Default::default()
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(open.check().unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(open.check().is_ok());
        let mut bad = c.clone();
        bad.keyring = Some("/tmp/a:b".into());
        assert!(bad.check().is_err());
        bad = c;
        bad.id = Some("a:b".into());
        assert!(bad.check().is_err());
    }
}
