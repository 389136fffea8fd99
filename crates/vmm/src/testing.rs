//! A backend for tests of the code around the seam (feature `testing`, dev-dependencies only):
//! its "VMM" is `sh -c SCRIPT` playing a guest's console, and its [`Control`] records what it
//! was asked and signals the script. The supervisor's and start's decisions are tested through
//! it without a VM; it is never registered in [`crate::backend`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{
    Accel, AccelChoice, AccelVerdict, AgentChannel, Backend, Capabilities, Control, DiskFormat, HostInfo, Instance,
    JailProfile, Launcher, Machine, RootDisk, VmmCommand, VmmError,
};

/// What a [`Scripted`] control was asked, in order (`shutdown`, `force_stop`).
pub type Asked = Arc<Mutex<Vec<&'static str>>>;

/// A backend whose VMM is `sh -c script`.
#[derive(Debug, Default)]
pub struct Scripted {
    pub script: &'static str,
    pub asked: Asked,
}

#[derive(Debug)]
struct ScriptControl {
    pid: u32,
    asked: Asked,
}

impl ScriptControl {
    fn signal(&self, what: &'static str, sig: rustix::process::Signal) -> Result<(), VmmError> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).push(what);
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| VmmError::Launch(format!("invalid pid {}", self.pid)))?;
        rustix::process::kill_process(pid, sig).map_err(|e| VmmError::Launch(e.to_string()))
    }
}

impl Control for ScriptControl {
    fn request_shutdown(&self) -> Result<(), VmmError> {
        self.signal("shutdown", rustix::process::Signal::TERM)
    }
    fn force_stop(&self) -> Result<(), VmmError> {
        self.signal("force_stop", rustix::process::Signal::KILL)
    }
}

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            root_disks: &[RootDisk::Qcow2Overlay, RootDisk::RawLayered],
            drive_formats: &[DiskFormat::Qcow2, DiskFormat::Raw],
            agent: AgentChannel::VirtioSerial,
            accels: &[Accel::Tcg],
            max_devices: 4,
            max_vcpus: 4,
            jail: true,
        }
    }
    fn check_host(&self) -> Result<HostInfo, VmmError> {
        Ok(HostInfo { binary: "/bin/sh".into(), version: None, seccomp: Err("none".into()) })
    }
    fn choose_accel(
        &self,
        _: &Path,
        _: AccelChoice,
        _: &Path,
        _: &dyn Fn(&Path) -> Result<(), String>,
    ) -> Result<AccelVerdict, String> {
        Ok(AccelVerdict { accel: Accel::Tcg, reason: "scripted".into() })
    }
    fn jail_profile(&self, _: &Machine) -> JailProfile {
        JailProfile { overhead_mib: 0, seccomp: String::new() }
    }
    fn runtime_files(&self, _: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    fn launch(&self, m: &Machine, launcher: &mut dyn Launcher) -> Result<Instance, VmmError> {
        m.validate(&self.capabilities())?;
        let child = launcher.spawn(VmmCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), self.script.into()],
            files: vec![],
            disks: vec![],
            kvm: false,
            rw_dir: None,
        })?;
        let control = Arc::new(ScriptControl { pid: child.id(), asked: self.asked.clone() });
        Ok(Instance { child, control, runtime_files: vec![], agent: None })
    }
}
