//! The boot check: a restored set booted under `qemu-system-x86_64` with
//! `-snapshot` (the restored files stay untouched), passing when the
//! serial console shows the VM's pattern and its application checks
//! answer before the timeout. No network unless a check needs one, and
//! then QEMU user networking with `restrict=on` (the guest has no way out)
//! and host forwards on loopback only.
//!
//! QEMU is always killed and reaped before this returns, on every path
//! (pass, fail, error, cancel); if the future is dropped, `kill_on_drop`
//! kills it and tokio reaps it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::domain::RestoredDisk;
use super::qemu::{self, Accel, Forward};
use super::{BootChecks, Definition, HttpCheck};
use crate::error::{Error, Result};
use crate::jobs::{CancellationToken, Progress};

/// Serial output kept for matching (the newest bytes).
const MAX_SERIAL: usize = 1 << 20;
/// Lines of the serial console and firmware log in a report.
pub const TAIL_LINES: usize = 20;

/// Text that fails a boot at once, wherever it shows. (SeaBIOS's "Boot
/// failed: not a bootable disk" is not one: it goes on to the next disk in
/// boot order, and says "No bootable device" when none is left.)
const BUILT_IN_FAILURES: [(&str, &str); 2] = [
    ("No bootable device", "the firmware found no bootable disk"),
    ("Kernel panic", "the guest kernel panicked"),
];

pub struct BootRequest<'a> {
    pub def: &'a Definition,
    pub disks: &'a [RestoredDisk],
    pub checks: &'a BootChecks,
    /// A host command whose exit code decides (local config only), and
    /// the guest ports it needs forwarded.
    pub command: Option<(&'a [String], &'a [u16])>,
    pub accel: Accel,
    /// Where the firmware log goes (a scratch directory).
    pub scratch: &'a Path,
    /// A recovery plan's private network, for the VM's own NIC.
    pub lan: Option<qemu::Lan<'a>>,
    /// More guest ports to forward (a plan's checks of this VM).
    pub extra_ports: &'a [u16],
    /// Keep the VM running after its checks pass, until released.
    pub hold: Option<&'a Hold>,
}

/// What a held VM calls when its checks pass.
pub type OnReady = Box<dyn Fn(&[Forward]) + Send + Sync>;

/// A VM that keeps running once its checks pass, until released: a
/// recovery plan's VMs serve each other while the others boot and the
/// plan's own checks run.
pub struct Hold {
    /// Called when the VM's checks passed, with the loopback forwards
    /// that reach it.
    pub ready: OnReady,
    pub release: CancellationToken,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// Seconds from power-on until it passed (or was given up).
    pub secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BootReport {
    pub passed: bool,
    /// tcg or kvm: what really ran.
    pub accel: String,
    pub notes: Vec<String>,
    /// Power-on until the serial pattern.
    pub boot_secs: f64,
    /// After the serial pattern until every application check passed.
    pub checks_secs: f64,
    pub checks: Vec<CheckResult>,
    /// Start, Boot or Checks when it failed there.
    pub failed_phase: Option<super::phase::Phase>,
    pub failure: Option<String>,
    pub serial_tail: Vec<String>,
    pub firmware_tail: Vec<String>,
}

#[derive(Default)]
struct Serial {
    text: String,
    partial: String,
}

/// Boots and checks. `Err` only when the check cannot run at all (no QEMU,
/// a bad definition) or is cancelled; a VM that fails is an `Ok` report.
pub async fn run(
    req: &BootRequest<'_>,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<BootReport> {
    let mut notes = Vec::new();
    let accel = match req.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
        Accel::Auto if kvm_usable() => "kvm",
        Accel::Auto => {
            notes.push("KVM is not usable here (/dev/kvm cannot be opened): ran under TCG".into());
            "tcg"
        }
    };
    let mut report = attempt(req, accel, cancel, progress).await?;
    // The loopback ports were free when picked; another process may have
    // taken one before QEMU bound it. Once more with new ones.
    if report.failed_phase == Some(super::phase::Phase::Start)
        && report
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("forwarding"))
    {
        notes.push("a loopback port was taken meanwhile: started again".into());
        report = attempt(req, accel, cancel, progress).await?;
    }
    if req.accel == Accel::Auto
        && accel == "kvm"
        && report.failed_phase == Some(super::phase::Phase::Start)
    {
        notes.push(format!(
            "KVM failed ({}): ran again under TCG",
            report.failure.as_deref().unwrap_or("QEMU exited")
        ));
        report = attempt(req, "tcg", cancel, progress).await?;
    }
    notes.append(&mut report.notes);
    report.notes = notes;
    Ok(report)
}

/// The accelerator QEMU gets: `auto` is KVM where it is usable.
pub fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
        Accel::Auto if kvm_usable() => "kvm",
        Accel::Auto => "tcg",
    }
}

pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free loopback port", Path::new("127.0.0.1"), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free loopback port", Path::new("127.0.0.1"), e))
}

async fn attempt(
    req: &BootRequest<'_>,
    accel: &str,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<BootReport> {
    let c = req.checks;
    let mut guest_ports: Vec<u16> = c.http.iter().map(|h| h.port).collect();
    guest_ports.extend(&c.tcp);
    if let Some((_, f)) = req.command {
        guest_ports.extend(f.iter());
    }
    guest_ports.extend(req.extra_ports);
    guest_ports.sort_unstable();
    guest_ports.dedup();
    let forwards = guest_ports
        .iter()
        .map(|&guest| {
            Ok(Forward {
                host: free_port()?,
                guest,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fw_log = req.scratch.join("firmware.log");
    let args = qemu::args(&qemu::BootArgs {
        def: req.def,
        disks: req.disks,
        accel,
        name: None,
        check: Some(&fw_log),
        forwards: &forwards,
        lan: req.lan,
        daemon: None,
    })?;
    progress.set_phase(&format!("boot: starting QEMU ({accel})"));
    progress.push_line(&format!("[lifeboat] {} (accel {accel})", qemu::QEMU));
    let mut cmd = tokio::process::Command::new(qemu::QEMU);
    // A drill killed any way (kill -9 too) takes its QEMU with it.
    crate::sys::die_with_parent_async(&mut cmd);
    let mut child = cmd
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BadInput(format!(
                "{} is not installed: apt-get install qemu-system-x86 qemu-utils (together, so both come from one release)",
                qemu::QEMU
            )),
            _ => Error::io("starting", Path::new(qemu::QEMU), e),
        })?;
    let serial = Arc::new(Mutex::new(Serial::default()));
    let stderr_buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut tasks = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let serial = serial.clone();
        let p = progress.clone();
        let sink = move |line: &str| p.push_line(line);
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                feed(&serial, &buf[..n], &sink);
            }
        }));
    }
    if let Some(mut err) = child.stderr.take() {
        let stderr_buf = stderr_buf.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = stderr_buf.lock() {
                    if b.len() < 64 << 10 {
                        b.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(c.timeout_secs);
    let mut report = BootReport {
        accel: accel.into(),
        ..Default::default()
    };
    let outcome = watch(
        req,
        &mut child,
        &serial,
        &stderr_buf,
        &fw_log,
        &forwards,
        started,
        deadline,
        cancel,
        progress,
        &mut report,
    )
    .await;
    if let (Ok(()), None, Some(hold)) = (&outcome, &report.failure, req.hold) {
        (hold.ready)(&forwards);
        tokio::select! {
            _ = hold.release.cancelled() => {}
            _ = cancel.cancelled() => {}
            st = child.wait() => {
                report.failed_phase = Some(super::phase::Phase::Checks);
                report.failure = Some(format!(
                    "the VM stopped ({}) while the plan's other VMs were checked",
                    st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                ));
            }
        }
    }
    // Always stop the guest before anything else.
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    for t in tasks {
        t.abort();
    }
    report.serial_tail = serial
        .lock()
        .map(|s| tail_lines(&s.text, TAIL_LINES))
        .unwrap_or_default();
    report.firmware_tail = tail_lines(&read_tail(&fw_log), TAIL_LINES);
    match outcome {
        Ok(()) => {
            report.passed = report.failure.is_none();
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

fn feed(serial: &Mutex<Serial>, bytes: &[u8], sink: &impl Fn(&str)) {
    let Ok(mut s) = serial.lock() else { return };
    let text = String::from_utf8_lossy(bytes);
    s.text.push_str(&text);
    if s.text.len() > MAX_SERIAL {
        let cut = s.text.len() - MAX_SERIAL / 2;
        let cut = (cut..s.text.len())
            .find(|&i| s.text.is_char_boundary(i))
            .unwrap_or(s.text.len());
        s.text.drain(..cut);
    }
    s.partial.push_str(&text);
    while let Some(i) = s.partial.find('\n') {
        let line: String = s.partial.drain(..=i).collect();
        let line = line.trim_end_matches(['\n', '\r']);
        sink(&crate::text::escape(line));
    }
    if s.partial.len() > 4096 {
        let line = std::mem::take(&mut s.partial);
        sink(&crate::text::escape(&line));
    }
}

fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| crate::text::escape(l).into_owned())
        .collect()
}

fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut buf = Vec::new();
    let _ = f.take(64 << 10).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn failure_in(text: &str, extra: &[String]) -> Option<String> {
    for (pat, why) in BUILT_IN_FAILURES {
        if text.contains(pat) {
            return Some(format!("{why} ({pat:?})"));
        }
    }
    extra
        .iter()
        .find(|p| text.contains(p.as_str()))
        .map(|p| format!("the console showed {:?}", crate::text::escape(p)))
}

#[allow(clippy::too_many_arguments)]
async fn watch(
    req: &BootRequest<'_>,
    child: &mut tokio::process::Child,
    serial: &Mutex<Serial>,
    stderr_buf: &Mutex<Vec<u8>>,
    fw_log: &Path,
    forwards: &[Forward],
    started: Instant,
    deadline: Instant,
    cancel: &CancellationToken,
    progress: &Progress,
    report: &mut BootReport,
) -> Result<()> {
    let c = req.checks;
    let tick = Duration::from_millis(100);
    // A failure's phase time runs until the failure (the RTO of a failed
    // drill still says where the time went).
    let checks_started = Mutex::new(None::<Instant>);
    let fail = |report: &mut BootReport, phase: super::phase::Phase, why: String| {
        match checks_started.lock().ok().and_then(|t| *t) {
            None => report.boot_secs = started.elapsed().as_secs_f64(),
            Some(t) => report.checks_secs = t.elapsed().as_secs_f64(),
        }
        report.failed_phase = Some(phase);
        report.failure = Some(why);
    };
    let exited = |child: &mut tokio::process::Child| -> Option<String> {
        match child.try_wait() {
            Ok(Some(st)) => {
                let err = stderr_buf
                    .lock()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let err = tail_lines(&err, 3).join(" / ");
                Some(format!(
                    "QEMU exited ({st}){}",
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!(": {err}")
                    }
                ))
            }
            _ => None,
        }
    };
    // Boot: until the serial pattern (or at once without one).
    let pattern = c.serial.as_deref();
    progress.set_phase(&match pattern {
        Some(p) => format!(
            "boot: waiting for {:?} on the serial console",
            crate::text::escape(p)
        ),
        None => "boot: running".into(),
    });
    let mut seen_output = false;
    loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        // Looked at under the lock: the text may be a megabyte, and this
        // runs ten times a second.
        let (failed, shown, any) = serial
            .lock()
            .map(|s| {
                (
                    failure_in(&s.text, &c.fail),
                    pattern.is_none_or(|p| s.text.contains(p)),
                    !s.text.is_empty(),
                )
            })
            .unwrap_or((None, false, false));
        seen_output |= any;
        if let Some(why) = failed.or_else(|| failure_in(&read_tail(fw_log), &[])) {
            fail(report, super::phase::Phase::Boot, why);
            return Ok(());
        }
        if shown {
            report.boot_secs = started.elapsed().as_secs_f64();
            break;
        }
        if let Some(why) = exited(child) {
            // Dead before any output: QEMU itself failed (e.g. KVM).
            let phase = if seen_output {
                super::phase::Phase::Boot
            } else {
                super::phase::Phase::Start
            };
            fail(report, phase, why);
            return Ok(());
        }
        if Instant::now() >= deadline {
            fail(
                report,
                super::phase::Phase::Boot,
                format!(
                    "no {:?} on the serial console within {} s",
                    crate::text::escape(pattern.unwrap_or_default()),
                    c.timeout_secs
                ),
            );
            return Ok(());
        }
        tokio::time::sleep(tick).await;
    }
    // Application checks: each retried until it passes or time runs out.
    let mut pending: Vec<Check> = Vec::new();
    if let Some(h) = &c.http {
        pending.push(Check::Http(h.clone()));
    }
    pending.extend(c.tcp.iter().map(|&p| Check::Tcp(p)));
    if let Some((cmd, _)) = req.command {
        pending.push(Check::Command(cmd.to_vec()));
    }
    if let Ok(mut t) = checks_started.lock() {
        *t = Some(Instant::now());
    }
    let client = check_client()?;
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    while !pending.is_empty() {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut still = Vec::new();
        for check in pending {
            let name = check.name();
            progress.set_phase(&format!("checks: {name}"));
            let remaining = deadline.saturating_duration_since(Instant::now());
            let res = check.try_once(&client, forwards, remaining, cancel).await;
            match res {
                Ok(detail) => report.checks.push(CheckResult {
                    name,
                    ok: true,
                    detail,
                    secs: started.elapsed().as_secs_f64(),
                }),
                Err(detail) => {
                    last.insert(name, detail);
                    still.push(check);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        let failed = serial
            .lock()
            .ok()
            .and_then(|s| failure_in(&s.text, &c.fail));
        if let Some(why) = failed {
            fail(report, super::phase::Phase::Checks, why);
            return Ok(());
        }
        if let Some(why) = exited(child) {
            fail(report, super::phase::Phase::Checks, why);
            return Ok(());
        }
        if Instant::now() >= deadline {
            for check in &pending {
                let name = check.name();
                let detail = last.get(&name).cloned().unwrap_or_default();
                report.checks.push(CheckResult {
                    name,
                    ok: false,
                    detail,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} ({})", c.name, c.detail))
                .collect();
            fail(
                report,
                super::phase::Phase::Checks,
                format!(
                    "{} did not pass within {} s of power-on",
                    failed.join("; "),
                    c.timeout_secs
                ),
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.checks_secs = checks_started
        .lock()
        .ok()
        .and_then(|t| *t)
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or_default();
    Ok(())
}

/// One application check of a booted VM.
pub enum Check {
    Http(HttpCheck),
    Tcp(u16),
    Command(Vec<String>),
}

/// The HTTP client of the checks: no proxy, no redirects, 3 s a try.
pub fn check_client() -> Result<reqwest::Client> {
    crate::store::tls::install_crypto();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))
}

impl Check {
    pub fn name(&self) -> String {
        match self {
            Check::Http(h) => format!("http :{}{}", h.port, crate::text::escape(&h.path)),
            Check::Tcp(p) => format!("tcp :{p}"),
            Check::Command(c) => format!("command {}", crate::text::escape(&c[0])),
        }
    }

    /// One try: Ok(detail) when it passed, Err(why not) otherwise.
    pub async fn try_once(
        &self,
        client: &reqwest::Client,
        forwards: &[Forward],
        remaining: Duration,
        cancel: &CancellationToken,
    ) -> std::result::Result<String, String> {
        let host_port = |guest: u16| forwards.iter().find(|f| f.guest == guest).map(|f| f.host);
        match self {
            Check::Http(h) => {
                let port = host_port(h.port).ok_or("no forward")?;
                let url = format!("http://127.0.0.1:{port}{}", h.path);
                let resp = client.get(&url).send().await.map_err(|e| {
                    if e.is_timeout() {
                        "no answer within 3 s".to_string()
                    } else {
                        "no answer yet".to_string()
                    }
                })?;
                let status = resp.status().as_u16();
                let body = read_body(resp).await;
                // What the guest did answer, shown with the failure: the
                // first 200 characters, escaped, on one line.
                let got = || {
                    let text: String = body.chars().take(200).collect();
                    let more = if body.chars().count() > 200 {
                        "…"
                    } else {
                        ""
                    };
                    format!(
                        "{:?}{more}",
                        crate::text::escape(&text.replace(['\r', '\n'], " "))
                    )
                };
                if status != h.status {
                    return Err(format!(
                        "answered {status}, expected {}; it said {}",
                        h.status,
                        got()
                    ));
                }
                if let Some(want) = &h.expect {
                    if !body.contains(want.as_str()) {
                        return Err(format!(
                            "the answer does not contain {:?}; it said {}",
                            crate::text::escape(want),
                            got()
                        ));
                    }
                }
                Ok(format!("answered {status}"))
            }
            Check::Tcp(guest) => {
                let port = host_port(*guest).ok_or("no forward")?;
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|_| "refused".to_string())?;
                // QEMU accepts on the guest's behalf; a guest with nothing
                // listening closes the connection at once.
                let mut b = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Err("closed at once (nothing listens)".into()),
                    _ => Ok("accepted".into()),
                }
            }
            Check::Command(argv) => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .env("LIFEBOAT_GUEST_HOST", "127.0.0.1")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                for f in forwards {
                    cmd.env(
                        format!("LIFEBOAT_GUEST_PORT_{}", f.guest),
                        f.host.to_string(),
                    );
                }
                let child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
                let limit = remaining.max(Duration::from_secs(1));
                tokio::select! {
                    out = tokio::time::timeout(limit, child.wait_with_output()) => match out {
                        Ok(Ok(o)) if o.status.success() => Ok("exit 0".into()),
                        Ok(Ok(o)) => Err(format!(
                            "{}{}",
                            o.status,
                            tail_lines(&String::from_utf8_lossy(&o.stderr), 1)
                                .first()
                                .map(|l| format!(": {l}"))
                                .unwrap_or_default()
                        )),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("timed out".into()),
                    },
                    _ = cancel.cancelled() => Err("cancelled".into()),
                }
            }
        }
    }
}

async fn read_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 1 << 20 {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lines_are_escaped_and_bounded() {
        let serial = Mutex::new(Serial::default());
        let lines = Mutex::new(Vec::new());
        let sink = |l: &str| lines.lock().unwrap().push(l.to_string());
        feed(&serial, b"SeaBIOS\r\nboot\x1b[2J ok\nweb login: ", &sink);
        assert_eq!(*lines.lock().unwrap(), ["SeaBIOS", "boot\\x1b[2J ok"]);
        assert!(serial.lock().unwrap().text.contains("login:"));
        feed(&serial, &vec![b'x'; MAX_SERIAL + 10], &sink);
        assert!(serial.lock().unwrap().text.len() <= MAX_SERIAL);
        assert_eq!(
            failure_in("..\nNo bootable device.\n", &[]).as_deref(),
            Some("the firmware found no bootable disk (\"No bootable device\")")
        );
        assert!(failure_in("oops: fatal", &["fatal".into()]).is_some());
        assert_eq!(tail_lines("a\n\nb\r\nc\x07\n", 2), ["b", "c\\x07"]);
    }
}
