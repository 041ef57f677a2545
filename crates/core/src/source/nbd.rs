//! A minimal read-only NBD client over a unix socket: fixed newstyle
//! handshake, NBD_OPT_GO with an export name, structured replies, and
//! block status for the `base:allocation` and `qemu:dirty-bitmap:NAME`
//! meta contexts. It talks to our own `qemu-nbd` and to the exports a
//! running QEMU serves for a backup; either way every reply is checked
//! (magic, handle, lengths, offsets) before its bytes are used.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::reader::Extents;
use crate::error::{Error, Result};

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_BLOCK_STATUS: u16 = 7;
const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERROR_BIT: u16 = 1 << 15;
/// `base:allocation`: the range reads as zeros.
const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME`: the range changed since the bitmap started.
const STATE_DIRTY: u32 = 1;
/// qemu-nbd refuses requests over 32 MiB.
const MAX_REQUEST: usize = 32 << 20;
/// Block status asks about at most this much at once (a 32-bit length).
const MAX_STATUS: u64 = 1 << 30;
/// No honest reply chunk carries more than a request's worth of payload.
const MAX_CHUNK_PAYLOAD: usize = MAX_REQUEST + 1024;

pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    handle: u64,
    structured: bool,
    allocation: Option<u32>,
    dirty: Option<u32>,
    /// Guest data bytes received by reads (what a backup really read).
    pub bytes_read: u64,
}

fn proto(msg: impl Into<String>) -> Error {
    Error::Nbd(format!("NBD: {}", msg.into()))
}

fn io(e: std::io::Error) -> Error {
    Error::Nbd(format!("NBD connection: {e}"))
}

fn read_u16(s: &mut impl Read) -> Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).map_err(io)?;
    Ok(u64::from_be_bytes(b))
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// One option reply: (type, data). Errors from the server become errors.
fn option_reply(s: &mut UnixStream) -> Result<(u32, Vec<u8>)> {
    if read_u64(s)? != OPT_REPLY_MAGIC {
        return Err(proto("bad option reply magic"));
    }
    let _opt = read_u32(s)?;
    let kind = read_u32(s)?;
    let len = read_u32(s)? as usize;
    if len > 1 << 16 {
        return Err(proto("oversized option reply"));
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data).map_err(io)?;
    if kind & 0x8000_0000 != 0 {
        return Err(proto(format!(
            "the server refused: {}",
            crate::text::escape(&String::from_utf8_lossy(&data))
        )));
    }
    Ok((kind, data))
}

/// What a connection asks for beyond plain reads.
#[derive(Debug, Default, Clone)]
pub struct Want<'a> {
    /// The export's name ("" for qemu-nbd's default export).
    pub export: &'a str,
    /// Ask for `base:allocation` (where the export reads as zeros).
    pub allocation: bool,
    /// Ask for `qemu:dirty-bitmap:NAME`.
    pub dirty_bitmap: Option<&'a str>,
}

impl NbdClient {
    pub fn connect(path: &Path) -> Result<NbdClient> {
        Self::connect_with(path, &Want::default())
    }

    pub fn connect_with(path: &Path, want: &Want<'_>) -> Result<NbdClient> {
        let mut s = UnixStream::connect(path).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io)?;
        if read_u64(&mut s)? != NBDMAGIC || read_u64(&mut s)? != IHAVEOPT {
            return Err(proto("server is not a newstyle NBD server"));
        }
        let flags = read_u16(&mut s)?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(proto("server lacks fixed newstyle negotiation"));
        }
        let client_flags = u32::from(flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
        s.write_all(&client_flags.to_be_bytes()).map_err(io)?;
        let name = want.export.as_bytes();
        let mut structured = false;
        let (mut allocation, mut dirty) = (None, None);
        let dirty_name = want.dirty_bitmap.map(|b| format!("qemu:dirty-bitmap:{b}"));
        if want.allocation || dirty_name.is_some() {
            s.write_all(&option(OPT_STRUCTURED_REPLY, &[]))
                .map_err(io)?;
            option_reply(&mut s)?;
            structured = true;
            let mut queries: Vec<&str> = Vec::new();
            if want.allocation {
                queries.push("base:allocation");
            }
            if let Some(d) = &dirty_name {
                queries.push(d);
            }
            let mut data = Vec::new();
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name);
            data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
            for q in &queries {
                data.extend_from_slice(&(q.len() as u32).to_be_bytes());
                data.extend_from_slice(q.as_bytes());
            }
            s.write_all(&option(OPT_SET_META_CONTEXT, &data))
                .map_err(io)?;
            loop {
                let (kind, data) = option_reply(&mut s)?;
                match kind {
                    REP_META_CONTEXT if data.len() >= 4 => {
                        let id = be32(&data, 0);
                        let ctx = &data[4..];
                        if ctx == b"base:allocation" {
                            allocation = Some(id);
                        } else if dirty_name.as_deref().map(str::as_bytes) == Some(ctx) {
                            dirty = Some(id);
                        }
                    }
                    REP_ACK => break,
                    _ => {}
                }
            }
            if let (Some(b), None) = (want.dirty_bitmap, dirty) {
                return Err(proto(format!("the export does not offer bitmap {b}")));
            }
        }
        let mut go = Vec::new();
        go.extend_from_slice(&(name.len() as u32).to_be_bytes());
        go.extend_from_slice(name);
        go.extend_from_slice(&0u16.to_be_bytes()); // no info requests
        s.write_all(&option(OPT_GO, &go)).map_err(io)?;
        let mut size = None;
        loop {
            let (kind, data) = option_reply(&mut s)?;
            match kind {
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    size = Some(be64(&data, 2));
                }
                REP_ACK => break,
                _ => {}
            }
        }
        let size = size.ok_or_else(|| proto("server did not report the export size"))?;
        Ok(NbdClient {
            stream: s,
            size,
            handle: 0,
            structured,
            allocation,
            dirty,
            bytes_read: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32) -> Result<u64> {
        self.handle += 1;
        let mut msg = [0u8; 28];
        msg[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg[6..8].copy_from_slice(&cmd.to_be_bytes());
        msg[8..16].copy_from_slice(&self.handle.to_be_bytes());
        msg[16..24].copy_from_slice(&offset.to_be_bytes());
        msg[24..28].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&msg).map_err(io)?;
        Ok(self.handle)
    }

    /// Reads one structured reply chunk header: (flags, type, length).
    /// Every chunk starts with the magic; the caller may have read the
    /// first one's already.
    fn chunk_header(&mut self, handle: u64, magic_read: &mut bool) -> Result<(u16, u16, usize)> {
        if !std::mem::replace(magic_read, false)
            && read_u32(&mut self.stream)? != STRUCTURED_REPLY_MAGIC
        {
            return Err(proto("bad structured reply magic"));
        }
        let flags = read_u16(&mut self.stream)?;
        let kind = read_u16(&mut self.stream)?;
        if read_u64(&mut self.stream)? != handle {
            return Err(proto("reply for an unknown request"));
        }
        let len = read_u32(&mut self.stream)? as usize;
        if len > MAX_CHUNK_PAYLOAD {
            return Err(proto(format!("oversized reply chunk ({len} bytes)")));
        }
        Ok((flags, kind, len))
    }

    fn payload(&mut self, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.stream.read_exact(&mut v).map_err(io)?;
        Ok(v)
    }

    fn error_chunk(&mut self, len: usize, what: &str) -> Error {
        match self.payload(len) {
            Ok(p) if p.len() >= 6 => {
                let code = be32(&p, 0);
                let mlen = usize::from(u16::from_be_bytes([p[4], p[5]]));
                let msg = p.get(6..6 + mlen).unwrap_or(&[]);
                proto(format!(
                    "{what} failed (error {code}): {}",
                    crate::text::escape(&String::from_utf8_lossy(msg))
                ))
            }
            Ok(_) => proto(format!("{what} failed (malformed error)")),
            Err(e) => e,
        }
    }

    /// Writes `data` at `offset` (on a connection made without structured
    /// replies, where every reply is a simple one).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.structured {
            return Err(proto("a write on a connection made for reading"));
        }
        if offset + data.len() as u64 > self.size {
            return Err(proto("write past the end of the export"));
        }
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_REQUEST);
            let handle = self.request(CMD_WRITE, offset + done as u64, n as u32)?;
            self.stream.write_all(&data[done..done + n]).map_err(io)?;
            self.simple_reply(handle, "write")?;
            done += n;
        }
        Ok(())
    }

    /// Asks the server to make this connection's writes durable.
    pub fn flush(&mut self) -> Result<()> {
        let handle = self.request(CMD_FLUSH, 0, 0)?;
        self.simple_reply(handle, "flush")
    }

    fn simple_reply(&mut self, handle: u64, what: &str) -> Result<()> {
        if read_u32(&mut self.stream)? != SIMPLE_REPLY_MAGIC {
            return Err(proto("bad reply magic"));
        }
        let err = read_u32(&mut self.stream)?;
        if read_u64(&mut self.stream)? != handle {
            return Err(proto("reply for an unknown request"));
        }
        if err != 0 {
            return Err(proto(format!("{what} failed (error {err})")));
        }
        Ok(())
    }

    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(proto("read past the end of the export"));
        }
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST);
            let at = offset + done as u64;
            self.read_one(at, &mut buf[done..done + n])?;
            self.bytes_read += n as u64;
            done += n;
        }
        Ok(())
    }

    fn read_one(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let handle = self.request(CMD_READ, offset, buf.len() as u32)?;
        let magic = read_u32(&mut self.stream)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let err = read_u32(&mut self.stream)?;
            if read_u64(&mut self.stream)? != handle {
                return Err(proto("reply for an unknown request"));
            }
            if err != 0 {
                return Err(proto(format!("read error {err} at offset {offset}")));
            }
            return self.stream.read_exact(buf).map_err(io);
        }
        if magic != STRUCTURED_REPLY_MAGIC || !self.structured {
            return Err(proto("bad reply magic"));
        }
        // Chunks may come in any order; every byte must be covered exactly
        // once (the buffer holds an earlier chunk's bytes until then).
        let mut covered: Vec<(usize, usize)> = Vec::new();
        let mut magic_read = true;
        loop {
            let (flags, kind, len) = self.chunk_header(handle, &mut magic_read)?;
            let end = offset + buf.len() as u64;
            match kind {
                REPLY_OFFSET_DATA => {
                    if len < 8 {
                        return Err(proto("short data chunk"));
                    }
                    let at = read_u64(&mut self.stream)?;
                    let n = len - 8;
                    if at < offset || at + n as u64 > end {
                        return Err(proto("data chunk outside the request"));
                    }
                    let s = (at - offset) as usize;
                    self.stream.read_exact(&mut buf[s..s + n]).map_err(io)?;
                    covered.push((s, n));
                }
                REPLY_OFFSET_HOLE => {
                    if len != 12 {
                        return Err(proto("malformed hole chunk"));
                    }
                    let at = read_u64(&mut self.stream)?;
                    let n = read_u32(&mut self.stream)? as usize;
                    if at < offset || at + n as u64 > end {
                        return Err(proto("hole chunk outside the request"));
                    }
                    let s = (at - offset) as usize;
                    buf[s..s + n].fill(0);
                    covered.push((s, n));
                }
                REPLY_NONE if flags & REPLY_FLAG_DONE != 0 && len == 0 => {}
                k if k & REPLY_ERROR_BIT != 0 => {
                    return Err(self.error_chunk(len, &format!("read at offset {offset}")));
                }
                _ => {
                    return Err(proto(format!("unexpected reply chunk type {kind}")));
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        covered.sort_unstable();
        let mut end = 0;
        for (s, n) in covered {
            if s != end {
                return Err(proto(format!(
                    "read at offset {offset} left bytes {end}..{s} uncovered or covered twice"
                )));
            }
            end = s + n;
        }
        if end != buf.len() {
            return Err(proto(format!(
                "read at offset {offset} returned {end} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Ranges whose state (in the context) has `bit` set, over the whole export.
    fn ranges_with(&mut self, context: u32, bit: u32, invert: bool) -> Result<Extents> {
        let mut out: Extents = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            let len = (self.size - pos).min(MAX_STATUS);
            let handle = self.request(CMD_BLOCK_STATUS, pos, len as u32)?;
            let mut advanced = pos;
            let mut magic_read = false;
            loop {
                let (flags, kind, plen) = self.chunk_header(handle, &mut magic_read)?;
                if kind & REPLY_ERROR_BIT != 0 {
                    return Err(self.error_chunk(plen, "block status"));
                }
                let p = self.payload(plen)?;
                if kind == REPLY_BLOCK_STATUS {
                    if p.len() < 4 || (p.len() - 4) % 8 != 0 {
                        return Err(proto("malformed block status chunk"));
                    }
                    if be32(&p, 0) == context {
                        if advanced != pos {
                            return Err(proto("two block status chunks for one context"));
                        }
                        let mut at = pos;
                        for d in p[4..].chunks_exact(8) {
                            let n = u64::from(be32(d, 0));
                            let state = be32(d, 4);
                            if n == 0 || at + n > self.size {
                                return Err(proto("block status extent out of range"));
                            }
                            if (state & bit != 0) != invert {
                                match out.last_mut() {
                                    Some(last) if last.1 == at => last.1 = at + n,
                                    _ => out.push((at, at + n)),
                                }
                            }
                            at += n;
                        }
                        advanced = at;
                    }
                } else if kind != REPLY_NONE {
                    return Err(proto(format!("unexpected reply chunk type {kind}")));
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            if advanced <= pos {
                return Err(proto("block status made no progress"));
            }
            pos = advanced;
        }
        Ok(out)
    }

    /// Ranges that may hold non-zero data (`base:allocation`), or None when
    /// the connection did not ask for it.
    pub fn data_extents(&mut self) -> Result<Option<Extents>> {
        match self.allocation {
            Some(ctx) => self.ranges_with(ctx, STATE_ZERO, true).map(Some),
            None => Ok(None),
        }
    }

    /// Ranges the dirty bitmap marks, or None when it was not asked for.
    pub fn dirty_extents(&mut self) -> Result<Option<Extents>> {
        match self.dirty {
            Some(ctx) => self.ranges_with(ctx, STATE_DIRTY, false).map(Some),
            None => Ok(None),
        }
    }

    pub fn disconnect(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reply = Box<dyn Fn(u64) -> Vec<u8> + Send>;

    /// A scripted server: handshake, then for each request the reply bytes
    /// the closure makes from its handle.
    fn serve(
        dir: &Path,
        contexts: &'static [(&'static str, u32)],
        replies: Vec<Reply>,
    ) -> std::path::PathBuf {
        let path = dir.join("nbd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = Vec::new();
            hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
            hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
            hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            s.write_all(&hello).unwrap();
            let _flags = read_u32(&mut s).unwrap();
            let reply = |s: &mut UnixStream, opt: u32, kind: u32, data: &[u8]| {
                let mut m = Vec::new();
                m.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
                m.extend_from_slice(&opt.to_be_bytes());
                m.extend_from_slice(&kind.to_be_bytes());
                m.extend_from_slice(&(data.len() as u32).to_be_bytes());
                m.extend_from_slice(data);
                s.write_all(&m).unwrap();
            };
            loop {
                let _ = read_u64(&mut s).unwrap();
                let opt = read_u32(&mut s).unwrap();
                let len = read_u32(&mut s).unwrap() as usize;
                let mut data = vec![0u8; len];
                s.read_exact(&mut data).unwrap();
                match opt {
                    OPT_SET_META_CONTEXT => {
                        for (name, id) in contexts {
                            let mut d = id.to_be_bytes().to_vec();
                            d.extend_from_slice(name.as_bytes());
                            reply(&mut s, opt, REP_META_CONTEXT, &d);
                        }
                        reply(&mut s, opt, REP_ACK, &[]);
                    }
                    OPT_GO => {
                        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
                        info.extend_from_slice(&0u16.to_be_bytes());
                        reply(&mut s, opt, REP_INFO, &info);
                        reply(&mut s, opt, REP_ACK, &[]);
                        break;
                    }
                    _ => reply(&mut s, opt, REP_ACK, &[]),
                }
            }
            for r in replies {
                let mut req = [0u8; 28];
                if s.read_exact(&mut req).is_err() {
                    return;
                }
                let handle = u64::from_be_bytes(req[8..16].try_into().unwrap());
                let _ = s.write_all(&r(handle));
            }
        });
        path
    }

    fn chunk(flags: u16, kind: u16, handle: u64, payload: &[u8]) -> Vec<u8> {
        let mut m = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn data(at: u64, bytes: &[u8]) -> Vec<u8> {
        let mut p = at.to_be_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    }

    fn hole(at: u64, n: u32) -> Vec<u8> {
        let mut p = at.to_be_bytes().to_vec();
        p.extend_from_slice(&n.to_be_bytes());
        p
    }

    fn status(ctx: u32, extents: &[(u32, u32)]) -> Vec<u8> {
        let mut p = ctx.to_be_bytes().to_vec();
        for (n, st) in extents {
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&st.to_be_bytes());
        }
        p
    }

    const CONTEXTS: &[(&str, u32)] = &[("base:allocation", 1), ("qemu:dirty-bitmap:b", 2)];

    fn want() -> Want<'static> {
        Want {
            export: "x",
            allocation: true,
            dirty_bitmap: Some("b"),
        }
    }

    #[test]
    fn chunks_in_any_order_make_one_read_and_block_status_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(
            dir.path(),
            CONTEXTS,
            vec![
                Box::new(|h| {
                    let mut m = chunk(0, REPLY_OFFSET_DATA, h, &data(8, &[7u8; 8]));
                    m.extend(chunk(REPLY_FLAG_DONE, REPLY_OFFSET_HOLE, h, &hole(0, 8)));
                    m
                }),
                Box::new(|h| {
                    let mut m = chunk(
                        0,
                        REPLY_BLOCK_STATUS,
                        h,
                        &status(1, &[(4096, 0), (4096, 3)]),
                    );
                    let rest = (1u32 << 20) - 8192;
                    m.extend(chunk(
                        REPLY_FLAG_DONE,
                        REPLY_BLOCK_STATUS,
                        h,
                        &status(2, &[(4096, 1), (4096, 1), (rest, 0)]),
                    ));
                    m
                }),
            ],
        );
        let mut c = NbdClient::connect_with(&path, &want()).unwrap();
        let mut buf = [1u8; 16];
        c.read_at(0, &mut buf).unwrap();
        assert_eq!(buf[..8], [0u8; 8]);
        assert_eq!(buf[8..], [7u8; 8]);
        assert_eq!(c.bytes_read, 16);
        // One reply carries both contexts; only the bitmap's is taken.
        let dirty = c.dirty_extents().unwrap().unwrap();
        assert_eq!(dirty, vec![(0, 8192)]);
    }

    #[test]
    fn hostile_replies_are_refused() {
        let cases: Vec<(&str, Reply)> = vec![
            (
                "outside the request",
                Box::new(|h| chunk(REPLY_FLAG_DONE, REPLY_OFFSET_DATA, h, &data(12, &[0u8; 8]))),
            ),
            (
                "unknown request",
                Box::new(|h| chunk(REPLY_FLAG_DONE, REPLY_OFFSET_HOLE, h + 1, &hole(0, 16))),
            ),
            (
                "uncovered or covered twice",
                Box::new(|h| {
                    let mut m = chunk(0, REPLY_OFFSET_HOLE, h, &hole(0, 8));
                    m.extend(chunk(0, REPLY_OFFSET_HOLE, h, &hole(4, 4)));
                    m.extend(chunk(REPLY_FLAG_DONE, REPLY_OFFSET_HOLE, h, &hole(12, 4)));
                    m
                }),
            ),
            (
                "returned 8 of 16",
                Box::new(|h| chunk(REPLY_FLAG_DONE, REPLY_OFFSET_HOLE, h, &hole(0, 8))),
            ),
            (
                "oversized",
                Box::new(|h| {
                    let mut m = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
                    m.extend_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
                    m.extend_from_slice(&REPLY_OFFSET_DATA.to_be_bytes());
                    m.extend_from_slice(&h.to_be_bytes());
                    m.extend_from_slice(&u32::MAX.to_be_bytes());
                    m
                }),
            ),
            (
                "failed (error 5): disk \\x1b[31mgone",
                Box::new(|h| {
                    let msg = b"disk \x1b[31mgone";
                    let mut p = 5u32.to_be_bytes().to_vec();
                    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                    p.extend_from_slice(msg);
                    chunk(REPLY_FLAG_DONE, REPLY_ERROR_BIT | 1, h, &p)
                }),
            ),
        ];
        for (want_msg, reply) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = serve(dir.path(), CONTEXTS, vec![reply]);
            let mut c = NbdClient::connect_with(&path, &want()).unwrap();
            let mut buf = [0u8; 16];
            let e = c.read_at(0, &mut buf).unwrap_err().to_string();
            assert!(e.contains(want_msg), "{want_msg}: {e}");
        }
    }

    #[test]
    fn a_missing_bitmap_context_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve(dir.path(), &[("base:allocation", 1)], Vec::new());
        let e = NbdClient::connect_with(&path, &want())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not offer bitmap b"), "{e}");
    }
}
