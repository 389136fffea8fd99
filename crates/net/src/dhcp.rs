//! A DHCP responder for one VM: guests that run a DHCP client (systemd-networkd, ifupdown,
//! udhcpc) get the same lease the kernel `ip=` argument already gave them.
//!
//! It runs inside the VM's namespace, answering only the VM's MAC. `attach` exempts UDP to port
//! 67 arriving from the tap from the redirect to the bridge, so requests reach this responder;
//! the tap carries the gateway address as the server identifier (with the VM's address as its
//! peer: a route to the guest), and the gateway's MAC: a renewal, sent by the client to the
//! server's address and so to the gateway's MAC, is the namespace's own frame, not one for
//! another host that its stack would drop. The answer to it goes back to the client's
//! address (RFC 2131 4.1: systemd-networkd, renewing, listens on that address only), through
//! a permanent neighbour entry: the tap never resolves an address itself, because every frame
//! but these requests is redirected before the namespace's stack sees it, the guest's ARP
//! replies included. Messages are parsed with bounds on every field; anything malformed is
//! ignored.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
const INFORM: u8 = 8;
/// Lease time handed out (the VM keeps its address for its whole life anyway).
pub const LEASE_SECS: u32 = 86_400;

/// What the VM is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: String,
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub chaddr: [u8; 6],
    pub kind: u8,
    pub requested: Option<Ipv4Addr>,
    pub ciaddr: Ipv4Addr,
}

/// Parses a BOOTREQUEST; `None` for anything that is not a well-formed DHCP request.
pub fn parse(b: &[u8]) -> Option<Request> {
    if b.len() < 240 || b[0] != 1 || b[1] != 1 || b[2] != 6 || b[236..240] != MAGIC {
        return None;
    }
    let mut kind = None;
    let mut requested = None;
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *b.get(i + 1)? as usize;
        let val = b.get(i + 2..i + 2 + len)?;
        match code {
            53 if len == 1 => kind = Some(val[0]),
            50 if len == 4 => requested = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
            _ => {}
        }
        i += 2 + len;
    }
    Some(Request {
        xid: b[4..8].try_into().ok()?,
        flags: b[10..12].try_into().ok()?,
        chaddr: b[28..34].try_into().ok()?,
        kind: kind?,
        requested,
        ciaddr: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
    })
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) })
}

/// The reply to `req` for `lease` from `server`, or `None` when it is not ours to answer.
pub fn reply(req: &Request, lease: &Lease, server: Ipv4Addr) -> Option<Vec<u8>> {
    if req.chaddr != lease.mac {
        return None;
    }
    let kind = match req.kind {
        DISCOVER => OFFER,
        REQUEST => {
            let wanted = req.requested.unwrap_or(req.ciaddr);
            if wanted == lease.ip || wanted.is_unspecified() {
                ACK
            } else {
                NAK
            }
        }
        INFORM => ACK,
        _ => return None,
    };
    let mut b = vec![0u8; 240];
    b[0] = 2;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&req.xid);
    b[10..12].copy_from_slice(&req.flags);
    if req.kind == INFORM {
        b[12..16].copy_from_slice(&req.ciaddr.octets());
    } else if kind != NAK {
        b[16..20].copy_from_slice(&lease.ip.octets());
    }
    b[20..24].copy_from_slice(&server.octets());
    b[28..34].copy_from_slice(&lease.mac);
    b[236..240].copy_from_slice(&MAGIC);
    let mut opt = |code: u8, val: &[u8]| {
        b.push(code);
        b.push(val.len() as u8);
        b.extend_from_slice(val);
    };
    opt(53, &[kind]);
    opt(54, &server.octets());
    if kind != NAK {
        if req.kind != INFORM {
            opt(51, &LEASE_SECS.to_be_bytes());
        }
        opt(1, &mask(lease.prefix_len).octets());
        if let Some(g) = lease.gateway {
            opt(3, &g.octets());
        }
        if !lease.dns.is_empty() {
            let d: Vec<u8> = lease.dns.iter().take(4).flat_map(|a| a.octets()).collect();
            opt(6, &d);
        }
        let h: Vec<u8> =
            lease.hostname.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.').take(63).collect();
        if !h.is_empty() {
            opt(12, &h);
        }
    }
    b.push(255);
    while b.len() < 300 {
        b.push(0);
    }
    Some(b)
}

/// Where the reply to `req` goes: to the client's address when it says it has ours (a
/// renewal, RFC 2131 4.1), else broadcast (and every NAK). Never to an address the guest
/// names that is not its lease's.
pub fn destination(req: &Request, lease: &Lease, reply: &[u8]) -> SocketAddrV4 {
    let nak = reply.get(240..243) == Some(&[53, 1, NAK][..]);
    if !nak && req.ciaddr == lease.ip && !lease.ip.is_unspecified() {
        SocketAddrV4::new(lease.ip, 68)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    }
}

/// Serves `lease` inside network namespace `netns` until the process ends. Runs on its own
/// thread: the namespace switch applies to this thread (and those it starts) only.
pub fn serve(netns: &str, lease: Lease, server: Ipv4Addr) -> std::io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{netns}"))?;
    rustix::thread::move_into_link_name_space(f.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
    // Broadcasts arrive on the wildcard socket; a request sent to the server's address, on the
    // socket bound to it (the more specific), which also sends every reply (a broadcast needs
    // the source address to find its interface).
    let any = udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67))?;
    let tx = udp_socket(SocketAddrV4::new(server, 67))?;
    tx.set_broadcast(true)?;
    let unicast = tx.try_clone()?;
    let answer = |from: &UdpSocket| -> std::io::Result<()> {
        from.set_read_timeout(Some(Duration::from_secs(3600)))?;
        let mut buf = [0u8; 1500];
        loop {
            let n = match from.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => return Err(e),
            };
            if let Some(req) = parse(&buf[..n]) {
                if let Some(out) = reply(&req, &lease, server) {
                    let _ = tx.send_to(&out, destination(&req, &lease, &out));
                }
            }
        }
    };
    std::thread::scope(|s| {
        let broadcasts = s.spawn(|| answer(&any));
        let renewals = answer(&unicast);
        broadcasts.join().unwrap_or_else(|_| Err(std::io::Error::other("the DHCP responder's thread panicked")))?;
        renewals
    })
}

fn udp_socket(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &std::net::SocketAddr::V4(addr))?;
    Ok(UdpSocket::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&[1, 2, 3, 4]);
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, kind]);
        if let Some(r) = requested {
            b.extend_from_slice(&[50, 4]);
            b.extend_from_slice(&r.octets());
        }
        b.push(255);
        b
    }

    fn lease() -> Lease {
        Lease {
            mac: [2, 0, 0, 0, 0, 9],
            ip: "10.61.0.9".parse().unwrap(),
            prefix_len: 16,
            gateway: Some("10.61.0.1".parse().unwrap()),
            dns: vec!["10.0.0.53".parse().unwrap()],
            hostname: "vm9".into(),
        }
    }

    #[test]
    fn discover_request_ack() {
        let l = lease();
        let srv: Ipv4Addr = "10.61.0.1".parse().unwrap();
        let offer = reply(&parse(&request(DISCOVER, l.mac, None)).unwrap(), &l, srv).unwrap();
        assert_eq!(offer[0], 2);
        assert_eq!(&offer[16..20], &[10, 61, 0, 9]);
        assert_eq!(&offer[240..243], &[53, 1, OFFER]);
        let ack = reply(&parse(&request(REQUEST, l.mac, Some(l.ip))).unwrap(), &l, srv).unwrap();
        assert_eq!(&ack[240..243], &[53, 1, ACK]);
        assert!(ack.windows(6).any(|w| w == [1, 4, 255, 255, 0, 0]), "netmask option");
        let nak =
            reply(&parse(&request(REQUEST, l.mac, Some("10.61.0.99".parse().unwrap()))).unwrap(), &l, srv).unwrap();
        assert_eq!(&nak[240..243], &[53, 1, NAK]);
        // Another MAC is not ours to answer.
        assert!(reply(&parse(&request(DISCOVER, [9; 6], None)).unwrap(), &l, srv).is_none());
    }

    #[test]
    fn a_renewal_is_answered_at_the_clients_address_and_anything_else_broadcast() {
        let l = lease();
        let srv: Ipv4Addr = "10.61.0.1".parse().unwrap();
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        let mut renew = request(REQUEST, l.mac, None);
        renew[12..16].copy_from_slice(&l.ip.octets());
        let r = parse(&renew).unwrap();
        let ack = reply(&r, &l, srv).unwrap();
        assert_eq!(&ack[240..243], &[53, 1, ACK]);
        assert_eq!(destination(&r, &l, &ack), SocketAddrV4::new(l.ip, 68));
        // A renewal of another address: NAK, broadcast (never sent where the guest says).
        renew[12..16].copy_from_slice(&[10, 61, 0, 99]);
        let r = parse(&renew).unwrap();
        let nak = reply(&r, &l, srv).unwrap();
        assert_eq!(&nak[240..243], &[53, 1, NAK]);
        assert_eq!(destination(&r, &l, &nak), bcast);
        // A client without an address yet.
        let r = parse(&request(DISCOVER, l.mac, None)).unwrap();
        assert_eq!(destination(&r, &l, &reply(&r, &l, srv).unwrap()), bcast);
    }

    #[test]
    fn malformed_is_ignored() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0u8; 239]).is_none());
        let mut r = request(DISCOVER, [2, 0, 0, 0, 0, 9], None);
        r.truncate(242); // option runs past the end
        assert!(parse(&r).is_none());
        let mut r = request(DISCOVER, [2, 0, 0, 0, 0, 9], None);
        r[241] = 200; // length beyond the packet
        assert!(parse(&r).is_none());
    }

    #[test]
    fn never_panics_on_noise() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000 {
            let mut b = request(DISCOVER, [2, 0, 0, 0, 0, 9], None);
            b.resize(240 + len % 400, 0);
            for byte in b.iter_mut().skip(240) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            if let Some(r) = parse(&b) {
                let _ = reply(&r, &lease(), Ipv4Addr::LOCALHOST);
            }
        }
    }
}
