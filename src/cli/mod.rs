//! Subcommands, with human output and `--json`.
//!
//! Exit codes: 0 success; 1 error; 2 bad usage; 3 verify found damage;
//! 4 a remote is unreachable (`status`); 5 a VM's recovery point is at
//! risk (`status --rpo`); 6 a restore drill failed; 130 cancelled (Ctrl-C).

mod backup_restore;
mod cloud_cmd;
mod daemon_cmd;
mod demo;
mod demo_files;
mod demo_guest;
mod drill_cmd;
mod files_cmd;
mod gc_cmd;
mod globals;
mod inspect;
mod instant_cmd;
mod nbd_cmd;
mod plan_cmd;
pub mod progress;
mod protect_cmd;
mod prune;
mod remote_cmds;
mod vms_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lifeboat_core::config::{Config, ENV_CONFIG, ENV_REPO};
use lifeboat_core::repo::Repo;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_DAMAGE: u8 = 3;
/// `status`: a remote is unknown, unreachable or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 4;
/// `status --rpo`: some VM is not ok (late, stale, never backed up,
/// verify failed, last job failed).
pub const EXIT_RPO: u8 = 5;
/// `drill`: the drill ran and the VM did not come back (see its report).
pub const EXIT_DRILL_FAILED: u8 = 6;
pub const EXIT_CANCELLED: u8 = 130;

#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, about = "Disaster recovery for virtual machines", long_about = None)]
pub struct Cli {
    /// Config file (default: the platform config dir's lifeboat/config.toml).
    #[arg(long, global = true, env = ENV_CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Local repository path; needs no config file.
    #[arg(long, short = 'r', global = true, env = ENV_REPO, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Machine-readable output on stdout (progress as JSON lines on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Bandwidth limit for what is sent to a remote (push), in bytes per
    /// second: 8M, 512K. Overrides the remote's `limit_upload`.
    #[arg(long, global = true, value_name = "RATE", value_parser = crate::output::parse_size)]
    pub limit_upload: Option<u64>,
    /// Bandwidth limit for what is fetched from a remote (pull, restore
    /// --from, verify --remote). Overrides the remote's `limit_download`.
    #[arg(long, global = true, value_name = "RATE", value_parser = crate::output::parse_size)]
    pub limit_download: Option<u64>,
    /// How much may pass at once under a limit (default a quarter second's worth).
    #[arg(long, global = true, value_name = "SIZE", value_parser = crate::output::parse_size)]
    pub limit_burst: Option<u64>,
    /// Seconds one request to a remote may take; all tries of one object
    /// together get twice that, so a stalled or hostile server fails the
    /// transfer instead of holding it (default 120; overrides a remote's
    /// `timeout_secs`).
    #[arg(long, global = true, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub io_timeout: Option<u64>,
    /// Allow plain HTTP off loopback: `serve` without TLS, and clients
    /// sending a token to an http:// server on another host. For a trusted
    /// network or a TLS-terminating proxy only.
    #[arg(long, global = true)]
    pub insecure_http: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    pub fn opens_console(&self) -> bool {
        matches!(
            self.command,
            None | Some(Command::Tui) | Some(Command::Demo { no_tui: false, .. })
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Prints the recovery key of the repository (unlocked with
    /// LIFEBOAT_PASSPHRASE_FILE or LIFEBOAT_KEY_FILE): keep it on paper.
    Export,
    /// Lists the passphrase slots (names and argon2id costs).
    List,
    /// Adds a passphrase slot: the new passphrase is read from FILE (never
    /// from the command line); the repository is unlocked as for any
    /// command. Nothing is re-encrypted.
    Add {
        name: String,
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
    },
    /// Removes a passphrase slot (the last one only with --force: the
    /// recovery key then is the only way in).
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the console (also what `lifeboat` alone does).
    Tui,
    /// Print shell completions (bash, zsh, fish, elvish, powershell), e.g.
    /// `lifeboat completions bash > /etc/bash_completion.d/lifeboat`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g.
    /// `lifeboat man > /usr/local/share/man/man1/lifeboat.1`; with --out
    /// DIR, write it and one page per subcommand (lifeboat-push.1, …),
    /// which the main page's list of subcommands names.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build a self-contained demo world and open the console on it.
    Demo {
        /// Keep the world in DIR (built there if missing, reused if present).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Build the world and print where it is; do not open the console.
        #[arg(long)]
        no_tui: bool,
    },
    /// Create a repository.
    Init {
        /// Where (default: --repo, the config's repository, or the data dir).
        path: Option<PathBuf>,
        /// Chunk size: a power of two from 64K to 64M.
        #[arg(long, default_value = "4M", value_parser = crate::output::parse_size)]
        chunk_size: u64,
        /// zstd level for new chunks: 1 to 19, or -1 to -7 for zstd's fast modes.
        #[arg(long, default_value_t = lifeboat_core::repo::DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
        compression_level: i32,
        /// Encrypt the repository: its key is wrapped by the passphrase in
        /// the file LIFEBOAT_PASSPHRASE_FILE names (never the command
        /// line); needs --recovery-key-out.
        #[arg(long, requires = "recovery_key_out")]
        encrypt: bool,
        /// With --encrypt: a new file (private) that receives the recovery
        /// key. Print it, keep it offline, then delete the file: a
        /// repository whose key is lost is lost.
        #[arg(long, value_name = "FILE")]
        recovery_key_out: Option<PathBuf>,
    },
    /// An encrypted repository's key: `key export` prints its recovery key;
    /// `key list`, `key add`, `key remove` manage its passphrase slots.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Back up the volumes of a VM as one backup set.
    Backup {
        vm: String,
        /// A volume to back up: NAME from the inventory, or NAME=PATH.
        #[arg(long = "volume", value_name = "NAME[=PATH]")]
        volumes: Vec<String>,
        /// Format of NAME=PATH volumes.
        #[arg(long, value_enum, default_value = "auto")]
        format: FormatArg,
        /// A note kept with the backup.
        #[arg(long)]
        note: Option<String>,
    },
    /// VMs and volumes with their latest backup.
    Ls,
    /// Backups of a VM (or one volume), newest first.
    Timeline { vm: String, volume: Option<String> },
    /// One backup in full.
    Show { reference: String },
    /// The image digest of a raw or qcow2 file (equals its backup's index id).
    Hash {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: FormatArg,
        /// Chunk size (default: the repository's if one is given, else 4M).
        #[arg(long, value_parser = crate::output::parse_size)]
        chunk_size: Option<u64>,
    },
    /// Chunk-level comparison of two backups, or a backup and a live file.
    Diff { a: String, b: String },
    /// Serve one volume of a backup as a read-only NBD export, without
    /// restoring it: chunks are read and verified when a client asks for
    /// them (zero chunks are holes). E.g. `qemu-img convert
    /// nbd+unix:///?socket=S out.qcow2`, or boot a VM on an overlay backed
    /// by it. Runs until Ctrl-C / SIGTERM
    Nbd {
        reference: String,
        /// A unix socket to create (private to you); the default
        #[arg(long, value_name = "PATH", conflicts_with = "tcp")]
        socket: Option<PathBuf>,
        /// A loopback address and port instead, e.g. 127.0.0.1:10809 (port
        /// 0 picks one); other addresses are refused (no authentication)
        #[arg(long, value_name = "ADDR")]
        tcp: Option<std::net::SocketAddr>,
        /// Decoded chunks kept in memory
        #[arg(long, default_value_t = 16)]
        cache_chunks: usize,
        /// Serve a backup on this remote (name or URL): chunks fetched when
        /// asked for, 8 at a time going forward, verified, kept in memory
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
    },
    /// Files in a backup's volume, without restoring it: no PATH lists its
    /// partitions and filesystems; `p1/etc` lists a directory of partition
    /// 1 (`disk/…` when the volume is one filesystem); --find searches
    /// names; --get PATH --to DIR extracts a file or directory (modes,
    /// times, symlinks kept; owners too as root). ext2/3/4 on MBR or GPT,
    /// read from the chunks by userspace code: nothing is mounted
    Files {
        reference: String,
        /// A directory or file to list, e.g. p1/etc/nginx
        #[arg(conflicts_with = "get")]
        path: Option<String>,
        /// Entries whose name holds this text (any case), under PATH or in
        /// every filesystem
        #[arg(long, value_name = "TEXT", conflicts_with = "get")]
        find: Option<String>,
        /// Extract this file or directory, e.g. p1/etc/nginx/nginx.conf
        #[arg(long, value_name = "PATH", requires = "to")]
        get: Option<String>,
        /// Where --get puts it (created private when missing); the
        /// extracted entry must not exist there yet
        #[arg(long, value_name = "DIR", requires = "get")]
        to: Option<PathBuf>,
        /// Read a backup on this remote (name or URL): only the chunks the
        /// files need are fetched
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
    },
    /// Check backups: every object present (quick) or re-read and re-hashed (--deep).
    Verify {
        #[arg(long)]
        deep: bool,
        /// Verify this remote (a configured name or a URL) through its API
        /// instead of the local repository; --deep fetches every chunk.
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
        /// Backups to check (default: all).
        references: Vec<String>,
    },
    /// Write a backup (or a whole VM set) out as image files; with
    /// --plan, every VM of a recovery plan into one directory.
    Restore {
        #[arg(required_unless_present = "plan")]
        reference: Option<String>,
        /// Restore every VM of this recovery plan (`[plan.NAME]`) into
        /// DIR/VM, with their NICs on the plan's isolated libvirt network.
        #[arg(long, value_name = "NAME", conflicts_with = "reference")]
        plan: Option<String>,
        /// With --plan: each VM's newest backup at or before this time.
        #[arg(long, value_name = "TIME", requires = "plan")]
        at: Option<String>,
        /// Target file (one volume) or directory (a VM@... set); an RBD
        /// image rbd:POOL/IMAGE (one volume) or pool rbd:POOL (a set; see
        /// --name).
        #[arg(long)]
        to: PathBuf,
        #[arg(long, value_enum)]
        format: Option<OutFormat>,
        /// Replace an existing target.
        #[arg(long)]
        force: bool,
        /// Show the plan and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fetch what the restore needs from this remote (name or URL),
        /// keeping it in the local repository (created if missing).
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
        #[command(flatten)]
        vm: backup_restore::VmRestoreArgs,
        #[command(flatten)]
        instant: instant_cmd::InstantArgs,
    },
    /// Restore a VM's backup into scratch space, check every image's
    /// digest, boot it under QEMU and run its checks: proof the backup
    /// recovers the service, with the RPO and the RTO by phase. Exits 6
    /// when the drill fails, 1 when it could not start (no such VM, no
    /// backup matches), 130 when cancelled.
    Drill(drill_cmd::DrillArgs),
    /// Drill history: each VM's drills, newest last (--plans: the plans').
    Drills {
        /// Only this VM's drills (with --plans: this plan's).
        vm: Option<String>,
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// The drills of recovery plans instead of single VMs.
        #[arg(long)]
        plans: bool,
    },
    /// Recovery plans (`[plan.NAME]`): their VMs in start order, the
    /// addresses they expect, the service's RPO (its oldest member's
    /// newest backup) and the last drill.
    Plans {
        /// Only this plan.
        name: Option<String>,
        /// Compute the RPO from this remote's backups (default: local).
        #[arg(long, value_name = "REMOTE")]
        from: Option<String>,
    },
    /// Per VM: running or not (through its QMP monitor), how consistent
    /// its newest backup is, and whether the next backup reads only what
    /// changed (and why not).
    Vms {
        /// Only this VM.
        vm: Option<String>,
        /// Remove what a killed backup left in a running VM's QEMU (its
        /// overlays keep growing and slow the guest until removed).
        #[arg(long)]
        repair: bool,
    },
    /// Cloud targets (`[cloud.NAME]`): `cloud ls` checks each (auth,
    /// flavor or instance type, network, key pair) and says what is wrong.
    /// Exits 4 when one fails.
    Cloud {
        #[command(subcommand)]
        action: CloudAction,
    },
    /// Bring a VM set up in a cloud (OpenStack or AWS) straight from its
    /// backups: plan, upload with progress, server, data volumes. On
    /// failure or cancel, what was created is removed.
    CloudRestore(cloud_cmd::CloudRestoreArgs),
    /// Upload one volume as an image file to S3-compatible storage (raw
    /// streamed; qcow2, vmdk, vhd through qemu-img convert) for a cloud's
    /// own import (Aliyun ImportImage, AWS ImportSnapshot, Azure VHD).
    Export(Box<cloud_cmd::ExportArgs>),
    /// Manage remotes (off-site servers, S3 buckets, other directories).
    Remote {
        #[command(subcommand)]
        action: RemoteAction,
    },
    /// Serve the repository (--repo) to other lifeboats over HTTP(S).
    Serve(Box<ServeArgs>),
    /// Send backups the remote lacks.
    Push(remote_cmds::SyncArgs),
    /// Fetch backups the local repository lacks.
    Pull(remote_cmds::SyncArgs),
    /// Apply a retention (keep-last, -hourly, -daily, -weekly, -monthly,
    /// -yearly, -within) to whole backup sets; --dry-run shows what each
    /// rule keeps. A VM's newest set and protected sets are always kept.
    Prune(Box<prune::PruneArgs>),
    /// Delete chunks and indexes no backup references, and temp files
    /// left by killed processes. Safe while backups and pushes run: it
    /// deletes only when no writer holds the repository, and keeps
    /// writers out while it deletes.
    Gc(gc_cmd::GcArgs),
    /// Keep a backup set from every prune (the mark travels with push
    /// and pull).
    Protect(protect_cmd::ProtectArgs),
    /// Let prune remove a protected set again.
    Unprotect(protect_cmd::ProtectArgs),
    /// Who holds the repository (or a remote) now: backups, pushes, a gc,
    /// and junk lock documents (ignored). --break removes one (on a server
    /// an admin token is needed; the holder's refreshes are refused).
    Locks {
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
        /// Remove this lock (its ID as `locks` lists it).
        #[arg(long = "break", value_name = "ID")]
        break_lock: Option<String>,
    },
    /// Per volume: backups only local, only on a remote, or in both.
    /// Exits 4 when a remote is unknown, unreachable or does not answer.
    Status {
        /// Remotes to compare with (default: every configured remote).
        remotes: Vec<String>,
        /// Seconds to wait for each remote (they are asked at once).
        #[arg(long, default_value_t = 15, value_name = "SECS")]
        timeout: u64,
        /// Per VM: the newest backup's age against its policy, the newest
        /// verify, the last policy run, the next one and what each remote
        /// holds. Exits 5 when any VM is not ok.
        #[arg(long)]
        rpo: bool,
    },
    /// Run every VM's policy on its schedule (backup, verify, push,
    /// retention); SIGTERM stops cleanly. One per repository.
    Daemon(daemon_cmd::DaemonArgs),
    /// The policy run history (what the daemon did, newest last).
    Runs {
        /// Only this VM's runs.
        vm: Option<String>,
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum CloudAction {
    /// Check every cloud target: auth, flavor/instance type, network or
    /// subnet, security group, key pair.
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// Add a remote to the config file.
    Add(Box<remote_cmds::RemoteAddArgs>),
    /// List remotes with reachability and latency.
    Ls,
    /// Remove a remote from the config file.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8473")]
    pub listen: std::net::SocketAddr,
    /// Tokens file (hashes and roles), written by `serve token add`.
    #[arg(long, global = true)]
    pub tokens: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS with it.
    /// Without them the server makes its own self-signed certificate.
    #[arg(long, requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Where the server's own certificate is kept (default: `tls/` next to
    /// the tokens file).
    #[arg(long, value_name = "DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Serve HTTPS on loopback too (elsewhere it is the default; the
    /// global --insecure-http serves plain HTTP elsewhere).
    #[arg(long)]
    pub tls: bool,
    /// Uploads handled at once; more wait.
    #[arg(long, default_value_t = 16)]
    pub max_uploads: usize,
    /// Open connections at once; more are refused.
    #[arg(long, default_value_t = crate::server::ServeOptions::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a client may take to send request headers, and a TLS
    /// handshake may take.
    #[arg(long, default_value_t = 15)]
    pub header_timeout_secs: u64,
    /// Seconds a connection (HTTP/1.1 or HTTP/2) may stay open with no
    /// request in progress.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Request bodies held in memory at once, across every client.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub max_body_memory: String,
    /// How much older than the push that sends it a backup from a
    /// non-admin token may be (a client cannot add backups into the past).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub max_backup_lag: String,
    /// Days during which a backup that arrived may not be removed, whatever
    /// any client (admin included) asks: what a compromised primary site
    /// cannot prune. 0 turns it off.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub immutable_days: u64,
    #[command(subcommand)]
    pub action: Option<ServeAction>,
}

#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Manage the server's tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Print the SHA-256 fingerprint of the server's certificate (made now
    /// if the server has none yet), for clients to pin.
    Fingerprint,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Add a token; it is printed once, on the last line. A running
    /// server accepts it within seconds (or at once on SIGHUP).
    Add {
        name: String,
        #[arg(long, value_parser = ["read", "append", "admin"])]
        role: String,
        /// Refuse it after this: a duration (90d, 12h, 4w) or a date.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// Only backups of VMs whose names start with PREFIX are visible
        /// and writable with it (several sites on one server).
        #[arg(long, value_name = "PREFIX")]
        scope: Option<String>,
        /// Cap what this token may send to the server, per second (8M).
        #[arg(long, value_name = "RATE")]
        cap_upload: Option<String>,
        /// Cap what this token may fetch from the server, per second.
        #[arg(long, value_name = "RATE")]
        cap_download: Option<String>,
    },
    /// List tokens: name, role, scope, created, expires, last used (never
    /// the token or its hash).
    Ls,
    /// Remove a token; a running server refuses it within seconds.
    Rm { name: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
    Auto,
}

impl From<FormatArg> for lifeboat_core::source::FormatChoice {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Raw => Self::Raw,
            FormatArg::Qcow2 => Self::Qcow2,
            FormatArg::Auto => Self::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutFormat {
    Raw,
    Qcow2,
}

fn serving() -> bool {
    std::env::args().nth(1).as_deref() == Some("serve") || std::env::args().any(|a| a == "serve")
}

/// What is logged: `LIFEBOAT_LOG` (`debug`, `warn,lifeboat_core=debug`:
/// a level and per-module levels) when it parses, else `level`. Not
/// tracing's regex-based `EnvFilter`: its span filters are not needed and
/// its regex engine is a tenth of a cold build.
fn log_filter(level: &str) -> tracing_subscriber::filter::Targets {
    filter_from(std::env::var("LIFEBOAT_LOG").ok().as_deref(), level)
}

fn filter_from(setting: Option<&str>, level: &str) -> tracing_subscriber::filter::Targets {
    setting
        .and_then(|v| v.parse().ok())
        // The certificate verifier logs each refusal at ERROR; the
        // command's own error already explains it.
        .unwrap_or_else(|| {
            format!("{level},rustls_platform_verifier=off")
                .parse()
                .unwrap_or_default()
        })
}

pub fn init_tracing_to(verbose: u8, sink: crate::logging::LogSink) {
    let level = if verbose > 1 { "debug" } else { "info" };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(sink)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(log_filter(level))
        .with(layer)
        .try_init();
}

/// Log lines on stderr: JSON lines with `--json` (a script reading stderr
/// gets one format), plain text otherwise, coloured only on a terminal.
pub fn init_tracing(verbose: u8, json: bool) {
    let level = match verbose {
        0 if serving() => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(log_filter(level));
    let _ = if json {
        registry.with(fmt.json().with_ansi(false)).try_init()
    } else {
        use std::io::IsTerminal;
        registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
}

/// What a command's run produced: success, or a finding that is not an
/// error but must change the exit code (verify found damage).
pub enum Outcome {
    Ok,
    Damage,
    Unreachable,
    RpoAtRisk,
    DrillFailed,
    Cancelled,
}

/// Resolves at Ctrl-C or SIGTERM: how a long-running command (serve,
/// daemon, nbd) is told to stop.
pub async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

pub struct Ctx {
    /// With the command line's overrides for remotes in `config.overrides`.
    pub config: Config,
    pub repo_arg: Option<PathBuf>,
    pub json: bool,
}

impl Ctx {
    pub fn repo_path(&self) -> PathBuf {
        self.config.repo_path(self.repo_arg.as_deref())
    }

    pub fn open_repo(&self) -> lifeboat_core::Result<Repo> {
        Repo::open(&self.repo_path())
    }

    /// The local repository (None) or a remote as a store, with the
    /// repository's directory when it is local (gc's temp files).
    pub fn target(
        &self,
        remote: Option<&str>,
    ) -> lifeboat_core::Result<(lifeboat_core::store::DynStore, Option<PathBuf>)> {
        Ok(match remote {
            Some(r) => (self.remote(r)?.1, None),
            None => {
                let repo = self.open_repo()?;
                (
                    std::sync::Arc::new(lifeboat_core::store::local::LocalStore::new(repo.root())),
                    Some(repo.root().to_path_buf()),
                )
            }
        })
    }

    /// Every backup of the local repository or a remote, verified, with
    /// protection marks applied, and the store it came from.
    pub async fn backups_of(
        &self,
        remote: Option<&str>,
    ) -> lifeboat_core::Result<(
        lifeboat_core::store::DynStore,
        Vec<(
            lifeboat_core::format::ManifestKey,
            lifeboat_core::format::Manifest,
        )>,
    )> {
        let (store, root) = self.target(remote)?;
        let all = match root {
            // Local: read from disk (marks applied by `load_all`).
            Some(root) => Repo::open(&root)?.load_all()?,
            None => lifeboat_core::repository::load_backups(store.as_ref()).await?,
        };
        Ok((store, all))
    }

    /// A remote by name or URL, under the limits and timeout that apply.
    pub fn remote(
        &self,
        arg: &str,
    ) -> lifeboat_core::Result<(String, lifeboat_core::store::DynStore)> {
        lifeboat_core::config::remotes::resolve(&self.config, arg)
    }
}

pub async fn run(cli: Cli, sink: Option<crate::logging::LogSink>) -> u8 {
    let json = cli.json;
    if let Err(e) = globals::check(&cli) {
        return report(json, &e);
    }
    // Generated from the argument definitions; they need no config.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "lifeboat", &mut out);
            return match std::io::Write::write_all(&mut std::io::stdout(), &out) {
                Ok(()) => 0,
                // `lifeboat completions zsh | head -1` is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => report(json, &anyhow::Error::new(e).context("writing completions")),
            };
        }
        Some(Command::Man { out }) => {
            use clap::CommandFactory;
            if let Some(dir) = out {
                return match write_man_pages(&Cli::command(), dir) {
                    Ok(n) => {
                        println!("wrote {n} man pages to {}", dir.display());
                        0
                    }
                    Err(e) => report(json, &e),
                };
            }
            let page = clap_mangen::Man::new(Cli::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => 0,
                // `lifeboat man | head` is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => report(json, &anyhow::Error::new(e).context("writing the man page")),
            };
        }
        _ => {}
    }
    let config = match &cli.command {
        Some(Command::Demo { .. }) => Ok(Config::default()),
        // The remote being added may be named already (a policy's push, a
        // drill's source): that must not stop the command that adds it.
        Some(Command::Remote {
            action: RemoteAction::Add(a),
        }) => Config::load_assuming(cli.config.as_deref(), &[a.name.as_str()]),
        _ => Config::load(cli.config.as_deref()),
    };
    let mut config = match config {
        Ok(c) => c,
        Err(e) => return report(json, &anyhow::Error::new(e)),
    };
    config.overrides = lifeboat_core::config::remotes::Overrides {
        limits: lifeboat_core::store::throttle::Limits {
            upload: cli.limit_upload,
            download: cli.limit_download,
            burst: cli.limit_burst,
        },
        timeout: cli.io_timeout.map(std::time::Duration::from_secs),
        insecure_http: cli.insecure_http,
    };
    if let Some(t) = cli.io_timeout {
        lifeboat_core::retry::set_retry_budget(std::time::Duration::from_secs(t.saturating_mul(2)));
    }
    let ctx = Ctx {
        config,
        repo_arg: cli.repo,
        json,
    };
    let sink = sink.unwrap_or_else(|| crate::logging::LogSink::new(None));
    let Some(command) = cli.command else {
        return finish(json, console(&ctx, sink).await);
    };
    let res = match command {
        Command::Tui => console(&ctx, sink).await,
        Command::Completions { .. } | Command::Man { .. } => Ok(Outcome::Ok),
        Command::Demo { keep, no_tui } => {
            demo_cmd(keep, no_tui, ctx.config.overrides, sink).await
        }
        Command::Init {
            path,
            chunk_size,
            compression_level,
            encrypt,
            recovery_key_out,
        } => backup_restore::init(
            &ctx,
            path,
            chunk_size,
            compression_level,
            encrypt.then_some(recovery_key_out).flatten(),
        ),
        Command::Key { action } => backup_restore::key(&ctx, action),
        Command::Backup {
            vm,
            volumes,
            format,
            note,
        } => backup_restore::backup(&ctx, vm, volumes, format.into(), note).await,
        Command::Ls => inspect::ls(&ctx),
        Command::Timeline { vm, volume } => inspect::timeline(&ctx, &vm, volume.as_deref()),
        Command::Show { reference } => inspect::show(&ctx, &reference),
        Command::Hash {
            file,
            format,
            chunk_size,
        } => inspect::hash(&ctx, file, format.into(), chunk_size).await,
        Command::Diff { a, b } => inspect::diff(&ctx, &a, &b).await,
        Command::Nbd {
            reference,
            socket,
            tcp,
            cache_chunks,
            from,
        } => nbd_cmd::nbd(&ctx, &reference, socket, tcp, cache_chunks, from).await,
        Command::Files {
            reference,
            path,
            find,
            get,
            to,
            from,
        } => {
            let ask = files_cmd::Ask {
                path,
                get,
                to,
                find,
                from,
            };
            files_cmd::files(&ctx, &reference, ask).await
        }
        Command::Verify {
            deep,
            remote: Some(remote),
            references,
        } if references.is_empty() => backup_restore::verify_remote(&ctx, deep, &remote).await,
        Command::Verify {
            remote: Some(_), ..
        } => Err(anyhow::anyhow!(
            "verify --remote checks every backup on the remote; leave out the references"
        )),
        Command::Verify {
            deep,
            remote: None,
            references,
        } => backup_restore::verify(&ctx, deep, references).await,
        Command::Restore {
            reference,
            plan,
            at,
            to,
            format,
            force,
            dry_run,
            from,
            vm,
            instant,
        } => {
            if let Some(plan) = plan {
                if format.is_some()
                    || force
                    || instant.instant
                    || vm.keep_macs
                    || vm.name.is_some()
                    || vm.attach.is_some()
                    || vm.target.is_some()
                {
                    Err(anyhow::anyhow!(
                        "--plan restores every VM into a new directory with their own formats, names and MACs and their domain XMLs on the plan's network: --format, --force, --instant, --keep-macs, --name, --attach and --target do not apply"
                    ))
                } else {
                    plan_cmd::restore(&ctx, &plan, at, to, from, dry_run, vm.define, vm.start).await
                }
            } else if instant.instant {
                let reference = reference.unwrap_or_default();
                instant_cmd::instant(&ctx, &reference, to, from, vm, instant, (format, force, dry_run)).await
            } else {
                let reference = reference.unwrap_or_default();
                backup_restore::restore(&ctx, &reference, to, format, force, dry_run, from, vm).await
            }
        }
        Command::Drill(a) => drill_cmd::drill(&ctx, a).await,
        Command::Drills {
            vm,
            last,
            plans: true,
        } => plan_cmd::history(&ctx, vm.as_deref(), last),
        Command::Drills { vm, last, .. } => drill_cmd::history(&ctx, vm.as_deref(), last),
        Command::Plans { name, from } => plan_cmd::list(&ctx, name.as_deref(), from.as_deref()).await,
        Command::Vms { vm, repair } => vms_cmd::vms(&ctx, vm, repair).await,
        Command::Cloud {
            action: CloudAction::Ls,
        } => cloud_cmd::cloud_ls(&ctx).await,
        Command::CloudRestore(a) => cloud_cmd::cloud_restore(&ctx, a).await,
        Command::Export(a) => cloud_cmd::export_cmd(&ctx, *a).await,
        Command::Remote { action } => match action {
            RemoteAction::Add(a) => remote_cmds::remote_add(&ctx, *a),
            RemoteAction::Ls => remote_cmds::remote_ls(&ctx).await,
            RemoteAction::Rm { name } => remote_cmds::remote_rm(&ctx, &name),
        },
        Command::Serve(a) => serve(&ctx, *a).await,
        Command::Push(a) => remote_cmds::push_pull(&ctx, a, true).await,
        Command::Pull(a) => remote_cmds::push_pull(&ctx, a, false).await,
        Command::Prune(a) => prune::prune(&ctx, *a).await,
        Command::Gc(a) => gc_cmd::gc_cmd(&ctx, a).await,
        Command::Protect(a) => protect_cmd::protect_cmd(&ctx, a, true).await,
        Command::Unprotect(a) => protect_cmd::protect_cmd(&ctx, a, false).await,
        Command::Locks { remote, break_lock } => gc_cmd::locks_cmd(&ctx, remote, break_lock).await,
        Command::Status {
            remotes,
            timeout,
            rpo: true,
        } if remotes.is_empty() => daemon_cmd::rpo_status(&ctx, timeout).await,
        Command::Status { rpo: true, .. } => Err(anyhow::anyhow!(
            "status --rpo reports every VM against every configured remote; leave out the remote names"
        )),
        Command::Daemon(a) => daemon_cmd::daemon(&ctx, a).await,
        Command::Runs { vm, last } => daemon_cmd::runs_cmd(&ctx, vm, last),
        Command::Status { remotes, timeout, .. } => {
            remote_cmds::status_cmd(&ctx, remotes, timeout).await
        }
    };
    finish(json, res)
}

/// `lifeboat.1` and a page per subcommand, named as clap_mangen's list of
/// subcommands names them (`lifeboat-remote-add.1`). Returns how many.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fn write(cmd: clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<usize> {
        let cmd = cmd.name(name.to_string());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    write(cmd.clone(), "lifeboat", dir)
}

fn finish(json: bool, res: anyhow::Result<Outcome>) -> u8 {
    match res {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::Damage) => EXIT_DAMAGE,
        Ok(Outcome::Unreachable) => EXIT_UNREACHABLE,
        Ok(Outcome::RpoAtRisk) => EXIT_RPO,
        Ok(Outcome::DrillFailed) => EXIT_DRILL_FAILED,
        Ok(Outcome::Cancelled) => EXIT_CANCELLED,
        Err(e) => report(json, &e),
    }
}

async fn console(ctx: &Ctx, sink: crate::logging::LogSink) -> anyhow::Result<Outcome> {
    crate::tui::run(ctx.config.clone(), ctx.repo_path(), sink).await?;
    Ok(Outcome::Ok)
}

async fn demo_cmd(
    keep: Option<PathBuf>,
    no_tui: bool,
    overrides: lifeboat_core::config::remotes::Overrides,
    sink: crate::logging::LogSink,
) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    let (dir, _tmp) = match keep {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("lifeboat-demo-")
                .tempdir()
                .context("creating a temp dir")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let world = demo::World::at(&dir);
    if world.exists() {
        eprintln!("reusing the demo world at {}", dir.display());
    } else {
        if dir.exists()
            && std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            anyhow::bail!(
                "{} is not empty and holds no demo world: give a new or empty directory",
                dir.display()
            );
        }
        demo::build(&world).await?;
    }
    let _server = demo::start_offsite(&world).await?;
    // The config names a token file; nothing secret is in the environment.
    let mut config = Config::load(Some(&world.config))?;
    config.overrides = overrides;
    if no_tui {
        println!("demo world: {}", dir.display());
        println!("config:     {}", world.config.display());
        println!(
            "try:        lifeboat --config {} ls",
            world.config.display()
        );
        if _tmp.is_some() {
            println!("(temporary: removed on exit; use --keep DIR to keep it)");
        }
        return Ok(Outcome::Ok);
    }
    crate::tui::run(config.clone(), config.repo_path(None), sink).await?;
    Ok(Outcome::Ok)
}

async fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<Outcome> {
    use anyhow::Context;
    let tokens = a.tokens.clone().context("--tokens FILE is required")?;
    if let Some(ServeAction::Token { action }) = a.action {
        return token_cmd(ctx, &tokens, action);
    }
    let tls_dir = a
        .tls_dir
        .clone()
        .unwrap_or_else(|| crate::server::cert::default_dir(&tokens));
    let own_cert = |listen: &std::net::SocketAddr| {
        crate::server::cert::ensure(&tls_dir, &crate::server::cert::names_for(listen))
    };
    if let Some(ServeAction::Fingerprint) = a.action {
        let cert = match &a.tls_cert {
            Some(c) => c.clone(),
            None => own_cert(&a.listen)?.0.cert,
        };
        let fp = crate::server::cert::fingerprint(&cert)?;
        if ctx.json {
            print_json(&serde_json::json!({"certificate": cert, "fingerprint": fp.to_string()}))?;
        } else {
            println!("{fp}");
        }
        return Ok(Outcome::Ok);
    }
    let repo = ctx.repo_path();
    let loopback = a.listen.ip().is_loopback();
    // HTTPS unless told otherwise on a non-loopback address: a token and
    // a disk image must not cross a network in the clear by default.
    let tls = match (
        a.tls_cert.zip(a.tls_key),
        a.tls || !loopback,
        ctx.config.overrides.insecure_http,
    ) {
        (Some(pair), _, _) => Some(pair),
        (None, true, false) => {
            let (files, made) = own_cert(&a.listen)?;
            if made {
                eprintln!(
                    "made a self-signed certificate for this server: {} (key {})",
                    files.cert.display(),
                    files.key.display()
                );
            }
            Some((files.cert, files.key))
        }
        (None, _, _) => {
            if !loopback {
                tracing::warn!(
                    "serving plain HTTP on {}: tokens and backups cross the network unencrypted (--insecure-http)",
                    a.listen
                );
            }
            None
        }
    };
    let fingerprint = match &tls {
        Some((cert, _)) => Some(crate::server::cert::fingerprint(cert)?),
        None => None,
    };
    let opts = crate::server::ServeOptions {
        repo,
        listen: a.listen,
        tokens,
        tls,
        max_uploads: a.max_uploads,
        max_connections: a.max_connections,
        header_timeout: std::time::Duration::from_secs(a.header_timeout_secs),
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout_secs.max(1)),
        config: std::sync::Arc::new(ctx.config.clone()),
        rules: crate::server::Rules {
            max_backup_lag: humantime::parse_duration(&a.max_backup_lag).map_err(|e| {
                anyhow::anyhow!(
                    "--max-backup-lag {:?}: {e} (e.g. 1h, 30min, 2d)",
                    a.max_backup_lag
                )
            })?,
            immutable_for: std::time::Duration::from_secs(a.immutable_days.saturating_mul(86_400)),
            max_body_memory: {
                let n = lifeboat_core::text::parse_size(&a.max_body_memory)
                    .map_err(|e| anyhow::anyhow!("--max-body-memory: {e}"))?;
                let chunk = lifeboat_core::store::ObjectKey::Chunk(lifeboat_core::format::Id::ZERO)
                    .max_size();
                if n < chunk {
                    anyhow::bail!(
                        "--max-body-memory {} is less than one chunk may be ({}): give at least 65M",
                        a.max_body_memory,
                        lifeboat_core::text::bytes(chunk)
                    );
                }
                n
            },
            body_wait: std::time::Duration::from_secs(a.header_timeout_secs.max(1)),
        },
    };
    let shutdown = async {
        stop_requested().await;
        tracing::info!("shutting down");
    };
    crate::server::serve(
        opts,
        |addr, tls| {
            println!(
                "listening on {}://{addr}",
                if tls { "https" } else { "http" }
            );
            if let Some(fp) = fingerprint {
                println!("certificate fingerprint (SHA-256): {fp}");
                println!(
                    "clients: lifeboat remote add NAME https://HOST:{}/ --fingerprint {fp} --token-file FILE",
                    addr.port()
                );
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
        shutdown,
    )
    .await?;
    Ok(Outcome::Ok)
}

fn token_cmd(ctx: &Ctx, tokens: &std::path::Path, action: TokenAction) -> anyhow::Result<Outcome> {
    use crate::server::tokens::{self, NewToken, Role, TokenFile};
    match action {
        TokenAction::Add {
            name,
            role,
            expires,
            scope,
            cap_upload,
            cap_download,
        } => {
            let role: Role = role.parse()?;
            let now = chrono::Utc::now();
            let expires = expires.map(|e| tokens::parse_expiry(&e, now)).transpose()?;
            if expires.is_some_and(|t| t <= now) {
                anyhow::bail!("--expires is in the past");
            }
            let token = TokenFile::add(
                tokens,
                &name,
                role,
                NewToken {
                    expires,
                    scope,
                    limit_upload: cap_upload,
                    limit_download: cap_download,
                },
            )?;
            eprintln!(
                "added token {name} ({role:?}) to {}; it is shown once, below:",
                tokens.display()
            );
            println!("{token}");
        }
        TokenAction::Rm { name } => {
            TokenFile::remove(tokens, &name)?;
            if !ctx.json {
                println!("removed token {name}; a running server refuses it within seconds");
            }
        }
        TokenAction::Ls => {
            let file = TokenFile::load(tokens)?;
            let used = tokens::load_last_used(tokens);
            let now = chrono::Utc::now();
            let rows: Vec<serde_json::Value> = file
                .tokens
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "role": t.role,
                        "scope": t.scope,
                        "created": t.created,
                        "expires": t.expires,
                        "expired": t.expires.is_some_and(|e| e <= now),
                        "limit_upload": t.limit_upload,
                        "limit_download": t.limit_download,
                        "last_used": used.get(&t.name),
                    })
                })
                .collect();
            if ctx.json {
                print_json(&rows)?;
            } else {
                let when = |t: Option<&chrono::DateTime<chrono::Utc>>| {
                    t.map(crate::output::time).unwrap_or_else(|| "-".into())
                };
                let cells: Vec<Vec<String>> = file
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            format!("{:?}", t.role).to_lowercase(),
                            t.scope
                                .clone()
                                .map(|s| format!("{s}*"))
                                .unwrap_or_else(|| "all".into()),
                            when(t.created.as_ref()),
                            match t.expires {
                                Some(e) if e <= now => {
                                    format!("EXPIRED {}", crate::output::time(&e))
                                }
                                e => when(e.as_ref()),
                            },
                            when(used.get(&t.name)),
                            match (&t.limit_upload, &t.limit_download) {
                                (None, None) => "-".into(),
                                (u, d) => format!(
                                    "↑{} ↓{}",
                                    u.as_deref().unwrap_or("-"),
                                    d.as_deref().unwrap_or("-")
                                ),
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::output::table(
                        &[
                            "NAME",
                            "ROLE",
                            "VMS",
                            "CREATED",
                            "EXPIRES",
                            "LAST USED",
                            "CAPS"
                        ],
                        &cells
                    )
                );
            }
        }
    }
    Ok(Outcome::Ok)
}

fn report(json: bool, e: &anyhow::Error) -> u8 {
    let cancelled = matches!(
        e.downcast_ref::<lifeboat_core::Error>(),
        Some(lifeboat_core::Error::Cancelled)
    );
    // Messages can quote a remote's words or a repository's names: escape
    // control characters before they reach a terminal.
    let msg = lifeboat_core::text::escape_lines(&crate::output::describe(e));
    // Never a panic on a closed terminal (a dropped SSH session): the exit
    // code still says what happened.
    use std::io::Write as _;
    if json {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({ "error": msg, "cancelled": cancelled })
        );
    } else {
        let _ = writeln!(std::io::stderr(), "error: {msg}");
    }
    if cancelled {
        EXIT_CANCELLED
    } else {
        EXIT_ERROR
    }
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lifeboat_log_sets_levels_per_module_and_a_bad_one_falls_back() {
        use tracing::Level;
        let f = super::filter_from(Some("warn,lifeboat_core::sync=debug"), "info");
        assert!(f.would_enable("lifeboat_core::sync::push", &Level::DEBUG));
        assert!(!f.would_enable("lifeboat_core::backup", &Level::INFO));
        assert!(f.would_enable("lifeboat_core::backup", &Level::WARN));
        let f = super::filter_from(Some("debug"), "warn");
        assert!(f.would_enable("anything", &Level::DEBUG));
        // Unparsable: the command's own level, the verifier's refusals off.
        for bad in [Some("=!="), None] {
            let f = super::filter_from(bad, "info");
            assert!(f.would_enable("lifeboat", &Level::INFO), "{bad:?}");
            assert!(!f.would_enable("lifeboat", &Level::DEBUG), "{bad:?}");
            assert!(
                !f.would_enable("rustls_platform_verifier::x", &Level::ERROR),
                "{bad:?}"
            );
        }
    }

    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand: a flag defined
    /// twice (a global one and a subcommand's of another type) would
    /// otherwise panic only when used.
    #[test]
    fn argument_definitions_are_consistent() {
        Cli::command().debug_assert();
        for args in [
            &[
                "lifeboat",
                "serve",
                "token",
                "add",
                "t",
                "--role",
                "read",
                "--cap-download",
                "8M",
                "--tokens",
                "x",
            ][..],
            &[
                "lifeboat",
                "remote",
                "add",
                "o",
                "https://h:1/",
                "--limit-upload",
                "8M",
            ],
            &[
                "lifeboat",
                "push",
                "o",
                "--limit-upload",
                "8M",
                "--limit-download",
                "1M",
            ],
            &[
                "lifeboat",
                "restore",
                "vm/root",
                "--to",
                "x",
                "--from",
                "o",
                "--limit-download",
                "1M",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let _ = format!("{cli:?}");
        }
    }
}
