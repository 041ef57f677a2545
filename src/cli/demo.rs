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
use lifeboat_core::format::manifest::Role;
use lifeboat_core::format::repo_config::RepoConfig;
use lifeboat_core::jobs::{CancellationToken, Progress};
use lifeboat_core::repo::Repo;
use lifeboat_core::repository;
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

/// The demo's two-VM service, a recovery plan: web01's /cgi-bin/order
/// reads a value db01 serves from the table on its data disk, over the
/// plan's private network.
pub const PLAN: &str = "shop";
const DB_ADDRESS: &str = "10.10.0.2";
const WEB_ADDRESS: &str = "10.10.0.3";
/// db01's backup nearest this many hours ago holds a table torn by an
/// interrupted migration: the service drilled at that point fails.
const TORN_TABLE_HOURS_AGO: i64 = 5 * 24;
/// The note of that backup (tests and the README find it by it).
pub const TORN_NOTE: &str = "schema migration (interrupted)";

fn guest_role(vm: &str) -> Option<super::demo_guest::Role<'static>> {
    match vm {
        "db01" => Some(super::demo_guest::Role {
            role: "db",
            address: "10.10.0.2/24",
            peer: "-",
        }),
        "web01" => Some(super::demo_guest::Role {
            role: "web",
            address: "10.10.0.3/24",
            peer: DB_ADDRESS,
        }),
        _ => None,
    }
}

/// db01's "database": the first sector of its data disk. `orders` None
/// writes a torn one.
fn write_db_table(path: &Path, qcow2: bool, orders: Option<u64>) -> anyhow::Result<()> {
    let mut sector = [0u8; 512];
    let text = match orders {
        Some(n) => format!("LIFEBOAT-DB\norders: {n}\n"),
        None => "LIFEBOAT-DB\norders: 10\u{fffd}\u{fffd} torn page".to_string(),
    };
    sector[..text.len()].copy_from_slice(text.as_bytes());
    write_first_sector(path, qcow2, &sector)
}

/// Writes the disk's first sector (a qcow2 image through qemu-io).
fn write_first_sector(path: &Path, qcow2: bool, sector: &[u8; 512]) -> anyhow::Result<()> {
    if qcow2 {
        let tmp = tempfile::NamedTempFile::new().context("a temp file for a sector")?;
        std::fs::write(tmp.path(), sector)?;
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -s {} 0 512", tmp.path().display()))
            .arg(path)
            .output()
            .context("running qemu-io (install qemu-utils)")?;
        if !out.status.success() {
            bail!("qemu-io: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    } else {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        std::os::unix::fs::FileExt::write_all_at(&f, sector, 0)?;
    }
    Ok(())
}

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

    fn domain_xml(&self, vm: &str) -> PathBuf {
        self.dir.join("images").join(format!("{vm}.xml"))
    }

    /// A libvirt domain for a demo VM, as `virsh dumpxml` would print it.
    fn write_domain(&self, p: &VmPlan) -> anyhow::Result<()> {
        let mut disks = String::new();
        for (i, v) in p.vols.iter().enumerate() {
            disks.push_str(&format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}'/>\n      <source file='{}'/>\n      <target dev='vd{}' bus='virtio'/>\n    </disk>\n",
                if v.qcow2 { "qcow2" } else { "raw" },
                self.image(p.name, v).display(),
                (b'a' + i as u8) as char
            ));
        }
        let xml = format!(
            "<domain type='kvm'>\n  <name>{name}</name>\n  <uuid>0b7c2f4e-8a1d-4c39-9e57-3f0d2a6b1c{n:02x}</uuid>\n  <memory unit='KiB'>262144</memory>\n  <vcpu placement='static'>1</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n    <boot dev='hd'/>\n  </os>\n  <features><acpi/><apic/></features>\n  <devices>\n{disks}    <interface type='network'>\n      <mac address='52:54:00:1b:0a:ff'/>\n      <source network='default'/>\n      <model type='virtio'/>\n    </interface>\n    <serial type='pty'><target port='0'/></serial>\n    <console type='pty'><target type='serial' port='0'/></console>\n  </devices>\n</domain>\n",
            name = p.name,
            n = p.name.len(),
        );
        lifeboat_core::durable::write_atomic(&self.domain_xml(p.name), xml.as_bytes())?;
        Ok(())
    }

    /// Writes the config naming the repository, the inventory and the
    /// off-site remote at `url`.
    pub fn write_config(&self, url: &str) -> anyhow::Result<()> {
        let mut t = String::from("# Written by `lifeboat demo`.\nrepository = \"repo\"\n\n");
        for (i, p) in PLANS.iter().enumerate() {
            t.push_str(&format!("[[vm]]\nname = \"{}\"\n", p.name));
            if p.name == "web01" {
                // web01 is a libvirt VM: its domain XML travels with it.
                t.push_str(&format!(
                    "domain_xml = \"{}\"\n",
                    self.domain_xml(p.name).display()
                ));
            } else {
                t.push_str("vcpus = 1\nmemory_mib = 256\nmachine = \"pc\"\n");
                t.push_str(&format!(
                    "[[vm.nic]]\nmodel = \"virtio\"\nmac = \"52:54:00:1b:0a:{i:02x}\"\nnetwork = \"default\"\n"
                ));
            }
            for v in &p.vols {
                t.push_str(&format!(
                    "[[vm.volume]]\nname = \"{}\"\nrole = \"{}\"\npath = \"{}\"\nformat = \"{}\"\nbus = \"virtio\"\n",
                    v.name,
                    v.role,
                    self.image(p.name, v).display(),
                    if v.qcow2 { "qcow2" } else { "raw" }
                ));
            }
            t.push_str(&format!(
                "[vm.check]\nserial = \"{} login:\"\nhttp = {{ port = 8080, path = \"/\", expect = \"the application answers\" }}\ntimeout_secs = 90\n",
                p.name
            ));
            if p.name == "db01" {
                // A database that finds its table torn says so at once.
                t.push_str("fail = [\"database is corrupt\"]\n");
            }
            t.push_str("[vm.drill]\nfrom = \"offsite\"\n\n");
        }
        t.push_str(&format!(
            "# The shop: web01 reads its orders from db01 over a private network.\n[plan.{PLAN}]\nnetwork = \"shop-net\"\nsubnet = \"10.10.0.0/24\"\nfrom = \"offsite\"\n[[plan.{PLAN}.vm]]\nname = \"db01\"\naddress = \"{DB_ADDRESS}\"\n[[plan.{PLAN}.vm]]\nname = \"web01\"\naddress = \"{WEB_ADDRESS}\"\n[[plan.{PLAN}.check]]\nvm = \"web01\"\nhttp = {{ port = 8080, path = \"/cgi-bin/order\", expect = \"reads from the database at {DB_ADDRESS}: orders:\" }}\n\n"
        ));
        t.push_str(&format!(
            "[remote.offsite]\nurl = \"{url}\"\ntoken_file = \"{}\"\ntimeout_secs = 10\n",
            self.token_file.display()
        ));
        lifeboat_core::durable::write_atomic(&self.config, t.as_bytes())?;
        Ok(())
    }
}

/// Where a volume's random writes may land: after the bootable guest on a
/// root disk, after db01's table on its data disk.
fn floor_of(vm: &str, v: &VolPlan, bootable: bool) -> u64 {
    if v.role == Role::Root && bootable {
        super::demo_guest::GUEST_MIB << 20
    } else if (vm, v.name) == ("db01", "data") {
        1 << 20
    } else {
        0
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
    floor: u64,
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
        let room = size - floor;
        let span = if rng.random_bool(0.7) { room / 4 } else { room };
        let off = floor + rng.random_range(0..(span - len) / 4096) * 4096;
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

/// Zeroes the first sector (MBR boot code and partition table), as a bad
/// `dd` or an installer run against the wrong disk would.
fn wipe_boot_sector(path: &Path, qcow2: bool) -> anyhow::Result<()> {
    write_first_sector(path, qcow2, &[0u8; 512])
}

/// Builds the world in `dir` (which must be new or empty). Prints progress.
pub async fn build(w: &World) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(w.dir.join("images"))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    // Root volumes hold a real bootable guest in their first 64 MiB; the
    // rest of the disk is where the guest's writes land.
    let kit = match super::demo_guest::prepare_kit() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!(
                "warning: the demo's VMs will not boot ({e:#}); drills in this demo fail at boot. Install the packages scripts/test.sh installs (busybox-static syslinux mtools dosfstools fdisk cpio qemu-system-x86) and run the demo again"
            );
            None
        }
    };
    let guest_t = std::time::Instant::now();
    for p in &PLANS {
        for v in &p.vols {
            let img = w.image(p.name, v);
            let size = format!("{}M", v.size_mib);
            let fmt = if v.qcow2 { "qcow2" } else { "raw" };
            let img_s = img.to_str().unwrap_or_default();
            let files = (p.name, v.name) == super::demo_files::VOLUME;
            match (&kit, v.role) {
                _ if files => super::demo_files::make(&img, v.size_mib)?,
                (Some(kit), Role::Root) => {
                    let raw = w.dir.join("images").join(format!("{}-guest.raw", p.name));
                    super::demo_guest::disk(kit, &raw, p.name, guest_role(p.name).as_ref())?;
                    let raw_s = raw.to_str().unwrap_or_default();
                    qemu_img(&["convert", "-q", "-f", "raw", "-O", fmt, raw_s, img_s])?;
                    std::fs::remove_file(&raw)?;
                    qemu_img(&["resize", "-q", "-f", fmt, img_s, &size])?;
                }
                _ => qemu_img(&["create", "-q", "-f", fmt, img_s, &size])?,
            }
            // An installed system: a first fill of data.
            let floor = floor_of(p.name, v, kit.is_some());
            if files {
                continue;
            }
            churn(
                &img,
                v.qcow2,
                floor,
                v.size_mib << 20,
                v.size_mib / 16,
                &mut rng,
            )?;
        }
        if p.name == "web01" {
            w.write_domain(p)?;
        }
    }
    if kit.is_some() {
        eprintln!(
            "bootable guest disks built in {:.1}s",
            guest_t.elapsed().as_secs_f64()
        );
    }
    // The config is needed now for the VM definitions the backups store;
    // the off-site URL is set when the server starts.
    w.write_config("http://127.0.0.1:1/")?;
    let config = lifeboat_core::config::Config::load(Some(&w.config))?;
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
    // mail01's backups from the newest one sent off-site on hold a root
    // disk whose boot sector was overwritten: a drill of them fails for
    // a real reason, a drill of an older one passes.
    let cutoff = now - Duration::days(3);
    let broken_from = events
        .iter()
        .filter(|(t, i)| PLANS[*i].name == "mail01" && *t < cutoff)
        .map(|(t, _)| *t)
        .max();
    let torn_at = events
        .iter()
        .filter(|(_, i)| PLANS[*i].name == "db01")
        .map(|(t, _)| *t)
        .min_by_key(|t| {
            (*t - (now - Duration::hours(TORN_TABLE_HOURS_AGO)))
                .num_seconds()
                .abs()
        });
    let cancel = CancellationToken::new();
    let progress = Progress::new();
    let notes = [
        "nightly",
        "before upgrade",
        "after upgrade",
        "scheduled",
        "pre-maintenance",
    ];
    let progress_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for (n, (t, i)) in events.iter().enumerate() {
        let p = &PLANS[*i];
        let mut volumes = Vec::new();
        if kit.is_some() && p.name == "mail01" && Some(*t) == broken_from {
            let root = w.image(p.name, &p.vols[0]);
            wipe_boot_sector(&root, p.vols[0].qcow2)?;
        }
        for v in &p.vols {
            let img = w.image(p.name, v);
            let floor = floor_of(p.name, v, kit.is_some());
            if (p.name, v.name) == ("db01", "data") {
                let torn = Some(*t) == torn_at;
                write_db_table(&img, v.qcow2, (!torn).then_some(1000 + 7 * n as u64))?;
            }
            if n > 0 && (p.name, v.name) == super::demo_files::VOLUME {
                let day = t.format("%Y-%m-%d").to_string();
                super::demo_files::add_log(&img, &day, 200 + rng.random_range(0..400))?;
            } else if n > 0 {
                churn(
                    &img,
                    v.qcow2,
                    floor,
                    v.size_mib << 20,
                    v.churn_mib,
                    &mut rng,
                )?;
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
        let note = if p.name == "db01" && Some(*t) == torn_at {
            Some(TORN_NOTE.to_string())
        } else {
            note
        };
        let req = BackupRequest {
            vm: p.name.to_string(),
            volumes,
            note,
            created_at: Some(*t),
            definition: config.definition_for_backup(p.name),
            live: config.live_for(p.name),
            ceph: Default::default(),
        };
        let r = repo.clone();
        let (c, pr) = (cancel.clone(), std::sync::Arc::new(Progress::new()));
        tokio::task::spawn_blocking(move || lifeboat_core::backup::backup(&r, &req, &c, &pr))
            .await??;
        // A counter redrawn in place on a terminal; in a log, one line at
        // the end says it all.
        if progress_tty {
            eprint!(
                "\rbuilding the demo world: {}/{} backups",
                n + 1,
                events.len()
            );
        }
    }
    if progress_tty {
        eprintln!();
    }
    // The off-site copy holds part of the history: everything older than
    // three days, except build01, which was never sent off-site.
    let local: DynStore = Arc::new(LocalStore::new(&w.repo));
    let offsite: DynStore = Arc::new(LocalStore::new(&w.offsite));
    let keys: Vec<_> = repository::list_manifests(local.as_ref())
        .await?
        .into_iter()
        .filter(|k| k.vm != "build01" && k.time < cutoff)
        .collect();
    let opts = SyncOptions {
        init: true,
        ..Default::default()
    };
    sync::transfer(local.as_ref(), &offsite, keys, &opts, &cancel, &progress).await?;
    let token = crate::server::tokens::TokenFile::add(
        &w.tokens,
        "demo",
        crate::server::tokens::Role::Append,
        Default::default(),
    )?;
    lifeboat_core::durable::write_atomic(&w.token_file, token.as_bytes())?;
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
    let opts = crate::server::ServeOptions {
        repo: w.offsite.clone(),
        listen: "127.0.0.1:0".parse()?,
        tokens: w.tokens.clone(),
        tls: None,
        max_uploads: 8,
        max_connections: crate::server::ServeOptions::DEFAULT_MAX_CONNECTIONS,
        header_timeout: crate::server::ServeOptions::DEFAULT_HEADER_TIMEOUT,
        idle_timeout: crate::server::ServeOptions::DEFAULT_IDLE_TIMEOUT,
        config: std::sync::Arc::new(lifeboat_core::config::Config::default()),
        // The demo's history is backdated over two weeks: its server takes
        // backups as old as that from the demo's append token (a real
        // server takes only those made just before their push).
        rules: crate::server::Rules {
            max_backup_lag: std::time::Duration::from_secs(30 * 86_400),
            ..Default::default()
        },
    };
    tokio::spawn(crate::server::serve(
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
