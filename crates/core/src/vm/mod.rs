//! A VM's definition, which travels with its backups: lifeboat's own spec
//! (vCPUs, memory, firmware, machine, disks in boot order with their bus,
//! NICs), the libvirt domain XML when the VM has one, and the boot checks
//! a drill runs. Stored as a chunk that every manifest of a set names
//! (`DefinitionRef`), so it is deduplicated, verified and pushed and pulled
//! like the volumes.
//!
//! Everything here may come from a repository or a peer: a definition is
//! bounded, parsed strictly and checked field by field before any of it
//! reaches a QEMU command line, a file or a terminal. Commands to run on
//! the host are never read from a repository (`CheckConfig::command` lives
//! only in the local config).

mod allow;
pub mod boot;
pub mod dhcp;
pub mod domain;
pub mod instant;
pub mod libvirt_xml;
pub mod phase;
pub mod qemu;
pub mod restore;
pub mod spec;
pub mod switch;
mod xml;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::manifest::{DefinitionRef, Role};
use crate::names::is_valid_name;

pub use crate::format::manifest::MAX_DEFINITION_BYTES;
pub use spec::{
    is_mac, new_uuid, BootChecks, Bus, CheckConfig, Definition, DiskSpec, Firmware, HttpCheck,
    NicSpec, VmDescription, VmSpec, DEFINITION_FORMAT,
};
impl Definition {
    /// Builds the definition of a VM from its description: the domain XML
    /// (from the file, or from `virsh dumpxml`) when there is one, else
    /// lifeboat's own spec.
    pub fn describe(d: &VmDescription) -> Result<Definition> {
        let xml = match (&d.domain_xml, &d.libvirt_domain) {
            (Some(path), _) => Some(read_domain_file(path)?),
            (None, Some(dom)) => Some(virsh_dumpxml(d.libvirt_uri.as_deref(), dom)?),
            (None, None) => None,
        };
        let spec = match &xml {
            Some(x) => domain::spec_from_xml(x, &d.volumes)?,
            None => spec_from_description(d),
        };
        let def = Definition {
            format: DEFINITION_FORMAT,
            vm: d.name.clone(),
            spec,
            domain_xml: xml,
            checks: d.checks.clone(),
        };
        def.check()?;
        Ok(def)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings and numbers always serialise.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses a definition read from a repository (already verified
    /// against its chunk id) and checks every field.
    pub fn from_chunk(r: &DefinitionRef, data: &[u8]) -> Result<Definition> {
        let bad = |why: String| Error::corrupt("definition", r.chunk, why);
        if data.len() as u64 != r.size || data.len() > MAX_DEFINITION_BYTES {
            return Err(bad(format!(
                "it holds {} bytes where the manifest says {}",
                data.len(),
                r.size
            )));
        }
        let def: Definition =
            serde_json::from_slice(data).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        def.check().map_err(|e| bad(e.to_string()))?;
        Ok(def)
    }

    /// The checks every reader relies on: names, bounds, and strings that
    /// later become QEMU arguments or XML.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(Error::BadInput(format!("VM definition: {why}")));
        if self.format != DEFINITION_FORMAT {
            return bad(format!("unsupported format {}", self.format));
        }
        if !is_valid_name(&self.vm) {
            return bad("invalid VM name".into());
        }
        let s = &self.spec;
        if !(1..=512).contains(&s.vcpus) {
            return bad(format!("{} vCPUs (1 to 512 allowed)", s.vcpus));
        }
        if !(16..=(16 << 20)).contains(&s.memory_mib) {
            return bad(format!("{} MiB of memory (16 MiB to 16 TiB)", s.memory_mib));
        }
        if !is_token(&s.machine) {
            return bad(format!("machine type {:?}", s.machine));
        }
        if s.disks.len() > 64 || s.nics.len() > 32 {
            return bad("too many disks or NICs".into());
        }
        for disk in &s.disks {
            if !is_valid_name(&disk.volume) || !is_token(&disk.target) {
                return bad(format!("disk {:?} ({:?})", disk.volume, disk.target));
            }
        }
        for nic in &s.nics {
            if !is_token(&nic.model) {
                return bad(format!("NIC model {:?}", nic.model));
            }
            if let Some(mac) = &nic.mac {
                if !is_mac(mac) {
                    return bad(format!("MAC address {mac:?}"));
                }
            }
            if nic.network.as_ref().is_some_and(|n| n.len() > 256) {
                return bad("network name over 256 bytes".into());
            }
        }
        if let Some(c) = &self.checks {
            check_checks(c).or_else(&bad)?;
        }
        if let Some(x) = &self.domain_xml {
            if !x.trim_start().starts_with('<') {
                return bad("the domain XML does not start with an element".into());
            }
        }
        Ok(())
    }
}

pub(crate) fn check_checks(c: &BootChecks) -> std::result::Result<(), String> {
    let text_ok = |t: &str| !t.is_empty() && t.len() <= 256 && !t.contains('\n');
    if c.serial.as_ref().is_some_and(|s| !text_ok(s)) || c.fail.iter().any(|s| !text_ok(s)) {
        return Err("a serial pattern is empty, multi-line or over 256 bytes".into());
    }
    if c.fail.len() > 16 || c.tcp.len() > 16 {
        return Err("too many patterns or ports".into());
    }
    if !(1..=86_400).contains(&c.timeout_secs) {
        return Err(format!(
            "timeout of {} s (1 s to a day allowed)",
            c.timeout_secs
        ));
    }
    if let Some(h) = &c.http {
        if h.port == 0
            || !h.path.starts_with('/')
            || h.path.len() > 1024
            || h.path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(format!("HTTP check {}:{:?}", h.port, h.path));
        }
        if h.expect.as_ref().is_some_and(|e| !text_ok(e)) {
            return Err("HTTP check's expected text".into());
        }
    }
    if c.tcp.contains(&0) {
        return Err("TCP port 0".into());
    }
    Ok(())
}

/// Checks a `[vm.check]` table from the config (the command too).
pub fn check_config(c: &CheckConfig) -> std::result::Result<(), String> {
    check_checks(&c.checks())?;
    if let Some(cmd) = &c.command {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(
                "command is empty: give argv, e.g. [\"/usr/local/bin/check\", \"arg\"]".into(),
            );
        }
    }
    if c.forward.contains(&0) || c.forward.len() > 16 {
        return Err("forward: 1 to 16 ports, none 0".into());
    }
    Ok(())
}

/// A word safe in a QEMU option, an XML attribute and a terminal.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn spec_from_description(d: &VmDescription) -> VmSpec {
    // The root volume boots: it goes first, the others keep their order.
    let mut vols: Vec<&(String, Role, PathBuf, Option<Bus>)> = d.volumes.iter().collect();
    vols.sort_by_key(|v| v.1 != Role::Root);
    let mut used: std::collections::BTreeMap<&str, u8> = Default::default();
    let disks = vols
        .iter()
        .map(|(name, _, _, bus)| {
            let bus = bus.unwrap_or_default();
            let n = used.entry(bus.dev_prefix()).or_insert(0);
            let target = format!("{}{}", bus.dev_prefix(), (b'a' + *n) as char);
            *n = n.saturating_add(1).min(25);
            DiskSpec {
                volume: name.clone(),
                bus,
                target,
            }
        })
        .collect();
    VmSpec {
        vcpus: d.vcpus.unwrap_or(1),
        memory_mib: d.memory_mib.unwrap_or(1024),
        firmware: d.firmware.unwrap_or_default(),
        machine: d.machine.clone().unwrap_or_else(|| "pc".into()),
        disks,
        nics: d.nics.clone(),
    }
}

/// The spec used for a backup that carries no definition (format 1, or a
/// VM outside the inventory): the root volume first, virtio disks, 1 GiB.
pub fn fallback_definition(vm: &str, volumes: &[(String, Role)]) -> Definition {
    let d = VmDescription {
        name: vm.to_string(),
        volumes: volumes
            .iter()
            .map(|(n, r)| (n.clone(), *r, PathBuf::new(), None))
            .collect(),
        ..Default::default()
    };
    Definition {
        format: DEFINITION_FORMAT,
        vm: vm.to_string(),
        spec: spec_from_description(&d),
        domain_xml: None,
        checks: None,
    }
}

fn read_domain_file(path: &Path) -> Result<String> {
    let md = std::fs::metadata(path).map_err(|e| Error::io("reading the domain XML", path, e))?;
    if md.len() > (MAX_DEFINITION_BYTES / 2) as u64 {
        return Err(Error::BadInput(format!(
            "domain XML {} is {} bytes; at most {} are accepted",
            path.display(),
            md.len(),
            MAX_DEFINITION_BYTES / 2
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io("reading the domain XML", path, e))
}

/// Runs a helper tool (virsh, virt-xml-validate) with a time limit and
/// bounded output: a libvirtd that does not answer must not hang a
/// backup or the console. On timeout the tool is killed.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    use std::process::Stdio;
    const MAX_OUTPUT: u64 = 4 << 20;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", limit.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn virsh_dumpxml(uri: Option<&str>, domain: &str) -> Result<String> {
    let mut cmd = std::process::Command::new("virsh");
    if let Some(u) = uri {
        cmd.arg("-c").arg(u);
    }
    let out = run_bounded(
        cmd.args([
            "dumpxml",
            "--inactive",
            "--security-info",
            "--",
            domain,
        ]),
        std::time::Duration::from_secs(30),
    )
    .map_err(|e| {
            Error::BadInput(format!(
                "cannot run virsh to read domain {domain} ({e}): install libvirt-clients, or set domain_xml to a saved copy"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::BadInput(format!(
            "virsh dumpxml {domain} failed: {}",
            crate::text::escape(String::from_utf8_lossy(&out.stderr).trim())
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::BadInput(format!("virsh dumpxml {domain} printed non-UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Id;

    fn desc() -> VmDescription {
        VmDescription {
            name: "web".into(),
            volumes: vec![
                ("data".into(), Role::Data, "/d.raw".into(), None),
                ("root".into(), Role::Root, "/r.raw".into(), Some(Bus::Ide)),
                ("logs".into(), Role::Data, "/l.raw".into(), None),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn spec_boots_the_root_volume_first() {
        let d = Definition::describe(&desc()).unwrap();
        let t: Vec<(&str, &str)> = d
            .spec
            .disks
            .iter()
            .map(|d| (d.volume.as_str(), d.target.as_str()))
            .collect();
        assert_eq!(t, [("root", "hda"), ("data", "vda"), ("logs", "vdb")]);
        assert_eq!(d.spec.memory_mib, 1024);
    }

    #[test]
    fn hostile_definitions_are_refused() {
        let good = Definition::describe(&desc()).unwrap();
        let r = |d: &Definition| {
            let b = d.to_bytes();
            Definition::from_chunk(
                &DefinitionRef {
                    chunk: Id::of(&b),
                    size: b.len() as u64,
                },
                &b,
            )
        };
        assert!(r(&good).is_ok());
        let mut d = good.clone();
        d.spec.machine = "pc,accel=kvm".into();
        assert!(r(&d).is_err(), "a comma would add QEMU options");
        let mut d = good.clone();
        d.spec.disks[0].target = "vda'/><x".into();
        assert!(r(&d).is_err());
        let mut d = good.clone();
        d.spec.nics.push(NicSpec {
            model: "virtio".into(),
            mac: Some("52:54:00:zz:00:01".into()),
            network: None,
        });
        assert!(r(&d).is_err());
        let mut d = good.clone();
        d.spec.memory_mib = 1;
        assert!(r(&d).is_err());
        let mut d = good;
        d.checks = Some(BootChecks {
            http: Some(HttpCheck {
                port: 80,
                path: "/ HTTP/1.1\r\nHost: x".into(),
                expect: None,
                status: 200,
            }),
            ..Default::default()
        });
        assert!(r(&d).is_err());
        let b = b"{\"format\":1}";
        assert!(Definition::from_chunk(
            &DefinitionRef {
                chunk: Id::of(b),
                size: 99
            },
            b
        )
        .is_err());
    }

    #[test]
    fn helper_tools_are_bounded_in_time() {
        let t = std::time::Instant::now();
        let e = run_bounded(
            std::process::Command::new("sleep").arg("30"),
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        let o = run_bounded(
            std::process::Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            (o.stdout.as_slice(), o.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert_eq!(o.status.code(), Some(3));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uuid());
    }
}
