//! libvirt through its own command-line client, `virsh`.
//!
//! Why virsh and not the libvirt project's `virt` crate: the crate links
//! libvirt's C library, so every lifeboat binary — the package, the
//! `cargo install`, the one on a repository server that never sees a VM —
//! would need libvirt0 and its headers at build time. virsh is on every
//! host that runs libvirt (libvirt-clients), speaks every URI libvirt does
//! (`qemu:///system`, `qemu+ssh://…`) with libvirt's own authentication,
//! and each call is a bounded child process (`vm::run_bounded`: a time
//! limit, capped output, killed on timeout), so a hung libvirtd cannot
//! hang a backup or the console. The price is a process per call (about
//! 10 ms), which a backup pays a dozen times.
//!
//! Output is parsed as data (names one per line, XML through the bounded
//! tree); what reaches a message is escaped.

use std::process::Command;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long one virsh call may take (a backup-begin on a busy host
/// included).
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Virsh {
    /// None: libvirt's default (`LIBVIRT_DEFAULT_URI`, else
    /// `qemu:///system` for root).
    uri: Option<String>,
}

impl Virsh {
    pub fn new(uri: Option<String>) -> Virsh {
        Virsh { uri }
    }

    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// The connection, for messages (a URI holds no secret: libvirt's
    /// credentials live in its auth files and SSH's keys).
    pub fn describe(&self) -> String {
        match &self.uri {
            Some(u) => crate::text::escape(u).into_owned(),
            None => "(default URI)".into(),
        }
    }

    /// Whether libvirt runs on another host (`qemu+ssh://…`): its disk
    /// paths and sockets are not this host's.
    pub fn is_remote(&self) -> bool {
        self.uri.as_deref().is_some_and(|u| {
            let (scheme, rest) = u.split_once("://").unwrap_or((u, ""));
            let host = rest.split('/').next().unwrap_or("");
            scheme.contains('+') && !scheme.ends_with("+unix") || !host.is_empty()
        })
    }

    fn command(&self, args: &[&str], quiet: bool) -> Command {
        let mut c = Command::new("virsh");
        if let Some(u) = &self.uri {
            c.arg("-c").arg(u);
        }
        if quiet {
            // No table headers; but also no "Froze N filesystem(s)".
            c.arg("-q");
        }
        c.args(args);
        c
    }

    /// The command an admin can run by hand, shell-quoted.
    pub fn by_hand(&self, args: &[&str]) -> String {
        let mut all = vec!["virsh".to_string()];
        if let Some(u) = &self.uri {
            all.push("-c".into());
            all.push(u.clone());
        }
        all.extend(args.iter().map(|a| a.to_string()));
        all.iter()
            .map(|a| crate::text::shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn err(&self, domain: Option<&str>, reason: String) -> Error {
        Error::Libvirt {
            at: match domain {
                Some(d) => format!("{} domain {}", self.describe(), crate::text::escape(d)),
                None => self.describe(),
            },
            reason,
        }
    }

    /// Runs `virsh ARGS` and returns its standard output (raw: parse it,
    /// escape what is shown). `domain` names the domain in errors.
    pub fn run(&self, domain: Option<&str>, args: &[&str]) -> Result<String> {
        self.run_for(domain, args, LIMIT)
    }

    pub fn run_for(&self, domain: Option<&str>, args: &[&str], limit: Duration) -> Result<String> {
        self.run_full(domain, args, limit, true)
    }

    /// As `run_for`, with virsh's messages on standard output kept.
    pub fn run_said(&self, domain: Option<&str>, args: &[&str], limit: Duration) -> Result<String> {
        self.run_full(domain, args, limit, false)
    }

    fn run_full(
        &self,
        domain: Option<&str>,
        args: &[&str],
        limit: Duration,
        quiet: bool,
    ) -> Result<String> {
        let what = args.first().copied().unwrap_or("");
        let out = crate::vm::run_bounded(&mut self.command(args, quiet), limit).map_err(|e| {
            self.err(
                domain,
                match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "virsh is not installed here (apt-get install libvirt-clients)".into()
                    }
                    std::io::ErrorKind::TimedOut => {
                        format!(
                            "virsh {what} got no answer within {} s (is libvirtd hung?)",
                            limit.as_secs()
                        )
                    }
                    _ => format!("virsh {what} could not run: {e}"),
                },
            )
        })?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.err(
                domain,
                format!(
                    "virsh {what} failed: {}",
                    crate::text::escape(said.strip_prefix("error: ").unwrap_or(&said))
                ),
            ));
        }
        String::from_utf8(out.stdout)
            .map_err(|_| self.err(domain, format!("virsh {what} printed non-UTF-8")))
    }

    /// Runs `virsh ARGS` with a document written to a private temp file
    /// (libvirt reads XML arguments from files).
    pub fn run_with_files(
        &self,
        domain: Option<&str>,
        args: &[&str],
        files: &[&str],
    ) -> Result<String> {
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-virsh-")
            .tempdir()
            .map_err(|e| self.err(domain, format!("cannot make a temp directory: {e}")))?;
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for (i, doc) in files.iter().enumerate() {
            let p = dir.path().join(format!("doc-{i}.xml"));
            crate::durable::write_new_private(&p, doc.as_bytes())
                .map_err(|e| self.err(domain, format!("cannot write {}: {e}", p.display())))?;
            all.push(p.display().to_string());
        }
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(domain, &refs)
    }
}

/// Lines of a `virsh -q … --name` listing.
pub fn names(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_uris_are_told_from_local_ones() {
        for (uri, remote) in [
            ("qemu:///system", false),
            ("qemu+unix:///system?socket=/tmp/x/sock", false),
            ("qemu+ssh://root@kvm2/system", true),
            ("qemu+tcp://kvm2/system", true),
            ("qemu://kvm2/system", true),
        ] {
            assert_eq!(Virsh::new(Some(uri.into())).is_remote(), remote, "{uri}");
        }
        assert!(!Virsh::default().is_remote());
    }

    #[test]
    fn by_hand_commands_are_quoted_and_errors_escaped() {
        let v = Virsh::new(Some("qemu:///system".into()));
        assert_eq!(
            v.by_hand(&["define", "/tmp/a b.xml"]),
            "virsh -c qemu:///system define '/tmp/a b.xml'"
        );
        let bad = Virsh::new(Some(
            "qemu+unix:///system?socket=/nonexistent/\x1b[31m".into(),
        ));
        let e = bad
            .run(Some("x"), &["version"])
            .expect_err("no libvirtd there");
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }
}
