//! A libvirtd of the test's own (scripts/libvirt.sh): virtlogd and libvirtd
//! in a private mount namespace, so the host's libvirt (if any) is never
//! touched; destroyed domains and both daemons stopped by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Libvirtd {
    pub dir: tempfile::TempDir,
    pub uri: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt.sh")
}

impl Libvirtd {
    pub fn start() -> Libvirtd {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the libvirt tests start a system libvirtd, which runs as root (CI runs as root)"
        );
        // Short: the daemons' sockets live under it (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("lb-libvirtd-")
            .tempdir_in("/tmp")
            .expect("dir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("scripts/libvirt.sh");
        assert!(
            out.status.success(),
            "libvirtd did not start (scripts/test.sh installs libvirt-daemon-system): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let uri = std::fs::read_to_string(dir.path().join("uri"))
            .expect("uri")
            .trim()
            .to_string();
        Libvirtd { dir, uri }
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("virsh")
    }

    /// Runs virsh and returns its output, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn define(&self, dir: &Path, xml: &str) {
        let f = dir.join("domain.xml");
        std::fs::write(&f, xml).expect("xml");
        self.ok(&["define", f.to_str().expect("path")]);
    }

    pub fn checkpoints(&self, domain: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .ok(&["checkpoint-list", domain, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A directory QEMU (user libvirt-qemu) can use: disks, sockets.
pub fn qemu_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("lb-guest-")
        .tempdir_in("/tmp")
        .expect("dir");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("mode");
    let st = Command::new("chown")
        .arg("libvirt-qemu:")
        .arg(d.path())
        .status()
        .expect("chown");
    assert!(
        st.success(),
        "no libvirt-qemu user: install libvirt-daemon-system"
    );
    d
}
