//! Showing a job's progress: a bar on a terminal, plain lines otherwise,
//! JSON lines with --json. Ctrl-C cancels the job, which then leaves the
//! repository as it was.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lifeboat_core::jobs::{CancellationToken, Job, JobEvent, Progress, Snapshot};
use lifeboat_core::Result;
use tokio::sync::mpsc;

use crate::output::{bytes, duration};

fn line(s: &Snapshot) -> String {
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
    let (tx, rx) = mpsc::unbounded_channel();
    let sigint = interrupt_handler();
    observe(kind, json, sigint, Job::spawn(kind, tx, work), rx, false).await
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
    let job = Job::spawn_async(kind, tx, work);
    observe(kind, json, sigint, job, rx, lines).await
}

/// Installs the SIGINT handler now, before the job starts: `ctrl_c()` would
/// install it only when first polled, and an interrupt arriving before that
/// would kill the process mid-write instead of cancelling the job.
fn interrupt_handler() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()
}

async fn observe<T: Send + 'static>(
    kind: &str,
    json: bool,
    mut sigint: Option<tokio::signal::unix::Signal>,
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
                None if json => eprintln!(
                    "{}",
                    serde_json::json!({"event": "state", "job": kind, "line": l})
                ),
                None => eprintln!("{l}"),
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
                    eprintln!("{}", serde_json::json!({"event": "job", "job": kind, "state": ev}));
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
                    None if json => eprintln!("{}", serde_json::json!({"event": "progress", "job": kind, "progress": s})),
                    None => eprintln!("{}", line(&s)),
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                cancel.cancel();
                if let Some(b) = &bar { b.set_message("cancelling…"); } else { eprintln!("cancelling…"); }
            }
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}
