//! The QEMU guest agent (qemu-ga) through the host end of its
//! virtio-serial channel: freeze and thaw the guest's filesystems.
//!
//! The channel is a byte stream that may hold a half-read reply from an
//! earlier client, so every session starts with `guest-sync-delimited`:
//! the agent answers after a 0xFF byte, and everything before it is
//! discarded.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

const MAX_REPLY: u64 = 1 << 20;

pub struct Agent {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Agent {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Agent {
    /// Connects and synchronises within `timeout`; an agent that does not
    /// answer (not installed in the guest, or hung) fails here.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Agent> {
        let stream = UnixStream::connect(path).map_err(|e| {
            err(
                path,
                match e.kind() {
                    std::io::ErrorKind::NotFound => "no agent channel socket there".to_string(),
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    _ => e.to_string(),
                },
            )
        })?;
        let (writer, reader) = super::wire::split(stream, timeout).map_err(|e| err(path, e))?;
        let mut a = Agent {
            path: path.to_path_buf(),
            writer,
            reader,
        };
        a.sync()?;
        Ok(a)
    }

    pub fn set_timeout(&self, t: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(t));
    }

    fn write(&mut self, v: &Value, flush_first: bool) -> Result<()> {
        let mut msg = Vec::new();
        if flush_first {
            // Resets the agent's JSON parser after any garbage.
            msg.push(0xff);
        }
        msg.extend_from_slice(v.to_string().as_bytes());
        msg.push(b'\n');
        self.writer.write_all(&msg).map_err(|e| err(&self.path, e))
    }

    fn timeout_or(&self, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => err(
                &self.path,
                "the guest agent did not answer in time (not running in the guest, or hung)",
            ),
            _ => err(&self.path, e),
        }
    }

    fn sync(&mut self) -> Result<()> {
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        self.write(
            &json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}),
            true,
        )?;
        let mut junk = Vec::new();
        (&mut self.reader)
            .take(MAX_REPLY)
            .read_until(0xff, &mut junk)
            .map_err(|e| self.timeout_or(e))?;
        if junk.last() != Some(&0xff) {
            return Err(err(&self.path, "the agent channel closed"));
        }
        loop {
            let v = self.line()?;
            if v.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
                return Ok(());
            }
        }
    }

    fn line(&mut self) -> Result<Value> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.timeout_or(e))?;
        if n == 0 {
            return Err(err(&self.path, "the agent channel closed"));
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
        serde_json::from_str(text).map_err(|e| err(&self.path, format!("unreadable reply: {e}")))
    }

    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        self.write(&json!({"execute": cmd, "arguments": args}), false)?;
        let v = self.line()?;
        super::wire::reply(cmd, &v).map_err(|e| err(&self.path, e))
    }

    /// "thawed" or "frozen".
    pub fn freeze_status(&mut self) -> Result<String> {
        Ok(self
            .execute("guest-fsfreeze-status", json!({}))?
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }

    /// Freezes every guest filesystem the agent can; returns how many.
    pub fn freeze(&mut self) -> Result<u64> {
        Ok(self
            .execute("guest-fsfreeze-freeze", json!({}))?
            .as_u64()
            .unwrap_or(0))
    }

    pub fn thaw(&mut self) -> Result<u64> {
        Ok(self
            .execute("guest-fsfreeze-thaw", json!({}))?
            .as_u64()
            .unwrap_or(0))
    }
}

/// What freezing the guest around an action came to.
#[derive(Debug, Default)]
pub struct Freeze {
    /// Filesystems frozen and for how long, when the freeze held and the
    /// thaw answered.
    pub held: Option<(u64, u128)>,
    /// Why not, or what went wrong, for the manifest's note.
    pub notes: Vec<String>,
    /// A freeze a killed run left, thawed first.
    pub repaired: Option<String>,
}

impl Freeze {
    /// The action ran with every filesystem frozen: application-consistent.
    pub fn application(&self) -> bool {
        self.held.is_some()
    }

    pub fn note(&self) -> Option<String> {
        let mut notes = Vec::new();
        if let Some((n, ms)) = self.held {
            notes.push(format!("{n} guest filesystems frozen for {ms} ms"));
        }
        notes.extend(self.notes.iter().cloned());
        Some(notes.join("; ")).filter(|n| !n.is_empty())
    }
}

/// Runs `action` with the guest's filesystems frozen when its agent
/// answers (`agent`: the channel's socket), thawing always — even when the
/// freeze seemed to fail, for the agent may have frozen some filesystems
/// before it gave up. Without an agent the action runs anyway; it is told
/// whether the freeze held.
pub fn frozen_around<T>(
    agent: Option<&Path>,
    timeout: Duration,
    action: impl FnOnce(bool) -> Result<T>,
) -> (Result<T>, Freeze) {
    let mut out = Freeze::default();
    let mut agent = match agent {
        None => {
            out.notes
                .push("no guest agent configured (guest_agent)".to_string());
            None
        }
        Some(path) => match Agent::connect(path, timeout) {
            Ok(mut a) => {
                if a.freeze_status().is_ok_and(|st| st == "frozen") {
                    // A killed run froze it: thaw before anything else.
                    let _ = a.thaw();
                    out.repaired =
                        Some("the guest was left frozen by an earlier run: thawed".into());
                }
                Some(a)
            }
            Err(e) => {
                out.notes.push(e.to_string());
                None
            }
        },
    };
    let mut frozen_at = None;
    if let Some(a) = agent.as_mut() {
        let t = std::time::Instant::now();
        match a.freeze() {
            Ok(n) => frozen_at = Some((t, n)),
            Err(e) => out.notes.push(format!("freeze failed: {e}")),
        }
    }
    let result = action(frozen_at.is_some());
    if let Some(a) = agent.as_mut() {
        a.set_timeout(Duration::from_secs(30));
        match (frozen_at, a.thaw()) {
            (Some((t, n)), Ok(_)) if result.is_ok() => {
                out.held = Some((n, t.elapsed().as_millis()));
            }
            (_, Err(e)) => out.notes.push(format!("thaw failed: {e}")),
            _ => {}
        }
    }
    (result, out)
}
