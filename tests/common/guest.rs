//! The running-VM tests' guest (tests/support/live-guest.sh): its kernel
//! and initramfs, and the check of the record pattern it writes.
//!
//! The pattern: record `seq` goes to slot `seq % 256` of /dev/vda, then of
//! /dev/vdb, each a 4 KiB direct write of 128 copies of the line
//! `LBREC <seq> <slot>`. A disk captured at one instant therefore holds, in
//! every slot, the newest record written to it up to one highest `seq`
//! (a torn record has mixed lines; a read spread over time shows an older
//! record after a newer one), and vdb is at most one record behind vda.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
