//! The demo's bootable guest: `assets/demo-guest.sh` (embedded) builds a
//! 64 MiB raw disk with syslinux, Debian's cloud kernel and a busybox
//! initramfs that prints `NAME login:` on the serial console and serves
//! HTTP on port 8080. The kernel is fetched once (`apt-get download`) into
//! the kit directory and reused.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const SCRIPT: &str = include_str!("../../assets/demo-guest.sh");
/// Where the kernel is kept: `LIFEBOAT_GUEST_KIT`, else the data dir.
pub const ENV_KIT: &str = "LIFEBOAT_GUEST_KIT";
/// The guest disk's size; root volumes are larger, the rest is data.
pub const GUEST_MIB: u64 = 64;

pub fn kit_dir() -> PathBuf {
    std::env::var_os(ENV_KIT)
        .map(PathBuf::from)
        .unwrap_or_else(|| lifeboat_core::config::data_dir().join("guest-kit"))
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir for the guest script")?;
    let script = dir.path().join("demo-guest.sh");
    std::fs::write(&script, SCRIPT).context("writing the guest script")?;
    let out = Command::new("sh")
        .arg(&script)
        .args(args)
        .output()
        .context("running sh")?;
    if !out.status.success() {
        bail!(
            "{}",
            lifeboat_core::text::escape(String::from_utf8_lossy(&out.stderr).trim())
        );
    }
    Ok(())
}

/// Makes sure the kit holds a kernel and its virtio modules.
pub fn prepare_kit() -> anyhow::Result<PathBuf> {
    let kit = kit_dir();
    let k = kit.display().to_string();
    run(&["kit", &k]).with_context(|| format!("preparing the guest kernel in {k}"))?;
    Ok(kit)
}

/// What a demo guest does besides its page on 8080 (see the script).
pub struct Role<'a> {
    /// db or web.
    pub role: &'a str,
    /// Its address on its private NIC (10.10.0.2/24).
    pub address: &'a str,
    /// The database's address (web).
    pub peer: &'a str,
}

/// Writes the bootable disk of VM `name` to `out` (raw, 64 MiB).
pub fn disk(kit: &Path, out: &Path, name: &str, role: Option<&Role>) -> anyhow::Result<()> {
    let (kit, out) = (kit.display().to_string(), out.display().to_string());
    let mut args = vec!["disk", &kit, &out, name];
    if let Some(r) = role {
        args.extend([r.role, r.address, r.peer]);
    }
    run(&args).with_context(|| format!("building the guest disk of {name}"))
}
