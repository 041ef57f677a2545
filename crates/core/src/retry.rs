//! Retries of transient failures within one budget for all tries, so a
//! stalled or hostile peer ends an operation instead of holding it.

use std::time::Duration;

use crate::error::{Error, Result};

/// How long all tries of one operation together may take, in seconds
/// (`--io-timeout` sets twice its value); 0: the default.
static RETRY_BUDGET_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Twice the default request timeout: a stalled or hostile peer fails an
/// operation within this, whatever its retries.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(240);

pub fn set_retry_budget(d: Duration) {
    RETRY_BUDGET_SECS.store(d.as_secs().max(1), std::sync::atomic::Ordering::Relaxed);
}

pub fn retry_budget() -> Duration {
    match RETRY_BUDGET_SECS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => DEFAULT_RETRY_BUDGET,
        s => Duration::from_secs(s),
    }
}

/// Retries transient failures with exponential backoff (0.2 s, 0.4 s, …),
/// while the tries together stay within `retry_budget`: a peer that
/// answers one byte a second, or never, ends the operation instead of
/// holding it through every retry.
pub async fn with_retry<T, F, Fut>(retries: u32, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    let started = tokio::time::Instant::now();
    let budget = retry_budget();
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < retries && started.elapsed() >= budget => {
                return Err(Error::Remote {
                    remote: match &e {
                        Error::Remote { remote, .. } => remote.clone(),
                        _ => "the remote".into(),
                    },
                    reason: format!(
                        "gave up after {} s of tries ({e}); a slower link needs a larger --io-timeout",
                        started.elapsed().as_secs()
                    ),
                    transient: false,
                })
            }
            Err(e) if e.is_transient() && attempt < retries => {
                let wait = Duration::from_millis(200 << attempt.min(6));
                tracing::warn!("{e}; retrying in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}
