//! The real binary in a pseudo-terminal, its screen parsed by vt100.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, CommandBuilder, PtySize};

pub struct Console {
    pub parser: Arc<Mutex<vt100::Parser>>,
    pub writer: Box<dyn Write + Send>,
    pub child: Box<dyn portable_pty::Child + Send + Sync>,
    pub master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Console {
    pub fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    pub fn wait_for(&self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_until(&self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the console process to end; returns its status.
    pub fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "console did not quit; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Answers a prompt: clears what it offers, types `text`, Enter.
    pub fn answer(&mut self, text: &str) {
        self.keys(&"\x7f".repeat(80));
        self.keys(text);
        self.keys("\r");
    }

    pub fn keys(&mut self, s: &str) {
        self.writer.write_all(s.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// Resizes the terminal (the console gets SIGWINCH) and the parser.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.parser
            .lock()
            .unwrap()
            .screen_mut()
            .set_size(rows, cols);
        self.master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
    }
}

/// Starts `cmd` in a 150x40 pseudo-terminal with a vt100 parser fed from it.
/// The console (`lifeboat --config DIR/cfg.toml tui`) run in `dir` as
/// its home, isolated from the user's repository, libvirt and Ceph.
pub fn console_in(dir: &std::path::Path) -> Console {
    let mut cmd = CommandBuilder::new(super::BIN);
    cmd.arg("--config");
    cmd.arg(dir.join("cfg.toml"));
    cmd.arg("tui");
    cmd.cwd(dir);
    cmd.env("TERM", "xterm-256color");
    cmd.env("HOME", dir);
    cmd.env("LIBVIRT_DEFAULT_URI", super::NO_LIBVIRT);
    cmd.env_remove("LIFEBOAT_REPO");
    cmd.env_remove("CEPH_CONF");
    open(cmd)
}

pub fn open(cmd: CommandBuilder) -> Console {
    open_sized(cmd, 40, 150, false)
}

/// `no_alt_screen`: the parser ignores the switch to the alternate screen,
/// like a terminal (or multiplexer, or recorder) that has none: whatever
/// the console leaves on screen stays above the shell prompt.
pub fn open_sized(cmd: CommandBuilder, rows: u16, cols: u16, no_alt_screen: bool) -> Console {
    let pair = native_pty_system()
        .openpty(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
    let mut reader = pair.master.try_clone_reader().unwrap();
    let p = parser.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut bytes = buf[..n].to_vec();
            if no_alt_screen {
                for seq in [&b"\x1b[?1049h"[..], &b"\x1b[?1049l"[..]] {
                    while let Some(i) = bytes.windows(seq.len()).position(|w| w == seq) {
                        bytes.drain(i..i + seq.len());
                    }
                }
            }
            p.lock().unwrap().process(&bytes);
        }
    });
    Console {
        parser,
        writer: pair.master.take_writer().unwrap(),
        child,
        master: pair.master,
    }
}
