//! After the volumes of a set are restored: the VM around them — a domain
//! XML for libvirt (validated against libvirt's schema when
//! `virt-xml-validate` is installed), `virsh define` on request, and a
//! QEMU command line for hosts without libvirt.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::domain::{restored_xml, RestoredDisk};
use super::{qemu, Definition};
use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};
use crate::live::virsh::{names, Virsh};
use crate::repo::Repo;
use crate::restore::RestoreOutcome;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", content = "detail", rename_all = "lowercase")]
pub enum Validation {
    Valid,
    Invalid(String),
    /// virt-xml-validate is not installed (or could not run).
    Unchecked(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct VmRestore {
    pub domain_xml: PathBuf,
    pub uuid: String,
    /// What was removed or rewritten in the domain.
    pub changes: Vec<String>,
    /// backup, config or fallback.
    pub definition: String,
    pub validation: Validation,
    pub qemu_command: String,
}

/// The definition of a restored set: the backup's, else the config's,
/// else a plain one. Returns it and where it came from.
pub fn definition_of(
    repo: &Repo,
    picked: &[(ManifestKey, Manifest)],
    config: Option<Definition>,
) -> Result<(Definition, &'static str)> {
    definition_with(picked, config, |d| repo.read_definition(d))
}

/// `definition_of`, with the stored definition read by `read` (from a
/// local repository or a remote one).
pub fn definition_with(
    picked: &[(ManifestKey, Manifest)],
    config: Option<Definition>,
    read: impl FnOnce(&crate::format::manifest::DefinitionRef) -> Result<Definition>,
) -> Result<(Definition, &'static str)> {
    let vm = picked
        .first()
        .map(|(_, m)| m.vm.name.clone())
        .unwrap_or_default();
    if let Some(d) = picked.iter().find_map(|(_, m)| m.definition) {
        let def = read(&d)?;
        // Every volume of the set must be a disk of its definition: one
        // that is not was added to the set by someone else.
        if let Some((k, _)) = picked
            .iter()
            .find(|(k, _)| !def.spec.disks.iter().any(|disk| disk.volume == k.volume))
        {
            return Err(Error::BadInput(format!(
                "volume {} of the backup set is not a disk of the set's VM definition: the set was changed after it was written; restore its volumes one by one (VM/VOLUME@…) and check them",
                k.volume
            )));
        }
        return Ok((def, "backup"));
    }
    Ok(match config {
        Some(d) => (d, "config"),
        None => (
            super::fallback_definition(
                &vm,
                &picked
                    .iter()
                    .map(|(_, m)| (m.volume.name.clone(), m.volume.role))
                    .collect::<Vec<_>>(),
            ),
            "fallback",
        ),
    })
}

/// What the admin chose for a restored domain.
#[derive(Debug, Clone, Copy, Default)]
pub struct DomainChoices<'a> {
    pub keep_macs: bool,
    /// The domain's name (None: the VM's).
    pub name: Option<&'a str>,
    /// The networks the target libvirt has (None: unknown, NICs kept).
    pub networks: Option<&'a [String]>,
}

/// Writes `DIR/<name>.xml` for the restored volumes and checks it.
pub fn write_vm(
    def: &Definition,
    from: &str,
    picked: &[(ManifestKey, Manifest)],
    outcomes: &[RestoreOutcome],
    dir: &Path,
    choices: &DomainChoices,
) -> Result<VmRestore> {
    let DomainChoices {
        keep_macs,
        name,
        networks,
    } = *choices;
    let disks: Vec<RestoredDisk> = picked
        .iter()
        .zip(outcomes)
        .map(|((_, m), o)| RestoredDisk {
            volume: m.volume.name.clone(),
            path: std::path::absolute(&o.target).unwrap_or_else(|_| o.target.clone()),
            format: o.format,
        })
        .collect();
    let (xml, notes) = restored_xml(def, &disks, keep_macs, name, networks)?;
    let file = dir.join(format!("{}.xml", name.unwrap_or(&def.vm)));
    crate::durable::write_atomic(&file, xml.as_bytes())?;
    Ok(VmRestore {
        validation: validate(&file),
        domain_xml: file,
        uuid: notes.uuid,
        changes: notes.changes,
        definition: from.into(),
        qemu_command: qemu::command_line(def, &disks, name)?,
    })
}

/// Runs libvirt's `virt-xml-validate FILE domain`.
pub fn validate(file: &Path) -> Validation {
    validate_as(file, "domain")
}

/// Runs libvirt's `virt-xml-validate FILE SCHEMA` (domain, network).
pub fn validate_as(file: &Path, schema: &str) -> Validation {
    match super::run_bounded(
        Command::new("virt-xml-validate").arg(file).arg(schema),
        std::time::Duration::from_secs(60),
    ) {
        Ok(o) if o.status.success() => Validation::Valid,
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&o.stdout)
            );
            // The validator is a shell script around xmllint.
            if text.contains("xmllint: not found") || text.contains("xmllint: command not found") {
                Validation::Unchecked(
                    "virt-xml-validate needs xmllint: install libxml2-utils to check it".into(),
                )
            } else {
                Validation::Invalid(crate::text::escape_lines(text.trim()))
            }
        }
        Err(e) => Validation::Unchecked(format!(
            "virt-xml-validate could not run ({e}); install libvirt-clients to check it"
        )),
    }
}

/// `virsh define FILE`; the error says what to run where libvirt runs,
/// and what to do when a domain of that name exists already.
pub fn define(virsh: &Virsh, file: &Path) -> Result<String> {
    let f = file.display().to_string();
    run_or_say(virsh, &["define", "--file", &f]).map_err(|e| match e {
        Error::BadInput(why) if why.contains("already exists") => Error::BadInput(format!(
            "{why}. A domain of that name is defined on this host already: restore with --name NEW-NAME, or remove the old one first (virsh undefine NAME)"
        )),
        other => other,
    })
}

/// `virsh attach-disk` of a restored data volume to an existing domain.
pub fn attach_command(domain: &str, file: &Path, target: &str, format: &str) -> Vec<String> {
    vec![
        "attach-disk".into(),
        domain.into(),
        std::path::absolute(file)
            .unwrap_or_else(|_| file.to_path_buf())
            .display()
            .to_string(),
        target.into(),
        "--driver".into(),
        "qemu".into(),
        "--subdriver".into(),
        format.into(),
        "--persistent".into(),
    ]
}

pub fn attach(virsh: &Virsh, args: &[String]) -> Result<String> {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_or_say(virsh, &a)
}

/// Runs virsh; a failure says what to run by hand where libvirt runs.
fn run_or_say(virsh: &Virsh, args: &[&str]) -> Result<String> {
    match virsh.run_said(None, args, std::time::Duration::from_secs(60)) {
        Ok(out) => Ok(crate::text::escape(out.trim()).into_owned()),
        Err(e) => Err(Error::BadInput(format!(
            "{e}; where libvirt runs, run: {}",
            virsh.by_hand(args)
        ))),
    }
}

/// Refuses a name libvirt has a domain of already.
pub(crate) fn no_clash(virsh: &Virsh, domain: &str) -> Result<()> {
    if virsh.run(Some(domain), &["dominfo", "--", domain]).is_ok() {
        return Err(Error::BadInput(format!(
            "a domain named {} is defined on libvirt {} already: restore with --name NEW-NAME, or undefine the old one first",
            crate::text::escape(domain),
            virsh.describe()
        )));
    }
    Ok(())
}

impl VmStep {
    /// Checks, before anything is written, what would make the step fail
    /// after the volumes are: a domain of the name exists already (with
    /// --define), the domain to attach to is unknown.
    pub fn preflight(&self, uri: Option<&str>, vm: &str) -> Result<()> {
        let virsh = Virsh::new(uri.map(str::to_string));
        match self {
            VmStep::Domain {
                define: true, name, ..
            } => no_clash(&virsh, name.as_deref().unwrap_or(vm)),
            // Only a libvirt that answers and lacks the domain is an
            // error: without one here, the file is restored and the
            // command to attach it printed for where libvirt runs.
            VmStep::Attach { domain, .. } => {
                match virsh.run(Some(domain), &["dominfo", "--", domain]) {
                    Err(e) if virsh.run(None, &["uri"]).is_ok() => Err(Error::BadInput(format!(
                        "--attach {}: {e}",
                        crate::text::escape(domain)
                    ))),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// What a restore does with the VM once its volumes are written: a step of
/// the restore's plan, so a dry run and the JSON plan show it too.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum VmStep {
    /// One volume, left as a file.
    #[default]
    None,
    /// A whole set: the domain XML (`DIR/NAME.xml`, checked against
    /// libvirt's schema) and the QEMU command beside the disks; with
    /// `define`, handed to `virsh define` after it is shown.
    Domain {
        define: bool,
        /// After `define`: `virsh start`.
        #[serde(default)]
        start: bool,
        keep_macs: bool,
        name: Option<String>,
    },
    /// One volume: attached to a libvirt domain (`virsh attach-disk
    /// --persistent`), as `target` or the volume's own device.
    Attach {
        domain: String,
        target: Option<String>,
    },
}

impl VmStep {
    /// The step a restore of `reference` gets from the admin's options;
    /// options that do not apply to it are refused, never ignored.
    #[allow(clippy::too_many_arguments)]
    pub fn for_request(
        is_set: bool,
        onto_rbd: bool,
        define: bool,
        start: bool,
        keep_macs: bool,
        name: Option<String>,
        attach: Option<String>,
        target: Option<String>,
    ) -> Result<VmStep> {
        if let Some(n) = &name {
            crate::names::check_name("VM", n)?;
        }
        if !is_set && (define || keep_macs || name.is_some()) {
            return Err(crate::Error::BadInput(
                "--define, --keep-macs and --name apply to a whole VM (VM@...); for one volume use --attach DOMAIN".into(),
            ));
        }
        if is_set && attach.is_some() {
            return Err(crate::Error::BadInput(
                "--attach attaches one volume (VM/VOLUME@...); a whole VM gets a domain XML (--define)".into(),
            ));
        }
        if is_set && onto_rbd && (define || keep_macs) {
            return Err(crate::Error::BadInput(
                "a VM restored onto RBD images gets no domain XML here (its disks would need the cluster's libvirt secret): drop --define and --keep-macs, and point the VM's definition at the restored images".into(),
            ));
        }
        if start && !define {
            return Err(crate::Error::BadInput(
                "--start starts the VM --define defines: give both".into(),
            ));
        }
        if target.is_some() && attach.is_none() {
            return Err(crate::Error::BadInput(
                "--target names the device for --attach DOMAIN".into(),
            ));
        }
        Ok(match (is_set, attach) {
            // `name` names the images (`RestoreRequest::name`).
            (true, _) if onto_rbd => VmStep::None,
            (true, _) => VmStep::Domain {
                define,
                start,
                keep_macs,
                name,
            },
            (false, Some(domain)) => VmStep::Attach { domain, target },
            (false, None) => VmStep::None,
        })
    }

    /// What the step will do, for a plan (`restore --dry-run`).
    pub fn lines(&self, plan: &crate::restore::SetRestorePlan) -> Vec<String> {
        let dir = plan
            .volumes
            .first()
            .and_then(|v| v.target.parent().map(Path::to_path_buf));
        let vm = plan
            .volumes
            .first()
            .map(|v| v.vm.clone())
            .unwrap_or_default();
        match self {
            VmStep::None => Vec::new(),
            VmStep::Domain {
                define,
                start,
                keep_macs,
                name,
            } => {
                let file = dir
                    .unwrap_or_default()
                    .join(format!("{}.xml", name.as_deref().unwrap_or(&vm)));
                let mut out = vec![format!(
                    "would write the domain XML {} (MAC addresses {}) and check it against libvirt's schema",
                    file.display(),
                    if *keep_macs { "kept" } else { "removed" }
                )];
                if *define {
                    out.push(format!(
                        "would show it, then define it with virsh as {}{}",
                        name.as_deref().unwrap_or(&vm),
                        if *start { " and start it" } else { "" }
                    ));
                }
                out
            }
            VmStep::Attach { domain, target } => vec![format!(
                "would attach the restored volume to libvirt domain {domain} as {}",
                target
                    .as_deref()
                    .unwrap_or("its own device (from its backup's definition, else vdb)")
            )],
        }
    }
}

/// What the VM step did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum StepDone {
    None,
    /// The domain XML written and checked; what `virsh define` said
    /// (None: not asked; Err: it failed or the XML did not validate).
    Domain {
        vm: VmRestore,
        defined: Option<std::result::Result<String, String>>,
    },
    Attached {
        domain: String,
        target: String,
        output: String,
    },
}

impl StepDone {
    /// Why the restore as a whole failed although its volumes are written
    /// (the admin asked for a VM and did not get one).
    pub fn failure(&self) -> Option<String> {
        match self {
            StepDone::Domain { vm: v, defined } => match (&v.validation, defined) {
                (Validation::Invalid(why), _) => Some(format!(
                    "the volumes are restored, but the domain XML {} does not validate against libvirt's schema: {why}",
                    v.domain_xml.display()
                )),
                (_, Some(Err(why))) => Some(format!(
                    "the volumes and the domain XML are restored, but the VM is not defined: {why}"
                )),
                _ => None,
            },
            _ => None,
        }
    }

    /// What the step did in a few words, for a job's result line (None:
    /// nothing to add to the volumes' own).
    pub fn summary(&self) -> Option<String> {
        match self {
            StepDone::None => None,
            StepDone::Domain { vm, defined } => Some(format!(
                "domain XML {}{}",
                vm.domain_xml.display(),
                if matches!(defined, Some(Ok(_))) {
                    ", defined with virsh"
                } else {
                    ""
                }
            )),
            StepDone::Attached { domain, target, .. } => {
                Some(format!("attached to {domain} as {target}"))
            }
        }
    }

    /// What the step did, for people (the CLI prints these, the console
    /// logs them).
    pub fn lines(&self) -> Vec<String> {
        match self {
            StepDone::None => Vec::new(),
            StepDone::Attached {
                domain,
                target,
                output,
            } => vec![format!("attached to {domain} as {target}: {output}")],
            StepDone::Domain { vm: v, defined } => {
                let mut out = vec![format!(
                    "domain XML: {} (uuid {}, from the {} definition)",
                    v.domain_xml.display(),
                    v.uuid,
                    v.definition
                )];
                out.extend(v.changes.iter().map(|c| format!("  {c}")));
                out.push(match &v.validation {
                    Validation::Valid => {
                        "  valid against libvirt's schema (virt-xml-validate)".into()
                    }
                    Validation::Invalid(why) => {
                        format!("  INVALID against libvirt's schema: {why}")
                    }
                    Validation::Unchecked(why) => format!("  not validated: {why}"),
                });
                out.push(match defined {
                    Some(Ok(said)) => format!("defined with virsh: {said}"),
                    Some(Err(_)) | None => format!(
                        "to define it where libvirt runs: virsh define {}",
                        qemu::shell_quote(&v.domain_xml.display().to_string())
                    ),
                });
                out.push(format!(
                    "without libvirt, boot it with (TCG emulation, which runs everywhere; where KVM works, -accel kvm runs it at full speed):\n  {}",
                    v.qemu_command
                ));
                out
            }
        }
    }
}

/// Runs a restore's VM step once its volumes are written. `show` gets the
/// domain XML as lines for people (escaped: it comes from a backup) before
/// `virsh define` is handed it, so the admin sees exactly what libvirt
/// gets. `config` is the VM's definition from the config, for a set whose
/// backup carries none.
pub fn finish(
    step: &VmStep,
    uri: Option<&str>,
    repo: &Repo,
    picked: &[(ManifestKey, Manifest)],
    outcomes: &[RestoreOutcome],
    config: impl FnOnce(&str) -> Option<Definition>,
    show: impl FnOnce(Vec<String>),
) -> Result<StepDone> {
    match step {
        VmStep::None => Ok(StepDone::None),
        VmStep::Domain {
            define: wants_define,
            start,
            keep_macs,
            name,
        } => {
            let Some(dir) = outcomes
                .first()
                .and_then(|o| o.target.parent().map(Path::to_path_buf))
            else {
                return Ok(StepDone::None);
            };
            let vm = picked
                .first()
                .map(|(_, m)| m.vm.name.clone())
                .unwrap_or_default();
            let (def, from) = definition_of(repo, picked, config(&vm))?;
            let virsh = Virsh::new(uri.map(str::to_string));
            // Before anything is defined: a clash is an error, and the
            // networks this host has decide which NICs the XML keeps.
            let networks = if *wants_define {
                no_clash(&virsh, name.as_deref().unwrap_or(&def.vm))?;
                // No libvirt here: the XML is written as it is, and the
                // define below says what to run where libvirt runs.
                virsh
                    .run(None, &["net-list", "--all", "--name"])
                    .ok()
                    .map(|out| names(&out))
            } else {
                None
            };
            let v = write_vm(
                &def,
                from,
                picked,
                outcomes,
                &dir,
                &DomainChoices {
                    keep_macs: *keep_macs,
                    name: name.as_deref(),
                    networks: networks.as_deref(),
                },
            )?;
            if *wants_define {
                let xml = std::fs::read_to_string(&v.domain_xml)
                    .map_err(|e| Error::io("reading", &v.domain_xml, e))?;
                let mut lines = vec![format!(
                    "the domain XML handed to virsh define ({}):",
                    v.domain_xml.display()
                )];
                lines.extend(
                    xml.lines()
                        .map(|l| format!("  | {}", crate::text::escape(l))),
                );
                show(lines);
            }
            let defined = match (wants_define, &v.validation) {
                (false, _) => None,
                (true, Validation::Invalid(_)) => {
                    Some(Err("not defined: the XML does not validate".to_string()))
                }
                (true, _) => Some(
                    define(&virsh, &v.domain_xml)
                        .and_then(|said| {
                            if !*start {
                                return Ok(said);
                            }
                            let domain = name.as_deref().unwrap_or(&def.vm);
                            virsh
                                .run(Some(domain), &["start", "--", domain])
                                .map(|_| format!("{said}; started"))
                                .map_err(|e| {
                                    Error::BadInput(format!("defined, but it did not start: {e}"))
                                })
                        })
                        .map_err(|e| e.to_string()),
                ),
            };
            Ok(StepDone::Domain { vm: v, defined })
        }
        VmStep::Attach { domain, target } => {
            let (Some((_, m)), Some(o)) = (picked.first(), outcomes.first()) else {
                return Ok(StepDone::None);
            };
            let from_def = m
                .definition
                .and_then(|d| repo.read_definition(&d).ok())
                .and_then(|d| d.spec.disks.into_iter().find(|x| x.volume == m.volume.name))
                .map(|d| d.target);
            let target = target.clone().or(from_def).unwrap_or_else(|| "vdb".into());
            let args = attach_command(domain, &o.target, &target, &o.format.to_string());
            let output = attach(&Virsh::new(uri.map(str::to_string)), &args)?;
            Ok(StepDone::Attached {
                domain: domain.clone(),
                target,
                output,
            })
        }
    }
}
