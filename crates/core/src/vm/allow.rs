//! What a restored domain keeps of a stored domain XML: an allow-list.
//!
//! A definition comes from a repository, which an attacker holding a
//! backup client's token may have written to. So the restored XML keeps
//! only elements lifeboat understands — memory, vCPUs, CPU model and
//! topology, machine and firmware type, features, clock, the disks it
//! restored, controllers, NICs on named networks or bridges, consoles on a
//! pty, input, graphics on loopback, video, balloon, RNG from the host's
//! random device, watchdog — each with only the attributes it knows, and
//! values checked to be plain words or numbers. Everything else is dropped
//! and listed: `qemu:commandline`, filesystem passthrough, character
//! devices writing to files or sockets, custom emulators and firmware
//! paths, interface scripts, host devices, security labels, metadata, and
//! anything unknown.

use super::spec::is_mac;
use super::xml::{remove_children, Element, Node};

/// A check on an attribute's or a text's value.
type Check = fn(&str) -> bool;

fn word(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn number(v: &str) -> bool {
    !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())
}

/// A number in decimal or hex (PCI addresses: `0x03`).
fn address(v: &str) -> bool {
    match v.strip_prefix("0x") {
        Some(h) => !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => number(v),
    }
}

fn yes_no(v: &str) -> bool {
    matches!(v, "yes" | "no" | "on" | "off")
}

macro_rules! one_of {
    ($($v:literal),+) => {
        |v: &str| matches!(v, $($v)|+)
    };
}

/// An element lifeboat keeps: its attributes (name, check), whether its
/// text is kept (and checked), and its children by name.
struct Rule {
    attrs: &'static [(&'static str, Check)],
    text: Option<Check>,
    children: &'static [(&'static str, &'static Rule)],
}

const fn leaf(attrs: &'static [(&'static str, Check)]) -> Rule {
    Rule {
        attrs,
        text: None,
        children: &[],
    }
}

const STATE: Rule = leaf(&[("state", yes_no)]);
const ANY_TEXT: Rule = Rule {
    attrs: &[],
    text: Some(|_| true),
    children: &[],
};
const ADDRESS: Rule = leaf(&[
    ("type", word),
    ("domain", address),
    ("bus", address),
    ("slot", address),
    ("function", address),
    ("multifunction", yes_no),
    ("controller", address),
    ("target", address),
    ("unit", address),
    ("port", address),
]);
const BOOT_ORDER: Rule = leaf(&[("order", number)]);

const MEMORY: Rule = Rule {
    attrs: &[(
        "unit",
        one_of!(
            "b", "bytes", "KB", "k", "KiB", "MB", "M", "MiB", "GB", "G", "GiB", "TB", "T", "TiB"
        ),
    )],
    text: Some(number),
    children: &[],
};
const VCPU: Rule = Rule {
    attrs: &[
        ("placement", one_of!("static", "auto")),
        ("current", number),
    ],
    text: Some(number),
    children: &[],
};
const OS_TYPE: Rule = Rule {
    attrs: &[
        ("arch", one_of!("x86_64", "i686", "aarch64")),
        ("machine", word),
    ],
    text: Some(one_of!("hvm")),
    children: &[],
};
const OS: Rule = Rule {
    attrs: &[("firmware", one_of!("efi", "bios"))],
    text: None,
    children: &[
        ("type", &OS_TYPE),
        (
            "boot",
            &leaf(&[("dev", one_of!("hd", "cdrom", "network", "fd"))]),
        ),
        (
            "bootmenu",
            &leaf(&[("enable", yes_no), ("timeout", number)]),
        ),
    ],
};
const HYPERV: Rule = Rule {
    attrs: &[("mode", one_of!("custom", "passthrough"))],
    text: None,
    children: &[
        ("relaxed", &STATE),
        ("vapic", &STATE),
        (
            "spinlocks",
            &leaf(&[("state", yes_no), ("retries", number)]),
        ),
        ("vpindex", &STATE),
        ("runtime", &STATE),
        ("synic", &STATE),
        ("stimer", &STATE),
        ("reset", &STATE),
        ("frequencies", &STATE),
        ("reenlightenment", &STATE),
        ("tlbflush", &STATE),
        ("ipi", &STATE),
        ("evmcs", &STATE),
        ("vendor_id", &leaf(&[("state", yes_no), ("value", word)])),
    ],
};
const FEATURES: Rule = Rule {
    attrs: &[],
    text: None,
    children: &[
        ("acpi", &leaf(&[])),
        ("apic", &leaf(&[])),
        ("pae", &leaf(&[])),
        ("hap", &STATE),
        ("vmport", &STATE),
        ("smm", &STATE),
        ("hyperv", &HYPERV),
    ],
};
const CPU: Rule = Rule {
    attrs: &[
        (
            "mode",
            one_of!("host-model", "host-passthrough", "custom", "maximum"),
        ),
        ("match", one_of!("minimum", "exact", "strict")),
        ("check", one_of!("none", "partial", "full")),
        ("migratable", yes_no),
    ],
    text: None,
    children: &[
        (
            "model",
            &Rule {
                attrs: &[("fallback", one_of!("allow", "forbid"))],
                text: Some(word),
                children: &[],
            },
        ),
        (
            "vendor",
            &Rule {
                attrs: &[],
                text: Some(word),
                children: &[],
            },
        ),
        (
            "topology",
            &leaf(&[
                ("sockets", number),
                ("dies", number),
                ("clusters", number),
                ("cores", number),
                ("threads", number),
            ]),
        ),
        (
            "feature",
            &leaf(&[
                (
                    "policy",
                    one_of!("force", "require", "optional", "disable", "forbid"),
                ),
                ("name", word),
            ]),
        ),
        (
            "cache",
            &leaf(&[
                ("mode", one_of!("emulate", "passthrough", "disable")),
                ("level", number),
            ]),
        ),
    ],
};
const CLOCK: Rule = Rule {
    attrs: &[("offset", one_of!("utc", "localtime"))],
    text: None,
    children: &[(
        "timer",
        &leaf(&[
            ("name", word),
            ("tickpolicy", word),
            ("present", yes_no),
            ("track", word),
        ]),
    )],
};
const LIFECYCLE: Rule = Rule {
    attrs: &[],
    text: Some(one_of!("destroy", "restart", "preserve", "rename-restart")),
    children: &[],
};
const PM: Rule = Rule {
    attrs: &[],
    text: None,
    children: &[
        ("suspend-to-mem", &leaf(&[("enabled", yes_no)])),
        ("suspend-to-disk", &leaf(&[("enabled", yes_no)])),
    ],
};

/// A restored disk: the restore wrote its `<source>` and `<driver>`; the
/// rest of what a guest may rely on (target, boot order, address, serial).
const DISK: Rule = Rule {
    attrs: &[("type", one_of!("file")), ("device", one_of!("disk"))],
    text: None,
    children: &[
        (
            "driver",
            &leaf(&[
                ("name", one_of!("qemu")),
                ("type", one_of!("raw", "qcow2")),
                (
                    "cache",
                    one_of!("none", "writeback", "writethrough", "directsync", "default"),
                ),
                ("discard", one_of!("ignore", "unmap")),
                ("detect_zeroes", one_of!("off", "on", "unmap")),
                ("io", one_of!("threads", "native", "io_uring")),
            ]),
        ),
        ("source", &leaf(&[("file", |_| true)])),
        (
            "target",
            &leaf(&[
                ("dev", word),
                ("bus", one_of!("virtio", "ide", "sata", "scsi", "usb")),
            ]),
        ),
        ("boot", &BOOT_ORDER),
        ("address", &ADDRESS),
        (
            "serial",
            &Rule {
                attrs: &[],
                text: Some(word),
                children: &[],
            },
        ),
    ],
};
const CONTROLLER: Rule = Rule {
    attrs: &[
        (
            "type",
            one_of!("usb", "pci", "ide", "sata", "scsi", "virtio-serial", "fdc"),
        ),
        ("index", number),
        ("model", word),
        ("ports", number),
        ("vectors", number),
    ],
    text: None,
    children: &[
        ("address", &ADDRESS),
        ("model", &leaf(&[("name", word)])),
        (
            "target",
            &leaf(&[
                ("chassisNr", number),
                ("chassis", number),
                ("port", address),
                ("busNr", number),
            ]),
        ),
        ("driver", &leaf(&[("queues", number)])),
    ],
};
/// A NIC (type network, bridge or user, checked before the rule applies).
const INTERFACE: Rule = Rule {
    attrs: &[("type", one_of!("network", "bridge", "user"))],
    text: None,
    children: &[
        ("mac", &leaf(&[("address", is_mac)])),
        ("source", &leaf(&[("network", word), ("bridge", word)])),
        (
            "model",
            &leaf(&[("type", one_of!("virtio", "e1000", "e1000e", "rtl8139"))]),
        ),
        ("address", &ADDRESS),
        ("boot", &BOOT_ORDER),
        (
            "driver",
            &leaf(&[("name", one_of!("vhost", "qemu")), ("queues", number)]),
        ),
    ],
};
const CHARDEV_PTY: Rule = Rule {
    attrs: &[("type", one_of!("pty"))],
    text: None,
    children: &[(
        "target",
        &Rule {
            attrs: &[("type", word), ("port", number)],
            text: None,
            children: &[("model", &leaf(&[("name", word)]))],
        },
    )],
};
const INPUT: Rule = Rule {
    attrs: &[
        ("type", one_of!("mouse", "keyboard", "tablet")),
        ("bus", one_of!("ps2", "usb", "virtio")),
    ],
    text: None,
    children: &[("address", &ADDRESS)],
};
const VIDEO: Rule = Rule {
    attrs: &[],
    text: None,
    children: &[
        (
            "model",
            &leaf(&[
                (
                    "type",
                    one_of!("vga", "cirrus", "qxl", "virtio", "bochs", "ramfb", "none"),
                ),
                ("vram", number),
                ("ram", number),
                ("vgamem", number),
                ("heads", number),
                ("primary", yes_no),
            ]),
        ),
        ("address", &ADDRESS),
    ],
};
const MODEL_ONLY: Rule = Rule {
    attrs: &[("model", word)],
    text: None,
    children: &[("address", &ADDRESS)],
};
const WATCHDOG: Rule = Rule {
    attrs: &[
        ("model", word),
        (
            "action",
            one_of!(
                "reset",
                "shutdown",
                "poweroff",
                "pause",
                "none",
                "inject-nmi"
            ),
        ),
    ],
    text: None,
    children: &[("address", &ADDRESS)],
};
const RNG: Rule = Rule {
    attrs: &[("model", one_of!("virtio"))],
    text: None,
    children: &[
        (
            "backend",
            &Rule {
                attrs: &[("model", one_of!("random"))],
                text: Some(one_of!("/dev/urandom", "/dev/random")),
                children: &[],
            },
        ),
        ("rate", &leaf(&[("bytes", number), ("period", number)])),
        ("address", &ADDRESS),
    ],
};
const CHANNEL: Rule = Rule {
    attrs: &[("type", one_of!("unix", "spicevmc"))],
    text: None,
    children: &[
        (
            "target",
            &leaf(&[
                ("type", one_of!("virtio")),
                (
                    "name",
                    one_of!("org.qemu.guest_agent.0", "com.redhat.spice.0"),
                ),
            ]),
        ),
        ("address", &ADDRESS),
    ],
};
const GRAPHICS: Rule = Rule {
    attrs: &[
        ("type", one_of!("vnc", "spice")),
        ("port", one_of!("-1")),
        ("autoport", one_of!("yes")),
        ("listen", one_of!("127.0.0.1", "::1")),
    ],
    text: None,
    children: &[(
        "listen",
        &leaf(&[
            ("type", one_of!("address")),
            ("address", one_of!("127.0.0.1", "::1")),
        ]),
    )],
};
const DEVICES: Rule = Rule {
    attrs: &[],
    text: None,
    children: &[
        ("disk", &DISK),
        ("controller", &CONTROLLER),
        ("interface", &INTERFACE),
        ("serial", &CHARDEV_PTY),
        ("console", &CHARDEV_PTY),
        ("channel", &CHANNEL),
        ("input", &INPUT),
        ("graphics", &GRAPHICS),
        ("video", &VIDEO),
        ("sound", &MODEL_ONLY),
        ("memballoon", &MODEL_ONLY),
        ("panic", &MODEL_ONLY),
        ("watchdog", &WATCHDOG),
        ("rng", &RNG),
        ("hub", &leaf(&[("type", one_of!("usb"))])),
    ],
};
const DOMAIN: Rule = Rule {
    attrs: &[("type", one_of!("kvm", "qemu"))],
    text: None,
    children: &[
        // Both are set for the restored VM afterwards.
        ("name", &ANY_TEXT),
        ("uuid", &ANY_TEXT),
        ("memory", &MEMORY),
        ("currentMemory", &MEMORY),
        ("vcpu", &VCPU),
        ("os", &OS),
        ("features", &FEATURES),
        ("cpu", &CPU),
        ("clock", &CLOCK),
        ("on_poweroff", &LIFECYCLE),
        ("on_reboot", &LIFECYCLE),
        ("on_crash", &LIFECYCLE),
        ("pm", &PM),
        ("devices", &DEVICES),
    ],
};

/// What an element is called in a change note.
fn describe(path: &str, e: &Element) -> String {
    let kind = e
        .attr("type")
        .map(|t| format!(" type={}", crate::text::escape(t)))
        .unwrap_or_default();
    let what = format!("{path}<{}{kind}>", crate::text::escape(&e.name));
    match e.name.as_str() {
        "qemu:commandline" | "commandline" => format!("{what} (raw QEMU arguments)"),
        "filesystem" => format!("{what} (a host directory passed through)"),
        "emulator" => format!("{what} (a custom emulator; libvirt uses its own)"),
        "loader" | "nvram" => format!("{what} (a firmware file path on the old host)"),
        "hostdev" | "redirdev" | "smartcard" | "shmem" | "tpm" => {
            format!("{what} (host hardware)")
        }
        "seclabel" => format!("{what} (the old host's security label)"),
        "script" => format!("{what} (a host script run when the NIC starts)"),
        _ => what,
    }
}

/// Keeps what `rule` allows of `e`, recording each thing dropped.
fn keep(e: &mut Element, rule: &Rule, path: &str, notes: &mut Vec<String>) {
    let here = format!("{path}{}/", e.name);
    e.attrs.retain(|(k, v)| {
        let ok = rule.attrs.iter().any(|(n, check)| n == k && check(v));
        if !ok {
            notes.push(format!(
                "dropped attribute {}=\"{}\" of {here}",
                crate::text::escape(k),
                crate::text::escape(&v.chars().take(80).collect::<String>())
            ));
        }
        ok
    });
    let text = e.text();
    if !text.is_empty() && !rule.text.is_some_and(|c| c(&text)) {
        notes.push(format!(
            "dropped the text \"{}\" of {here}",
            crate::text::escape(&text.chars().take(80).collect::<String>())
        ));
        e.children
            .retain(|n| !matches!(n, Node::Text(t) if !t.trim().is_empty()));
    }
    let mut dropped = Vec::new();
    remove_children(&mut e.children, |c| {
        let allowed = rule.children.iter().any(|(n, _)| *n == c.name);
        if !allowed {
            dropped.push(describe(&here, c));
        }
        !allowed
    });
    notes.extend(dropped.into_iter().map(|d| format!("dropped {d}")));
    e.children.retain(|n| !matches!(n, Node::Comment(_)));
    for n in e.children.iter_mut() {
        if let Node::Element(c) = n {
            if let Some((_, r)) = rule.children.iter().find(|(name, _)| *name == c.name) {
                keep(c, r, &here, notes);
            }
        }
    }
}

/// Rewrites the devices an allow-list keeps only in a changed form before
/// the filter runs: consoles on files or sockets become ptys, graphics
/// listen on loopback, a guest-agent channel loses its host socket path,
/// an RNG reads the host's random device, a firmware loader becomes
/// libvirt's own firmware of that kind. Devices that cannot be kept safely
/// in any form (other NIC types, other channels) are dropped here.
fn normalise(dom: &mut Element, notes: &mut Vec<String>) {
    if let Some(os) = dom.child_mut("os") {
        let pflash = os
            .child("loader")
            .is_some_and(|l| l.attr("type") == Some("pflash"));
        if pflash && os.attr("firmware").is_none() {
            os.set_attr("firmware", "efi");
            notes.push(
                "UEFI firmware: libvirt picks its own firmware file (os firmware='efi')".into(),
            );
        }
    }
    let Some(devices) = dom.child_mut("devices") else {
        return;
    };
    let mut dropped = Vec::new();
    remove_children(&mut devices.children, |d| {
        let t = d.attr("type").unwrap_or("");
        let bad = match d.name.as_str() {
            "interface" => !matches!(t, "network" | "bridge" | "user"),
            "channel" => {
                let name = d.child("target").and_then(|x| x.attr("name"));
                !matches!(
                    (t, name),
                    ("unix", Some("org.qemu.guest_agent.0"))
                        | ("spicevmc", Some("com.redhat.spice.0"))
                )
            }
            "graphics" => !matches!(t, "vnc" | "spice"),
            _ => false,
        };
        if bad {
            dropped.push(describe("devices/", d));
        }
        bad
    });
    notes.extend(dropped.into_iter().map(|d| format!("dropped {d}")));
    for n in devices.children.iter_mut() {
        let Node::Element(d) = n else { continue };
        match d.name.as_str() {
            "serial" | "console" if d.attr("type") != Some("pty") => {
                let was = d
                    .child("source")
                    .and_then(|s| s.attr("path").or(s.attr("host")))
                    .map(|p| format!(" to {}", crate::text::escape(p)))
                    .unwrap_or_default();
                notes.push(format!(
                    "a {} of type {}{was} became a pty",
                    d.name,
                    crate::text::escape(d.attr("type").unwrap_or("?"))
                ));
                d.set_attr("type", "pty");
                remove_children(&mut d.children, |c| c.name != "target");
            }
            "channel" if d.attr("type") == Some("unix") => {
                // libvirt makes the socket itself, in its own directory.
                remove_children(&mut d.children, |c| c.name == "source");
            }
            "graphics" => {
                let listen = d.attr("listen").unwrap_or("").to_string();
                let loopback = matches!(listen.as_str(), "127.0.0.1" | "::1");
                if !loopback || d.attr("passwd").is_some() {
                    notes.push(format!(
                        "the {} display listens on 127.0.0.1 only (it was {}); reach it over SSH",
                        crate::text::escape(d.attr("type").unwrap_or("?")),
                        if listen.is_empty() {
                            "unset".into()
                        } else {
                            crate::text::escape(&listen).into_owned()
                        }
                    ));
                }
                d.attrs.retain(|(k, _)| k == "type");
                d.set_attr("port", "-1");
                d.set_attr("autoport", "yes");
                d.set_attr("listen", "127.0.0.1");
                remove_children(&mut d.children, |_| true);
                d.push(
                    Element::new("listen")
                        .with_attr("type", "address")
                        .with_attr("address", "127.0.0.1"),
                );
            }
            "rng" => {
                if let Some(b) = d.child_mut("backend") {
                    if b.attr("model") != Some("random")
                        || !matches!(b.text().as_str(), "/dev/urandom" | "/dev/random")
                    {
                        notes.push("the RNG reads the host's /dev/urandom".into());
                        b.attrs.clear();
                        b.set_attr("model", "random");
                        b.set_text("/dev/urandom");
                    }
                }
            }
            _ => {}
        }
    }
}

/// Applies the allow-list to a parsed domain; returns what was dropped or
/// changed, for the admin to review.
pub(super) fn apply(dom: &mut Element) -> Vec<String> {
    let mut notes = Vec::new();
    normalise(dom, &mut notes);
    keep(dom, &DOMAIN, "", &mut notes);
    let mut seen = std::collections::BTreeSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    notes
}
