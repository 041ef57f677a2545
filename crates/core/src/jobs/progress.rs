//! Progress of one job: counters the engine bumps from any thread, and
//! snapshots that a face reads at its own pace.

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
    finished_ms: AtomicU64,
    finished: AtomicBool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub objects_done: u64,
    pub objects_total: u64,
    pub elapsed_secs: f64,
    /// Average rate since the start: steadier than a window, so the ETA is too.
    pub bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
}

impl Snapshot {
    /// Completed fraction in 0..=1; a zero total counts as done when finished work exists.
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
            finished_ms: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
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

    pub fn add(&self, bytes: u64, objects: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.objects_done.fetch_add(objects, Ordering::Relaxed);
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
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = (rate > 0.0 && total >= done).then(|| (total - done) as f64 / rate);
        Snapshot {
            phase: self.phase.lock().map(|p| p.clone()).unwrap_or_default(),
            bytes_done: done,
            bytes_total: total,
            objects_done: self.objects_done.load(Ordering::Relaxed),
            objects_total: self.objects_total.load(Ordering::Relaxed),
            elapsed_secs: secs,
            bytes_per_sec: rate,
            eta_secs: eta,
        }
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
}
