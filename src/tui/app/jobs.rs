//! The Jobs pane: its state and how job events change it.

use std::collections::BTreeMap;

use lifeboat_core::jobs::{JobKind, Snapshot};
use lifeboat_core::repo::state::JobOutcome;

use super::*;

/// The Jobs pane's state: this session's jobs and earlier ones (from the
/// history), the selection, and ends that arrived before their starts.
#[derive(Debug, Default)]
pub struct JobsPane {
    pub list: Vec<JobView>,
    pub sel: usize,
    pub(super) early_done: BTreeMap<u64, (Result<String, String>, bool)>,
}

impl App {
    pub(super) fn job_started(&mut self, id: u64, title: String, kind: JobKind) -> Vec<Effect> {
        let follow = self.jobs.sel + 1 >= self.jobs.list.len();
        self.jobs.list.push(JobView {
            id,
            title: title.clone(),
            kind,
            state: JobState::Running,
            progress: None,
            started_at: self.now,
            ended_at: None,
            log: Vec::new(),
            output: Vec::new(),
            phases: Vec::new(),
            parts: Vec::new(),
        });
        // The Jobs pane follows new jobs unless the admin scrolled
        // back through older ones.
        if follow {
            self.jobs.sel = self.jobs.list.len() - 1;
        }
        self.job_log(id, format!("started: {title}"));
        self.log(format!("job {id} started: {title}"));
        // A quick job's end can arrive before its start (they come
        // through different channels): finish it now.
        match self.jobs.early_done.remove(&id) {
            Some((result, cancelled)) => self.job_done(id, result, cancelled),
            None => Vec::new(),
        }
    }

    pub(super) fn job_progress(
        &mut self,
        id: u64,
        snapshot: Snapshot,
        output: Vec<String>,
        parts: Vec<Part>,
    ) -> Vec<Effect> {
        let mut phase_changed = None;
        let now = self.now;
        if let Some(j) = self.jobs.list.iter_mut().find(|j| j.id == id && id != 0) {
            if j.progress.as_ref().map(|p| &p.phase) != Some(&snapshot.phase) {
                phase_changed = Some(snapshot.phase.clone());
                let word = phase_word(&snapshot.phase);
                if j.phases.last().map(|(w, _)| w.as_str()) != Some(word) {
                    j.phases.push((word.to_string(), now));
                }
            }
            j.progress = Some(snapshot);
            if !output.is_empty() {
                j.output = output;
            }
            if !parts.is_empty() {
                j.parts = parts;
            }
        }
        if let Some(p) = phase_changed {
            self.job_log(id, p);
        }
        Vec::new()
    }

    pub(super) fn history(&mut self, records: Vec<JobRecord>, bad: usize) -> Vec<Effect> {
        if bad > 0 {
            self.log(format!("job history: {bad} damaged record(s) skipped"));
        }
        let skip = records.len().saturating_sub(HISTORY_SHOWN);
        let past: Vec<JobView> = records
            .into_iter()
            .skip(skip)
            .map(|r| JobView {
                kind: JobKind::Other,
                id: 0,
                title: r.title,
                state: match r.outcome {
                    JobOutcome::Done => JobState::Done(r.message),
                    JobOutcome::Failed => JobState::Failed(r.message),
                    JobOutcome::Cancelled => JobState::Cancelled,
                },
                progress: None,
                started_at: r.started_at,
                ended_at: Some(r.ended_at),
                log: r.log,
                output: Vec::new(),
                phases: Vec::new(),
                parts: Vec::new(),
            })
            .collect();
        let at_end = self.jobs.sel + 1 >= self.jobs.list.len();
        let n = past.len();
        self.jobs.list.splice(0..0, past);
        self.jobs.sel = if at_end {
            self.jobs.list.len().saturating_sub(1)
        } else {
            self.jobs.sel + n
        };
        Vec::new()
    }

    pub(super) fn job_done(
        &mut self,
        id: u64,
        result: Result<String, String>,
        cancelled: bool,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let now = self.now;
        let Some(j) = self.jobs.list.iter_mut().find(|j| j.id == id && id != 0) else {
            if id != 0 {
                self.jobs.early_done.insert(id, (result, cancelled));
            }
            return effects;
        };
        // A report of several lines (a drill's): the first is the job's
        // summary, all of them go to its log.
        let full = match (&result, cancelled) {
            (_, true) => "cancelled".to_string(),
            (Ok(m), _) | (Err(m), _) => m.clone(),
        };
        let first = full.lines().next().unwrap_or("").to_string();
        let (state, line, outcome) = match (&result, cancelled) {
            (_, true) => (
                JobState::Cancelled,
                "cancelled".into(),
                JobOutcome::Cancelled,
            ),
            (Ok(_), _) => (
                JobState::Done(first.clone()),
                format!("done — {first}"),
                JobOutcome::Done,
            ),
            (Err(_), _) => (
                JobState::Failed(first.clone()),
                format!("FAILED — {first}"),
                JobOutcome::Failed,
            ),
        };
        let message = if cancelled { full.clone() } else { first };
        j.state = state;
        j.ended_at = Some(now);
        let title = j.title.clone();
        let kind = j.kind;
        self.job_log(id, line.clone());
        for l in full.lines().skip(1) {
            self.job_log(id, l.to_string());
        }
        let failed = outcome == JobOutcome::Failed;
        if failed {
            self.dialog = Some(Dialog::Message {
                title: format!("{title} failed"),
                lines: full.lines().map(str::to_string).collect(),
                scroll: 0,
            });
        }
        // A successful plan only waits for a yes (its dialog is open): not
        // worth the status line or a history entry.
        let planning = kind == JobKind::Plan && outcome == JobOutcome::Done;
        if planning {
            self.log(format!("job {id} {title}: {line}"));
        } else {
            self.notify(format!("job {id} {title}: {line}"), failed);
        }
        if let Some(j) = self.jobs.list.iter().find(|j| j.id == id) {
            if !planning {
                effects.push(Effect::RecordJob(JobRecord {
                    title: j.title.clone(),
                    started_at: j.started_at,
                    ended_at: now,
                    outcome,
                    message,
                    log: j.log.clone(),
                }));
            }
        }
        if planning {
            // A plan that waits for a yes is not a job the admin ran: it
            // leaves the pane (its line stays in the Log).
            self.jobs.list.retain(|j| j.id != id);
            self.jobs.sel = self.jobs.sel.min(self.jobs.list.len().saturating_sub(1));
        } else {
            // Whatever changed a repository shows at once.
            self.refreshed_at = Some(now);
            effects.extend(self.refresh());
        }
        effects
    }
}
