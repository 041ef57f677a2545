//! A private virtual switch for the VMs of a recovery plan: a Unix socket
//! in the plan's private scratch directory that QEMU's `stream` network
//! backends connect to (each frame a 4-byte big-endian length, then the
//! Ethernet frame). It learns source addresses and forwards like an
//! unmanaged switch; it has no uplink, so the VMs reach each other and
//! nothing else — no host interface, bridge or route is made, and it
//! needs no privileges.
//!
//! lifeboat itself can sit on it as one more host to ask, with ARP, which
//! VM holds an address: that proves the VMs came up with the addresses
//! the plan says they expect. It also answers DHCP for the MACs it was
//! given addresses for (`vm::dhcp`), so a VM that asks gets the address
//! the plan says it expects.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Ethernet's largest frame with a VLAN tag, plus room for QEMU's
/// offloaded frames (it may hand over up to 64 KiB at once).
const MAX_FRAME: usize = 65_536 + 18;
/// Frames queued for one port before the switch drops (as a real one does).
const QUEUE: usize = 512;
/// Ports at most: a plan's VMs and the probe.
const MAX_PORTS: usize = 64;
/// The switch's own address when it asks with ARP (locally administered).
const PROBE_MAC: [u8; 6] = [0x02, 0x6c, 0x62, 0x00, 0x00, 0x01];

type Mac = [u8; 6];

#[derive(Default)]
struct Table {
    next: u64,
    ports: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    macs: HashMap<Mac, u64>,
    /// The DHCP answers: who answers, and each MAC's address.
    dhcp: Option<(super::dhcp::Server, HashMap<Mac, Ipv4Addr>)>,
}

impl Table {
    fn add(&mut self, tx: mpsc::Sender<Vec<u8>>) -> Option<u64> {
        if self.ports.len() >= MAX_PORTS {
            return None;
        }
        self.next += 1;
        self.ports.insert(self.next, tx);
        Some(self.next)
    }

    fn remove(&mut self, port: u64) {
        self.ports.remove(&port);
        self.macs.retain(|_, p| *p != port);
    }

    /// Learns where the sender is and passes the frame on: to the port
    /// that holds its destination, else to every other port.
    fn forward(&mut self, from: u64, frame: Vec<u8>) {
        if frame.len() < 14 {
            return;
        }
        let dst: Mac = frame[0..6].try_into().unwrap_or_default();
        let src: Mac = frame[6..12].try_into().unwrap_or_default();
        if src[0] & 1 == 0 {
            self.macs.insert(src, from);
        }
        if let Some((server, leases)) = &self.dhcp {
            if let Some(reply) = super::dhcp::answer(&frame, server, |m| leases.get(m).copied()) {
                if let Some(tx) = self.ports.get(&from) {
                    let _ = tx.try_send(reply);
                }
            }
        }
        let to = (dst[0] & 1 == 0)
            .then(|| self.macs.get(&dst).copied())
            .flatten();
        match to {
            Some(p) if p != from => {
                if let Some(tx) = self.ports.get(&p) {
                    let _ = tx.try_send(frame);
                }
            }
            Some(_) => {}
            None => {
                for (p, tx) in &self.ports {
                    if *p != from {
                        let _ = tx.try_send(frame.clone());
                    }
                }
            }
        }
    }
}

/// A running switch; it stops (and its socket goes) when dropped.
pub struct Switch {
    path: PathBuf,
    table: Arc<Mutex<Table>>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Switch {
    /// Listens on `path` (in a private directory; it must not exist).
    pub fn start(path: &Path) -> Result<Switch> {
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io("creating the plan's private network at", path, e))?;
        let table = Arc::new(Mutex::new(Table::default()));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, c) = (table.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let h = tokio::spawn(serve_port(stream, t.clone()));
                if let Ok(mut c) = c.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(h);
                }
            }
        });
        Ok(Switch {
            path: path.to_path_buf(),
            table,
            accept,
            conns,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers DHCP from `server` (an address no VM holds) with the
    /// addresses `lease` binds to MACs.
    pub fn serve_dhcp(&self, server: Ipv4Addr, netmask: Ipv4Addr) {
        if let Ok(mut t) = self.table.lock() {
            let s = super::dhcp::Server {
                mac: PROBE_MAC,
                ip: server,
                netmask,
            };
            t.dhcp = Some((s, HashMap::new()));
        }
    }

    /// The address DHCP gives the NIC with `mac` (`52:54:00:12:34:56`).
    pub fn lease(&self, mac: &str, ip: Ipv4Addr) {
        let Some(m) = parse_mac(mac) else {
            return;
        };
        if let Ok(mut t) = self.table.lock() {
            if let Some((_, leases)) = &mut t.dhcp {
                leases.insert(m, ip);
            }
        }
    }

    /// Ports connected now (the probe's included while it asks).
    pub fn ports(&self) -> usize {
        self.table.lock().map(|t| t.ports.len()).unwrap_or(0)
    }

    /// Asks with ARP, from `from` (an address of the plan's subnet no VM
    /// holds), which station holds `ip`: its MAC when one answers within
    /// `wait`, asking again every half second.
    pub async fn who_has(&self, ip: Ipv4Addr, from: Ipv4Addr, wait: Duration) -> Option<Mac> {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let port = self.table.lock().ok()?.add(tx)?;
        let request = arp_request(from, ip);
        let deadline = tokio::time::Instant::now() + wait;
        let mut found = None;
        'ask: while tokio::time::Instant::now() < deadline {
            if let Ok(mut t) = self.table.lock() {
                t.forward(port, request.clone());
            }
            let next = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
            while let Ok(Some(frame)) = tokio::time::timeout_at(next, rx.recv()).await {
                if let Some(mac) = arp_reply_from(&frame, ip) {
                    found = Some(mac);
                    break 'ask;
                }
            }
        }
        if let Ok(mut t) = self.table.lock() {
            t.remove(port);
        }
        found
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(c) = self.conns.lock() {
            for h in c.iter() {
                h.abort();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One VM's connection: frames in are forwarded, frames for it written out.
async fn serve_port(stream: UnixStream, table: Arc<Mutex<Table>>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let Some(port) = table.lock().ok().and_then(|mut t| t.add(tx)) else {
        return;
    };
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let len = (frame.len() as u32).to_be_bytes();
            if wr.write_all(&len).await.is_err() || wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut len = [0u8; 4];
        if rd.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as usize;
        // A peer that says more than a frame can hold is not QEMU: cut it off.
        if len > MAX_FRAME {
            break;
        }
        let mut frame = vec![0u8; len];
        if rd.read_exact(&mut frame).await.is_err() {
            break;
        }
        if let Ok(mut t) = table.lock() {
            t.forward(port, frame);
        }
    }
    if let Ok(mut t) = table.lock() {
        t.remove(port);
    }
    writer.abort();
}

fn arp_request(from: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&PROBE_MAC);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&PROBE_MAC);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The sender's MAC when `frame` is an ARP reply saying it holds `ip`.
fn arp_reply_from(frame: &[u8], ip: Ipv4Addr) -> Option<Mac> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x06] || frame[20..22] != [0, 2] {
        return None;
    }
    (frame[28..32] == ip.octets()).then(|| frame[22..28].try_into().ok())?
}

fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// A MAC as `52:54:00:12:34:56`.
pub fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frame(s: &mut UnixStream, f: &[u8]) {
        s.write_all(&(f.len() as u32).to_be_bytes()).await.unwrap();
        s.write_all(f).await.unwrap();
    }

    async fn read(s: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut f).await.unwrap();
        f
    }

    #[tokio::test]
    async fn forwards_learns_and_answers_arp() {
        let dir = tempfile::tempdir().unwrap();
        let sw = Switch::start(&dir.path().join("lan.sock")).unwrap();
        let mut a = UnixStream::connect(sw.path()).await.unwrap();
        let mut b = UnixStream::connect(sw.path()).await.unwrap();
        let mut c = UnixStream::connect(sw.path()).await.unwrap();
        let (ma, mb) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        // a broadcasts: b and c get it, and the switch learns a.
        let mut bc = vec![0xff; 6];
        bc.extend_from_slice(&ma);
        bc.extend_from_slice(&[0x88, 0xb5, 1]);
        frame(&mut a, &bc).await;
        assert_eq!(read(&mut b).await, bc);
        assert_eq!(read(&mut c).await, bc);
        // b answers a: only a gets it.
        let mut uni = ma.to_vec();
        uni.extend_from_slice(&mb);
        uni.extend_from_slice(&[0x88, 0xb5, 2]);
        frame(&mut b, &uni).await;
        assert_eq!(read(&mut a).await, uni);
        // A station that holds 10.9.0.2 answers the probe's ARP.
        let ip = Ipv4Addr::new(10, 9, 0, 2);
        let answer = tokio::spawn(async move {
            loop {
                let f = read(&mut b).await;
                if f[12..14] == [8, 6] && f[38..42] == ip.octets() {
                    let mut r = f[6..12].to_vec();
                    r.extend_from_slice(&mb);
                    r.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
                    r.extend_from_slice(&mb);
                    r.extend_from_slice(&ip.octets());
                    r.extend_from_slice(&f[22..32]);
                    frame(&mut b, &r).await;
                    return b;
                }
            }
        });
        let from = Ipv4Addr::new(10, 9, 0, 254);
        let got = sw.who_has(ip, from, Duration::from_secs(30)).await;
        assert_eq!(got, Some(mb));
        assert_eq!(mac_text(&mb), "02:00:00:00:00:0b");
        let _b = answer.await.unwrap();
        // Nobody holds .9: no answer, and the probe's port is gone again.
        let none = sw
            .who_has(Ipv4Addr::new(10, 9, 0, 9), from, Duration::from_millis(600))
            .await;
        assert_eq!(none, None);
        // A peer that claims a giant frame is cut off; the rest go on.
        c.write_all(&(10_000_000u32).to_be_bytes()).await.unwrap();
        // (What was flooded to it before is still in its socket.)
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut rest)).await;
        assert!(
            cut.is_ok(),
            "the switch kept a peer that sent a giant length"
        );
        let path = sw.path().to_path_buf();
        drop(sw);
        assert!(!path.exists());
    }
}
