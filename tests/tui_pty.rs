//! The real binary in a pseudo-terminal: start the demo, push a backup and
//! watch the presence column change, compare two backups, restore one and
//! check its hash, quit with the terminal restored. The parsed screen is
//! polled for text with a timeout; no fixed sleeps.

mod common;

use std::time::Duration;

use common::pty::{open, open_sized};
use common::BIN;
use portable_pty::CommandBuilder;

/// `lifeboat demo --keep DIR/world` in a terminal's environment, its home
/// and data under `dir`.
fn demo_command(dir: &std::path::Path) -> (std::path::PathBuf, CommandBuilder) {
    let world = dir.join("world");
    let mut cmd = CommandBuilder::new(BIN);
    cmd.args(["demo", "--keep", world.to_str().unwrap()]);
    cmd.cwd(dir);
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", dir);
    cmd.env("XDG_DATA_HOME", dir.join("data"));
    (world, cmd)
}

fn count(s: &str, pat: &str) -> usize {
    s.matches(pat).count()
}

#[test]
fn demo_push_compare_restore_quit() {
    let dir = tempfile::tempdir().unwrap();
    let (world, mut cmd) = demo_command(dir.path());
    // A key-map override: push is rebound to P.
    let keys_dir = dir.path().join("cfg").join("lifeboat");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(keys_dir.join("keys.toml"), "push = \"P\"\n").unwrap();
    cmd.env("XDG_CONFIG_HOME", dir.path().join("cfg"));
    cmd.env_remove("LIFEBOAT_CONFIG");
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = open(cmd);

    // The demo builds its world, starts the off-site server and opens the console.
    c.wait_for("web01", 180);
    c.wait_for("offsite up", 30);
    // Filter to web01, pick its root volume, open the timeline.
    c.keys("/web01\r");
    c.keys("jj\r");
    let s = c.wait_for("Timeline web01/root", 10);
    assert!(
        s.contains("○ missing"),
        "the newest backups are not off-site yet:\n{s}"
    );
    // Counted on a settled screen: a frame read while the terminal is
    // still being written can hold only part of the timeline.
    let mut missing_before = count(&s, "○ missing");
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = count(&c.screen(), "○ missing");
        if now == missing_before {
            break;
        }
        missing_before = now;
    }

    // Push the newest backup: plan, confirm, job runs, presence changes.
    // The key map rebinds push to P (the default p is then unbound).
    c.keys("P");
    // The confirmation shows the core's plan: what offsite lacks.
    let s = c.wait_for("chunks to send", 20);
    assert!(
        s.contains("to offsite") && s.contains("already there"),
        "{s}"
    );
    c.keys("\r");
    c.wait_for("done —", 60);
    c.wait_until("one fewer missing backup", 30, |s| {
        count(s, "○ missing") == missing_before - 1
    });

    // Compare the newest two backups.
    c.keys("cjc");
    let s = c.wait_for("Compare", 20);
    assert!(s.contains("same") && s.contains("changed"), "{s}");
    c.keys("\x1b");
    c.wait_until("compare closed", 10, |s| !s.contains(" Compare "));

    // Restore the second newest (still selected) to a new file.
    let target = dir.path().join("restored.qcow2");
    c.keys("r");
    c.wait_for("Restore web01/root", 10);
    c.answer(target.to_str().unwrap());
    // The plan: the lines `restore --dry-run` prints.
    c.wait_for("would restore web01/root", 10);
    c.keys("\r");
    c.wait_until("the restore job to finish", 60, |s| {
        // The Jobs pane is the left half of these rows; the Log pane is beside it.
        s.lines().any(|l| {
            let jobs = l.split("││").next().unwrap_or("");
            // 1 plans the push, 2 runs it, 3 compares, 4 plans the restore.
            jobs.contains("#5 ✓")
        })
    });
    assert!(target.exists(), "no restored file; screen:\n{}", c.screen());

    // Its digest equals the index id of that backup.
    let cfg = world.join("lifeboat.toml");
    let show = std::process::Command::new(BIN)
        .args([
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "show",
            "web01/root@~1",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let hash = std::process::Command::new(BIN)
        .args([
            "--json",
            "hash",
            "--chunk-size",
            "1M",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let h: serde_json::Value = serde_json::from_slice(&hash.stdout).unwrap();
    assert_eq!(h["digest"], v["manifest"]["index"]);

    // The selected backup against the live volume it came from.
    c.keys("C");
    // (The job's title names the live volume too; the dialog's line is "B live volume …".)
    let s = c.wait_for("B live volume", 60);
    assert!(s.contains("same"), "{s}");
    c.keys("\x1b");
    c.wait_until("compare closed", 10, |s| !s.contains("B live volume"));

    // The whole VM of the selected backup into a directory: its plan
    // shows the VM step (as `restore --dry-run` does), then the volumes
    // and the domain XML are written.
    let vm_dir = dir.path().join("web01-vm");
    c.keys("W");
    c.wait_for("Restore the VM web01 set of", 10);
    assert!(c.screen().contains("Tab: virsh define"), "{}", c.screen());
    c.answer(vm_dir.to_str().unwrap());
    let s = c.wait_for("would write the domain XML", 20);
    assert!(s.contains("would restore web01/root"), "{s}");
    c.keys("\r");
    let xml = vm_dir.join("web01.xml");
    c.wait_until("the VM restore to write its domain XML", 120, |s| {
        s.contains("domain XML") && s.contains("web01.xml") && xml.exists()
    });
    let text = std::fs::read_to_string(&xml).unwrap();
    assert!(
        text.contains(vm_dir.join("root").to_str().unwrap()),
        "the domain XML names the restored disks:\n{text}"
    );

    // The remote view: its copy of a backup against the local repository.
    c.keys("s");
    c.wait_for("VIEWING REMOTE offsite", 10);
    // The inventory's VMs show at once; wait for the remote's backups.
    c.wait_until("the remote's timeline", 20, |s| {
        s.contains("Timeline web01 on offsite (") && !s.contains("on offsite (0)")
    });
    c.keys("\r");
    c.keys("c");
    let s = c.wait_for("Compare offsite with local", 20);
    assert!(s.contains("held locally"), "{s}");
    // Esc and the next key must not arrive together: a terminal reads ESC
    // followed at once by a letter as Alt+letter.
    c.keys("\x1b");
    c.wait_until("compare closed", 10, |s| {
        !s.contains("Compare offsite with local")
    });
    c.keys("s");
    c.wait_until("back to local", 10, |s| !s.contains("VIEWING REMOTE"));

    // Quit: the process ends and the terminal is back to normal.
    c.keys("q");
    assert!(c.wait_exit().success());
    std::thread::sleep(Duration::from_millis(100));
    let p = c.parser.lock().unwrap();
    assert!(
        !p.screen().alternate_screen(),
        "still on the alternate screen"
    );
    assert!(!p.screen().hide_cursor(), "cursor left hidden");
}

/// The disaster case: a fresh machine with no local repository. The admin
/// opens the console, switches to the off-site remote, and restores a VM
/// the local repository never held.
#[test]
fn fresh_machine_browses_the_remote_and_restores_from_it() {
    let w = common::World::new();
    w.init("64K");
    let img = w.path("vm.raw");
    common::write_at(&img, 0, &common::noise(3 << 20, 4));
    w.ok(&[
        "backup",
        "ghost01",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let (srv, tokens, token) = common::remote::server_dir(w.dir.path(), "admin", "append");
    let server = common::remote::Server::start(&srv, &tokens, "127.0.0.1:0");
    let out = w
        .cmd()
        .arg("-r")
        .arg(w.repo())
        .env("LIFEBOAT_TOKEN", &token)
        .args(["push", &server.url, "--init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fresh machine: a config naming the remote, no repository yet.
    let fresh = w.path("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let token_file = fresh.join("offsite.token");
    std::fs::write(&token_file, &token).unwrap();
    let cfg = fresh.join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "repository = \"repo\"\n[remote.offsite]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            server.url,
            token_file.display()
        ),
    )
    .unwrap();

    // The console on the fresh machine, with `args` before its own.
    let console = |args: &[&str]| {
        let mut cmd = CommandBuilder::new(BIN);
        cmd.args(args);
        cmd.args(["--config", cfg.to_str().unwrap()]);
        cmd.cwd(&fresh);
        cmd.env("TERM", "xterm-256color");
        cmd.env("HOME", &fresh);
        cmd.env("XDG_DATA_HOME", fresh.join("data"));
        open(cmd)
    };
    let mut c = console(&[]);
    c.wait_for("offsite up", 30);
    c.keys("s");
    c.wait_for("VIEWING REMOTE offsite", 10);
    c.wait_for("ghost01", 20);
    c.keys("\r");
    c.wait_for("Timeline ghost01 on offsite", 10);
    let target = fresh.join("ghost01-root.raw");
    c.keys("r");
    c.wait_for("from offsite", 10);
    c.answer(target.to_str().unwrap());
    c.wait_for("would fetch from offsite", 10);
    c.wait_for("would restore ghost01/root", 10);
    c.keys("\r");
    c.wait_until("the restore job to finish", 60, |s| {
        s.lines().any(|l| {
            let jobs = l.split("││").next().unwrap_or("");
            // 1 plans the restore (fetch included), 2 runs it.
            jobs.contains("#2 ✓")
        })
    });
    common::assert_same_file(&target, &img);
    c.keys("q");
    c.wait_exit();

    // The session survives quitting: the job history in the repository
    // the restore created, the session's log in the data directory.
    let jobs = std::fs::read_to_string(fresh.join("repo/state/jobs.jsonl")).unwrap();
    assert!(jobs.contains("ghost01"), "{jobs}");
    let log = std::fs::read_to_string(fresh.join("data/lifeboat/lifeboat.log")).unwrap();
    assert!(
        log.contains("ghost01"),
        "the session's log is empty:\n{log}"
    );

    // Reopened under a global limit: the earlier session's jobs are there,
    // and the limit is what the console's transfers use (and say).
    let mut c = console(&["--limit-download", "1M"]);
    c.wait_for("offsite up", 30);
    c.wait_until("the earlier session's jobs", 10, |s| {
        s.lines().any(|l| l.contains("· ✓"))
    });
    c.keys("s");
    c.wait_for("VIEWING REMOTE offsite", 10);
    c.wait_for("ghost01", 20);
    c.keys("\r");
    c.wait_for("Timeline ghost01 on offsite", 10);
    c.keys("r");
    c.wait_for("from offsite", 10);
    c.answer(fresh.join("again.raw").to_str().unwrap());
    // The plan's title says the limit its transfer runs under.
    c.wait_for("limit ↓1.0 MiB/s", 20);
    c.keys("\x1b");
    c.wait_until("the plan dropped", 10, |s| !s.contains("limit ↓1.0 MiB/s"));
    c.keys("q");
    c.wait_exit();
    drop(server);
}

/// At 80x24 over a plain terminal: chords are not their bare keys, the
/// restore prompt edits like a shell line, the console follows resizes,
/// says when the window is too small, and leaves a clean terminal.
#[test]
fn chords_prompt_editing_resize_and_a_clean_exit() {
    let w = common::World::new();
    w.init("64K");
    w.backup_noise("web01", "root.raw", 1 << 20, 9);
    // A remote that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let cfg = w.path("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!("[remote.offsite]\nurl = \"http://{addr}/\"\ntoken_env = \"NONE\"\n"),
    )
    .unwrap();
    let mut cmd = CommandBuilder::new(BIN);
    cmd.env("NONE", "x");
    cmd.args(["--config", cfg.to_str().unwrap()]);
    cmd.args(["-r", w.repo().to_str().unwrap()]);
    cmd.cwd(w.dir.path());
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", w.dir.path());
    cmd.env("XDG_CONFIG_HOME", w.path("cfg"));
    cmd.env("XDG_DATA_HOME", w.path("data"));
    cmd.env_remove("LIFEBOAT_CONFIG");
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = open_sized(cmd, 24, 80, true);
    c.wait_for("web01", 30);
    // The silent remote is declared unreachable after its 3 s health
    // check (a listing may take longer; a dead remote should not), with
    // the reason in the status line.
    let s = c.wait_for("offsite ✗", 8);
    assert!(s.contains("no answer within 3 s"), "{s}");
    c.keys("\r");
    c.wait_for("Timeline web01", 10);
    // Ctrl-V, Ctrl-B and Alt-P are not v, b and p. If one opened a
    // dialog, that dialog would swallow the ? below.
    c.keys("\x16");
    c.keys("\x02");
    c.keys("\x1bp");
    c.keys("?");
    let s = c.wait_for("Keys", 10);
    assert!(!s.contains("verify") || !s.contains("Enter/y run"), "{s}");
    c.keys("\x1b");
    c.wait_until("help closed", 10, |s| !s.contains("Shift-Tab"));

    // The restore prompt: Ctrl-U clears, Home goes to the start.
    c.keys("r");
    c.wait_for("> ./web01-root.raw", 10);
    c.keys("\x15");
    c.wait_until("the prompt cleared", 10, |s| {
        s.contains("│> ") && !s.contains("web01-root.raw")
    });
    c.keys("tmp/x.raw");
    c.keys("\x1b[H");
    c.keys("/");
    c.wait_for("> /tmp/x.raw", 10);
    c.keys("\x17");
    c.wait_until("Ctrl-W deleted a word", 10, |s| !s.contains("> /tmp/x.raw"));
    c.keys("\x1b");
    c.wait_until("prompt closed", 10, |s| !s.contains("Restore web01/root"));

    // Grow: the wide layout (Log beside Jobs, long header) appears.
    c.resize(40, 140);
    c.wait_for(" Log ", 10);
    // Too small: said, not cut.
    c.resize(12, 40);
    c.wait_for("needs at least", 10);
    c.resize(30, 110);
    c.wait_for("Timeline web01", 10);

    c.keys("q");
    assert!(c.wait_exit().success());
    std::thread::sleep(Duration::from_millis(100));
    let p = c.parser.lock().unwrap();
    assert!(!p.screen().hide_cursor(), "cursor left hidden");
    let left = p.screen().contents();
    assert!(
        !left.contains('│') && !left.contains('┌') && !left.contains("lifeboat "),
        "the console left borders on the terminal:\n{left}"
    );
}

/// A restore drill from the console: D on a VM, the source chosen, the
/// phases and the guest's serial console live in the Jobs pane, the
/// result in the job's log and on the VM's row.
#[test]
fn console_drill_shows_phases_serial_console_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut cmd) = demo_command(dir.path());
    cmd.env("XDG_CONFIG_HOME", dir.path().join("cfg"));
    cmd.env("TMPDIR", dir.path());
    cmd.env_remove("LIFEBOAT_CONFIG");
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = open_sized(cmd, 40, 120, false);
    c.wait_for("web01", 180);
    c.wait_for("offsite up", 30);
    c.keys("/web01\r");
    c.keys("D");
    let s = c.wait_for("Drill from which repository?", 10);
    assert!(s.contains("> offsite  (default)"), "{s}");
    c.keys("\r");
    // The panel appears while it runs, with the phases and the console.
    c.wait_for("serial console: drill web01 from offsite", 60);
    let s = c.wait_for("lifeboat-guest web01: up", 180);
    assert!(s.contains("✓ fetch") && s.contains("✓ restore"), "{s}");
    c.wait_until("the drill to pass", 180, |s| {
        s.contains("drill web01 from offsite: PASS")
    });
    // The tree shows the VM's last drill.
    c.wait_until("the drill mark in the tree", 30, |s| {
        s.lines().any(|l| l.contains("web01") && l.contains("✓"))
    });
    // The job's log holds the whole report.
    c.keys("\t\t");
    c.wait_until("the Jobs pane focused", 10, |s| s.contains("┌ Jobs"));
    c.keys("G\r");
    c.wait_for("RTO", 10);
    // The checks come after the RTO line; how many lines the report
    // wraps to depends on its figures, so scroll down to them.
    c.keys("jjjjj");
    c.wait_for("check http :8080/: ok", 10);
    c.keys("\x1b");
    c.wait_until("log closed", 10, |s| !s.contains("check http :8080/: ok"));
    c.keys("q");
    assert!(c.wait_exit().success());
    // No scratch files and no QEMU left.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("lifeboat-drill-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The recovery plans (`S`): the demo's shop with its VMs, addresses and
/// RPO; `D` drills it as a job with a panel per VM; the plan's last drill
/// is shown afterwards.
#[test]
fn console_drills_a_recovery_plan_with_a_panel_per_vm() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut cmd) = demo_command(dir.path());
    cmd.env("XDG_CONFIG_HOME", dir.path().join("cfg"));
    cmd.env("TMPDIR", dir.path());
    cmd.env_remove("LIFEBOAT_CONFIG");
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = open_sized(cmd, 44, 120, false);
    c.wait_for("web01", 180);
    c.wait_for("offsite up", 30);
    c.keys("S");
    let s = c.wait_for("Recovery plans", 10);
    assert!(s.contains("> shop  network shop-net  from offsite"), "{s}");
    assert!(s.contains("10.10.0.2") && s.contains("10.10.0.3"), "{s}");
    assert!(
        s.contains("service RPO") && s.contains("never drilled"),
        "{s}"
    );
    c.keys("D");
    // A panel per VM while it runs.
    c.wait_until("a panel for each VM", 120, |s| {
        s.contains("── db01 · ") && s.contains("── web01 · ")
    });
    c.wait_until("the plan drill to pass", 300, |s| {
        s.contains("plan drill shop from offsite: PASS")
    });
    c.keys("S");
    c.wait_until("the last drill in the dialog", 30, |s| {
        s.contains("Recovery plans") && s.contains("last drill") && s.contains("PASS (service RTO")
    });
    c.keys("\x1b");
    c.wait_until("the dialog closed", 10, |s| !s.contains("Recovery plans"));
    c.keys("q");
    assert!(c.wait_exit().success());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("lifeboat-drill-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The file browser on the demo's ext4 data disk (`f`: open, search,
/// extract) and an instant restore of the VM as a job (`I`).
#[test]
fn console_browses_files_extracts_one_and_restores_a_vm_instantly() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut cmd) = demo_command(dir.path());
    cmd.env("XDG_CONFIG_HOME", dir.path().join("cfg"));
    cmd.env_remove("LIFEBOAT_CONFIG");
    cmd.env_remove("LIFEBOAT_REPO");
    let mut c = open_sized(cmd, 40, 120, false);
    c.wait_for("web01", 180);
    c.wait_for("offsite up", 30);
    c.keys("/web01\r");
    c.keys("j\r");
    c.wait_for("Timeline web01/data", 10);
    c.keys("f");
    let s = c.wait_for("Files of web01/data", 10);
    assert!(s.contains("filesystems"), "{s}");
    c.wait_until("the filesystems listed", 60, |s| s.contains("ext2/3/4"));
    c.keys("\r");
    c.wait_until("the root directory", 60, |s| {
        s.contains("srv/") && s.contains("lost+found/")
    });
    // etc/ home/ lost+found/ srv/ var/: down to srv/, then www/.
    c.keys("jjj\r");
    c.wait_until("srv", 60, |s| {
        s.contains("www/") && !s.contains("lost+found/")
    });
    c.keys("\r");
    c.wait_until("www", 60, |s| s.contains("index.html"));
    c.keys("j");
    c.keys("e");
    c.wait_for("Extract disk/srv/www/index.html", 10);
    let out = dir.path().join("got");
    c.answer(out.to_str().unwrap());
    let got = out.join("index.html");
    c.wait_until("the file extracted", 60, |_| {
        std::fs::read_to_string(&got).is_ok_and(|t| t.contains("lifeboat demo site"))
    });
    // Searching names, from the top.
    c.keys("f");
    c.wait_until("the filesystems listed", 60, |s| s.contains("ext2/3/4"));
    c.keys("/");
    c.wait_for("Search names under every filesystem", 10);
    c.keys("NGINX.conf\r");
    c.wait_for("disk/etc/nginx/nginx.conf", 60);
    c.keys("\x1b");
    c.wait_until("browser closed", 10, |s| !s.contains("Files of web01/data"));

    // Instant restore of the VM: it runs, its disks land in the directory,
    // the exports and overlays go.
    let to = dir.path().join("instant");
    c.keys("I");
    c.wait_for("Start the VM web01 set of", 10);
    c.answer(to.to_str().unwrap());
    let pid = to.join("web01.pid");
    c.wait_until("the VM on its local disks", 240, |_| {
        let names: Vec<String> = std::fs::read_dir(&to)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.iter().any(|n| n == "root.raw")
            && names.iter().any(|n| n == "data.raw")
            && !names.iter().any(|n| n.starts_with(".lifeboat-instant-"))
    });
    let vm: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(unsafe { libc::kill(vm, 0) }, 0, "the VM runs");
    // The job says where the VM runs, and ends.
    c.wait_until("the job's result", 60, |s| s.contains("VM web01 runs on"));
    unsafe { libc::kill(vm, libc::SIGKILL) };
    c.keys("q");
    assert!(c.wait_exit().success());
}

/// An encrypted repository opened without a key: the console asks for it
/// in a masked field, says when it is wrong, unlocks with the right one
/// and restores a backup.
#[test]
fn an_encrypted_repository_unlocks_in_the_console_and_restores() {
    let w = common::World::new();
    let pass = w.path("pass");
    common::secret_file(&pass, "console passphrase 1\n");
    let with_pass = |args: &[&str]| {
        let out = w
            .cmd()
            .arg("-r")
            .arg(w.repo())
            .env("LIFEBOAT_PASSPHRASE_FILE", &pass)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let recovery = w.path("recovery.txt");
    with_pass(&[
        "init",
        "--chunk-size",
        "64K",
        "--encrypt",
        "--recovery-key-out",
        recovery.to_str().unwrap(),
    ]);
    let img = w.path("vault.raw");
    common::write_at(&img, 0, &common::noise(2 << 20, 12));
    with_pass(&[
        "backup",
        "vault",
        "--format",
        "raw",
        "--volume",
        &format!("root={}", img.display()),
    ]);
    let mut cmd = CommandBuilder::new(BIN);
    cmd.args(["-r", w.repo().to_str().unwrap()]);
    cmd.cwd(w.dir.path());
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", w.dir.path());
    cmd.env("XDG_CONFIG_HOME", w.path("cfg"));
    cmd.env("XDG_DATA_HOME", w.path("data"));
    for v in [
        "LIFEBOAT_CONFIG",
        "LIFEBOAT_REPO",
        "LIFEBOAT_PASSPHRASE_FILE",
        "LIFEBOAT_KEY_FILE",
    ] {
        cmd.env_remove(v);
    }
    let mut c = open(cmd);
    c.wait_for("Unlock the repository", 30);
    c.keys("not the passphrase");
    let s = c.wait_for("••••••••••••••••••", 10);
    assert!(!s.contains("not the passphrase"), "shown in clear:\n{s}");
    c.keys("\r");
    c.wait_for("opens none", 30);
    c.keys("console passphrase 1\r");
    c.wait_for("vault", 30);
    c.keys("j\r");
    c.wait_for("Timeline vault/root", 10);
    let target = w.path("restored.raw");
    c.keys("r");
    c.wait_for("Restore vault/root", 10);
    c.keys(&"\x7f".repeat(120));
    c.keys(target.to_str().unwrap());
    c.keys("\r");
    c.wait_for("would restore vault/root", 20);
    c.keys("\r");
    c.wait_until("the restored file", 60, |_| target.exists());
    common::assert_same_file(&target, &img);
    c.keys("q");
    c.wait_exit();
}
