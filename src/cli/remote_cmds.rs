//! Remotes: remote add/ls/rm, serve, push, pull, status, restore --from.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use lifeboat_core::config::remotes as remote;
use lifeboat_core::config::{default_config_path, RemoteConfig};
use lifeboat_core::format::ManifestKey;
use lifeboat_core::repository;
use lifeboat_core::store::local::LocalStore;
use lifeboat_core::store::url;
use lifeboat_core::sync::{self, select, status, SyncOptions};

use super::progress::run_job_async;
use super::{print_json, Ctx, Outcome};
use crate::output::{bytes, duration, table, time};

/// Where an S3-compatible store is and which variables hold its keys
/// (`remote add`, `export`).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 endpoint, e.g. http://127.0.0.1:3900 or https://oss-cn-hangzhou.aliyuncs.com.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// S3 path-style addressing (MinIO, Garage, Ceph RGW).
    #[arg(long)]
    pub path_style: bool,
    /// S3: variable holding the access key id (default AWS_ACCESS_KEY_ID).
    #[arg(long)]
    pub access_key_id_env: Option<String>,
    /// S3: variable holding the secret key (default AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub secret_access_key_env: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RemoteAddArgs {
    pub name: String,
    /// A path or file:///path, http(s)://host:port/, or s3://bucket/prefix.
    pub url: String,
    /// lifeboat serve: environment variable holding the token.
    #[arg(long)]
    pub token_env: Option<String>,
    /// lifeboat serve: file holding the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// lifeboat serve over TLS with a private CA: its certificate (PEM).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// lifeboat serve over TLS: the SHA-256 fingerprint of its certificate
    /// (`lifeboat serve fingerprint` prints it); trusted instead of a CA.
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// Request timeout in seconds.
    #[arg(long)]
    pub timeout_secs: Option<u64>,
}

fn config_file(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    ctx.config
        .path
        .clone()
        .or_else(default_config_path)
        .context("no config file path: pass --config FILE")
}

fn edit_config(
    ctx: &Ctx,
    f: impl FnOnce(&mut toml_edit::DocumentMut) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let path = config_file(ctx)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    f(&mut doc)?;
    let out = doc.to_string();
    // Check the result is still a valid config before replacing the file.
    lifeboat_core::config::Config::parse(&path, &out)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    lifeboat_core::durable::write_atomic(&path, out.as_bytes())?;
    Ok(path)
}

/// A byte rate as the config writes it: `8M`, `512K`, or bytes.
fn rate_text(b: u64) -> String {
    match b {
        b if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

pub fn remote_add(ctx: &Ctx, a: RemoteAddArgs) -> anyhow::Result<Outcome> {
    lifeboat_core::names::check_name("remote", &a.name)?;
    if a.name == "local" {
        bail!("a remote may not be named \"local\": that name means the local repository (drill --from local)");
    }
    url::check_url(&a.url)?;
    if a.token_env.is_some() && a.token_file.is_some() {
        bail!("give --token-env or --token-file, not both");
    }
    // Stored in the canonical form; a typo is refused here, not at the
    // first push.
    let fingerprint = a
        .fingerprint
        .as_deref()
        .map(|f| {
            f.parse::<lifeboat_core::store::tls::Fingerprint>()
                .map(|f| f.to_string())
        })
        .transpose()?;
    if fingerprint.is_some() && !a.url.starts_with("https://") {
        bail!("--fingerprint pins a TLS certificate: the URL must start with https://");
    }
    if ctx.config.remote(&a.name).is_some() {
        bail!(
            "remote {:?} already exists: remove it first with `lifeboat remote rm {}`",
            a.name,
            a.name
        );
    }
    let rc = RemoteConfig {
        url: a.url,
        token_env: a.token_env,
        token_file: a.token_file,
        // Set in the config file by hand (docs/ENCRYPTION.md).
        key_file: None,
        passphrase_file: None,
        ca_cert: a.ca_cert,
        fingerprint,
        // The global --limit-upload / --limit-download, kept for this remote.
        limit_upload: ctx.config.overrides.limits.upload.map(rate_text),
        limit_download: ctx.config.overrides.limits.download.map(rate_text),
        limit_burst: ctx.config.overrides.limits.burst.map(rate_text),
        endpoint: a.s3.endpoint,
        region: a.s3.region,
        path_style: a.s3.path_style,
        access_key_id_env: a.s3.access_key_id_env,
        secret_access_key_env: a.s3.secret_access_key_env,
        // --io-timeout and --insecure-http given with it are kept too.
        timeout_secs: a
            .timeout_secs
            .or(ctx.config.overrides.timeout.map(|t| t.as_secs())),
        insecure_http: ctx.config.overrides.insecure_http,
    };
    if rc.url.starts_with("http://") && !rc.insecure_http {
        // Refused now, not at the first push (HttpStore says why).
        lifeboat_core::store::http::HttpStore::new(
            &rc.url,
            lifeboat_core::store::http::HttpOptions {
                token: (rc.token_env.is_some() || rc.token_file.is_some()).then(String::new),
                ..Default::default()
            },
        )?;
    }
    let table_text = toml::to_string(&rc)?;
    let name = a.name.clone();
    let path = edit_config(ctx, |doc| {
        let tbl: toml_edit::DocumentMut = table_text.parse()?;
        let remotes = doc
            .entry("remote")
            .or_insert(toml_edit::Item::Table(toml_edit::Table::new()))
            .as_table_mut()
            .context("`remote` in the config is not a table")?;
        remotes.set_implicit(true);
        remotes.insert(&name, toml_edit::Item::Table(tbl.as_table().clone()));
        Ok(())
    })?;
    if ctx.json {
        print_json(&serde_json::json!({"added": a.name, "config": path}))?;
    } else {
        println!("added remote {} to {}", a.name, path.display());
    }
    Ok(Outcome::Ok)
}

pub fn remote_rm(ctx: &Ctx, name: &str) -> anyhow::Result<Outcome> {
    if ctx.config.remote(name).is_none() {
        bail!("no remote named {name:?}");
    }
    let path = edit_config(ctx, |doc| {
        if let Some(t) = doc.get_mut("remote").and_then(|r| r.as_table_mut()) {
            t.remove(name);
        }
        Ok(())
    })?;
    if !ctx.json {
        println!("removed remote {name} from {}", path.display());
    } else {
        print_json(&serde_json::json!({"removed": name}))?;
    }
    Ok(Outcome::Ok)
}

#[derive(serde::Serialize)]
struct RemoteRow {
    name: String,
    url: String,
    kind: &'static str,
    reachable: bool,
    latency_ms: Option<f64>,
    backups: Option<usize>,
    error: Option<String>,
}

pub async fn remote_ls(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut rows = Vec::new();
    for (name, rc) in &ctx.config.remotes {
        let kind = match url::check_url(&rc.url) {
            Ok(url::Kind::Local(_)) => "local",
            Ok(url::Kind::Http) => "server",
            Ok(url::Kind::S3) => "s3",
            Err(_) => "invalid",
        };
        let started = Instant::now();
        let probe = async {
            let store = remote::open_with(name, rc, &ctx.config.overrides)?;
            let cfg = repository::read_config(store.as_ref()).await?;
            let n = repository::list_manifests(store.as_ref()).await?.len();
            Ok::<_, lifeboat_core::Error>((cfg, n))
        };
        let res = tokio::time::timeout(std::time::Duration::from_secs(15), probe).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let row = match res {
            Ok(Ok((Some(_), n))) => (true, Some(ms), Some(n), None),
            Ok(Ok((None, _))) => (
                true,
                Some(ms),
                None,
                Some("reachable, but holds no repository (push --init creates one)".into()),
            ),
            Ok(Err(e)) => (false, None, None, Some(e.to_string())),
            Err(_) => (false, None, None, Some("timed out after 15 s".into())),
        };
        rows.push(RemoteRow {
            name: name.clone(),
            url: rc.url.clone(),
            kind,
            reachable: row.0,
            latency_ms: row.1,
            backups: row.2,
            error: row.3,
        });
    }
    if ctx.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    if rows.is_empty() {
        println!("no remotes; add one with `lifeboat remote add NAME URL`");
        return Ok(Outcome::Ok);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.kind.to_string(),
                r.url.clone(),
                if r.reachable {
                    "yes".into()
                } else {
                    "NO".into()
                },
                r.latency_ms
                    .map(|m| format!("{m:.0} ms"))
                    .unwrap_or_else(|| "-".into()),
                r.backups
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "KIND",
                "URL",
                "REACHABLE",
                "LATENCY",
                "BACKUPS",
                "NOTE"
            ],
            &cells
        )
    );
    Ok(Outcome::Ok)
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// A configured remote name, or a URL.
    pub remote: String,
    /// What to move: a REF, VM, VM/VOLUME or VM@latest (default: everything).
    pub selection: Option<String>,
    /// Only the newest N backups of each volume.
    #[arg(long)]
    pub last: Option<usize>,
    /// Everything (the default).
    #[arg(long, conflicts_with = "selection")]
    pub all: bool,
    /// Create the destination repository if it has none.
    #[arg(long)]
    pub init: bool,
    /// Objects moved at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Show what would be sent (backups, chunks, bytes) and send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn push_pull(ctx: &Ctx, a: SyncArgs, push: bool) -> anyhow::Result<Outcome> {
    let (name, remote_store) = ctx.remote(&a.remote)?;
    let local_path = ctx.repo_path();
    // Pushing needs a local repository; pulling creates one with --init.
    if push || !a.init {
        ctx.open_repo()?;
    }
    let local = std::sync::Arc::new(LocalStore::new(&local_path));
    let (src, dst): (
        lifeboat_core::store::DynStore,
        lifeboat_core::store::DynStore,
    ) = if push {
        (local, remote_store)
    } else {
        (remote_store, local)
    };
    let opts = SyncOptions {
        concurrency: a.concurrency,
        init: a.init,
        // A dry run writes nothing, so it needs no writer lock.
        lock: !a.dry_run,
        ..Default::default()
    };
    let selection = a.selection.clone();
    let last = a.last;
    let kind = if push { "push" } else { "pull" };
    let dry_run = a.dry_run;
    let done = run_job_async(kind, ctx.json, move |cancel, progress| async move {
        progress.set_phase("listing backups");
        let keys = repository::list_manifests(src.as_ref()).await?;
        let chosen: Vec<ManifestKey> =
            select::select(src.as_ref(), keys, selection.as_deref(), last).await?;
        let plan = sync::plan(src.as_ref(), &dst, chosen, &opts, &cancel, &progress).await?;
        if dry_run {
            return Ok(Err(plan.summary));
        }
        let done =
            sync::execute(src.as_ref(), dst.as_ref(), &plan, &opts, &cancel, &progress).await;
        plan.finish().await;
        done.map(Ok)
    })
    .await?;
    let report = match done {
        Ok(report) => report,
        Err(summary) => {
            if ctx.json {
                print_json(&serde_json::json!({"dry_run": true, "plan": summary}))?;
            } else {
                println!(
                    "would {kind} {} {name}: {} of {} backups, {} indexes, {} of {} chunks ({} of data; {} already there){}",
                    if push { "to" } else { "from" },
                    summary.manifests_to_send,
                    summary.manifests_selected,
                    summary.indexes_to_send,
                    summary.chunks_to_send,
                    summary.chunks_referenced,
                    bytes(summary.data_bytes_to_send),
                    summary.chunks_already_there,
                    if summary.creates_repository {
                        format!(", creating the repository at {}", summary.destination)
                    } else {
                        String::new()
                    }
                );
                if let Some(note) = summary.key_note() {
                    println!("{note}");
                }
            }
            return Ok(Outcome::Ok);
        }
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        println!(
            "{kind} {} {name}: {} of {} backups sent, {} chunks sent ({} already there), {} indexes, {} in {}",
            if push { "to" } else { "from" },
            report.manifests_sent,
            report.manifests_selected,
            report.chunks_sent,
            report.chunks_skipped,
            report.indexes_sent,
            bytes(report.bytes_sent),
            duration(report.seconds)
        );
    }
    if !report.refused.is_empty() {
        for r in &report.refused {
            eprintln!(
                "REFUSED by {name}: {} — {}",
                r.backup,
                lifeboat_core::text::escape(&r.reason)
            );
        }
        bail!(
            "{name} refused {} of {} backups (the rest was sent); sending them again will not help: the reasons above say what does",
            report.refused.len(),
            report.manifests_selected
        );
    }
    Ok(Outcome::Ok)
}

pub async fn status_cmd(ctx: &Ctx, remotes: Vec<String>, timeout: u64) -> anyhow::Result<Outcome> {
    let local_keys = ctx.open_repo()?.list_manifests()?;
    let names: Vec<String> = if remotes.is_empty() {
        ctx.config.remotes.keys().cloned().collect()
    } else {
        remotes
    };
    if names.is_empty() {
        bail!("no remotes configured; add one with `lifeboat remote add NAME URL` or name a URL");
    }
    let limit = std::time::Duration::from_secs(timeout.max(1));
    // Every remote at once, each bounded: one dead remote must not make
    // the answer about the others wait.
    let out: Vec<Result<status::RemoteSync, String>> =
        futures::future::join_all(names.iter().map(|n| {
            let local_keys = &local_keys;
            async move {
                let listed = tokio::time::timeout(limit, async {
                    let (_, store) = ctx.remote(n)?;
                    repository::list_manifests(store.as_ref()).await
                })
                .await;
                match listed {
                    Err(_) => Err(format!(
                        "no answer within {} s (raise --timeout for a slow link)",
                        limit.as_secs()
                    )),
                    Ok(r) => r
                        .map(|rk| status::compare(n, local_keys, &rk))
                        .map_err(|e| lifeboat_core::text::describe(&e)),
                }
            }
        }))
        .await;
    let outcome = if out.iter().any(|r| r.is_err()) {
        Outcome::Unreachable
    } else {
        Outcome::Ok
    };
    if ctx.json {
        let v: Vec<serde_json::Value> = names
            .iter()
            .zip(&out)
            .map(|(n, r)| match r {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({"remote": n, "error": e}),
            })
            .collect();
        print_json(&v)?;
        return Ok(outcome);
    }
    for (n, r) in names.iter().zip(&out) {
        let s = match r {
            Ok(s) => s,
            Err(e) => {
                println!("{n}: UNREACHABLE: {}\n", lifeboat_core::text::escape(e));
                continue;
            }
        };
        println!(
            "{n}: newest backup {}",
            s.newest
                .as_ref()
                .map(|b| format!("{} ({})", time(&b.time), &b.id[..12]))
                .unwrap_or_else(|| "none".into())
        );
        let cells: Vec<Vec<String>> = s
            .volumes
            .iter()
            .map(|v| {
                vec![
                    format!("{}/{}", v.vm, v.volume),
                    v.only_local.len().to_string(),
                    v.both.len().to_string(),
                    v.only_remote.len().to_string(),
                    v.only_local
                        .first()
                        .map(|b| time(&b.time))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "VOLUME",
                    "ONLY LOCAL",
                    "BOTH",
                    "ONLY REMOTE",
                    "NEWEST UNPUSHED"
                ],
                &cells
            )
        );
        println!();
    }
    Ok(outcome)
}
