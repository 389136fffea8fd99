//! Attaching a VM to a CNI network: namespace, CNI ADD, tap + `tc mirred` redirects.
//!
//! Inside the VM's namespace the CNI plugin leaves a veth `eth0` with the VM's address. The
//! address is removed from it (the namespace's own stack must not answer for the guest), a
//! tap `tap0` is created, and every frame arriving on one is redirected out of the other. The
//! guest's NIC gets `eth0`'s MAC and IP, so to the bridge, the IPAM and portmap the VM looks
//! exactly like the container the plugins configured.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::{CniConfig, Invocation, PortMapping};
use crate::{run, NetError};

/// Interface the plugins create inside the namespace.
pub const IFNAME: &str = "eth0";
/// The VMM's tap inside the namespace.
pub const TAP: &str = "tap0";

/// What to attach.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    pub cni: CniConfig,
    /// Network name (first conflist when `None`).
    pub network: Option<String>,
    pub ports: Vec<PortMapping>,
    /// A fixed address (host-local's `IP` CNI argument).
    pub ip: Option<Ipv4Addr>,
    /// The namespace's name (default [`netns_name`] of the VM's id).
    pub netns: Option<String>,
    /// The uid (and gid) that owns the VM's taps, so that a VMM running as it opens them
    /// without privileges (a jailed VMM); `None`: root's.
    pub tap_owner: Option<u32>,
}

/// A VM's network attachment; saved so that it can be torn down after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub network: String,
    pub conflist: PathBuf,
    pub cni_args: String,
    pub ports: Vec<PortMapping>,
    pub result: Value,
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<String>,
}

/// Namespace name of a VM.
pub fn netns_name(id: &str) -> String {
    format!("ignite-{id}")
}

fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

impl Attachment {
    /// Netmask in dotted form.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits: u32 = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix_len.min(32))) };
        Ipv4Addr::from(bits)
    }

    /// The kernel's `ip=` argument: static configuration, no DHCP wait.
    pub fn kernel_ip_arg(&self, hostname: &str) -> String {
        let gw = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        let host: String =
            hostname.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').take(63).collect();
        let mut s = format!("ip={}::{gw}:{}:{host}:eth0:off", self.ip, self.netmask());
        for d in self.dns.iter().filter(|d| d.parse::<Ipv4Addr>().is_ok()).take(2) {
            s.push(':');
            s.push_str(d);
        }
        s
    }

    fn invocation<'a>(&'a self, netns: &'a str) -> Invocation<'a> {
        Invocation { container_id: &self.container_id, netns, ifname: IFNAME, args: &self.cni_args, ports: &self.ports }
    }
}

/// Address, prefix length, gateway, MAC and DNS servers from a CNI result.
type Parsed = (Ipv4Addr, u8, Option<Ipv4Addr>, String, Vec<String>);

fn parse_result(result: &Value) -> Result<Parsed, NetError> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let ip = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| {
            let (a, p) = i["address"].as_str()?.split_once('/')?;
            let a: Ipv4Addr = a.parse().ok()?;
            let gw = i["gateway"].as_str().and_then(|g| g.parse().ok());
            let mac = i["interface"]
                .as_u64()
                .and_then(|n| ifaces.get(n as usize))
                .and_then(|f| f["mac"].as_str())
                .map(String::from);
            Some((a, p.parse::<u8>().ok()?, gw, mac))
        })
        .ok_or(NetError::NoAddress)?;
    let mac = ip.3.or_else(|| {
        ifaces
            .iter()
            .find(|f| f["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
            .and_then(|f| f["mac"].as_str())
            .map(String::from)
    });
    let dns = result["dns"]["nameservers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect();
    Ok((ip.0, ip.1, ip.2, mac.unwrap_or_default(), dns))
}

/// A MAC written `aa:bb:cc:dd:ee:ff` (either case), as bytes; None for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `mac` as `ip` writes it.
fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The MAC of the network's side of the link, as CNI reports it: its first interface outside
/// the namespace (the bridge plugin's bridge, which is the gateway when it says so; ptp's
/// host end). None when it reports none, or not one that parses.
fn gateway_mac(result: &Value) -> Option<[u8; 6]> {
    let m = result["interfaces"].as_array()?.iter().find(|f| f["sandbox"].as_str().is_none_or(str::is_empty))?["mac"]
        .as_str()?;
    parse_mac(m).filter(|m| *m != [0; 6])
}

/// What attaching VM `id` will allocate, before anything is allocated: its namespace, network,
/// container id and arguments. The caller records this first (`vm/<uid>/network.json`), so
/// that a kill at any later step leaves a record that [`detach`] can release.
pub fn plan(id: &str, opts: &AttachOptions) -> Result<Attachment, NetError> {
    let list = opts.cni.load(opts.network.as_deref())?;
    let mut cni_args = String::from("IgnoreUnknown=1");
    if let Some(ip) = opts.ip {
        cni_args.push_str(&format!(";IP={ip}"));
    }
    Ok(Attachment {
        container_id: id.to_string(),
        netns: opts.netns.clone().unwrap_or_else(|| netns_name(id)),
        network: list.name.clone(),
        conflist: list.path.clone(),
        cni_args,
        ports: opts.ports.clone(),
        result: Value::Null,
        tap: TAP.into(),
        mac: String::new(),
        ip: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: None,
        dns: Vec::new(),
    })
}

/// Attaches VM `id`: returns the attachment (namespace, address, MAC, tap). Plans and
/// allocates in one step; see [`plan`] and [`attach_planned`] to record the plan in between.
pub fn attach(id: &str, opts: &AttachOptions) -> Result<Attachment, NetError> {
    attach_planned(plan(id, opts)?, opts)
}

/// Allocates what `att` (from [`plan`]) describes: namespace, CNI ADD, tap and redirects.
/// On failure everything allocated so far is released again.
pub fn attach_planned(att: Attachment, opts: &AttachOptions) -> Result<Attachment, NetError> {
    let list = opts.cni.load(Some(&att.network))?;
    let ns = make_netns(&att, &list)?;
    // The tap needs nothing from CNI: made in the namespace while the plugins run.
    let (added, tap) = std::thread::scope(|s| {
        let tap = s.spawn(|| make_tap(&ns, opts, true));
        let added = list.add(&opts.cni, &att.invocation(&netns_path(&ns)));
        (added, tap.join().unwrap_or_else(|_| Err(panicked("ip -batch (tap)"))))
    });
    connect_added(att, added.and_then(|r| tap.map(|_| r)), &opts.cni)
}

/// The first half of [`attach_planned`], for a VMM that must start before the address is
/// known (a guest resumed from a snapshot, told its address once it runs): the namespace and
/// the tap, nothing from CNI. [`complete`] does the rest. On failure, what it made is released.
///
/// The tap is left down, so that nothing the guest sends reaches the network, nor anything
/// the guest, until [`open`]: a resumed guest is its snapshot's machine, MAC and address
/// included, until it is given its own, and what it had pending when the snapshot was taken
/// (an IPv6 router solicitation, say) would otherwise go out under its source's MAC, which
/// the bridge then learns on the wrong port.
pub fn prepare(att: &Attachment, opts: &AttachOptions) -> Result<(), NetError> {
    let list = opts.cni.load(Some(&att.network))?;
    let ns = make_netns(att, &list)?;
    make_tap(&ns, opts, false).inspect_err(|_| {
        let _ = detach(att, &opts.cni);
    })
}

/// Brings the tap of a [`prepare`]d attachment up: the guest's frames flow from now on. In
/// process ([`crate::link`]: it is on a clone's way to running); by `ip` if that fails, which
/// says why when it fails too.
pub fn open(att: &Attachment) -> Result<(), NetError> {
    match crate::link::set_up(Path::new(&netns_path(&att.netns)), TAP) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!("bringing {TAP} up in {} in process failed ({e}); by `ip`", att.netns);
            run("ip", &["-n", &att.netns, "link", "set", TAP, "up"], None).map(|_| ())
        }
    }
}

/// The second half of [`attach_planned`] after [`prepare`]: CNI ADD, then the address moved to
/// the guest and the redirects. On failure everything is released, the namespace included.
pub fn complete(att: Attachment, opts: &AttachOptions) -> Result<Attachment, NetError> {
    let added = opts
        .cni
        .load(Some(&att.network))
        .and_then(|list| list.add(&opts.cni, &att.invocation(&netns_path(&att.netns))));
    connect_added(att, added, &opts.cni)
}

/// [`connect`]s what CNI ADD gave; when it failed, what some plugins allocated before one
/// failed is released (found from the IPAM's leases), the namespace with it.
fn connect_added(att: Attachment, added: Result<Value, NetError>, cni: &CniConfig) -> Result<Attachment, NetError> {
    match added {
        Ok(r) => connect(att, r, cni),
        Err(e) => {
            let _ = detach(&att, cni);
            Err(e)
        }
    }
}

/// The VM's namespace, made afresh (one left by a crash is removed first: its CNI state is
/// released by recovery), after the bridge has a MAC.
fn make_netns(att: &Attachment, list: &crate::cni::NetworkList) -> Result<String, NetError> {
    for p in &list.plugins {
        if p["type"] == "bridge" {
            ensure_bridge_mac(p["bridge"].as_str().unwrap_or("cni0"))?;
        }
    }
    let ns = att.netns.clone();
    if std::path::Path::new(&netns_path(&ns)).exists() {
        let _ = run("ip", &["netns", "del", &ns], None);
    }
    crate::netns::create(&ns)?;
    Ok(ns)
}

/// The VMM's tap in namespace `ns` (owned by the VMM's uid when it is jailed), up or not, and
/// loopback up.
fn make_tap(ns: &str, opts: &AttachOptions, up: bool) -> Result<(), NetError> {
    let owner = opts.tap_owner.map(|u| format!(" user {u} group {u}")).unwrap_or_default();
    let up = if up { format!("link set {TAP} up\n") } else { String::new() };
    let tapcmds = format!("link set lo up\ntuntap add dev {TAP} mode tap{owner}\n{up}");
    run("ip", &["-n", ns, "-batch", "-"], Some(&tapcmds)).map(|_| ())
}

/// Takes CNI's `result` into `att`, moves the address from the veth to the guest (the tap
/// carries the gateway address as the DHCP server's) and redirects every frame between veth
/// and tap. On failure everything is released.
fn connect(mut att: Attachment, result: Value, cni: &CniConfig) -> Result<Attachment, NetError> {
    let ns = att.netns.clone();
    att.result = result.clone();
    let finish = (|| {
        let (ip, prefix, gw, mac, dns) = parse_result(&result)?;
        let mac = if mac.is_empty() { read_mac(&ns)? } else { mac };
        att.ip = ip;
        att.prefix_len = prefix;
        att.gateway = gw;
        att.mac = mac;
        att.dns = dns;
        // The tap carries the gateway's address (the DHCP server identifier) with the VM's as
        // its peer, and the gateway's MAC, and knows the guest's MAC without asking (see
        // `dhcp`). Its MAC first: a change of it flushes the neighbour table.
        let server = match gw {
            Some(g) => {
                let gw_mac = gateway_mac(&result).map(|m| format!("link set dev {TAP} address {}\n", format_mac(m)));
                let neigh = parse_mac(&att.mac)
                    .map(|m| format!("neigh replace {ip} lladdr {} dev {TAP} nud permanent\n", format_mac(m)));
                format!(
                    "{}addr add {g} peer {ip}/32 dev {TAP}\n{}",
                    gw_mac.unwrap_or_default(),
                    neigh.unwrap_or_default()
                )
            }
            None => String::new(),
        };
        let ipcmds = format!("addr flush dev {IFNAME}\n{server}");
        let tccmds = format!(
            "qdisc add dev {IFNAME} ingress\n\
             filter add dev {IFNAME} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {TAP}\n\
             qdisc add dev {TAP} ingress\n\
             filter add dev {TAP} parent ffff: prio 1 protocol ip u32 match ip protocol 17 0xff match ip dport 67 0xffff flowid ffff:1\n\
             filter add dev {TAP} parent ffff: prio 2 protocol all u32 match u32 0 0 action mirred egress redirect dev {IFNAME}\n"
        );
        // Addresses and redirects are independent: both at once.
        let (ip, tc) = std::thread::scope(|s| {
            let ip = s.spawn(|| run("ip", &["-n", &ns, "-batch", "-"], Some(&ipcmds)));
            let tc = run("tc", &["-n", &ns, "-batch", "-"], Some(&tccmds));
            (ip.join().unwrap_or_else(|_| Err(panicked("ip -batch (addresses)"))), tc)
        });
        ip?;
        tc?;
        Ok::<(), NetError>(())
    })();
    if let Err(e) = finish {
        let _ = detach(&att, cni);
        return Err(e);
    }
    Ok(att)
}

fn panicked(what: &str) -> NetError {
    NetError::Command { command: what.to_string(), stderr: "the thread running it panicked".into() }
}

/// Waits until interface `ifname` exists in namespace `netns` (someone else creates it: Weave
/// Ignite's extra interfaces appear in the VM's namespace after it exists).
pub fn wait_for_interface(netns: &str, ifname: &str, timeout: std::time::Duration) -> Result<(), NetError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if run("ip", &["-n", netns, "link", "show", ifname], None).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(NetError::Command {
                command: format!("ip -n {netns} link show {ifname}"),
                stderr: format!(
                    "interface {ifname} did not appear in network namespace {netns} within {} s (create it there, e.g. `ip -n {netns} link add {ifname} type veth`)",
                    timeout.as_secs()
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Connects interface `ifname` of namespace `netns` to a new tap `tap` there, frames redirected
/// both ways by tc (Weave Ignite's `tc-redirect` mode); returns the interface's MAC, which the
/// guest's NIC takes.
pub fn redirect_extra(netns: &str, ifname: &str, tap: &str, owner: Option<u32>) -> Result<String, NetError> {
    let out = run("ip", &["-n", netns, "-j", "link", "show", ifname], None)?;
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mac = v[0]["address"].as_str().map(String::from).ok_or(NetError::NoAddress)?;
    let owner = owner.map(|u| format!(" user {u} group {u}")).unwrap_or_default();
    let ipcmds = format!("link set {ifname} up\ntuntap add dev {tap} mode tap{owner}\nlink set {tap} up\n");
    run("ip", &["-n", netns, "-batch", "-"], Some(&ipcmds))?;
    let tccmds = format!(
        "qdisc add dev {ifname} ingress\n\
         filter add dev {ifname} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {tap}\n\
         qdisc add dev {tap} ingress\n\
         filter add dev {tap} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {ifname}\n"
    );
    run("tc", &["-n", netns, "-batch", "-"], Some(&tccmds))?;
    Ok(mac)
}

/// Newer kernels (6.x) create bridges with an all-zero MAC until a port joins, and the bridge
/// plugin of containernetworking-plugins 1.1 then fails ("could not set bridge's mac: invalid
/// argument") when it pins the bridge's MAC to itself. Give the bridge a stable, locally
/// administered MAC first (derived from its name).
fn ensure_bridge_mac(name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() > 15
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(NetError::Config { path: PathBuf::new(), message: format!("invalid bridge name {name:?}") });
    }
    let sys = format!("/sys/class/net/{name}/address");
    let current = std::fs::read_to_string(&sys).ok();
    if current.as_deref().map(str::trim).is_some_and(|m| m != "00:00:00:00:00:00") {
        return Ok(());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let mac = format!("02:1e:{:02x}:{:02x}:{:02x}:{:02x}", h >> 24, (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
    if current.is_none() {
        // Created concurrently by another start: fine.
        let _ = run("ip", &["link", "add", name, "type", "bridge"], None);
    }
    run("ip", &["link", "set", name, "address", &mac], None)?;
    Ok(())
}

fn read_mac(ns: &str) -> Result<String, NetError> {
    let out = run("ip", &["-n", ns, "-j", "link", "show", IFNAME], None)?;
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v[0]["address"].as_str().map(String::from).ok_or(NetError::NoAddress)
}

/// Releases everything `attach` took: CNI DEL (IPAM lease, veth, NAT and port rules) and the
/// namespace. Idempotent; safe to call after a crash from the saved attachment.
pub fn detach(att: &Attachment, cni: &CniConfig) -> Result<(), NetError> {
    let path = netns_path(&att.netns);
    let ns_exists = std::path::Path::new(&path).exists();
    let list = cni.load(Some(&att.network));
    // A record saved before CNI ADD returned (a kill in between) has no result: what the
    // plugins allocated is found from the IPAM's leases, so that DEL still gets the addresses
    // whose rules (firewall, masquerading) it must remove.
    let (ip, prefix_len, result) = match (&list, att.result.is_null()) {
        (Ok(list), true) => match leased(list, &att.container_id).first() {
            Some((ip, prefix)) => {
                let r = serde_json::json!({
                    "cniVersion": list.cni_version,
                    "interfaces": [{"name": IFNAME, "sandbox": path}],
                    "ips": [{"address": format!("{ip}/{prefix}"), "interface": 0}],
                });
                (*ip, *prefix, r)
            }
            None => (att.ip, att.prefix_len, Value::Null),
        },
        _ => (att.ip, att.prefix_len, att.result.clone()),
    };
    if ns_exists && ip != Ipv4Addr::UNSPECIFIED {
        // The bridge plugin finds what to un-masquerade from the interface's addresses, which
        // attach moved to the guest: give it back first (harmless if already there).
        let cidr = format!("{ip}/{prefix_len}");
        let _ = run("ip", &["-n", &att.netns, "addr", "add", &cidr, "dev", IFNAME], None);
    }
    // Whether a failed DEL still holds the IPAM's lease (looked at only when it failed).
    let (del, lease_held) = match list {
        Ok(list) => {
            // Plugins accept DEL of a namespace that is gone; pass it only if it exists.
            let p = if ns_exists { path.clone() } else { String::new() };
            let del = list.del(cni, &att.invocation(&p), (!result.is_null()).then_some(&result));
            let held = del.is_err() && !leased(&list, &att.container_id).is_empty();
            (del, held)
        }
        Err(e) => (Err(e), true),
    };
    if ns_exists {
        run("ip", &["netns", "del", &att.netns], None)?;
    }
    // Whatever a plugin could not remove (e.g. its namespace was already gone after a crash):
    // NAT rules are tagged with the container id in their comment.
    let nat_clean = scrub_nat_rules(&att.container_id);
    match del {
        // A DEL that failed on what an interrupted ADD never made (a run killed inside the
        // bridge plugin's ADD: its DEL releases the lease, then fails on the masquerading chain
        // that was never made) left nothing once scrubbed: the namespace is gone (above), no
        // lease, no tagged rule. Anything still there keeps the error (and the record, for a
        // retry).
        Err(e) if !lease_held && nat_clean => {
            tracing::debug!("CNI DEL of {} failed on what was never made, nothing is left: {e}", att.container_id);
            Ok(())
        }
        other => other,
    }
}

/// The addresses (with the subnet's prefix length) that the host-local IPAM of `list` has
/// leased to `container_id`, read from its lease files (`<dataDir>/<network>/<ip>`, holding
/// the container id on their first line).
pub fn leased(list: &crate::cni::NetworkList, container_id: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    for p in &list.plugins {
        let ipam = &p["ipam"];
        if ipam["type"] != "host-local" {
            continue;
        }
        let data_dir = ipam["dataDir"].as_str().unwrap_or("/var/lib/cni/networks");
        let prefix = ipam["subnet"]
            .as_str()
            .or_else(|| ipam["ranges"][0][0]["subnet"].as_str())
            .and_then(|s| s.split_once('/'))
            .and_then(|(_, p)| p.parse::<u8>().ok())
            .unwrap_or(32);
        let dir = std::path::Path::new(data_dir).join(&list.name);
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else { continue };
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            if owner.lines().next().map(str::trim) == Some(container_id) {
                out.push((ip, prefix));
            }
        }
    }
    out.sort();
    out
}

/// Deletes nat-table rules and chains whose comment names container `id` (as the bridge and
/// portmap plugins tag them). Returns whether none is left: every one found was deleted.
pub fn scrub_nat_rules(id: &str) -> bool {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return false;
    }
    let Ok(dump) = run("iptables-save", &["-t", "nat"], None) else { return false };
    let mut clean = true;
    let tag = format!("id: \\\"{id}\\\"");
    let mut chains = Vec::new();
    for line in dump.lines().filter(|l| l.starts_with("-A ") && l.contains(&tag)) {
        let spec: Vec<String> = shell_split(&line[3..]);
        let mut args = vec!["-t", "nat", "-D"];
        args.extend(spec.iter().map(String::as_str));
        clean &= run("iptables", &args, None).is_ok();
        if let Some(i) = spec.iter().position(|a| *a == "-j") {
            if let Some(c) = spec.get(i + 1).filter(|c| c.starts_with("CNI-") && !c.starts_with("CNI-HOSTPORT")) {
                chains.push(c.to_string());
            }
        }
    }
    for c in chains {
        clean &= run("iptables", &["-t", "nat", "-F", &c], None).is_ok();
        clean &= run("iptables", &["-t", "nat", "-X", &c], None).is_ok();
    }
    clean
}

/// Splits an iptables-save rule into arguments (double quotes group, `\"` escapes).
fn shell_split(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && !(b[i] == b'"' && b[i - 1] != b'\\') {
                i += 1;
            }
            out.push(s[start..i.min(s.len())].replace("\\\"", "\""));
            i += 1;
        } else {
            let start = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            out.push(s[start..i].to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_bridge_result_and_formats_ip_arg() {
        let r = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "ignite0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "02:42:0a:3d:00:05", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"interface": 2, "address": "10.61.0.5/16", "gateway": "10.61.0.1"}],
            "dns": {"nameservers": ["10.0.0.53"]}
        });
        let (ip, p, gw, mac, dns) = parse_result(&r).unwrap();
        assert_eq!(
            (ip.to_string(), p, gw.unwrap().to_string(), mac.as_str()),
            ("10.61.0.5".into(), 16, "10.61.0.1".into(), "02:42:0a:3d:00:05")
        );
        // The network's side: the bridge; none that parses, or none outside the namespace: none.
        assert_eq!(gateway_mac(&r), Some([0xaa; 6]));
        assert_eq!(parse_mac("02:42:0A:3d:00:05"), Some([2, 0x42, 0x0a, 0x3d, 0, 5]));
        assert_eq!(format_mac([2, 0x42, 0x0a, 0x3d, 0, 5]), "02:42:0a:3d:00:05");
        for bad in ["", "02:42:0a:3d:00", "02:42:0a:3d:00:05:06", "2:42:0a:3d:00:05", "+2:42:0a:3d:00:05"] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        for bad in ["aa:aa:aa:aa:aa", "aa:aa:aa:aa:aa:zz", "00:00:00:00:00:00", "aa:aa:aa:aa:aa:aa\nlink"] {
            assert_eq!(gateway_mac(&json!({"interfaces": [{"name": "b", "mac": bad}]})), None, "{bad:?}");
        }
        assert_eq!(
            gateway_mac(&json!({"interfaces": [{"name": "eth0", "mac": "aa:aa:aa:aa:aa:aa", "sandbox": "/x"}]})),
            None
        );
        let att = Attachment {
            container_id: "c".into(),
            netns: "n".into(),
            network: "net".into(),
            conflist: "/x".into(),
            cni_args: String::new(),
            ports: vec![],
            result: r,
            tap: TAP.into(),
            mac,
            ip,
            prefix_len: p,
            gateway: gw,
            dns,
        };
        assert_eq!(att.kernel_ip_arg("vm1"), "ip=10.61.0.5::10.61.0.1:255.255.0.0:vm1:eth0:off:10.0.0.53");
        assert!(parse_result(&json!({"ips": []})).is_err());
        let rule = r#"POSTROUTING -s 10.61.0.4/32 -m comment --comment "name: \"n\" id: \"abc\"" -j CNI-6fff"#;
        assert_eq!(
            shell_split(rule),
            vec![
                "POSTROUTING",
                "-s",
                "10.61.0.4/32",
                "-m",
                "comment",
                "--comment",
                "name: \"n\" id: \"abc\"",
                "-j",
                "CNI-6fff"
            ]
        );
    }
}
