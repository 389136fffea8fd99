//! Twenty attachments at once on the real CNI plugins: distinct addresses, and nothing left
//! after detaching. Needs root and containernetworking-plugins (installed by
//! scripts/setup-host.sh); says SKIPPED loudly otherwise.

use std::collections::HashSet;

use ignite_net::{attach, detach, AttachOptions, CniConfig};

#[test]
fn twenty_at_once_get_distinct_addresses_and_leave_nothing() {
    if !rustix_is_root() {
        eprintln!("SKIPPED: needs root (network namespaces, bridges, iptables)");
        return;
    }
    let cni = CniConfig::default();
    if !cni.bin_dirs.iter().any(|d| d.join("bridge").is_file()) {
        eprintln!("SKIPPED: CNI plugins missing: apt-get install containernetworking-plugins");
        return;
    }
    let ids: Vec<String> = (0..20).map(|i| format!("cc{:014x}", std::process::id() as u64 * 100 + i)).collect();
    let handles: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            std::thread::spawn(move || attach(&id, &AttachOptions { cni: CniConfig::default(), ..Default::default() }))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // What did attach is detached before anything is asserted: a failing run leaves nothing.
    let atts: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let detached: Vec<_> = atts.iter().map(|a| detach(a, &cni)).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of 20 attachments failed: {failed:?}", failed.len());
    let ips: HashSet<_> = atts.iter().map(|a| a.ip).collect();
    assert_eq!(ips.len(), 20, "duplicate addresses: {:?}", atts.iter().map(|a| a.ip).collect::<Vec<_>>());
    for d in detached {
        d.expect("detach");
    }
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    let ipam = std::fs::read_dir("/var/lib/cni/networks/ignite-cni-bridge")
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    let nat = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    for (a, id) in atts.iter().zip(&ids) {
        assert!(!netns.contains(id.as_str()), "netns of {id} left");
        assert!(!ipam.contains(&a.ip.to_string()), "lease {} left", a.ip);
        assert!(!nat.contains(id.as_str()), "nat rules of {id} left");
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
