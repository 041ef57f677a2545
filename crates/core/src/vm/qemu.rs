//! The QEMU command line of a VM from its definition: for a boot check
//! (`-snapshot`, serial on stdio, no network or a restricted one) and, as
//! text, for an admin restoring onto a host without libvirt.

use std::path::{Path, PathBuf};

use super::{Bus, Definition, Firmware};
use crate::error::{Error, Result};
use crate::vm::domain::RestoredDisk;

pub const QEMU: &str = "qemu-system-x86_64";

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Emulation: slow, but works everywhere.
    #[default]
    Tcg,
    /// Hardware virtualisation only.
    Kvm,
    /// KVM when it works, else TCG (the report says which ran).
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Accel> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            "auto" => Ok(Accel::Auto),
            _ => Err(Error::BadInput(format!(
                "accelerator {s:?}: use tcg, kvm or auto"
            ))),
        }
    }
}

/// A guest port reached from a loopback port on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

/// Options QEMU parses split on commas; a comma in a value is doubled.
fn opt_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Where the UEFI firmware is on Debian (package ovmf).
pub fn uefi_firmware() -> Option<PathBuf> {
    [
        "/usr/share/ovmf/OVMF.fd",
        "/usr/share/qemu/OVMF.fd",
        "/usr/share/OVMF/OVMF.fd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The arguments after the program name.
pub struct BootArgs<'a> {
    pub def: &'a Definition,
    pub disks: &'a [RestoredDisk],
    pub accel: &'a str,
    /// The VM's name (default: `lifeboat-VM`).
    pub name: Option<&'a str>,
    /// `-snapshot`, serial on stdio, firmware log, no monitor.
    pub check: Option<&'a Path>,
    /// Restricted user networking with these forwards; none: no NIC.
    pub forwards: &'a [Forward],
    /// A recovery plan's private network: the VM's own NIC on it.
    pub lan: Option<Lan<'a>>,
    /// Runs in the background (an instant restore): serial to a file,
    /// QMP on a socket, and a failed disk read pauses the VM instead of
    /// reaching the guest.
    pub daemon: Option<Daemon<'a>>,
}

/// The VM's NIC on a plan's private switch (a `stream` backend).
#[derive(Debug, Clone, Copy)]
pub struct Lan<'a> {
    pub socket: &'a Path,
    /// The VM's own MAC (its guest matches its settings to it).
    pub mac: &'a str,
}

/// The MAC of the checks' NIC when a VM has two: QEMU's default for a
/// first NIC, which the check NIC is when it is the only one.
pub const CHECK_MAC: &str = "52:54:00:12:34:56";

/// Where a VM run in the background keeps its console, monitor and pid.
#[derive(Debug, Clone, Copy)]
pub struct Daemon<'a> {
    pub serial: &'a Path,
    pub qmp: &'a Path,
    pub pidfile: &'a Path,
}

/// QEMU's `-accel` value for an accelerator name. TCG writes and runs
/// its own code: `split-wx` maps that memory twice (writable, executable)
/// so it runs where writable executable memory is refused — under the
/// shipped daemon unit's `MemoryDenyWriteExecute=yes`, for one.
pub fn accel_option(accel: &str) -> String {
    match accel {
        "tcg" => "tcg,split-wx=on".into(),
        other => other.into(),
    }
}

pub fn args(a: &BootArgs) -> Result<Vec<String>> {
    let s = &a.def.spec;
    let mut v: Vec<String> = vec![
        "-name".into(),
        a.name
            .map(str::to_string)
            .unwrap_or_else(|| format!("lifeboat-{}", a.def.vm)),
        "-machine".into(),
        s.machine.clone(),
        "-accel".into(),
        accel_option(a.accel),
        "-m".into(),
        format!("{}M", s.memory_mib),
        "-smp".into(),
        s.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
    ];
    if s.firmware == Firmware::Uefi {
        let fw = uefi_firmware().ok_or_else(|| {
            Error::BadInput(
                "the VM boots with UEFI but no OVMF firmware is installed: apt-get install ovmf"
                    .into(),
            )
        })?;
        v.extend(["-bios".into(), opt_value(&fw)]);
    }
    let mut controllers = std::collections::BTreeSet::new();
    let mut boot = 0;
    for (i, d) in s.disks.iter().enumerate() {
        let Some(r) = a.disks.iter().find(|r| r.volume == d.volume) else {
            continue;
        };
        let fmt = match r.format {
            crate::format::manifest::ImageFormat::Raw => "raw",
            crate::format::manifest::ImageFormat::Qcow2 => "qcow2",
        };
        v.push("-drive".into());
        // A boot check runs on a throw-away overlay (-snapshot), where
        // ignoring flushes costs nothing; a VM run by hand keeps its
        // guest's flushes (a host crash must not lose what it synced).
        let cache = if a.check.is_some() {
            ",cache=unsafe"
        } else if a.daemon.is_some() {
            // A read the backup cannot answer (its repository went away)
            // pauses the VM until it can: never an error the guest sees.
            ",rerror=stop,werror=stop"
        } else {
            ""
        };
        v.push(format!(
            "file={},format={fmt},if=none,id=disk{i}{cache}",
            opt_value(&r.path)
        ));
        let dev = match d.bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=disk{i}"),
            Bus::Ide => format!("ide-hd,drive=disk{i}"),
            Bus::Sata => {
                if controllers.insert("ahci") && !s.machine.contains("q35") {
                    v.extend(["-device".into(), "ahci,id=ahci0".into()]);
                }
                format!("ide-hd,drive=disk{i}")
            }
            Bus::Scsi => {
                if controllers.insert("scsi") {
                    v.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
                }
                format!("scsi-hd,drive=disk{i},bus=scsi0.0")
            }
        };
        v.extend(["-device".into(), format!("{dev},bootindex={boot}")]);
        boot += 1;
    }
    if boot == 0 {
        return Err(Error::BadInput(format!(
            "VM {}: none of its disks was restored",
            a.def.vm
        )));
    }
    let model = match a.def.spec.nics.first().map(|n| n.model.as_str()) {
        Some("e1000") => "e1000",
        Some("e1000e") => "e1000e",
        Some("rtl8139") => "rtl8139",
        _ => "virtio-net-pci",
    };
    if let Some(lan) = &a.lan {
        v.extend([
            "-netdev".into(),
            format!(
                "stream,id=lan0,server=off,addr.type=unix,addr.path={}",
                opt_value(lan.socket)
            ),
            "-device".into(),
            format!("{model},netdev=lan0,mac={},romfile=", lan.mac),
        ]);
    }
    if a.forwards.is_empty() {
        if a.lan.is_none() {
            v.extend(["-nic".into(), "none".into()]);
        }
    } else {
        let mac = if a.lan.is_some() {
            format!(",mac={CHECK_MAC}")
        } else {
            String::new()
        };
        let mut net = "user,id=net0,restrict=on".to_string();
        for f in a.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
        }
        // No option ROM: a drill boots from the disks, never the network
        // (a PXE attempt would also delay a failing disk's report).
        v.extend([
            "-netdev".into(),
            net,
            "-device".into(),
            format!("{model},netdev=net0{mac},romfile="),
        ]);
    }
    if let Some(d) = a.daemon {
        v.extend([
            "-serial".into(),
            format!("file:{}", opt_value(d.serial)),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt_value(d.qmp)),
            "-pidfile".into(),
            opt_value(d.pidfile),
            "-daemonize".into(),
        ]);
        return Ok(v);
    }
    match a.check {
        Some(firmware_log) => {
            v.extend([
                "-snapshot".into(),
                "-display".into(),
                "none".into(),
                "-serial".into(),
                "stdio".into(),
                "-monitor".into(),
                "none".into(),
                "-no-reboot".into(),
                "-chardev".into(),
                format!("file,id=fwlog,path={}", opt_value(firmware_log)),
                "-device".into(),
                "isa-debugcon,iobase=0x402,chardev=fwlog".into(),
            ]);
        }
        None => v.extend([
            "-serial".into(),
            "mon:stdio".into(),
            "-display".into(),
            "none".into(),
        ]),
    }
    Ok(v)
}

/// The command line an admin runs by hand (shell-quoted), for hosts
/// without libvirt: TCG, which runs everywhere (`kvm:tcg` dies where
/// /dev/kvm exists but KVM does not work); the restore says to use
/// `-accel kvm` where it does. Named as the restored VM is named.
pub fn command_line(
    def: &Definition,
    disks: &[RestoredDisk],
    name: Option<&str>,
) -> Result<String> {
    let mut a = args(&BootArgs {
        def,
        disks,
        accel: "tcg",
        name,
        check: None,
        forwards: &[],
        lan: None,
        daemon: None,
    })?;
    // By hand the VM gets a network (user mode) rather than none.
    if let Some(i) = a.iter().position(|x| x == "none") {
        if i > 0 && a[i - 1] == "-nic" {
            a[i] = "user,model=virtio-net-pci".into();
        }
    }
    let mut out = String::from(QEMU);
    for x in a {
        out.push(' ');
        out.push_str(&shell_quote(&x));
    }
    Ok(out)
}

pub use crate::text::shell_quote;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{ImageFormat, Role};

    #[test]
    fn boot_check_arguments() {
        let def = crate::vm::fallback_definition(
            "web",
            &[("data".into(), Role::Data), ("root".into(), Role::Root)],
        );
        let disks = [
            RestoredDisk {
                volume: "root".into(),
                path: "/s/a,b.raw".into(),
                format: ImageFormat::Raw,
            },
            RestoredDisk {
                volume: "data".into(),
                path: "/s/data.raw".into(),
                format: ImageFormat::Raw,
            },
        ];
        let a = args(&BootArgs {
            def: &def,
            disks: &disks,
            accel: "tcg",
            name: None,
            check: Some(Path::new("/s/fw.log")),
            forwards: &[Forward {
                host: 40000,
                guest: 8080,
            }],
            lan: None,
            daemon: None,
        })
        .unwrap();
        let s = a.join(" ");
        assert!(s.contains("file=/s/a,,b.raw,format=raw"), "{s}");
        assert!(s.contains("virtio-blk-pci,drive=disk0,bootindex=0"), "{s}");
        assert!(s.contains("restrict=on,hostfwd=tcp:127.0.0.1:40000-:8080"));
        assert!(s.contains("virtio-net-pci,netdev=net0,romfile="), "{s}");
        assert!(a.contains(&"-snapshot".to_string()));
        assert!(s.contains("-accel tcg,split-wx=on"), "{s}");
        let cl = command_line(&def, &disks, Some("web-dr")).unwrap();
        assert!(cl.starts_with("qemu-system-x86_64 -name web-dr"), "{cl}");
        assert!(!cl.contains("unsafe") && !cl.contains("kvm"), "{cl}");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
