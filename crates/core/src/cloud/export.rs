//! `export`: one backed-up volume as an image file in a bucket — the first
//! step of the clouds' own import flows (Aliyun ECS ImportImage from OSS,
//! AWS ImportSnapshot, Azure's fixed VHD). A raw export streams straight
//! from the store into an S3 multipart upload; other formats are restored
//! into a private scratch file, converted by `qemu-img convert`, and that
//! file is uploaded. A failed or cancelled upload is aborted, so no partial
//! object appears under the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as OsPath;
use object_store::{ObjectStoreExt, WriteMultipart};
use serde::Serialize;
use sha2::Digest as _;

use super::source::{zeros, Piece, VolumeImage};
use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};
use crate::store::s3::S3Options;
use crate::store::DynStore;

/// Multipart part size (S3 allows 10 000 parts: 160 GiB per 16 MiB).
const PART: usize = 16 << 20;
/// Parts in flight.
const PARALLEL_PARTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ExportFormat> {
        Ok(match s {
            "raw" => ExportFormat::Raw,
            "qcow2" => ExportFormat::Qcow2,
            "vmdk" => ExportFormat::Vmdk,
            "vhd" | "vpc" => ExportFormat::Vhd,
            _ => {
                return Err(Error::BadInput(format!(
                    "export format {s:?}: give raw, qcow2, vmdk or vhd"
                )))
            }
        })
    }
}

impl ExportFormat {
    /// qemu-img's format name and options: VHD as a fixed image (what
    /// Azure requires, and AWS imports), VMDK as one stream-optimized file
    /// (what vSphere and AWS import).
    fn qemu(&self) -> (&'static str, &'static [&'static str]) {
        match self {
            ExportFormat::Raw => ("raw", &[]),
            ExportFormat::Qcow2 => ("qcow2", &[]),
            ExportFormat::Vmdk => ("vmdk", &["subformat=streamOptimized"]),
            ExportFormat::Vhd => ("vpc", &["subformat=fixed,force_size=on"]),
        }
    }
}

/// Where the image goes; keys come from the variables named.
#[derive(Debug, Clone)]
pub struct ExportTarget {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportPlan {
    pub vm: String,
    pub volume: String,
    pub manifest: String,
    pub from: String,
    pub format: ExportFormat,
    pub bucket: String,
    pub key: String,
    pub image_size: u64,
    /// Scratch space a converted export needs (raw: none).
    pub scratch_bytes: u64,
    pub scratch_dir: Option<PathBuf>,
    #[serde(skip)]
    image: Option<VolumeImage>,
    #[serde(skip)]
    opts: S3Options,
    /// Bytes per second the upload may take (`--limit-upload`).
    #[serde(skip)]
    pub upload_limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportOutcome {
    pub url: String,
    pub format: ExportFormat,
    pub bytes: u64,
    pub sha256: String,
    pub parts: u64,
    pub seconds: f64,
}

fn s3_options(t: &ExportTarget) -> Result<S3Options> {
    let mut o = S3Options::from_url(&t.url)?;
    if o.prefix.is_empty() || o.prefix.ends_with('/') {
        return Err(Error::BadInput(format!(
            "{}: give the object's key after the bucket (s3://bucket/path/disk.raw)",
            t.url
        )));
    }
    o.endpoint = t.endpoint.clone();
    o.region = t.region.clone();
    o.path_style = t.path_style;
    let var = |v: &Option<String>, d: &str, what: &str| -> Result<Option<String>> {
        let name = v.clone().unwrap_or_else(|| d.to_string());
        match std::env::var(&name) {
            Ok(s) if !s.is_empty() => Ok(Some(s)),
            _ if v.is_some() => Err(Error::BadInput(format!(
                "export: the {what} is read from the environment variable {name}, which is not set"
            ))),
            _ => Ok(None),
        }
    };
    o.access_key_id = var(&t.access_key_id_env, "AWS_ACCESS_KEY_ID", "access key id")?;
    o.secret_access_key = var(
        &t.secret_access_key_env,
        "AWS_SECRET_ACCESS_KEY",
        "secret access key",
    )?;
    Ok(o)
}

/// Plans an export of one volume (a REF naming one backup). Writes nothing.
pub async fn plan(
    store: &DynStore,
    from: &str,
    reference: &str,
    format: ExportFormat,
    target: &ExportTarget,
    scratch: Option<&Path>,
) -> Result<ExportPlan> {
    let opts = s3_options(target)?;
    let keys = crate::repository::list_manifests(store.as_ref()).await?;
    if matches!(
        crate::format::refs::Ref::parse(reference)?,
        crate::format::refs::Ref::Set { .. }
    ) {
        return Err(Error::BadInput(format!(
            "{reference:?} names a VM set; export one volume: VM/VOLUME@latest or a backup id"
        )));
    }
    let chosen = crate::sync::select::select(store.as_ref(), keys, Some(reference), None).await?;
    let key = match chosen.as_slice() {
        [k] => k.clone(),
        _ => {
            return Err(Error::BadInput(format!(
                "{reference:?} names {} backups; export one: VM/VOLUME@latest or a backup id",
                chosen.len()
            )))
        }
    };
    let (manifest, _) = crate::repository::fetch_manifest(store.as_ref(), &key).await?;
    let (index, _) = crate::repository::fetch_index(store.as_ref(), &manifest.index).await?;
    let image_size = index.image_size;
    let (scratch_bytes, scratch_dir) = if format == ExportFormat::Raw {
        (0, None)
    } else {
        // The raw restore (sparse: its data) plus the converted file (a
        // fixed VHD is the whole virtual size).
        let dir = scratch
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let converted = match format {
            ExportFormat::Vhd => vhd_size(index.image_size) + 512,
            _ => index.nonzero_bytes(),
        };
        let need = index.nonzero_bytes().saturating_add(converted);
        if let Some(free) = crate::restore::available_bytes(&dir) {
            if free < need {
                return Err(Error::BadInput(format!(
                    "export as {} needs about {} of scratch space in {}, {} are free; pass --scratch DIR",
                    format.qemu().0,
                    crate::text::bytes(need),
                    dir.display(),
                    crate::text::bytes(free)
                )));
            }
        }
        (need, Some(dir))
    };
    Ok(ExportPlan {
        vm: manifest.vm.name.clone(),
        volume: manifest.volume.name.clone(),
        manifest: key.id.to_hex(),
        from: from.into(),
        format,
        bucket: opts.bucket.clone(),
        key: opts.prefix.clone(),
        image_size,
        scratch_bytes,
        scratch_dir,
        image: Some(VolumeImage {
            key,
            manifest,
            index: Arc::new(index),
            store: store.clone(),
        }),
        opts,
        upload_limit: None,
    })
}

/// Carries out an export.
pub async fn execute(
    plan: &ExportPlan,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<ExportOutcome> {
    let image = plan
        .image
        .clone()
        .ok_or_else(|| Error::Internal("an export plan without its image".into()))?;
    let started = std::time::Instant::now();
    let url = format!("s3://{}/{}", plan.bucket, plan.key);
    let (bytes, sha256) = match plan.format {
        ExportFormat::Raw => {
            progress.set_phase("uploading (raw, streamed from the store)");
            progress.set_totals(image.index.image_size, 0);
            progress.set_job_total(image.index.image_size);
            let body = image.pieces().map(|p| {
                p.map(|(_, piece)| match piece {
                    Piece::Data(b) => b,
                    Piece::Zero(len) => zeros(len as usize),
                })
            });
            upload(plan, &url, body, cancel, progress).await?
        }
        other => {
            let dir = plan.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
            let scratch = tempfile::Builder::new()
                .prefix(".lifeboat-export-")
                .tempdir_in(&dir)
                .map_err(|e| Error::io("creating a scratch directory in", &dir, e))?;
            let raw = scratch.path().join("image.raw");
            let out = scratch.path().join("image.out");
            progress.set_phase("restoring into scratch space");
            progress.set_job_total(image.index.image_size * 2);
            write_sparse(&image, &raw, cancel, progress).await?;
            if other == ExportFormat::Vhd {
                // Azure takes only VHDs whose virtual size is a whole
                // number of MiB (its documented requirement): the image
                // is padded with zeros up to the next MiB.
                let size = vhd_size(image.index.image_size);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&raw)
                    .map_err(|e| Error::io("opening", &raw, e))?;
                f.set_len(size).map_err(|e| Error::io("sizing", &raw, e))?;
            }
            let (fmt, o) = other.qemu();
            progress.set_phase(&format!("converting to {fmt}"));
            let (r2, o2) = (raw.clone(), out.clone());
            tokio::task::spawn_blocking(move || crate::source::qemu::convert_raw(&r2, &o2, fmt, o))
                .await
                .map_err(|e| Error::Internal(format!("convert task failed: {e}")))??;
            let _ = std::fs::remove_file(&raw);
            let file = tokio::fs::File::open(&out)
                .await
                .map_err(|e| Error::io("opening", &out, e))?;
            let len = file
                .metadata()
                .await
                .map_err(|e| Error::io("reading", &out, e))?
                .len();
            progress.set_phase("uploading");
            progress.set_totals(len, 0);
            let body = tokio_util::io::ReaderStream::with_capacity(file, 4 << 20)
                .map(|r| r.map_err(|e| Error::io("reading", &out, e)));
            upload(plan, &url, body, cancel, progress).await?
        }
    };
    Ok(ExportOutcome {
        url,
        format: plan.format,
        bytes,
        sha256,
        parts: bytes.div_ceil(PART as u64),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A VHD's virtual size: the image's, rounded up to a whole MiB.
pub fn vhd_size(image_size: u64) -> u64 {
    image_size.div_ceil(1 << 20) << 20
}

/// Sends a stream of bytes as one S3 multipart upload (parts in flight
/// bounded), hashing it on the way; aborts the upload on any error, so no
/// partial object appears. Returns the bytes sent and their SHA-256.
async fn upload(
    plan: &ExportPlan,
    url: &str,
    body: impl futures::Stream<Item = Result<bytes::Bytes>>,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<(u64, String)> {
    let err = |e: object_store::Error| Error::Remote {
        remote: url.to_string(),
        reason: crate::store::s3::scrub(&e.to_string()),
        transient: false,
    };
    let s3 = crate::store::s3::client(&plan.opts)?;
    let upload = s3
        .put_multipart(&OsPath::from(plan.key.as_str()))
        .await
        .map_err(err)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let limit = super::provider::upload_limit(plan.upload_limit)?;
    futures::pin_mut!(body);
    let res: Result<(u64, sha2::Sha256)> = async {
        let mut hasher = sha2::Sha256::new();
        let mut n = 0u64;
        while let Some(data) = body.next().await {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let data = data?;
            if let Some(l) = &limit {
                l.take(data.len() as u64).await;
            }
            w.wait_for_capacity(PARALLEL_PARTS).await.map_err(err)?;
            let d = data.clone();
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&d);
                hasher
            })
            .await
            .map_err(|e| Error::Internal(format!("hashing failed: {e}")))?;
            n += data.len() as u64;
            progress.add(data.len() as u64, 0);
            w.put(data);
        }
        Ok((n, hasher))
    }
    .await;
    match res {
        Ok((n, h)) => {
            progress.set_phase("completing the multipart upload");
            w.finish().await.map_err(err)?;
            Ok((n, hex::encode(h.finalize())))
        }
        Err(e) => {
            let _ = w.abort().await;
            Err(e)
        }
    }
}

/// The image as a sparse file (zeros never written).
async fn write_sparse(
    image: &VolumeImage,
    path: &Path,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = crate::durable::create_private(path)?;
    file.set_len(image.index.image_size)
        .map_err(|e| Error::io("sizing", path, e))?;
    let file = Arc::new(file);
    let pieces = image.pieces();
    futures::pin_mut!(pieces);
    while let Some(p) = pieces.next().await {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (off, piece) = p?;
        let n = piece.len();
        if let Piece::Data(b) = piece {
            let (f, p2) = (file.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || {
                f.write_all_at(&b, off)
                    .map_err(|e| Error::io("writing", &p2, e))
            })
            .await
            .map_err(|e| Error::Internal(format!("write task failed: {e}")))??;
        }
        progress.add(n, 0);
    }
    Ok(())
}
