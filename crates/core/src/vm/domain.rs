//! libvirt domain XML: what lifeboat reads from it at backup (the spec),
//! and the XML it writes for a restored VM — from the stored XML with
//! disks pointed at the restored files, a new UUID and host-specific items
//! removed, or generated from the spec when the VM had no libvirt domain.
//!
//! The XML comes from a repository, so it is parsed into a small bounded
//! tree (quick-xml does the lexing) and written back escaped; nothing is
//! spliced as text.

use std::path::{Path, PathBuf};

use super::spec::{new_uuid, Bus, Definition, DiskSpec, Firmware, NicSpec, VmSpec};
use super::xml::{parse, remove_children, xml_error, Element, Node};
use crate::error::Result;
use crate::format::manifest::{ImageFormat, Role};

fn memory_mib(e: &Element) -> Option<u64> {
    let n: u64 = e.text().parse().ok()?;
    let unit = e.attr("unit").unwrap_or("KiB");
    let bytes = match unit {
        "b" | "bytes" => n,
        "KB" => n * 1000,
        "k" | "KiB" => n << 10,
        "MB" => n * 1_000_000,
        "M" | "MiB" => n << 20,
        "GB" => n * 1_000_000_000,
        "G" | "GiB" => n << 30,
        "T" | "TiB" => n << 40,
        _ => return None,
    };
    Some(bytes >> 20)
}

fn bus_of(s: Option<&str>) -> Bus {
    match s {
        Some("ide") => Bus::Ide,
        Some("sata") => Bus::Sata,
        Some("scsi") => Bus::Scsi,
        _ => Bus::Virtio,
    }
}

fn same_file(a: &str, b: &Path) -> bool {
    if Path::new(a) == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn disk_source(d: &Element) -> Option<&str> {
    let s = d.child("source")?;
    s.attr("file").or_else(|| s.attr("dev"))
}

/// Reads the spec from a domain XML; disks are matched to the configured
/// volumes by their source paths.
pub fn spec_from_xml(
    xml: &str,
    volumes: &[(String, Role, PathBuf, Option<Bus>)],
) -> Result<VmSpec> {
    let dom = parse(xml)?;
    let vcpus = dom
        .child("vcpu")
        .and_then(|e| e.text().parse().ok())
        .unwrap_or(1);
    let memory_mib = dom
        .child("memory")
        .and_then(memory_mib)
        .ok_or_else(|| xml_error("no <memory> with a known unit"))?;
    let os = dom.child("os");
    let firmware = match os {
        Some(o) if o.attr("firmware") == Some("efi") || o.child("loader").is_some() => {
            Firmware::Uefi
        }
        _ => Firmware::Bios,
    };
    let machine = os
        .and_then(|o| o.child("type"))
        .and_then(|t| t.attr("machine"))
        .unwrap_or("pc")
        .to_string();
    let devices = dom.child("devices");
    let mut disks: Vec<(u32, DiskSpec)> = Vec::new();
    let mut nics = Vec::new();
    for (pos, d) in devices.iter().flat_map(|d| d.elements()).enumerate() {
        match d.name.as_str() {
            "disk" if d.attr("device").unwrap_or("disk") == "disk" => {
                let Some(src) = disk_source(d) else { continue };
                let Some(vol) = volumes.iter().find(|v| same_file(src, &v.2)) else {
                    continue;
                };
                let target = d.child("target");
                let order = d
                    .child("boot")
                    .and_then(|b| b.attr("order"))
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(1000 + pos as u32);
                disks.push((
                    order,
                    DiskSpec {
                        volume: vol.0.clone(),
                        bus: bus_of(target.and_then(|t| t.attr("bus"))),
                        target: target
                            .and_then(|t| t.attr("dev"))
                            .unwrap_or("vda")
                            .to_string(),
                    },
                ));
            }
            "interface" => nics.push(NicSpec {
                model: d
                    .child("model")
                    .and_then(|m| m.attr("type"))
                    .unwrap_or("virtio")
                    .to_string(),
                mac: d
                    .child("mac")
                    .and_then(|m| m.attr("address"))
                    .map(str::to_string),
                network: d
                    .child("source")
                    .and_then(|s| s.attr("network").or_else(|| s.attr("bridge")))
                    .map(str::to_string),
            }),
            _ => {}
        }
    }
    disks.sort_by_key(|(o, _)| *o);
    let mut disks: Vec<DiskSpec> = disks.into_iter().map(|(_, d)| d).collect();
    // Volumes the domain does not list (backed up anyway) come last, on
    // device names no disk of the domain uses (a restore must not point
    // another disk of the domain at them).
    let taken: Vec<DiskSpec> = devices
        .iter()
        .flat_map(|d| d.elements())
        .filter(|d| d.name == "disk")
        .filter_map(|d| d.child("target").and_then(|t| t.attr("dev")))
        .map(|t| DiskSpec {
            volume: String::new(),
            bus: Bus::Virtio,
            target: t.to_string(),
        })
        .collect();
    for (name, _, _, bus) in volumes {
        if disks.iter().all(|d| &d.volume != name) {
            let bus = bus.unwrap_or_default();
            let used: Vec<DiskSpec> = disks.iter().chain(&taken).cloned().collect();
            let target = free_target(&used, bus);
            disks.push(DiskSpec {
                volume: name.clone(),
                bus,
                target,
            });
        }
    }
    Ok(VmSpec {
        vcpus,
        memory_mib,
        firmware,
        machine,
        disks,
        nics,
    })
}

/// The first device name of the bus no disk uses (vdb after vda).
pub fn free_target(disks: &[DiskSpec], bus: Bus) -> String {
    (b'a'..=b'z')
        .map(|c| format!("{}{}", bus.dev_prefix(), c as char))
        .find(|t| disks.iter().all(|d| &d.target != t))
        .unwrap_or_else(|| format!("{}z", bus.dev_prefix()))
}

/// A restored volume, as a domain refers to it.
#[derive(Debug, Clone)]
pub struct RestoredDisk {
    pub volume: String,
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// What writing a restored domain did besides the disks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DomainNotes {
    pub uuid: String,
    /// What was removed or rewritten, for the admin to review.
    pub changes: Vec<String>,
}

/// The domain XML of a restored VM: the stored XML rewritten, or one
/// generated from the spec.
pub fn restored_xml(
    def: &Definition,
    disks: &[RestoredDisk],
    keep_macs: bool,
    name: Option<&str>,
    networks: Option<&[String]>,
) -> Result<(String, DomainNotes)> {
    let mut notes = DomainNotes {
        uuid: new_uuid(),
        changes: Vec::new(),
    };
    let mut dom = match &def.domain_xml {
        Some(x) => {
            let mut dom = parse(x)?;
            rewrite(&mut dom, def, disks, keep_macs, networks, &mut notes);
            dom
        }
        None => {
            notes.changes.push(
                "generated from lifeboat's VM spec (the VM had no libvirt domain XML)".into(),
            );
            generate(def, disks, keep_macs)
        }
    };
    let name = name.unwrap_or(&def.vm);
    match dom.child_mut("name") {
        Some(n) => n.set_text(name),
        None => dom.push(Element::new("name").with_text(name)),
    }
    match dom.child_mut("uuid") {
        Some(u) => u.set_text(&notes.uuid),
        None => dom.push(Element::new("uuid").with_text(&notes.uuid)),
    }
    let mut out = String::new();
    dom.write(&mut out, 0);
    out.push('\n');
    Ok((out, notes))
}

/// A restored domain's NICs all moved onto libvirt network `network` (a
/// recovery plan's): the first NIC gets `mac`, every NIC keeps its model,
/// and what tied a NIC to the old host (its bridge, tap device, virtual
/// port) goes. A domain without a NIC gets one. Returns the XML and what
/// changed, for the admin to review.
pub fn onto_network(xml: &str, network: &str, mac: &str) -> Result<(String, Vec<String>)> {
    let mut dom = parse(xml)?;
    let mut changes = Vec::new();
    if dom.child("devices").is_none() {
        dom.push(Element::new("devices"));
    }
    let Some(devices) = dom.child_mut("devices") else {
        return Err(xml_error("the domain has no <devices>"));
    };
    let mut first = true;
    for node in devices.children.iter_mut() {
        let Node::Element(e) = node else { continue };
        if e.name != "interface" {
            continue;
        }
        let was = match (e.attr("type"), e.child("source")) {
            (Some(t), Some(s)) => format!(
                "{t} {}",
                s.attr("network")
                    .or(s.attr("bridge"))
                    .or(s.attr("dev"))
                    .unwrap_or("")
            ),
            (Some(t), None) => t.to_string(),
            _ => "unknown".into(),
        };
        e.set_attr("type", "network");
        remove_children(&mut e.children, |c| {
            matches!(c.name.as_str(), "source" | "target" | "virtualport")
                || (first && c.name == "mac")
        });
        // The new children take the indentation the others have.
        let indent = e.children.iter().find_map(|n| match n {
            Node::Text(t) if t.trim().is_empty() => Some(t.clone()),
            _ => None,
        });
        let mut add = vec![Element::new("source").with_attr("network", network)];
        if first {
            add.insert(0, Element::new("mac").with_attr("address", mac));
        }
        for el in add.into_iter().rev() {
            e.children.insert(0, Node::Element(el));
            if let Some(i) = &indent {
                e.children.insert(0, Node::Text(i.clone()));
            }
        }
        changes.push(format!(
            "a NIC ({}) moved onto the plan's network {network}",
            crate::text::escape(was.trim())
        ));
        first = false;
    }
    if first {
        devices.push(
            Element::new("interface")
                .with_attr("type", "network")
                .with_attr_child("mac", "address", mac)
                .with_attr_child("source", "network", network)
                .with_attr_child("model", "type", "virtio"),
        );
        changes.push(format!(
            "added a virtio NIC on the plan's network {network} (the VM had none)"
        ));
    }
    let mut out = String::new();
    dom.write(&mut out, 0);
    out.push('\n');
    Ok((out, changes))
}

fn driver_type(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    }
}

/// The stored XML made into the restored VM's: its disks pointed at the
/// restored files (disks not in the backup dropped), MACs dropped unless
/// kept, then the allow-list (`allow`): only what lifeboat understands
/// survives, and every drop is listed.
fn rewrite(
    dom: &mut Element,
    def: &Definition,
    disks: &[RestoredDisk],
    keep_macs: bool,
    networks: Option<&[String]>,
    notes: &mut DomainNotes,
) {
    if let Some(devices) = dom.child_mut("devices") {
        let mut kept: Vec<Node> = Vec::new();
        let drop_indent = |kept: &mut Vec<Node>| {
            if matches!(kept.last(), Some(Node::Text(t)) if t.trim().is_empty()) {
                kept.pop();
            }
        };
        for node in std::mem::take(&mut devices.children) {
            let Node::Element(mut e) = node else {
                kept.push(node);
                continue;
            };
            match e.name.as_str() {
                "disk" => {
                    let dev = e
                        .child("target")
                        .and_then(|t| t.attr("dev"))
                        .unwrap_or("")
                        .to_string();
                    let restored = (e.attr("device").unwrap_or("disk") == "disk")
                        .then(|| def.spec.disks.iter().find(|d| d.target == dev))
                        .flatten()
                        .and_then(|s| disks.iter().find(|r| r.volume == s.volume));
                    match restored {
                        Some(r) => point_disk(&mut e, r),
                        None => {
                            notes.changes.push(format!(
                                "removed {} {} ({}): it is not part of this backup",
                                crate::text::escape(e.attr("device").unwrap_or("disk")),
                                crate::text::escape(&dev),
                                crate::text::escape(disk_source(&e).unwrap_or("no source"))
                            ));
                            drop_indent(&mut kept);
                            continue;
                        }
                    }
                }
                "interface"
                    if e.attr("type") == Some("network")
                        && networks.is_some_and(|have| {
                            let net = e
                                .child("source")
                                .and_then(|s| s.attr("network"))
                                .unwrap_or("");
                            !have.iter().any(|n| n == net)
                        }) =>
                {
                    notes.changes.push(format!(
                        "removed the NIC on network {}: this libvirt has no such network (define it, then virsh attach-interface)",
                        crate::text::escape(
                            e.child("source").and_then(|s| s.attr("network")).unwrap_or("")
                        )
                    ));
                    drop_indent(&mut kept);
                    continue;
                }
                "interface"
                    if !keep_macs && remove_children(&mut e.children, |m| m.name == "mac") > 0 =>
                {
                    notes.changes.push(
                        "removed a MAC address (libvirt assigns a new one; --keep-macs keeps it)"
                            .into(),
                    );
                }
                _ => {}
            }
            kept.push(Node::Element(e));
        }
        devices.children = kept;
    }
    notes.changes.extend(super::allow::apply(dom));
    if dom.child("devices").is_none() {
        dom.push(Element::new("devices"));
    }
    let Some(devices) = dom.child_mut("devices") else {
        return;
    };
    // Restored volumes the stored XML did not list are attached too.
    for d in &def.spec.disks {
        let listed = devices.elements().any(|e| {
            e.name == "disk"
                && e.child("target").and_then(|t| t.attr("dev")) == Some(d.target.as_str())
        });
        if let (false, Some(r)) = (listed, disks.iter().find(|r| r.volume == d.volume)) {
            devices.push(disk_element(d, r, None));
            notes
                .changes
                .push(format!("added volume {} as {}", d.volume, d.target));
        }
    }
}

/// Points a `<disk>` at a restored file: a plain file, no backing chain.
fn point_disk(e: &mut Element, r: &RestoredDisk) {
    e.set_attr("type", "file");
    let path = r.path.display().to_string();
    remove_children(&mut e.children, |x| {
        x.name == "backingStore" || x.name == "source"
    });
    let src = Element::new("source").with_attr("file", &path);
    match e.child_mut("driver") {
        Some(d) => {
            d.set_attr("name", "qemu");
            d.set_attr("type", driver_type(r.format));
        }
        None => e.push(
            Element::new("driver")
                .with_attr("name", "qemu")
                .with_attr("type", driver_type(r.format)),
        ),
    }
    // <source> goes right after <driver>, where libvirt writes it, with
    // the driver's indentation.
    let at = e
        .children
        .iter()
        .position(|c| matches!(c, Node::Element(x) if x.name == "driver"))
        .unwrap_or(0);
    let indent = match at.checked_sub(1).and_then(|i| e.children.get(i)) {
        Some(Node::Text(t)) if t.trim().is_empty() => Some(t.clone()),
        _ => None,
    };
    let at = (at + 1).min(e.children.len());
    e.children.insert(at, Node::Element(src));
    if let Some(ws) = indent {
        e.children.insert(at, Node::Text(ws));
    }
}

fn disk_element(d: &DiskSpec, r: &RestoredDisk, boot: Option<usize>) -> Element {
    let mut e = Element::new("disk")
        .with_attr("type", "file")
        .with_attr("device", "disk");
    e.push(
        Element::new("driver")
            .with_attr("name", "qemu")
            .with_attr("type", driver_type(r.format)),
    );
    e.push(Element::new("source").with_attr("file", &r.path.display().to_string()));
    e.push(
        Element::new("target")
            .with_attr("dev", &d.target)
            .with_attr("bus", d.bus.as_str()),
    );
    if let Some(order) = boot {
        e.push(Element::new("boot").with_attr("order", &order.to_string()));
    }
    e
}

fn nic_model(model: &str) -> &str {
    match model {
        "virtio" | "e1000" | "e1000e" | "rtl8139" => model,
        _ => "virtio",
    }
}

fn generate(def: &Definition, disks: &[RestoredDisk], keep_macs: bool) -> Element {
    let s = &def.spec;
    let mut dom = Element::new("domain").with_attr("type", "kvm");
    dom.push(Element::new("name").with_text(&def.vm));
    dom.push(
        Element::new("memory")
            .with_attr("unit", "MiB")
            .with_text(&s.memory_mib.to_string()),
    );
    dom.push(Element::new("vcpu").with_text(&s.vcpus.to_string()));
    let mut os = Element::new("os");
    if s.firmware == Firmware::Uefi {
        os.set_attr("firmware", "efi");
    }
    os.push(
        Element::new("type")
            .with_attr("arch", "x86_64")
            .with_attr("machine", &s.machine)
            .with_text("hvm"),
    );
    dom.push(os);
    let mut features = Element::new("features");
    features.push(Element::new("acpi"));
    features.push(Element::new("apic"));
    dom.push(features);
    let mut devices = Element::new("devices");
    let mut order = 1;
    for d in &s.disks {
        if let Some(r) = disks.iter().find(|r| r.volume == d.volume) {
            devices.push(disk_element(d, r, Some(order)));
            order += 1;
        }
    }
    for n in &s.nics {
        let mut i = Element::new("interface").with_attr("type", "network");
        if let (true, Some(mac)) = (keep_macs, &n.mac) {
            i.push(Element::new("mac").with_attr("address", mac));
        }
        i.push(
            Element::new("source").with_attr(
                "network",
                n.network
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default"),
            ),
        );
        i.push(Element::new("model").with_attr("type", nic_model(&n.model)));
        devices.push(i);
    }
    let mut serial = Element::new("serial").with_attr("type", "pty");
    serial.push(Element::new("target").with_attr("port", "0"));
    devices.push(serial);
    let mut console = Element::new("console").with_attr("type", "pty");
    console.push(
        Element::new("target")
            .with_attr("type", "serial")
            .with_attr("port", "0"),
    );
    devices.push(console);
    dom.push(devices);
    dom
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version="1.0"?>
<domain type='kvm'>
  <name>web01</name>
  <uuid>6f1c1a53-7c35-4f3b-9c1e-2b1a36c3f0aa</uuid>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <seclabel type='dynamic' model='apparmor'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01-root.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg0/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/srv/scratch &amp; tmp.raw'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <hostdev mode='subsystem' type='pci'><source><address bus='0x03'/></source></hostdev>
  </devices>
</domain>
"#;

    fn vols() -> Vec<(String, Role, PathBuf, Option<Bus>)> {
        vec![
            (
                "root".into(),
                Role::Root,
                "/var/lib/libvirt/images/web01-root.qcow2".into(),
                None,
            ),
            (
                "data".into(),
                Role::Data,
                "/dev/vg0/web01-data".into(),
                None,
            ),
        ]
    }

    #[test]
    fn reads_the_spec_from_a_domain() {
        let s = spec_from_xml(XML, &vols()).unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (2, 512));
        assert_eq!(s.machine, "pc-q35-7.2");
        let d: Vec<_> = s
            .disks
            .iter()
            .map(|d| (d.volume.as_str(), d.target.as_str()))
            .collect();
        assert_eq!(d, [("root", "vda"), ("data", "vdb")]);
        assert_eq!(s.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn rewrites_a_domain_for_its_restored_files() {
        let def = Definition {
            format: 1,
            vm: "web01".into(),
            spec: spec_from_xml(XML, &vols()).unwrap(),
            domain_xml: Some(XML.into()),
            checks: None,
        };
        let disks = [
            RestoredDisk {
                volume: "root".into(),
                path: "/restore/web01/root.qcow2".into(),
                format: ImageFormat::Qcow2,
            },
            RestoredDisk {
                volume: "data".into(),
                path: "/restore/web01/data <1>.raw".into(),
                format: ImageFormat::Raw,
            },
        ];
        // A host without the VM's network: the NIC goes, and is listed.
        let (bare, n) = restored_xml(&def, &disks, false, None, Some(&["other".into()])).unwrap();
        assert!(!bare.contains("<interface"), "{bare}");
        assert!(n
            .changes
            .iter()
            .any(|c| c.contains("NIC on network default")));
        let (kept, _) = restored_xml(&def, &disks, false, None, Some(&["default".into()])).unwrap();
        assert!(kept.contains("<source network=\"default\"/>"), "{kept}");
        let (x, notes) = restored_xml(&def, &disks, false, None, None).unwrap();
        assert!(
            x.contains("<source file=\"/restore/web01/root.qcow2\"/>"),
            "{x}"
        );
        assert!(x.contains("/restore/web01/data &lt;1&gt;.raw"), "{x}");
        assert!(!x.contains("backingStore") && !x.contains("/base.qcow2"));
        assert!(!x.contains("hostdev") && !x.contains("seclabel"));
        assert!(!x.contains("52:54:00:12:34:56"));
        assert!(
            !x.contains("scratch"),
            "a disk outside the backup is dropped"
        );
        assert!(!x.contains("6f1c1a53"));
        assert!(x.contains(&notes.uuid));
        assert!(notes.changes.iter().any(|c| c.contains("vdc")));
        // It parses again as a domain with the restored disks.
        let again = spec_from_xml(
            &x,
            &[
                (
                    "root".into(),
                    Role::Root,
                    "/restore/web01/root.qcow2".into(),
                    None,
                ),
                (
                    "data".into(),
                    Role::Data,
                    "/restore/web01/data <1>.raw".into(),
                    None,
                ),
            ],
        )
        .unwrap();
        assert_eq!(again.disks.len(), 2);
        let (kept, _) = restored_xml(&def, &disks, true, Some("web01-dr"), None).unwrap();
        // A volume the domain does not list gets a device name no disk of
        // the domain has (vdc is the scratch disk's, dropped above).
        let mut more = vols();
        more.push(("logs".into(), Role::Data, "/srv/logs.raw".into(), None));
        let s = spec_from_xml(XML, &more).unwrap();
        assert_eq!(s.disks[2].volume, "logs");
        assert_eq!(s.disks[2].target, "vdd");
        assert!(kept.contains("52:54:00:12:34:56") && kept.contains("<name>web01-dr</name>"));
    }

    #[test]
    fn refuses_what_is_not_a_domain() {
        for bad in [
            "",
            "<domain>",
            "<network/>",
            "<domain/><domain/>",
            "text",
            "<domain><a></b></domain>",
        ] {
            assert!(spec_from_xml(bad, &[]).is_err(), "{bad:?}");
        }
        let deep = format!("{}{}", "<domain>".repeat(100), "</domain>".repeat(100));
        assert!(parse(&deep).is_err());
    }

    /// What an attacker with a backup client's token could put into a
    /// stored definition: nothing of it reaches the restored XML, and
    /// every drop is listed.
    #[test]
    fn a_hostile_definition_keeps_only_what_lifeboat_understands() {
        let hostile = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web01</name>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/var/evil/OVMF.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/x.fd</nvram>
  </os>
  <cpu mode='host-passthrough'><topology sockets='1' cores='2' threads='1'/></cpu>
  <metadata><evil xmlns='urn:x'>data</evil></metadata>
  <devices>
    <emulator>/tmp/evil-qemu</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file='/var/lib/libvirt/images/web01-root.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/etc/shadow'/>
      <target dev='hdc' bus='ide'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/><target dir='hostroot'/>
    </filesystem>
    <interface type='ethernet'>
      <script path='/tmp/evil.sh'/>
    </interface>
    <interface type='network'>
      <source network='default'/>
      <script path='/tmp/evil2.sh'/>
      <target dev='vnet0'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='/root/.bashrc'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='/etc/cron.d/x'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='vnc' port='5900' listen='0.0.0.0' passwd='x'/>
    <hostdev mode='subsystem' type='pci'/>
  </devices>
  <seclabel type='none'/>
  <qemu:commandline>
    <qemu:arg value='-drive'/>
    <qemu:arg value='file=/etc/shadow,if=virtio'/>
  </qemu:commandline>
</domain>
"#;
        let vols = vec![(
            "root".to_string(),
            Role::Root,
            PathBuf::from("/var/lib/libvirt/images/web01-root.qcow2"),
            None,
        )];
        let def = Definition {
            format: 1,
            vm: "web01".into(),
            spec: spec_from_xml(hostile, &vols).unwrap(),
            domain_xml: Some(hostile.into()),
            checks: None,
        };
        let disks = [RestoredDisk {
            volume: "root".into(),
            path: "/restore/root.qcow2".into(),
            format: ImageFormat::Qcow2,
        }];
        let (x, notes) = restored_xml(&def, &disks, false, None, None).unwrap();
        for bad in [
            "commandline",
            "/etc/shadow",
            "filesystem",
            "hostroot",
            ".bashrc",
            "evil",
            "emulator",
            "script",
            "/etc/cron.d",
            "0.0.0.0",
            "passwd",
            "hostdev",
            "seclabel",
            "metadata",
            "unsafe",
            "nvram",
            "xmlns:qemu",
            "vnet0",
            "type=\"ethernet\"",
        ] {
            assert!(!x.contains(bad), "{bad} survived:\n{x}");
        }
        for kept in [
            "<source file=\"/restore/root.qcow2\"/>",
            "<boot order=\"1\"/>",
            "host-passthrough",
            "cores=\"2\"",
            "firmware=\"efi\"",
            "<source network=\"default\"/>",
            "<serial type=\"pty\">",
            "org.qemu.guest_agent.0",
            "listen=\"127.0.0.1\"",
        ] {
            assert!(x.contains(kept), "{kept} missing:\n{x}");
        }
        let all = notes.changes.join("\n");
        for listed in [
            "qemu:commandline",
            "filesystem",
            "emulator",
            "script",
            "became a pty",
            "hdc",
            "hostdev",
            "127.0.0.1",
        ] {
            assert!(all.contains(listed), "{listed} not listed:\n{all}");
        }
        // The result is a domain lifeboat reads again, with the one disk.
        let again = spec_from_xml(
            &x,
            &[(
                "root".into(),
                Role::Root,
                "/restore/root.qcow2".into(),
                None,
            )],
        )
        .unwrap();
        assert_eq!(again.disks.len(), 1);
    }
}
