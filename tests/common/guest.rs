//! The running-VM tests' guest (tests/support/live-guest.sh): its kernel
//! and initramfs, and the check of the record pattern it writes.
//!
//! The pattern: record `seq` goes to slot `seq % 256` of /dev/vda, then of
//! /dev/vdb, each a 4 KiB direct write of 128 copies of the line
//! `LBREC <seq> <slot>`. A disk captured at one instant therefore holds, in
//! every slot, the newest record written to it up to one highest `seq`
//! (a torn record has mixed lines; a read spread over time shows an older
//! record after a newer one), and vdb is at most one record behind vda.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lifeboat_core::live::qmp::Qmp;

pub const SLOTS: usize = 256;
pub const RECORD: usize = 4096;

pub fn kit() -> PathBuf {
    let kit = std::env::var_os("LIFEBOAT_GUEST_KIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/lifeboat/guest-kit")
        });
    assert!(
        kit.join("vmlinuz").exists(),
        "no guest kernel in {}: run scripts/test.sh (it fetches the kit)",
        kit.display()
    );
    kit
}

/// The demo's bootable guest disk for VM `name` (assets/demo-guest.sh:
/// prints `lifeboat-guest NAME: up` and serves HTTP on 8080), at `out`.
pub fn demo_disk(out: &Path, name: &str) {
    demo_disk_as(out, name, &[]);
}

/// `demo_disk` with the script's role, address and peer (`["plain",
/// "dhcp", "-"]`).
pub fn demo_disk_as(out: &Path, name: &str, role: &[&str]) {
    let r = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-guest.sh"))
        .arg("disk")
        .arg(kit())
        .arg(out)
        .arg(name)
        .args(role)
        .output()
        .expect("demo-guest.sh");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// The guest's initramfs, built once per run.
pub fn initrd() -> &'static Path {
    static INITRD: OnceLock<PathBuf> = OnceLock::new();
    INITRD.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("live-guest");
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join("initrd.gz");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/live-guest.sh");
        for args in [
            vec!["kit".into(), kit()],
            vec!["initrd".into(), kit(), out.clone()],
        ] {
            let r = Command::new("sh")
                .arg(&script)
                .args(&args)
                .output()
                .expect("run live-guest.sh");
            assert!(
                r.status.success(),
                "live-guest.sh {args:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
        out
    })
}

/// Seqs per slot of one restored disk, each record checked whole.
pub fn records(image: &Path) -> Result<Vec<Option<u64>>, String> {
    use std::io::Read;
    let mut buf = vec![0u8; SLOTS * RECORD];
    std::fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| e.to_string())?;
    parse_records(&buf)
}

pub fn parse_records(buf: &[u8]) -> Result<Vec<Option<u64>>, String> {
    let mut out = Vec::new();
    for (slot, rec) in buf.chunks(RECORD).take(SLOTS).enumerate() {
        if rec.iter().all(|&b| b == 0) {
            out.push(None);
            continue;
        }
        let first = &rec[..32];
        if rec.chunks(32).any(|l| l != first) {
            return Err(format!("slot {slot} holds a torn record"));
        }
        let line = String::from_utf8_lossy(first);
        let f: Vec<&str> = line.trim_end_matches(['.', '\n']).split(' ').collect();
        match f.as_slice() {
            ["LBREC", s, i] if i.parse::<usize>() == Ok(slot) => out.push(Some(
                s.parse().map_err(|_| format!("slot {slot}: bad seq"))?,
            )),
            _ => return Err(format!("slot {slot} holds a foreign record {line:?}")),
        }
    }
    Ok(out)
}

/// The highest seq, if every slot holds exactly what it held at the
/// instant that seq was written.
pub fn one_instant(seqs: &[Option<u64>]) -> Result<Option<u64>, String> {
    let Some(top) = seqs.iter().flatten().max().copied() else {
        return Ok(None);
    };
    for (slot, got) in seqs.iter().enumerate() {
        let slot = slot as u64;
        let want = (top >= slot).then(|| top - (top - slot) % SLOTS as u64);
        if *got != want {
            return Err(format!(
                "slot {slot} holds seq {got:?} but a disk at the instant of seq {top} holds {want:?}: a read spread over time"
            ));
        }
    }
    Ok(Some(top))
}

/// The guest running under qemu-system-x86_64 (TCG), its serial console
/// on our stdin/stdout.
pub struct Guest {
    pub dir: PathBuf,
    pub child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Guest {
    /// Boots the guest on `disks` (QEMU's arguments for vda and vdb, and
    /// for lifeboat's monitor), with the test's own QMP monitor
    /// (`test.sock`) and a guest-agent channel (`qga.sock`) in `dir`;
    /// qemu-ga runs in the guest only when `agent`.
    pub fn boot(dir: &Path, agent: bool, disks: &[String]) -> Guest {
        std::fs::create_dir_all(dir).expect("dir");
        // Not backed up: an ext2 filesystem the guest mounts for its agent
        // to freeze.
        let fs = std::fs::File::create(dir.join("fs.raw")).expect("fs");
        fs.set_len(16 << 20).expect("size");
        let append = format!(
            "console=ttyS0 quiet panic=-1{}",
            if agent { " lifeboat.agent=1" } else { "" }
        );
        let mut child = Command::new("qemu-system-x86_64")
            .args(disks)
            .args(["-m", "256", "-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(kit().join("vmlinuz"))
            .arg("-initrd")
            .arg(initrd())
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,id=vdc",
                dir.join("fs.raw").display()
            ))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("test.sock").display()
            ))
            .args(["-device", "virtio-serial", "-chardev"])
            .arg(format!(
                "socket,id=qga,path={},server=on,wait=off",
                dir.join("qga.sock").display()
            ))
            .args([
                "-device",
                "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/test.sh installs qemu-system-x86)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(l);
            }
        });
        let g = Guest {
            dir: dir.to_path_buf(),
            child,
            stdin,
            lines,
        };
        g.wait_for("live-guest: up", 180);
        g.wait_for("live-guest: /data mounted", 10);
        g.wait_for("live-guest: seq 64", 120);
        g
    }

    pub fn count(&self, pat: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    pub fn wait_for(&self, pat: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.count(pat) == 0 {
            if Instant::now() > deadline {
                let tail = self.lines.lock().expect("lines").join("\n");
                panic!("the guest never printed {pat:?}; its console:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a console command and waits for its answer printed anew: an
    /// answer the guest printed for an earlier command does not count.
    pub fn command(&mut self, cmd: &str, answer: &str, secs: u64) {
        let before = self.count(answer);
        self.send(cmd);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.count(answer) <= before {
            if Instant::now() > deadline {
                let tail = self.lines.lock().expect("lines").join("\n");
                panic!("the guest never answered {cmd:?} with {answer:?}; its console:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("guest console");
        self.stdin.flush().expect("flush");
    }

    /// The test's own monitor.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.dir.join("test.sock"), Duration::from_secs(60))
            .expect("qmp")
            .expect("QEMU runs")
    }

    pub fn writes(&self) -> usize {
        self.count("live-guest: seq")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
