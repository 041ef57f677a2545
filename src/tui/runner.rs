//! Runs the console's effects as core jobs. Plans are made in the core
//! (`sync::plan`, `restore::plan_local` / `plan_remote`) and held here
//! until the admin confirms them; the console only dispatches and shows.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_core::config::remotes as remote;
use lifeboat_core::config::Config;
use lifeboat_core::format::chunkmap::{self, ChunkMap};
use lifeboat_core::format::{Manifest, ManifestKey};
use lifeboat_core::jobs::{CancellationToken, Job, JobEvent, JobKind, Progress};
use lifeboat_core::repo::{state, Repo};
use lifeboat_core::repository;
use lifeboat_core::restore::{self, RestoreRequest, SetRestorePlan};
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::DynStore;
use lifeboat_core::sync::{self, SyncOptions, TransferPlan};
use lifeboat_core::text::escape;
use lifeboat_core::vm::restore::VmStep;
use tokio::sync::mpsc::UnboundedSender;

use super::app::files::FileRow;
use super::app::{self, Action, Effect, Scope};
use crate::output::bytes;

/// How long a remote may take to answer its health check, and to list.
const PROBE: Duration = Duration::from_secs(3);
const LIST: Duration = Duration::from_secs(60);

pub struct Running {
    pub cancel: CancellationToken,
    pub progress: Arc<Progress>,
}

/// A plan waiting for the admin's yes.
enum Held {
    Transfer {
        title: String,
        src: DynStore,
        dst: DynStore,
        plan: Box<TransferPlan>,
    },
    Restore {
        title: String,
        remote: Option<DynStore>,
        plan: Box<SetRestorePlan>,
        step: VmStep,
    },
    Prune {
        vm: String,
        plan: lifeboat_core::prune::PrunePlan,
    },
    Cloud {
        title: String,
        plan: Box<lifeboat_core::cloud::CloudPlan>,
        provider: Arc<dyn lifeboat_core::cloud::Provider>,
        opts: lifeboat_core::cloud::ExecOptions,
    },
}

/// A drill's (or plan drill's) report as its job's result: every line to
/// the job's log; a failed drill is a failed job, a cancelled one cancelled.
fn drill_result(
    outcome: lifeboat_core::drill::DrillOutcome,
    lines: Vec<String>,
) -> lifeboat_core::Result<String> {
    use lifeboat_core::drill::DrillOutcome;
    match outcome {
        DrillOutcome::Cancelled => Err(lifeboat_core::Error::Cancelled),
        DrillOutcome::Pass => Ok(lines.join("\n")),
        DrillOutcome::Fail | DrillOutcome::NotStarted => {
            Err(lifeboat_core::Error::BadInput(lines.join("\n")))
        }
    }
}

/// Live output lines a job pane can show (a drill's serial console).
const OUTPUT_LINES: usize = 40;
/// Live output lines of each part of a job (a plan's VMs' consoles).
const PART_LINES: usize = 4;

pub use crate::tui::app::Part;

pub struct Runner {
    pub config: Config,
    pub repo_path: PathBuf,
    pub tx: UnboundedSender<Action>,
    /// Lifecycle events of every job; the event loop turns them into actions.
    pub events: UnboundedSender<JobEvent>,
    pub jobs: Arc<Mutex<HashMap<u64, Running>>>,
    plans: Arc<Mutex<HashMap<u64, Held>>>,
    next_plan: AtomicU64,
    /// The local repository's manifests as last read, and the backups
    /// built from them (shared, not copied, while nothing changes).
    manifests: Arc<Mutex<LocalCache>>,
}

type LocalCache = (
    lifeboat_core::repo::ManifestCache,
    Option<crate::tui::app::Backups>,
);

impl Runner {
    pub fn new(
        config: Config,
        repo_path: PathBuf,
        tx: UnboundedSender<Action>,
        events: UnboundedSender<JobEvent>,
    ) -> Runner {
        Runner {
            config,
            repo_path,
            tx,
            events,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            plans: Arc::new(Mutex::new(HashMap::new())),
            next_plan: AtomicU64::new(1),
            manifests: Arc::new(Mutex::new(Default::default())),
        }
    }

    /// Opens a configured remote (the same lookup the CLI uses).
    fn store(&self, name: &str) -> lifeboat_core::Result<DynStore> {
        remote::resolve(&self.config, name).map(|(_, s)| s)
    }

    /// ` (limit ↑8.0 MiB/s)` when the config limits this remote's bandwidth,
    /// so the job's line says why it is not faster.
    fn limit_note(&self, name: &str) -> String {
        let l = remote::limits_of(&self.config, name);
        if l.is_none() {
            String::new()
        } else {
            format!(" (limit {})", l.describe())
        }
    }

    fn local(&self) -> DynStore {
        Arc::new(LocalStore::new(&self.repo_path))
    }

    pub fn running(&self) -> bool {
        self.jobs.lock().map(|j| !j.is_empty()).unwrap_or(false)
    }

    /// Each running job's progress, newest live output and parts (a
    /// plan drill's VMs).
    pub fn snapshots(&self) -> Vec<(u64, lifeboat_core::jobs::Snapshot, Vec<String>, Vec<Part>)> {
        self.jobs
            .lock()
            .map(|j| {
                j.iter()
                    .map(|(id, r)| {
                        let parts = r
                            .progress
                            .parts()
                            .into_iter()
                            .map(|(name, p)| Part {
                                name,
                                snapshot: p.snapshot(),
                                output: p.tail(PART_LINES),
                            })
                            .collect();
                        (
                            *id,
                            r.progress.snapshot(),
                            r.progress.tail(OUTPUT_LINES),
                            parts,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn exec(&self, e: Effect) {
        let tx = self.tx.clone();
        match e {
            Effect::Quit => {
                if let Ok(j) = self.jobs.lock() {
                    j.values().for_each(|r| r.cancel.cancel());
                }
            }
            Effect::Cancel(id) => {
                if let Some(r) = self
                    .jobs
                    .lock()
                    .ok()
                    .and_then(|j| j.get(&id).map(|r| r.cancel.clone()))
                {
                    r.cancel();
                }
            }
            Effect::Unlock(secret) => {
                let path = self.repo_path.clone();
                tokio::task::spawn_blocking(move || {
                    let res = unlock_repo(&path, &secret).map_err(|e| e.to_string());
                    drop(secret);
                    let _ = tx.send(Action::Unlocked(res));
                });
            }
            Effect::Reload => {
                let path = self.repo_path.clone();
                let config = self.config.clone();
                let cache = self.manifests.clone();
                tokio::task::spawn_blocking(move || {
                    // Only manifests not seen before are read (a manifest
                    // never changes); the RPO states are derived from the
                    // same backups and verify record. An unchanged
                    // repository costs a listing, not a copy of every
                    // backup (which, every 30 s, grew the console).
                    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                    let res = Repo::open(&path).and_then(|r| {
                        let changed = r.refresh(&mut cache.0)?;
                        let fresh = match (&cache.1, changed) {
                            (Some(b), false) => (b.clone(), false),
                            _ => (Arc::new(cache.0.shared()), true),
                        };
                        cache.1 = Some(fresh.0.clone());
                        Ok(fresh)
                    });
                    drop(cache);
                    let (res, changed) = match res {
                        Ok((b, changed)) => (Ok(b), changed),
                        Err(e) => (Err(e), true),
                    };
                    // Verify marks, runs, drills, off-site records and
                    // each VM's recovery point: one core call, the one
                    // `status --rpo` and `/metrics` make.
                    let snap = res.as_ref().ok().map(|b| {
                        lifeboat_core::rpo::snapshot(&config, &path, b, chrono::Utc::now())
                    });
                    if let Ok(b) = &res {
                        // Asking each running VM's QEMU may take seconds:
                        // not in the way of the listing.
                        let (b, config, tx, path) =
                            (Arc::clone(b), config.clone(), tx.clone(), path.clone());
                        tokio::task::spawn_blocking(move || {
                            let chunk = Repo::open(&path).map(|r| r.chunk_size()).unwrap_or(0);
                            let live = config
                                .vms
                                .iter()
                                .filter_map(|v| {
                                    let name = v.name.get_ref();
                                    lifeboat_core::config::requests::live_outlook(
                                        &config, name, &b, chunk,
                                    )
                                    .map(|o| (name.clone(), o))
                                })
                                .collect();
                            let _ = tx.send(Action::Live(live));
                        });
                    }
                    if let Ok(b) = &res {
                        let last =
                            lifeboat_core::plan::report::last_per_plan(&path).unwrap_or_default();
                        let rows =
                            crate::tui::app::plans::rows(&config, b, &last, chrono::Utc::now());
                        let _ = tx.send(Action::Plans(rows));
                    }
                    let _ = match res {
                        Ok(_) if !changed => tx.send(Action::Unchanged),
                        Ok(b) => tx.send(Action::Loaded(b)),
                        Err(e @ lifeboat_core::Error::Locked(_)) => {
                            tx.send(Action::NeedsKey(e.to_string()))
                        }
                        Err(e) => tx.send(Action::LoadFailed(e.to_string())),
                    };
                    if let Some(snap) = snap {
                        for p in snap.problems {
                            let _ = tx.send(Action::Log(p));
                        }
                        let _ = tx.send(Action::VerifyState(snap.verify));
                        let _ = tx.send(Action::Rpo(snap.vms));
                        let _ = tx.send(Action::Drills(snap.drills));
                    }
                });
            }
            Effect::LoadHistory => {
                let path = self.repo_path.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = match state::load_jobs(&path) {
                        Ok((jobs, bad)) => tx.send(Action::History(jobs, bad)),
                        Err(e) => tx.send(Action::Log(format!("job history: {e}"))),
                    };
                });
            }
            Effect::RecordJob(rec) => {
                let path = self.repo_path.clone();
                tokio::task::spawn_blocking(move || {
                    // Only a repository keeps a history (a failed first
                    // pull leaves none to write into).
                    if path.join(lifeboat_core::repo::CONFIG_FILE).exists() {
                        if let Err(e) = state::append_job(&path, rec) {
                            let _ = tx.send(Action::Log(format!("job history: {e}")));
                        }
                    }
                });
            }
            Effect::ListRemote(name) => {
                let store = self.store(&name);
                tokio::spawn(async move {
                    let started = Instant::now();
                    let res = async {
                        let store = store.map_err(|e| e.to_string())?;
                        // A dead remote is known within PROBE; a live one
                        // may take longer to list (many backups, a slow link).
                        tokio::time::timeout(PROBE, store.probe())
                            .await
                            .map_err(|_| format!("no answer within {} s", PROBE.as_secs()))?
                            .map_err(|e| lifeboat_core::text::describe(&e))?;
                        let keys =
                            tokio::time::timeout(LIST, repository::list_manifests(store.as_ref()))
                                .await
                                .map_err(|_| {
                                    format!("listing took more than {} s", LIST.as_secs())
                                })?
                                .map_err(|e| lifeboat_core::text::describe(&e))?;
                        Ok::<_, String>(keys.into_iter().map(|k| k.id).collect::<BTreeSet<_>>())
                    }
                    .await;
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    let _ = tx.send(Action::RemoteListed {
                        name,
                        result: res.map(|ids| (ms, ids)),
                    });
                });
            }
            Effect::Browse(name) => {
                let store = self.store(&name);
                tokio::spawn(async move {
                    let res = async {
                        let store = store.map_err(|e| e.to_string())?;
                        tokio::time::timeout(
                            Duration::from_secs(60),
                            repository::load_manifests(store.as_ref()),
                        )
                        .await
                        .map_err(|_| "timed out after 60 s".to_string())?
                        .map_err(|e| e.to_string())
                    }
                    .await;
                    let _ = tx.send(Action::RemoteBrowsed {
                        name,
                        result: res.map(|b| {
                            Arc::new(b.into_iter().map(|(k, m)| (k, Arc::new(m))).collect())
                        }),
                    });
                });
            }
            Effect::PlanTransfer {
                push,
                remote,
                scope,
            } => self.plan_transfer(push, remote, scope),
            Effect::PlanRestore { key, to, from } => {
                let title = format!("Restore {}/{} {}", key.vm, key.volume, key.id.short());
                self.plan_restore(title, key.id.to_hex(), to, VmStep::None, from)
            }
            Effect::PlanRestoreVm {
                reference,
                label,
                dir,
                define,
                from,
            } => {
                let step = VmStep::Domain {
                    define,
                    start: false,
                    keep_macs: false,
                    name: None,
                };
                self.plan_restore(
                    format!("Restore the VM {label}"),
                    reference,
                    dir,
                    step,
                    from,
                )
            }
            Effect::PlanCloud {
                reference,
                label,
                target,
                from,
            } => self.plan_cloud(reference, label, target, from),
            Effect::InstantRestore {
                reference,
                label,
                dir,
                from,
            } => self.instant(reference, label, dir, from),
            Effect::ListFiles {
                key,
                from,
                path,
                find,
            } => self.list_files(key, from, path, find),
            Effect::ExtractFiles {
                key,
                from,
                path,
                to,
            } => self.extract_files(key, from, path, to),
            Effect::CheckClouds => {
                let clouds = self.config.clouds.clone();
                tokio::spawn(async move {
                    let checks =
                        futures::future::join_all(clouds.iter().map(|(n, c)| async move {
                            match tokio::time::timeout(
                                LIST,
                                lifeboat_core::cloud::check_target(n, c),
                            )
                            .await
                            {
                                Ok(c) => c,
                                Err(_) => lifeboat_core::cloud::TargetCheck {
                                    target: n.clone(),
                                    provider: c.provider,
                                    ok: false,
                                    checks: vec!["failed: no answer within 60 s".into()],
                                },
                            }
                        }))
                        .await;
                    let _ = tx.send(Action::Clouds(checks));
                });
            }
            Effect::RunPlan(id) => self.run_plan(id),
            Effect::DropPlan(id) => {
                if let Ok(mut p) = self.plans.lock() {
                    p.remove(&id);
                }
            }
            Effect::Backup { vm } => self.backup(vm),
            Effect::Drill { vm, source } => self.drill(vm, source),
            Effect::PlanDrill { plan } => self.plan_drill(plan),
            Effect::RunPolicy { vm } => self.run_policy(vm),
            Effect::PlanPrune { vm } => self.plan_prune(vm),
            Effect::Verify { deep, remote: None } => self.verify(deep),
            Effect::Verify {
                deep,
                remote: Some(name),
            } => self.verify_remote(deep, name),
            Effect::Compare { a, b } => {
                let path = self.repo_path.clone();
                let title = format!("compare {} with {}", a.id.short(), b.id.short());
                self.spawn_blocking(title, move |cancel, _| {
                    let repo = Repo::open(&path)?;
                    let (ma, mb): (Manifest, Manifest) =
                        (repo.load_manifest(&a)?, repo.load_manifest(&b)?);
                    let (ia, ib) = (repo.read_index(&ma.index)?, repo.read_index(&mb.index)?);
                    check(cancel)?;
                    let labels = [app::backup_line(&a, &ma), app::backup_line(&b, &mb)];
                    show_diff(&tx, labels, &ia, &ib)
                });
            }
            Effect::CompareLive { key } => self.compare_live(key),
            Effect::CompareRemote { remote: name, key } => {
                let store = self.store(&name);
                let path = self.repo_path.clone();
                let title = format!("compare {name}'s {} with local", key.id.short());
                self.spawn_async(title, move |cancel, _| async move {
                    let store = store?;
                    let (m, _) = repository::fetch_manifest(store.as_ref(), &key).await?;
                    check(&cancel)?;
                    let (index, _) = repository::fetch_index(store.as_ref(), &m.index).await?;
                    let local = Repo::open(&path).ok();
                    let map =
                        chunkmap::held(&index, |c| local.as_ref().is_some_and(|r| r.has_chunk(c)));
                    let summary = vec![
                        format!("{name}'s copy of {}", app::backup_line(&key, &m)),
                        format!("against the local repository {}", path.display()),
                        format!(
                            "missing locally: {} (what a pull fetches) · 1 cell = {} chunk(s)",
                            bytes(map.missing_bytes),
                            map.per_cell
                        ),
                    ];
                    Ok(show_map(
                        &tx,
                        format!("Compare {name} with local"),
                        map,
                        summary,
                        true,
                    ))
                });
            }
        }
    }

    fn plan_transfer(&self, push: bool, name: String, scope: Scope) {
        let store = self.store(&name);
        let local = self.local();
        let what = scope.describe();
        let title = if push {
            format!("Push {what} to {name}{}", self.limit_note(&name))
        } else {
            format!("Pull {what} from {name}{}", self.limit_note(&name))
        };
        let plans = self.plans.clone();
        let next = self.hold_slot();
        let tx = self.tx.clone();
        self.spawn_async_as(
            JobKind::Plan,
            format!("plan: {}", title.to_lowercase()),
            move |cancel, progress| async move {
                let remote = store?;
                let (src, dst) = if push {
                    (local, remote)
                } else {
                    (remote, local)
                };
                let opts = SyncOptions {
                    init: !push,
                    ..Default::default()
                };
                let planned = async {
                    let selected = match &scope {
                        Scope::Backup(k) => vec![k.clone()],
                        other => {
                            progress.set_phase("listing backups");
                            let keys = repository::list_manifests(src.as_ref()).await?;
                            keys.into_iter()
                                .filter(|k| match other {
                                    Scope::Vm(vm) => &k.vm == vm,
                                    Scope::Volume { vm, volume } => {
                                        &k.vm == vm && &k.volume == volume
                                    }
                                    _ => true,
                                })
                                .collect()
                        }
                    };
                    if selected.is_empty() {
                        return Err(lifeboat_core::Error::BadInput(format!(
                            "{} holds no backups of {}",
                            src.describe(),
                            scope.describe()
                        )));
                    }
                    sync::plan(src.as_ref(), &dst, selected, &opts, &cancel, &progress).await
                }
                .await;
                let plan = planned.map_err(|e| plan_failed(&tx, &title, e))?;
                let s = &plan.summary;
                let mut lines = vec![
                    format!("from {}", escape(&s.source)),
                    format!("to   {}", escape(&s.destination)),
                ];
                let noop = s.manifests_to_send == 0;
                if noop {
                    lines.push(format!(
                        "the destination already holds all {} selected backup(s): nothing to send",
                        s.manifests_selected
                    ));
                } else {
                    lines.push(format!(
                        "{} of {} selected backup(s) to send",
                        s.manifests_to_send, s.manifests_selected
                    ));
                    lines.push(format!(
                        "{} of {} chunks to send, {} of data",
                        s.chunks_to_send,
                        s.chunks_referenced,
                        bytes(s.data_bytes_to_send),
                    ));
                    lines.push(format!(
                        "{} chunks already there; {} index(es)",
                        s.chunks_already_there, s.indexes_to_send
                    ));
                    if s.creates_repository {
                        lines.push("creates the repository there first".into());
                    }
                    if let Some(note) = s.key_note() {
                        lines.push(note.into());
                    }
                    lines.push("every chunk is verified as it moves".into());
                }
                let held = Held::Transfer {
                    title: title.clone(),
                    src,
                    dst,
                    plan: Box::new(plan),
                };
                Ok(offer(&plans, &tx, next, held, title, lines, noop))
            },
        );
    }

    /// An id for a plan that a job will hold when it is ready.
    fn hold_slot(&self) -> u64 {
        self.next_plan.fetch_add(1, Ordering::Relaxed)
    }

    /// Plans a restore of `reference` (a backup's id, or a VM set) to
    /// `to`, with the VM step `step` after it.
    fn plan_restore(
        &self,
        title: String,
        reference: String,
        to: String,
        step: VmStep,
        from: Option<String>,
    ) {
        let remote = from.as_ref().map(|r| self.store(r));
        let local_path = self.repo_path.clone();
        let from_txt = from
            .as_ref()
            .map(|r| format!(" from {r}{}", self.limit_note(r)))
            .unwrap_or_default();
        let title = format!("{title}{from_txt}");
        let req = RestoreRequest {
            reference,
            to: PathBuf::from(&to),
            format: None,
            // The console never replaces an existing file.
            force: false,
            ceph: self.config.ceph.clone().unwrap_or_default(),
            name: None,
        };
        let plans = self.plans.clone();
        let next = self.hold_slot();
        let tx = self.tx.clone();
        self.spawn_async_as(
            JobKind::Plan,
            format!("plan: {}", title.to_lowercase()),
            move |cancel, progress| async move {
                let remote = remote.transpose()?;
                let planned = match &remote {
                    Some(r) => {
                        restore::plan_remote(
                            r.as_ref(),
                            &local_path,
                            &req,
                            true,
                            &cancel,
                            &progress,
                        )
                        .await
                    }
                    None => {
                        let lp = local_path.clone();
                        let rq = req.clone();
                        tokio::task::spawn_blocking(move || {
                            restore::plan_local(&Repo::open(&lp)?, &rq)
                        })
                        .await
                        .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))?
                    }
                };
                let plan = planned.map_err(|e| plan_failed(&tx, &title, e))?;
                // The lines `restore --dry-run` prints.
                let mut lines = plan.lines(from.as_deref());
                lines.extend(step.lines(&plan));
                let held = Held::Restore {
                    title: title.clone(),
                    remote,
                    plan: Box::new(plan),
                    step,
                };
                Ok(offer(&plans, &tx, next, held, title, lines, false))
            },
        );
    }

    fn plan_cloud(&self, reference: String, label: String, target: String, from: Option<String>) {
        let title = format!(
            "Restore {label}{} into cloud {target}",
            from.as_ref()
                .map(|r| format!(" from {r}"))
                .unwrap_or_default()
        );
        let cfg = self.config.clouds.get(&target).cloned();
        let upload_limit = self.config.overrides.limits.upload;
        let store = match &from {
            Some(r) => self.store(r),
            None => Ok(self.local()),
        };
        let (plans, next, tx) = (self.plans.clone(), self.hold_slot(), self.tx.clone());
        self.spawn_async_as(
            JobKind::Plan,
            format!("plan: {}", title.to_lowercase()),
            move |_cancel, _progress| async move {
                let planned = async {
                    let cfg = cfg.ok_or_else(|| {
                        lifeboat_core::Error::BadInput(format!("no cloud target named {target}"))
                    })?;
                    let provider: Arc<dyn lifeboat_core::cloud::Provider> =
                        Arc::from(lifeboat_core::cloud::open(&target, &cfg)?);
                    let store = store?;
                    let plan = lifeboat_core::cloud::plan(
                        &target,
                        provider.as_ref(),
                        cfg.provider,
                        &store,
                        from.as_deref().unwrap_or("local"),
                        &reference,
                    )
                    .await?;
                    Ok::<_, lifeboat_core::Error>((plan, provider, cfg.ready_timeout()))
                }
                .await;
                let (plan, provider, ready) = planned.map_err(|e| plan_failed(&tx, &title, e))?;
                // The lines `cloud-restore --dry-run` prints.
                let mut lines = plan.lines(upload_limit);
                lines.push("on failure or cancel (x) what was created is removed".into());
                let held = Held::Cloud {
                    title: title.clone(),
                    plan: Box::new(plan),
                    provider,
                    opts: lifeboat_core::cloud::ExecOptions {
                        keep_on_failure: false,
                        ready_timeout: Some(ready),
                        upload_limit,
                    },
                };
                Ok(offer(&plans, &tx, next, held, title, lines, false))
            },
        );
    }

    fn run_plan(&self, id: u64) {
        let Some(held) = self.plans.lock().ok().and_then(|mut p| p.remove(&id)) else {
            let _ = self
                .tx
                .send(Action::Log(format!("plan {id} is no longer held")));
            return;
        };
        match held {
            Held::Prune { vm, plan } => {
                let path = self.repo_path.clone();
                self.spawn_async(format!("prune {vm}"), move |cancel, _progress| async move {
                    let store = LocalStore::new(&path);
                    plan.execute(&store, &cancel).await?;
                    Ok(plan.summary(true))
                });
            }
            Held::Transfer {
                title,
                src,
                dst,
                plan,
            } => {
                self.spawn_async(title.to_lowercase(), move |cancel, progress| async move {
                    let opts = SyncOptions {
                        init: plan.summary.creates_repository,
                        ..Default::default()
                    };
                    let done =
                        sync::execute(src.as_ref(), dst.as_ref(), &plan, &opts, &cancel, &progress)
                            .await;
                    plan.finish().await;
                    let r = done?;
                    Ok(format!(
                        "{} chunks, {} sent",
                        r.chunks_sent,
                        bytes(r.bytes_sent)
                    ))
                });
            }
            Held::Cloud {
                title,
                plan,
                provider,
                opts,
            } => {
                self.spawn_async_as(
                    JobKind::CloudRestore,
                    title.to_lowercase(),
                    move |cancel, progress| async move {
                        let out = lifeboat_core::cloud::execute(
                            &plan,
                            provider.as_ref(),
                            opts,
                            &cancel,
                            &progress,
                        )
                        .await?;
                        Ok(format!(
                            "server {} ({}) {} at {}; console: {}",
                            out.server.id,
                            out.server.name,
                            out.server.status,
                            if out.server.addresses.is_empty() {
                                "no address yet".to_string()
                            } else {
                                out.server.addresses.join(", ")
                            },
                            out.server.console
                        ))
                    },
                );
            }
            Held::Restore {
                title,
                remote,
                plan,
                step,
            } => {
                let local_path = self.repo_path.clone();
                let config = self.config.clone();
                self.spawn_async(title.to_lowercase(), move |cancel, progress| async move {
                    let picked = plan.picked.clone();
                    let out =
                        restore::execute(*plan, remote.as_deref(), &local_path, &cancel, &progress)
                            .await?;
                    let written: u64 = out.iter().map(|o| o.bytes_written).sum();
                    let digest = out.first().map(|o| o.index.short());
                    let summary = format!(
                        "{} written, digest {}",
                        bytes(written),
                        digest.unwrap_or_default()
                    );
                    if step == VmStep::None {
                        return Ok(summary);
                    }
                    // The domain XML and virsh: blocking work, off the runtime.
                    let p = progress.clone();
                    let uri = config.libvirt.as_ref().and_then(|l| l.uri.clone());
                    let done = tokio::task::spawn_blocking(move || {
                        let repo = Repo::open(&local_path)?;
                        lifeboat_core::vm::restore::finish(
                            &step,
                            uri.as_deref(),
                            &repo,
                            &picked,
                            &out,
                            |vm| config.definition_for_backup(vm),
                            |lines| {
                                for line in lines {
                                    p.push_line(&line);
                                }
                            },
                        )
                    })
                    .await
                    .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))??;
                    for line in done.lines() {
                        progress.push_line(&line);
                    }
                    match (done.failure(), done.summary()) {
                        (Some(f), _) => Err(lifeboat_core::Error::BadInput(f)),
                        (None, Some(vm)) => Ok(format!("{summary}; {vm}")),
                        (None, None) => Ok(summary),
                    }
                });
            }
        }
    }

    fn backup(&self, vm: String) {
        let path = self.repo_path.clone();
        let config = self.config.clone();
        self.spawn_blocking(format!("backup {vm}"), move |cancel, progress| {
            // May ask virsh: off the console's thread.
            let definition = config.definition_for_backup(&vm);
            let repo = Repo::open(&path)?;
            let mut req = lifeboat_core::config::requests::backup_request(
                &config,
                &vm,
                &[],
                Default::default(),
            )?;
            req.note = Some("from the console".into());
            req.definition = definition;
            let r = lifeboat_core::backup::backup(&repo, &req, cancel, progress)?;
            let new: u64 = r.volumes.iter().map(|v| v.stats.new_stored_bytes).sum();
            Ok(format!("{} volumes, {} new", r.volumes.len(), bytes(new)))
        });
    }

    /// A drill as a job: its report goes to the job's log (all lines)
    /// and the history; a failed drill is a failed job.
    fn drill(&self, vm: String, source: String) {
        let overrides = lifeboat_core::drill::DrillOverrides {
            from: Some(source.clone()),
            ..Default::default()
        };
        let (config, root) = (self.config.clone(), self.repo_path.clone());
        let store = lifeboat_core::config::requests::open_drill_source(&self.config, &source);
        self.spawn_async_as(
            JobKind::Drill,
            format!("drill {vm} from {source}"),
            move |cancel, progress| async move {
                let req = lifeboat_core::config::requests::drill_request(&config, &vm, &overrides)?;
                let store = store?;
                let r = lifeboat_core::drill::run_recorded(
                    &root,
                    store.as_deref(),
                    &req,
                    &cancel,
                    &progress,
                )
                .await;
                drill_result(r.outcome, lifeboat_core::drill::describe(&r))
            },
        );
    }

    /// A recovery plan's drill as a job, with a part of its progress per
    /// VM (the console's panel per VM); its report goes to the job's log
    /// and the history.
    fn plan_drill(&self, plan: String) {
        let (config, root) = (self.config.clone(), self.repo_path.clone());
        let req = lifeboat_core::config::requests::plan_drill_request(
            &self.config,
            &plan,
            &Default::default(),
        );
        let source = req.as_ref().map(|r| r.source.clone()).unwrap_or_default();
        self.spawn_async_as(
            JobKind::PlanDrill,
            format!("drill plan {plan} from {source}"),
            move |cancel, progress| async move {
                let req = req?;
                let store =
                    lifeboat_core::config::requests::open_drill_source(&config, &req.source)?;
                let r = lifeboat_core::plan::drill::run_recorded(
                    &root,
                    store.as_deref(),
                    &req,
                    &cancel,
                    &progress,
                )
                .await;
                drill_result(r.outcome, lifeboat_core::plan::report::describe(&r))
            },
        );
    }

    /// Where a backup is read from: the local repository, or a remote
    /// (opened here, under its limits).
    async fn source(
        config: &lifeboat_core::config::Config,
        root: &std::path::Path,
        from: Option<&str>,
    ) -> lifeboat_core::Result<lifeboat_core::nbd_export::Source> {
        use lifeboat_core::nbd_export::Source;
        Ok(match from {
            None => Source::Local(root.to_path_buf()),
            Some(r) => {
                let store = remote::resolve(config, r)?.1;
                Source::Remote(lifeboat_core::repository::Repository::open(store).await?)
            }
        })
    }

    fn instant(&self, reference: String, label: String, dir: String, from: Option<String>) {
        use lifeboat_core::vm::instant;
        let (config, root) = (self.config.clone(), self.repo_path.clone());
        let title = format!("instant restore of {label} into {dir}");
        self.spawn_async(title, move |cancel, progress| async move {
            let source = Self::source(&config, &root, from.as_deref()).await?;
            let accel =
                lifeboat_core::vm::boot::accel_name(lifeboat_core::vm::qemu::Accel::Auto);
            let choices = instant::Choices {
                dir: PathBuf::from(dir),
                name: None,
                accel: accel.into(),
                forwards: Vec::new(),
            };
            let req = instant::prepare(
                source,
                &reference,
                |vm| config.definition_for_backup(vm),
                choices,
            )
            .await?;
            let r = tokio::task::spawn_blocking(move || instant::run(req, &cancel, &progress))
                .await
                .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))??;
            Ok(format!(
                "VM {} runs on {} (pid {}); it ran on its backup after {:.1}s, on its local disks after {:.1}s; monitor {}",
                r.vm,
                r.disks
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.pid,
                r.running_after_secs,
                r.local_after_secs,
                r.qmp.display()
            ))
        });
    }

    fn list_files(
        &self,
        key: ManifestKey,
        from: Option<String>,
        path: Option<String>,
        find: Option<String>,
    ) {
        let (config, root, tx) = (self.config.clone(), self.repo_path.clone(), self.tx.clone());
        tokio::spawn(async move {
            let reference = key.id.to_hex();
            let res: lifeboat_core::Result<_> = async {
                let source = Self::source(&config, &root, from.as_deref()).await?;
                let (export, _) = lifeboat_core::nbd_export::open(source, &reference, 16).await?;
                let (p, f) = (path.clone(), find.clone());
                tokio::task::spawn_blocking(move || file_rows(export, p.as_deref(), f.as_deref()))
                    .await
                    .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))?
            }
            .await;
            let _ = tx.send(Action::FilesListed {
                key,
                path,
                find,
                result: res.map_err(|e| e.to_string()),
            });
        });
    }

    fn extract_files(&self, key: ManifestKey, from: Option<String>, path: String, to: String) {
        let (config, root) = (self.config.clone(), self.repo_path.clone());
        let title = format!("extract {path} from {}/{} into {to}", key.vm, key.volume);
        self.spawn_async(title, move |cancel, progress| async move {
            let source = Self::source(&config, &root, from.as_deref()).await?;
            let (export, name) =
                lifeboat_core::nbd_export::open(source, &key.id.to_hex(), 16).await?;
            let got = tokio::task::spawn_blocking(move || {
                progress.set_phase("extracting");
                let vol = lifeboat_core::files::Volume::open(std::sync::Arc::new(export))?;
                vol.extract(&path, std::path::Path::new(&to), &cancel, &mut |n| {
                    progress.add(n, 0)
                })
            })
            .await
            .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))??;
            Ok(format!(
                "extracted {} from {name}: {} files, {} directories, {} symlinks{}",
                got.path.display(),
                got.files,
                got.dirs,
                got.symlinks,
                if got.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped: {}", got.skipped.join("; "))
                }
            ))
        });
    }

    fn run_policy(&self, vm: String) {
        let (config, root) = (self.config.clone(), self.repo_path.clone());
        self.spawn_async(
            format!("policy run {vm}"),
            move |cancel, _progress| async move {
                let r = lifeboat_core::daemon::runner::run_now(&config, &root, &vm, cancel).await?;
                match r.outcome {
                    lifeboat_core::daemon::runs::RunOutcome::Ok => Ok(r.steps.join("; ")),
                    _ => Err(lifeboat_core::Error::BadInput(format!(
                        "{}: {}",
                        r.steps.join("; "),
                        r.error.unwrap_or_default()
                    ))),
                }
            },
        );
    }

    /// The prune plan of `vm` under its policy, offered for confirmation.
    fn plan_prune(&self, vm: String) {
        let (config, root, tx, plans) = (
            self.config.clone(),
            self.repo_path.clone(),
            self.tx.clone(),
            self.plans.clone(),
        );
        let id = self
            .next_plan
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.spawn_async_as(
            JobKind::Plan,
            format!("plan: prune {vm}"),
            move |_cancel, _progress| async move {
                let title = format!("Prune {vm}");
                let Some(policy) = config.policy_for(&vm).cloned() else {
                    let _ = tx.send(Action::PlanFailed {
                        title,
                        error: format!(
                            "{vm} has no policy: set default_policy or policy on its [[vm]]"
                        ),
                    });
                    return Ok("no policy".into());
                };
                if policy.retention_for(None).is_none() {
                    let _ = tx.send(Action::PlanFailed {
                        title,
                        error: format!("policy {} keeps everything (no keep_* rule)", policy.name),
                    });
                    return Ok("no retention".into());
                }
                let backups = {
                    let root = root.clone();
                    tokio::task::spawn_blocking(move || {
                        lifeboat_core::repo::Repo::open(&root)?.load_all()
                    })
                    .await
                    .map_err(|e| lifeboat_core::Error::Internal(e.to_string()))??
                };
                // The one planner (the CLI's and the daemon's): sets an
                // off-site copy lacks are held.
                let store: DynStore = std::sync::Arc::new(LocalStore::new(&root));
                let req = lifeboat_core::daemon::prune::PruneRequest {
                    vms: vec![vm.clone()],
                    rules: None,
                    remote: None,
                };
                let plan =
                    lifeboat_core::daemon::prune::plan(&config, &store, &backups, &req).await?;
                let mut lines = plan.lines();
                lines[0] = format!("policy {}: {}", policy.name, lines[0]);
                let noop = plan.is_noop();
                Ok(offer(
                    &plans,
                    &tx,
                    id,
                    Held::Prune {
                        vm: vm.clone(),
                        plan,
                    },
                    title,
                    lines,
                    noop,
                ))
            },
        );
    }

    fn verify(&self, deep: bool) {
        let path = self.repo_path.clone();
        let tx = self.tx.clone();
        let title = if deep { "deep verify" } else { "quick verify" }.to_string();
        self.spawn_blocking(title, move |cancel, progress| {
            let repo = Repo::open(&path)?;
            let r = lifeboat_core::repo::verify::verify(&repo, None, deep, cancel, progress)?;
            // Each backup's result is kept (Details and the timeline show
            // it, after a restart too).
            let marks = r.marks(chrono::Utc::now());
            let _ = match state::record_verify(&path, &marks) {
                Ok(all) => tx.send(Action::VerifyState(all)),
                Err(e) => tx.send(Action::Log(format!("verify record: {e}"))),
            };
            verify_summary(&r)
        });
    }

    fn verify_remote(&self, deep: bool, name: String) {
        let store = self.store(&name);
        let title = format!("{} verify of {name}", if deep { "deep" } else { "quick" });
        self.spawn_async(title, move |cancel, progress| async move {
            let store = store?;
            let r = sync::verify::verify_remote(store.as_ref(), deep, &cancel, &progress).await?;
            verify_summary(&r)
        });
    }

    fn compare_live(&self, key: ManifestKey) {
        let path = self.repo_path.clone();
        let volume = self
            .config
            .vm(&key.vm)
            .and_then(|v| v.volumes.iter().find(|x| *x.name.get_ref() == key.volume))
            .cloned();
        let ceph = self.config.ceph.clone().unwrap_or_default();
        let tx = self.tx.clone();
        let title = format!(
            "compare {}/{} {} with the live volume",
            key.vm,
            key.volume,
            key.id.short()
        );
        self.spawn_blocking(title, move |cancel, progress| {
            let volume = volume.ok_or_else(|| {
                lifeboat_core::Error::BadInput(format!(
                    "{}/{} is not in the inventory: no live volume to compare",
                    key.vm, key.volume
                ))
            })?;
            let repo = Repo::open(&path)?;
            let m = repo.load_manifest(&key)?;
            let ia = repo.read_index(&m.index)?;
            progress.set_phase("hashing the live volume");
            let mut src = lifeboat_core::source::open_in(&volume.path, volume.format, &ceph)?;
            let live = lifeboat_core::backup::pipeline::scan(
                src.reader.as_mut(),
                ia.chunk_size,
                None,
                None,
                cancel,
                progress,
            )?;
            let labels = [
                app::backup_line(&key, &m),
                format!("live volume {}", volume.path.display()),
            ];
            show_diff(&tx, labels, &ia, &live.index)
        });
    }

    /// Tracks a job for progress and cancel; reports its result when it
    /// succeeds (start, failure and cancellation arrive as job events).
    fn track(&self, job: Job<String>) {
        let id = job.id;
        if let Ok(mut j) = self.jobs.lock() {
            j.insert(
                id,
                Running {
                    cancel: job.cancel.clone(),
                    progress: job.progress.clone(),
                },
            );
        }
        let (tx, jobs) = (self.tx.clone(), self.jobs.clone());
        let progress = job.progress.clone();
        tokio::spawn(async move {
            let res = job.wait().await;
            // The last lines (a cancel's cleanup) arrive after the last sample.
            let _ = tx.send(Action::JobProgress {
                id,
                snapshot: progress.snapshot(),
                output: progress.tail(OUTPUT_LINES),
                parts: progress
                    .parts()
                    .into_iter()
                    .map(|(name, p)| Part {
                        name,
                        snapshot: p.snapshot(),
                        output: p.tail(PART_LINES),
                    })
                    .collect(),
            });
            if let Ok(mut j) = jobs.lock() {
                j.remove(&id);
            }
            if let Ok(summary) = res {
                let _ = tx.send(Action::JobDone {
                    id,
                    result: Ok(summary),
                    cancelled: false,
                });
            }
        });
    }

    fn spawn_blocking(
        &self,
        title: String,
        f: impl FnOnce(&CancellationToken, &Progress) -> lifeboat_core::Result<String> + Send + 'static,
    ) {
        self.track(Job::spawn(JobKind::Other, &title, self.events.clone(), f));
    }

    fn spawn_async<F, Fut>(&self, title: String, f: F)
    where
        F: FnOnce(CancellationToken, Arc<Progress>) -> Fut,
        Fut: std::future::Future<Output = lifeboat_core::Result<String>> + Send + 'static,
    {
        self.spawn_async_as(JobKind::Other, title, f)
    }

    fn spawn_async_as<F, Fut>(&self, kind: JobKind, title: String, f: F)
    where
        F: FnOnce(CancellationToken, Arc<Progress>) -> Fut,
        Fut: std::future::Future<Output = lifeboat_core::Result<String>> + Send + 'static,
    {
        self.track(Job::spawn_async(kind, &title, self.events.clone(), f));
    }
}

/// A file browser's rows for `path` (or a search under it), with what
/// reading them cost.
fn file_rows(
    export: lifeboat_core::nbd_export::Export,
    path: Option<&str>,
    find: Option<&str>,
) -> lifeboat_core::Result<(Vec<FileRow>, String)> {
    use lifeboat_core::files::{Kind, Listing, Volume};
    use lifeboat_core::text::bytes;
    let export = std::sync::Arc::new(export);
    let vol = Volume::open(export.clone())?;
    let rows = match vol.browse(path, find)? {
        Listing::Filesystems(fs) => fs
            .into_iter()
            .map(|f| FileRow {
                path: f.name.clone(),
                name: f.name,
                dir: f.detected.not_readable().is_none(),
                detail: format!(
                    "{} {} {} {}",
                    f.detected.word(),
                    bytes(f.len),
                    f.label,
                    f.detected.not_readable().unwrap_or("")
                ),
            })
            .collect(),
        Listing::Entries(list) => list
            .into_iter()
            .map(|(p, e)| {
                let when = chrono::DateTime::from_timestamp(e.mtime.0, e.mtime.1)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default();
                let mut name = if find.is_some() {
                    p.clone()
                } else {
                    e.name_text()
                };
                if e.kind == Kind::Dir {
                    name.push('/');
                }
                if let Some(t) = &e.target {
                    name = format!("{name} -> {}", String::from_utf8_lossy(t));
                }
                FileRow {
                    path: p,
                    name,
                    dir: e.kind == Kind::Dir,
                    detail: format!(
                        "{} {:>5}:{:<5} {:>10} {when}",
                        e.mode_text(),
                        e.uid,
                        e.gid,
                        bytes(e.size)
                    ),
                }
            })
            .collect(),
    };
    let (read, total) = export.chunks_read();
    Ok((rows, format!("read {read} of the volume's {total} chunks")))
}

/// Tells the console that planning failed (it shows why) and passes the
/// error on to the planning job.
fn plan_failed(
    tx: &UnboundedSender<Action>,
    title: &str,
    e: lifeboat_core::Error,
) -> lifeboat_core::Error {
    let _ = tx.send(Action::PlanFailed {
        title: format!("Cannot plan: {title}"),
        error: lifeboat_core::text::describe(&e),
    });
    e
}

/// Holds a finished plan under `id` and asks the console to confirm it;
/// returns the planning job's summary.
fn offer(
    plans: &Mutex<HashMap<u64, Held>>,
    tx: &UnboundedSender<Action>,
    id: u64,
    held: Held,
    title: String,
    lines: Vec<String>,
    noop: bool,
) -> String {
    if let Ok(mut p) = plans.lock() {
        p.insert(id, held);
    }
    let _ = tx.send(Action::Planned {
        plan: id,
        title,
        lines,
        noop,
    });
    if noop {
        "nothing to do".to_string()
    } else {
        "planned; waiting for confirmation".to_string()
    }
}

/// A job's lifecycle event as a console action. Success is reported by
/// `track` with the job's summary instead.
pub fn event_action(ev: JobEvent) -> Option<Action> {
    match ev {
        JobEvent::Started { id, title, kind } => Some(Action::JobStarted { id, title, kind }),
        JobEvent::Finished { .. } => None,
        JobEvent::Failed { id, error } => Some(Action::JobDone {
            id,
            result: Err(error),
            cancelled: false,
        }),
        JobEvent::Cancelled { id } => Some(Action::JobDone {
            id,
            result: Err("cancelled".into()),
            cancelled: true,
        }),
    }
}

/// A verify's result as a job result: damage fails the job, naming it.
fn verify_summary(r: &lifeboat_core::repo::verify::VerifyReport) -> lifeboat_core::Result<String> {
    if r.ok() {
        Ok(format!("ok: {} backups, {} chunks", r.manifests, r.chunks))
    } else {
        Err(lifeboat_core::Error::BadInput(format!(
            "{} damaged objects break {} backup(s): {}",
            r.problems.len(),
            r.broken.len(),
            r.problems
                .iter()
                .take(3)
                .map(|p| format!("{} {} ({})", p.kind, &p.id[..12.min(p.id.len())], p.problem))
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }
}

fn check(cancel: &CancellationToken) -> lifeboat_core::Result<()> {
    if cancel.is_cancelled() {
        Err(lifeboat_core::Error::Cancelled)
    } else {
        Ok(())
    }
}

/// The chunk map and byte summary of two images A and B, shown.
fn show_diff(
    tx: &UnboundedSender<Action>,
    [a, b]: [String; 2],
    ia: &lifeboat_core::format::Index,
    ib: &lifeboat_core::format::Index,
) -> lifeboat_core::Result<String> {
    let d = lifeboat_core::format::diff::diff(ia, ib)?;
    let map = chunkmap::between(ia, ib);
    let summary = vec![
        format!("A {a}"),
        format!("B {b}"),
        format!(
            "same {} · changed {} · added {} · removed {} · 1 cell = {} chunk(s)",
            bytes(d.same_bytes),
            bytes(d.changed_bytes),
            bytes(d.added_bytes),
            bytes(d.removed_bytes),
            map.per_cell
        ),
    ];
    Ok(show_map(tx, "Compare".into(), map, summary, false))
}

fn show_map(
    tx: &UnboundedSender<Action>,
    title: String,
    map: ChunkMap,
    summary: Vec<String>,
    held: bool,
) -> String {
    let line = summary.last().cloned().unwrap_or_default();
    let _ = tx.send(Action::CompareReady {
        title,
        cells: map.cells,
        summary,
        held,
    });
    line
}

/// Unlocks the local repository with what the console's prompt took: a
/// recovery key (`lbk1-…`) or a passphrase that opens one of its slots.
fn unlock_repo(
    path: &std::path::Path,
    typed: &crate::tui::app::Secret,
) -> lifeboat_core::Result<()> {
    use lifeboat_core::crypto;
    let repo = Repo::open(path)?;
    let Some(enc) = &repo.config.encryption else {
        return Ok(());
    };
    let text = typed.0.trim();
    let key = if text.to_ascii_lowercase().starts_with("lbk1-") {
        enc.accept(crypto::MasterKey::from_recovery_text(text)?)?
    } else {
        enc.open_with_passphrase(typed.0.as_bytes())?
    };
    crypto::unlock(&key);
    Ok(())
}
