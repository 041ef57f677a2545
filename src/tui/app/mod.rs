//! Console state and `update`: actions in, state changes and effects out.
//! No I/O here, so every interaction is testable without a terminal.
//! Key and mouse handling live in `input`, dialogs in `dialog`.

mod dialog;
pub mod files;
mod input;
mod jobs;
pub mod plans;
mod remotes;
pub use jobs::JobsPane;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use crossterm::event::{KeyEvent, MouseEvent};
use lifeboat_core::format::{Id, Manifest, ManifestKey};
use lifeboat_core::jobs::Snapshot;
use lifeboat_core::repo::state::{JobRecord, VerifyMark};

pub use lifeboat_core::format::chunkmap::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Tree,
    Timeline,
    /// The selected backup's details: focusable to scroll and zoom.
    Details,
    Jobs,
    Log,
}

/// What the lower pane shows below 100 columns (wider, jobs and log sit
/// side by side and details under the timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    Jobs,
    Log,
    Details,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RemoteState {
    Connecting,
    Ok { latency_ms: f64, backups: usize },
    Unreachable(String),
}

#[derive(Debug, Clone)]
pub struct RemoteView {
    pub name: String,
    pub state: RemoteState,
    /// Manifest ids the remote holds (None until listed).
    pub ids: Option<BTreeSet<Id>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Running,
    Done(String),
    Failed(String),
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct JobView {
    /// 0 for a job of an earlier session (from the history).
    pub id: u64,
    pub title: String,
    pub kind: JobKind,
    pub state: JobState,
    pub progress: Option<Snapshot>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// What happened, for the job log (Enter on the job).
    pub log: Vec<String>,
    /// Live output (a drill's serial console), newest last.
    pub output: Vec<String>,
    /// When each phase began (the phase's first word: fetch, boot, …).
    pub phases: Vec<(String, DateTime<Utc>)>,
    /// Parts that run side by side (a plan drill's VMs).
    pub parts: Vec<Part>,
}

/// One part of a job (a VM of a plan drill): its progress and newest lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub snapshot: Snapshot,
    pub output: Vec<String>,
}

impl JobView {
    pub fn past(&self) -> bool {
        self.id == 0
    }
}

/// A row of the VM tree: a VM, or one of its volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRow {
    pub vm: String,
    pub volume: Option<String>,
}

/// Recovery-point state: `rpo::judge` decides it, the one rule `status
/// --rpo` and `/metrics` use.
pub type Rpo = lifeboat_core::rpo::RpoState;

/// The browsing panes' state: what is selected in the VM tree and the
/// timeline, the filter and search typed, the backup marked for a
/// comparison, and the rows derived from the backups (rebuilt by
/// `App::rebuild` when the backups, the inventory, the filter or the
/// selection change, so a keypress over 20,000 backups rescans nothing).
#[derive(Debug, Default)]
pub struct Browser {
    pub tree_sel: usize,
    pub timeline_sel: usize,
    /// How far the Details pane is scrolled (lines from its top).
    pub details_scroll: usize,
    pub filter: Option<String>,
    pub search: Option<String>,
    pub marked: Option<ManifestKey>,
    tree_cache: Vec<TreeRow>,
    timeline_cache: Vec<usize>,
}

/// The Log pane's state.
#[derive(Debug, Default)]
pub struct LogPane {
    pub lines: VecDeque<String>,
    /// Entries hidden below the view (0: the Log follows new lines).
    pub scroll: usize,
    /// Lines not yet written to the log file (the event loop drains).
    pub out: Vec<String>,
}
pub use lifeboat_core::jobs::JobKind;

/// Whether a repository holds a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Held,
    Missing,
    /// Not listed yet.
    Unknown,
    /// The remote could not be listed.
    Unreachable,
}

/// A text prompt that edits like a shell line (tui-input: Ctrl-U, Ctrl-W,
/// Ctrl-A/E, Home/End, Left/Right, Alt-B/F).
#[derive(Debug, Clone, Default)]
pub struct LineInput(pub tui_input::Input);

impl LineInput {
    pub fn new(s: &str) -> LineInput {
        LineInput(tui_input::Input::new(s.to_string()))
    }
    pub fn value(&self) -> &str {
        self.0.value()
    }
}

impl PartialEq for LineInput {
    fn eq(&self, o: &Self) -> bool {
        self.0.value() == o.0.value() && self.0.cursor() == o.0.cursor()
    }
}

/// What a push or pull covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Backup(ManifestKey),
    Volume {
        vm: String,
        volume: String,
    },
    Vm(String),
    /// Everything the source holds that the destination lacks.
    All,
}

impl Scope {
    pub fn describe(&self) -> String {
        match self {
            Scope::Backup(k) => format!("{}/{} {}", k.vm, k.volume, k.id.short()),
            Scope::Volume { vm, volume } => format!("every backup of {vm}/{volume}"),
            Scope::Vm(vm) => format!("every backup of {vm}"),
            Scope::All => "everything".into(),
        }
    }
}

/// A passphrase typed into the console: zeroed when dropped, never shown
/// (its Debug is a placeholder, so no log or snapshot can hold it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What a restore prompt restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreWhat {
    /// One volume, to a file.
    Volume(ManifestKey),
    /// A whole VM set started at once from its backup, its disks copied
    /// into a directory (an instant restore).
    Instant { reference: String, label: String },
    /// A file or directory of a backup's filesystem, into a directory.
    Extract {
        key: ManifestKey,
        from: Option<String>,
        path: String,
    },
    /// Names to search for in the file browser (back to it after).
    FindFiles(Box<files::FilesView>),
    /// A whole VM set (`VM@time`), into a directory with its domain XML;
    /// Tab toggles `virsh define`.
    Vm {
        reference: String,
        label: String,
        define: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dialog {
    /// Confirm a planned operation; `lines` is the plan.
    Confirm {
        title: String,
        lines: Vec<String>,
        effect: Effect,
    },
    /// The repository is encrypted and its key is not held: a masked field
    /// for a passphrase or the recovery key.
    Unlock {
        typed: Secret,
        error: Option<String>,
    },
    /// Ask for a path (restore target).
    Prompt {
        title: String,
        input: LineInput,
        what: RestoreWhat,
    },
    /// Choose a remote for a push.
    ChooseRemote {
        scope: Scope,
        choice: usize,
    },
    /// The recovery plans (`S`): D drills the selected one.
    Plans {
        sel: usize,
    },
    /// Choose the repository a drill takes the VM's backup from.
    ChooseDrillSource {
        vm: String,
        sources: Vec<String>,
        choice: usize,
    },
    /// Choose the cloud a VM set is restored into.
    ChooseCloud {
        /// The set: `VM@TIME`.
        reference: String,
        label: String,
        targets: Vec<String>,
        choice: usize,
    },
    /// Text to read: errors, results, a job's log, help. Scrolls.
    Message {
        title: String,
        lines: Vec<String>,
        scroll: usize,
    },
    /// A chunk map of two backups, or (`held`) of one backup against the
    /// local repository.
    Compare {
        title: String,
        cells: Vec<Cell>,
        summary: Vec<String>,
        held: bool,
    },
    Help {
        scroll: usize,
    },
    QuitWhileRunning,
    /// The file browser of one backup.
    Files(files::FilesView),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Plan a push (local → remote) or a pull (remote → local): what the
    /// other side lacks of `scope`. The plan comes back as
    /// `Action::Planned` and runs only when confirmed.
    PlanTransfer {
        push: bool,
        remote: String,
        scope: Scope,
    },
    /// Plan a restore to a new file (`from`: straight from this remote,
    /// its missing chunks fetched into the local repository first).
    PlanRestore {
        key: ManifestKey,
        to: String,
        from: Option<String>,
    },
    /// Plan a restore of a whole VM set into a directory, with its domain
    /// XML (and `virsh define` when `define`).
    PlanRestoreVm {
        reference: String,
        label: String,
        dir: String,
        define: bool,
        from: Option<String>,
    },
    /// An instant restore of a VM set, as a job.
    InstantRestore {
        reference: String,
        label: String,
        dir: String,
        from: Option<String>,
    },
    /// List a directory of a backup's filesystems (None: the filesystems),
    /// or search names under it.
    ListFiles {
        key: ManifestKey,
        from: Option<String>,
        path: Option<String>,
        find: Option<String>,
    },
    /// Extract a file or directory of a backup, as a job.
    ExtractFiles {
        key: ManifestKey,
        from: Option<String>,
        path: String,
        to: String,
    },
    /// Plan a restore of a VM set into a cloud target (`from`: a remote).
    PlanCloud {
        reference: String,
        /// How the set is shown ("web set of 2026-11-28 01:47").
        label: String,
        target: String,
        from: Option<String>,
    },
    /// Check every cloud target (auth, flavor, network, key pair).
    CheckClouds,
    /// Run a confirmed plan, or forget one that was declined.
    RunPlan(u64),
    DropPlan(u64),
    Backup {
        vm: String,
    },
    /// A restore drill of the VM's newest set from `source` ("local" or a
    /// remote).
    Drill {
        vm: String,
        source: String,
    },
    /// A drill of a recovery plan from its configured source.
    PlanDrill {
        plan: String,
    },
    /// Run a VM's policy once (backup, verify, push, retention).
    RunPolicy {
        vm: String,
    },
    /// The VM's prune plan under its policy, offered for confirmation.
    PlanPrune {
        vm: String,
    },
    /// Fetch every manifest of a remote, to browse it.
    Browse(String),
    /// Verify the local repository, or (`remote`) a remote's copy
    /// through its API.
    Verify {
        deep: bool,
        remote: Option<String>,
    },
    Compare {
        a: ManifestKey,
        b: ManifestKey,
    },
    /// A local backup against the live volume (from the inventory).
    CompareLive {
        key: ManifestKey,
    },
    /// A remote's copy of a backup against the local repository.
    CompareRemote {
        remote: String,
        key: ManifestKey,
    },
    ListRemote(String),
    Cancel(u64),
    /// Keep a finished job in the repository's job history.
    RecordJob(JobRecord),
    /// Read the job history (at start).
    LoadHistory,
    Reload,
    /// Unlock the local repository with a passphrase or recovery key.
    Unlock(Secret),
    Quit,
}

#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    Mouse(MouseEvent),
    /// The terminal's size (at start and on every resize).
    Resize(u16, u16),
    Loaded(Backups),
    /// A refresh found the local repository as it was.
    Unchanged,
    /// The local repository could not be read.
    LoadFailed(String),
    /// The local repository is encrypted and its key is not held.
    NeedsKey(String),
    /// An unlock attempt's outcome.
    Unlocked(Result<(), String>),
    /// Recorded verify results per backup.
    VerifyState(BTreeMap<Id, VerifyMark>),
    /// Each VM's policy, last run, next run and RPO state.
    Rpo(Vec<lifeboat_core::rpo::VmRpo>),
    /// Jobs of earlier sessions, oldest first, and unreadable records.
    History(Vec<JobRecord>, usize),
    RemoteListed {
        name: String,
        result: Result<(f64, BTreeSet<Id>), String>,
    },
    /// A file browser's listing (or why there is none).
    FilesListed {
        key: ManifestKey,
        path: Option<String>,
        find: Option<String>,
        result: Result<(Vec<files::FileRow>, String), String>,
    },
    RemoteBrowsed {
        name: String,
        result: Result<Backups, String>,
    },
    JobStarted {
        id: u64,
        title: String,
        kind: JobKind,
    },
    JobProgress {
        id: u64,
        snapshot: Snapshot,
        /// The job's newest live output lines.
        output: Vec<String>,
        /// Its parts' progress (a plan drill's VMs), in order.
        parts: Vec<Part>,
    },
    /// The recovery plans: members, service RPO, last drill.
    Plans(Vec<plans::PlanRow>),
    /// The newest drill of each VM (from the repository's history).
    Drills(BTreeMap<String, lifeboat_core::drill::DrillReport>),
    /// Each inventory VM: running or not, and what its next backup reads.
    Live(BTreeMap<String, lifeboat_core::live::Outlook>),
    /// The cloud targets' checks.
    Clouds(Vec<lifeboat_core::cloud::TargetCheck>),
    JobDone {
        id: u64,
        result: Result<String, String>,
        cancelled: bool,
    },
    CompareReady {
        title: String,
        cells: Vec<Cell>,
        summary: Vec<String>,
        held: bool,
    },
    /// A plan is ready for confirmation (`lines` say what it will do);
    /// `noop`: it would change nothing, so it is shown, not offered.
    Planned {
        plan: u64,
        title: String,
        lines: Vec<String>,
        noop: bool,
    },
    /// Planning found the operation cannot be done (a bad target, …).
    PlanFailed {
        title: String,
        error: String,
    },
    Log(String),
    /// A line tracing wrote (already in the log file).
    Traced(String),
    Tick(DateTime<Utc>),
}

pub const CLOUDS_TITLE: &str = "Clouds";

/// The clouds dialog: one block per target.
pub fn cloud_lines(checks: &[lifeboat_core::cloud::TargetCheck]) -> Vec<String> {
    let mut out = Vec::new();
    for c in checks {
        out.push(format!(
            "{}  {}  {}",
            c.target,
            c.provider.as_str(),
            if c.ok { "ok" } else { "FAILED" }
        ));
        out.extend(c.checks.iter().map(|l| format!("    {l}")));
    }
    out.push(String::new());
    out.push("u on a backup brings its VM set up in a cloud.".into());
    out
}

/// The first word of a progress phase ("boot: waiting…" → "boot").
pub fn phase_word(phase: &str) -> &str {
    phase
        .split([':', ' '])
        .next()
        .filter(|w| !w.is_empty())
        .unwrap_or(phase)
}

/// `vm/volume id (time)`: how plans and summaries name a backup.
pub fn backup_line(key: &ManifestKey, m: &Manifest) -> String {
    format!(
        "{}/{} {} ({})",
        key.vm,
        key.volume,
        key.id.short(),
        m.created_at.format("%Y-%m-%d %H:%M")
    )
}

/// The always-visible status line: the latest result, error or hint.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub error: bool,
}

/// Stored and logical bytes of the backups shown (as recorded when each
/// backup was made: what it added to its repository).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub logical: u64,
    pub stored: u64,
}

impl Usage {
    pub fn dedup(&self) -> Option<f64> {
        (self.stored > 0).then(|| self.logical as f64 / self.stored as f64)
    }
}

/// A repository's backups, oldest first: shared by the runner's cache, the
/// local view and the shown view, never copied (at 20,000 backups each
/// copy is tens of MB).
pub type Backups = std::sync::Arc<Vec<(ManifestKey, std::sync::Arc<Manifest>)>>;

pub struct App {
    pub now: DateTime<Utc>,
    pub repo_path: String,
    pub config_path: Option<String>,
    /// What the tree and timeline show: the local repository's backups, or
    /// those of the remote named in `source`.
    pub backups: Backups,
    pub source: Option<String>,
    local_backups: Backups,
    local_ids: BTreeSet<Id>,
    remote_backups: BTreeMap<String, Backups>,
    pub inventory: Vec<(String, Vec<String>)>,
    pub remotes: Vec<RemoteView>,
    /// Each VM's newest drill.
    pub drills: BTreeMap<String, lifeboat_core::drill::DrillReport>,
    /// The recovery plans, as last read.
    pub plans: Vec<plans::PlanRow>,
    /// Each inventory VM's running state and next-backup outlook.
    pub live: BTreeMap<String, lifeboat_core::live::Outlook>,
    /// Where each inventory VM is drilled from unless the admin picks.
    pub drill_defaults: BTreeMap<String, String>,
    /// `[cloud.NAME]` targets, and their newest check (`L`).
    pub clouds: Vec<String>,
    pub cloud_checks: Vec<lifeboat_core::cloud::TargetCheck>,
    pub focus: Pane,
    pub lower: Lower,
    pub zoom: bool,
    pub size: (u16, u16),
    /// The VM tree, the timeline and the Details pane: selections,
    /// filter, search, the marked backup.
    pub browser: Browser,
    pub jobs: JobsPane,
    pub log: LogPane,
    pub dialog: Option<Dialog>,
    /// The filter (tree) or search (timeline) being typed.
    pub typing: Option<(Pane, LineInput)>,
    pub status: Option<Status>,
    /// When a VM counts as late and as stale (minutes), unless its policy
    /// says otherwise (`rpo_policy`).
    pub rpo_default: (i64, i64),
    pub rpo_policy: BTreeMap<String, (i64, i64)>,
    /// When the shown repository was last read, and how often it is re-read.
    pub refreshed_at: Option<DateTime<Utc>>,
    pub refresh_secs: i64,
    /// Why the local repository could not be read (a newcomer's screen).
    pub repo_problem: Option<String>,
    /// Esc on the unlock prompt: not asked again this session.
    pub unlock_declined: bool,
    pub verify: BTreeMap<Id, VerifyMark>,
    /// Per VM: policy, last and next run, RPO state (from the repository's
    /// records and the config).
    pub rpo: BTreeMap<String, lifeboat_core::rpo::VmRpo>,
    pub usage: Usage,
    pub quit: bool,
    pub keys: super::keymap::KeyMap,
    /// Newest backup per (VM, volume), and each VM's recovery point (the
    /// oldest of its volumes' newest; None when a volume has none).
    newest_cache: BTreeMap<(String, String), (DateTime<Utc>, Id)>,
    /// Per VM, the volumes its recovery point covers (`rpo::current_volumes`).
    vm_covered: BTreeMap<String, Vec<String>>,
}

const LOG_LINES: usize = 500;
/// Jobs of earlier sessions shown in the Jobs pane.
const HISTORY_SHOWN: usize = 50;
pub const REFRESH_SECS: i64 = 30;

impl App {
    pub fn new(
        repo_path: String,
        inventory: Vec<(String, Vec<String>)>,
        remotes: Vec<(String, String)>,
        now: DateTime<Utc>,
    ) -> App {
        let mut app = App {
            now,
            repo_path,
            config_path: None,
            backups: Default::default(),
            source: None,
            local_backups: Default::default(),
            local_ids: BTreeSet::new(),
            remote_backups: BTreeMap::new(),
            inventory,
            drills: BTreeMap::new(),
            plans: Vec::new(),
            live: BTreeMap::new(),
            drill_defaults: BTreeMap::new(),
            clouds: Vec::new(),
            cloud_checks: Vec::new(),
            remotes: remotes
                .into_iter()
                .map(|(name, _url)| RemoteView {
                    name,
                    state: RemoteState::Connecting,
                    ids: None,
                })
                .collect(),
            focus: Pane::Tree,
            lower: Lower::Jobs,
            zoom: false,
            size: (80, 24),
            browser: Browser::default(),
            jobs: JobsPane::default(),
            log: LogPane::default(),
            dialog: None,
            typing: None,
            status: None,
            rpo_default: (
                lifeboat_core::rpo::DEFAULT_LATE_HOURS * 60,
                lifeboat_core::rpo::DEFAULT_STALE_HOURS * 60,
            ),
            rpo_policy: BTreeMap::new(),
            refreshed_at: None,
            refresh_secs: REFRESH_SECS,
            repo_problem: None,
            unlock_declined: false,
            verify: BTreeMap::new(),
            rpo: BTreeMap::new(),
            usage: Usage::default(),
            quit: false,
            keys: super::keymap::KeyMap::default(),
            newest_cache: BTreeMap::new(),
            vm_covered: BTreeMap::new(),
        };
        app.rebuild();
        app
    }

    /// Effects to run at start: load the local repository and the job
    /// history, list every remote.
    pub fn start(&self) -> Vec<Effect> {
        let mut e = vec![Effect::LoadHistory];
        e.extend(self.refresh());
        e
    }

    /// Re-reads what is shown: the local repository, every remote's list,
    /// and the browsed remote's backups.
    fn refresh(&self) -> Vec<Effect> {
        let mut e = vec![Effect::Reload];
        e.extend(
            self.remotes
                .iter()
                .map(|r| Effect::ListRemote(r.name.clone())),
        );
        if let Some(s) = &self.source {
            e.push(Effect::Browse(s.clone()));
        }
        e
    }

    pub fn tree(&self) -> &[TreeRow] {
        &self.browser.tree_cache
    }

    /// Recomputes the derived views (tree, timeline of the selection,
    /// newest per volume, usage).
    pub fn rebuild(&mut self) {
        // One pass over the backups: newest per volume, usage, and the
        // volumes of each VM (the inventory's too, so a VM or volume never
        // sent shows as `never`, locally and in a remote's view).
        self.newest_cache = lifeboat_core::rpo::newest_per_volume(&self.backups);
        let mut usage = Usage::default();
        let mut vms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (vm, vols) in &self.inventory {
            vms.entry(vm.clone())
                .or_default()
                .extend(vols.iter().cloned());
        }
        for (k, m) in self.backups.iter() {
            usage.logical += m.stats.nonzero_bytes;
            usage.stored += m.stats.new_stored_bytes;
            vms.entry(k.vm.clone())
                .or_default()
                .insert(k.volume.clone());
        }
        self.usage = usage;
        let configured: BTreeMap<String, Vec<String>> = self.inventory.iter().cloned().collect();
        self.vm_covered = lifeboat_core::rpo::current_volumes(&configured, &self.backups);
        self.browser.tree_cache = self.build_tree(vms);
        self.browser.tree_sel = self
            .browser
            .tree_sel
            .min(self.browser.tree_cache.len().saturating_sub(1));
        self.rebuild_timeline();
    }

    fn rebuild_timeline(&mut self) {
        self.browser.timeline_cache = match self.browser.tree_cache.get(self.browser.tree_sel) {
            None => Vec::new(),
            Some(row) => {
                let mut t: Vec<usize> = (0..self.backups.len())
                    .filter(|&i| {
                        let k = &self.backups[i].0;
                        k.vm == row.vm && row.volume.as_ref().is_none_or(|v| &k.volume == v)
                    })
                    .collect();
                t.sort_by_key(|&i| std::cmp::Reverse(self.backups[i].1.created_at));
                t
            }
        };
        self.browser.timeline_sel = self
            .browser
            .timeline_sel
            .min(self.browser.timeline_cache.len().saturating_sub(1));
    }

    fn build_tree(&self, vms: BTreeMap<String, BTreeSet<String>>) -> Vec<TreeRow> {
        let mut rows = Vec::new();
        for (vm, vols) in vms {
            if let Some(f) = &self.browser.filter {
                if !vm.contains(f.as_str()) && !vols.iter().any(|v| v.contains(f.as_str())) {
                    continue;
                }
            }
            rows.push(TreeRow {
                vm: vm.clone(),
                volume: None,
            });
            rows.extend(vols.into_iter().map(|v| TreeRow {
                vm: vm.clone(),
                volume: Some(v),
            }));
        }
        rows
    }

    pub fn selected_row(&self) -> Option<TreeRow> {
        self.tree().get(self.browser.tree_sel).cloned()
    }

    /// Backups of the selected VM or volume, newest first (from the cache
    /// `rebuild_timeline` keeps, so drawing never rescans every backup).
    pub fn timeline(&self) -> Vec<&(ManifestKey, std::sync::Arc<Manifest>)> {
        self.browser
            .timeline_cache
            .iter()
            .filter_map(|&i| self.backups.get(i))
            .collect()
    }

    pub fn selected_backup(&self) -> Option<(ManifestKey, Manifest)> {
        self.timeline()
            .get(self.browser.timeline_sel)
            .map(|(k, m)| (k.clone(), Manifest::clone(m)))
    }

    /// When the backups of one set of a VM in the shown repository were
    /// made (a set's time is its newest, to the nanosecond).
    pub fn backups_of_set(&self, vm: &str, set: &str) -> Vec<DateTime<Utc>> {
        self.backups
            .iter()
            .filter(|(k, m)| k.vm == vm && m.set == set)
            .map(|(_, m)| m.created_at)
            .collect()
    }

    /// The newest backup of a volume in the shown repository.
    pub fn newest_volume(&self, vm: &str, volume: &str) -> Option<DateTime<Utc>> {
        self.newest_volume_backup(vm, volume).map(|(t, _)| t)
    }

    /// The newest backup of a volume: its time and id.
    pub fn newest_volume_backup(&self, vm: &str, volume: &str) -> Option<(DateTime<Utc>, Id)> {
        self.newest_cache
            .get(&(vm.to_string(), volume.to_string()))
            .copied()
    }

    /// The capture record of a VM's newest backup.
    pub fn last_capture(&self, vm: &str) -> Option<&lifeboat_core::format::manifest::Capture> {
        self.backups
            .iter()
            .rev()
            .find(|(k, _)| k.vm == vm)
            .and_then(|(_, m)| m.capture.as_ref())
    }

    /// The newest backups of the volumes a VM's recovery point covers.
    fn vm_points(&self, vm: &str) -> Vec<Option<(DateTime<Utc>, Id)>> {
        self.vm_covered
            .get(vm)
            .map(|vols| {
                vols.iter()
                    .map(|v| self.newest_volume_backup(vm, v))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn judge(
        &self,
        vm: &str,
        points: &[Option<(DateTime<Utc>, Id)>],
        with_run: bool,
    ) -> (Option<DateTime<Utc>>, Rpo) {
        let (late, stale) = self.rpo_limits(vm);
        let failed = with_run
            && self
                .rpo
                .get(vm)
                .and_then(|r| r.last_run.as_ref())
                .is_some_and(|r| r.outcome == lifeboat_core::daemon::runs::RunOutcome::Failed);
        lifeboat_core::rpo::judge(
            points,
            &self.verify,
            failed,
            self.now,
            chrono::Duration::minutes(late),
            chrono::Duration::minutes(stale),
        )
    }

    /// The VM's recovery point (the oldest of its volumes' newest backups;
    /// None when a volume has none) and its state, in one judgement.
    pub fn recovery(&self, vm: &str) -> (Option<DateTime<Utc>>, Rpo) {
        self.judge(vm, &self.vm_points(vm), true)
    }

    #[cfg(test)]
    pub fn newest(&self, vm: &str) -> Option<DateTime<Utc>> {
        self.recovery(vm).0
    }

    /// A VM's late and stale thresholds in minutes.
    pub fn rpo_limits(&self, vm: &str) -> (i64, i64) {
        self.rpo_policy.get(vm).copied().unwrap_or(self.rpo_default)
    }

    /// The VM's recovery-point state (`rpo::judge`, as `status --rpo`).
    #[cfg(test)]
    pub fn rpo(&self, vm: &str) -> Rpo {
        self.recovery(vm).1
    }

    pub fn rpo_volume(&self, vm: &str, volume: &str) -> Rpo {
        self.judge(vm, &[self.newest_volume_backup(vm, volume)], false)
            .1
    }

    pub fn running_jobs(&self) -> usize {
        self.jobs
            .list
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count()
    }

    fn log(&mut self, line: String) {
        // Also kept in the log file (the event loop writes them), so a
        // session's history survives quitting.
        self.log.out.push(line.clone());
        self.log_pane(line);
    }

    /// A line for the Log pane only (tracing's lines, which the log sink
    /// writes to the file itself).
    fn log_pane(&mut self, line: String) {
        self.log.lines.push_back(line);
        while self.log.lines.len() > LOG_LINES {
            self.log.lines.pop_front();
        }
        if self.log.scroll > 0 {
            // A scrolled-back Log keeps showing the same lines.
            self.log.scroll = (self.log.scroll + 1).min(self.log.lines.len().saturating_sub(1));
        }
    }

    /// Shows `text` in the status line (and logs it).
    fn notify(&mut self, text: String, error: bool) {
        self.log(text.clone());
        self.status = Some(Status { text, error });
    }

    fn job_log(&mut self, id: u64, line: String) {
        let stamp = self.now.format("%H:%M:%S");
        if let Some(j) = self.jobs.list.iter_mut().find(|j| j.id == id && id != 0) {
            j.log.push(format!("{stamp} {line}"));
        }
    }

    fn reachable_remotes(&self) -> Vec<String> {
        self.remotes
            .iter()
            .filter(|r| matches!(r.state, RemoteState::Ok { .. }))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Seconds since the shown repository was read.
    pub fn refreshed_ago(&self) -> Option<i64> {
        self.refreshed_at
            .map(|t| (self.now - t).num_seconds().max(0))
    }

    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Tick(now) => {
                self.now = now;
                match self.refreshed_ago() {
                    Some(s) if s >= self.refresh_secs && self.running_jobs() == 0 => {
                        // Re-read on an interval so that what another
                        // process pushed or backed up shows up unasked.
                        self.refreshed_at = Some(now);
                        self.refresh()
                    }
                    _ => Vec::new(),
                }
            }
            Action::Resize(w, h) => {
                self.size = (w, h);
                Vec::new()
            }
            Action::Mouse(m) => self.mouse(m),
            Action::Loaded(b) => {
                self.repo_problem = None;
                self.local_ids = b.iter().map(|(k, _)| k.id).collect();
                self.local_backups = b;
                if self.source.is_none() {
                    self.refreshed_at = Some(self.now);
                    self.backups = self.local_backups.clone();
                    self.rebuild();
                    self.clamp();
                }
                Vec::new()
            }
            Action::Unchanged => {
                self.repo_problem = None;
                if self.source.is_none() {
                    self.refreshed_at = Some(self.now);
                }
                Vec::new()
            }
            Action::NeedsKey(e) => {
                if self.repo_problem.as_ref() != Some(&e) {
                    self.log(format!("local repository: {e}"));
                }
                self.repo_problem = Some(e);
                if !self.unlock_declined && self.dialog.is_none() {
                    self.dialog = Some(Dialog::Unlock {
                        typed: Secret::default(),
                        error: None,
                    });
                }
                Vec::new()
            }
            Action::Unlocked(Ok(())) => {
                self.log("local repository unlocked".to_string());
                vec![Effect::Reload]
            }
            Action::Unlocked(Err(e)) => {
                self.dialog = Some(Dialog::Unlock {
                    typed: Secret::default(),
                    error: Some(e),
                });
                Vec::new()
            }
            Action::LoadFailed(e) => {
                self.log(format!("local repository: {e}"));
                self.repo_problem = Some(e);
                Vec::new()
            }
            Action::VerifyState(v) => {
                self.verify = v;
                Vec::new()
            }
            Action::Rpo(v) => {
                self.rpo = v.into_iter().map(|r| (r.vm.clone(), r)).collect();
                Vec::new()
            }
            Action::RemoteBrowsed { name, result } => self.remote_browsed(name, result),
            Action::FilesListed {
                key,
                path,
                find,
                result,
            } => self.files_listed(key, path, find, result),
            Action::RemoteListed { name, result } => self.remote_listed(name, result),
            Action::Drills(d) => {
                self.drills = d;
                Vec::new()
            }
            Action::Plans(p) => {
                self.plans = p;
                Vec::new()
            }
            Action::Live(l) => {
                self.live = l;
                Vec::new()
            }
            Action::Clouds(checks) => {
                let lines = cloud_lines(&checks);
                self.cloud_checks = checks;
                // Shown when the admin is still looking at the clouds.
                if matches!(&self.dialog, Some(Dialog::Message { title, .. }) if title == CLOUDS_TITLE)
                {
                    self.dialog = Some(Dialog::Message {
                        title: CLOUDS_TITLE.into(),
                        lines,
                        scroll: 0,
                    });
                }
                Vec::new()
            }
            Action::JobStarted { id, title, kind } => self.job_started(id, title, kind),
            Action::JobProgress {
                id,
                snapshot,
                output,
                parts,
            } => self.job_progress(id, snapshot, output, parts),
            Action::History(records, bad) => self.history(records, bad),
            Action::JobDone {
                id,
                result,
                cancelled,
            } => self.job_done(id, result, cancelled),
            Action::CompareReady {
                title,
                cells,
                summary,
                held,
            } => {
                self.dialog = Some(Dialog::Compare {
                    title,
                    cells,
                    summary,
                    held,
                });
                Vec::new()
            }
            Action::Planned {
                plan,
                title,
                lines,
                noop,
            } => {
                if noop {
                    self.notify(format!("{title}: nothing to do"), false);
                    self.dialog = Some(Dialog::Message {
                        title: format!("{title}: nothing to do"),
                        lines,
                        scroll: 0,
                    });
                    return vec![Effect::DropPlan(plan)];
                }
                self.dialog = Some(Dialog::Confirm {
                    title,
                    lines,
                    effect: Effect::RunPlan(plan),
                });
                Vec::new()
            }
            Action::PlanFailed { title, error } => {
                self.notify(format!("{title}: {error}"), true);
                self.dialog = Some(Dialog::Message {
                    title,
                    lines: vec![error],
                    scroll: 0,
                });
                Vec::new()
            }
            Action::Traced(l) => {
                self.log_pane(l);
                Vec::new()
            }
            Action::Log(l) => {
                self.log(l);
                Vec::new()
            }
            Action::Key(k) => self.key(k),
        }
    }

    fn clamp(&mut self) {
        let n = self.tree().len();
        self.browser.tree_sel = self.browser.tree_sel.min(n.saturating_sub(1));
        let t = self.timeline().len();
        self.browser.timeline_sel = self.browser.timeline_sel.min(t.saturating_sub(1));
        self.jobs.sel = self.jobs.sel.min(self.jobs.list.len().saturating_sub(1));
    }

    fn no_backup(&mut self) {
        self.message(
            "No backup selected",
            "Select a VM or volume with backups, then a backup in the timeline.",
        );
    }

    fn message(&mut self, title: &str, line: &str) {
        self.dialog = Some(Dialog::Message {
            title: title.into(),
            lines: vec![line.into()],
            scroll: 0,
        });
    }

    /// Presence of a backup in each column of `presence_columns`.
    pub fn presence(&self, key: &ManifestKey) -> Vec<Presence> {
        self.presence_columns()
            .iter()
            .map(|c| match c.as_str() {
                "local" if self.repo_problem.is_some() => Presence::Unreachable,
                "local" if self.local_ids.contains(&key.id) => Presence::Held,
                "local" => Presence::Missing,
                name => match self.remotes.iter().find(|r| r.name == name) {
                    Some(RemoteView {
                        state: RemoteState::Unreachable(_),
                        ..
                    }) => Presence::Unreachable,
                    Some(RemoteView { ids: Some(ids), .. }) if ids.contains(&key.id) => {
                        Presence::Held
                    }
                    Some(RemoteView { ids: Some(_), .. }) => Presence::Missing,
                    _ => Presence::Unknown,
                },
            })
            .collect()
    }

    /// The repositories the timeline shows presence for: every remote when
    /// local is shown; local and the other remotes when a remote is.
    pub fn presence_columns(&self) -> Vec<String> {
        let mut cols = Vec::new();
        if self.source.is_some() {
            cols.push("local".to_string());
        }
        cols.extend(
            self.remotes
                .iter()
                .map(|r| r.name.clone())
                .filter(|n| Some(n) != self.source.as_ref()),
        );
        cols
    }

    /// Panes Tab moves through, in order, for the current size.
    pub fn focus_order(&self) -> Vec<Pane> {
        // The panes shown at this size (the layout decides): every pane on
        // screen can take focus.
        let a = super::view::areas_for(
            ratatui::layout::Rect::new(0, 0, self.size.0, self.size.1),
            self.lower,
            None,
        );
        // Details last: Tab from the timeline still reaches the jobs.
        [
            (Pane::Tree, a.tree),
            (Pane::Timeline, a.timeline),
            (Pane::Jobs, a.jobs),
            (Pane::Log, a.log),
            (Pane::Details, a.details),
        ]
        .into_iter()
        .filter(|(_, r)| r.is_some())
        .map(|(p, _)| p)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_input_compares_value_and_cursor() {
        assert_eq!(LineInput::new("ab"), LineInput::new("ab"));
        assert_ne!(LineInput::new("ab"), LineInput::new("abc"));
    }
}
