//! A minimal read-only NBD client (fixed newstyle handshake, NBD_OPT_GO,
//! simple replies) for talking to our own `qemu-nbd` over a unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;
const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
/// qemu-nbd refuses requests over 32 MiB.
const MAX_REQUEST: usize = 32 << 20;

pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    handle: u64,
}

fn proto(msg: impl Into<String>) -> Error {
    Error::Qemu(format!("NBD: {}", msg.into()))
}

fn io(e: std::io::Error) -> Error {
    Error::Qemu(format!("NBD connection: {e}"))
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

impl NbdClient {
    pub fn connect(path: &Path) -> Result<NbdClient> {
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
        let mut msg = Vec::with_capacity(32);
        msg.extend_from_slice(&client_flags.to_be_bytes());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&6u32.to_be_bytes()); // option data: empty name, no info requests
        msg.extend_from_slice(&0u32.to_be_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&msg).map_err(io)?;
        let mut size = None;
        loop {
            if read_u64(&mut s)? != OPT_REPLY_MAGIC {
                return Err(proto("bad option reply magic"));
            }
            let _opt = read_u32(&mut s)?;
            let kind = read_u32(&mut s)?;
            let len = read_u32(&mut s)? as usize;
            if len > 1 << 16 {
                return Err(proto("oversized option reply"));
            }
            let mut data = vec![0u8; len];
            s.read_exact(&mut data).map_err(io)?;
            if kind & 0x8000_0000 != 0 {
                return Err(proto(format!(
                    "export refused: {}",
                    String::from_utf8_lossy(&data)
                )));
            }
            match kind {
                REP_INFO
                    if data.len() >= 12
                        && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
                {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&data[2..10]);
                    size = Some(u64::from_be_bytes(b));
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

    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(proto("read past the end of the export"));
        }
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_REQUEST);
            let handle = self.request(CMD_READ, offset + done as u64, n as u32)?;
            if read_u32(&mut self.stream)? != SIMPLE_REPLY_MAGIC {
                return Err(proto("bad reply magic"));
            }
            let err = read_u32(&mut self.stream)?;
            if read_u64(&mut self.stream)? != handle {
                return Err(proto("reply for an unknown request"));
            }
            if err != 0 {
                return Err(proto(format!(
                    "read error {err} at offset {}",
                    offset + done as u64
                )));
            }
            self.stream
                .read_exact(&mut buf[done..done + n])
                .map_err(io)?;
            done += n;
        }
        Ok(())
    }

    pub fn disconnect(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0);
    }
}
