//! The demo's browsable volume: web01's data disk is an ext4 filesystem
//! (a small web site, its config, a log per day) for `lifeboat files` and
//! the console's `f`. Made with mkfs.ext4 -d and grown between backups
//! with debugfs (e2fsprogs): nothing is mounted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// The volume that holds files: (VM, volume).
pub const VOLUME: (&str, &str) = ("web01", "data");

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (install e2fsprogs)"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A new raw image of `size_mib` holding an ext4 filesystem with the
/// site's files.
pub fn make(img: &Path, size_mib: u64) -> anyhow::Result<()> {
    let tree = tempfile::tempdir().context("a temp dir for the demo's files")?;
    let t = tree.path();
    for d in [
        "srv/www/assets",
        "etc/nginx/sites-enabled",
        "var/log/app",
        "home/admin",
    ] {
        std::fs::create_dir_all(t.join(d))?;
    }
    std::fs::write(
        t.join("srv/www/index.html"),
        "<html><body><h1>web01</h1><p>lifeboat demo site</p></body></html>\n",
    )?;
    std::fs::write(
        t.join("srv/www/assets/style.css"),
        "body { font-family: sans-serif; }\n",
    )?;
    std::fs::write(
        t.join("etc/nginx/nginx.conf"),
        "events {}\nhttp {\n    include sites-enabled/*;\n}\n",
    )?;
    std::fs::write(
        t.join("etc/nginx/sites-enabled/web01"),
        "server {\n    listen 80;\n    root /srv/www;\n}\n",
    )?;
    std::fs::write(
        t.join("home/admin/notes.txt"),
        "rotate the TLS certificate in March\n",
    )?;
    std::os::unix::fs::symlink("../sites-enabled/web01", t.join("etc/nginx/default"))?;
    std::fs::File::create(img)?.set_len(size_mib << 20)?;
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "web01-data", "-d"])
            .arg(t)
            .arg(img),
        "mkfs.ext4",
    )
}

/// A day's application log written into the filesystem, as the VM would
/// between two backups.
pub fn add_log(img: &Path, day: &str, lines: usize) -> anyhow::Result<()> {
    let f = tempfile::NamedTempFile::new()?;
    let text: String = (0..lines)
        .map(|i| format!("{day} request {i}: GET /index.html 200\n"))
        .collect();
    std::fs::write(f.path(), text)?;
    let cmd = format!("write {} /var/log/app/{day}.log", f.path().display());
    run(
        Command::new("debugfs").args(["-w", "-R", &cmd]).arg(img),
        "debugfs",
    )
}
