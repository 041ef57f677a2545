//! `lifeboat demo`: a self-contained world in a directory — four VMs with
//! raw and qcow2 volumes made by qemu-img, two weeks of backups at
//! different intervals with realistic change, a local repository, and an
//! off-site `lifeboat serve` on loopback holding part of that history.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{Duration, Utc};
use lifeboat_core::backup::{BackupRequest, VolumeSpec};
use lifeboat_core::jobs::{CancellationToken, Progress};
use lifeboat_core::repo::manifest::Role;
use lifeboat_core::repo::{Repo, RepoConfig};
use lifeboat_core::source::FormatChoice;
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::DynStore;
use lifeboat_core::sync::{self, SyncOptions};
use rand::{Rng, RngCore, SeedableRng};

struct VolPlan {
    name: &'static str,
    role: Role,
    qcow2: bool,
    size_mib: u64,
    /// MiB rewritten between two backups.
    churn_mib: u64,
}

struct VmPlan {
    name: &'static str,
    every_hours: i64,
    /// Hours before now of the newest backup (shows late/stale RPO).
    last_hours_ago: i64,
    vols: [VolPlan; 2],
}

const PLANS: [VmPlan; 4] = [
    VmPlan {
        name: "web01",
        every_hours: 24,
        last_hours_ago: 3,
        vols: [
            VolPlan {
                name: "root",
                role: Role::Root,
                qcow2: true,
                size_mib: 256,
                churn_mib: 2,
            },
            VolPlan {
                name: "data",
                role: Role::Data,
                qcow2: false,
                size_mib: 128,
                churn_mib: 3,
            },
        ],
    },
    VmPlan {
        name: "db01",
        every_hours: 12,
        last_hours_ago: 1,
        vols: [
            VolPlan {
                name: "root",
                role: Role::Root,
                qcow2: false,
                size_mib: 192,
                churn_mib: 1,
            },
            VolPlan {
                name: "data",
                role: Role::Data,
                qcow2: true,
                size_mib: 256,
                churn_mib: 4,
            },
        ],
    },
    VmPlan {
        name: "mail01",
        every_hours: 48,
        last_hours_ago: 30,
        vols: [
            VolPlan {
                name: "root",
                role: Role::Root,
                qcow2: true,
                size_mib: 192,
                churn_mib: 1,
            },
            VolPlan {
                name: "spool",
                role: Role::Data,
                qcow2: false,
                size_mib: 128,
                churn_mib: 4,
            },
        ],
    },
    VmPlan {
        name: "build01",
        every_hours: 24,
        last_hours_ago: 24 * 4,
        vols: [
            VolPlan {
                name: "root",
                role: Role::Root,
                qcow2: false,
                size_mib: 192,
                churn_mib: 2,
            },
            VolPlan {
                name: "cache",
                role: Role::Data,
                qcow2: false,
                size_mib: 128,
                churn_mib: 6,
            },
        ],
    },
];

pub const CHUNK: u64 = 1 << 20;

pub struct World {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub repo: PathBuf,
    pub offsite: PathBuf,
    pub tokens: PathBuf,
    pub token_file: PathBuf,
}

impl World {
    pub fn at(dir: &Path) -> World {
        World {
            dir: dir.to_path_buf(),
            config: dir.join("lifeboat.toml"),
            repo: dir.join("repo"),
            offsite: dir.join("offsite"),
            tokens: dir.join("offsite-tokens.toml"),
            token_file: dir.join("offsite.token"),
        }
    }

    pub fn exists(&self) -> bool {
        self.repo.join("lifeboat.json").exists() && self.offsite.join("lifeboat.json").exists()
    }

    fn image(&self, vm: &str, vol: &VolPlan) -> PathBuf {
        self.dir.join("images").join(format!(
            "{vm}-{}.{}",
            vol.name,
            if vol.qcow2 { "qcow2" } else { "raw" }
        ))
    }

    /// Writes the config naming the repository, the inventory and the
    /// off-site remote at `url`.
    pub fn write_config(&self, url: &str) -> anyhow::Result<()> {
        let mut t = String::from("# Written by `lifeboat demo`.\nrepository = \"repo\"\n\n");
        for p in &PLANS {
            t.push_str(&format!("[[vm]]\nname = \"{}\"\n", p.name));
            for v in &p.vols {
                t.push_str(&format!(
                    "[[vm.volume]]\nname = \"{}\"\nrole = \"{}\"\npath = \"{}\"\nformat = \"{}\"\n",
                    v.name,
                    v.role,
                    self.image(p.name, v).display(),
                    if v.qcow2 { "qcow2" } else { "raw" }
                ));
            }
            t.push('\n');
        }
        t.push_str(&format!(
            "[remote.offsite]\nurl = \"{url}\"\ntoken_file = \"{}\"\ntimeout_secs = 10\n",
            self.token_file.display()
        ));
        lifeboat_core::repo::durable::write_atomic(&self.config, t.as_bytes())?;
        Ok(())
    }
}

fn qemu_img(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .context("running qemu-img (install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Rewrites `mib` MiB in extents of 64 KiB to 1 MiB at random places, as a
/// guest would. qcow2 images are written through qemu-io.
fn churn(
    path: &Path,
    qcow2: bool,
    size: u64,
    mib: u64,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<()> {
    let mut left = mib << 20;
    let mut cmds = Vec::new();
    let file = if qcow2 {
        None
    } else {
        Some(std::fs::OpenOptions::new().write(true).open(path)?)
    };
    while left > 0 {
        let len = (rng.random_range(1..=16u64) * (64 << 10)).min(left);
        // Most writes land in the first quarter (hot data), some anywhere.
        let span = if rng.random_bool(0.7) { size / 4 } else { size };
        let off = rng.random_range(0..(span - len) / 4096) * 4096;
        match &file {
            Some(f) => {
                let mut buf = vec![0u8; len as usize];
                // Half compressible text-like, half random.
                if rng.random_bool(0.5) {
                    rng.fill_bytes(&mut buf);
                } else {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = b"lifeboat demo log line 0123456789\n"[i % 34];
                    }
                }
                std::os::unix::fs::FileExt::write_all_at(f, &buf, off)?;
            }
            None => cmds.push(format!(
                "write -P {} {off} {len}",
                rng.random_range(1..=255u8)
            )),
        }
        left -= len;
    }
    if !cmds.is_empty() {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "qcow2"]);
        for cmd in &cmds {
            c.arg("-c").arg(cmd);
        }
        let out = c
            .arg(path)
            .output()
            .context("running qemu-io (install qemu-utils)")?;
        if !out.status.success() {
            bail!("qemu-io: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

/// Builds the world in `dir` (which must be new or empty). Prints progress.
pub async fn build(w: &World) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(w.dir.join("images"))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    for p in &PLANS {
        for v in &p.vols {
            let img = w.image(p.name, v);
            let size = format!("{}M", v.size_mib);
            if v.qcow2 {
                qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    img.to_str().unwrap_or_default(),
                    &size,
                ])?;
            } else {
                qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "raw",
                    img.to_str().unwrap_or_default(),
                    &size,
                ])?;
            }
            // An installed system: a first fill of data.
            churn(&img, v.qcow2, v.size_mib << 20, v.size_mib / 16, &mut rng)?;
        }
    }
    let repo = Repo::init(&w.repo, RepoConfig::new(CHUNK, 1)?)?;
    let now = Utc::now();
    let start = now - Duration::days(14);
    // Every backup of every VM, in time order.
    let mut events: Vec<(chrono::DateTime<Utc>, usize)> = Vec::new();
    for (i, p) in PLANS.iter().enumerate() {
        let last = now - Duration::hours(p.last_hours_ago);
        let mut t = last;
        while t >= start {
            events.push((t, i));
            t -= Duration::hours(p.every_hours);
        }
    }
    events.sort();
    let cancel = CancellationToken::new();
    let progress = Progress::new();
    let notes = [
        "nightly",
        "before upgrade",
        "after upgrade",
        "scheduled",
        "pre-maintenance",
    ];
    for (n, (t, i)) in events.iter().enumerate() {
        let p = &PLANS[*i];
        let mut volumes = Vec::new();
        for v in &p.vols {
            let img = w.image(p.name, v);
            if n > 0 {
                churn(&img, v.qcow2, v.size_mib << 20, v.churn_mib, &mut rng)?;
            }
            volumes.push(VolumeSpec {
                name: v.name.to_string(),
                role: v.role,
                path: img,
                format: if v.qcow2 {
                    FormatChoice::Qcow2
                } else {
                    FormatChoice::Raw
                },
            });
        }
        let note = (rng.random_range(0..4) == 0)
            .then(|| notes[rng.random_range(0..notes.len())].to_string());
        let req = BackupRequest {
            vm: p.name.to_string(),
            volumes,
            note,
            created_at: Some(*t),
        };
        let r = repo.clone();
        let (c, pr) = (cancel.clone(), std::sync::Arc::new(Progress::new()));
        tokio::task::spawn_blocking(move || lifeboat_core::backup::backup(&r, &req, &c, &pr))
            .await??;
        eprint!(
            "\rbuilding the demo world: {}/{} backups",
            n + 1,
            events.len()
        );
    }
    eprintln!();
    // The off-site copy holds part of the history: everything older than
    // three days, except build01, which was never sent off-site.
    let local: DynStore = Arc::new(LocalStore::new(&w.repo));
    let offsite: DynStore = Arc::new(LocalStore::new(&w.offsite));
    let cutoff = now - Duration::days(3);
    let keys: Vec<_> = sync::list_manifests(local.as_ref())
        .await?
        .into_iter()
        .filter(|k| k.vm != "build01" && k.time < cutoff)
        .collect();
    let opts = SyncOptions {
        init: true,
        ..Default::default()
    };
    sync::transfer(local.as_ref(), &offsite, keys, &opts, &cancel, &progress).await?;
    let token = lifeboat::server::tokens::TokenFile::add(
        &w.tokens,
        "demo",
        lifeboat::server::tokens::Role::Append,
        Default::default(),
    )?;
    lifeboat_core::repo::durable::write_atomic(&w.token_file, token.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w.token_file, std::fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "demo world built in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        w.dir.display()
    );
    Ok(())
}

/// Starts the off-site server for this session and rewrites the config with
/// its address. Returns a handle that stops it when dropped.
pub async fn start_offsite(w: &World) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = lifeboat::server::ServeOptions {
        repo: w.offsite.clone(),
        listen: "127.0.0.1:0".parse()?,
        tokens: w.tokens.clone(),
        tls: None,
        max_uploads: 8,
        max_connections: lifeboat::server::ServeOptions::DEFAULT_MAX_CONNECTIONS,
        header_timeout: lifeboat::server::ServeOptions::DEFAULT_HEADER_TIMEOUT,
        config: std::sync::Arc::new(lifeboat_core::config::Config::default()),
    };
    tokio::spawn(lifeboat::server::serve(
        opts,
        move |addr, _| {
            let _ = addr_tx.send(addr);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = addr_rx
        .await
        .context("the demo's off-site server did not start")?;
    w.write_config(&format!("http://{addr}/"))?;
    Ok(stop_tx)
}
