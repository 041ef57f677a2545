//! A QMP (QEMU Machine Protocol) client over the VM's monitor socket:
//! JSON commands and replies, one per line, events skipped. QEMU's monitor
//! is trusted to the extent that it owns the disks, but its replies are
//! still bounded in size and parsed, never executed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// One reply line: generous for our queries, small enough to bound memory.
const MAX_LINE: u64 = 8 << 20;

/// Why a VM counts as not running.
#[derive(Debug, Clone, Copy)]
pub struct Absent(pub &'static str);

pub struct Qmp {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

/// QEMU went away: what that means to the admin.
const GONE: &str = "QEMU closed the monitor connection (the VM exited?)";

fn io_err(path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted => err(path, GONE),
        WouldBlock | TimedOut => err(path, "QEMU did not answer in time"),
        _ => err(path, e),
    }
}

pub fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Qmp {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode. None when no
    /// QEMU listens there (no socket, or a refused connection): the VM is
    /// not running, and the caller says why in `Absent`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<std::result::Result<Qmp, Absent>> {
        let stream =
            match UnixStream::connect(path) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Err(Absent("its monitor socket does not exist")))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Ok(Err(Absent("nothing listens on its monitor socket")))
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(err(
                    path,
                    "permission denied: run lifeboat as a user that may open the monitor socket",
                )),
                Err(e) => return Err(err(path, e)),
            };
        let (writer, reader) = super::wire::split(stream, timeout).map_err(|e| err(path, e))?;
        let mut q = Qmp {
            path: path.to_path_buf(),
            writer,
            reader,
            next_id: 0,
        };
        let greeting = q.line()?;
        if greeting.get("QMP").is_none() {
            return Err(err(path, "not a QMP monitor (no greeting)"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(Ok(q))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_timeout(&self, t: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(t));
    }

    fn line(&mut self) -> Result<Value> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_err(&self.path, e))?;
        if n == 0 {
            return Err(err(&self.path, GONE));
        }
        if buf.last() != Some(&b'\n') {
            return Err(err(&self.path, "oversized or truncated reply"));
        }
        serde_json::from_slice(&buf).map_err(|e| err(&self.path, format!("unreadable reply: {e}")))
    }

    fn send(&mut self, cmd: &str, args: Value, fd: Option<RawFd>) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::to_vec(&json!({"execute": cmd, "arguments": args, "id": id}))
            .map_err(|e| err(&self.path, e))?;
        msg.push(b'\n');
        match fd {
            Some(fd) => send_with_fd(&self.writer, &msg, fd),
            None => self.writer.write_all(&msg),
        }
        .map_err(|e| io_err(&self.path, e))?;
        loop {
            let v = self.line()?;
            if v.get("event").is_some() {
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            return super::wire::reply(cmd, &v).map_err(|e| err(&self.path, e));
        }
    }

    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        self.send(cmd, args, None)
    }

    /// Runs a command that takes a file descriptor (`getfd`, `add-fd`):
    /// QEMU gets its own copy of `fd` with the command's bytes.
    pub fn execute_with_fd(&mut self, cmd: &str, args: Value, fd: RawFd) -> Result<Value> {
        self.send(cmd, args, Some(fd))
    }
}

/// Writes `data` with `fd` attached as SCM_RIGHTS ancillary data.
fn send_with_fd(sock: &UnixStream, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    let fd_len = std::mem::size_of::<RawFd>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive
    // the sendmsg call, and the cmsg header is written inside cbuf, which
    // CMSG_SPACE sized for one descriptor.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(std::io::Error::other("no room for the descriptor"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        std::ptr::copy_nonoverlapping(
            &fd as *const RawFd as *const u8,
            libc::CMSG_DATA(cmsg),
            fd_len as usize,
        );
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut rest = &data[n as usize..];
    let mut w = sock;
    while !rest.is_empty() {
        let k = w.write(rest)?;
        rest = &rest[k..];
    }
    Ok(())
}
