//! A TCP proxy on loopback that makes a link look like a WAN: latency
//! each way (a delay line, so it does not cap throughput), an optional
//! rate cap each way, and connections dropped mid-transfer (a bounded
//! number of them). Tests and the WAN benchmark put it between a client
//! and `lifeboat serve`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    /// Added to each direction (RTT is twice this).
    pub one_way: Duration,
    /// Bytes per second each way (None: no cap).
    pub rate: Option<u64>,
    /// Drop every connection that has carried this many bytes (both ways)…
    pub drop_after: Option<u64>,
    /// …at most this many times in all.
    pub max_drops: usize,
}

pub struct Proxy {
    pub addr: String,
    pub drops: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards to `upstream` (host:port).
    pub fn start(upstream: &str, link: Link) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let drops = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_string();
        let (s, d) = (stop.clone(), drops.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                connect(client, server, link, d.clone());
            }
        });
        Proxy { addr, drops, stop }
    }
}

fn connect(client: TcpStream, server: TcpStream, link: Link, drops: Arc<AtomicUsize>) {
    let carried = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    for (from, to) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        let (carried, dropped, drops) = (carried.clone(), dropped.clone(), drops.clone());
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        // Reader: stamps each piece with when it may leave.
        let mut r = from.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + link.one_way, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        // Writer: delays, paces, and drops the connection when its turn comes.
        let mut w = to;
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent: u64 = 0;
            while let Ok((due, data)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if let Some(rate) = link.rate {
                    let should = Duration::from_secs_f64(sent as f64 / rate as f64);
                    let el = started.elapsed();
                    if should > el {
                        std::thread::sleep(should - el);
                    }
                }
                let total = carried.fetch_add(data.len(), Ordering::SeqCst) + data.len();
                if let Some(limit) = link.drop_after {
                    if total as u64 >= limit
                        && !dropped.load(Ordering::SeqCst)
                        && drops
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                                (d < link.max_drops).then_some(d + 1)
                            })
                            .is_ok()
                    {
                        dropped.store(true, Ordering::SeqCst);
                        let _ = w.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
                if dropped.load(Ordering::SeqCst) || w.write_all(&data).is_err() {
                    break;
                }
                sent += data.len() as u64;
            }
            let _ = w.shutdown(Shutdown::Write);
        });
    }
}
