//! `Request::Identity`: gives a VM restored from a memory snapshot (a clone) its own identity.
//!
//! Owns: checking an [`Identity`] before anything changes ([`plan`], pure and tested: interface
//! name, MAC, IPv4 CIDR and gateway, hostname, machine id) and applying it in a fixed order
//! ([`apply`]): the interface's MAC, primary IPv4 address, up flag and default route (the
//! classic `SIOC*` ioctls: an image need not have `ip`), the hostname (and `/etc/hostname` if
//! the image has one), `/etc/machine-id` (written whether or not the image had one), the entropy pool and the wall
//! clock. The first failure stops the rest; the answer names the step that failed.

use std::ffi::{c_char, c_short, c_ulong, c_ushort, c_void};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use ignite_agent::proto::{Exit, Identity};

const HOSTNAME_FILE: &str = "/etc/hostname";
const MACHINE_ID_FILE: &str = "/etc/machine-id";
/// `_IOW('R', 0x03, int[2])` from `<linux/random.h>`: add entropy to the pool and credit it.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
/// How many default routes a clone's snapshot may have had, at most, that are removed.
const MAX_OLD_DEFAULT_ROUTES: usize = 64;

/// A checked [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interface: Option<InterfacePlan>,
    pub hostname: Option<String>,
    pub machine_id: Option<String>,
    pub entropy: Vec<u8>,
    pub wall_clock_ns: Option<u64>,
}

/// A checked `InterfaceIdentity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

/// Checks every field of `id`; the error says which one is wrong and why.
pub fn plan(id: &Identity) -> Result<Plan, String> {
    let interface = match &id.interface {
        None => None,
        Some(i) => {
            check_interface_name(&i.name).map_err(|e| format!("interface name {:?}: {e}", i.name))?;
            let mac = parse_mac(&i.mac).map_err(|e| format!("MAC {:?} of {}: {e}", i.mac, i.name))?;
            let (address, prefix) =
                parse_cidr(&i.address).map_err(|e| format!("address {:?} of {}: {e}", i.address, i.name))?;
            let netmask = netmask(prefix);
            let gateway = match &i.gateway {
                None => None,
                Some(g) => Some(
                    check_gateway(g, address, prefix).map_err(|e| format!("gateway {g:?} of {}: {e}", i.address))?,
                ),
            };
            Some(InterfacePlan { name: i.name.clone(), mac, address, prefix, netmask, gateway })
        }
    };
    if let Some(h) = &id.hostname {
        check_hostname(h).map_err(|e| format!("hostname {h:?}: {e}"))?;
    }
    if let Some(m) = &id.machine_id {
        check_machine_id(m).map_err(|e| format!("machine id {m:?}: {e}"))?;
    }
    Ok(Plan {
        interface,
        hostname: id.hostname.clone(),
        machine_id: id.machine_id.clone(),
        entropy: id.entropy.clone(),
        wall_clock_ns: id.wall_clock_ns,
    })
}

/// What the kernel accepts as an interface name (`dev_valid_name`).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{} bytes, at most 15 allowed", name.len()));
    }
    if name == "." || name == ".." {
        return Err("not a name".into());
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == ':' || *c == '\0' || c.is_whitespace()) {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

/// Six colon-separated pairs of hex digits; a unicast address (the kernel refuses others).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{} octets, 6 expected (like fe:1a:83:31:20:ff)", parts.len()));
    }
    let mut mac = [0u8; 6];
    for (o, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{p:?} is not two hex digits"));
        }
        *o = u8::from_str_radix(p, 16).map_err(|e| e.to_string())?;
    }
    if mac == [0; 6] {
        return Err("all zeros".into());
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address (the lowest bit of the first octet is set)".into());
    }
    Ok(mac)
}

/// `a.b.c.d/prefix`, prefix 0..=32, a unicast address.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s.split_once('/').ok_or("no /prefix (like 10.61.200.5/16)")?;
    let address: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 2 {
        return Err(format!("prefix {p:?} is not a number from 0 to 32"));
    }
    let prefix: u8 = p.parse().map_err(|_| format!("prefix {p:?} is not a number from 0 to 32"))?;
    if prefix > 32 {
        return Err(format!("prefix {prefix} is over 32"));
    }
    if address.is_unspecified() || address.is_multicast() || address.is_broadcast() || address.octets()[0] >= 240 {
        return Err(format!("{address} cannot be an interface's address"));
    }
    Ok((address, prefix))
}

/// The netmask of a prefix length (at most 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0))
}

/// The gateway must be on the interface's subnet (the kernel's routing ioctl cannot add an
/// on-link route to anything else).
fn check_gateway(g: &str, address: Ipv4Addr, prefix: u8) -> Result<Ipv4Addr, String> {
    let gw: Ipv4Addr = g.parse().map_err(|_| "not an IPv4 address".to_string())?;
    let mask = u32::from(netmask(prefix));
    if u32::from(gw) & mask != u32::from(address) & mask {
        return Err(format!("not on the interface's subnet {}/{prefix}", Ipv4Addr::from(u32::from(address) & mask)));
    }
    if gw == address {
        return Err("the interface's own address".into());
    }
    if gw.is_unspecified() || gw.is_multicast() || gw.is_broadcast() {
        return Err("not a unicast address".into());
    }
    Ok(gw)
}

/// 1 to 64 bytes of letters, digits, '.' and '-'.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 64 {
        return Err(format!("{} bytes, 1 to 64 allowed", h.len()));
    }
    if let Some(c) = h.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-')) {
        return Err(format!("contains {c:?} (letters, digits, '.' and '-' only)"));
    }
    Ok(())
}

/// 32 lowercase hex digits, not all zero (systemd treats that as no id).
pub fn check_machine_id(m: &str) -> Result<(), String> {
    if m.len() != 32 || !m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("not 32 lowercase hex digits".into());
    }
    if m.bytes().all(|b| b == b'0') {
        return Err("all zeros".into());
    }
    Ok(())
}

/// Checks `id`, then applies it; the `Exit` to answer with.
pub fn apply(id: &Identity) -> Exit {
    let plan = match plan(id) {
        Ok(p) => p,
        Err(e) => return Exit::failed(format!("refused the identity: {e}")),
    };
    match run(&plan) {
        Ok(()) => Exit { code: Some(0), ..Default::default() },
        Err(e) => Exit::failed(e),
    }
}

fn run(plan: &Plan) -> Result<(), String> {
    if let Some(i) = &plan.interface {
        let sock = inet_socket().map_err(|e| format!("open a socket to configure {}: {e}", i.name))?;
        // The last check before anything changes: the interface exists.
        get_flags(&sock, &i.name).map_err(|e| format!("refused the identity: interface {}: {e}", i.name))?;
        configure_interface(&sock, i)?;
    }
    if let Some(h) = &plan.hostname {
        rustix::system::sethostname(h.as_bytes()).map_err(|e| format!("set the hostname to {h}: {e}"))?;
        if Path::new(HOSTNAME_FILE).exists() {
            overwrite(HOSTNAME_FILE, format!("{h}\n").as_bytes()).map_err(|e| format!("write {HOSTNAME_FILE}: {e}"))?;
        }
    }
    if let Some(m) = &plan.machine_id {
        // Written whether or not the image had one: a clone must not share its source's, and
        // software that wants one (systemd, dbus, journald) finds its own.
        if Path::new(MACHINE_ID_FILE).parent().is_some_and(Path::is_dir) {
            overwrite(MACHINE_ID_FILE, format!("{m}\n").as_bytes())
                .map_err(|e| format!("write {MACHINE_ID_FILE}: {e}"))?;
        }
    }
    if !plan.entropy.is_empty() {
        add_entropy(&plan.entropy).map_err(|e| format!("mix entropy into the guest's pool: {e}"))?;
    }
    if let Some(ns) = plan.wall_clock_ns {
        let ts = rustix::time::Timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as _ };
        rustix::time::clock_settime(rustix::time::ClockId::Realtime, ts)
            .map_err(|e| format!("set the clock to {ns} ns since the epoch: {e}"))?;
    }
    Ok(())
}

/// Writes `content` over the file at `path` (made if missing): written from its start, then cut
/// to its length if it was longer. Not a truncating write: ext4 writes a file emptied by a
/// truncate out to disk when it is closed (`auto_da_alloc`); `/etc/hostname` took a clone
/// 58–72 ms that way under TCG, 20–38 ms this way (measured). Nor a truncate to the length it
/// already has (a `/etc/machine-id` is always 33 bytes): that is one more journalled change
/// of the inode, through code a resumed guest runs for the first time.
fn overwrite(path: &str, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    let was = f.metadata()?.len();
    f.write_all(content)?;
    if was > content.len() as u64 {
        f.set_len(content.len() as u64)?;
    }
    Ok(())
}

fn configure_interface(sock: &OwnedFd, i: &InterfacePlan) -> Result<(), String> {
    let name = &i.name;
    let mac = i.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let set_mac_failed = |e: std::io::Error| format!("set the MAC of {name} to {mac}: {e}");
    match set_mac(sock, name, i.mac) {
        Ok(()) => {}
        // A device that cannot change its address while up: take it down (brought up below).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let flags = get_flags(sock, name).map_err(set_mac_failed)?;
            set_flags(sock, name, flags & !(libc::IFF_UP as c_short)).map_err(set_mac_failed)?;
            set_mac(sock, name, i.mac).map_err(set_mac_failed)?;
        }
        Err(e) => return Err(set_mac_failed(e)),
    }
    // The IPv6 link-local address was made from the old MAC (the snapshot's, which every clone
    // would share: duplicate address detection fails on the bridge); the kernel keeps it
    // through a MAC change. Replaced by the one of the new MAC (taking the interface down and
    // up would make it again too, at ~200 ms more under TCG: measured).
    replace_link_local(name, i.mac).map_err(|e| format!("give {name} the IPv6 link-local address of {mac}: {e}"))?;
    set_addr(sock, name, libc::SIOCSIFADDR, i.address)
        .map_err(|e| format!("set the address of {name} to {}: {e}", i.address))?;
    set_addr(sock, name, libc::SIOCSIFNETMASK, i.netmask)
        .map_err(|e| format!("set the netmask of {name} to {} (/{}): {e}", i.netmask, i.prefix))?;
    let flags = get_flags(sock, name).map_err(|e| format!("read the flags of {name}: {e}"))?;
    if flags & libc::IFF_UP as c_short == 0 {
        set_flags(sock, name, flags | libc::IFF_UP as c_short).map_err(|e| format!("bring {name} up: {e}"))?;
    }
    if let Some(gw) = i.gateway {
        for _ in 0..MAX_OLD_DEFAULT_ROUTES {
            match default_route(sock, libc::SIOCDELRT, None, name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => break,
                Err(e) => return Err(format!("remove the old default route: {e}")),
            }
        }
        match default_route(sock, libc::SIOCADDRT, Some(gw), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("add the default route via {gw} on {name}: {e}")),
        }
    }
    Ok(())
}

/// The interface `name`'s IPv6 link-local addresses (with their prefix lengths), from the
/// kernel's table (`/proc/net/if_inet6`: address, index, prefix length, scope, flags, name,
/// hexadecimal); none when the guest has no IPv6.
fn link_locals(table: &str, name: &str) -> Vec<(std::net::Ipv6Addr, u32)> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, _, prefix, scope, _, dev] = f[..] else { return None };
            if dev != name || scope != "20" || addr.len() != 32 {
                return None;
            }
            let bits = u128::from_str_radix(addr, 16).ok()?;
            Some((std::net::Ipv6Addr::from(bits), u32::from_str_radix(prefix, 16).ok()?))
        })
        .collect()
}

/// The link-local address made from `mac` (modified EUI-64, as the kernel makes it).
fn eui64_link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, a ^ 2, b, c, 0xff, 0xfe, d, e, f])
}

/// Removes `name`'s IPv6 link-local addresses and gives it the one made from `mac`; nothing
/// when it has none (no IPv6 in the guest, or none on the interface).
fn replace_link_local(name: &str, mac: [u8; 6]) -> std::io::Result<()> {
    // IPv6 off on the interface (an IPv4-only network's: the init shim turns it off) leaves it
    // no address, and its switch is quicker to read than the kernel's address table (the
    // guest's first read of either runs cold after a resume); no switch, no IPv6 in the guest.
    match std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6")) {
        Ok(off) if off.trim() == "1" => return Ok(()),
        Err(_) => return Ok(()),
        Ok(_) => {}
    }
    let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") else { return Ok(()) };
    let new = eui64_link_local(mac);
    let old = link_locals(&table, name);
    // None: IPv6 is off on the interface (an IPv4-only network's) or the guest makes no
    // link-local address there; nothing to replace.
    if old.is_empty() || old.iter().any(|(a, _)| *a == new) {
        return Ok(());
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFINDEX takes a struct ifreq.
    unsafe { ioctl(&sock, libc::SIOCGIFINDEX, &mut r)? };
    // SAFETY: SIOCGIFINDEX succeeded, so the kernel filled in the union's index member.
    let index = unsafe { r.ifr_ifru.ifru_ifindex };
    let req = |a: std::net::Ipv6Addr, prefix: u32| libc::in6_ifreq {
        ifr6_addr: libc::in6_addr { s6_addr: a.octets() },
        ifr6_prefixlen: prefix,
        ifr6_ifindex: index,
    };
    for (a, prefix) in old {
        // SAFETY: SIOCDIFADDR on an AF_INET6 socket takes a struct in6_ifreq.
        match unsafe { ioctl(&sock, libc::SIOCDIFADDR, &mut req(a, prefix)) } {
            Err(e) if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) => return Err(e),
            _ => {}
        }
    }
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket takes a struct in6_ifreq.
    match unsafe { ioctl(&sock, libc::SIOCSIFADDR, &mut req(new, 64)) } {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
        _ => Ok(()),
    }
}

/// An AF_INET datagram socket, the handle of the interface ioctls.
fn inet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// ioctl(2) with a pointer argument.
///
/// # Safety
///
/// `T` must be the type the kernel expects for `req` (it reads and writes at most
/// `size_of::<T>()` bytes through the pointer, plus whatever pointers inside `T` designate).
unsafe fn ioctl<T>(fd: &OwnedFd, req: libc::Ioctl, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: fd is valid; the caller vouches that `arg` is what `req` expects, and it is a
    // live, exclusive borrow for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(arg)) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A zeroed `ifreq` naming `name` (checked: at most 15 bytes, so it stays NUL-terminated).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of plain data and a pointer);
    // all-zero bytes are a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as c_char;
    }
    r
}

/// An AF_INET `sockaddr` (a `sockaddr_in`: port 0, then the address in network order).
fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (d, s) in sa_data[2..6].iter_mut().zip(a.octets()) {
        *d = s as c_char;
    }
    libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data }
}

fn set_mac(sock: &OwnedFd, name: &str, mac: [u8; 6]) -> std::io::Result<()> {
    let mut r = ifreq(name);
    let mut sa_data = [0 as c_char; 14];
    for (d, s) in sa_data.iter_mut().zip(mac) {
        *d = s as c_char;
    }
    r.ifr_ifru.ifru_hwaddr = libc::sockaddr { sa_family: libc::ARPHRD_ETHER, sa_data };
    // SAFETY: SIOCSIFHWADDR takes a struct ifreq.
    unsafe { ioctl(sock, libc::SIOCSIFHWADDR, &mut r) }
}

/// SIOCSIFADDR or SIOCSIFNETMASK.
fn set_addr(sock: &OwnedFd, name: &str, req: libc::Ioctl, a: Ipv4Addr) -> std::io::Result<()> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_addr = sockaddr_v4(a);
    // SAFETY: both requests take a struct ifreq.
    unsafe { ioctl(sock, req, &mut r) }
}

fn get_flags(sock: &OwnedFd, name: &str) -> std::io::Result<c_short> {
    let mut r = ifreq(name);
    // SAFETY: SIOCGIFFLAGS takes a struct ifreq.
    unsafe { ioctl(sock, libc::SIOCGIFFLAGS, &mut r)? };
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled in the union's flags member.
    Ok(unsafe { r.ifr_ifru.ifru_flags })
}

fn set_flags(sock: &OwnedFd, name: &str, flags: c_short) -> std::io::Result<()> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_flags = flags;
    // SAFETY: SIOCSIFFLAGS takes a struct ifreq.
    unsafe { ioctl(sock, libc::SIOCSIFFLAGS, &mut r) }
}

/// `struct rtentry` of `<linux/route.h>` (the C library's own is not in the `libc` crate for
/// glibc).
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: c_ushort,
    rt_pad2: c_short,
    rt_pad3: c_ulong,
    rt_pad4: *mut c_void,
    rt_metric: c_short,
    rt_dev: *mut c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: c_ushort,
}

/// Adds (`SIOCADDRT`, via `gateway` on the interface `dev`) or deletes (`SIOCDELRT`, any
/// interface, no gateway) a default route of the main table.
fn default_route(sock: &OwnedFd, req: libc::Ioctl, gateway: Option<Ipv4Addr>, dev: &str) -> std::io::Result<()> {
    let mut dev_name = [0 as c_char; libc::IFNAMSIZ];
    for (d, s) in dev_name.iter_mut().zip(dev.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as c_char;
    }
    let any = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: gateway.map(sockaddr_v4).unwrap_or(any),
        rt_genmask: any,
        rt_flags: libc::RTF_UP | if gateway.is_some() { libc::RTF_GATEWAY } else { 0 },
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: if gateway.is_some() { dev_name.as_mut_ptr() } else { std::ptr::null_mut() },
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT/SIOCDELRT take a struct rtentry, laid out as the kernel's; rt_dev is
    // null or a NUL-terminated name in `dev_name`, alive for the call.
    unsafe { ioctl(sock, req, &mut rt) }
}

/// Writes `bytes` to /dev/urandom (mixing them into the pool), then credits them with
/// RNDADDENTROPY (mixing them in once more); a refused credit is not an error.
fn add_entropy(bytes: &[u8]) -> std::io::Result<()> {
    let dev = OpenOptions::new().write(true).open("/dev/urandom")?;
    (&dev).write_all(bytes)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    info[0] = bytes.len().saturating_mul(8).min(i32::MAX as usize) as u32;
    info[1] = bytes.len().min(i32::MAX as usize) as u32;
    for (w, c) in info[2..].iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        *w = u32::from_ne_bytes(b);
    }
    let fd = OwnedFd::from(dev);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and then buf_size bytes after it;
    // `info` holds the header and at least buf_size bytes, alive for the call.
    let _ = unsafe { libc::ioctl(fd.as_raw_fd(), RNDADDENTROPY, info.as_mut_ptr()) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_agent::proto::InterfaceIdentity;

    fn iface(name: &str, mac: &str, address: &str, gateway: Option<&str>) -> Identity {
        Identity {
            interface: Some(InterfaceIdentity {
                name: name.into(),
                mac: mac.into(),
                address: address.into(),
                gateway: gateway.map(Into::into),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cidrs_give_address_prefix_and_netmask() {
        for (s, addr, prefix, mask) in [
            ("10.61.200.5/16", "10.61.200.5", 16, "255.255.0.0"),
            ("192.168.1.7/24", "192.168.1.7", 24, "255.255.255.0"),
            ("10.0.0.1/0", "10.0.0.1", 0, "0.0.0.0"),
            ("10.0.0.1/32", "10.0.0.1", 32, "255.255.255.255"),
            ("172.16.5.4/20", "172.16.5.4", 20, "255.255.240.0"),
            ("10.1.2.3/31", "10.1.2.3", 31, "255.255.255.254"),
        ] {
            let (a, p) = parse_cidr(s).unwrap();
            assert_eq!((a, p, netmask(p)), (addr.parse().unwrap(), prefix, mask.parse().unwrap()), "{s}");
        }
        for (s, why) in [
            ("10.61.200.5", "no /prefix"),
            ("10.61.200.5/33", "over 32"),
            ("10.61.200.5/", "not a number"),
            ("10.61.200.5/-1", "not a number"),
            ("10.61.200.5/+8", "not a number"),
            ("10.61.200.5/008", "not a number"),
            ("10.61.200/16", "not an IPv4 address"),
            ("10.61.200.256/16", "not an IPv4 address"),
            ("fe80::1/64", "not an IPv4 address"),
            ("0.0.0.0/0", "cannot be"),
            ("224.0.0.1/4", "cannot be"),
            ("255.255.255.255/32", "cannot be"),
            ("240.0.0.1/8", "cannot be"),
        ] {
            let e = parse_cidr(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn macs_are_six_unicast_octets() {
        assert_eq!(parse_mac("fe:1a:83:31:20:ff").unwrap(), [0xfe, 0x1a, 0x83, 0x31, 0x20, 0xff]);
        assert_eq!(parse_mac("02:AB:cd:00:00:01").unwrap(), [2, 0xab, 0xcd, 0, 0, 1]);
        for (s, why) in [
            ("fe:1a:83:31:20", "5 octets"),
            ("fe:1a:83:31:20:ff:00", "7 octets"),
            ("fe-1a-83-31-20-ff", "1 octets"),
            ("fe:1a:83:31:20:f", "two hex digits"),
            ("fe:1a:83:31:20:fff", "two hex digits"),
            ("fe:1a:83:31:20:+f", "two hex digits"),
            ("fe:1a:83:31:20:gg", "two hex digits"),
            ("00:00:00:00:00:00", "all zeros"),
            ("01:00:5e:00:00:01", "multicast"),
            ("ff:ff:ff:ff:ff:ff", "multicast"),
        ] {
            let e = parse_mac(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn names_hostnames_and_machine_ids() {
        for n in ["eth0", "enp0s3", "a", "abcdefghijklmno"] {
            check_interface_name(n).unwrap();
        }
        for n in ["", "abcdefghijklmnop", "a/b", "eth0:1", "eth 0", ".", ".."] {
            assert!(check_interface_name(n).is_err(), "{n:?}");
        }
        for h in ["clone-1", "a", "web.example.com", &"x".repeat(64)] {
            check_hostname(h).unwrap();
        }
        for h in ["", &"x".repeat(65), "under_score", "sp ace", "é", "a/b"] {
            assert!(check_hostname(h).is_err(), "{h:?}");
        }
        check_machine_id("0123456789abcdef0123456789abcdef").unwrap();
        for m in [
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "00000000000000000000000000000000",
            "",
        ] {
            assert!(check_machine_id(m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn plans_check_everything_and_name_the_culprit() {
        let ok = plan(&iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/16", Some("10.61.0.1"))).unwrap();
        assert_eq!(
            ok.interface,
            Some(InterfacePlan {
                name: "eth0".into(),
                mac: [0xfe, 0x1a, 0x83, 0x31, 0x20, 0xff],
                address: "10.61.200.5".parse().unwrap(),
                prefix: 16,
                netmask: "255.255.0.0".parse().unwrap(),
                gateway: Some("10.61.0.1".parse().unwrap()),
            })
        );
        assert_eq!(plan(&Identity::default()).unwrap().interface, None);
        let full = Identity {
            hostname: Some("clone-1".into()),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            entropy: vec![1; 64],
            wall_clock_ns: Some(1),
            ..iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/16", None)
        };
        let p = plan(&full).unwrap();
        assert_eq!(
            (p.hostname.as_deref(), p.machine_id.is_some(), p.entropy.len(), p.wall_clock_ns),
            (Some("clone-1"), true, 64, Some(1))
        );
        for (id, why) in [
            (iface("eth/0", "fe:1a:83:31:20:ff", "10.61.200.5/16", None), "interface name \"eth/0\": contains '/'"),
            (iface("eth0", "fe:1a:83:31:20", "10.61.200.5/16", None), "MAC \"fe:1a:83:31:20\" of eth0"),
            (iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/40", None), "address \"10.61.200.5/40\" of eth0"),
            (iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/16", Some("10.62.0.1")), "not on the interface's subnet"),
            (iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/16", Some("10.61.200.5")), "own address"),
            (iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/16", Some("gw")), "not an IPv4 address"),
            (iface("eth0", "fe:1a:83:31:20:ff", "10.61.200.5/32", Some("10.61.0.1")), "subnet 10.61.200.5/32"),
            (Identity { hostname: Some("bad_name".into()), ..Default::default() }, "hostname \"bad_name\""),
            (Identity { machine_id: Some("xyz".into()), ..Default::default() }, "machine id \"xyz\""),
        ] {
            let e = plan(&id).unwrap_err();
            assert!(e.contains(why), "{id:?}: {e}");
        }
    }

    #[test]
    fn link_local_addresses_are_read_from_the_kernels_table_and_made_from_a_mac() {
        let table = "fe80000000000000940218fffe935059 02 40 20 80     eth0\n\
                     fd000000000000000000000000000001 02 40 00 80     eth0\n\
                     fe80000000000000000000fffe000001 03 40 20 80     eth1\n\
                     00000000000000000000000000000001 01 80 10 80       lo\n\
                     garbage\n";
        let a: std::net::Ipv6Addr = "fe80::9402:18ff:fe93:5059".parse().unwrap();
        assert_eq!(link_locals(table, "eth0"), [(a, 64)]);
        assert_eq!(link_locals(table, "eth9"), []);
        assert_eq!(
            eui64_link_local([0x96, 0x02, 0x18, 0x93, 0x50, 0x59]),
            "fe80::9402:18ff:fe93:5059".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            eui64_link_local([0x94, 0x02, 0x18, 0x93, 0x50, 0x59]),
            "fe80::9602:18ff:fe93:5059".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn overwriting_leaves_exactly_the_new_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostname");
        let path = p.to_str().unwrap();
        overwrite(path, b"a-much-longer-name\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a-much-longer-name\n", "made when missing");
        overwrite(path, b"short\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short\n", "cut to the new length");
        overwrite(path, b"longer-again\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"longer-again\n");
        overwrite(path, b"same-length!\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"same-length!\n", "not cut when as long");
    }

    #[test]
    fn a_refused_identity_changes_nothing_and_says_so() {
        // Refused before any step, so this runs unprivileged: the hostname check comes first.
        let id = Identity { hostname: Some("no spaces".into()), wall_clock_ns: Some(0), ..Default::default() };
        let exit = apply(&id);
        assert_eq!(exit.code, None);
        assert!(exit.error.unwrap().starts_with("refused the identity: hostname"));
    }
}
