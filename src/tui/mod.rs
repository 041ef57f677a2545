//! The console: ratatui + crossterm on tokio. One state (`app::App`),
//! `update` without I/O returning effects, rendering from state only
//! (`view`); this module owns the terminal and runs effects as core jobs.

pub mod app;
pub mod keymap;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use app::{Action, App, Cell, Effect};
use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use lifeboat::config::Config;
use lifeboat::jobs::{CancellationToken, Job, Progress};
use lifeboat::repo::{Manifest, ManifestKey, Repo};
use lifeboat::store::local::LocalStore;
use lifeboat::store::{remote, DynStore};
use lifeboat::sync::{self, SyncOptions};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc::{self, UnboundedSender};

/// Frames are drawn at most this often, and only when something changed.
const MIN_FRAME: Duration = Duration::from_millis(16);
/// How often running jobs' progress is sampled.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Log lines from tracing go to the Log pane and to a file, never over the screen.
#[derive(Clone)]
pub struct LogSink {
    file: Arc<Mutex<Option<std::fs::File>>>,
    tx: Arc<Mutex<Option<UnboundedSender<Action>>>>,
}

impl LogSink {
    pub fn new(path: Option<PathBuf>) -> LogSink {
        let file = path.and_then(|p| {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        LogSink {
            file: Arc::new(Mutex::new(file)),
            tx: Arc::new(Mutex::new(None)),
        }
    }

    fn connect(&self, tx: UnboundedSender<Action>) {
        if let Ok(mut t) = self.tx.lock() {
            *t = Some(tx);
        }
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(buf);
            }
        }
        if let Ok(t) = self.tx.lock() {
            if let Some(t) = t.as_ref() {
                let line = String::from_utf8_lossy(buf).trim_end().to_string();
                if !line.is_empty() {
                    let _ = t.send(Action::Log(line));
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

struct Running {
    cancel: CancellationToken,
    progress: Arc<Progress>,
}

struct Runner {
    config: Config,
    repo_path: PathBuf,
    tx: UnboundedSender<Action>,
    jobs: Arc<Mutex<HashMap<u64, Running>>>,
}

impl Runner {
    /// Opens a configured remote (the same lookup the CLI uses).
    fn store(&self, name: &str) -> lifeboat::Result<DynStore> {
        remote::resolve(&self.config, name).map(|(_, s)| s)
    }

    fn exec(&self, e: Effect) {
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
            Effect::Reload => {
                let path = self.repo_path.clone();
                tokio::task::spawn_blocking(move || {
                    let res = Repo::open(&path).and_then(|r| r.load_all());
                    let _ = match res {
                        Ok(b) => tx.send(Action::Loaded(b)),
                        Err(e) => tx.send(Action::Log(format!("local repository: {e}"))),
                    };
                });
            }
            Effect::ListRemote(name) => {
                let store = self.store(&name);
                tokio::spawn(async move {
                    let started = Instant::now();
                    let res = async {
                        let store = store.map_err(|e| e.to_string())?;
                        let keys = tokio::time::timeout(
                            Duration::from_secs(10),
                            sync::list_manifests(store.as_ref()),
                        )
                        .await
                        .map_err(|_| "timed out after 10 s".to_string())?
                        .map_err(|e| e.to_string())?;
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
            Effect::Push { remote: name, key } => {
                let store = self.store(&name);
                let local: DynStore = Arc::new(LocalStore::new(&self.repo_path));
                let title = format!("push {}/{} {} → {name}", key.vm, key.volume, key.id.short());
                self.spawn_async(title, move |cancel, progress| async move {
                    let dst = store?;
                    let r = sync::transfer(
                        local.as_ref(),
                        dst.as_ref(),
                        vec![key],
                        &SyncOptions::default(),
                        &cancel,
                        &progress,
                    )
                    .await?;
                    Ok(format!(
                        "{} chunks, {} sent",
                        r.chunks_sent,
                        crate::cli::output::bytes(r.bytes_sent)
                    ))
                });
            }
            Effect::Restore { key, to, from } => {
                let path = self.repo_path.clone();
                let remote_store = from.as_ref().map(|r| self.store(r));
                let from_txt = from
                    .as_ref()
                    .map(|r| format!(" from {r}"))
                    .unwrap_or_default();
                let title = format!(
                    "restore {}/{} {}{from_txt} → {to}",
                    key.vm,
                    key.volume,
                    key.id.short()
                );
                self.spawn_async(title, move |cancel, progress| async move {
                    // From a remote: fetch its manifest and the chunks the local
                    // repository lacks (verified, kept as a cache), then restore.
                    let manifest = match remote_store {
                        Some(src) => {
                            let src = src?;
                            let local: DynStore = Arc::new(LocalStore::new(&path));
                            let opts = SyncOptions {
                                init: true,
                                manifests: false,
                                ..Default::default()
                            };
                            sync::transfer(
                                src.as_ref(),
                                local.as_ref(),
                                vec![key.clone()],
                                &opts,
                                &cancel,
                                &progress,
                            )
                            .await?;
                            Some(sync::fetch_manifest(src.as_ref(), &key).await?)
                        }
                        None => None,
                    };
                    let task = tokio::task::spawn_blocking(move || {
                        let repo = Repo::open(&path)?;
                        let m = match manifest {
                            Some(m) => m,
                            None => repo.load_manifest(&key)?,
                        };
                        let index = repo.read_index(&m.index)?;
                        let fmt = if to.ends_with(".qcow2") {
                            lifeboat::repo::manifest::ImageFormat::Qcow2
                        } else {
                            lifeboat::repo::manifest::ImageFormat::Raw
                        };
                        let plan = lifeboat::restore::plan(
                            &key.id.to_hex(),
                            &m,
                            &index,
                            &PathBuf::from(&to),
                            fmt,
                            false,
                        )?;
                        let out =
                            lifeboat::restore::restore(&repo, &index, &plan, &cancel, &progress)?;
                        Ok::<_, lifeboat::Error>(format!(
                            "{} written, digest {}",
                            crate::cli::output::bytes(out.bytes_written),
                            &out.index[..12]
                        ))
                    });
                    task.await.map_err(|e| {
                        lifeboat::Error::Invalid(format!("restore task failed: {e}"))
                    })?
                });
            }
            Effect::Pull { remote: name, key } => {
                let store = self.store(&name);
                let local: DynStore = Arc::new(LocalStore::new(&self.repo_path));
                let title = format!("pull {}/{} {} ← {name}", key.vm, key.volume, key.id.short());
                self.spawn_async(title, move |cancel, progress| async move {
                    let src = store?;
                    let opts = SyncOptions {
                        init: true,
                        ..Default::default()
                    };
                    let r = sync::transfer(
                        src.as_ref(),
                        local.as_ref(),
                        vec![key],
                        &opts,
                        &cancel,
                        &progress,
                    )
                    .await?;
                    Ok(format!(
                        "{} chunks, {} fetched",
                        r.chunks_sent,
                        crate::cli::output::bytes(r.bytes_sent)
                    ))
                });
            }
            Effect::Backup { vm } => {
                let path = self.repo_path.clone();
                let volumes: Vec<lifeboat::backup::VolumeSpec> = self
                    .config
                    .vm(&vm)
                    .map(|v| {
                        v.volumes
                            .iter()
                            .map(|x| lifeboat::backup::VolumeSpec {
                                name: x.name.get_ref().clone(),
                                role: x.role,
                                path: x.path.clone(),
                                format: x.format,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let title = format!("backup {vm}");
                self.spawn_blocking(title, move |cancel, progress| {
                    let repo = Repo::open(&path)?;
                    let req = lifeboat::backup::BackupRequest {
                        vm,
                        volumes,
                        note: Some("from the console".into()),
                        created_at: None,
                    };
                    let r = lifeboat::backup::backup(&repo, &req, cancel, progress)?;
                    let new: u64 = r.volumes.iter().map(|v| v.stats.new_stored_bytes).sum();
                    Ok(format!(
                        "{} volumes, {} new",
                        r.volumes.len(),
                        crate::cli::output::bytes(new)
                    ))
                });
            }
            Effect::Browse(name) => {
                let store = self.store(&name);
                tokio::spawn(async move {
                    let res = async {
                        let store = store.map_err(|e| e.to_string())?;
                        tokio::time::timeout(
                            Duration::from_secs(60),
                            sync::load_manifests(store.as_ref()),
                        )
                        .await
                        .map_err(|_| "timed out after 60 s".to_string())?
                        .map_err(|e| e.to_string())
                    }
                    .await;
                    let _ = tx.send(Action::RemoteBrowsed { name, result: res });
                });
            }
            Effect::Verify { deep } => {
                let path = self.repo_path.clone();
                let title = if deep { "deep verify" } else { "quick verify" }.to_string();
                self.spawn_blocking(title, move |cancel, progress| {
                    let repo = Repo::open(&path)?;
                    let r = lifeboat::repo::verify::verify(&repo, None, deep, cancel, progress)?;
                    if r.ok() {
                        Ok(format!("ok: {} backups, {} chunks", r.manifests, r.chunks))
                    } else {
                        Err(lifeboat::Error::Invalid(format!(
                            "{} damaged objects: {}",
                            r.problems.len(),
                            r.problems
                                .iter()
                                .take(3)
                                .map(|p| format!("{} {} ({})", p.kind, &p.id[..12], p.problem))
                                .collect::<Vec<_>>()
                                .join("; ")
                        )))
                    }
                });
            }
            Effect::CompareLive { key } => {
                let path = self.repo_path.clone();
                let volume = self
                    .config
                    .vm(&key.vm)
                    .and_then(|v| v.volumes.iter().find(|x| *x.name.get_ref() == key.volume))
                    .cloned();
                let title = format!(
                    "compare {}/{} {} with the live volume",
                    key.vm,
                    key.volume,
                    key.id.short()
                );
                self.spawn_blocking(title, move |cancel, progress| {
                    let volume = volume.ok_or_else(|| {
                        lifeboat::Error::Invalid(format!(
                            "{}/{} is not in the inventory: no live volume to compare",
                            key.vm, key.volume
                        ))
                    })?;
                    let (title, cells, summary) =
                        compare_live(&path, &key, &volume, cancel, progress)?;
                    let line = summary.last().cloned().unwrap_or_default();
                    let _ = tx.send(Action::CompareReady {
                        title,
                        cells,
                        summary,
                    });
                    Ok(line)
                });
            }
            Effect::CompareRemote { remote: name, key } => {
                let store = self.store(&name);
                let path = self.repo_path.clone();
                tokio::spawn(async move {
                    let res = async {
                        let store = store?;
                        compare_remote(store, path, name, key).await
                    }
                    .await;
                    let _ = match res {
                        Ok((title, cells, summary)) => tx.send(Action::CompareReady {
                            title,
                            cells,
                            summary,
                        }),
                        Err(e) => tx.send(Action::Log(format!("compare: {e}"))),
                    };
                });
            }
            Effect::Compare { a, b } => {
                let path = self.repo_path.clone();
                tokio::task::spawn_blocking(move || {
                    let res = compare(&path, &a, &b);
                    let _ = match res {
                        Ok((title, cells, summary)) => tx.send(Action::CompareReady {
                            title,
                            cells,
                            summary,
                        }),
                        Err(e) => tx.send(Action::Log(format!("compare: {e}"))),
                    };
                });
            }
        }
    }

    fn track<T: Send + 'static>(
        &self,
        title: String,
        job: Job<T>,
        describe: impl FnOnce(T) -> String + Send + 'static,
    ) {
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
        let _ = self.tx.send(Action::JobStarted { id, title });
        let (tx, jobs) = (self.tx.clone(), self.jobs.clone());
        tokio::spawn(async move {
            let res = job.wait().await;
            if let Ok(mut j) = jobs.lock() {
                j.remove(&id);
            }
            let cancelled = matches!(res, Err(lifeboat::Error::Cancelled));
            let _ = tx.send(Action::JobDone {
                id,
                result: res.map(describe).map_err(|e| e.to_string()),
                cancelled,
            });
        });
    }

    fn spawn_blocking(
        &self,
        title: String,
        f: impl FnOnce(&CancellationToken, &Progress) -> lifeboat::Result<String> + Send + 'static,
    ) {
        let (etx, _erx) = mpsc::unbounded_channel();
        let job = Job::spawn(&title, etx, f);
        self.track(title, job, |s| s);
    }

    fn spawn_async<F, Fut>(&self, title: String, f: F)
    where
        F: FnOnce(CancellationToken, Arc<Progress>) -> Fut,
        Fut: std::future::Future<Output = lifeboat::Result<String>> + Send + 'static,
    {
        let (etx, _erx) = mpsc::unbounded_channel();
        let job = Job::spawn_async(&title, etx, f);
        self.track(title, job, |s| s);
    }
}

/// Groups `n` chunk states into at most 640 cells (64 x 10). A cell shows
/// the most telling state of its run: changed, then missing, same, zero.
fn group_cells(n: usize, state: impl Fn(usize) -> Cell) -> (Vec<Cell>, usize) {
    let per = n.max(1).div_ceil(640).max(1);
    let rank = |c: Cell| match c {
        Cell::Changed => 3,
        Cell::Missing => 2,
        Cell::Same => 1,
        Cell::Zero => 0,
    };
    let cells = (0..n)
        .step_by(per)
        .map(|start| {
            (start..(start + per).min(n))
                .map(&state)
                .max_by_key(|c| rank(*c))
                .unwrap_or(Cell::Zero)
        })
        .collect();
    (cells, per)
}

/// The chunk map and summary of two images.
fn compare_indexes(
    label_a: String,
    label_b: String,
    ia: &lifeboat::repo::Index,
    ib: &lifeboat::repo::Index,
) -> lifeboat::Result<(String, Vec<Cell>, Vec<String>)> {
    let d = lifeboat::repo::diff::diff(ia, ib)?;
    let n = ia.chunks.len().max(ib.chunks.len());
    let (cells, per) = group_cells(n, |i| match (ia.chunks.get(i), ib.chunks.get(i)) {
        (Some(x), Some(y)) if x == y && x.is_zero() => Cell::Zero,
        (Some(x), Some(y)) if x == y => Cell::Same,
        (Some(_), Some(_)) => Cell::Changed,
        _ => Cell::Missing,
    });
    let b_ = crate::cli::output::bytes;
    let summary = vec![
        format!("A {label_a}"),
        format!("B {label_b}"),
        format!(
            "same {} · changed {} · added {} · removed {} · 1 cell = {per} chunk(s)",
            b_(d.same_bytes),
            b_(d.changed_bytes),
            b_(d.added_bytes),
            b_(d.removed_bytes),
        ),
    ];
    Ok(("Compare".into(), cells, summary))
}

/// A chunk map of two local backups.
fn compare(
    repo: &std::path::Path,
    a: &ManifestKey,
    b: &ManifestKey,
) -> lifeboat::Result<(String, Vec<Cell>, Vec<String>)> {
    let repo = Repo::open(repo)?;
    let (ma, mb): (Manifest, Manifest) = (repo.load_manifest(a)?, repo.load_manifest(b)?);
    let (ia, ib) = (repo.read_index(&ma.index)?, repo.read_index(&mb.index)?);
    compare_indexes(app::backup_line(a, &ma), app::backup_line(b, &mb), &ia, &ib)
}

/// A chunk map of a local backup against the live volume it came from.
fn compare_live(
    repo: &std::path::Path,
    key: &ManifestKey,
    volume: &lifeboat::config::VolumeConfig,
    cancel: &CancellationToken,
    progress: &Progress,
) -> lifeboat::Result<(String, Vec<Cell>, Vec<String>)> {
    let repo = Repo::open(repo)?;
    let m = repo.load_manifest(key)?;
    let ia = repo.read_index(&m.index)?;
    progress.set_phase("hashing the live volume");
    let mut src = lifeboat::source::open(&volume.path, volume.format)?;
    let live = lifeboat::backup::pipeline::scan(
        src.reader.as_mut(),
        ia.chunk_size,
        None,
        cancel,
        progress,
    )?;
    compare_indexes(
        app::backup_line(key, &m),
        format!("live volume {}", volume.path.display()),
        &ia,
        &live.index,
    )
}

/// A remote's copy of a backup against the local repository: which of its
/// chunks are held here, which a pull would fetch.
async fn compare_remote(
    store: DynStore,
    repo: PathBuf,
    name: String,
    key: ManifestKey,
) -> lifeboat::Result<(String, Vec<Cell>, Vec<String>)> {
    let m = sync::fetch_manifest(store.as_ref(), &key).await?;
    let (index, _) = sync::fetch_index(store.as_ref(), &m.index).await?;
    let local = Repo::open(&repo).ok();
    let held: Vec<bool> = index
        .chunks
        .iter()
        .map(|c| local.as_ref().is_some_and(|r| r.has_chunk(c)))
        .collect();
    let (cells, per) = group_cells(index.chunks.len(), |i| {
        match (index.chunks[i].is_zero(), held[i]) {
            (true, _) => Cell::Zero,
            (false, true) => Cell::Same,
            (false, false) => Cell::Missing,
        }
    });
    let missing: u64 = (0..index.chunks.len())
        .filter(|&i| !index.chunks[i].is_zero() && !held[i])
        .map(|i| index.chunk_len(i))
        .sum();
    let summary = vec![
        format!("{name}'s copy of {}", app::backup_line(&key, &m)),
        format!("against the local repository {}", repo.display()),
        format!(
            "held locally: █ · missing locally: ▒ ({}, what a pull fetches) · 1 cell = {per} chunk(s)",
            crate::cli::output::bytes(missing)
        ),
    ];
    Ok((format!("Compare {name} with local"), cells, summary))
}

pub async fn run(config: Config, repo_path: PathBuf, sink: LogSink) -> anyhow::Result<()> {
    let inventory = config
        .vms
        .iter()
        .map(|v| {
            (
                v.name.get_ref().clone(),
                v.volumes.iter().map(|x| x.name.get_ref().clone()).collect(),
            )
        })
        .collect();
    let remotes = config
        .remotes
        .iter()
        .map(|(n, r)| (n.clone(), r.url.clone()))
        .collect();
    let mut app = App::new(
        repo_path.display().to_string(),
        inventory,
        remotes,
        chrono::Utc::now(),
    );
    // Key bindings: defaults plus keys.toml in the config directory.
    let config_dir =
        lifeboat::config::default_config_path().and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let (keys, problem) = keymap::KeyMap::load(config_dir.as_deref());
    app.keys = keys;
    if let Some(p) = problem {
        app.update(Action::Log(p));
    }
    let theme = view::Theme::from_env();
    let (tx, mut rx) = mpsc::unbounded_channel::<Action>();
    sink.connect(tx.clone());
    let runner = Runner {
        config,
        repo_path,
        tx: tx.clone(),
        jobs: Arc::new(Mutex::new(HashMap::new())),
    };

    enable_raw_mode().context("cannot switch the terminal to raw mode (is this a terminal?)")?;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        prev(info);
    }));
    let mut stdout = std::io::stdout();
    crossterm::execute!(stdout, EnterAlternateScreen, crossterm::cursor::Hide)?;
    let result = event_loop(&mut app, &theme, &runner, &mut rx).await;
    restore_terminal();
    let _ = std::panic::take_hook();
    result
}

async fn event_loop(
    app: &mut App,
    theme: &view::Theme,
    runner: &Runner,
    rx: &mut mpsc::UnboundedReceiver<Action>,
) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    for e in app.start() {
        runner.exec(e);
    }
    let mut events = EventStream::new();
    let mut clock = tokio::time::interval(Duration::from_secs(30));
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        // Draw now when a frame is due; otherwise wake when it will be.
        // An idle console with nothing running sleeps until input arrives.
        if dirty && last_draw.is_none_or(|t| t.elapsed() >= MIN_FRAME) {
            terminal.draw(|f| view::render(f, app, theme))?;
            dirty = false;
            last_draw = Some(Instant::now());
        }
        let jobs_running = runner.jobs.lock().map(|j| !j.is_empty()).unwrap_or(false);
        let wake = match (dirty, jobs_running) {
            (true, _) => Some(
                last_draw
                    .map(|t| t + MIN_FRAME)
                    .unwrap_or_else(Instant::now),
            ),
            (false, true) => Some(last_progress + PROGRESS_EVERY),
            (false, false) => None,
        };
        let effects = tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => { dirty = true; app.update(Action::Key(k)) }
                Some(Ok(Event::Resize(_, _))) => { dirty = true; Vec::new() }
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some(a) = rx.recv() => { dirty = true; app.update(a) }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                if jobs_running && last_progress.elapsed() >= PROGRESS_EVERY {
                    // Running jobs: take the latest progress (latest wins).
                    let snaps: Vec<(u64, lifeboat::jobs::Snapshot)> = runner
                        .jobs
                        .lock()
                        .map(|j| j.iter().map(|(id, r)| (*id, r.progress.snapshot())).collect())
                        .unwrap_or_default();
                    for (id, snapshot) in snaps {
                        app.update(Action::JobProgress { id, snapshot });
                    }
                    last_progress = Instant::now();
                    dirty = true;
                }
                Vec::new()
            }
            _ = clock.tick() => { dirty = true; app.update(Action::Tick(chrono::Utc::now())) }
        };
        for e in effects {
            runner.exec(e);
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
