//! Keys and the mouse. Modifiers are matched exactly: a key with Ctrl or
//! Alt is never taken for the bare key (Ctrl-V is not `v`), and only the
//! text prompts, which edit like a shell line, give Ctrl and Alt a meaning.

use crossterm::event::{
    Event, KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use lifeboat_core::text::escape;
use ratatui::layout::{Position, Rect};
use tui_input::backend::crossterm::EventHandler;

use super::{App, Dialog, Effect, JobState, LineInput, Lower, Pane, Scope};
use crate::tui::view;

/// Modifiers that change what a key means.
const CHORD: KeyModifiers = KeyModifiers::CONTROL
    .union(KeyModifiers::ALT)
    .union(KeyModifiers::SUPER)
    .union(KeyModifiers::HYPER)
    .union(KeyModifiers::META);

impl App {
    /// The unlock prompt: typed characters, Backspace, Ctrl-U to clear,
    /// Enter to try, Esc to leave the repository locked for the session.
    fn unlock_key(
        &mut self,
        mut typed: super::Secret,
        error: Option<String>,
        k: KeyEvent,
    ) -> Vec<Effect> {
        match k.code {
            KeyCode::Esc => {
                self.unlock_declined = true;
                self.log(
                    "the local repository stays locked: start the console with LIFEBOAT_PASSPHRASE_FILE or LIFEBOAT_KEY_FILE to open it".into(),
                );
                return Vec::new();
            }
            KeyCode::Enter if !typed.0.is_empty() => return vec![Effect::Unlock(typed)],
            KeyCode::Char('u') if k.modifiers == KeyModifiers::CONTROL => typed.0.clear(),
            KeyCode::Backspace => {
                typed.0.pop();
            }
            KeyCode::Char(c) if !k.modifiers.intersects(CHORD) && typed.0.len() < 4096 => {
                typed.0.push(c)
            }
            _ => {}
        }
        self.dialog = Some(Dialog::Unlock { typed, error });
        Vec::new()
    }

    pub(super) fn key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.modifiers == KeyModifiers::CONTROL && k.code == KeyCode::Char('c') {
            return self.ask_quit();
        }
        if let Some(Dialog::Unlock { .. }) = &self.dialog {
            if let Some(Dialog::Unlock { typed, error }) = self.dialog.take() {
                return self.unlock_key(typed, error, k);
            }
        }
        // Text prompts take every key, Ctrl and Alt editing included.
        if let Some(Dialog::Prompt { .. }) = &self.dialog {
            if let Some(Dialog::Prompt { title, input, what }) = self.dialog.take() {
                return self.prompt_key(title, input, what, k);
            }
        }
        if self.typing.is_some() {
            return self.typing_key(k);
        }
        if k.modifiers.intersects(CHORD) {
            return Vec::new();
        }
        if let Some(d) = self.dialog.take() {
            return self.dialog_key(d, k);
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
            KeyCode::Char('?') => self.dialog = Some(Dialog::Help { scroll: 0 }),
            KeyCode::Tab => self.cycle_focus(1),
            KeyCode::BackTab => self.cycle_focus(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1),
            KeyCode::PageDown => self.move_sel(10),
            KeyCode::PageUp => self.move_sel(-10),
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(i64::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(i64::MAX / 2),
            KeyCode::Char('z') => self.zoom = !self.zoom,
            KeyCode::Char('o') => self.cycle_lower(),
            KeyCode::Esc if self.zoom => self.zoom = false,
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') if self.focus == Pane::Tree => {
                self.focus = Pane::Timeline
            }
            KeyCode::Left | KeyCode::Char('h') | KeyCode::Esc if self.focus == Pane::Timeline => {
                self.focus = Pane::Tree
            }
            KeyCode::Enter if self.focus == Pane::Jobs => self.open_job_log(),
            KeyCode::Char('/') => {
                let pane = if self.focus == Pane::Timeline {
                    Pane::Timeline
                } else {
                    Pane::Tree
                };
                self.typing = Some((pane, LineInput::default()));
            }
            KeyCode::Char('n') => self.next_match(true),
            KeyCode::Char('R') => {
                self.refreshed_at = Some(self.now);
                self.status = None;
                return self.refresh();
            }
            KeyCode::Char('p') => {
                let scope = self.focused_scope();
                return match (scope, self.source.clone()) {
                    (None, _) => {
                        self.no_backup();
                        Vec::new()
                    }
                    (Some(scope), None) => self.plan_push(None, scope),
                    (Some(scope), Some(remote)) => self.plan_pull(remote, scope),
                };
            }
            KeyCode::Char('A') => {
                return match self.source.clone() {
                    None => self.plan_push(None, Scope::All),
                    Some(remote) => self.plan_pull(remote, Scope::All),
                }
            }
            KeyCode::Char('s') => return self.next_source(),
            KeyCode::Char('b') => self.plan_backup(),
            KeyCode::Char('D') => self.choose_drill_source(),
            KeyCode::Char('S') => self.open_plans(),
            KeyCode::Char('u') => self.choose_cloud(),
            KeyCode::Char('L') => {
                if self.clouds.is_empty() {
                    self.message(
                        super::CLOUDS_TITLE,
                        "No cloud targets: add a [cloud.NAME] table (provider openstack or aws) to the config.",
                    );
                    return Vec::new();
                }
                self.dialog = Some(Dialog::Message {
                    title: super::CLOUDS_TITLE.into(),
                    lines: vec![format!("checking {} cloud target(s)…", self.clouds.len())],
                    scroll: 0,
                });
                return vec![Effect::CheckClouds];
            }
            KeyCode::Char('N') | KeyCode::Char('K') => {
                let Some(row) = self.selected_row() else {
                    self.no_backup();
                    return Vec::new();
                };
                if self.source.is_some() {
                    self.message(
                        "Policies run on the local repository",
                        &format!("{} switches back to local.", self.keys.key("source")),
                    );
                    return Vec::new();
                }
                if code == KeyCode::Char('K') {
                    return vec![Effect::PlanPrune { vm: row.vm }];
                }
                let policy = self.rpo.get(&row.vm).and_then(|r| r.policy.clone());
                match policy {
                    Some(p) => {
                        self.dialog = Some(Dialog::Confirm {
                            title: format!("Run policy {p} for {} now", row.vm),
                            lines: vec![
                                "back up, quick verify, push to the policy's remotes, then apply its retention".into(),
                                "recorded in the run history like a scheduled run".into(),
                            ],
                            effect: Effect::RunPolicy { vm: row.vm },
                        })
                    }
                    None => self.message(
                        "No policy",
                        &format!(
                            "{} has no policy: set default_policy, or policy on its [[vm]] in the config.",
                            row.vm
                        ),
                    ),
                }
            }
            KeyCode::Char('r') => self.ask_restore(),
            KeyCode::Char('W') => self.ask_restore_vm(),
            KeyCode::Char('I') => self.ask_instant(),
            KeyCode::Char('f') => return self.open_files(),
            KeyCode::Char('v') | KeyCode::Char('V') => {
                let deep = code == KeyCode::Char('V');
                let kind = if deep { "Deep verify" } else { "Quick verify" };
                self.dialog = Some(match self.source.clone() {
                    None => Dialog::Confirm {
                        title: kind.into(),
                        lines: vec![
                            format!("repository: {}", self.repo_path),
                            format!("{} backups", self.local_ids.len()),
                            if deep {
                                "reads, decodes and re-hashes every chunk".into()
                            } else {
                                "checks every referenced object is present".into()
                            },
                            "the result is recorded per backup (Details shows it)".into(),
                        ],
                        effect: Effect::Verify { deep, remote: None },
                    },
                    Some(remote) => Dialog::Confirm {
                        title: format!("{kind} of {remote}"),
                        lines: vec![
                            format!(
                                "{} backups on {remote}, checked through its API",
                                self.backups.len()
                            ),
                            if deep {
                                "fetches, decodes and re-hashes every chunk: reads the whole repository over the link".into()
                            } else {
                                "fetches every manifest and index; asks for every chunk".into()
                            },
                        ],
                        effect: Effect::Verify {
                            deep,
                            remote: Some(remote),
                        },
                    },
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
            KeyCode::Char('C') => return self.compare_live(),
            KeyCode::Char('c') => return self.compare_pick(),
            KeyCode::Char('x') if self.focus == Pane::Jobs => {
                if let Some(j) = self.jobs.list.get(self.jobs.sel) {
                    if j.state == JobState::Running {
                        self.dialog = Some(Dialog::Confirm {
                            title: format!("Cancel job #{}?", j.id),
                            lines: vec![
                                j.title.clone(),
                                if j.kind == super::JobKind::CloudRestore {
                                    "What it created in the cloud is removed; its log lists what."
                                        .into()
                                } else {
                                    "Nothing half-done becomes visible; running it again resumes."
                                        .into()
                                },
                            ],
                            effect: Effect::Cancel(j.id),
                        });
                    }
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// The filter (tree) or search (timeline) being typed: applied as it
    /// changes; Enter keeps it, Esc clears it.
    fn typing_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        let Some((pane, mut input)) = self.typing.take() else {
            return Vec::new();
        };
        match (k.code, k.modifiers) {
            (KeyCode::Enter, _) => {}
            (KeyCode::Esc, _) => {
                match pane {
                    Pane::Timeline => self.browser.search = None,
                    _ => self.browser.filter = None,
                }
                self.rebuild();
                return Vec::new();
            }
            _ => {
                input.0.handle_event(&Event::Key(k));
                self.typing = Some((pane, input.clone()));
            }
        }
        let text = input.value().to_string();
        match pane {
            Pane::Timeline => {
                self.browser.search = (!text.is_empty()).then_some(text);
                self.next_match(false);
            }
            _ => {
                self.browser.filter = Some(text);
                self.browser.tree_sel = 0;
                self.browser.timeline_sel = 0;
                self.rebuild();
            }
        }
        Vec::new()
    }

    /// Moves the timeline selection to the next row matching the search
    /// (time, volume, id or note); `after`: strictly after the current row.
    fn next_match(&mut self, after: bool) {
        let Some(term) = self.browser.search.clone().map(|s| s.to_lowercase()) else {
            return;
        };
        let tl = self.timeline();
        let n = tl.len();
        let start = self.browser.timeline_sel + usize::from(after);
        let hit = (0..n).map(|i| (start + i) % n.max(1)).find(|&i| {
            let (k, m) = tl[i];
            let text = format!(
                "{} {} {} {}",
                m.created_at.format("%Y-%m-%d %H:%M"),
                k.volume,
                k.id.to_hex(),
                m.labels.note.as_deref().unwrap_or_default()
            )
            .to_lowercase();
            text.contains(&term)
        });
        match hit {
            Some(i) => {
                self.browser.timeline_sel = i;
                self.focus = Pane::Timeline;
            }
            None => {
                self.status = Some(super::Status {
                    text: format!("no backup in this timeline matches {term:?}"),
                    error: false,
                })
            }
        }
    }

    fn prompt_key(
        &mut self,
        title: String,
        mut input: LineInput,
        what: super::RestoreWhat,
        k: KeyEvent,
    ) -> Vec<Effect> {
        use super::RestoreWhat;
        match (k.code, what) {
            (KeyCode::Enter, RestoreWhat::FindFiles(mut view)) if k.modifiers.is_empty() => {
                let text = input.value().trim().to_string();
                if text.is_empty() {
                    self.dialog = Some(Dialog::Files(*view));
                    return Vec::new();
                }
                let effect = Effect::ListFiles {
                    key: view.key.clone(),
                    from: view.from.clone(),
                    path: view.path.clone(),
                    find: Some(text),
                };
                view.loading = true;
                self.dialog = Some(Dialog::Files(*view));
                vec![effect]
            }
            (KeyCode::Esc, RestoreWhat::FindFiles(view)) => {
                self.dialog = Some(Dialog::Files(*view));
                Vec::new()
            }
            (KeyCode::Enter, what) if k.modifiers.is_empty() => {
                let to = input.value().trim().to_string();
                if to.is_empty() {
                    self.dialog = Some(Dialog::Prompt { title, input, what });
                    return Vec::new();
                }
                // The target is checked by the restore plan (in the core,
                // off this thread); update does no I/O.
                self.log(format!("planning a restore to {to}…"));
                let from = self.source.clone();
                vec![match what {
                    RestoreWhat::Volume(key) => Effect::PlanRestore { key, to, from },
                    RestoreWhat::Instant { reference, label } => Effect::InstantRestore {
                        reference,
                        label,
                        dir: to,
                        from,
                    },
                    RestoreWhat::Extract { key, from, path } => Effect::ExtractFiles {
                        key,
                        from,
                        path,
                        to,
                    },
                    RestoreWhat::FindFiles(_) => return Vec::new(),
                    RestoreWhat::Vm {
                        reference,
                        label,
                        define,
                    } => Effect::PlanRestoreVm {
                        reference,
                        label,
                        dir: to,
                        define,
                        from,
                    },
                }]
            }
            (KeyCode::Esc, _) => Vec::new(),
            (
                KeyCode::Tab,
                RestoreWhat::Vm {
                    reference,
                    label,
                    define,
                },
            ) => {
                self.dialog = Some(Dialog::Prompt {
                    title,
                    input,
                    what: RestoreWhat::Vm {
                        reference,
                        label,
                        define: !define,
                    },
                });
                Vec::new()
            }
            (_, what) => {
                input.0.handle_event(&Event::Key(k));
                self.dialog = Some(Dialog::Prompt { title, input, what });
                Vec::new()
            }
        }
    }

    /// What `p` pushes or pulls: the selected backup in the timeline, the
    /// VM or volume in the tree.
    fn focused_scope(&self) -> Option<Scope> {
        match self.focus {
            Pane::Tree => self.selected_row().map(|r| match r.volume {
                Some(volume) => Scope::Volume { vm: r.vm, volume },
                None => Scope::Vm(r.vm),
            }),
            _ => self.selected_backup().map(|(k, _)| Scope::Backup(k)),
        }
    }

    fn ask_restore(&mut self) {
        let Some((key, m)) = self.selected_backup() else {
            return self.no_backup();
        };
        let ext = m.volume.format.to_string();
        let from = self.source_note();
        self.dialog = Some(Dialog::Prompt {
            title: format!(
                "Restore {}/{}{from} to (path; .qcow2 writes qcow2)",
                key.vm, key.volume
            ),
            input: LineInput::new(&format!("./{}-{}.{ext}", key.vm, key.volume)),
            what: super::RestoreWhat::Volume(key),
        });
    }

    /// Asks where the selected backup's whole VM set goes: a directory for
    /// its volumes and its domain XML.
    fn ask_restore_vm(&mut self) {
        let Some((vm, reference, label)) = self.selected_set() else {
            return self.no_backup();
        };
        let from = self.source_note();
        self.dialog = Some(Dialog::Prompt {
            title: format!("Restore the VM {label}{from} into (a new or empty directory)"),
            input: LineInput::new(&format!("./{vm}-restored")),
            what: super::RestoreWhat::Vm {
                reference,
                label,
                define: false,
            },
        });
    }

    /// Asks where an instant restore puts the selected set's disks.
    fn ask_instant(&mut self) {
        let Some((vm, reference, label)) = self.selected_set() else {
            return self.no_backup();
        };
        let from = self.source_note();
        self.dialog = Some(Dialog::Prompt {
            title: format!("Start the VM {label}{from} now; copy its disks into (a new directory)"),
            input: LineInput::new(&format!("./{vm}-instant")),
            what: super::RestoreWhat::Instant { reference, label },
        });
    }

    fn compare_live(&mut self) -> Vec<Effect> {
        match (self.selected_backup(), &self.source) {
            (Some((key, _)), None) => {
                if self
                    .inventory
                    .iter()
                    .any(|(vm, vols)| *vm == key.vm && vols.contains(&key.volume))
                {
                    return vec![Effect::CompareLive { key }];
                }
                self.message(
                    "No live volume",
                    &format!(
                        "{}/{} is not in the inventory of the config file.",
                        key.vm, key.volume
                    ),
                );
            }
            (Some(_), Some(_)) => {
                self.message(
                    "Compare with the live volume",
                    "Switch to the local view (s) first.",
                );
            }
            (None, _) => self.no_backup(),
        }
        Vec::new()
    }

    /// `c`: mark a backup, then compare it with the next one picked. Two
    /// different volumes are compared only after a warning.
    fn compare_pick(&mut self) -> Vec<Effect> {
        let Some((key, _)) = self.selected_backup() else {
            self.no_backup();
            return Vec::new();
        };
        match self.browser.marked.take() {
            None => {
                self.status = Some(super::Status {
                    text: format!(
                        "marked {}/{} {} for compare: press {} on another backup",
                        key.vm,
                        key.volume,
                        key.id.short(),
                        self.keys.key("compare")
                    ),
                    error: false,
                });
                self.browser.marked = Some(key);
            }
            Some(a) if a == key => {
                self.status = Some(super::Status {
                    text: "compare: pick a different backup".into(),
                    error: false,
                });
                self.browser.marked = Some(a);
            }
            Some(a) if a.vm != key.vm || a.volume != key.volume => {
                self.dialog = Some(Dialog::Confirm {
                    title: "Compare different volumes?".into(),
                    lines: vec![
                        format!(
                            "A is {}/{}, B is {}/{}.",
                            a.vm, a.volume, key.vm, key.volume
                        ),
                        "Different volumes share little: the map will show mostly changes.".into(),
                    ],
                    effect: Effect::Compare { a, b: key },
                });
            }
            Some(a) => return vec![Effect::Compare { a, b: key }],
        }
        Vec::new()
    }

    fn open_job_log(&mut self) {
        let Some(j) = self.jobs.list.get(self.jobs.sel) else {
            return;
        };
        let mut lines = vec![
            format!(
                "started {}{}",
                j.started_at.format("%Y-%m-%d %H:%M:%S"),
                j.ended_at
                    .map(|t| format!(", ended {}", t.format("%Y-%m-%d %H:%M:%S")))
                    .unwrap_or_default()
            ),
            match &j.state {
                JobState::Running => "running".to_string(),
                JobState::Done(m) => format!("done: {m}"),
                JobState::Failed(e) => format!("FAILED: {e}"),
                JobState::Cancelled => "cancelled".into(),
            },
            String::new(),
        ];
        lines.extend(j.log.iter().cloned());
        if !j.output.is_empty() {
            // The job's own lines: a cloud restore's states, a drill's console.
            lines.push(String::new());
            lines.push("output:".into());
            lines.extend(j.output.iter().map(|l| escape(l).into_owned()));
        }
        let title = match j.id {
            0 => format!("Job (earlier session): {}", j.title),
            id => format!("Job #{id}: {}", j.title),
        };
        self.dialog = Some(Dialog::Message {
            title,
            lines,
            scroll: 0,
        });
    }

    fn cycle_focus(&mut self, d: i64) {
        let order = self.focus_order();
        if order.is_empty() {
            return;
        }
        let i = order.iter().position(|p| *p == self.focus).unwrap_or(0) as i64;
        let n = order.len() as i64;
        self.focus = order[((i + d).rem_euclid(n)) as usize];
    }

    fn cycle_lower(&mut self) {
        self.lower = match self.lower {
            Lower::Jobs => Lower::Log,
            Lower::Log => Lower::Details,
            Lower::Details => Lower::Jobs,
        };
        // Keep focus on a pane that is shown.
        if !self.focus_order().contains(&self.focus) {
            self.focus = match self.lower {
                Lower::Jobs => Pane::Jobs,
                Lower::Log => Pane::Log,
                Lower::Details => Pane::Timeline,
            };
        }
    }

    pub(super) fn ask_quit(&mut self) -> Vec<Effect> {
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
        if next.is_none() && self.source.is_none() {
            self.status = Some(super::Status {
                text: "no reachable remote to show (R refreshes)".into(),
                error: false,
            });
        }
        self.source = next.clone();
        self.browser.tree_sel = 0;
        self.browser.timeline_sel = 0;
        self.browser.marked = None;
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

    pub(super) fn plan_pull(&mut self, remote: String, scope: Scope) -> Vec<Effect> {
        self.log(format!(
            "planning a pull of {} from {remote}…",
            scope.describe()
        ));
        vec![Effect::PlanTransfer {
            push: false,
            remote,
            scope,
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
            _ => self.message(
                "Cannot back up this VM here",
                &format!(
                    "{} is not in the inventory of the config file, or a remote is shown ({} switches back to local).",
                    row.vm,
                    self.keys.key("source")
                ),
            ),
        }
    }

    /// " from REMOTE" in a remote view, for titles.
    fn source_note(&self) -> String {
        self.source
            .as_ref()
            .map(|r| format!(" from {r}"))
            .unwrap_or_default()
    }

    /// The selected backup's VM set: its VM, a reference that names exactly
    /// it (its newest time) and how to show it ("web set of 2026-11-28
    /// 01:47").
    fn selected_set(&self) -> Option<(String, String, String)> {
        let (key, m) = self.selected_backup()?;
        let newest = self
            .backups_of_set(&key.vm, &m.set)
            .into_iter()
            .max()
            .unwrap_or(m.created_at);
        Some((
            key.vm.clone(),
            format!(
                "{}@{}",
                key.vm,
                newest.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            ),
            format!("{} set of {}", key.vm, newest.format("%Y-%m-%d %H:%M")),
        ))
    }

    /// Asks which cloud the selected backup's VM set goes to.
    fn choose_cloud(&mut self) {
        let Some((_, reference, label)) = self.selected_set() else {
            return self.no_backup();
        };
        if self.clouds.is_empty() {
            return self.message(
                "No cloud targets",
                "Add a [cloud.NAME] table (provider openstack or aws) to the config.",
            );
        }
        self.dialog = Some(Dialog::ChooseCloud {
            label,
            reference,
            targets: self.clouds.clone(),
            choice: 0,
        });
    }

    /// Asks where to drill the selected VM from: the local repository or
    /// a remote, its configured default first.
    fn choose_drill_source(&mut self) {
        let Some(row) = self.selected_row() else {
            self.no_backup();
            return;
        };
        let mut sources: Vec<String> = vec!["local".into()];
        sources.extend(self.remotes.iter().map(|r| r.name.clone()));
        let default = self
            .drill_defaults
            .get(&row.vm)
            .cloned()
            .or_else(|| self.source.clone())
            .unwrap_or_else(|| "local".into());
        // A default that is known to hold nothing of the VM gives way to
        // the first source that does (a drill of nothing fails at once).
        let holds = |s: &str| self.source_holds(s, &row.vm);
        let choice = match sources.iter().position(|s| *s == default) {
            Some(i) if holds(&sources[i]) != Some(false) => i,
            other => sources
                .iter()
                .position(|s| holds(s) == Some(true))
                .or(other)
                .unwrap_or(0),
        };
        self.dialog = Some(Dialog::ChooseDrillSource {
            vm: row.vm,
            sources,
            choice,
        });
    }

    /// Whether a repository holds a backup of `vm`, as far as the console
    /// knows (None: not known yet).
    pub(super) fn source_holds(&self, source: &str, vm: &str) -> Option<bool> {
        if source == "local" {
            return Some(self.local_backups.iter().any(|(k, _)| k.vm == vm));
        }
        if let Some(b) = self.remote_backups.get(source) {
            return Some(b.iter().any(|(k, _)| k.vm == vm));
        }
        let ids = self
            .remotes
            .iter()
            .find(|r| r.name == source)?
            .ids
            .as_ref()?;
        let mine: Vec<&lifeboat_core::format::Id> = self
            .local_backups
            .iter()
            .filter(|(k, _)| k.vm == vm)
            .map(|(k, _)| &k.id)
            .collect();
        // Known only when it holds one of ours; it may hold others.
        mine.iter().any(|id| ids.contains(id)).then_some(true)
    }

    pub(super) fn plan_push(&mut self, remote: Option<String>, scope: Scope) -> Vec<Effect> {
        let reachable = self.reachable_remotes();
        let remote = match (remote, reachable.len()) {
            (Some(r), _) => r,
            (None, 0) => {
                self.message(
                    "No reachable remote",
                    "Add one with `lifeboat remote add`, or wait for it to connect (R refreshes).",
                );
                return Vec::new();
            }
            (None, 1) => reachable[0].clone(),
            (None, _) => {
                self.dialog = Some(Dialog::ChooseRemote { scope, choice: 0 });
                return Vec::new();
            }
        };
        self.log(format!(
            "planning a push of {} to {remote}…",
            scope.describe()
        ));
        vec![Effect::PlanTransfer {
            push: true,
            remote,
            scope,
        }]
    }

    pub(super) fn move_sel(&mut self, d: i64) {
        let step = |v: usize, n: usize| -> usize {
            (v as i64)
                .saturating_add(d)
                .clamp(0, n.saturating_sub(1) as i64) as usize
        };
        match self.focus {
            Pane::Tree => {
                self.browser.tree_sel = step(self.browser.tree_sel, self.tree().len());
                self.browser.timeline_sel = 0;
                self.rebuild_timeline();
            }
            Pane::Timeline => {
                self.browser.timeline_sel = step(self.browser.timeline_sel, self.timeline().len())
            }
            Pane::Jobs => self.jobs.sel = step(self.jobs.sel, self.jobs.list.len()),
            // The view bounds the scroll by the lines it has.
            Pane::Details => {
                self.browser.details_scroll = (self.browser.details_scroll as i64)
                    .saturating_add(d)
                    .clamp(0, 200) as usize
            }
            // The Log scrolls back from its newest line (0 follows).
            Pane::Log => {
                self.log.scroll = (self.log.scroll as i64)
                    .saturating_sub(d)
                    .clamp(0, self.log.lines.len().saturating_sub(1) as i64)
                    as usize
            }
        }
    }

    /// A click selects the row under it (and focuses its pane); the wheel
    /// scrolls the pane under the pointer.
    pub(super) fn mouse(&mut self, m: MouseEvent) -> Vec<Effect> {
        if self.dialog.is_some() || self.typing.is_some() {
            if let Some(Dialog::Message { scroll, .. } | Dialog::Help { scroll }) = &mut self.dialog
            {
                match m.kind {
                    MouseEventKind::ScrollDown => *scroll += 1,
                    MouseEventKind::ScrollUp => *scroll = scroll.saturating_sub(1),
                    _ => {}
                }
            }
            return Vec::new();
        }
        let areas = view::areas(Rect::new(0, 0, self.size.0, self.size.1), self);
        let at = Position::new(m.column, m.row);
        let hit = [
            (Pane::Tree, areas.tree),
            (Pane::Timeline, areas.timeline),
            (Pane::Details, areas.details),
            (Pane::Jobs, areas.jobs),
            (Pane::Log, areas.log),
        ]
        .into_iter()
        .find_map(|(p, r)| r.filter(|r| r.contains(at)).map(|r| (p, r)));
        let Some((pane, rect)) = hit else {
            return Vec::new();
        };
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                self.focus = pane;
                // Rows start below the border (and the timeline's header).
                let first = rect.y + 1 + u16::from(pane == Pane::Timeline);
                if m.row < first || m.row >= rect.bottom().saturating_sub(1) {
                    return Vec::new();
                }
                let visible = (rect.bottom().saturating_sub(1) - first) as usize;
                let row = (m.row - first) as usize;
                let sel = |cur: usize| cur.saturating_sub(visible.saturating_sub(1)) + row;
                match pane {
                    Pane::Tree => {
                        let i = sel(self.browser.tree_sel);
                        if i < self.tree().len() {
                            self.browser.tree_sel = i;
                            self.browser.timeline_sel = 0;
                            self.rebuild_timeline();
                        }
                    }
                    Pane::Timeline => {
                        let i = sel(self.browser.timeline_sel);
                        if i < self.timeline().len() {
                            self.browser.timeline_sel = i;
                        }
                    }
                    Pane::Jobs => {
                        let i = sel(self.jobs.sel);
                        if i < self.jobs.list.len() {
                            self.jobs.sel = i;
                        }
                    }
                    Pane::Log | Pane::Details => {}
                }
            }
            MouseEventKind::ScrollDown | MouseEventKind::ScrollUp => {
                let prev = self.focus;
                self.focus = pane;
                self.move_sel(if m.kind == MouseEventKind::ScrollDown {
                    3
                } else {
                    -3
                });
                self.focus = prev;
            }
            _ => {}
        }
        Vec::new()
    }
}
