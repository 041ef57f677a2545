//! The libvirt documents lifeboat reads and writes besides a stored
//! definition: a domain as libvirtd runs it (its disks, the user QEMU runs
//! as, the guest agent's channel), checkpoints, and pull-mode backup jobs.
//! libvirtd is trusted more than a repository, but its documents describe
//! a guest-influenced world (names, paths), so they go through the same
//! bounded tree and are built, never spliced, when written.

use std::path::{Path, PathBuf};

use super::xml::{parse, parse_doc, Element};
use crate::error::Result;

/// One `<disk>` of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// The guest device (`vda`): libvirt's name for the disk.
    pub target: String,
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    /// `file`, `block`, `network`, `volume`, …
    pub kind: String,
    /// The file or block device; None for network and pool volumes.
    pub source: Option<PathBuf>,
    /// The image format (`qcow2`, `raw`), when the driver names one.
    pub format: Option<String>,
    pub readonly: bool,
    pub boot_order: Option<u32>,
}

/// Whether the domain has a qemu-guest-agent channel, and whether the
/// agent in the guest has connected to it (live XML only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentChannel {
    None,
    Disconnected,
    Connected,
}

/// What lifeboat needs to know of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: String,
    pub uuid: String,
    pub disks: Vec<DomainDisk>,
    /// The user and group QEMU runs as (the DAC label of a running domain).
    pub qemu_owner: Option<(u32, u32)>,
    pub agent: AgentChannel,
    /// The libvirt networks its interfaces join.
    pub networks: Vec<String>,
}

impl DomainFacts {
    /// The disks a backup reads: real disks with a file or device.
    pub fn backup_disks(&self) -> impl Iterator<Item = &DomainDisk> {
        self.disks.iter().filter(|d| d.device == "disk")
    }
}

fn dac_label(dom: &Element) -> Option<(u32, u32)> {
    let label = dom
        .elements()
        .filter(|e| e.name == "seclabel" && e.attr("model") == Some("dac"))
        .find_map(|e| e.child("label"))?
        .text();
    let (u, g) = label.split_once(':')?;
    Some((
        u.trim_start_matches('+').parse().ok()?,
        g.trim_start_matches('+').parse().ok()?,
    ))
}

/// Reads a domain's XML (`virsh dumpxml`, live or `--inactive`).
pub fn domain_facts(xml: &str) -> Result<DomainFacts> {
    let dom = parse(xml)?;
    let text = |n: &str| dom.child(n).map(|e| e.text()).unwrap_or_default();
    let mut disks = Vec::new();
    let mut agent = AgentChannel::None;
    let mut networks = Vec::new();
    for d in dom.child("devices").iter().flat_map(|d| d.elements()) {
        match d.name.as_str() {
            "disk" => {
                let src = d.child("source");
                disks.push(DomainDisk {
                    target: d
                        .child("target")
                        .and_then(|t| t.attr("dev"))
                        .unwrap_or_default()
                        .to_string(),
                    device: d.attr("device").unwrap_or("disk").to_string(),
                    kind: d.attr("type").unwrap_or("file").to_string(),
                    source: src
                        .and_then(|s| s.attr("file").or_else(|| s.attr("dev")))
                        .map(PathBuf::from),
                    format: d
                        .child("driver")
                        .and_then(|x| x.attr("type"))
                        .map(str::to_string),
                    readonly: d.child("readonly").is_some(),
                    boot_order: d
                        .child("boot")
                        .and_then(|b| b.attr("order"))
                        .and_then(|o| o.parse().ok()),
                });
            }
            "channel" => {
                if let Some(t) = d.child("target") {
                    if t.attr("name") == Some("org.qemu.guest_agent.0") {
                        agent = if t.attr("state") == Some("connected") {
                            AgentChannel::Connected
                        } else {
                            AgentChannel::Disconnected
                        };
                    }
                }
            }
            "interface" if d.attr("type") == Some("network") => {
                if let Some(n) = d.child("source").and_then(|s| s.attr("network")) {
                    networks.push(n.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(DomainFacts {
        name: text("name"),
        uuid: text("uuid"),
        disks,
        qemu_owner: dac_label(&dom),
        agent,
        networks,
    })
}

/// A checkpoint: its name, description and the disks it tracks with a
/// bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFacts {
    pub name: String,
    pub description: Option<String>,
    pub bitmap_disks: Vec<String>,
}

/// Reads `virsh checkpoint-dumpxml`.
pub fn checkpoint_facts(xml: &str) -> Result<CheckpointFacts> {
    let cp = parse_doc(xml, "domaincheckpoint")?;
    Ok(CheckpointFacts {
        name: cp.child("name").map(|e| e.text()).unwrap_or_default(),
        description: cp.child("description").map(|e| e.text()),
        bitmap_disks: cp
            .child("disks")
            .iter()
            .flat_map(|d| d.elements())
            .filter(|d| d.attr("checkpoint") == Some("bitmap"))
            .filter_map(|d| d.attr("name").map(str::to_string))
            .collect(),
    })
}

/// One disk of a running pull-mode backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDisk {
    pub name: String,
    pub backup: bool,
    pub export: Option<String>,
    /// The export's dirty bitmap (incremental disks).
    pub bitmap: Option<String>,
    pub scratch: Option<PathBuf>,
}

/// A backup job as `virsh backup-dumpxml` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJobFacts {
    pub mode: String,
    pub socket: Option<PathBuf>,
    pub disks: Vec<JobDisk>,
}

pub fn backup_job_facts(xml: &str) -> Result<BackupJobFacts> {
    let b = parse_doc(xml, "domainbackup")?;
    Ok(BackupJobFacts {
        mode: b.attr("mode").unwrap_or("push").to_string(),
        socket: b
            .child("server")
            .and_then(|s| s.attr("socket"))
            .map(PathBuf::from),
        disks: b
            .child("disks")
            .iter()
            .flat_map(|d| d.elements())
            .map(|d| JobDisk {
                name: d.attr("name").unwrap_or_default().to_string(),
                backup: d.attr("backup") != Some("no"),
                export: d.attr("exportname").map(str::to_string),
                bitmap: d.attr("exportbitmap").map(str::to_string),
                scratch: d
                    .child("scratch")
                    .and_then(|s| s.attr("file"))
                    .map(PathBuf::from),
            })
            .collect(),
    })
}

/// How one disk is read by a pull-mode backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullDisk {
    pub target: String,
    /// The checkpoint it is incremental from; None: a full read.
    pub incremental: Option<String>,
    pub scratch: PathBuf,
}

/// `<domainbackup mode='pull'>`: every disk of `pull` exported on the unix
/// socket (export name: the disk's own), every disk of `skip` left out.
pub fn pull_backup_xml(socket: &Path, pull: &[PullDisk], skip: &[String]) -> String {
    let mut disks = Element::new("disks");
    for d in pull {
        let mut e = Element::new("disk")
            .with_attr("name", &d.target)
            .with_attr("backup", "yes")
            .with_attr("type", "file")
            .with_attr("exportname", &d.target);
        match &d.incremental {
            Some(cp) => {
                e.set_attr("backupmode", "incremental");
                e.set_attr("incremental", cp);
            }
            None => e.set_attr("backupmode", "full"),
        }
        e.push(Element::new("scratch").with_attr("file", &d.scratch.display().to_string()));
        disks.push(e);
    }
    for s in skip {
        disks.push(
            Element::new("disk")
                .with_attr("name", s)
                .with_attr("backup", "no"),
        );
    }
    let mut root = Element::new("domainbackup").with_attr("mode", "pull");
    root.push(
        Element::new("server")
            .with_attr("transport", "unix")
            .with_attr("socket", &socket.display().to_string()),
    );
    root.push(disks);
    let mut out = String::new();
    root.write(&mut out, 0);
    out
}

/// `<domaincheckpoint>` with a bitmap on `bitmap_disks`, none on `others`.
pub fn checkpoint_xml(
    name: &str,
    description: &str,
    bitmap_disks: &[String],
    others: &[String],
) -> String {
    let mut disks = Element::new("disks");
    for (list, mode) in [(bitmap_disks, "bitmap"), (others, "no")] {
        for d in list {
            disks.push(
                Element::new("disk")
                    .with_attr("name", d)
                    .with_attr("checkpoint", mode),
            );
        }
    }
    let mut root = Element::new("domaincheckpoint");
    root.push(Element::new("name").with_text(name));
    root.push(Element::new("description").with_text(description));
    root.push(disks);
    let mut out = String::new();
    root.write(&mut out, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = r#"<domain type='qemu' id='3'>
  <name>web01</name>
  <uuid>0b4c7a9e-8a55-4a39-9c2d-3c2e8f0b5a11</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'><source network='default'/></interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+108</label>
  </seclabel>
</domain>"#;

    #[test]
    fn a_live_domain_gives_its_disks_owner_agent_and_networks() {
        let f = domain_facts(LIVE).expect("parses");
        assert_eq!(f.name, "web01");
        assert_eq!(f.qemu_owner, Some((64055, 108)));
        assert_eq!(f.agent, AgentChannel::Connected);
        assert_eq!(f.networks, vec!["default".to_string()]);
        let disks: Vec<&str> = f.backup_disks().map(|d| d.target.as_str()).collect();
        assert_eq!(disks, ["vda", "vdb"]);
        assert_eq!(f.disks[1].source, Some(PathBuf::from("/dev/vg/web01-data")));
        assert_eq!(f.disks[0].format.as_deref(), Some("qcow2"));
        assert_eq!(f.disks[0].boot_order, Some(1));
        assert!(f.disks[2].readonly && f.disks[2].source.is_none());
    }

    #[test]
    fn backup_and_checkpoint_documents_round_trip_and_are_escaped() {
        let xml = pull_backup_xml(
            Path::new("/run/x/nbd.sock"),
            &[
                PullDisk {
                    target: "vda".into(),
                    incremental: Some("lifeboat-00".into()),
                    scratch: PathBuf::from("/run/x/vda.qcow2"),
                },
                PullDisk {
                    target: "vdb\"><evil/>".into(),
                    incremental: None,
                    scratch: PathBuf::from("/run/x/vdb.qcow2"),
                },
            ],
            &["vdc".into()],
        );
        assert!(!xml.contains("<evil/>"), "{xml}");
        let job = backup_job_facts(&xml).expect("parses");
        assert_eq!(job.mode, "pull");
        assert_eq!(job.socket, Some(PathBuf::from("/run/x/nbd.sock")));
        assert_eq!(job.disks.len(), 3);
        assert_eq!(job.disks[0].export.as_deref(), Some("vda"));
        assert_eq!(job.disks[1].name, "vdb\"><evil/>");
        assert!(!job.disks[2].backup);
        assert!(xml.contains("backupmode=\"incremental\" incremental=\"lifeboat-00\""));

        let cp = checkpoint_xml("lifeboat-01", "a & b", &["vda".into()], &["vdc".into()]);
        let f = checkpoint_facts(&cp).expect("parses");
        assert_eq!(f.name, "lifeboat-01");
        assert_eq!(f.description.as_deref(), Some("a & b"));
        assert_eq!(f.bitmap_disks, vec!["vda".to_string()]);
    }

    #[test]
    fn hostile_or_broken_documents_are_errors_not_panics() {
        for bad in ["", "<domain>", "<a><b></a>", &"<x>".repeat(100)] {
            let _ = domain_facts(bad);
            let _ = checkpoint_facts(bad);
            let _ = backup_job_facts(bad);
        }
        assert!(domain_facts("<domain><name>x</name>").is_err());
    }
}
