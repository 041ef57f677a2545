//! The console: ratatui + crossterm on tokio. One state (`app::App`),
//! `update` without I/O returning effects, rendering from state only
//! (`view`); this module owns the terminal and runs effects as core jobs.

pub mod app;
pub mod keymap;
mod runner;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use app::{Action, App};
use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use lifeboat_core::config::Config;
use lifeboat_core::jobs::JobEvent;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use runner::Runner;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Frames are drawn at most this often, and only when something changed.
const MIN_FRAME: Duration = Duration::from_millis(16);
/// How often running jobs' progress is sampled.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How long quitting waits for cancelled jobs to clean up after themselves.
const QUIT_GRACE: Duration = Duration::from_secs(120);
/// The clock: ages and "read N s ago" move, and the auto-refresh is due.
const TICK: Duration = Duration::from_secs(5);

/// Owns the terminal's raw mode and alternate screen: dropping it restores
/// the terminal on every exit path (errors included), and the panic hook
/// restores it before the previous hook prints the panic.
struct TerminalGuard {
    prev_hook: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<TerminalGuard> {
        let prev_hook: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send> =
            Arc::from(std::panic::take_hook());
        let chained = prev_hook.clone();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        // From here on, Drop undoes whatever part of the setup succeeded.
        let guard = TerminalGuard { prev_hook };
        enable_raw_mode()
            .context("cannot switch the terminal to raw mode (is this a terminal?)")?;
        crossterm::execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            crossterm::cursor::Hide,
            crossterm::event::EnableMouseCapture
        )
        .context("cannot enter the alternate screen")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // Put the previous panic hook back (ours only chained to it).
        let prev = self.prev_hook.clone();
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| prev(info)));
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    // Clear the alternate screen before leaving it: a terminal that
    // reflows on resize (or lacks a separate alternate buffer) would
    // otherwise keep the console's borders above the shell prompt.
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::event::DisableMouseCapture,
        crossterm::terminal::Clear(crossterm::terminal::ClearType::All),
        crossterm::cursor::MoveTo(0, 0),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// The config with the host's libvirt domains (`[libvirt]`) as VMs. The
/// console does not wait long for libvirt: a libvirtd that does not
/// answer within 5 s leaves them out, and the log says so.
async fn with_libvirt_domains(config: Config) -> (Config, Option<String>) {
    if config.libvirt.is_none() {
        return (config, None);
    }
    let fallback = config.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut config = config;
        let r = config.adopt_libvirt_domains();
        (config, r)
    });
    match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
        Ok(Ok((config, Ok(d)))) => {
            let n = d.map(|d| d.len()).unwrap_or(0);
            (config, Some(format!("libvirt: {n} domains listed")))
        }
        Ok(Ok((config, Err(e)))) => (
            config,
            Some(format!(
                "libvirt: cannot list domains: {}",
                lifeboat_core::text::escape(&e.to_string())
            )),
        ),
        Ok(Err(e)) => (fallback, Some(format!("libvirt: {e}"))),
        Err(_) => (
            fallback,
            Some("libvirt did not answer within 5 s: its domains are not listed".into()),
        ),
    }
}

pub async fn run(
    config: Config,
    repo_path: PathBuf,
    sink: crate::logging::LogSink,
) -> anyhow::Result<()> {
    let (config, libvirt_note) = with_libvirt_domains(config).await;
    let inventory = config.inventory();
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
    let config_dir = lifeboat_core::config::default_config_path()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let (keys, problem) = keymap::KeyMap::load(config_dir.as_deref());
    app.keys = keys;
    app.clouds = config.clouds.keys().cloned().collect();
    app.drill_defaults = config
        .vms
        .iter()
        .map(|v| {
            let vm = v.name.get_ref();
            (
                vm.clone(),
                lifeboat_core::config::requests::drill_source(&config, vm),
            )
        })
        .collect();
    if let Some(p) = problem {
        app.update(Action::Log(p));
    }
    if let Some(n) = libvirt_note {
        app.update(Action::Log(n));
    }
    app.config_path = config
        .path
        .clone()
        .or_else(lifeboat_core::config::default_config_path)
        .map(|p| {
            let missing = if p.exists() { "" } else { " (not created yet)" };
            format!("{}{missing}", p.display())
        });
    // Each VM's RPO thresholds come from its policy.
    app.rpo_policy = config
        .vms
        .iter()
        .filter_map(|v| {
            let name = v.name.get_ref();
            config.policy_for(name).map(|p| {
                (
                    name.clone(),
                    (p.rpo_late.num_minutes(), p.rpo_stale.num_minutes()),
                )
            })
        })
        .collect();
    let theme = view::Theme::from_env();
    let (tx, mut rx) = mpsc::unbounded_channel::<Action>();
    let (events_tx, mut events) = mpsc::unbounded_channel::<JobEvent>();
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<String>();
    sink.connect(log_tx);
    let forward = tx.clone();
    tokio::spawn(async move {
        while let Some(line) = log_rx.recv().await {
            if forward.send(Action::Traced(line)).is_err() {
                break;
            }
        }
    });
    let runner = Runner::new(config, repo_path, tx.clone(), events_tx);
    let _guard = TerminalGuard::enter()?;
    event_loop(&mut app, &theme, &runner, &mut rx, &mut events, &sink).await
}

async fn event_loop(
    app: &mut App,
    theme: &view::Theme,
    runner: &Runner,
    rx: &mut mpsc::UnboundedReceiver<Action>,
    job_events: &mut mpsc::UnboundedReceiver<JobEvent>,
    sink: &crate::logging::LogSink,
) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    if let Ok(size) = terminal.size() {
        app.update(Action::Resize(size.width, size.height));
    }
    for e in app.start() {
        runner.exec(e);
    }
    let mut events = EventStream::new();
    let mut clock = tokio::time::interval(TICK);
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut last_progress = Instant::now();
    loop {
        // Draw now when a frame is due; otherwise wake when it will be.
        // An idle console with nothing running wakes only on input and
        // the clock tick.
        if dirty && last_draw.is_none_or(|t| t.elapsed() >= MIN_FRAME) {
            terminal.draw(|f| view::render(f, app, theme))?;
            dirty = false;
            last_draw = Some(Instant::now());
        }
        let jobs_running = runner.running();
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
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    dirty = true;
                    app.now = chrono::Utc::now();
                    app.update(Action::Key(k))
                }
                Some(Ok(Event::Mouse(m))) => { dirty = true; app.update(Action::Mouse(m)) }
                Some(Ok(Event::Resize(w, h))) => {
                    // The next draw sees the new size and clears the whole
                    // screen before drawing (never `Terminal::clear`: it
                    // asks the terminal for the cursor position, a round
                    // trip that times out over a slow link).
                    dirty = true;
                    app.update(Action::Resize(w, h))
                }
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            Some(a) = rx.recv() => { dirty = true; app.now = chrono::Utc::now(); app.update(a) }
            Some(ev) = job_events.recv() => match runner::event_action(ev) {
                Some(a) => { dirty = true; app.now = chrono::Utc::now(); app.update(a) }
                None => Vec::new(),
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                if jobs_running && last_progress.elapsed() >= PROGRESS_EVERY {
                    // Running jobs: take the latest progress (latest wins).
                    for (id, snapshot, output, parts) in runner.snapshots() {
                        app.update(Action::JobProgress { id, snapshot, output, parts });
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
        for line in app.log.out.drain(..) {
            sink.write_file(&line);
        }
        if app.quit {
            break;
        }
    }
    // Quitting cancelled the running jobs; let them finish undoing what
    // they did (a cloud restore removes the servers and images it made)
    // before the runtime goes away with them.
    let deadline = Instant::now() + QUIT_GRACE;
    if runner.running() {
        app.dialog = None;
        app.status = Some(app::Status {
            text: "quitting: waiting for cancelled jobs to clean up…".into(),
            error: false,
        });
        terminal.draw(|f| view::render(f, app, theme))?;
    }
    while runner.running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
