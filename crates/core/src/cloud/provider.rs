//! What a cloud restore is made of, whatever the cloud: the plan, the
//! ledger of created resources, the context a provider works in, and the
//! `Provider` trait that OpenStack and AWS implement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use super::http;
use super::source::VolumeImage;
use super::target::ProviderKind;
use crate::error::{Error, Result};
use crate::format::manifest::Role;
use crate::jobs::{CancellationToken, Progress};

/// The phases of a cloud restore, as the first word of the job's phase
/// ("upload root: …"): what the console's panel shows.
pub const PHASES: [&str; 6] = ["auth", "upload", "image", "server", "volume", "running"];

/// A created cloud resource.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Resource {
    /// image, snapshot, volume, server (OpenStack) or instance (AWS).
    pub kind: String,
    pub id: String,
    pub name: String,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.id, self.name)
    }
}

/// What a restore has created so far, in order.
#[derive(Default)]
pub struct Ledger {
    items: Mutex<Vec<Resource>>,
}

impl Ledger {
    pub fn add(&self, kind: &str, id: &str, name: &str) {
        if let Ok(mut v) = self.items.lock() {
            v.push(Resource {
                kind: kind.into(),
                id: crate::text::escape(id).into_owned(),
                name: name.into(),
            });
        }
    }

    /// Forgets a resource that was removed on purpose (an intermediate
    /// image once its volume exists).
    pub fn forget(&self, id: &str) {
        if let Ok(mut v) = self.items.lock() {
            v.retain(|r| r.id != id);
        }
    }

    pub fn all(&self) -> Vec<Resource> {
        self.items.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// One volume of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedVolume {
    pub volume: String,
    pub role: Role,
    pub manifest: String,
    pub image_size: u64,
    /// Bytes sent: the whole image into Glance (zeros included), only
    /// non-zero 512 KiB blocks into an EBS snapshot.
    pub upload_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudPlan {
    pub target: String,
    pub provider: ProviderKind,
    /// "local" or the remote's name.
    pub from: String,
    pub vm: String,
    pub set: String,
    pub created_at: String,
    /// The root volume first.
    pub volumes: Vec<PlannedVolume>,
    pub bytes_to_upload: u64,
    /// What will be created, one line each.
    pub creates: Vec<String>,
    /// The target's checks (auth, flavor or instance type, network…),
    /// asked read-only while planning so a bad target fails before any
    /// upload.
    pub checks: Vec<String>,
    /// The server's name in the cloud.
    pub server_name: String,
    pub firmware: crate::vm::Firmware,
    #[serde(skip)]
    pub images: Vec<VolumeImage>,
}

impl CloudPlan {
    /// What the plan will do, a line each: `cloud-restore --dry-run` and
    /// the console's confirmation show the same lines (everything from the
    /// repository or the cloud escaped).
    pub fn lines(&self, upload_limit: Option<u64>) -> Vec<String> {
        use crate::text::{bytes, escape};
        let mut out = vec![format!(
            "restore {} set {} ({}) from {} into cloud {} ({})",
            self.vm,
            self.set.get(..12).unwrap_or(&self.set),
            self.created_at,
            escape(&self.from),
            self.target,
            self.provider.as_str()
        )];
        for v in &self.volumes {
            out.push(format!(
                "  {:<12} {:<5} {}  backup {}  upload {}",
                v.volume,
                format!("{:?}", v.role).to_lowercase(),
                bytes(v.image_size),
                v.manifest.get(..12).unwrap_or(&v.manifest),
                bytes(v.upload_bytes)
            ));
        }
        out.push("target checked:".into());
        out.extend(self.checks.iter().map(|c| format!("  {}", escape(c))));
        out.push("creates:".into());
        out.extend(self.creates.iter().map(|c| format!("  {}", escape(c))));
        out.push(match upload_limit {
            Some(l) => format!(
                "bytes to upload: {} (at most {}/s: --limit-upload)",
                bytes(self.bytes_to_upload),
                bytes(l)
            ),
            None => format!("bytes to upload: {}", bytes(self.bytes_to_upload)),
        });
        out
    }
}

/// The server a restore made.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    pub addresses: Vec<String>,
    /// How to reach its console (a URL, or the command that gets one).
    pub console: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudOutcome {
    pub target: String,
    pub vm: String,
    pub server: Server,
    /// Everything created that stays.
    pub created: Vec<Resource>,
    pub uploaded_bytes: u64,
    pub upload_seconds: f64,
    pub seconds: f64,
}

/// What `cloud ls` reports for a target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub provider: ProviderKind,
    pub ok: bool,
    /// One line per check: "auth: ok", "flavor m1.small: not found (…)".
    pub checks: Vec<String>,
}

/// The context of a running restore.
pub struct Ctx<'a> {
    pub target: &'a str,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
    pub ledger: &'a Ledger,
    pub ready_timeout: Duration,
    /// Bytes sent so far (the job's progress counts them too).
    pub uploaded: &'a std::sync::atomic::AtomicU64,
    /// The upload limit (`--limit-upload`), taken before each piece goes.
    pub upload_limit: Option<Arc<crate::store::throttle::RateLimit>>,
}

impl Ctx<'_> {
    pub fn step(&self, phase: impl Into<String>) -> http::Step {
        http::Step::new(self.target, phase)
    }

    /// A new phase: shown as the job's phase and kept as a line.
    pub fn phase(&self, line: &str) {
        self.progress.set_phase(line);
        self.progress.push_line(line);
    }

    pub fn note(&self, line: &str) {
        self.progress.push_line(line);
    }

    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Waits until `n` more bytes may go under the upload limit.
    pub async fn throttle(&self, n: u64) {
        if let Some(l) = &self.upload_limit {
            l.take(n).await;
        }
    }

    pub fn sent(&self, n: u64) {
        self.uploaded
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.progress.add(n, 0);
    }
}

/// What a provider made of one uploaded volume.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub volume: String,
    pub role: Role,
    /// An image id (OpenStack) or a snapshot id (AWS).
    pub id: String,
    pub size: u64,
}

/// A cloud lifeboat can restore into.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Authenticates and checks that the target's flavor/instance type,
    /// network/subnet, security group and key pair exist.
    async fn check(&self) -> Result<Vec<String>>;
    /// Makes the cloud's copy of one volume, streamed from the store.
    async fn upload(&self, vol: &VolumeImage, name: &str, ctx: &Ctx<'_>) -> Result<Uploaded>;
    /// Creates the server from the root volume and waits until it runs.
    async fn create_server(
        &self,
        plan: &CloudPlan,
        root: &Uploaded,
        ctx: &Ctx<'_>,
    ) -> Result<Server>;
    /// Makes a volume of an uploaded data disk and attaches it.
    async fn attach_data(
        &self,
        server: &Server,
        data: &Uploaded,
        index: usize,
        ctx: &Ctx<'_>,
    ) -> Result<()>;
    /// Refreshes the server's addresses and console once all is attached.
    async fn finish(&self, server: &mut Server, ctx: &Ctx<'_>) -> Result<()>;
    /// Removes a resource this restore created.
    async fn remove(&self, r: &Resource, cancel: &CancellationToken) -> Result<()>;
    /// The bytes one volume will send.
    fn upload_bytes(&self, index: &crate::format::Index) -> u64;
    /// What will be created for the plan, one line each.
    fn creates(&self, plan: &CloudPlan) -> Vec<String>;
    /// Why the plan cannot work on this target, found before anything is
    /// uploaded (a flavor whose disk is smaller than the root volume, no
    /// block storage for data volumes); empty when it can. Read-only.
    async fn refuses(&self, _plan: &CloudPlan) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A rate limit for uploads, from `--limit-upload` (or none).
pub fn upload_limit(rate: Option<u64>) -> Result<Option<Arc<crate::store::throttle::RateLimit>>> {
    rate.map(|r| crate::store::throttle::RateLimit::new(r, None).map(Arc::new))
        .transpose()
}

/// Polls `probe` every `every` until it says ready (`Some`), failing after
/// `timeout` with `waiting`'s words.
pub async fn poll<T, F, Fut>(
    ctx: &Ctx<'_>,
    step: &http::Step,
    waiting: &str,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut wait = every.min(Duration::from_millis(200));
    loop {
        ctx.check_cancel()?;
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > ctx.ready_timeout {
            return Err(step.fail(format!(
                "{waiting} after {} s (ready_timeout_secs)",
                ctx.ready_timeout.as_secs()
            )));
        }
        http::pause(wait, ctx.cancel).await?;
        wait = (wait * 2).min(every);
    }
}
