//! `lifeboat daemon`: runs each VM's policy when its schedule says — a
//! backup, a quick verify of it, a slice of the deep-verify rotation,
//! pushes to the policy's remotes, then the retention of each repository.
//!
//! At most one run per VM at a time and `max_jobs` at once; catch-up after
//! downtime runs once (`schedule::next`); a failed run is retried with
//! backoff, then left for the next slot; every run is recorded
//! (`runs::append_run`). On shutdown, running jobs are cancelled: a backup
//! stops before its manifests (nothing half-visible) or, if it is writing
//! them already, finishes that step. One daemon per repository: a second
//! one names the first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::offsite::{self, Offsite};
use super::runs::{self, DaemonState, RunOutcome, RunRecord};
use super::schedule::{self, Next};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{Manifest, ManifestKey};
use crate::jobs::{CancellationToken, Progress};
use crate::policy::Policy;
use crate::repo::Repo;
use crate::store::local::LocalStore;
use crate::store::DynStore;

/// The daemon's time. Tests drive a file clock (`FileClock`); everything
/// the daemon decides or stamps (slots, backup times, run records) uses it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

/// A drill whose schedule fired: one VM's, or a recovery plan's.
enum DrillDue {
    Vm(String),
    Plan(String),
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// "Now" is the RFC 3339 time in a file, re-read on every look; a test
/// moves time by rewriting it. A file that cannot be read stops the clock
/// at its last value.
pub struct FileClock {
    path: PathBuf,
    last: std::sync::Mutex<DateTime<Utc>>,
}

impl FileClock {
    pub fn new(path: &Path) -> Result<FileClock> {
        let c = FileClock {
            path: path.to_path_buf(),
            last: std::sync::Mutex::new(DateTime::<Utc>::MIN_UTC),
        };
        c.read().map(|_| c)
    }

    fn read(&self) -> Result<DateTime<Utc>> {
        let s = std::fs::read_to_string(&self.path)
            .map_err(|e| Error::io("reading the clock file", &self.path, e))?;
        DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::BadInput(format!("clock file {}: {e}", self.path.display())))
    }
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(t) = self.read() {
            *last = t;
        }
        *last
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub max_jobs: usize,
    /// How often the schedule is looked at.
    pub tick: std::time::Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            max_jobs: 2,
            tick: std::time::Duration::from_secs(5),
        }
    }
}

/// Who runs the daemon on a repository (in `state/daemon.lock`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonHolder {
    pub pid: u32,
    pub host: String,
    pub since: DateTime<Utc>,
}

/// The daemon lock: an exclusive flock on `state/daemon.lock`, which holds
/// the holder's pid, host and start. The kernel drops it when the process
/// dies, so a killed daemon never blocks the next.
pub struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    pub fn acquire(root: &Path) -> Result<DaemonLock> {
        let dir = root.join("state");
        crate::durable::private_dir(&dir)?;
        let path = dir.join("daemon.lock");
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .mode(0o600)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let who = serde_json::from_str::<DaemonHolder>(&text)
                    .map(|h| {
                        format!(
                            "pid {} on {} since {}",
                            h.pid,
                            crate::text::escape(&h.host),
                            h.since.format("%Y-%m-%d %H:%M:%S UTC")
                        )
                    })
                    .unwrap_or_else(|_| "a process that left no details".into());
                return Err(Error::Busy {
                    repo: root.display().to_string(),
                    holder: format!("a daemon already runs on it ({who})"),
                    hint: "one daemon per repository; stop that one first (systemctl stop lifeboat-daemon)".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("locking", &path, e)),
        }
        let me = DaemonHolder {
            pid: std::process::id(),
            host: crate::sys::hostname(),
            since: Utc::now(),
        };
        use std::io::{Seek, Write};
        let data = serde_json::to_vec(&me).map_err(|e| Error::Internal(e.to_string()))?;
        f.set_len(0)
            .and_then(|_| f.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| f.write_all(&data))
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(DaemonLock { _file: f })
    }
}

/// How often the daemon looks for killed backups' leftovers in the
/// running VMs' QEMUs.
const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A failed run's retry: its slot, the next attempt, and when.
type Retry = (Option<DateTime<Utc>>, usize, DateTime<Utc>);

/// What a finished job hands back to the loop.
struct Finished {
    vm: String,
    slot: Option<DateTime<Utc>>,
    attempt: usize,
    outcome: RunOutcome,
    /// When it ended, by the daemon's clock (retries count from here).
    ended: DateTime<Utc>,
    deep: Option<(u32, DateTime<Utc>)>,
}

pub struct Daemon {
    pub config: Config,
    pub root: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub opts: DaemonOptions,
}

impl Daemon {
    /// The VMs the daemon schedules: those with a policy that has a schedule.
    fn scheduled(&self) -> Vec<(String, Policy)> {
        self.config
            .vms
            .iter()
            .filter_map(|v| {
                let name = v.name.get_ref().clone();
                let p = self.config.policy_for(&name)?;
                p.schedule.as_ref()?;
                Some((name, p.clone()))
            })
            .collect()
    }

    /// Runs until `shutdown` is cancelled, then cancels running jobs and
    /// waits for them. `run_now`: VMs to run at once, then exit (`--now`).
    /// Returns how many runs did not succeed (what `--now` exits on).
    pub async fn run(&self, shutdown: CancellationToken, run_now: Vec<String>) -> Result<usize> {
        let _lock = DaemonLock::acquire(&self.root)?;
        let mut state = runs::load_state(&self.root)?;
        let vms = self.scheduled();
        if vms.is_empty() && run_now.is_empty() {
            tracing::warn!(
                "no VM has a policy with a schedule: nothing to do (set default_policy or policy on a [[vm]])"
            );
        }
        tracing::info!(
            "daemon started on {} ({} scheduled VMs, {} jobs at once)",
            self.root.display(),
            vms.len(),
            self.opts.max_jobs
        );
        let permits = Arc::new(Semaphore::new(self.opts.max_jobs.max(1)));
        let mut running: HashMap<String, (tokio::task::JoinHandle<Finished>, CancellationToken)> =
            HashMap::new();
        let mut retry: HashMap<String, Retry> = HashMap::new();
        let once = !run_now.is_empty();
        for vm in &run_now {
            let policy = self
                .config
                .policy_for(vm)
                .cloned()
                .ok_or_else(|| Error::BadInput(format!("VM {vm:?} has no policy to run")))?;
            self.spawn(&mut running, &permits, vm, policy, None, 1, &state);
        }
        let mut newest = self.newest_backups();
        let mut unsuccessful = 0usize;
        let mut gc_job: Option<tokio::task::JoinHandle<()>> = None;
        let mut drill_job: Option<tokio::task::JoinHandle<()>> = None;
        let mut repair_job: Option<tokio::task::JoinHandle<()>> = None;
        let mut repaired_at: Option<std::time::Instant> = None;
        loop {
            let now = self.clock.now();
            // A killed backup's leftovers in a running VM's QEMU keep
            // growing and slowing the guest: removed within a minute, not
            // at that VM's next backup.
            if !once
                && repair_job.as_ref().is_none_or(|h| h.is_finished())
                && repaired_at.is_none_or(|t| t.elapsed() >= REPAIR_EVERY)
            {
                repaired_at = Some(std::time::Instant::now());
                let busy: Vec<String> = running.keys().cloned().collect();
                repair_job = Some(self.spawn_repairs(busy));
            }
            // Garbage collection on its own schedule; safe beside the runs.
            if let (Some(sched), false) = (&self.config.gc, once) {
                if gc_job.as_ref().is_none_or(|h| h.is_finished()) {
                    let due = match state.last_gc {
                        None => true,
                        Some(last) => sched
                            .next_after(last, &chrono::Local)
                            .is_some_and(|t| t <= now),
                    };
                    if due {
                        state.last_gc = Some(now);
                        runs::save_state(&self.root, &state)?;
                        gc_job = Some(self.spawn_gc(shutdown.clone()));
                    }
                }
            }
            // Restore drills on their own schedules, one at a time.
            if !once && drill_job.as_ref().is_none_or(|h| h.is_finished()) {
                if let Some(due) = self.due_drill(&mut state, now) {
                    runs::save_state(&self.root, &state)?;
                    drill_job = Some(self.spawn_drill(due, shutdown.clone()));
                }
            }
            // Finished jobs first: they move slots and set retries.
            let done: Vec<String> = running
                .iter()
                .filter(|(_, (h, _))| h.is_finished())
                .map(|(vm, _)| vm.clone())
                .collect();
            for vm in done {
                let Some((h, _)) = running.remove(&vm) else {
                    continue;
                };
                let f = match h.await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!("the job of {vm} crashed: {e}");
                        continue;
                    }
                };
                if let Some(d) = f.deep {
                    state.deep_slice.insert(f.vm.clone(), d);
                }
                if f.outcome != RunOutcome::Ok {
                    unsuccessful += 1;
                }
                let policy = self.config.policy_for(&f.vm).cloned();
                match (f.outcome, f.slot, policy) {
                    (RunOutcome::Ok, Some(slot), _) => {
                        state.last_slot.insert(f.vm.clone(), slot);
                        retry.remove(&f.vm);
                    }
                    (RunOutcome::Failed, slot, Some(p)) if !once => {
                        match slot.and_then(|s| schedule::retry_at(&p, s, f.attempt, f.ended)) {
                            Some(at) => {
                                tracing::warn!(
                                    "{}: run failed (attempt {}); retrying at {at}",
                                    f.vm,
                                    f.attempt
                                );
                                retry.insert(f.vm.clone(), (slot, f.attempt + 1, at));
                            }
                            None => {
                                tracing::warn!("{}: run failed; left for the next slot", f.vm);
                                if let Some(s) = slot {
                                    state.last_slot.insert(f.vm.clone(), s);
                                }
                                retry.remove(&f.vm);
                            }
                        }
                    }
                    _ => {}
                }
                runs::save_state(&self.root, &state)?;
                newest = self.newest_backups();
            }
            if once && running.is_empty() {
                break;
            }
            if shutdown.is_cancelled() {
                break;
            }
            if !once {
                for (vm, policy) in &vms {
                    if running.contains_key(vm) {
                        continue;
                    }
                    if let Some((slot, attempt, at)) = retry.get(vm).cloned() {
                        if now >= at {
                            self.spawn(
                                &mut running,
                                &permits,
                                vm,
                                policy.clone(),
                                slot,
                                attempt,
                                &state,
                            );
                        }
                        continue;
                    }
                    match schedule::next(
                        policy,
                        state.last_slot.get(vm).copied(),
                        newest.get(vm).copied(),
                        now,
                    ) {
                        Next::Due { slot, missed } => {
                            if missed > 0 {
                                tracing::info!("{vm}: {missed} slots were missed while down; one run covers them");
                            }
                            self.spawn(
                                &mut running,
                                &permits,
                                vm,
                                policy.clone(),
                                Some(slot),
                                1,
                                &state,
                            );
                        }
                        Next::At(_) | Next::Never => {}
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(self.opts.tick) => {}
            }
        }
        if let Some(h) = gc_job {
            let _ = h.await;
        }
        if let Some(h) = drill_job {
            let _ = h.await;
        }
        if !running.is_empty() {
            tracing::info!("stopping: cancelling {} running jobs", running.len());
        }
        for (vm, (h, cancel)) in running {
            cancel.cancel();
            if let Ok(f) = h.await {
                if f.outcome != RunOutcome::Ok {
                    unsuccessful += 1;
                }
                if let Some(d) = f.deep {
                    state.deep_slice.insert(vm, d);
                }
            }
        }
        runs::save_state(&self.root, &state)?;
        tracing::info!("daemon stopped");
        Ok(unsuccessful)
    }

    /// Repairs what killed backups left in the running VMs' QEMUs, and
    /// the RBD snapshots no backup of this repository builds on (VMs with
    /// a job now are skipped: their backup does it).
    fn spawn_repairs(&self, busy: Vec<String>) -> tokio::task::JoinHandle<()> {
        let config = self.config.clone();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            // The lineage of RBD volumes is in this repository's backups.
            let mut backups = None;
            for v in &config.vms {
                let vm = v.name.get_ref();
                let live = config.live_for(vm);
                let rbd = v
                    .volumes
                    .iter()
                    .any(|x| crate::source::rbd::RbdImage::is_rbd(&config.resolve(&x.path)));
                if busy.contains(vm) || (!rbd && live.qmp.is_none() && live.libvirt.is_none()) {
                    continue;
                }
                let repaired = if rbd {
                    let loaded = backups.get_or_insert_with(|| {
                        crate::repo::Repo::open(&root)
                            .and_then(|r| Ok((r.load_all()?, r.chunk_size())))
                    });
                    match loaded {
                        Ok((all, chunk)) => {
                            crate::config::requests::live_repair(&config, vm, all, *chunk)
                        }
                        Err(e) => Err(crate::Error::BadInput(e.to_string())),
                    }
                } else {
                    crate::live::repair(&live)
                };
                match repaired {
                    Ok(r) if r.is_empty() => {}
                    Ok(r) => {
                        tracing::warn!("{vm}: removed what a killed backup left: {}", r.join(", "))
                    }
                    Err(e) => tracing::debug!("{vm}: no repair now: {e}"),
                }
            }
        })
    }

    fn spawn_gc(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let root = self.root.clone();
        tokio::spawn(async move {
            let store: DynStore = Arc::new(LocalStore::new(&root));
            let opts = crate::gc::GcOptions::default();
            match crate::gc::run(&store, Some(&root), &opts, &cancel, &Progress::new()).await {
                Ok(r) => tracing::info!(
                    "gc: deleted {} chunks and {} indexes ({}), {} temp files",
                    r.chunks_deleted,
                    r.indexes_deleted,
                    crate::text::bytes(r.bytes_freed.unwrap_or(0)),
                    r.tmp_files_deleted
                ),
                Err(e) => tracing::warn!("gc: {}", crate::text::describe(&e)),
            }
        })
    }

    /// The first VM, then plan, whose drill schedule fired since it last
    /// did. One seen for the first time starts counting now (no drill at
    /// start-up).
    fn due_drill(&self, state: &mut DaemonState, now: DateTime<Utc>) -> Option<DrillDue> {
        if let Some(vm) = self.due_vm_drill(state, now) {
            return Some(DrillDue::Vm(vm));
        }
        for (name, plan) in &self.config.plans {
            let Some(sched) = &plan.schedule else {
                continue;
            };
            match state.last_plan_drill.get(name) {
                None => {
                    state.last_plan_drill.insert(name.clone(), now);
                }
                Some(last) => {
                    if sched
                        .next_after(*last, &chrono::Local)
                        .is_some_and(|t| t <= now)
                    {
                        state.last_plan_drill.insert(name.clone(), now);
                        return Some(DrillDue::Plan(name.clone()));
                    }
                }
            }
        }
        None
    }

    fn due_vm_drill(&self, state: &mut DaemonState, now: DateTime<Utc>) -> Option<String> {
        for v in &self.config.vms {
            let vm = v.name.get_ref();
            let Some(sched) = v.drill.as_ref().and_then(|d| d.schedule.as_ref()) else {
                continue;
            };
            let Ok(sched) = sched.parse::<crate::policy::Schedule>() else {
                continue;
            };
            match state.last_drill.get(vm) {
                None => {
                    state.last_drill.insert(vm.clone(), now);
                }
                Some(last) => {
                    if sched
                        .next_after(*last, &chrono::Local)
                        .is_some_and(|t| t <= now)
                    {
                        state.last_drill.insert(vm.clone(), now);
                        return Some(vm.clone());
                    }
                }
            }
        }
        None
    }

    fn spawn_drill(&self, due: DrillDue, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        match due {
            DrillDue::Vm(vm) => self.spawn_vm_drill(vm, cancel),
            DrillDue::Plan(name) => self.spawn_plan_drill(name, cancel),
        }
    }

    fn spawn_plan_drill(
        &self,
        name: String,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (config, root) = (self.config.clone(), self.root.clone());
        tokio::spawn(async move {
            let req = match crate::config::requests::plan_drill_request(
                &config,
                &name,
                &Default::default(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("plan drill {name}: {e}");
                    return;
                }
            };
            let store = match crate::config::requests::open_drill_source(&config, &req.source) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("plan drill {name}: remote {}: {e}", req.source);
                    return;
                }
            };
            tracing::info!("plan drill {name} from {}: started", req.source);
            let progress = Arc::new(Progress::new());
            let r =
                crate::plan::drill::run_recorded(&root, store.as_deref(), &req, &cancel, &progress)
                    .await;
            let lines = crate::plan::report::describe(&r);
            if r.passed() {
                tracing::info!("{}", lines.join(" | "));
            } else {
                tracing::warn!("{}", lines.join(" | "));
            }
        })
    }

    fn spawn_vm_drill(&self, vm: String, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (config, root) = (self.config.clone(), self.root.clone());
        tokio::spawn(async move {
            let req =
                match crate::config::requests::drill_request(&config, &vm, &Default::default()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("drill {vm}: {e}");
                        return;
                    }
                };
            let store = match crate::config::requests::open_drill_source(&config, &req.source) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("drill {vm}: remote {}: {e}", req.source);
                    return;
                }
            };
            tracing::info!("drill {vm} from {}: started", req.source);
            let progress = Arc::new(Progress::new());
            let r =
                crate::drill::run_recorded(&root, store.as_deref(), &req, &cancel, &progress).await;
            let lines = crate::drill::describe(&r);
            if r.passed() {
                tracing::info!("{}", lines.join(" | "));
            } else {
                tracing::warn!("{}", lines.join(" | "));
            }
        })
    }

    fn newest_backups(&self) -> BTreeMap<String, DateTime<Utc>> {
        let mut out = BTreeMap::new();
        if let Ok(all) = Repo::open(&self.root).and_then(|r| r.load_all()) {
            for (k, m) in all {
                let e = out.entry(k.vm).or_insert(m.created_at);
                *e = (*e).max(m.created_at);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        running: &mut HashMap<String, (tokio::task::JoinHandle<Finished>, CancellationToken)>,
        permits: &Arc<Semaphore>,
        vm: &str,
        policy: Policy,
        slot: Option<DateTime<Utc>>,
        attempt: usize,
        state: &DaemonState,
    ) {
        let cancel = CancellationToken::new();
        let job = PolicyRun {
            vm: vm.to_string(),
            policy,
            slot,
            attempt,
            config: self.config.clone(),
            root: self.root.clone(),
            clock: self.clock.clone(),
            deep_slice: state.deep_slice.get(vm).copied(),
            cancel: cancel.clone(),
        };
        let permits = permits.clone();
        let h = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            job.run().await
        });
        running.insert(vm.to_string(), (h, cancel));
    }
}

/// One run of one VM's policy.
struct PolicyRun {
    vm: String,
    policy: Policy,
    slot: Option<DateTime<Utc>>,
    attempt: usize,
    config: Config,
    root: PathBuf,
    clock: Arc<dyn Clock>,
    deep_slice: Option<(u32, DateTime<Utc>)>,
    cancel: CancellationToken,
}

impl PolicyRun {
    async fn run(self) -> Finished {
        let started_at = self.clock.now();
        let t0 = std::time::Instant::now();
        tracing::info!(
            "{}: policy {} run starts (attempt {})",
            self.vm,
            self.policy.name,
            self.attempt
        );
        let mut rec = RunRecord {
            vm: self.vm.clone(),
            policy: self.policy.name.clone(),
            slot: self.slot,
            attempt: self.attempt,
            started_at,
            ended_at: started_at,
            outcome: RunOutcome::Ok,
            bytes_new: 0,
            bytes_pushed: 0,
            seconds: 0.0,
            steps: Vec::new(),
            error: None,
            committed: None,
        };
        let mut deep = None;
        let res = self.steps(&mut rec, &mut deep).await;
        rec.ended_at = self.clock.now();
        rec.seconds = t0.elapsed().as_secs_f64();
        match &res {
            Ok(()) => tracing::info!("{}: run done: {}", self.vm, rec.steps.join("; ")),
            Err(Error::Cancelled) => {
                rec.outcome = RunOutcome::Cancelled;
                rec.error = Some(match &rec.committed {
                    // The backup is in; what followed it was cut short.
                    Some(set) => format!(
                        "cancelled after the backup (set {set}) was committed: {} did not finish; the next run does it",
                        if self.policy.push.is_empty() { "verify and prune" } else { "pushing, verify and prune" }
                    ),
                    None => Error::Cancelled.to_string(),
                });
                tracing::warn!("{}: run cancelled", self.vm);
            }
            Err(e) => {
                rec.outcome = RunOutcome::Failed;
                rec.error = Some(crate::text::describe(e));
                tracing::error!("{}: run failed: {}", self.vm, crate::text::describe(e));
            }
        }
        let outcome = rec.outcome;
        let ended = rec.ended_at;
        if let Err(e) = runs::append_run(&self.root, rec) {
            tracing::error!("recording the run of {}: {e}", self.vm);
        }
        Finished {
            vm: self.vm,
            slot: self.slot,
            attempt: self.attempt,
            outcome,
            ended,
            deep,
        }
    }

    /// Every step runs; the first error is the run's, and later steps that
    /// do not depend on the failed one still run (a dead remote does not
    /// stop the local retention).
    async fn steps(
        &self,
        rec: &mut RunRecord,
        deep: &mut Option<(u32, DateTime<Utc>)>,
    ) -> Result<()> {
        let progress = Arc::new(Progress::new());
        let mut first_err: Option<Error> = None;
        let mut keep = |rec: &mut RunRecord, what: &str, r: Result<String>| -> Result<()> {
            match r {
                Ok(s) => rec.steps.push(format!("{what}: {s}")),
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => {
                    rec.steps
                        .push(format!("{what}: FAILED {}", crate::text::describe(&e)));
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
            Ok(())
        };
        // The remotes' writer locks, from before the backup until the
        // pushes end: a server dates a push from its first lock, and takes
        // from an append token only backups made shortly before it
        // (docs/SERVER.md), so a long backup must not make its own push late.
        let early = self.lock_remotes().await;
        // 1. The backup; nothing else makes sense without it.
        let result = self.backup(&progress).await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                release_all(early).await;
                return Err(e);
            }
        };
        rec.committed = Some(result.set.clone());
        rec.bytes_new = result
            .volumes
            .iter()
            .map(|v| v.stats.new_stored_bytes)
            .sum();
        rec.steps.push(format!(
            "backup: {} volumes, {} new",
            result.volumes.len(),
            crate::text::bytes(rec.bytes_new)
        ));
        let keys: Vec<ManifestKey> = result
            .volumes
            .iter()
            .filter_map(|v| ManifestKey::parse(&v.key).ok())
            .collect();
        // 2. Quick verify of what was just written.
        let r = self.verify(Some(keys.clone()), false).await;
        keep(rec, "quick verify", r)?;
        // 3. One slice of the deep verify rotation, at most once a day.
        if let Some(every) = self.policy.deep_verify_every {
            let now = self.clock.now();
            let due = self
                .deep_slice
                .is_none_or(|(_, last)| now - last >= chrono::Duration::hours(23));
            if due {
                let slices = every.num_days().max(1) as u32;
                let k = self.deep_slice.map(|(k, _)| k % slices).unwrap_or(0);
                let r = self.deep_slice_verify(k, slices).await;
                if r.is_ok() {
                    *deep = Some(((k + 1) % slices, now));
                }
                keep(rec, &format!("deep verify slice {}/{slices}", k + 1), r)?;
            }
        }
        // 4. Pushes: every set a remote is owed, not only this run's (an
        //    outage leaves no gap), then that remote's retention.
        let local: DynStore = Arc::new(LocalStore::new(&self.root));
        let backups = self.local_backups().await?;
        let mut offsite = BTreeMap::new();
        for remote in &self.policy.push {
            let r = self
                .push_owed(remote, &local, &backups, &progress, rec)
                .await;
            let (o, result) = match r {
                Ok((holding, msg)) => (Offsite::Known(holding), Ok(msg)),
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) => (Offsite::Unknown(crate::text::describe(&e)), Err(e)),
            };
            offsite.insert(remote.clone(), o);
            keep(rec, &format!("push {remote}"), result)?;
        }
        // 5. Local retention, never removing a set an off-site copy lacks.
        if let Some(rules) = self.policy.retention_for(None) {
            let r = async {
                let mine: Vec<(ManifestKey, Manifest)> = backups
                    .iter()
                    .filter(|(k, _)| k.vm == self.vm)
                    .cloned()
                    .collect();
                let mut plan = crate::prune::PrunePlan::new(
                    local.describe(),
                    self.policy.plan_retention(&mine, rules)?,
                );
                super::prune::hold_vm(&mut plan, &self.vm, &offsite);
                let held = plan.held_offsite;
                let done = plan.execute(local.as_ref(), &self.cancel).await?;
                let (s, n) = (done.sets, done.backups);
                let mut msg = format!("removed {s} sets ({n} backups)");
                if held > 0 {
                    msg.push_str(&format!("; kept {held} sets an off-site copy lacks"));
                }
                Ok(msg)
            }
            .await;
            keep(rec, "prune", r)?;
        }
        release_all(early).await;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writer locks on the policy's push remotes, where they can be had at
    /// once (a remote that is down or collecting garbage is pushed to, or
    /// not, later as usual).
    async fn lock_remotes(&self) -> Vec<crate::lock::Held> {
        let mut held = Vec::new();
        for remote in &self.policy.push {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                let (_, store) = crate::config::remotes::resolve(&self.config, remote)?;
                crate::lock::acquire(
                    &store,
                    crate::lock::LockKind::Writer,
                    &format!("policy run of {} (backup, then push)", self.vm),
                    std::time::Duration::ZERO,
                )
                .await
            })
            .await;
            match r {
                Ok(Ok(h)) => held.push(h),
                Ok(Err(e)) => tracing::debug!("{}: no early lock on {remote}: {e}", self.vm),
                Err(_) => tracing::debug!("{}: no early lock on {remote}: no answer", self.vm),
            }
        }
        held
    }

    async fn local_backups(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || Repo::open(&root)?.load_all())
            .await
            .map_err(|e| Error::Internal(format!("listing backups: {e}")))?
    }

    /// Sends `remote` every set of this VM it is owed, applies its
    /// retention, and records what it holds and still lacks
    /// (`state/offsite.json`). Sets the server refuses as late stay owed
    /// (and kept locally); the step says so and what to do.
    async fn push_owed(
        &self,
        remote: &str,
        local: &DynStore,
        backups: &[(ManifestKey, Manifest)],
        progress: &Arc<Progress>,
        rec: &mut RunRecord,
    ) -> Result<(offsite::Holding, String)> {
        let mut record = offsite::OffsiteRecord {
            checked_at: Some(self.clock.now()),
            ..Default::default()
        };
        let outcome = async {
            let (_, store) = crate::config::remotes::resolve(&self.config, remote)?;
            let before =
                offsite::holding(store.as_ref(), remote, &self.vm, backups, &self.policy).await?;
            let selected: Vec<ManifestKey> = backups
                .iter()
                .filter(|(k, m)| k.vm == self.vm && before.owed.contains(&m.set))
                .map(|(k, _)| k.clone())
                .collect();
            let opts = crate::sync::SyncOptions {
                init: true,
                ..Default::default()
            };
            let mut msg;
            let mut refused = Vec::new();
            if selected.is_empty() {
                msg = "nothing owed".to_string();
            } else {
                let rep = crate::sync::transfer(
                    local.as_ref(),
                    &store,
                    selected,
                    &opts,
                    &self.cancel,
                    progress,
                )
                .await?;
                rec.bytes_pushed += rep.bytes_sent;
                msg = format!(
                    "{} sets owed, {} chunks, {} sent",
                    before.owed.len(),
                    rep.chunks_sent,
                    crate::text::bytes(rep.bytes_sent)
                );
                refused = rep.refused;
            }
            if self.policy.retention_for(Some(remote)).is_some() {
                let theirs: Vec<(ManifestKey, Manifest)> =
                    crate::repository::load_backups(store.as_ref())
                        .await?
                        .into_iter()
                        .filter(|(k, _)| k.vm == self.vm)
                        .collect();
                if !theirs.is_empty() {
                    let req = super::prune::PruneRequest {
                        vms: vec![self.vm.clone()],
                        rules: None,
                        remote: Some(remote.to_string()),
                    };
                    let plan = super::prune::plan(&self.config, &store, &theirs, &req).await?;
                    let done = plan.execute(store.as_ref(), &self.cancel).await?;
                    msg.push_str(&format!(
                        "; pruned {} sets ({} backups)",
                        done.sets, done.backups
                    ));
                }
            }
            let after =
                offsite::holding(store.as_ref(), remote, &self.vm, backups, &self.policy).await?;
            if !refused.is_empty() {
                let first = &refused[0];
                msg.push_str(&format!(
                    "; {} backups REFUSED as late (kept here until they are copied): {}",
                    refused.len(),
                    first.reason
                ));
                record.refused_reason = Some(first.reason.clone());
            }
            let refused_sets: std::collections::BTreeSet<&str> = refused
                .iter()
                .filter_map(|r| {
                    backups
                        .iter()
                        .find(|(b, _)| *b == r.key)
                        .map(|(_, m)| m.set.as_str())
                })
                .collect();
            record.refused = refused_sets
                .iter()
                .filter(|s| after.owed.contains(**s))
                .count();
            Ok::<_, Error>((after, msg))
        }
        .await;
        match &outcome {
            Ok((h, _)) => {
                record.newest = h.newest;
                record.owed = h.owed.len();
            }
            Err(e) => record.error = Some(crate::text::describe(e)),
        }
        if let Err(e) = offsite::record(&self.root, &self.vm, remote, record) {
            tracing::warn!("recording what {remote} holds of {}: {e}", self.vm);
        }
        outcome
    }

    async fn backup(&self, progress: &Arc<Progress>) -> Result<crate::backup::BackupResult> {
        if self.config.vm(&self.vm).is_none() {
            return Err(Error::BadInput(format!(
                "VM {} is not in the config any more",
                self.vm
            )));
        }
        let mut req = crate::config::requests::backup_request(
            &self.config,
            &self.vm,
            &[],
            Default::default(),
        )?;
        req.note = Some(format!("policy {}", self.policy.name));
        req.created_at = Some(self.clock.now());
        let (root, cancel, progress) = (self.root.clone(), self.cancel.clone(), progress.clone());
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || {
            // May ask virsh (bounded): off the scheduler's threads.
            let mut req = req;
            req.definition = config.definition_for_backup(&req.vm);
            let repo = Repo::open(&root)?;
            crate::backup::backup(&repo, &req, &cancel, &progress)
        })
        .await
        .map_err(|e| Error::Internal(format!("backup task: {e}")))?
    }

    async fn verify(&self, keys: Option<Vec<ManifestKey>>, deep: bool) -> Result<String> {
        let (root, cancel, at) = (self.root.clone(), self.cancel.clone(), self.clock.now());
        tokio::task::spawn_blocking(move || {
            let repo = Repo::open(&root)?;
            let report = crate::repo::verify::verify(&repo, keys, deep, &cancel, &Progress::new())?;
            crate::repo::state::record_verify(&root, &report.marks(at))?;
            if report.problems.is_empty() {
                Ok(format!(
                    "{} backups, {} chunks, {} read",
                    report.manifests,
                    report.chunks,
                    crate::text::bytes(report.bytes_read)
                ))
            } else {
                Err(Error::corrupt(
                    "repository",
                    crate::format::Id([0; 32]),
                    format!(
                        "verify found {} problems; `lifeboat verify --deep` lists them",
                        report.problems.len()
                    ),
                ))
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("verify task: {e}")))?
    }

    /// Deep-verifies slice `k` of `slices` of this VM's backups (by the
    /// first byte of each manifest id): over `slices` days every backup is
    /// read once.
    async fn deep_slice_verify(&self, k: u32, slices: u32) -> Result<String> {
        let root = self.root.clone();
        let vm = self.vm.clone();
        let keys: Vec<ManifestKey> = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>(
                Repo::open(&root)?
                    .list_manifests()?
                    .into_iter()
                    .filter(|m| m.vm == vm && u32::from(m.id.0[0]) % slices == k)
                    .collect(),
            )
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
        self.verify(Some(keys), true).await
    }
}

async fn release_all(held: Vec<crate::lock::Held>) {
    for h in held {
        if let Err(e) = h.release().await {
            tracing::debug!("releasing an early lock: {e}");
        }
    }
}

/// Runs one VM's policy now (the console's "run policy now", `daemon
/// --now`), recorded in the run history like a scheduled run.
pub async fn run_now(
    config: &Config,
    root: &Path,
    vm: &str,
    cancel: CancellationToken,
) -> Result<RunRecord> {
    let policy = config.policy_for(vm).cloned().ok_or_else(|| {
        Error::BadInput(format!(
            "VM {vm} has no policy (set default_policy or policy on its [[vm]])"
        ))
    })?;
    let job = PolicyRun {
        vm: vm.to_string(),
        policy,
        slot: None,
        attempt: 1,
        config: config.clone(),
        root: root.to_path_buf(),
        clock: Arc::new(SystemClock),
        deep_slice: runs::load_state(root)?.deep_slice.get(vm).copied(),
        cancel,
    };
    job.run().await;
    runs::load_runs(root)?
        .into_iter()
        .rev()
        .find(|r| r.vm == vm)
        .ok_or_else(|| Error::Internal("the run was not recorded".into()))
}
