//! A plan drill: the plan's consistent point picked, every VM fetched,
//! restored and verified side by side, each booted as soon as it is ready
//! and the VMs it waits for pass their checks, all on one private switch;
//! then each planned address asked for on that switch, then the plan's
//! own checks, then everything stopped and removed.
//!
//! The first real failure (a VM's fetch, restore, verify, boot or checks,
//! an address no VM answers for, a plan check) stops the rest at once and
//! is the plan's reason; VMs stopped because of it say so and are not
//! blamed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use super::point::{self, Point};
use super::report::{AddressCheck, PlanReport};
use super::{Plan, PlanCheckKind};
use crate::drill::{self, DrillOutcome, DrillReport, DrillRequest, Phase, VmBoot};
use crate::error::Error;
use crate::jobs::{CancellationToken, Progress};
use crate::store::Store;
use crate::vm::boot::{self, CheckResult, Hold};
use crate::vm::qemu::{Accel, Forward, Lan};
use crate::vm::switch::{mac_text, Switch};

/// How long a booted VM has to answer for its address (it was up and
/// checked already; a guest under TCG on a loaded host can be slow).
const ADDRESS_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct PlanDrillRequest {
    pub plan: Plan,
    /// "local" or the remote's name (for the report).
    pub source: String,
    /// A time: each VM's newest backup at or before it (None: the newest).
    pub at: Option<String>,
    pub accel: Accel,
    /// The directory under which the drill's private directory is made.
    pub scratch: PathBuf,
    /// Each VM's drill as the config describes it (its checks and
    /// definition), in the plan's order; `at` is set from the point.
    pub members: Vec<DrillRequest>,
    /// How long the plan's own checks may take once every VM is up.
    pub checks_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    /// Its own checks passed; the forwards reach it.
    Up(Vec<Forward>),
    /// Up, and it holds its planned address.
    Ready(Vec<Forward>),
    Failed,
}

/// Where and when a VM failed for a real reason (not stopped for another's).
struct Failure {
    at: Instant,
    vm: Option<String>,
    phase: Phase,
    why: String,
}

/// Runs a plan drill and keeps its report in the local repository's
/// history (when there is one).
pub async fn run_recorded(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &PlanDrillRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> PlanReport {
    let report = run(local_repo, remote, req, cancel, progress).await;
    if report.outcome != DrillOutcome::NotStarted
        && local_repo.join(crate::repo::CONFIG_FILE).exists()
    {
        if let Err(e) = super::report::record(local_repo, &report) {
            tracing::warn!("the plan drill's report was not kept in the history: {e}");
        }
    }
    report
}

/// Runs a plan drill. Never fails as a whole: every failure is in the report.
pub async fn run(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &PlanDrillRequest,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> PlanReport {
    let started_at = Utc::now();
    let mut report = PlanReport {
        plan: req.plan.name.clone(),
        source: req.source.clone(),
        at: req.at.clone(),
        started_at,
        ended_at: started_at,
        outcome: DrillOutcome::Fail,
        failed_vm: None,
        failed_phase: None,
        error: None,
        point: None,
        rpo_secs: None,
        rto_secs: 0.0,
        members: Vec::new(),
        network: Vec::new(),
        checks: Vec::new(),
    };
    progress.set_phase("plan: picking each VM's backup");
    let local_store;
    let store: &dyn Store = match remote {
        Some(r) => r,
        None => {
            local_store = crate::store::local::LocalStore::new(local_repo);
            &local_store
        }
    };
    let point = match point::pick(store, &req.plan, req.at.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            report.outcome = match e {
                Error::NotFound(_) | Error::BadRef { .. } => DrillOutcome::NotStarted,
                Error::Cancelled => DrillOutcome::Cancelled,
                _ => DrillOutcome::Fail,
            };
            report.failed_phase = (report.outcome == DrillOutcome::Fail).then_some(Phase::Plan);
            report.error = Some(e.to_string());
            report.ended_at = Utc::now();
            return report;
        }
    };
    report.rpo_secs = Some(point.rpo_secs(started_at));
    report.point = Some(point.clone());
    let scratch = match drill::make_scratch(&req.scratch, &format!("plan-{}", req.plan.name)) {
        Ok(s) => s,
        Err(e) => {
            report.failed_phase = Some(Phase::Plan);
            report.error = Some(e.to_string());
            report.ended_at = Utc::now();
            return report;
        }
    };
    let started = Instant::now();
    let (members, network, checks, failure, ended) = drive(
        local_repo,
        remote,
        req,
        &point,
        scratch.path(),
        cancel,
        progress,
    )
    .await;
    report.rto_secs = ended.duration_since(started).as_secs_f64();
    report.members = members;
    report.network = network;
    report.checks = checks;
    progress.set_phase("cleanup: removing the scratch files");
    let cleanup = scratch.close();
    if cancel.is_cancelled() {
        report.outcome = DrillOutcome::Cancelled;
        report.error = Some("cancelled".into());
    } else if let Some(f) = failure {
        report.failed_vm = f.vm;
        report.failed_phase = Some(f.phase);
        report.error = Some(f.why);
    } else if let Err(e) = cleanup {
        report.failed_phase = Some(Phase::Cleanup);
        report.error = Some(format!("could not remove the scratch directory: {e}"));
    } else {
        report.outcome = DrillOutcome::Pass;
    }
    report.ended_at = Utc::now();
    report
}

type Driven = (
    Vec<DrillReport>,
    Vec<AddressCheck>,
    Vec<CheckResult>,
    Option<Failure>,
    Instant,
);

async fn drive(
    local_repo: &Path,
    remote: Option<&dyn Store>,
    req: &PlanDrillRequest,
    point: &Point,
    scratch: &Path,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Driven {
    let plan = &req.plan;
    let n = req.members.len();
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let fail = |vm: Option<&str>, phase: Phase, why: String| {
        if let Ok(mut f) = failures.lock() {
            f.push(Failure {
                at: Instant::now(),
                vm: vm.map(str::to_string),
                phase,
                why,
            });
        }
    };
    let socket = scratch.join("lan.sock");
    // A Unix socket's path has room for 107 bytes.
    let switch = if socket.as_os_str().len() > 100 {
        Err(Error::BadInput(format!(
            "the drill's scratch directory {} is too deep for the private network's socket: give --scratch a shorter directory",
            scratch.display()
        )))
    } else {
        Switch::start(&socket)
    };
    let switch = match switch {
        Ok(s) => s,
        Err(e) => {
            fail(None, Phase::Plan, e.to_string());
            let f = failures.into_inner().unwrap_or_default().into_iter().next();
            return (Vec::new(), Vec::new(), Vec::new(), f, Instant::now());
        }
    };
    if let (Some(server), Some(net)) = (plan.probe_address(), plan.subnet) {
        switch.serve_dhcp(server, net.netmask());
    }
    let (states, _) = watch::channel(vec![State::Pending; n]);
    let states = Arc::new(states);
    // `stop` ends every VM's work (the first failure, or the admin's
    // cancel); `release` stops the VMs that passed, once all is checked.
    let stop = cancel.child_token();
    let release = CancellationToken::new();
    let macs: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let network: Mutex<Vec<AddressCheck>> = Mutex::new(Vec::new());
    let probe_from = plan.probe_address();
    // A fresh machine's local repository is made by the first VM's
    // fetch: the others start once it exists (or that fetch ended).
    let config_file = local_repo.join(crate::repo::CONFIG_FILE);
    let wait_for_repo = remote.is_some() && !config_file.exists();
    let first_done = std::sync::atomic::AtomicBool::new(false);
    progress.set_phase(&format!(
        "plan: fetching, restoring and booting {n} VMs (RPO {})",
        drill::age(point.rpo_secs(Utc::now()))
    ));
    let member = |i: usize| {
        let (states, stop, release) = (states.clone(), stop.clone(), release.clone());
        let (macs, network, fail, switch) = (&macs, &network, &fail, &switch);
        let (config_file, first_done) = (&config_file, &first_done);
        async move {
            let base = &req.members[i];
            let vm = base.vm.clone();
            let part = progress.part(&vm);
            let dir = scratch.join(&vm);
            let mut mreq = base.clone();
            mreq.at = point.pick(&vm).map(|p| p.reference.clone());
            mreq.accel = req.accel;
            mreq.scratch = dir.clone();
            let mut rep = drill::new_report(&mreq);
            let Some(m) = plan.member(&vm) else {
                return rep;
            };
            let res: std::result::Result<(), drill::PhaseError> = async {
                std::fs::create_dir(&dir)
                    .map_err(|e| (Phase::Plan, Error::io("creating", &dir, e)))?;
                if wait_for_repo && i > 0 {
                    part.set_phase("fetch: waiting for the local repository to be made");
                    while !config_file.exists() && !first_done.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            _ = stop.cancelled() => return Err((Phase::Fetch, Error::Cancelled)),
                        }
                    }
                }
                let prepared =
                    drill::prepare(local_repo, remote, &mreq, &dir, &mut rep, &stop, &part).await;
                if i == 0 {
                    first_done.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let prepared = prepared?;
                if !m.after.is_empty() {
                    let waited = Instant::now();
                    part.set_phase(&format!("wait: for {} to pass its checks", m.after.join(", ")));
                    let idx: Vec<usize> = m
                        .after
                        .iter()
                        .filter_map(|a| req.members.iter().position(|r| &r.vm == a))
                        .collect();
                    let mut rx = states.subscribe();
                    let ok = tokio::select! {
                        r = rx.wait_for(|v| {
                            idx.iter().all(|&j| matches!(v[j], State::Ready(_)))
                                || idx.iter().any(|&j| v[j] == State::Failed)
                        }) => r.map(|v| idx.iter().all(|&j| matches!(v[j], State::Ready(_)))).unwrap_or(false),
                        _ = stop.cancelled() => false,
                    };
                    rep.phases.push(drill::PhaseTime {
                        name: Phase::Wait,
                        secs: waited.elapsed().as_secs_f64(),
                        bytes: 0,
                    });
                    if !ok {
                        return Err((Phase::Wait, Error::Cancelled));
                    }
                }
                let mac = {
                    let own = prepared
                        .def
                        .spec
                        .nics
                        .first()
                        .and_then(|n| n.mac.clone())
                        .map(|m| m.to_ascii_lowercase());
                    let mut used = macs.lock().map_err(|_| (Phase::Boot, Error::Internal("MAC list".into())))?;
                    let mac = match own {
                        Some(m) if !used.contains(&m) => m,
                        Some(m) => {
                            part.push_line(&format!(
                                "[lifeboat] MAC {m} is another VM's in this plan: this VM gets {} on the plan's network",
                                derived_mac(&plan.name, &vm)
                            ));
                            derived_mac(&plan.name, &vm)
                        }
                        None => derived_mac(&plan.name, &vm),
                    };
                    used.push(mac.clone());
                    mac
                };
                if let Some(a) = m.address {
                    switch.lease(&mac, a);
                }
                let st = states.clone();
                let hold = Hold {
                    ready: Box::new(move |fw: &[Forward]| {
                        st.send_modify(|v| v[i] = State::Up(fw.to_vec()));
                    }),
                    release: release.clone(),
                };
                let ports = plan.ports_of(&vm);
                let vmb = VmBoot {
                    lan: Some(Lan {
                        socket: switch.path(),
                        mac: &mac,
                    }),
                    extra_ports: &ports,
                    hold: Some(&hold),
                };
                let boot = drill::boot_phase(&mreq, &prepared, &dir, vmb, &mut rep, &stop, &part);
                tokio::pin!(boot);
                let mut rx = states.subscribe();
                let up = tokio::select! {
                    r = &mut boot => return r,
                    r = rx.wait_for(|v| matches!(v[i], State::Up(_))) => r.is_ok(),
                };
                if !up {
                    return boot.await;
                }
                let forwards = match &states.borrow()[i] {
                    State::Up(f) => f.clone(),
                    _ => Vec::new(),
                };
                match (m.address, probe_from) {
                    (Some(addr), Some(from)) => {
                        part.set_phase(&format!("network: asking who holds {addr}"));
                        let check = address_check(switch, &vm, addr, from, &mac).await;
                        let ok = check.ok;
                        if !ok {
                            fail(Some(&vm), Phase::Network, check.detail.clone());
                        }
                        if let Ok(mut nw) = network.lock() {
                            nw.push(check);
                        }
                        states.send_modify(|v| {
                            v[i] = if ok { State::Ready(forwards) } else { State::Failed }
                        });
                    }
                    _ => states.send_modify(|v| v[i] = State::Ready(forwards)),
                }
                part.set_phase("up: serving the plan's other VMs");
                boot.await
            }
            .await;
            let real = match &res {
                Err((_, Error::Cancelled)) => None,
                Err((p, e)) => Some((*p, e.to_string())),
                Ok(()) => None,
            };
            let waited_in_vain =
                matches!(&res, Err((Phase::Wait, Error::Cancelled))) && !cancel.is_cancelled();
            drill::conclude(&mut rep, res, Ok(()));
            if let Some((p, why)) = real {
                fail(Some(&vm), p, format!("{vm}: {why}"));
            }
            if waited_in_vain || (rep.outcome == DrillOutcome::Cancelled && !cancel.is_cancelled())
            {
                rep.error = Some(if waited_in_vain {
                    format!(
                        "not started: it waits for {}, and the plan stopped first",
                        m.after.join(", ")
                    )
                } else {
                    "stopped: another VM of the plan failed first".into()
                });
            }
            if network
                .lock()
                .map(|nw| nw.iter().any(|c| c.vm == vm && !c.ok))
                .unwrap_or(false)
            {
                rep.outcome = DrillOutcome::Fail;
                rep.failed_phase = Some(Phase::Network);
                rep.error = network.lock().ok().and_then(|nw| {
                    nw.iter()
                        .find(|c| c.vm == vm && !c.ok)
                        .map(|c| c.detail.clone())
                });
            }
            // A VM that never became ready has failed, for those that wait.
            states.send_if_modified(|v| {
                let failed = !matches!(v[i], State::Ready(_));
                if failed {
                    v[i] = State::Failed;
                }
                failed
            });
            part.set_phase(&format!("{}", rep.outcome));
            part.finish();
            rep
        }
    };
    let checks: Mutex<Vec<CheckResult>> = Mutex::new(Vec::new());
    let ended: Mutex<Option<Instant>> = Mutex::new(None);
    let controller = async {
        let mut rx = states.subscribe();
        let all_ready = tokio::select! {
            r = rx.wait_for(|v| {
                v.iter().all(|s| matches!(s, State::Ready(_))) || v.contains(&State::Failed)
            }) => r.map(|v| !v.contains(&State::Failed)).unwrap_or(false),
            _ = stop.cancelled() => false,
        };
        if all_ready && !plan.checks.is_empty() {
            progress.set_phase("plan checks");
            let forwards: Vec<Vec<Forward>> = states
                .borrow()
                .iter()
                .map(|s| match s {
                    State::Ready(f) => f.clone(),
                    _ => Vec::new(),
                })
                .collect();
            let results = plan_checks(req, &forwards, &stop).await;
            if let Some(bad) = results.iter().find(|c| !c.ok) {
                let vm = bad.name.split(' ').next().map(str::to_string);
                fail(
                    vm.as_deref(),
                    Phase::Checks,
                    format!(
                        "plan check {} did not pass within {} s: {}",
                        bad.name, req.checks_timeout_secs, bad.detail
                    ),
                );
            }
            if let Ok(mut c) = checks.lock() {
                *c = results;
            }
        }
        if let Ok(mut e) = ended.lock() {
            *e = Some(Instant::now());
        }
        progress.set_phase("plan: stopping the VMs");
        release.cancel();
        stop.cancel();
    };
    let (reports, ()) = futures::join!(futures::future::join_all((0..n).map(member)), controller);
    drop(switch);
    let first = failures
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .min_by_key(|f| f.at);
    let ended = ended
        .into_inner()
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now);
    (
        reports,
        network.into_inner().unwrap_or_default(),
        checks.into_inner().unwrap_or_default(),
        first,
        ended,
    )
}

/// Asks on the switch who holds `addr`; it must be the VM's own NIC.
async fn address_check(
    switch: &Switch,
    vm: &str,
    addr: Ipv4Addr,
    from: Ipv4Addr,
    mac: &str,
) -> AddressCheck {
    let got = switch.who_has(addr, from, ADDRESS_WAIT).await;
    let (ok, detail) = match got {
        Some(m) if mac_text(&m) == mac => (true, format!("answered by its NIC {mac}")),
        Some(m) => (
            false,
            format!(
                "{addr} is answered by {}, not by {vm}'s NIC {mac}: two VMs of the plan claim the address",
                mac_text(&m)
            ),
        ),
        None => (
            false,
            format!(
                "{vm} does not answer for {addr} on the plan's network within {} s: its own settings give it another address (or none); the plan's address must be the one the VM expects",
                ADDRESS_WAIT.as_secs()
            ),
        ),
    };
    AddressCheck {
        vm: vm.to_string(),
        address: addr.to_string(),
        ok,
        detail,
    }
}

/// The plan's own checks, each retried until it passes or time runs out.
async fn plan_checks(
    req: &PlanDrillRequest,
    forwards: &[Vec<Forward>],
    stop: &CancellationToken,
) -> Vec<CheckResult> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(req.checks_timeout_secs);
    let client = match boot::check_client() {
        Ok(c) => c,
        Err(e) => {
            return req
                .plan
                .checks
                .iter()
                .map(|c| CheckResult {
                    name: c.name(),
                    ok: false,
                    detail: e.to_string(),
                    secs: 0.0,
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    for c in &req.plan.checks {
        let fw = req
            .members
            .iter()
            .position(|m| m.vm == c.vm)
            .and_then(|i| forwards.get(i))
            .cloned()
            .unwrap_or_default();
        let check = match &c.kind {
            PlanCheckKind::Http(h) => boot::Check::Http(h.clone()),
            PlanCheckKind::Tcp(p) => boot::Check::Tcp(*p),
        };
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match check.try_once(&client, &fw, remaining, stop).await {
                Ok(detail) => break (true, detail),
                Err(why) if Instant::now() >= deadline || stop.is_cancelled() => {
                    break (false, why)
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => {}
            }
        };
        out.push(CheckResult {
            name: c.name(),
            ok: result.0,
            detail: result.1,
            secs: started.elapsed().as_secs_f64(),
        });
        if !result.0 {
            break;
        }
    }
    out
}

/// A stable, locally administered-looking QEMU MAC for a VM of a plan
/// whose backup names none (or one another VM has).
pub(crate) fn derived_mac(plan: &str, vm: &str) -> String {
    let h = blake3::hash(format!("lifeboat plan {plan} vm {vm}").as_bytes());
    let b = h.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}
