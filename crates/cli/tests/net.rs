//! Networking end to end: real CNI plugins, real VMs. A VM gets an IP like a container, VMs
//! reach each other, the host reaches published ports, VMs reach the outside through NAT, and
//! nothing is left behind after rm or after a supervisor is killed.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{fails, field, ok, prepared_root, until, until_ok, wait_for_log};

/// The tests of this file share the host's CNI network: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn console(root: &Path, vm: &str, line: &str) {
    let uid = field(root, vm, "{{.UID}}");
    let mut s = UnixStream::connect(root.join("vm").join(&uid).join("attach.sock")).unwrap();
    s.write_all(line.as_bytes()).unwrap();
}

fn http_get(addr: &str) -> String {
    until_ok(&format!("an HTTP answer from {addr}"), 30, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        if body.contains("200") {
            Ok(body)
        } else {
            Err(format!("answered {body:?}"))
        }
    })
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Everything of VM `uid` on the host: netns, IPAM reservations, nat rules.
fn leftovers(uid: &str, ip: &str) -> Vec<String> {
    let mut v = Vec::new();
    if sh("ip netns list").contains(uid) {
        v.push("netns".into());
    }
    let ipam = sh("ls /var/lib/cni/networks/ignite-cni-bridge/ 2>/dev/null");
    if !ip.is_empty() && ipam.lines().any(|l| l == ip) {
        v.push(format!("IPAM lease {ip}"));
    }
    if sh("iptables-save -t nat").contains(uid) {
        v.push("nat rules".into());
    }
    v
}

/// A namespace standing for a host outside: 172.31.254.2, reached from the host over a veth.
struct Outside {
    ns: String,
    server: std::process::Child,
    log: std::path::PathBuf,
}

impl Outside {
    fn new(dir: &Path) -> Outside {
        let ns = format!("igtest-out-{}", std::process::id() % 100000);
        let host_if = format!("igo{}", std::process::id() % 100000);
        let _ = Command::new("ip").args(["netns", "del", &ns]).stderr(std::process::Stdio::null()).status();
        for c in [
            format!("ip netns add {ns}"),
            format!("ip link add {host_if} type veth peer name eth0 netns {ns}"),
            format!("ip addr add 172.31.254.1/30 dev {host_if}"),
            format!("ip link set {host_if} up"),
            format!("ip -n {ns} addr add 172.31.254.2/30 dev eth0"),
            format!("ip -n {ns} link set eth0 up"),
            format!("ip -n {ns} link set lo up"),
        ] {
            assert!(Command::new("sh").arg("-c").arg(&c).status().unwrap().success(), "{c}");
        }
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/index.html"), "outside-world\n").unwrap();
        let log = dir.join("outside.log");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                "172.31.254.2",
                "--directory",
            ])
            .arg(dir.join("www"))
            .stdout(std::fs::File::create(dir.join("outside.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Outside { ns, server, log }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn vms_get_ips_reach_each_other_publish_ports_and_nat_out() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let outside = Outside::new(d.path());
    let port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    ok(&root, &["run", "busybox", "--name", "web", "--memory", "128MB", "-p", &format!("{port}:80")]);
    ok(&root, &["run", "busybox", "--name", "client", "--memory", "128MB"]);
    let web_ip = field(&root, "web", "{{.Status.Network.IPAddresses[0]}}");
    let client_ip = field(&root, "client", "{{.Status.Network.IPAddresses[0]}}");
    assert!(
        web_ip.starts_with("10.61.") && client_ip.starts_with("10.61.") && web_ip != client_ip,
        "{web_ip} {client_ip}"
    );
    let ps = ok(&root, &["ps"]);
    assert!(ps.contains(&web_ip) && ps.contains(&format!("0.0.0.0:{port}->80/tcp")), "{ps}");
    wait_for_log(&root, "web", "IGNITE-BUSYBOX-READY", 90);
    wait_for_log(&root, "client", "IGNITE-BUSYBOX-READY", 90);
    // The guest learnt its address from the kernel command line (the kernel's log: its
    // informational lines are not on the console).
    common::until_exec_works(&root, "web", 60);
    let dmesg = ok(&root, &["exec", "web", "dmesg"]);
    assert!(dmesg.contains("IP-Config: Complete") && dmesg.contains(&format!("ipaddr={web_ip}")), "{dmesg}");
    console(
        &root,
        "web",
        "mkdir -p /www && echo hello-from-vm > /www/index.html && httpd -p 80 -h /www && echo HTTPD-UP\n",
    );
    wait_for_log(&root, "web", "HTTPD-UP", 30);
    // The host reaches the VM directly and through the published port.
    assert!(http_get(&format!("{web_ip}:80")).contains("hello-from-vm"));
    assert!(http_get(&format!("10.61.0.1:{port}")).contains("hello-from-vm"));
    // VM to VM.
    console(&root, "client", &format!("wget -q -O - http://{web_ip}/ | sed 's/^/VM2VM:/'\n"));
    wait_for_log(&root, "client", "VM2VM:hello-from-vm", 30);
    // VM to the outside, masqueraded behind the host.
    console(&root, "client", "wget -q -O - http://172.31.254.2:8000/ | sed 's/^/OUT:/'\n");
    wait_for_log(&root, "client", "OUT:outside-world", 30);
    let seen = std::fs::read_to_string(&outside.log).unwrap();
    assert!(seen.contains("172.31.254.1"), "the outside saw {seen:?}, not the host's address");
    assert!(!seen.contains(&client_ip), "the VM's address leaked past NAT");
    // A second VM cannot take a published port.
    fails(
        &root,
        &["run", "busybox", "--name", "dup", "-p", &format!("{port}:80")],
        1,
        "already published by VM \"web\"",
    );
    let (wuid, cuid) = (field(&root, "web", "{{.UID}}"), field(&root, "client", "{{.UID}}"));
    ok(&root, &["rm", "-f", "web", "client"]);
    assert!(leftovers(&wuid, &web_ip).is_empty(), "web left {:?}", leftovers(&wuid, &web_ip));
    assert!(leftovers(&cuid, &client_ip).is_empty(), "client left {:?}", leftovers(&cuid, &client_ip));
}

#[test]
fn killed_supervisor_releases_the_network_on_recovery_and_fixed_ips_work() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "victim", "--memory", "128MB", "--ip", "10.61.200.7"]);
    assert_eq!(field(&root, "victim", "{{.Status.Network.IPAddresses[0]}}"), "10.61.200.7");
    let uid = field(&root, "victim", "{{.UID}}");
    let pid = field(&root, "victim", "{{.Status.Runtime.Pid}}");
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    // Seen stopped once the supervisor is gone: an exiting one (its command line already
    // empty, its threads and files not yet released) still counts as alive.
    until("the VM to be seen stopped after its supervisor's kill -9", 10, || {
        ok(&root, &["ps", "-a"]).lines().any(|l| l.contains("victim") && l.contains("Stopped"))
    });
    assert!(!leftovers(&uid, "10.61.200.7").is_empty(), "expected the crash to leave state behind");
    // A read changes nothing: `ps` showed the VM stopped and left its network to recovery.
    assert_eq!(field(&root, "victim", "{{.Status.Running}}"), "false");
    assert!(!leftovers(&uid, "10.61.200.7").is_empty(), "a read released the network");
    // The next command that changes VMs recovers first: the end is recorded, the network released.
    ok(&root, &["create", "busybox", "--name", "bystander", "--memory", "128MB"]);
    assert!(leftovers(&uid, "10.61.200.7").is_empty(), "left {:?}", leftovers(&uid, "10.61.200.7"));
    ok(&root, &["rm", "bystander"]);
    ok(&root, &["start", "victim"]);
    assert_eq!(field(&root, "victim", "{{.Status.Network.IPAddresses[0]}}"), "10.61.200.7");
    ok(&root, &["rm", "-f", "victim"]);
    assert!(leftovers(&uid, "10.61.200.7").is_empty());
}

#[test]
fn network_faults_are_clear_and_leave_nothing() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(common::bin());
        c.args(args).env("IGNITE_ROOT", &root);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // The host's ignite namespaces (other VMs of the host may come and go meanwhile: only a
    // new one is this test's).
    let ignite_ns = || -> std::collections::BTreeSet<String> {
        sh("ip netns list").split_whitespace().filter(|n| n.starts_with("ignite-")).map(String::from).collect()
    };
    let before_ns = ignite_ns();
    // Missing plugins.
    let o = run(&[("IGNITE_CNI_BIN_DIR", "/nonexistent")], &["run", "busybox", "--name", "np"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("apt-get install containernetworking-plugins"));
    // A broken conflist.
    let conf = d.path().join("net.d");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("10-broken.conflist"), "{ not json").unwrap();
    let o = run(&[("IGNITE_CNI_CONF_DIR", conf.to_str().unwrap())], &["run", "busybox", "--name", "bc"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("invalid CNI configuration"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An exhausted subnet: a /30 has 2 usable addresses, one of them the gateway.
    std::fs::remove_file(conf.join("10-broken.conflist")).unwrap();
    std::fs::write(
        conf.join("10-tiny.conflist"),
        r#"{"cniVersion":"1.0.0","name":"ignite-test-tiny","plugins":[{"type":"bridge","bridge":"igtiny0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","subnet":"10.62.0.0/30"}}]}"#,
    )
    .unwrap();
    let env = [("IGNITE_CNI_CONF_DIR", conf.to_str().unwrap())];
    let o = run(&env, &["run", "busybox", "--name", "t1", "--memory", "64MB"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&env, &["run", "busybox", "--name", "t2", "--memory", "64MB"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no IP addresses available"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&env, &["rm", "-f", "t1"]);
    assert!(o.status.success());
    let _ = Command::new("ip").args(["link", "del", "igtiny0"]).status();
    // Nothing left: no VMs from failed runs, no namespaces.
    assert_eq!(ok(&root, &["ps", "-a", "-q"]).trim(), "");
    let left: Vec<String> = ignite_ns().difference(&before_ns).cloned().collect();
    assert!(left.is_empty(), "network namespaces left by failed runs: {left:?}");
}

#[test]
fn guests_running_a_dhcp_client_get_the_same_lease() {
    let _g = serial();
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "dhcp", "--memory", "128MB"]);
    let ip = field(&root, "dhcp", "{{.Status.Network.IPAddresses[0]}}");
    wait_for_log(&root, "dhcp", "IGNITE-BUSYBOX-READY", 90);
    console(
        &root,
        "dhcp",
        "printf '#!/bin/sh\\n[ \"$1\" = bound ] && echo LEASE=$ip/$subnet/$router/$hostname\\n' > /tmp/s; chmod +x /tmp/s; udhcpc -i eth0 -n -q -f -s /tmp/s\n",
    );
    wait_for_log(&root, "dhcp", &format!("LEASE={ip}/255.255.0.0/10.61.0.1/dhcp"), 60);
    // A renewal goes to the server's address (so to the gateway's MAC), and its answer to the
    // client's: a unicast IPv4 packet reaching the guest (udhcpc's own socket may miss it: it
    // sends from a socket it closes at once, which the answer, arriving first, is queued on).
    // With -T 30 the client waits 30 s before it broadcasts: an answer within 20 s is the
    // renewal's.
    console(
        &root,
        "dhcp",
        "printf '#!/bin/sh\\necho EVENT=$1/$ip\\n' > /tmp/r; chmod +x /tmp/r; udhcpc -i eth0 -f -s /tmp/r -T 30 -t 3 > /tmp/u.log 2>&1 &\n",
    );
    // (Not there until the console's shell has run the line.)
    let log = || ok(&root, &["exec", "dhcp", "--", "sh", "-c", "cat /tmp/u.log 2>/dev/null; true"]);
    until("udhcpc's lease", 60, || log().contains(&format!("EVENT=bound/{ip}")));
    // The IPv4 packets the guest delivered that were not broadcasts.
    let unicast_in = || {
        let counters = ok(&root, &["exec", "dhcp", "cat", "/proc/net/snmp", "/proc/net/netstat"]);
        let field = |table: &str, name: &str| -> u64 {
            let mut rows = counters.lines().filter(|l| l.starts_with(&format!("{table}: ")));
            let (names, values) = (rows.next().unwrap_or_default(), rows.next().unwrap_or_default());
            let i = names.split_whitespace().position(|x| x == name).unwrap_or_else(|| panic!("no {name}: {counters}"));
            values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{counters}"))
        };
        field("Ip", "InDelivers") - field("IpExt", "InBcastPkts")
    };
    let before = unicast_in();
    ok(&root, &["exec", "dhcp", "--", "sh", "-c", "kill -USR1 $(pidof udhcpc)"]);
    until("a unicast answer to the renewal", 20, || unicast_in() > before);
    let l = log();
    assert!(l.contains("sending renew to server 10.61.0.1"), "{l}");
    assert!(!l.contains("broadcasting renew"), "the answer came only to a broadcast:\n{l}");
    ok(&root, &["rm", "-f", "dhcp"]);
}
