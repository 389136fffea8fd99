//! What a VM holds only while it runs — its network, its jail's cgroup and root, its sockets —
//! and their release, by whoever finds the VM ended (its supervisor, `stop`/`kill`, recovery).

use std::path::Path;

use crate::vmdir::VmDir;

/// What a VM holds only while it runs: its network and its sockets.
pub fn release_resources(dir: &Path) {
    let dir = VmDir::new(dir);
    crate::network::release(&dir);
    // The jail's cgroup and root (a supervisor killed before it removed them).
    crate::cgroup::release(&dir.cgroup_record());
    let _ = std::fs::remove_dir(crate::jail::root_for(&dir.uid()));
    for f in [dir.attach_socket(), dir.agent_socket()] {
        let _ = std::fs::remove_file(f);
    }
    for f in ignite_vmm::all_runtime_files(&dir) {
        let _ = std::fs::remove_file(f);
    }
}
