//! The NBD protocol, server side: fixed newstyle handshake (EXPORT_NAME,
//! INFO, GO, LIST, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT with
//! `base:allocation`), then READ, BLOCK_STATUS, FLUSH, CACHE and DISC on a
//! read-only export (writes answer EPERM). Every client message is
//! bounded: option payloads, names, request lengths, the number of
//! options; a malformed one ends the session.

use std::io::{Read, Write};
use std::time::Duration;

use super::export::Export;
use crate::error::{Error, Result};
use crate::jobs::CancellationToken;

// The magic numbers and greeting flags the client speaks too.
use crate::source::nbd::{
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, NBDMAGIC, OPT_REPLY_MAGIC, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const T_HAS_FLAGS: u16 = 1;
const T_READ_ONLY: u16 = 1 << 1;
const T_SEND_FLUSH: u16 = 1 << 2;
const T_SEND_DF: u16 = 1 << 7;
const T_CAN_MULTI_CONN: u16 = 1 << 8;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_DF: u16 = 1 << 2;
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERROR: u16 = (1 << 15) + 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const EOVERFLOW: u32 = 75;

const ALLOCATION: &str = "base:allocation";
const ALLOCATION_ID: u32 = 1;
/// `base:allocation`: a hole that reads as zeros.
const STATE_HOLE_ZERO: u32 = 3;

const MAX_REQUEST: u32 = 32 << 20;
const MAX_OPTION: u32 = 64 << 10;
const MAX_OPTIONS: usize = 64;
const MAX_DESCRIPTORS: usize = 1024;
/// A block status descriptor's length is 32 bits: longer runs are split.
const MAX_RUN: u64 = 1 << 30;

/// A client connection: a unix or TCP stream.
pub(super) trait Stream: Read + Write + Send {
    fn timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()>;
    /// The same connection again, for the side that writes replies.
    fn writer(&self) -> std::io::Result<Box<dyn Stream>>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn writer(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Stream for std::net::TcpStream {
    fn timeouts(&self, read: Duration, write: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(read))?;
        self.set_write_timeout(Some(write))
    }
    fn writer(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::Nbd(format!("NBD client: {msg}"))
}

/// Reads served at once per connection: a guest's read is not queued
/// behind a copy job's (QEMU sends both on one connection), and a remote's
/// round trips overlap.
const WORKERS: usize = 8;

struct Conn<'a> {
    r: Reader<'a>,
    w: Writer,
    allocation: bool,
}

/// The side of a connection that reads requests (one thread).
struct Reader<'a> {
    s: Box<dyn Stream>,
    cancel: &'a CancellationToken,
}

/// The side that writes replies: shared by the threads serving reads,
/// one whole reply at a time.
struct Writer {
    out: std::sync::Mutex<Box<dyn Stream>>,
    structured: bool,
}

impl Reader<'_> {
    /// Fills `buf`, waiting through read timeouts until cancelled. None:
    /// the client went away.
    fn fill(&mut self, buf: &mut [u8]) -> Result<Option<()>> {
        let mut got = 0;
        while got < buf.len() {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.cancel.is_cancelled() {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(bad(e)),
            }
        }
        Ok(Some(()))
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.fill(buf)?
            .ok_or_else(|| bad("the connection closed mid-message"))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

/// A structured reply chunk's bytes, appended to `out`.
fn chunk_bytes(out: &mut Vec<u8>, flags: u16, kind: u16, handle: u64, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
}

impl Writer {
    fn send(&self, parts: &[&[u8]]) -> Result<()> {
        let mut out = self.out.lock().map_err(|_| bad("a reply writer failed"))?;
        for p in parts {
            out.write_all(p).map_err(bad)?;
        }
        Ok(())
    }

    fn option_reply(&self, opt: u32, kind: u32, data: &[u8]) -> Result<()> {
        let mut h = Vec::with_capacity(20);
        h.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        h.extend_from_slice(&opt.to_be_bytes());
        h.extend_from_slice(&kind.to_be_bytes());
        h.extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.send(&[&h, data])
    }

    fn chunk(&self, flags: u16, kind: u16, handle: u64, payload: &[&[u8]]) -> Result<()> {
        let mut out = Vec::with_capacity(20);
        chunk_bytes(&mut out, flags, kind, handle, payload);
        self.send(&[&out])
    }

    fn simple(&self, handle: u64, error: u32, data: &[u8]) -> Result<()> {
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h.extend_from_slice(&error.to_be_bytes());
        h.extend_from_slice(&handle.to_be_bytes());
        self.send(&[&h, data])
    }

    /// An error answer to a request (structured when negotiated).
    fn error(&self, handle: u64, code: u32, msg: &str) -> Result<()> {
        if !self.structured {
            return self.simple(handle, code, &[]);
        }
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        self.chunk(
            REPLY_FLAG_DONE,
            REPLY_ERROR,
            handle,
            &[&code.to_be_bytes(), &(msg.len() as u16).to_be_bytes(), msg],
        )
    }
}

/// The flags the export is offered with.
fn transmission_flags() -> u16 {
    T_HAS_FLAGS | T_READ_ONLY | T_SEND_FLUSH | T_SEND_DF | T_CAN_MULTI_CONN
}

/// One client, from the greeting to its disconnect.
pub(super) fn session(
    s: Box<dyn Stream>,
    export: &Export,
    cancel: &CancellationToken,
) -> Result<()> {
    s.timeouts(Duration::from_millis(500), Duration::from_secs(60))
        .map_err(bad)?;
    let out = s.writer().map_err(bad)?;
    let mut c = Conn {
        r: Reader { s, cancel },
        w: Writer {
            out: std::sync::Mutex::new(out),
            structured: false,
        },
        allocation: false,
    };
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    c.w.send(&[&hello])?;
    let client_flags = c.r.u32()?;
    if !handshake(&mut c, export, client_flags)? {
        return Ok(());
    }
    transmission(&mut c, export)
}

/// A name the client asked for: ours, or the default (empty).
fn known(name: &[u8], export: &Export) -> bool {
    name.is_empty() || name == export.name.as_bytes()
}

/// Option haggling; true when the client moves on to transmission.
fn handshake(c: &mut Conn<'_>, export: &Export, client_flags: u32) -> Result<bool> {
    for _ in 0..MAX_OPTIONS {
        if c.r.u64()? != IHAVEOPT {
            return Err(bad("an option without its magic"));
        }
        let opt = c.r.u32()?;
        let len = c.r.u32()?;
        if len > MAX_OPTION {
            return Err(bad(format!("an option of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        c.r.exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                if !known(&data, export) {
                    return Ok(false);
                }
                let mut r = Vec::with_capacity(10 + 124);
                r.extend_from_slice(&export.size().to_be_bytes());
                r.extend_from_slice(&transmission_flags().to_be_bytes());
                if client_flags & CLIENT_NO_ZEROES == 0 {
                    r.extend_from_slice(&[0u8; 124]);
                }
                c.w.send(&[&r])?;
                return Ok(true);
            }
            OPT_ABORT => {
                let _ = c.w.option_reply(opt, REP_ACK, &[]);
                return Ok(false);
            }
            OPT_LIST => {
                let name = export.name.as_bytes();
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name);
                c.w.option_reply(opt, REP_SERVER, &d)?;
                c.w.option_reply(opt, REP_ACK, &[])?;
            }
            OPT_STRUCTURED_REPLY => {
                c.w.structured = true;
                c.w.option_reply(opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_go(&data) else {
                    c.w.option_reply(opt, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if !known(name, export) {
                    c.w.option_reply(opt, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags().to_be_bytes());
                c.w.option_reply(opt, REP_INFO, &info)?;
                if infos.contains(&INFO_BLOCK_SIZE) {
                    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    b.extend_from_slice(&1u32.to_be_bytes());
                    b.extend_from_slice(&4096u32.to_be_bytes());
                    b.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                    c.w.option_reply(opt, REP_INFO, &b)?;
                }
                c.w.option_reply(opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(true);
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !c.w.structured && opt == OPT_SET_META_CONTEXT {
                    c.w.option_reply(opt, REP_ERR_INVALID, b"structured replies first")?;
                    continue;
                }
                let Some((name, queries)) = parse_meta(&data) else {
                    c.w.option_reply(opt, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if !known(name, export) {
                    c.w.option_reply(opt, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let wanted = queries.is_empty() && opt == OPT_LIST_META_CONTEXT
                    || queries
                        .iter()
                        .any(|q| *q == ALLOCATION.as_bytes() || *q == b"base:");
                if opt == OPT_SET_META_CONTEXT {
                    c.allocation = wanted;
                }
                if wanted {
                    let mut d = ALLOCATION_ID.to_be_bytes().to_vec();
                    d.extend_from_slice(ALLOCATION.as_bytes());
                    c.w.option_reply(opt, REP_META_CONTEXT, &d)?;
                }
                c.w.option_reply(opt, REP_ACK, &[])?;
            }
            _ => c.w.option_reply(opt, REP_ERR_UNSUP, &[])?,
        }
    }
    Err(bad(format!("more than {MAX_OPTIONS} options")))
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

/// INFO/GO: the export name and the information requests.
fn parse_go(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let n = be32(d, 0)? as usize;
    let name = d.get(4..4 + n)?;
    let k = be16(d, 4 + n)? as usize;
    let infos = (0..k)
        .map(|j| be16(d, 6 + n + 2 * j))
        .collect::<Option<Vec<u16>>>()?;
    (d.len() == 6 + n + 2 * k).then_some((name, infos))
}

/// LIST/SET_META_CONTEXT: the export name and the queries.
fn parse_meta(d: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let n = be32(d, 0)? as usize;
    let name = d.get(4..4 + n)?;
    let k = be32(d, 4 + n)? as usize;
    let mut at = 8 + n;
    let mut queries = Vec::new();
    for _ in 0..k.min(64) {
        let l = be32(d, at)? as usize;
        queries.push(d.get(at + 4..at + 4 + l)?);
        at += 4 + l;
    }
    (at == d.len()).then_some((name, queries))
}

/// A read to serve: handle, offset, length, flags.
type ReadJob = (u64, u64, u32, u16);

fn transmission(c: &mut Conn<'_>, export: &Export) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded::<ReadJob>(WORKERS);
    let (r, w, allocation) = (&mut c.r, &c.w, c.allocation);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || -> Result<()> {
                    let mut buf = Vec::new();
                    for (handle, offset, len, flags) in rx {
                        read(w, export, handle, offset, len, flags, &mut buf)?;
                    }
                    Ok(())
                })
            })
            .collect();
        drop(rx);
        let res = requests(r, w, allocation, export, &tx);
        // No more reads come: the workers finish what they hold, then end.
        drop(tx);
        let mut first_err = res.err();
        for h in workers {
            if let Ok(Err(e)) = h.join() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

/// Reads requests until the client goes; reads go to the workers, the
/// rest is answered here.
fn requests(
    r: &mut Reader<'_>,
    w: &Writer,
    allocation: bool,
    export: &Export,
    reads: &crossbeam_channel::Sender<ReadJob>,
) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut req = [0u8; 28];
        if r.fill(&mut req)?.is_none() {
            return Ok(());
        }
        let word = |a: usize| u32::from_be_bytes([req[a], req[a + 1], req[a + 2], req[a + 3]]);
        if word(0) != REQUEST_MAGIC {
            return Err(bad("a request without its magic"));
        }
        let flags = u16::from_be_bytes([req[4], req[5]]);
        let kind = u16::from_be_bytes([req[6], req[7]]);
        let handle = u64::from_be_bytes(req[8..16].try_into().unwrap_or_default());
        let offset = u64::from_be_bytes(req[16..24].try_into().unwrap_or_default());
        let len = word(24);
        let in_range = len > 0
            && offset
                .checked_add(u64::from(len))
                .is_some_and(|e| e <= export.size());
        match kind {
            CMD_DISC => return Ok(()),
            CMD_READ if len > MAX_REQUEST => {
                w.error(handle, EOVERFLOW, "a read over 32 MiB")?;
            }
            CMD_READ if !in_range => w.error(handle, EINVAL, "outside the export")?,
            CMD_READ => reads
                .send((handle, offset, len, flags))
                .map_err(|_| bad("the read workers ended"))?,
            CMD_BLOCK_STATUS if !(w.structured && allocation) => {
                w.error(handle, EINVAL, "no base:allocation context negotiated")?;
            }
            CMD_BLOCK_STATUS if !in_range => w.error(handle, EINVAL, "outside the export")?,
            CMD_BLOCK_STATUS => {
                let max = if flags & CMD_FLAG_REQ_ONE != 0 {
                    1
                } else {
                    MAX_DESCRIPTORS
                };
                let mut d = ALLOCATION_ID.to_be_bytes().to_vec();
                for (mut l, hole) in export.extents(offset, u64::from(len), max) {
                    while l > 0 {
                        let part = l.min(MAX_RUN);
                        d.extend_from_slice(&(part as u32).to_be_bytes());
                        let state = if hole { STATE_HOLE_ZERO } else { 0 };
                        d.extend_from_slice(&state.to_be_bytes());
                        l -= part;
                    }
                }
                w.chunk(REPLY_FLAG_DONE, REPLY_BLOCK_STATUS, handle, &[&d])?;
            }
            CMD_FLUSH | CMD_CACHE => {
                if w.structured {
                    w.chunk(REPLY_FLAG_DONE, REPLY_NONE, handle, &[])?;
                } else {
                    w.simple(handle, 0, &[])?;
                }
            }
            CMD_WRITE => {
                // The payload follows the request: drain it, then refuse.
                if len > MAX_REQUEST {
                    return Err(bad(format!("a write of {len} bytes")));
                }
                buf.resize(len as usize, 0);
                r.exact(&mut buf)?;
                w.error(handle, EPERM, "the export is read-only")?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => w.error(handle, EPERM, "the export is read-only")?,
            _ => w.error(handle, EINVAL, "unknown command")?,
        }
    }
}

/// A read: structured as data and hole chunks (one data chunk when the
/// client says "don't fragment"), or a simple reply; sent whole.
fn read(
    w: &Writer,
    export: &Export,
    handle: u64,
    offset: u64,
    len: u32,
    flags: u16,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.resize(len as usize, 0);
    if let Err(e) = export.read_at(offset, buf) {
        tracing::warn!("nbd {}: read at {offset}: {e}", export.name);
        return w.error(handle, EIO, &e.to_string());
    }
    if !w.structured {
        return w.simple(handle, 0, buf);
    }
    let mut out = Vec::with_capacity(buf.len() + 64);
    if flags & CMD_FLAG_DF != 0 {
        chunk_bytes(
            &mut out,
            REPLY_FLAG_DONE,
            REPLY_OFFSET_DATA,
            handle,
            &[&offset.to_be_bytes(), buf],
        );
        return w.send(&[&out]);
    }
    let mut at = 0u64;
    for (l, hole) in export.extents(offset, u64::from(len), usize::MAX) {
        let o = offset + at;
        if hole {
            chunk_bytes(
                &mut out,
                0,
                REPLY_OFFSET_HOLE,
                handle,
                &[&o.to_be_bytes(), &(l as u32).to_be_bytes()],
            );
        } else {
            chunk_bytes(
                &mut out,
                0,
                REPLY_OFFSET_DATA,
                handle,
                &[&o.to_be_bytes(), &buf[at as usize..(at + l) as usize]],
            );
        }
        at += l;
    }
    chunk_bytes(&mut out, REPLY_FLAG_DONE, REPLY_NONE, handle, &[]);
    w.send(&[&out])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_payloads_are_parsed_only_when_whole() {
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"abc");
        go.extend_from_slice(&1u16.to_be_bytes());
        go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let (name, infos) = parse_go(&go).unwrap();
        assert_eq!((name, infos), (&b"abc"[..], vec![INFO_BLOCK_SIZE]));
        assert!(parse_go(&go[..go.len() - 1]).is_none());
        assert!(parse_go(&u32::MAX.to_be_bytes()).is_none());
        let mut meta = 0u32.to_be_bytes().to_vec();
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(ALLOCATION.as_bytes());
        let (name, q) = parse_meta(&meta).unwrap();
        assert!(name.is_empty() && q == vec![ALLOCATION.as_bytes()]);
        meta.push(0);
        assert!(parse_meta(&meta).is_none());
    }
}
