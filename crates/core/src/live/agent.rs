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
