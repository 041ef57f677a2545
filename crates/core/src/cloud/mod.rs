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
pub mod provider;
pub mod source;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::manifest::Role;
use crate::format::refs::Ref;
use crate::jobs::{CancellationToken, Progress};
use crate::store::DynStore;
pub use provider::{
    poll, upload_limit, CloudOutcome, CloudPlan, Ctx, Ledger, PlannedVolume, Provider, Resource,
    Server, TargetCheck, Uploaded, PHASES,
};
pub use source::VolumeImage;
pub use target::{CloudConfig, ProviderKind};

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
    let keys = crate::repository::list_manifests(store.as_ref()).await?;
    let chosen = crate::sync::select::select(store.as_ref(), keys, Some(reference), None).await?;
    let mut out = Vec::new();
    for key in chosen {
        let (manifest, _) = crate::repository::fetch_manifest(store.as_ref(), &key).await?;
        let (index, _) = crate::repository::fetch_index(store.as_ref(), &manifest.index).await?;
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

/// Carries out a plan. On failure or cancel, removes what was created
/// (unless `keep_on_failure`); the error then lists what was removed.
pub async fn execute(
    plan: &CloudPlan,
    provider: &dyn Provider,
    opts: ExecOptions,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<CloudOutcome> {
    execute_all(std::slice::from_ref(plan), provider, opts, cancel, progress)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("no VM was brought up".into()))
}

/// Carries out several plans into one target, in order (a recovery
/// plan's VMs). A failure or cancel at any of them removes what all of
/// them created (unless `keep_on_failure`): a service comes up whole or
/// leaves nothing behind.
pub async fn execute_all(
    plans: &[CloudPlan],
    provider: &dyn Provider,
    opts: ExecOptions,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<Vec<CloudOutcome>> {
    let Some(first) = plans.first() else {
        return Ok(Vec::new());
    };
    let ledger = Ledger::default();
    let uploaded = std::sync::atomic::AtomicU64::new(0);
    let ctx = Ctx {
        target: &first.target,
        progress,
        cancel,
        ledger: &ledger,
        ready_timeout: opts.ready_timeout.unwrap_or(Duration::from_secs(1800)),
        uploaded: &uploaded,
        upload_limit: upload_limit(opts.upload_limit)?,
    };
    let total: u64 = plans.iter().map(|p| p.bytes_to_upload).sum();
    progress.set_totals(total, plans.iter().map(|p| p.volumes.len() as u64).sum());
    progress.set_job_total(total);
    let res = async {
        ctx.phase("auth");
        for line in provider.check().await? {
            ctx.note(&line);
        }
        let mut out = Vec::new();
        for plan in plans {
            let started = Instant::now();
            let before: Vec<String> = ledger.all().into_iter().map(|r| r.id).collect();
            let bytes_before = uploaded.load(std::sync::atomic::Ordering::Relaxed);
            let (server, upload_seconds) = bring_up(plan, provider, &ctx).await?;
            out.push(CloudOutcome {
                target: plan.target.clone(),
                vm: plan.vm.clone(),
                server,
                created: ledger
                    .all()
                    .into_iter()
                    .filter(|r| !before.contains(&r.id))
                    .collect(),
                uploaded_bytes: uploaded.load(std::sync::atomic::Ordering::Relaxed) - bytes_before,
                upload_seconds,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok(out)
    }
    .await;
    match res {
        Ok(out) => Ok(out),
        Err(e) => Err(clean_up(e, &ledger, provider, opts.keep_on_failure, progress).await),
    }
}

/// Uploads a plan's volumes, creates its server, attaches its data
/// volumes and waits for it: the server and the upload's seconds.
async fn bring_up(
    plan: &CloudPlan,
    provider: &dyn Provider,
    ctx: &Ctx<'_>,
) -> Result<(Server, f64)> {
    let mut done = Vec::new();
    let up_start = Instant::now();
    for v in &plan.images {
        ctx.check_cancel()?;
        let name = format!("{}-{}", plan.server_name, v.manifest.volume.name);
        done.push(provider.upload(v, &name, ctx).await?);
        ctx.progress.add(0, 1);
    }
    let upload_seconds = up_start.elapsed().as_secs_f64();
    let root = done
        .iter()
        .find(|u| u.role == Role::Root)
        .or(done.first())
        .cloned()
        .ok_or_else(|| Error::Internal("no volume was uploaded".into()))?;
    ctx.check_cancel()?;
    let mut server = provider.create_server(plan, &root, ctx).await?;
    for (i, d) in done.iter().filter(|u| u.id != root.id).enumerate() {
        ctx.check_cancel()?;
        provider.attach_data(&server, d, i, ctx).await?;
    }
    ctx.check_cancel()?;
    // The last step only reads (addresses, a console URL), so a cancel
    // ends it at once instead of when a hung call times out; and a
    // cancel during it still cancels (and cleans up).
    tokio::select! {
        r = provider.finish(&mut server, ctx) => r?,
        _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
    }
    ctx.check_cancel()?;
    ctx.phase(&format!(
        "running: {} as server {} ({}) at {}",
        plan.vm,
        server.id,
        server.name,
        if server.addresses.is_empty() {
            "no address yet".to_string()
        } else {
            server.addresses.join(", ")
        }
    ));
    Ok((server, upload_seconds))
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;

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
        fn upload_bytes(&self, _: &crate::format::Index) -> u64 {
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
