//! Console state and `update`: actions in, state changes and effects out.
//! No I/O here, so every interaction is testable without a terminal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use lifeboat_core::jobs::Snapshot;
use lifeboat_core::repo::{Id, Manifest, ManifestKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Tree,
    Timeline,
    Jobs,
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
    pub id: u64,
    pub title: String,
    pub state: JobState,
    pub progress: Option<Snapshot>,
}

/// A row of the VM tree: a VM, or one of its volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeRow {
    pub vm: String,
    pub volume: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpo {
    Fresh,
    Late,
    Stale,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dialog {
    /// Confirm a planned operation; `lines` is the plan.
    Confirm {
        title: String,
        lines: Vec<String>,
        effect: Effect,
    },
    /// Ask for a path (restore target).
    Prompt {
        title: String,
        input: String,
        key: ManifestKey,
    },
    /// Choose a remote for a push.
    ChooseRemote {
        key: ManifestKey,
        choice: usize,
    },
    /// A message (errors, results).
    Message {
        title: String,
        lines: Vec<String>,
    },
    /// A chunk map of two backups.
    Compare {
        title: String,
        cells: Vec<Cell>,
        summary: Vec<String>,
    },
    Help,
    QuitWhileRunning,
}

pub use lifeboat_core::repo::chunkmap::Cell;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Plan a push (local → remote) or a pull (remote → local) of one
    /// backup: what the other side lacks. The plan comes back as
    /// `Action::Planned` and runs only when confirmed.
    PlanTransfer {
        push: bool,
        remote: String,
        key: ManifestKey,
    },
    /// Plan a restore to a new file (`from`: straight from this remote,
    /// its missing chunks fetched into the local repository first).
    PlanRestore {
        key: ManifestKey,
        to: String,
        from: Option<String>,
    },
    /// Run a confirmed plan, or forget one that was declined.
    RunPlan(u64),
    DropPlan(u64),
    Backup {
        vm: String,
    },
    /// Fetch every manifest of a remote, to browse it.
    Browse(String),
    Verify {
        deep: bool,
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
    Reload,
    Quit,
}

#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    Loaded(Vec<(ManifestKey, Manifest)>),
    RemoteListed {
        name: String,
        result: Result<(f64, BTreeSet<Id>), String>,
    },
    RemoteBrowsed {
        name: String,
        result: Result<Vec<(ManifestKey, Manifest)>, String>,
    },
    JobStarted {
        id: u64,
        title: String,
    },
    JobProgress {
        id: u64,
        snapshot: Snapshot,
    },
    JobDone {
        id: u64,
        result: Result<String, String>,
        cancelled: bool,
    },
    CompareReady {
        title: String,
        cells: Vec<Cell>,
        summary: Vec<String>,
    },
    /// A plan is ready for confirmation (`lines` say what it will do).
    Planned {
        plan: u64,
        title: String,
        lines: Vec<String>,
    },
    /// Planning found the operation cannot be done (a bad target, …).
    PlanFailed {
        title: String,
        error: String,
    },
    Log(String),
    Tick(DateTime<Utc>),
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

pub struct App {
    pub now: DateTime<Utc>,
    pub repo_path: String,
    /// What the tree and timeline show: the local repository's backups, or
    /// those of the remote named in `source`.
    pub backups: Vec<(ManifestKey, Manifest)>,
    pub source: Option<String>,
    local_backups: Vec<(ManifestKey, Manifest)>,
    local_ids: BTreeSet<Id>,
    remote_backups: BTreeMap<String, Vec<(ManifestKey, Manifest)>>,
    pub inventory: Vec<(String, Vec<String>)>,
    pub remotes: Vec<RemoteView>,
    pub focus: Pane,
    pub tree_sel: usize,
    pub timeline_sel: usize,
    pub job_sel: usize,
    pub jobs: Vec<JobView>,
    pub log: VecDeque<String>,
    pub dialog: Option<Dialog>,
    pub filter: Option<String>,
    pub filtering: bool,
    pub marked: Option<ManifestKey>,
    pub rpo_hours: i64,
    pub quit: bool,
    pub keys: super::keymap::KeyMap,
    /// Derived from `backups`, `inventory`, `filter` and the selection;
    /// rebuilt by `rebuild` when one of those changes, so a keypress over
    /// 10,000 backups does not rescan them all.
    tree_cache: Vec<TreeRow>,
    timeline_cache: Vec<usize>,
    newest_cache: BTreeMap<String, DateTime<Utc>>,
}

const LOG_LINES: usize = 500;

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
            backups: Vec::new(),
            source: None,
            local_backups: Vec::new(),
            local_ids: BTreeSet::new(),
            remote_backups: BTreeMap::new(),
            inventory,
            remotes: remotes
                .into_iter()
                .map(|(name, _url)| RemoteView {
                    name,
                    state: RemoteState::Connecting,
                    ids: None,
                })
                .collect(),
            focus: Pane::Tree,
            tree_sel: 0,
            timeline_sel: 0,
            job_sel: 0,
            jobs: Vec::new(),
            log: VecDeque::new(),
            dialog: None,
            filter: None,
            filtering: false,
            marked: None,
            rpo_hours: 26,
            quit: false,
            keys: super::keymap::KeyMap::default(),
            tree_cache: Vec::new(),
            timeline_cache: Vec::new(),
            newest_cache: BTreeMap::new(),
        };
        app.rebuild();
        app
    }

    /// Effects to run at start: load the local repository, list every remote.
    pub fn start(&self) -> Vec<Effect> {
        let mut e = vec![Effect::Reload];
        e.extend(
            self.remotes
                .iter()
                .map(|r| Effect::ListRemote(r.name.clone())),
        );
        e
    }

    pub fn tree(&self) -> &[TreeRow] {
        &self.tree_cache
    }

    /// Recomputes the derived views (tree, timeline of the selection, newest per VM).
    pub fn rebuild(&mut self) {
        self.tree_cache = self.build_tree();
        self.tree_sel = self.tree_sel.min(self.tree_cache.len().saturating_sub(1));
        self.newest_cache.clear();
        for (k, m) in &self.backups {
            let e = self
                .newest_cache
                .entry(k.vm.clone())
                .or_insert(m.created_at);
            if m.created_at > *e {
                *e = m.created_at;
            }
        }
        self.rebuild_timeline();
    }

    fn rebuild_timeline(&mut self) {
        self.timeline_cache = match self.tree_cache.get(self.tree_sel) {
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
        self.timeline_sel = self
            .timeline_sel
            .min(self.timeline_cache.len().saturating_sub(1));
    }

    fn build_tree(&self) -> Vec<TreeRow> {
        let mut vms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        // The inventory (VMs never backed up show as `never`) belongs to the
        // local view; a remote view shows only what the remote holds.
        if self.source.is_none() {
            for (vm, vols) in &self.inventory {
                vms.entry(vm.clone())
                    .or_default()
                    .extend(vols.iter().cloned());
            }
        }
        for (k, _) in &self.backups {
            vms.entry(k.vm.clone())
                .or_default()
                .insert(k.volume.clone());
        }
        let mut rows = Vec::new();
        for (vm, vols) in vms {
            if let Some(f) = &self.filter {
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
        self.tree().get(self.tree_sel).cloned()
    }

    /// Backups of the selected VM or volume, newest first (from the cache
    /// `rebuild_timeline` keeps, so drawing never rescans every backup).
    pub fn timeline(&self) -> Vec<&(ManifestKey, Manifest)> {
        self.timeline_cache
            .iter()
            .filter_map(|&i| self.backups.get(i))
            .collect()
    }

    pub fn selected_backup(&self) -> Option<(ManifestKey, Manifest)> {
        self.timeline()
            .get(self.timeline_sel)
            .map(|(k, m)| (k.clone(), m.clone()))
    }

    pub fn newest(&self, vm: &str) -> Option<DateTime<Utc>> {
        self.newest_cache.get(vm).copied()
    }

    pub fn rpo(&self, vm: &str) -> Rpo {
        match self.newest(vm) {
            None => Rpo::Never,
            Some(t) => {
                let h = (self.now - t).num_hours();
                if h <= self.rpo_hours {
                    Rpo::Fresh
                } else if h <= self.rpo_hours * 3 {
                    Rpo::Late
                } else {
                    Rpo::Stale
                }
            }
        }
    }

    pub fn running_jobs(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .count()
    }

    fn log(&mut self, line: String) {
        self.log.push_back(line);
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    fn reachable_remotes(&self) -> Vec<String> {
        self.remotes
            .iter()
            .filter(|r| matches!(r.state, RemoteState::Ok { .. }))
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Tick(now) => {
                self.now = now;
                Vec::new()
            }
            Action::Loaded(b) => {
                self.local_ids = b.iter().map(|(k, _)| k.id).collect();
                self.local_backups = b;
                if self.source.is_none() {
                    self.backups = self.local_backups.clone();
                    self.rebuild();
                    self.clamp();
                }
                Vec::new()
            }
            Action::RemoteBrowsed { name, result } => {
                match result {
                    Ok(b) => {
                        if self.source.as_deref() == Some(name.as_str()) {
                            self.backups = b.clone();
                            self.rebuild();
                            self.clamp();
                        }
                        self.remote_backups.insert(name, b);
                    }
                    Err(e) => {
                        self.log(format!("browsing {name}: {e}"));
                        if self.source.as_deref() == Some(name.as_str()) {
                            self.dialog = Some(Dialog::Message {
                                title: format!("Cannot browse {name}"),
                                lines: vec![e],
                            });
                        }
                    }
                }
                Vec::new()
            }
            Action::RemoteListed { name, result } => {
                if let Some(r) = self.remotes.iter_mut().find(|r| r.name == name) {
                    match result {
                        Ok((ms, ids)) => {
                            r.state = RemoteState::Ok {
                                latency_ms: ms,
                                backups: ids.len(),
                            };
                            r.ids = Some(ids);
                        }
                        Err(e) => {
                            r.state = RemoteState::Unreachable(e.clone());
                            self.log.push_back(format!("remote {name}: {e}"));
                        }
                    }
                }
                Vec::new()
            }
            Action::JobStarted { id, title } => {
                self.log(format!("job {id} started: {title}"));
                self.jobs.push(JobView {
                    id,
                    title,
                    state: JobState::Running,
                    progress: None,
                });
                Vec::new()
            }
            Action::JobProgress { id, snapshot } => {
                if let Some(j) = self.jobs.iter_mut().find(|j| j.id == id) {
                    j.progress = Some(snapshot);
                }
                Vec::new()
            }
            Action::JobDone {
                id,
                result,
                cancelled,
            } => {
                let mut effects = vec![Effect::Reload];
                if let Some(j) = self.jobs.iter_mut().find(|j| j.id == id) {
                    j.state = match (&result, cancelled) {
                        (_, true) => JobState::Cancelled,
                        (Ok(msg), _) => JobState::Done(msg.clone()),
                        (Err(e), _) => JobState::Failed(e.clone()),
                    };
                    let line = format!(
                        "job {id} {}: {}",
                        j.title,
                        match &j.state {
                            JobState::Done(m) => format!("done — {m}"),
                            JobState::Failed(e) => format!("FAILED — {e}"),
                            _ => "cancelled".into(),
                        }
                    );
                    if let JobState::Failed(e) = &j.state {
                        self.dialog = Some(Dialog::Message {
                            title: format!("{} failed", j.title),
                            lines: vec![e.clone()],
                        });
                    }
                    self.log(line);
                }
                effects.extend(
                    self.remotes
                        .iter()
                        .map(|r| Effect::ListRemote(r.name.clone())),
                );
                effects
            }
            Action::CompareReady {
                title,
                cells,
                summary,
            } => {
                self.dialog = Some(Dialog::Compare {
                    title,
                    cells,
                    summary,
                });
                Vec::new()
            }
            Action::Planned { plan, title, lines } => {
                self.dialog = Some(Dialog::Confirm {
                    title,
                    lines,
                    effect: Effect::RunPlan(plan),
                });
                Vec::new()
            }
            Action::PlanFailed { title, error } => {
                self.log(format!("{title}: {error}"));
                self.dialog = Some(Dialog::Message {
                    title,
                    lines: vec![error],
                });
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
        self.tree_sel = self.tree_sel.min(n.saturating_sub(1));
        let t = self.timeline().len();
        self.timeline_sel = self.timeline_sel.min(t.saturating_sub(1));
        self.job_sel = self.job_sel.min(self.jobs.len().saturating_sub(1));
    }

    fn key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return self.ask_quit();
        }
        if let Some(d) = self.dialog.take() {
            return self.dialog_key(d, k);
        }
        if self.filtering {
            match k.code {
                KeyCode::Enter => self.filtering = false,
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter = None;
                }
                KeyCode::Backspace => {
                    if let Some(f) = &mut self.filter {
                        f.pop();
                    }
                }
                KeyCode::Char(c) => self.filter.get_or_insert_with(String::new).push(c),
                _ => {}
            }
            self.tree_sel = 0;
            self.timeline_sel = 0;
            self.rebuild();
            return Vec::new();
        }
        let code = match k.code {
            KeyCode::Char(c) => match self.keys.translate(c) {
                Some(d) => KeyCode::Char(d),
                None => return Vec::new(),
            },
            other => other,
        };
        match code {
            KeyCode::Char('q') => return self.ask_quit(),
            KeyCode::Char('?') => self.dialog = Some(Dialog::Help),
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Pane::Tree => Pane::Timeline,
                    Pane::Timeline => Pane::Jobs,
                    Pane::Jobs => Pane::Tree,
                }
            }
            KeyCode::BackTab => {
                self.focus = match self.focus {
                    Pane::Tree => Pane::Jobs,
                    Pane::Timeline => Pane::Tree,
                    Pane::Jobs => Pane::Timeline,
                }
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1),
            KeyCode::PageDown => self.move_sel(10),
            KeyCode::PageUp => self.move_sel(-10),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') if self.focus == Pane::Tree => {
                self.focus = Pane::Timeline
            }
            KeyCode::Left | KeyCode::Char('h') | KeyCode::Esc if self.focus == Pane::Timeline => {
                self.focus = Pane::Tree
            }
            KeyCode::Char('/') => {
                self.filtering = true;
                self.filter = Some(String::new());
            }
            KeyCode::Char('R') => {
                let mut e = vec![Effect::Reload];
                e.extend(
                    self.remotes
                        .iter()
                        .map(|r| Effect::ListRemote(r.name.clone())),
                );
                return e;
            }
            KeyCode::Char('p') => match self.source.clone() {
                None => return self.plan_push(None),
                Some(remote) => return self.plan_pull(remote),
            },
            KeyCode::Char('s') => return self.next_source(),
            KeyCode::Char('b') => self.plan_backup(),
            KeyCode::Char('r') => {
                if let Some((key, m)) = self.selected_backup() {
                    let ext = m.volume.format.to_string();
                    let from = self
                        .source
                        .as_ref()
                        .map(|r| format!(" from {r}"))
                        .unwrap_or_default();
                    self.dialog = Some(Dialog::Prompt {
                        title: format!(
                            "Restore {}/{}{from} to (path; .qcow2 writes qcow2)",
                            key.vm, key.volume
                        ),
                        input: format!("./{}-{}.{ext}", key.vm, key.volume),
                        key,
                    });
                } else {
                    self.no_backup();
                }
            }
            KeyCode::Char('v') | KeyCode::Char('V') => {
                let deep = code == KeyCode::Char('V');
                self.dialog = Some(Dialog::Confirm {
                    title: if deep { "Deep verify" } else { "Quick verify" }.into(),
                    lines: vec![
                        format!("repository: {}", self.repo_path),
                        format!("{} backups", self.backups.len()),
                        if deep {
                            "reads, decodes and re-hashes every chunk".into()
                        } else {
                            "checks every referenced object is present".into()
                        },
                    ],
                    effect: Effect::Verify { deep },
                });
            }
            KeyCode::Char('c') if self.source.is_some() => {
                // In a remote view: its copy against the local repository.
                match (self.selected_backup(), self.source.clone()) {
                    (Some((key, _)), Some(remote)) => {
                        return vec![Effect::CompareRemote { remote, key }]
                    }
                    _ => self.no_backup(),
                }
            }
            KeyCode::Char('C') => match (self.selected_backup(), &self.source) {
                (Some((key, _)), None) => {
                    if self
                        .inventory
                        .iter()
                        .any(|(vm, vols)| *vm == key.vm && vols.contains(&key.volume))
                    {
                        return vec![Effect::CompareLive { key }];
                    }
                    self.dialog = Some(Dialog::Message {
                        title: "No live volume".into(),
                        lines: vec![format!(
                            "{}/{} is not in the inventory of the config file.",
                            key.vm, key.volume
                        )],
                    });
                }
                (Some(_), Some(_)) => {
                    self.dialog = Some(Dialog::Message {
                        title: "Compare with the live volume".into(),
                        lines: vec!["Switch to the local view (s) first.".into()],
                    });
                }
                (None, _) => self.no_backup(),
            },
            KeyCode::Char('c') => {
                if let Some((key, _)) = self.selected_backup() {
                    match self.marked.take() {
                        None => {
                            self.log(format!(
                                "marked {}/{} {} for compare: press c on another backup",
                                key.vm,
                                key.volume,
                                key.id.short()
                            ));
                            self.marked = Some(key);
                        }
                        Some(a) if a == key => self.log("compare: pick a different backup".into()),
                        Some(a) => return vec![Effect::Compare { a, b: key }],
                    }
                } else {
                    self.no_backup();
                }
            }
            KeyCode::Char('x') if self.focus == Pane::Jobs => {
                if let Some(j) = self.jobs.get(self.job_sel) {
                    if j.state == JobState::Running {
                        let id = j.id;
                        self.log(format!("cancelling job {id}"));
                        return vec![Effect::Cancel(id)];
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn no_backup(&mut self) {
        self.dialog = Some(Dialog::Message {
            title: "No backup selected".into(),
            lines: vec![
                "Select a VM or volume with backups, then a backup in the timeline.".into(),
            ],
        });
    }

    fn ask_quit(&mut self) -> Vec<Effect> {
        if self.running_jobs() > 0 {
            self.dialog = Some(Dialog::QuitWhileRunning);
            Vec::new()
        } else {
            self.quit = true;
            vec![Effect::Quit]
        }
    }

    /// Cycles what the console shows: local, then each reachable remote.
    fn next_source(&mut self) -> Vec<Effect> {
        let reachable = self.reachable_remotes();
        let next = match &self.source {
            None => reachable.first().cloned(),
            Some(cur) => reachable.iter().skip_while(|r| *r != cur).nth(1).cloned(),
        };
        self.source = next.clone();
        self.tree_sel = 0;
        self.timeline_sel = 0;
        self.marked = None;
        let effects = match &next {
            None => {
                self.backups = self.local_backups.clone();
                Vec::new()
            }
            Some(name) => {
                self.backups = self.remote_backups.get(name).cloned().unwrap_or_default();
                self.log(format!("browsing {name}"));
                vec![Effect::Browse(name.clone())]
            }
        };
        self.rebuild();
        effects
    }

    fn plan_pull(&mut self, remote: String) -> Vec<Effect> {
        let Some((key, _)) = self.selected_backup() else {
            self.no_backup();
            return Vec::new();
        };
        self.log(format!(
            "planning a pull of {}/{} {} from {remote}…",
            key.vm,
            key.volume,
            key.id.short()
        ));
        vec![Effect::PlanTransfer {
            push: false,
            remote,
            key,
        }]
    }

    fn plan_backup(&mut self) {
        let Some(row) = self.selected_row() else {
            return;
        };
        match self.inventory.iter().find(|(vm, _)| *vm == row.vm) {
            Some((vm, vols)) if self.source.is_none() => {
                self.dialog = Some(Dialog::Confirm {
                    title: format!("Back up {vm} now"),
                    lines: vec![
                        format!("volumes: {}", vols.join(", ")),
                        format!("into {}; only new chunks are stored", self.repo_path),
                    ],
                    effect: Effect::Backup { vm: vm.clone() },
                });
            }
            _ => {
                self.dialog = Some(Dialog::Message {
                    title: "Cannot back up this VM here".into(),
                    lines: vec![format!(
                        "{} is not in the inventory of the config file, or a remote is shown (s switches back to local).",
                        row.vm
                    )],
                });
            }
        }
    }

    fn plan_push(&mut self, remote: Option<String>) -> Vec<Effect> {
        let Some((key, _)) = self.selected_backup() else {
            self.no_backup();
            return Vec::new();
        };
        let reachable = self.reachable_remotes();
        let remote = match (remote, reachable.len()) {
            (Some(r), _) => r,
            (None, 0) => {
                self.dialog = Some(Dialog::Message {
                    title: "No reachable remote".into(),
                    lines: vec!["Add one with `lifeboat remote add`, or wait for it to connect (R refreshes).".into()],
                });
                return Vec::new();
            }
            (None, 1) => reachable[0].clone(),
            (None, _) => {
                self.dialog = Some(Dialog::ChooseRemote { key, choice: 0 });
                return Vec::new();
            }
        };
        self.log(format!(
            "planning a push of {}/{} {} to {remote}…",
            key.vm,
            key.volume,
            key.id.short()
        ));
        vec![Effect::PlanTransfer {
            push: true,
            remote,
            key,
        }]
    }

    fn dialog_key(&mut self, d: Dialog, k: KeyEvent) -> Vec<Effect> {
        match d {
            Dialog::Confirm {
                title,
                lines,
                effect,
            } => match k.code {
                KeyCode::Enter | KeyCode::Char('y') => return vec![effect],
                KeyCode::Esc | KeyCode::Char('n') => {
                    if let Effect::RunPlan(id) = effect {
                        return vec![Effect::DropPlan(id)];
                    }
                }
                _ => {
                    self.dialog = Some(Dialog::Confirm {
                        title,
                        lines,
                        effect,
                    })
                }
            },
            Dialog::Prompt {
                title,
                mut input,
                key,
            } => match k.code {
                KeyCode::Enter => {
                    if input.trim().is_empty() {
                        self.dialog = Some(Dialog::Prompt { title, input, key });
                    } else {
                        // The target is checked by the restore plan (in the
                        // core, off this thread); update does no I/O.
                        self.log(format!("planning a restore to {input}…"));
                        return vec![Effect::PlanRestore {
                            key,
                            to: input,
                            from: self.source.clone(),
                        }];
                    }
                }
                KeyCode::Esc => {}
                KeyCode::Backspace => {
                    input.pop();
                    self.dialog = Some(Dialog::Prompt { title, input, key });
                }
                KeyCode::Char(c) => {
                    input.push(c);
                    self.dialog = Some(Dialog::Prompt { title, input, key });
                }
                _ => self.dialog = Some(Dialog::Prompt { title, input, key }),
            },
            Dialog::ChooseRemote { key, choice } => {
                let reachable = self.reachable_remotes();
                match k.code {
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.dialog = Some(Dialog::ChooseRemote {
                            key,
                            choice: (choice + 1).min(reachable.len().saturating_sub(1)),
                        })
                    }
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.dialog = Some(Dialog::ChooseRemote {
                            key,
                            choice: choice.saturating_sub(1),
                        })
                    }
                    KeyCode::Enter => return self.plan_push(reachable.get(choice).cloned()),
                    KeyCode::Esc => {}
                    _ => self.dialog = Some(Dialog::ChooseRemote { key, choice }),
                }
            }
            Dialog::QuitWhileRunning => {
                if matches!(k.code, KeyCode::Char('y') | KeyCode::Enter) {
                    self.quit = true;
                    return vec![Effect::Quit];
                }
            }
            other => {
                // Message, Compare, Help: any of Esc, Enter, q closes; other keys keep it.
                if !matches!(
                    k.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Char('?')
                ) {
                    self.dialog = Some(other);
                }
            }
        }
        Vec::new()
    }

    fn move_sel(&mut self, d: i64) {
        let step = |v: usize, n: usize| -> usize {
            (v as i64 + d).clamp(0, n.saturating_sub(1) as i64) as usize
        };
        match self.focus {
            Pane::Tree => {
                self.tree_sel = step(self.tree_sel, self.tree().len());
                self.timeline_sel = 0;
                self.rebuild_timeline();
            }
            Pane::Timeline => self.timeline_sel = step(self.timeline_sel, self.timeline().len()),
            Pane::Jobs => self.job_sel = step(self.job_sel, self.jobs.len()),
        }
    }

    /// Presence of a backup on each remote: Some(true) held with the same
    /// manifest id, Some(false) missing, None unknown (not listed yet).
    pub fn presence(&self, key: &ManifestKey) -> Vec<Option<bool>> {
        self.presence_columns()
            .iter()
            .map(|c| match c.as_str() {
                "local" => Some(self.local_ids.contains(&key.id)),
                name => self
                    .remotes
                    .iter()
                    .find(|r| r.name == name)
                    .and_then(|r| r.ids.as_ref().map(|ids| ids.contains(&key.id))),
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
}
