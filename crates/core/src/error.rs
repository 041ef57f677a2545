//! The core's typed error. Every variant names the object or path involved
//! and, where one exists, what the admin can do about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no repository at {path}: create one with `lifeboat init {path}`", path = .0.display())]
    NoRepository(PathBuf),

    #[error("{path} is not a lifeboat repository (no lifeboat.json): pick the right path or run `lifeboat init` on an empty directory", path = .0.display())]
    NotARepository(PathBuf),

    #[error("repository at {path} already exists", path = .0.display())]
    RepositoryExists(PathBuf),

    #[error("repository config {path} is invalid: {reason}", path = .path.display())]
    BadRepoConfig { path: PathBuf, reason: String },

    #[error(
        "invalid {what} name {name:?}: use 1 to 128 of A-Z a-z 0-9 . _ - (not \".\" or \"..\")"
    )]
    BadName { what: &'static str, name: String },

    #[error("invalid reference {input:?}: {reason}")]
    BadRef { input: String, reason: String },

    #[error("no backup matches {0:?}: list backups with `lifeboat timeline VM`")]
    NotFound(String),

    #[error("reference {input:?} is ambiguous: it matches {count} backups; give more hex digits")]
    Ambiguous { input: String, count: usize },

    /// A time that covers several backups (a minute, or a second with two
    /// backups in it): each match is listed with what selects it exactly.
    #[error("reference {input:?} matches {count} backups in the time it names: {}; give one of these (the time to the millisecond) or a backup id", matches.join(", "))]
    AmbiguousTime {
        input: String,
        count: usize,
        matches: Vec<String>,
    },

    #[error("{kind} {id} is missing from the repository")]
    MissingObject { kind: &'static str, id: String },

    #[error("{kind} {id} is corrupt: {reason}")]
    CorruptObject {
        kind: &'static str,
        id: String,
        reason: String,
    },

    #[error("source {path}: {reason}", path = .path.display())]
    Source { path: PathBuf, reason: String },

    #[error("qemu-img: {0}")]
    Qemu(String),

    /// An NBD peer (our qemu-nbd, or QEMU's NBD server) failed or broke
    /// the protocol; the text says which.
    #[error("{0}")]
    Nbd(String),

    #[error("QEMU monitor {path}: {reason}", path = .path.display())]
    Qmp { path: PathBuf, reason: String },

    #[error("guest agent {path}: {reason}", path = .path.display())]
    Agent { path: PathBuf, reason: String },

    #[error("config {path}: {reason}", path = .path.display())]
    Config { path: PathBuf, reason: String },

    #[error("the disk holding {path} is full: free space there and run the command again (nothing was committed)", path = .0.display())]
    DiskFull(PathBuf),

    #[error("{path} already exists: pass --force to overwrite it", path = .0.display())]
    TargetExists(PathBuf),

    #[error(
        "chunk size mismatch: {left} has {left_size} bytes per chunk, {right} has {right_size}"
    )]
    ChunkSizeMismatch {
        left: String,
        left_size: u64,
        right: String,
        right_size: u64,
    },

    #[error("cancelled; nothing was committed, and running the command again resumes")]
    Cancelled,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("remote {remote}: {reason}")]
    Remote {
        remote: String,
        reason: String,
        /// Whether trying again may help (timeouts, dropped connections, 5xx).
        transient: bool,
    },

    #[error("remote {remote} refused: {reason}")]
    Denied { remote: String, reason: String },

    /// A server refused a new backup for its place in time or its set (an
    /// append token cannot add backups into the past, or change a set):
    /// sending it again never helps; the reason says what does.
    #[error("remote {remote} refused a backup: {reason}")]
    LateBackup { remote: String, reason: String },

    /// The caller's input is wrong: a bad argument, URL, path or request.
    #[error("{0}")]
    BadInput(String),

    /// An object, listing or body larger than the protocol allows: a
    /// hostile or broken peer, or a damaged file. Never read whole.
    #[error("{what} is {size} bytes, over the {limit}-byte limit for it: {hint}")]
    TooLarge {
        what: String,
        size: u64,
        limit: u64,
        hint: &'static str,
    },

    /// Another process holds the repository for something that cannot
    /// run beside this (a gc sweeping, writers committing).
    #[error("{repo} is busy: {holder}; {hint}")]
    Busy {
        repo: String,
        holder: String,
        hint: String,
    },

    /// A cloud refused or failed a step of a restore into it; `reason` is
    /// the cloud's own message (escaped), `phase` the step.
    #[error("cloud {target}: {phase}: {reason}")]
    Cloud {
        target: String,
        phase: String,
        reason: String,
        /// Whether trying again may help (dropped connections, 5xx, throttling).
        transient: bool,
        /// The HTTP status the cloud refused with (None: no answer, or a
        /// check of lifeboat's own).
        status: Option<u16>,
    },

    /// A cloud restore was cancelled; `cleanup` says what was removed.
    #[error("cancelled{cleanup}")]
    CloudCancelled { cleanup: String },

    /// A sealed object or repository whose key this process does not hold.
    #[error("{0} is encrypted and its key is not unlocked: set LIFEBOAT_PASSPHRASE_FILE (a file holding a passphrase of the repository) or LIFEBOAT_KEY_FILE (a file holding its recovery key)")]
    Locked(String),

    /// libvirt refused or failed (through `virsh`); `at` names the
    /// connection and, where there is one, the domain.
    #[error("libvirt {at}: {reason}")]
    Libvirt { at: String, reason: String },

    /// A failure inside lifeboat itself (a crashed task, a poisoned lock):
    /// not the caller's fault, and worth a bug report.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with what was being done, mapping ENOSPC to the
    /// disk-full error so that it is reported as such everywhere.
    pub fn io(context: impl Into<String>, path: &std::path::Path, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return Error::DiskFull(path.to_path_buf());
        }
        Error::Io {
            context: format!("{} {}", context.into(), path.display()),
            source,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Remote {
                transient: true,
                ..
            } | Error::Cloud {
                transient: true,
                ..
            }
        )
    }

    pub fn corrupt(kind: &'static str, id: impl ToString, reason: impl Into<String>) -> Self {
        Error::CorruptObject {
            kind,
            id: id.to_string(),
            reason: reason.into(),
        }
    }
}
