//! Creating a VM's named network namespace (`/run/netns/<name>`, the layout `ip netns` uses and
//! reads) without starting `ip`: one thread unshares its network namespace and bind-mounts it
//! there. Saves the 2–3 ms of an `ip netns add` per VM start. The one `unsafe` call of this
//! crate lives here.
//!
//! Only taken when `/run/netns` is already a mount point (iproute2 makes it a shared one the
//! first time it creates a namespace, so that namespaces mounted there propagate to other
//! mount namespaces); otherwise, and on any failure, `ip netns add` does it.
#![allow(unsafe_code)]

use std::path::Path;

use crate::{run, NetError};

const NETNS_DIR: &str = "/run/netns";

fn is_mount_point(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(dir)))
        .unwrap_or(false)
}

/// Creates the named namespace `name` (which must not exist).
pub fn create(name: &str) -> Result<(), NetError> {
    if is_mount_point(NETNS_DIR) && create_in_process(name).is_ok() {
        return Ok(());
    }
    run("ip", &["netns", "add", name], None).map(|_| ())
}

fn create_in_process(name: &str) -> std::io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    std::fs::File::options().write(true).create_new(true).open(&path)?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: only the network namespace is unshared, and only for this short-lived
        // thread, which touches no file descriptor of another thread; the `FILES` hazard
        // `unshare_unsafe` documents does not arise.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_made_in_process_is_one_ip_knows() {
        assert_eq!(rustix::process::geteuid().as_raw(), 0, "network namespaces need root: run the tests as root");
        let name = format!("ignite-test-{}", std::process::id());
        create(&name).unwrap();
        let listed = run("ip", &["netns", "list"], None).unwrap();
        assert!(listed.contains(&name), "{listed}");
        let lo = run("ip", &["-n", &name, "link", "show", "lo"], None).unwrap();
        assert!(lo.contains("lo"));
        run("ip", &["netns", "del", &name], None).unwrap();
        assert!(!Path::new(NETNS_DIR).join(&name).exists());
        // Side by side with `ip netns add`.
        let (mut ours, mut ip) = (Vec::new(), Vec::new());
        for i in 0..10 {
            let n = format!("{name}-{i}");
            let t = std::time::Instant::now();
            create(&n).unwrap();
            ours.push(t.elapsed());
            run("ip", &["netns", "del", &n], None).unwrap();
            let t = std::time::Instant::now();
            run("ip", &["netns", "add", &n], None).unwrap();
            ip.push(t.elapsed());
            run("ip", &["netns", "del", &n], None).unwrap();
        }
        ours.sort();
        ip.sort();
        println!("FIGURE netns create: in-process p50 {:?}, ip netns add p50 {:?}", ours[5], ip[5]);
    }
}
