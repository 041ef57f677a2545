//! Jobs: cancellable engine work with progress that the faces observe.
//!
//! The engine updates a [`Progress`] (atomics; the latest value wins) and
//! checks a cancellation token. A [`Job`] runs engine work on a blocking
//! thread and sends lifecycle events on a channel that never drops them.

pub mod progress;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
pub use progress::{Progress, Snapshot};

/// What a job does, for the faces (the console shows a drill's and a cloud
/// restore's phases, and lets a plan that waits for a yes leave its jobs
/// pane); decided where the job starts, never read back from its title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobKind {
    /// Works out a plan that a confirmation then executes.
    Plan,
    Drill,
    /// A recovery plan's drill: a part of its progress per VM.
    PlanDrill,
    CloudRestore,
    #[default]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum JobEvent {
    Started {
        id: u64,
        /// The job's title ("backup", "push offsite"); `kind` in JSON.
        #[serde(rename = "kind")]
        title: String,
        #[serde(skip)]
        kind: JobKind,
    },
    Finished {
        id: u64,
    },
    Failed {
        id: u64,
        error: String,
    },
    Cancelled {
        id: u64,
    },
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

fn finished_event<T>(id: u64, res: &Result<T>) -> JobEvent {
    match res {
        Ok(_) => JobEvent::Finished { id },
        Err(Error::Cancelled) => JobEvent::Cancelled { id },
        // Reported as cancelled; the job's log says what was removed.
        Err(Error::CloudCancelled { .. }) => JobEvent::Cancelled { id },
        Err(e) => JobEvent::Failed {
            id,
            error: crate::text::describe(e),
        },
    }
}

pub struct Job<T> {
    pub id: u64,
    pub title: String,
    pub kind: JobKind,
    pub cancel: CancellationToken,
    pub progress: Arc<Progress>,
    handle: tokio::task::JoinHandle<Result<T>>,
}

/// What both kinds of job do first: an id, a token, a progress, and the
/// Started event.
fn begin(
    kind: JobKind,
    title: &str,
    events: &mpsc::UnboundedSender<JobEvent>,
) -> (u64, CancellationToken, Arc<Progress>) {
    let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
    let _ = events.send(JobEvent::Started {
        id,
        title: title.to_string(),
        kind,
    });
    (id, CancellationToken::new(), Arc::new(Progress::new()))
}

/// What both kinds of job do last: freeze the progress, send the outcome.
fn end<T>(id: u64, progress: &Progress, events: &mpsc::UnboundedSender<JobEvent>, res: &Result<T>) {
    progress.finish();
    let _ = events.send(finished_event(id, res));
}

impl<T: Send + 'static> Job<T> {
    /// Starts `work` on a blocking thread. Events go to `events`.
    pub fn spawn<F>(
        kind: JobKind,
        title: &str,
        events: mpsc::UnboundedSender<JobEvent>,
        work: F,
    ) -> Job<T>
    where
        F: FnOnce(&CancellationToken, &Progress) -> Result<T> + Send + 'static,
    {
        let (id, cancel, progress) = begin(kind, title, &events);
        let (c, p) = (cancel.clone(), progress.clone());
        let handle = tokio::task::spawn_blocking(move || {
            let res = work(&c, &p);
            end(id, &p, &events, &res);
            res
        });
        Job {
            id,
            title: title.to_string(),
            kind,
            cancel,
            progress,
            handle,
        }
    }

    /// Starts async `work` (network transfers) on the runtime.
    pub fn spawn_async<F, Fut>(
        kind: JobKind,
        title: &str,
        events: mpsc::UnboundedSender<JobEvent>,
        work: F,
    ) -> Job<T>
    where
        F: FnOnce(CancellationToken, Arc<Progress>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (id, cancel, progress) = begin(kind, title, &events);
        let fut = work(cancel.clone(), progress.clone());
        let p = progress.clone();
        let handle = tokio::spawn(async move {
            let res = fut.await;
            end(id, &p, &events, &res);
            res
        });
        Job {
            id,
            title: title.to_string(),
            kind,
            cancel,
            progress,
            handle,
        }
    }

    pub async fn wait(self) -> Result<T> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(Error::Internal(format!(
                "job {} ({}) crashed: {e}",
                self.id, self.title
            ))),
        }
    }
}
