//! Restore to a cloud: a backup set becomes a VM in OpenStack or AWS.
//!
//! `plan` reads the set (from the local repository or a remote) and writes
//! nothing anywhere: which backups, what will be created, how many bytes go
//! up. `execute` streams each volume straight out of the store into the
//! cloud (Glance images, or EBS snapshots through the EBS direct APIs),
//! makes the root bootable, creates the server, makes and attaches the data
//! volumes, and waits until it runs. Every resource the cloud hands back is
//! written into a [`Ledger`] the moment its id is known; a failure or a
//! cancel removes them in reverse order (unless `keep_on_failure`), and the
//! error says what was removed and what was left.

pub mod aws;
pub mod export;
pub mod http;
pub mod openstack;
pub mod source;
pub mod target;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::repo::manifest::Role;
use crate::repo::refs::Ref;
use crate::store::DynStore;
pub use source::VolumeImage;
pub use target::{CloudConfig, ProviderKind};

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
    fn upload_bytes(&self, index: &crate::repo::Index) -> u64;
    /// What will be created for the plan, one line each.
    fn creates(&self, plan: &CloudPlan) -> Vec<String>;
    /// Why the plan cannot work on this target, found before anything is
    /// uploaded (a flavor whose disk is smaller than the root volume, no
    /// block storage for data volumes); empty when it can. Read-only.
    async fn refuses(&self, _plan: &CloudPlan) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Opens the provider of a `[cloud.NAME]` target. Reads its secrets.
pub fn open(name: &str, cfg: &CloudConfig) -> Result<Box<dyn Provider>> {
    cfg.check()
        .map_err(|e| Error::BadInput(format!("cloud {name}: {e}")))?;
    Ok(match cfg.provider {
        ProviderKind::Openstack => Box::new(openstack::OpenStack::new(name, cfg)?),
        ProviderKind::Aws => Box::new(aws::Aws::new(name, cfg)?),
    })
}

/// Checks a target: opens it (secrets) and asks the cloud.
pub async fn check_target(name: &str, cfg: &CloudConfig) -> TargetCheck {
    let res = match open(name, cfg) {
        Ok(p) => p.check().await,
        Err(e) => Err(e),
    };
    match res {
        Ok(checks) => TargetCheck {
            target: name.into(),
            provider: cfg.provider,
            ok: true,
            checks,
        },
        Err(e) => {
            let checks = vec![format!("failed: {}", crate::text::describe(&e))];
            TargetCheck {
                target: name.into(),
                provider: cfg.provider,
                ok: false,
                checks,
            }
        }
    }
}

/// Reads a VM set (`VM@REF`) from a store: manifests and indexes verified,
/// the root volume first.
pub async fn load_set(store: &DynStore, reference: &str) -> Result<Vec<VolumeImage>> {
    if !matches!(Ref::parse(reference)?, Ref::Set { .. }) {
        return Err(Error::BadInput(format!(
            "{reference:?} is not a VM set: give VM@latest, VM@~1 or VM@<time> (a cloud restore brings up a whole VM)"
        )));
    }
    let keys = crate::sync::list_manifests(store.as_ref()).await?;
    let chosen = crate::sync::select::select(store.as_ref(), keys, Some(reference), None).await?;
    let mut out = Vec::new();
    for key in chosen {
        let (manifest, _) = crate::sync::fetch_manifest(store.as_ref(), &key).await?;
        let (index, _) = crate::sync::fetch_index(store.as_ref(), &manifest.index).await?;
        out.push(VolumeImage {
            key,
            manifest,
            index: Arc::new(index),
            store: store.clone(),
        });
    }
    let roots = out
        .iter()
        .filter(|v| v.manifest.volume.role == Role::Root)
        .count();
    match roots {
        1 => {}
        0 if out.len() == 1 => {}
        0 => {
            return Err(Error::BadInput(format!(
                "the set {reference} has no root volume (role = \"root\"), so nothing to boot: mark the boot disk's role in the config and back it up again"
            )))
        }
        n => {
            return Err(Error::BadInput(format!(
                "the set {reference} has {n} root volumes; a cloud server boots from one"
            )))
        }
    }
    out.sort_by_key(|v| {
        (
            v.manifest.volume.role != Role::Root,
            v.manifest.volume.name.clone(),
        )
    });
    Ok(out)
}

/// Plans a restore into a cloud. Writes nothing, locally or in the cloud.
pub async fn plan(
    target: &str,
    provider: &dyn Provider,
    kind: ProviderKind,
    store: &DynStore,
    from: &str,
    reference: &str,
) -> Result<CloudPlan> {
    let images = load_set(store, reference).await?;
    let checks = provider.check().await?;
    let first = images
        .first()
        .ok_or_else(|| Error::NotFound(reference.to_string()))?;
    let vm = first.manifest.vm.name.clone();
    let firmware = match first_definition(&images).await {
        Some(d) => d.spec.firmware,
        None => crate::vm::Firmware::Bios,
    };
    let volumes: Vec<PlannedVolume> = images
        .iter()
        .map(|v| PlannedVolume {
            volume: v.manifest.volume.name.clone(),
            role: v.manifest.volume.role,
            manifest: v.key.id.to_hex(),
            image_size: v.index.image_size,
            upload_bytes: provider.upload_bytes(&v.index),
        })
        .collect();
    let mut plan = CloudPlan {
        target: target.into(),
        provider: kind,
        from: from.into(),
        vm: vm.clone(),
        set: first.manifest.set.clone(),
        created_at: first.manifest.created_at.to_rfc3339(),
        bytes_to_upload: volumes.iter().map(|v| v.upload_bytes).sum(),
        volumes,
        creates: Vec::new(),
        checks,
        server_name: format!(
            "{vm}-restored-{}",
            first.manifest.created_at.format("%Y%m%d%H%M%S")
        ),
        firmware,
        images,
    };
    plan.creates = provider.creates(&plan);
    // Every check that can be made before hours of upload is made now.
    let problems = provider.refuses(&plan).await?;
    if !problems.is_empty() {
        return Err(Error::Cloud {
            target: target.into(),
            phase: "plan".into(),
            reason: problems.join("; "),
            transient: false,
            status: None,
        });
    }
    Ok(plan)
}

/// The definition stored with the set, if any (for the firmware).
async fn first_definition(images: &[VolumeImage]) -> Option<crate::vm::Definition> {
    let v = images.iter().find(|v| v.manifest.definition.is_some())?;
    let d = v.manifest.definition?;
    let raw = source::fetch_chunk(&v.store, &d.chunk).await.ok()?;
    crate::vm::Definition::from_chunk(&d, &raw).ok()
}

/// Options of an execution.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub keep_on_failure: bool,
    pub ready_timeout: Option<Duration>,
    /// Bytes per second the uploads into the cloud may take.
    pub upload_limit: Option<u64>,
}

/// A rate limit for uploads, from `--limit-upload` (or none).
pub fn upload_limit(rate: Option<u64>) -> Result<Option<Arc<crate::store::throttle::RateLimit>>> {
    rate.map(|r| crate::store::throttle::RateLimit::new(r, None).map(Arc::new))
        .transpose()
}

/// Carries out a plan. On failure or cancel, removes what was created
/// (unless `keep_on_failure`); the error then lists what was removed.
pub async fn execute(
    plan: &CloudPlan,
    provider: &dyn Provider,
    opts: ExecOptions,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<CloudOutcome> {
    let ledger = Ledger::default();
    let uploaded = std::sync::atomic::AtomicU64::new(0);
    let ctx = Ctx {
        target: &plan.target,
        progress,
        cancel,
        ledger: &ledger,
        ready_timeout: opts.ready_timeout.unwrap_or(Duration::from_secs(1800)),
        uploaded: &uploaded,
        upload_limit: upload_limit(opts.upload_limit)?,
    };
    let started = Instant::now();
    progress.set_totals(plan.bytes_to_upload, plan.volumes.len() as u64);
    progress.set_job_total(plan.bytes_to_upload);
    let mut upload_seconds = 0.0;
    let res = async {
        ctx.phase("auth");
        for line in provider.check().await? {
            ctx.note(&line);
        }
        let mut done = Vec::new();
        let up_start = Instant::now();
        for v in &plan.images {
            ctx.check_cancel()?;
            let name = format!("{}-{}", plan.server_name, v.manifest.volume.name);
            done.push(provider.upload(v, &name, &ctx).await?);
            progress.add(0, 1);
        }
        upload_seconds = up_start.elapsed().as_secs_f64();
        let root = done
            .iter()
            .find(|u| u.role == Role::Root)
            .or(done.first())
            .cloned()
            .ok_or_else(|| Error::Internal("no volume was uploaded".into()))?;
        ctx.check_cancel()?;
        let mut server = provider.create_server(plan, &root, &ctx).await?;
        for (i, d) in done.iter().filter(|u| u.id != root.id).enumerate() {
            ctx.check_cancel()?;
            provider.attach_data(&server, d, i, &ctx).await?;
        }
        ctx.check_cancel()?;
        // The last step only reads (addresses, a console URL), so a cancel
        // ends it at once instead of when a hung call times out; and a
        // cancel during it still cancels (and cleans up).
        tokio::select! {
            r = provider.finish(&mut server, &ctx) => r?,
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
        }
        ctx.check_cancel()?;
        ctx.phase(&format!(
            "running: server {} ({}) at {}",
            server.id,
            server.name,
            if server.addresses.is_empty() {
                "no address yet".to_string()
            } else {
                server.addresses.join(", ")
            }
        ));
        Ok(server)
    }
    .await;
    match res {
        Ok(server) => Ok(CloudOutcome {
            target: plan.target.clone(),
            vm: plan.vm.clone(),
            server,
            created: ledger.all(),
            uploaded_bytes: uploaded.load(std::sync::atomic::Ordering::Relaxed),
            upload_seconds,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => Err(clean_up(e, &ledger, provider, opts.keep_on_failure, progress).await),
    }
}

/// Removes what a failed or cancelled restore created, newest first, and
/// returns the error extended with what was removed and what is left.
async fn clean_up(
    err: Error,
    ledger: &Ledger,
    provider: &dyn Provider,
    keep: bool,
    progress: &Progress,
) -> Error {
    let made = ledger.all();
    if made.is_empty() {
        return err;
    }
    let list = |v: &[String]| v.join(", ");
    let tail = if keep {
        let kept: Vec<String> = made.iter().map(|r| r.to_string()).collect();
        format!("; kept (--keep-on-failure): {}", list(&kept))
    } else {
        progress.set_phase("removing what was created");
        // Cleanup runs even when the job was cancelled: a fresh token.
        let cancel = CancellationToken::new();
        let (mut removed, mut left) = (Vec::new(), Vec::new());
        // Servers first (removing one detaches its volumes, also those
        // still attaching), then the rest newest first.
        let mut order: Vec<&Resource> = made.iter().rev().collect();
        order.sort_by_key(|r| !matches!(r.kind.as_str(), "server" | "instance"));
        for r in order {
            progress.push_line(&format!("removing {r}"));
            match provider.remove(r, &cancel).await {
                Ok(()) => removed.push(r.to_string()),
                Err(e) => left.push(format!("{r}: {}", crate::text::describe(&e))),
            }
        }
        let mut t = String::new();
        if !removed.is_empty() {
            t.push_str(&format!("; removed: {}", list(&removed)));
        }
        if !left.is_empty() {
            t.push_str(&format!("; NOT removed (remove by hand): {}", list(&left)));
        }
        t
    };
    progress.push_line(tail.trim_start_matches("; "));
    match err {
        Error::Cancelled => Error::CloudCancelled { cleanup: tail },
        e @ Error::Cloud { .. } => http::reword(e, |reason| format!("{reason}{tail}")),
        other => Error::BadInput(format!("{}{tail}", crate::text::describe(&other))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider that records removals and fails to remove one id.
    struct Recorder {
        removed: Mutex<Vec<String>>,
        stuck: &'static str,
    }

    #[async_trait]
    impl Provider for Recorder {
        async fn check(&self) -> Result<Vec<String>> {
            Ok(vec![])
        }
        async fn upload(&self, _: &VolumeImage, _: &str, _: &Ctx<'_>) -> Result<Uploaded> {
            Err(Error::Internal("unused".into()))
        }
        async fn create_server(&self, _: &CloudPlan, _: &Uploaded, _: &Ctx<'_>) -> Result<Server> {
            Err(Error::Internal("unused".into()))
        }
        async fn attach_data(&self, _: &Server, _: &Uploaded, _: usize, _: &Ctx<'_>) -> Result<()> {
            Ok(())
        }
        async fn finish(&self, _: &mut Server, _: &Ctx<'_>) -> Result<()> {
            Ok(())
        }
        async fn remove(&self, r: &Resource, c: &CancellationToken) -> Result<()> {
            assert!(!c.is_cancelled(), "cleanup runs with a fresh token");
            if r.id == self.stuck {
                return Err(http::Step::new("t", "removing").fail("volume is busy"));
            }
            self.removed.lock().unwrap().push(r.id.clone());
            Ok(())
        }
        fn upload_bytes(&self, _: &crate::repo::Index) -> u64 {
            0
        }
        fn creates(&self, _: &CloudPlan) -> Vec<String> {
            vec![]
        }
    }

    fn ledger() -> Ledger {
        let l = Ledger::default();
        l.add("image", "img-1", "web-root");
        l.add("image", "img-2", "web-data");
        l.forget("img-2");
        l.add("server", "srv-1", "web");
        l.add("volume", "vol-1", "web-data");
        l
    }

    #[tokio::test]
    async fn cleanup_removes_newest_first_and_names_what_is_left() {
        let p = Recorder {
            removed: Mutex::default(),
            stuck: "vol-1",
        };
        let err = http::Step::new("osp", "server").fail("No valid host was found");
        let e = clean_up(err, &ledger(), &p, false, &Progress::new()).await;
        assert_eq!(*p.removed.lock().unwrap(), vec!["srv-1", "img-1"]);
        let text = e.to_string();
        assert!(text.starts_with("cloud osp: server: No valid host was found; removed: server srv-1 (web), image img-1 (web-root); NOT removed (remove by hand): volume vol-1 (web-data): cloud t: removing: volume is busy"), "{text}");
        assert!(!text.contains("img-2"));
    }

    #[tokio::test]
    async fn keep_on_failure_removes_nothing_and_a_cancel_stays_a_cancel() {
        let p = Recorder {
            removed: Mutex::default(),
            stuck: "",
        };
        let e = clean_up(Error::Cancelled, &ledger(), &p, true, &Progress::new()).await;
        assert!(p.removed.lock().unwrap().is_empty());
        assert!(
            matches!(&e, Error::CloudCancelled { cleanup } if cleanup.contains("kept (--keep-on-failure): image img-1 (web-root), server srv-1 (web), volume vol-1 (web-data)")),
            "{e}"
        );
        // Nothing created: the error is passed on as it is.
        let e = clean_up(
            Error::Cancelled,
            &Ledger::default(),
            &p,
            false,
            &Progress::new(),
        )
        .await;
        assert!(matches!(e, Error::Cancelled));
    }
}
