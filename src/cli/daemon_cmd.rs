//! `lifeboat daemon`: runs the policies (core `daemon`), with Prometheus
//! metrics on `--metrics-listen`; and `status --rpo`.

use std::sync::Arc;

use lifeboat_core::daemon::runner::{Clock, Daemon, DaemonOptions, FileClock, SystemClock};
use lifeboat_core::jobs::CancellationToken;
use lifeboat_core::rpo::{self, RpoState};

use super::{print_json, Ctx, Outcome};
use crate::output::{age, table, time};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Policy runs at once (never two of one VM).
    #[arg(long, default_value_t = 2)]
    pub max_jobs: usize,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Run these VMs' policies once, now, and exit.
    #[arg(long, value_name = "VM", num_args = 1..)]
    pub now: Vec<String>,
    /// Seconds between looks at the schedule.
    #[arg(long, default_value_t = 5, hide = true)]
    pub tick: u64,
    /// Testing: read the time from this file (RFC 3339) instead of the clock.
    #[arg(long, hide = true, value_name = "FILE")]
    pub clock_file: Option<std::path::PathBuf>,
}

pub async fn daemon(ctx: &Ctx, a: DaemonArgs) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let clock: Arc<dyn Clock> = match &a.clock_file {
        Some(f) => Arc::new(FileClock::new(f)?),
        None => Arc::new(SystemClock),
    };
    let shutdown = CancellationToken::new();
    if let Some(addr) = a.metrics_listen {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "metrics on {addr} need no token: anyone who reaches it sees VM names and backup ages (keep it on loopback or behind a firewall)"
            );
        }
        let source = crate::server::metrics::MetricsSource {
            config: Arc::new(ctx.config.clone()),
            root: repo.root().to_path_buf(),
        };
        let bound = crate::server::metrics::serve_metrics(addr, source, shutdown.clone()).await?;
        println!("metrics on http://{bound}/metrics");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::stop_requested().await;
        tracing::info!("stop requested: running jobs stop at their next safe point");
        stop.cancel();
    });
    // The host's libvirt domains join the config's VMs (listed once, at
    // start: a domain defined later is scheduled after a restart).
    let mut config = ctx.config.clone();
    let config = tokio::task::spawn_blocking(move || {
        match config.adopt_libvirt_domains() {
            Ok(Some(d)) => tracing::info!("libvirt: {} domains", d.len()),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "libvirt: cannot list domains ({e}); only the config's VMs are scheduled"
            ),
        }
        config
    })
    .await?;
    let d = Daemon {
        config,
        root: repo.root().to_path_buf(),
        clock,
        opts: DaemonOptions {
            max_jobs: a.max_jobs,
            tick: std::time::Duration::from_millis((a.tick * 1000).max(100)),
        },
    };
    let once = !a.now.is_empty();
    let failed = d.run(shutdown.clone(), a.now).await?;
    shutdown.cancel();
    if once && failed > 0 {
        anyhow::bail!(
            "{failed} policy runs did not succeed; `lifeboat status --rpo` and state/runs.jsonl say why"
        );
    }
    Ok(Outcome::Ok)
}

/// `status --rpo`: exits 5 when any VM is not ok.
pub async fn rpo_status(ctx: &Ctx, timeout: u64) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let now = chrono::Utc::now();
    let root = repo.root().to_path_buf();
    let config = ctx.config.clone();
    let mut status =
        tokio::task::spawn_blocking(move || rpo::assess_repo(&config, &root, now)).await??;
    // The newest backup each configured remote holds, per VM, asked at once.
    let limit = std::time::Duration::from_secs(timeout.max(1));
    let names: Vec<String> = ctx.config.remotes.keys().cloned().collect();
    let listed = futures::future::join_all(names.iter().map(|n| async move {
        let r = tokio::time::timeout(limit, async {
            let (_, store) = ctx.remote(n)?;
            lifeboat_core::repository::list_manifests(store.as_ref()).await
        })
        .await;
        let r = match r {
            Ok(Ok(keys)) => Ok(keys),
            Ok(Err(e)) => Err(lifeboat_core::text::describe(&e)),
            Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
        };
        (n.clone(), r)
    }))
    .await;
    for s in &mut status {
        for (name, keys) in &listed {
            let sight = match keys {
                Err(reason) => rpo::RemoteSight::Unreachable {
                    reason: reason.clone(),
                },
                Ok(keys) => match keys.iter().filter(|k| k.vm == s.vm).map(|k| k.time).max() {
                    Some(newest) => rpo::RemoteSight::Holds { newest },
                    None => rpo::RemoteSight::Empty,
                },
            };
            s.remotes.insert(name.clone(), sight);
        }
    }
    let bad = status.iter().filter(|s| s.state != RpoState::Ok).count();
    if ctx.json {
        print_json(&serde_json::json!({ "vms": status, "not_ok": bad }))?;
    } else {
        let rows: Vec<Vec<String>> = status
            .iter()
            .map(|s| {
                vec![
                    s.vm.clone(),
                    s.state.label().to_string(),
                    s.newest
                        .map(|t| age(&t, now))
                        .unwrap_or_else(|| "never".into()),
                    s.policy.clone().unwrap_or_else(|| "-".into()),
                    s.verify
                        .as_ref()
                        .map(|v| {
                            format!(
                                "{} {} {}",
                                if v.deep { "deep" } else { "quick" },
                                if v.ok { "ok" } else { "FAILED" },
                                age(&v.at, now)
                            )
                        })
                        .unwrap_or_else(|| "never".into()),
                    s.last_run
                        .as_ref()
                        .map(|r| {
                            format!("{:?} {}", r.outcome, age(&r.started_at, now)).to_lowercase()
                        })
                        .unwrap_or_else(|| "-".into()),
                    s.next_run.map(|t| time(&t)).unwrap_or_else(|| "-".into()),
                    s.remotes
                        .iter()
                        .map(|(n, sight)| {
                            let mut text = match sight {
                                rpo::RemoteSight::Holds { newest } => age(newest, now),
                                rpo::RemoteSight::Empty => "none".into(),
                                rpo::RemoteSight::Unreachable { .. } => "UNREACHABLE".into(),
                            };
                            if let Some(o) = s.offsite.get(n) {
                                if o.refused > 0 {
                                    text.push_str(&format!(
                                        " ({} sets REFUSED as late)",
                                        o.refused
                                    ));
                                } else if o.owed > 0 {
                                    text.push_str(&format!(" ({} sets owed)", o.owed));
                                }
                            }
                            format!("{n}: {text}")
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["VM", "STATE", "NEWEST", "POLICY", "VERIFY", "LAST RUN", "NEXT RUN", "REMOTES"],
                &rows
            )
        );
        if bad > 0 {
            println!("{bad} of {} VMs are not ok", status.len());
        }
        for (name, sight) in status.first().map(|s| &s.remotes).into_iter().flatten() {
            if let rpo::RemoteSight::Unreachable { reason } = sight {
                println!(
                    "remote {name} is unreachable: {}",
                    lifeboat_core::text::escape(reason)
                );
            }
        }
        for s in &status {
            for (name, o) in &s.offsite {
                if o.refused > 0 {
                    println!(
                        "{}: {name} refused {} sets as late ({}); they stay here until an admin copies them (docs/SERVER.md, \"Catching up after an outage\")",
                        s.vm,
                        o.refused,
                        lifeboat_core::text::escape(o.refused_reason.as_deref().unwrap_or("-"))
                    );
                }
            }
        }
    }
    Ok(if bad > 0 {
        Outcome::RpoAtRisk
    } else {
        Outcome::Ok
    })
}

/// `lifeboat runs [VM] [--last N]`: the policy run history, newest last.
pub fn runs_cmd(ctx: &Ctx, vm: Option<String>, last: usize) -> anyhow::Result<Outcome> {
    let repo = ctx.open_repo()?;
    let mut runs = lifeboat_core::daemon::runs::load_runs(repo.root())?;
    if let Some(vm) = &vm {
        runs.retain(|r| &r.vm == vm);
    }
    let skip = runs.len().saturating_sub(last);
    let runs = &runs[skip..];
    if ctx.json {
        print_json(&runs)?;
        return Ok(Outcome::Ok);
    }
    if runs.is_empty() {
        println!("no policy runs recorded yet (`lifeboat daemon` records them)");
        return Ok(Outcome::Ok);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                time(&r.started_at),
                r.vm.clone(),
                r.policy.clone(),
                r.slot.map(|t| time(&t)).unwrap_or_else(|| "by hand".into()),
                r.attempt.to_string(),
                format!("{:?}", r.outcome).to_lowercase(),
                crate::output::duration(r.seconds),
                lifeboat_core::text::bytes(r.bytes_new),
                lifeboat_core::text::escape(r.error.as_deref().unwrap_or(&r.steps.join("; ")))
                    .into_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "STARTED",
                "VM",
                "POLICY",
                "SLOT",
                "TRY",
                "RESULT",
                "TOOK",
                "NEW",
                "STEPS / ERROR"
            ],
            &rows
        )
    );
    Ok(Outcome::Ok)
}
