//! The DHCP answers of a recovery plan's private switch: a VM that asks
//! for an address (DHCPDISCOVER, DHCPREQUEST) gets the one the plan says
//! it expects, bound to its MAC — as a reservation on the real network
//! would give it. No router and no DNS server are offered: the network
//! leads nowhere. Frames from a VM are hostile input: every length is
//! checked before it is read, and anything unexpected is no answer.

use std::net::Ipv4Addr;

/// Where the answers come from, and what they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

const LEASE_SECS: u32 = 86_400;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BOOTP_LEN: usize = 236;

/// The answer to `frame` when it is a DHCP request from a MAC that has an
/// address in `leases`: an OFFER to a DISCOVER, an ACK (or a NAK when it
/// asks for another address) to a REQUEST.
pub fn answer(
    frame: &[u8],
    server: &Server,
    lease: impl Fn(&[u8; 6]) -> Option<Ipv4Addr>,
) -> Option<Vec<u8>> {
    // Ethernet II, IPv4.
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if udp.get(2..4)? != [0, 67] {
        return None;
    }
    let bootp = udp.get(8..)?;
    if bootp.len() < BOOTP_LEN + 4 || bootp[0] != 1 || bootp[1] != 1 || bootp[2] != 6 {
        return None;
    }
    if bootp[BOOTP_LEN..BOOTP_LEN + 4] != MAGIC {
        return None;
    }
    let chaddr: [u8; 6] = bootp[28..34].try_into().ok()?;
    let yours = lease(&chaddr)?;
    let (mut kind, mut asked) = (None, None);
    let mut opts = &bootp[BOOTP_LEN + 4..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            0 => {
                opts = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..usize::from(len))?;
        match (code, value) {
            (53, [t]) => kind = Some(*t),
            (50, [a, b, c, d]) => asked = Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => {}
        }
        opts = &rest[usize::from(len)..];
    }
    let ciaddr = Ipv4Addr::new(bootp[12], bootp[13], bootp[14], bootp[15]);
    let reply_type = match kind? {
        1 => 2,
        3 => {
            let wanted = asked.unwrap_or(ciaddr);
            if wanted == yours {
                5
            } else {
                6
            }
        }
        _ => return None,
    };
    Some(build(bootp, server, yours, chaddr, reply_type))
}

fn build(req: &[u8], s: &Server, yours: Ipv4Addr, chaddr: [u8; 6], kind: u8) -> Vec<u8> {
    let mut b = vec![0u8; BOOTP_LEN];
    b[0] = 2;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&req[4..8]); // xid
    b[10..12].copy_from_slice(&req[10..12]); // flags
    if kind != 6 {
        b[16..20].copy_from_slice(&yours.octets());
    }
    b[20..24].copy_from_slice(&s.ip.octets());
    b[28..34].copy_from_slice(&chaddr);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[53, 1, kind]);
    b.extend_from_slice(&[54, 4]);
    b.extend_from_slice(&s.ip.octets());
    if kind != 6 {
        b.extend_from_slice(&[51, 4]);
        b.extend_from_slice(&LEASE_SECS.to_be_bytes());
        b.extend_from_slice(&[1, 4]);
        b.extend_from_slice(&s.netmask.octets());
    }
    b.push(255);
    let udp_len = 8 + b.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&67u16.to_be_bytes());
    udp.extend_from_slice(&68u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum (optional over IPv4)
    udp.extend_from_slice(&b);
    let total = 20 + udp.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&s.ip.octets());
    ip.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&chaddr);
    f.extend_from_slice(&s.mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// The Internet checksum of an IPv4 header.
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mac: [u8; 6], kind: u8, asked: Option<Ipv4Addr>) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, kind]);
        if let Some(a) = asked {
            b.extend_from_slice(&[50, 4]);
            b.extend_from_slice(&a.octets());
        }
        b.push(255);
        let mut udp = vec![0, 68, 0, 67, 0, 0, 0, 0];
        udp.extend_from_slice(&b);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ];
        ip.extend_from_slice(&udp);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn offers_acks_and_refuses() {
        let s = Server {
            mac: [2, 0, 0, 0, 0, 1],
            ip: Ipv4Addr::new(10, 10, 0, 254),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
        };
        let vm = [0x52, 0x54, 0, 1, 2, 3];
        let mine = Ipv4Addr::new(10, 10, 0, 7);
        let lease = |m: &[u8; 6]| (*m == vm).then_some(mine);
        let offer = answer(&request(vm, 1, None), &s, lease).unwrap();
        assert_eq!(offer[0..6], vm);
        assert_eq!(
            checksum(&offer[14..34]),
            0,
            "a valid IPv4 header sums to zero"
        );
        let bootp = &offer[42..];
        assert_eq!(bootp[0], 2);
        assert_eq!(bootp[4..8], [1, 2, 3, 4]);
        assert_eq!(bootp[16..20], mine.octets());
        assert_eq!(bootp[BOOTP_LEN + 4..BOOTP_LEN + 7], [53, 1, 2]);
        let ack = answer(&request(vm, 3, Some(mine)), &s, lease).unwrap();
        assert_eq!(ack[42 + BOOTP_LEN + 6], 5);
        let nak = answer(
            &request(vm, 3, Some(Ipv4Addr::new(10, 10, 0, 9))),
            &s,
            lease,
        )
        .unwrap();
        assert_eq!(nak[42 + BOOTP_LEN + 6], 6);
        // A MAC without a lease, a cut frame, junk: no answer, no panic.
        assert!(answer(&request([2; 6], 1, None), &s, lease).is_none());
        let full = request(vm, 1, None);
        for n in 0..full.len() {
            let _ = answer(&full[..n], &s, lease);
        }
        let mut bad = full.clone();
        let at = bad.len() - 3;
        bad[at] = 200; // an option longer than the frame
        let _ = answer(&bad, &s, lease);
    }
}
