//! A cgroup per VM, holding its VMM: memory (guest memory plus the VMM's own), CPU (its vCPUs'
//! worth plus one for the VMM's own threads) and a process count, so that one VM cannot starve the host or its neighbours.
//!
//! cgroup v2 where the host has it (`/sys/fs/cgroup/cgroup.controllers`): the VMs live under
//! `ignite.slice/<uid>` of the unified hierarchy, with `memory.max`, `cpu.max`, `pids.max`.
//! On a cgroup v1 host (this development machine's), one directory per controller, nested
//! under the cgroup the supervisor runs in (the part of the tree delegated to it):
//! `<memory>/…/ignite/<uid>` with `memory.limit_in_bytes`, `<cpu>/…/ignite/<uid>` with
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `<pids>/…/ignite/<uid>` with `pids.max`.
//!
//! The jailer joins the VM's cgroups (writes its pid) before it execs the VMM, so the VMM is in
//! them from its first instruction. The supervisor removes them when the VMM has ended.

use std::path::{Path, PathBuf};

/// CPU accounting period (µs).
const PERIOD_US: u64 = 100_000;
/// Threads a VMM may have (vCPUs, I/O, RCU, workers): generous, but bounded.
pub const PIDS_MAX: u64 = 512;

/// What a VM's cgroup limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: u64,
    pub cpus: u64,
}

impl Limits {
    /// CPU time per period: the vCPUs' worth, plus one CPU for the VMM's own threads (device
    /// emulation, I/O; under TCG its main loop is busy too). With the vCPUs' worth alone, a
    /// one-vCPU VM was throttled in 30 of its first 36 periods and booted ~3% slower.
    pub fn cpu_quota_us(&self) -> u64 {
        (self.cpus.max(1) + 1) * PERIOD_US
    }

    /// `quota period` as cgroup v2's `cpu.max` says it.
    pub fn cpu_max(&self) -> String {
        format!("{} {PERIOD_US}", self.cpu_quota_us())
    }
}

/// The cgroup directories of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    pub dirs: Vec<PathBuf>,
    pub v2: bool,
}

fn write(p: &Path, v: &str) -> Result<(), String> {
    std::fs::write(p, v).map_err(|e| format!("cannot write {v:?} to {}: {e}", p.display()))
}

/// Where the cgroup hierarchies are, and the supervisor's own place in them.
fn own_paths() -> Vec<(String, String)> {
    // "hierarchy-id:controllers:path" per line.
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            Some((ctl.to_string(), path.to_string()))
        })
        .collect()
}

/// The cgroup v1 mounts: (mount point, super options), from /proc/self/mountinfo, read once
/// by each caller (it is ~3 KB of procfs text, read in small pieces).
fn v1_mounts() -> Vec<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            if post.next()? != "cgroup" {
                return None;
            }
            let opts = post.nth(1)?;
            let mount_point = pre.split_whitespace().nth(4)?;
            Some((PathBuf::from(mount_point), opts.to_string()))
        })
        .collect()
}

/// The v1 mount point of `controller` among `mounts`.
fn v1_mount(mounts: &[(PathBuf, String)], controller: &str) -> Option<PathBuf> {
    mounts.iter().find(|(_, opts)| opts.split(',').any(|o| o == controller)).map(|(m, _)| m.clone())
}

/// The v1 controllers a VM gets a directory in: memory, cpu, pids, and cpuacct (accounting
/// only) where it is a hierarchy of its own.
fn v1_controllers(mounts: &[(PathBuf, String)]) -> Vec<&'static str> {
    let mut c = vec!["memory", "cpu", "pids"];
    if v1_mount(mounts, "cpuacct").is_some_and(|m| Some(&m) != v1_mount(mounts, "cpu").as_ref()) {
        c.push("cpuacct");
    }
    c
}

fn v2_root() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let ctl = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    ctl.split_whitespace().any(|c| c == "memory").then_some(root)
}

/// What this host offers, for `ignite doctor`.
pub fn describe() -> Result<String, String> {
    if let Some(r) = v2_root() {
        return Ok(format!("cgroup v2 at {} (VMs under ignite.slice)", r.display()));
    }
    let mounts = v1_mounts();
    let found: Vec<String> =
        ["memory", "cpu", "pids"].iter().filter(|c| v1_mount(&mounts, c).is_some()).map(|c| c.to_string()).collect();
    if found.len() == 3 {
        Ok("cgroup v1 (memory, cpu, pids), VMs nested under the supervisor's own cgroups".into())
    } else {
        Err(format!("no usable cgroup hierarchy (cgroup v1 controllers found: {})", found.join(", ")))
    }
}

/// Records where VM `uid`'s cgroup will be (in `record`, before it exists) and returns it;
/// [`make`] creates it.
pub fn plan_and_record(uid: &str, record: &Path) -> Result<VmCgroup, String> {
    let planned = plan(uid)?;
    let json = serde_json::to_vec(&planned.dirs).map_err(|e| e.to_string())?;
    // About what runs now, which a host crash makes moot (cgroups do not survive one either).
    ignite_store::write_atomic_unsynced(record, &json).map_err(|e| ignite_net::error_chain(&e))?;
    Ok(planned)
}

/// The directories VM `uid`'s cgroup will have.
fn plan(uid: &str) -> Result<VmCgroup, String> {
    plan_controllers(uid).map(|(cg, _)| cg)
}

/// [`plan`], and under cgroup v1 the controller of each directory.
fn plan_controllers(uid: &str) -> Result<(VmCgroup, Vec<&'static str>), String> {
    if let Some(root) = v2_root() {
        return Ok((VmCgroup { dirs: vec![root.join("ignite.slice").join(uid)], v2: true }, Vec::new()));
    }
    let own = own_paths();
    let mounts = v1_mounts();
    let controllers = v1_controllers(&mounts);
    let mut dirs = Vec::new();
    for &controller in &controllers {
        let mount = v1_mount(&mounts, controller).ok_or_else(|| format!("no cgroup v1 {controller} hierarchy"))?;
        let path = own
            .iter()
            .find(|(c, _)| c.split(',').any(|x| x == controller))
            .map(|(_, p)| p.trim_start_matches('/').to_string())
            .unwrap_or_default();
        dirs.push(mount.join(path).join("ignite").join(uid));
    }
    Ok((VmCgroup { dirs, v2: false }, controllers))
}

/// Removes the cgroup directories `record` lists (those already gone, or still busy, are
/// left), and the record once none is left.
pub fn release(record: &Path) {
    let Ok(b) = std::fs::read(record) else { return };
    let dirs: Vec<PathBuf> = serde_json::from_slice(&b).unwrap_or_default();
    let mut left = false;
    for d in dirs {
        if std::fs::remove_dir(&d).is_err() && d.exists() {
            left = true;
        }
    }
    if !left {
        let _ = std::fs::remove_file(record);
    }
}

/// Creates VM `uid`'s cgroup with `limits` (the jailer does, while the VMM's jail is set up):
/// the directories [`plan_and_record`] recorded.
pub fn make(uid: &str, limits: Limits) -> Result<VmCgroup, String> {
    let (cg, controllers) = plan_controllers(uid)?;
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()));
    if cg.v2 {
        let dir = &cg.dirs[0];
        let slice = dir.parent().unwrap_or(dir);
        mkdir(slice)?;
        // Controllers must be enabled for the children at each level.
        for level in [slice.parent().unwrap_or(slice), slice] {
            let _ = write(&level.join("cgroup.subtree_control"), "+memory +cpu +pids");
        }
        mkdir(dir)?;
        write(&dir.join("memory.max"), &limits.memory_max.to_string())?;
        write(&dir.join("cpu.max"), &limits.cpu_max())?;
        write(&dir.join("pids.max"), &PIDS_MAX.to_string())?;
        return Ok(cg);
    }
    for (controller, dir) in controllers.into_iter().zip(&cg.dirs) {
        mkdir(dir)?;
        match controller {
            "memory" => {
                write(&dir.join("memory.limit_in_bytes"), &limits.memory_max.to_string())?;
                // What the VMM charged before it was moved in moves with it.
                let _ = write(&dir.join("memory.move_charge_at_immigrate"), "3");
            }
            "cpu" => {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &limits.cpu_quota_us().to_string())?;
            }
            "pids" => write(&dir.join("pids.max"), &PIDS_MAX.to_string())?,
            _ => {}
        }
    }
    Ok(cg)
}

impl VmCgroup {
    /// Moves the calling process into the VM's cgroups.
    pub fn join_self(&self) -> Result<(), String> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        Ok(())
    }

    /// Removes the VM's cgroups (once nothing runs in them); a cgroup still busy is kept.
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Memory in use (bytes) and CPU time used (µs), for metrics.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        let num = |p: PathBuf| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
        if self.v2 {
            let d = &self.dirs[0];
            let cpu = std::fs::read_to_string(d.join("cpu.stat")).ok().and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
            });
            return (num(d.join("memory.current")), cpu);
        }
        let mem = self.dirs.iter().find_map(|d| num(d.join("memory.usage_in_bytes")));
        // cpuacct shares the cpu hierarchy on most v1 hosts; when it does not, no CPU figure.
        let cpu = self.dirs.iter().find_map(|d| num(d.join("cpuacct.usage"))).map(|ns| ns / 1000);
        (mem, cpu)
    }
}

/// The cgroup a VM's jail recorded (its status), to read usage or remove it.
pub fn from_status(dirs: &[String]) -> VmCgroup {
    let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
    let v2 = dirs.len() == 1 && dirs[0].join("cgroup.controllers").exists();
    VmCgroup { dirs, v2 }
}
