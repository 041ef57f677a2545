//! Progress of one job: counters the engine bumps from any thread, and
//! snapshots that a face reads at its own pace.
//!
//! Two scales: the current stage (one volume being restored, the chunks
//! being sent), whose totals `set_totals` resets, and the whole job, whose
//! total the executor announces with `set_job_total` from its plan. The
//! job's ETA comes from the job's remaining bytes and the recent rate, so a
//! three-volume restore does not promise to end when its first volume does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub struct Progress {
    started: Instant,
    phase: Mutex<String>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    objects_done: AtomicU64,
    objects_total: AtomicU64,
    job_done: AtomicU64,
    job_total: AtomicU64,
    finished_ms: AtomicU64,
    finished: AtomicBool,
    /// (time, job bytes done) samples of the last `RATE_WINDOW`, taken by
    /// `snapshot`, for a rate that follows the link rather than the past.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// Output the job shows as it comes (a drill's serial console), the
    /// newest `MAX_LINES`.
    lines: Mutex<VecDeque<String>>,
    lines_pushed: AtomicU64,
    /// Parts of a job that run side by side (a plan's VMs), each with its
    /// own progress, in the order they were added.
    parts: Mutex<Vec<(String, std::sync::Arc<Progress>)>>,
}

const MAX_LINES: usize = 200;

/// The window of the recent rate: long enough to smooth bursts of large
/// chunks, short enough to follow a link that slows down.
const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub objects_done: u64,
    pub objects_total: u64,
    /// Bytes done and to do over the whole job (equal to the stage's when
    /// the executor announced no job total).
    pub job_bytes_done: u64,
    pub job_bytes_total: u64,
    pub elapsed_secs: f64,
    /// Rate over the last few seconds (the average since the start until
    /// a window has passed).
    pub bytes_per_sec: f64,
    /// Time left for the whole job at the recent rate.
    pub eta_secs: Option<f64>,
}

impl Snapshot {
    /// Completed fraction of the whole job in 0..=1 (the stage's when no
    /// job total is known).
    pub fn job_fraction(&self) -> f64 {
        if self.job_bytes_total > 0 {
            (self.job_bytes_done as f64 / self.job_bytes_total as f64).clamp(0.0, 1.0)
        } else {
            self.fraction()
        }
    }

    /// Completed fraction of the stage in 0..=1.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total > 0 {
            (self.bytes_done as f64 / self.bytes_total as f64).clamp(0.0, 1.0)
        } else if self.objects_total > 0 {
            (self.objects_done as f64 / self.objects_total as f64).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            started: Instant::now(),
            phase: Mutex::new(String::from("starting")),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            objects_done: AtomicU64::new(0),
            objects_total: AtomicU64::new(0),
            job_done: AtomicU64::new(0),
            job_total: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
            finished_ms: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            lines: Mutex::new(VecDeque::new()),
            lines_pushed: AtomicU64::new(0),
            parts: Mutex::new(Vec::new()),
        }
    }

    /// The progress of the part named `name` (made on first use).
    pub fn part(&self, name: &str) -> std::sync::Arc<Progress> {
        let Ok(mut parts) = self.parts.lock() else {
            return std::sync::Arc::new(Progress::new());
        };
        if let Some((_, p)) = parts.iter().find(|(n, _)| n == name) {
            return p.clone();
        }
        let p = std::sync::Arc::new(Progress::new());
        parts.push((name.to_string(), p.clone()));
        p
    }

    /// Every part, in the order added.
    pub fn parts(&self) -> Vec<(String, std::sync::Arc<Progress>)> {
        self.parts.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Adds a line of live output (kept: the newest 200).
    pub fn push_line(&self, line: &str) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == MAX_LINES {
                l.pop_front();
            }
            l.push_back(line.to_string());
            self.lines_pushed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines pushed after the first `seen` (as many as are still kept),
    /// and the new count to pass next time.
    pub fn lines_since(&self, seen: u64) -> (Vec<String>, u64) {
        let Ok(l) = self.lines.lock() else {
            return (Vec::new(), seen);
        };
        let total = self.lines_pushed.load(Ordering::Relaxed);
        let new = (total.saturating_sub(seen) as usize).min(l.len());
        (l.iter().skip(l.len() - new).cloned().collect(), total)
    }

    /// The newest `n` lines of live output, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().skip(l.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
    }

    pub fn set_totals(&self, bytes: u64, objects: u64) {
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.objects_total.store(objects, Ordering::Relaxed);
        self.bytes_done.store(0, Ordering::Relaxed);
        self.objects_done.store(0, Ordering::Relaxed);
    }

    /// The bytes the whole job will move (from its plan).
    pub fn set_job_total(&self, bytes: u64) {
        self.job_total.store(bytes, Ordering::Relaxed);
    }

    /// Announces the job's total unless an outer executor already did (a
    /// restore from a remote counts its fetch and its writes as one job).
    pub fn set_job_total_if_unset(&self, bytes: u64) {
        let _ = self
            .job_total
            .compare_exchange(0, bytes, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64, objects: u64) {
        self.job_done.fetch_add(bytes, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.objects_done.fetch_add(objects, Ordering::Relaxed);
    }

    /// Takes back bytes counted for work that is being redone (an upload
    /// that starts over).
    pub fn sub(&self, bytes: u64) {
        let take = |a: &AtomicU64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
        };
        take(&self.job_done);
        take(&self.bytes_done);
    }

    pub fn finish(&self) {
        self.finished_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.finished.store(true, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let elapsed = if self.finished.load(Ordering::Relaxed) {
            Duration::from_millis(self.finished_ms.load(Ordering::Relaxed))
        } else {
            self.started.elapsed()
        };
        let secs = elapsed.as_secs_f64();
        let done = self.bytes_done.load(Ordering::Relaxed);
        let total = self.bytes_total.load(Ordering::Relaxed);
        let job_done = self.job_done.load(Ordering::Relaxed);
        let (job_done, job_total) = match self.job_total.load(Ordering::Relaxed) {
            0 => (done, total),
            t => (job_done, t),
        };
        let average = if secs > 0.0 {
            self.job_done.load(Ordering::Relaxed) as f64 / secs
        } else {
            0.0
        };
        let rate = if self.finished.load(Ordering::Relaxed) {
            average
        } else {
            self.recent_rate(self.job_done.load(Ordering::Relaxed))
                .unwrap_or(average)
        };
        let eta =
            (rate > 0.0 && job_total >= job_done).then(|| (job_total - job_done) as f64 / rate);
        Snapshot {
            phase: self.phase.lock().map(|p| p.clone()).unwrap_or_default(),
            bytes_done: done,
            bytes_total: total,
            job_bytes_done: job_done,
            job_bytes_total: job_total,
            objects_done: self.objects_done.load(Ordering::Relaxed),
            objects_total: self.objects_total.load(Ordering::Relaxed),
            elapsed_secs: secs,
            bytes_per_sec: rate,
            eta_secs: eta,
        }
    }
}

impl Progress {
    /// The rate over the samples of the last window, once a window's worth
    /// of samples exists (None before: the caller uses the average).
    fn recent_rate(&self, done: u64) -> Option<f64> {
        let now = Instant::now();
        let mut s = self.samples.lock().ok()?;
        s.push_back((now, done));
        while s.len() > 2 && s.get(1).is_some_and(|(t, _)| now - *t >= RATE_WINDOW) {
            s.pop_front();
        }
        let (t0, d0) = *s.front()?;
        let span = (now - t0).as_secs_f64();
        (now - t0 >= RATE_WINDOW / 2 && span > 0.0).then(|| done.saturating_sub(d0) as f64 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_clamps_and_handles_zero_total() {
        let p = Progress::new();
        assert_eq!(p.snapshot().fraction(), 0.0);
        p.set_totals(100, 0);
        p.add(150, 0);
        assert_eq!(p.snapshot().fraction(), 1.0);
        assert_eq!(p.snapshot().eta_secs, None);
        p.set_totals(0, 4);
        p.add(0, 1);
        assert_eq!(p.snapshot().fraction(), 0.25);
    }

    #[test]
    fn job_totals_span_stages() {
        let p = Progress::new();
        p.set_job_total(300);
        p.set_totals(100, 1);
        p.add(100, 1);
        p.set_totals(200, 1);
        p.add(50, 0);
        let s = p.snapshot();
        assert_eq!((s.bytes_done, s.bytes_total), (50, 200));
        assert_eq!((s.job_bytes_done, s.job_bytes_total), (150, 300));
        assert_eq!(s.job_fraction(), 0.5);
    }
}
