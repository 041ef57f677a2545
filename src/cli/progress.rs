//! Showing a job's progress: a bar on a terminal, plain lines otherwise,
//! JSON lines with --json. Ctrl-C cancels the job, which then leaves the
//! repository as it was.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_core::jobs::{CancellationToken, Job, JobEvent, JobKind, Progress, Snapshot};
use lifeboat_core::Result;
use tokio::sync::mpsc;

use crate::output::{bytes, duration};

fn line(s: &Snapshot) -> String {
    // Before there is anything to count (connecting, asking QEMU), the
    // phase alone, with how long it has taken: not "0 B/0 B".
    if s.job_bytes_total == 0 && s.job_bytes_done == 0 {
        return format!("{} ({})", s.phase, duration(s.elapsed_secs));
    }
    let eta = s
        .eta_secs
        .map(|e| format!(" ETA {}", duration(e)))
        .unwrap_or_default();
    // The whole job's bytes (a set restore counts every volume and the
    // fetch); the rate is the recent one, and the ETA is for the job.
    format!(
        "{}: {}/{} ({:.0}%) {}/s{eta}",
        s.phase,
        bytes(s.job_bytes_done),
        bytes(s.job_bytes_total),
        s.job_fraction() * 100.0,
        bytes(s.bytes_per_sec as u64),
    )
}

/// Runs blocking engine work as a job and shows its progress.
pub async fn run_job<T, F>(kind: &str, json: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&CancellationToken, &Progress) -> Result<T> + Send + 'static,
{
    run_blocking(kind, json, false, work).await
}

/// `run_job` that also prints each state line the job adds (an instant
/// restore's "the VM runs", its waits for the repository).
pub async fn run_job_lines<T, F>(kind: &str, json: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&CancellationToken, &Progress) -> Result<T> + Send + 'static,
{
    run_blocking(kind, json, true, work).await
}

async fn run_blocking<T, F>(kind: &str, json: bool, lines: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&CancellationToken, &Progress) -> Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let sigint = interrupt_handler();
    observe(
        kind,
        json,
        sigint,
        Job::spawn(JobKind::Other, kind, tx, work),
        rx,
        lines,
    )
    .await
}

/// Runs async engine work (transfers) as a job and shows its progress.
pub async fn run_job_async<T, F, Fut>(kind: &str, json: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken, std::sync::Arc<Progress>) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    run_async(kind, json, false, work).await
}

/// `run_job_async` that also prints each state line the job adds (a cloud
/// restore's phases) above the progress.
pub async fn run_job_async_lines<T, F, Fut>(kind: &str, json: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken, std::sync::Arc<Progress>) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    run_async(kind, json, true, work).await
}

async fn run_async<T, F, Fut>(kind: &str, json: bool, lines: bool, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(CancellationToken, std::sync::Arc<Progress>) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let sigint = interrupt_handler();
    let job = Job::spawn_async(JobKind::Other, kind, tx, work);
    observe(kind, json, sigint, job, rx, lines).await
}

/// The signals that cancel a job the way Ctrl-C does: SIGINT, SIGTERM
/// (`timeout`, systemd, a cron's kill) and SIGHUP (an SSH session that
/// dropped). Installed now, before the job starts: a signal arriving
/// before the handler exists would kill the process mid-write instead of
/// cancelling the job (and a cancelled cloud restore cleans up).
pub struct Stop(Vec<tokio::signal::unix::Signal>);

impl Stop {
    pub fn install() -> Stop {
        use tokio::signal::unix::{signal, SignalKind};
        Stop(
            [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|k| signal(k).ok())
            .collect(),
        )
    }

    /// Resolves when any of the signals arrives.
    pub async fn recv(&mut self) {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        futures::future::select_all(waits).await;
    }
}

fn interrupt_handler() -> Option<Stop> {
    Some(Stop::install())
}

/// A line on stderr that never panics: after a hangup the terminal is
/// gone, and the job must still finish cancelling (a cloud restore
/// removing what it made) rather than die on a failed write.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

async fn observe<T: Send + 'static>(
    kind: &str,
    json: bool,
    mut sigint: Option<Stop>,
    job: Job<T>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    lines: bool,
) -> Result<T> {
    let mut seen = 0u64;
    let cancel = job.cancel.clone();
    let progress = job.progress.clone();
    let tty = std::io::stderr().is_terminal() && !json;
    let bar = tty.then(|| {
        let b = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{spinner} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        b.set_style(style);
        b
    });
    let period = if tty {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(2)
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut interrupted = false;
    let ctrl_c = async move {
        match sigint.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(ctrl_c);
    let done = job.wait();
    tokio::pin!(done);
    let show_lines = |seen: &mut u64, bar: &Option<ProgressBar>| {
        if !lines {
            return;
        }
        let (new, n) = progress.lines_since(*seen);
        *seen = n;
        for l in new {
            let l = lifeboat_core::text::escape(&l).into_owned();
            match bar {
                Some(b) => b.println(l),
                None if json => say!(
                    "{}",
                    serde_json::json!({"event": "state", "job": kind, "line": l})
                ),
                None => say!("{l}"),
            }
        }
    };
    let result = loop {
        tokio::select! {
            res = &mut done => {
                show_lines(&mut seen, &bar);
                break res
            }
            Some(ev) = events.recv() => {
                // Lifecycle events: JSON lines with --json; the bar and the
                // final message say the same to a person.
                if json {
                    say!("{}", serde_json::json!({"event": "job", "job": kind, "state": ev}));
                }
            }
            _ = tick.tick() => {
                show_lines(&mut seen, &bar);
                let s = progress.snapshot();
                match &bar {
                    Some(b) => {
                        b.set_position((s.job_fraction() * 1000.0) as u64);
                        b.set_message(line(&s));
                    }
                    None if json => say!("{}", serde_json::json!({"event": "progress", "job": kind, "progress": s})),
                    None => say!("{}", line(&s)),
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                cancel.cancel();
                if let Some(b) = &bar { b.set_message("cancelling…"); } else { say!("cancelling…"); }
            }
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}
