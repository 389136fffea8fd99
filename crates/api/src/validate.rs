//! Semantic validation of objects after decoding: every problem is reported with the path
//! of the field that holds it, all at once.

use std::collections::HashSet;
use std::fmt;

use crate::names::check_dns1123;
use crate::types::{ConfigurationSpec, Vm, VmSpec};

/// Largest vCPU count accepted.
pub const MAX_CPUS: u64 = 128;
/// Smallest guest memory that boots a Linux kernel with room for init.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest kernel command line (x86 COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;
/// Known VMM backends (whether one is part of this build, and how many devices it attaches, is
/// the runtime's to say).
pub const VMM_BACKENDS: &[&str] = &["qemu", "firecracker"];

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

/// All invalid fields of an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError { field: field.into(), message: message.into() });
    }
    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Checks a VM whose defaults have been applied (name may be empty: it is generated later).
pub fn validate_vm(vm: &Vm) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    if !vm.metadata.name.is_empty() {
        if let Err(m) = check_dns1123(&vm.metadata.name) {
            errs.push("metadata.name", format!("invalid name {:?}: {m}", vm.metadata.name));
        } else if vm.metadata.name.len() > 63 {
            errs.push("metadata.name", "must be at most 63 characters: it becomes the guest's hostname");
        }
    }
    check_labels(&mut errs, "metadata.labels", vm.metadata.labels.iter());
    check_spec(&mut errs, "spec", &vm.spec, true);
    errs.into_result()
}

/// Checks a Configuration.
pub fn validate_configuration(spec: &ConfigurationSpec) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    if !spec.runtime.is_empty() && !matches!(spec.runtime.as_str(), "containerd" | "docker") {
        errs.push(
            "spec.runtime",
            format!(
                "unknown runtime {:?} (Ignite's values are containerd and docker; ignite needs neither)",
                spec.runtime
            ),
        );
    }
    if !spec.network_plugin.is_empty() && !matches!(spec.network_plugin.as_str(), "cni" | "docker-bridge" | "none") {
        errs.push("spec.networkPlugin", format!("unknown network plugin {:?} (use cni or none)", spec.network_plugin));
    }
    if !spec.id_prefix.is_empty() && check_dns1123(&spec.id_prefix).is_err() {
        errs.push(
            "spec.idPrefix",
            format!("invalid id prefix {:?}: use lowercase letters, digits and '-'", spec.id_prefix),
        );
    }
    check_vmm(&mut errs, "spec.vmm", spec.vmm.as_deref());
    if let Some(c) = spec.tcg_cache {
        if !(8..=4096).contains(&c.mib()) || c.bytes() % (1 << 20) != 0 {
            errs.push("spec.tcgCache", format!("{c}: use whole MB between 8MB and 4GB"));
        }
    }
    check_spec(&mut errs, "spec.vmDefaults", &spec.vm_defaults, false);
    errs.into_result()
}

fn check_vmm(errs: &mut ValidationErrors, field: &str, vmm: Option<&str>) {
    if let Some(v) = vmm {
        if !VMM_BACKENDS.contains(&v) {
            errs.push(field, format!("unknown VMM backend {v:?} (use one of {})", VMM_BACKENDS.join(", ")));
        }
    }
}

fn check_spec(errs: &mut ValidationErrors, at: &str, spec: &VmSpec, complete: bool) {
    if complete && spec.image.oci.is_none() {
        errs.push(format!("{at}.image.oci"), "an image is required");
    }
    if (complete && spec.cpus == 0) || spec.cpus > MAX_CPUS {
        errs.push(format!("{at}.cpus"), format!("must be between 1 and {MAX_CPUS} (is {})", spec.cpus));
    }
    if let Some(m) = spec.memory {
        if m.mib() < MIN_MEMORY_MIB {
            errs.push(format!("{at}.memory"), format!("must be at least {MIN_MEMORY_MIB}MB (is {m})"));
        }
        if m.bytes() % crate::size::Size::MIB != 0 {
            errs.push(format!("{at}.memory"), format!("must be a whole number of MB (is {m})"));
        }
    }
    if let Some(d) = spec.disk_size {
        if d.bytes() < 16 * crate::size::Size::MIB {
            errs.push(format!("{at}.diskSize"), format!("must be at least 16MB (is {d})"));
        }
    }
    let cmd = &spec.kernel.cmd_line;
    if cmd.len() > MAX_CMDLINE {
        errs.push(format!("{at}.kernel.cmdLine"), format!("is {} bytes, at most {MAX_CMDLINE}", cmd.len()));
    }
    if cmd.chars().any(|c| c.is_control()) {
        errs.push(format!("{at}.kernel.cmdLine"), "must not contain control characters or newlines");
    }
    let mut seen = HashSet::new();
    for (i, p) in spec.network.ports.iter().enumerate() {
        if !seen.insert((p.host_port, p.protocol, p.bind_address)) {
            errs.push(
                format!("{at}.network.ports[{i}]"),
                format!("host port {}/{} is mapped twice", p.host_port, p.protocol),
            );
        }
    }
    let mut vols = HashSet::new();
    for (i, v) in spec.storage.volumes.iter().enumerate() {
        let f = format!("{at}.storage.volumes[{i}]");
        if let Err(m) = check_dns1123(&v.name) {
            errs.push(format!("{f}.name"), format!("invalid volume name {:?}: {m}", v.name));
        }
        if !vols.insert(v.name.as_str()) {
            errs.push(format!("{f}.name"), format!("volume {:?} is defined twice", v.name));
        }
        match &v.block_device {
            None => errs.push(format!("{f}.blockDevice"), "a block device path is required"),
            Some(b) if !b.path.starts_with('/') => {
                errs.push(format!("{f}.blockDevice.path"), format!("must be an absolute path (is {:?})", b.path))
            }
            Some(_) => {}
        }
    }
    let mut mounts = HashSet::new();
    for (i, m) in spec.storage.volume_mounts.iter().enumerate() {
        let f = format!("{at}.storage.volumeMounts[{i}]");
        if !vols.contains(m.name.as_str()) {
            errs.push(format!("{f}.name"), format!("no volume named {:?}", m.name));
        }
        if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|c| c == "..") {
            errs.push(
                format!("{f}.mountPath"),
                format!("must be an absolute path without '..' (is {:?})", m.mount_path),
            );
        }
        if !mounts.insert(m.mount_path.as_str()) {
            errs.push(format!("{f}.mountPath"), format!("{:?} is mounted twice", m.mount_path));
        }
    }
    for (i, c) in spec.copy_files.iter().enumerate() {
        let f = format!("{at}.copyFiles[{i}]");
        if c.host_path.is_empty() {
            errs.push(format!("{f}.hostPath"), "must not be empty");
        }
        if !c.vm_path.starts_with('/') || c.vm_path.split('/').any(|x| x == "..") {
            errs.push(format!("{f}.vmPath"), format!("must be an absolute path without '..' (is {:?})", c.vm_path));
        }
    }
    check_vmm(errs, &format!("{at}.vmm"), spec.vmm.as_deref());
}

fn check_labels<'a>(errs: &mut ValidationErrors, at: &str, labels: impl Iterator<Item = (&'a String, &'a String)>) {
    for (k, v) in labels {
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        let prefix_ok = prefix.map(|p| check_dns1123(p).is_ok()).unwrap_or(true);
        if !name_ok || !prefix_ok {
            errs.push(format!("{at}.{k}"), "invalid label key: use [prefix/]name with letters, digits, '-', '_' and '.' (name at most 63 characters)");
        }
        let value_ok = v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && (v.is_empty()
                || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric())));
        if !value_ok {
            errs.push(
                format!("{at}.{k}"),
                format!("invalid label value {v:?}: at most 63 letters, digits, '-', '_' and '.'"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_object, Object};

    fn vm(doc: &str) -> Vm {
        match decode_object(doc.as_bytes()).unwrap() {
            Object::Vm(mut v) => {
                v.spec.set_defaults();
                v
            }
            _ => panic!(),
        }
    }

    const BASE: &str =
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: ok}\nspec:\n  image: {oci: busybox}\n";

    #[test]
    fn valid_vm() {
        assert!(validate_vm(&vm(BASE)).is_ok());
    }

    #[test]
    fn reports_every_field() {
        let doc = format!(
            "{}  cpus: 1000\n  memory: 1MB\n  network:\n    ports: [{{hostPort: 80, vmPort: 80}}, {{hostPort: 80, vmPort: 81}}]\n  storage:\n    volumeMounts: [{{name: nope, mountPath: rel}}]\n  copyFiles: [{{hostPath: /a, vmPath: ../x}}]\n  vmm: vbox\n",
            BASE.replace("name: ok", "name: Bad_Name")
        );
        let e = validate_vm(&vm(&doc)).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "metadata.name",
            "spec.cpus",
            "spec.memory",
            "spec.network.ports[1]",
            "spec.storage.volumeMounts[0].name",
            "spec.storage.volumeMounts[0].mountPath",
            "spec.copyFiles[0].vmPath",
            "spec.vmm",
        ] {
            assert!(fields.contains(&want), "missing {want} in {e}");
        }
    }

    #[test]
    fn labels() {
        let doc = BASE.replace("{name: ok}", "{name: ok, labels: {\"a/b\": c, \"bad key!\": x}}");
        let e = validate_vm(&vm(&doc)).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.0[0].field.contains("bad key!"));
    }

    #[test]
    fn tcg_cache_is_whole_mb_in_range() {
        let with = |c: &str| ConfigurationSpec { tcg_cache: Some(c.parse().unwrap()), ..Default::default() };
        for ok in ["8MB", "16MB", "256MB", "4GB"] {
            assert!(validate_configuration(&with(ok)).is_ok(), "{ok}");
        }
        for bad in ["4MB", "8GB", "1500KB"] {
            let e = validate_configuration(&with(bad)).unwrap_err();
            assert!(e.to_string().contains("spec.tcgCache"), "{bad}: {e}");
        }
    }
}
