//! `create`: turn a requested spec into a stored VM with its own copy-on-write root disk.
//!
//! Layering, as Ignite documents: built-in defaults < configuration file `vmDefaults` <
//! `--config` manifest < explicit flags. The image and kernel are imported on demand (`--pull`
//! policy); the VM's disk is a qcow2 overlay over the image's base of the VM's size class, so
//! creation costs the same whatever the image size.

use std::path::PathBuf;

use ignite_api::names::random_unique_name;
use ignite_api::validate::validate_vm;
use ignite_api::{Image, ImageRef, Kernel, ObjectMeta, ValidationErrors, Vm, VmSpec};
use ignite_store::{Store, StoreError};

use crate::config::LoadedConfig;
use crate::import::{import_image, import_kernel, ImportError, ImportMode, ImportOptions, HAS_INIT_ANNOTATION};

/// When to fetch an image or kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Import when no object of that name exists (default).
    #[default]
    Missing,
    /// Always fetch; a changed image replaces the old one.
    Always,
    /// Never fetch: the image must have been imported.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            o => Err(format!("invalid pull policy {o:?}: use missing, always or never")),
        }
    }
}

/// Why a VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("invalid VM {name}")]
    Invalid { name: String, source: ValidationErrors },
    #[error("{field}: {path} does not exist on this host")]
    HostPath { field: String, path: String },
    #[error("a VM name is required (--require-name is set)")]
    NameRequired,
    #[error("{what} {reference} is not imported and --pull never is set: run `ignite {what} import {reference}`")]
    NotImported { what: &'static str, reference: String },
    #[error("image {image} has no /sbin/init: ignite boots /sbin/init as PID 1, as Weave Ignite did; use an image with an init system (e.g. busybox, or systemd)")]
    NoInit { image: String },
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("cannot create the root disk of VM {name:?}")]
    Disk {
        name: String,
        #[source]
        source: ignite_disk::DiskError,
    },
    #[error(transparent)]
    Vmm(#[from] ignite_vmm::VmmError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `create` was asked, besides the spec layers.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub require_name: bool,
    pub pull: PullPolicy,
    pub import: ImportOptions,
}

/// Merges and validates a VM spec (no I/O besides nothing: pure).
pub fn build_vm(
    config: &LoadedConfig,
    manifest: Option<Vm>,
    flag_meta: ObjectMeta,
    flags: &VmSpec,
) -> Result<Vm, CreateError> {
    let mut spec = config.spec.vm_defaults.clone();
    let mut meta = ObjectMeta::default();
    if let Some(m) = manifest {
        spec.merge_from(&m.spec);
        meta = m.metadata;
        // A manifest's status is what some host observed, not a request.
    }
    spec.merge_from(flags);
    if !flag_meta.name.is_empty() {
        meta.name = flag_meta.name;
    }
    meta.labels.extend(flag_meta.labels);
    meta.annotations.extend(flag_meta.annotations);
    if spec.vmm.is_none() {
        spec.vmm = config.spec.vmm.clone();
    }
    spec.set_defaults();
    let mut vm = Vm::new(meta, spec);
    vm.status.id_prefix = config.id_prefix().to_string();
    let shown = if vm.metadata.name.is_empty() { "(unnamed)".to_string() } else { format!("{:?}", vm.metadata.name) };
    validate_vm(&vm).map_err(|source| CreateError::Invalid { name: shown.clone(), source })?;
    check_devices(&vm, config).map_err(|source| CreateError::Invalid { name: shown, source })?;
    Ok(vm)
}

/// Whether the VM's backend can attach all its devices: the root disk, its volumes, its NIC
/// and the agent's channel (extra interfaces are counted at start, when they exist).
fn check_devices(vm: &Vm, config: &LoadedConfig) -> Result<(), ValidationErrors> {
    let name = crate::boot::backend_name(vm, &config.spec);
    let Ok(backend) = crate::boot::backend(&name, &config.spec) else {
        // An unknown backend is named by validation; one not in this build, at start.
        return Ok(());
    };
    let caps = backend.capabilities();
    let layout = crate::rootdisk::layout_for(vm, &caps).map_err(|message| {
        ValidationErrors(vec![ignite_api::validate::ValidationError {
            field: format!("metadata.annotations[{}]", crate::rootdisk::LAYOUT_ANNOTATION),
            message,
        }])
    })?;
    let max = caps.max_devices;
    let devices = crate::rootdisk::drive_count(layout)
        + vm.spec.storage.volumes.len()
        + 1
        + usize::from(vm.spec.agent != Some(false));
    if devices <= max {
        return Ok(());
    }
    Err(ValidationErrors(vec![ignite_api::validate::ValidationError {
        field: "spec.storage.volumes".into(),
        message: format!(
            "{} volumes: with the root disk, the NIC and the agent that is {devices} devices; {name} attaches at most {max}",
            vm.spec.storage.volumes.len()
        ),
    }]))
}

fn find_image(store: &Store, r: &ImageRef) -> Result<Option<Image>, StoreError> {
    let n = r.normalized();
    Ok(store.list::<Image>()?.into_iter().find(|i| i.metadata.name == n || i.metadata.name == r.to_string()))
}

fn find_kernel(store: &Store, r: &ImageRef) -> Result<Option<Kernel>, StoreError> {
    let n = r.normalized();
    Ok(store.list::<Kernel>()?.into_iter().find(|k| k.metadata.name == n || k.metadata.name == r.to_string()))
}

/// Builds, validates and stores a VM with its root disk.
pub fn create_vm(
    store: &Store,
    config: &LoadedConfig,
    manifest: Option<Vm>,
    flag_meta: ObjectMeta,
    flags: &VmSpec,
    opts: &CreateOptions,
) -> Result<Vm, CreateError> {
    let mut vm = build_vm(config, manifest, flag_meta, flags)?;
    if vm.metadata.name.is_empty() && opts.require_name {
        return Err(CreateError::NameRequired);
    }
    // Host paths the VM will use must exist now, not fail at its first boot.
    for (i, c) in vm.spec.copy_files.iter().enumerate() {
        if std::fs::symlink_metadata(&c.host_path).is_err() {
            return Err(CreateError::HostPath {
                field: format!("spec.copyFiles[{i}].hostPath"),
                path: c.host_path.clone(),
            });
        }
    }
    for (i, v) in vm.spec.storage.volumes.iter().enumerate() {
        if let Some(b) = &v.block_device {
            if !std::path::Path::new(&b.path).exists() {
                return Err(CreateError::HostPath {
                    field: format!("spec.storage.volumes[{i}].blockDevice.path"),
                    path: b.path.clone(),
                });
            }
        }
    }
    // Fail fast on a taken name, before any import work (re-checked under the lock).
    if !vm.metadata.name.is_empty() {
        if let Some(o) = store.by_name::<Vm>(&vm.metadata.name)? {
            return Err(StoreError::NameTaken { kind: "VM", name: o.metadata.name.clone(), uid: o.uid() }.into());
        }
    }
    let image_ref = vm
        .spec
        .image
        .oci
        .clone()
        .ok_or_else(|| CreateError::Invalid { name: vm.metadata.name.clone(), source: ValidationErrors(vec![]) })?;
    // Until the VM exists, the base it will use must not be collected.
    let _gc = crate::gc::hold(store).map_err(|source| StoreError::Io {
        op: "cannot lock the collector of",
        path: store.root().into(),
        source,
    })?;
    let image = match (find_image(store, &image_ref)?, opts.pull) {
        (Some(i), PullPolicy::Missing | PullPolicy::Never) => i,
        (None, PullPolicy::Never) => {
            return Err(CreateError::NotImported { what: "image", reference: image_ref.to_string() })
        }
        (_, pull) => {
            let mode = if pull == PullPolicy::Always { ImportMode::Replace } else { ImportMode::Reuse };
            import_image(store, &image_ref, &ImportOptions { mode, ..opts.import.clone() })?.object
        }
    };
    if image.metadata.annotations.get(HAS_INIT_ANNOTATION).map(String::as_str) == Some("false") {
        return Err(CreateError::NoInit { image: image_ref.to_string() });
    }
    let kernel_ref = vm
        .spec
        .kernel
        .oci
        .clone()
        .unwrap_or_else(|| ignite_api::DEFAULT_KERNEL_IMAGE.parse().unwrap_or(image_ref.clone()));
    let kernel = match find_kernel(store, &kernel_ref)? {
        Some(k) => k,
        None if opts.pull == PullPolicy::Never
            || kernel_ref.registry().map(|r| r.domain == "localhost").unwrap_or(false) =>
        {
            return Err(CreateError::NotImported { what: "kernel", reference: kernel_ref.to_string() })
        }
        None => import_kernel(store, &kernel_ref.to_string(), &opts.import)?.object,
    };
    vm.status.image = image.status.oci_source.clone();
    vm.status.kernel = kernel.status.oci_source.clone();

    // The root disk's layout is the backend's to choose: the first it prefers, unless the VM
    // asks for another the backend boots (validated with the spec).
    let backend = crate::boot::backend(&crate::boot::backend_name(&vm, &config.spec), &config.spec)?;
    let layout = crate::rootdisk::layout_for(&vm, &backend.capabilities()).map_err(|m| CreateError::Invalid {
        name: vm.metadata.name.clone(),
        source: ValidationErrors(vec![ignite_api::validate::ValidationError {
            field: format!("metadata.annotations[{}]", crate::rootdisk::LAYOUT_ANNOTATION),
            message: m,
        }]),
    })?;

    // The shared base the VM's root stands on (built once per image, and size class).
    let image_dir = crate::gc::base_dir(store, &image);
    let size = vm.spec.disk_size().bytes();
    let name_for_err = if vm.metadata.name.is_empty() { "(unnamed)".to_string() } else { vm.metadata.name.clone() };
    let base: PathBuf = crate::rootdisk::base_for(layout, &image_dir, size)
        .map_err(|source| CreateError::Disk { name: name_for_err.clone(), source })?;

    ignite_proc::fault::point("create.base-ready");
    let lock = store.lock()?;
    if vm.metadata.name.is_empty() {
        let taken: std::collections::HashSet<String> =
            store.list::<Vm>()?.into_iter().map(|v| v.metadata.name).collect();
        vm.metadata.name = random_unique_name(|n| taken.contains(n));
    }
    let disk_err: std::cell::RefCell<Option<ignite_disk::DiskError>> = Default::default();
    let created = store.create_with(&lock, vm, |dir, _| {
        // O(1): nothing of the image is copied (see `rootdisk`).
        let made = crate::rootdisk::create(layout, &base, &crate::vmdir::VmDir::new(dir), size);
        made.map_err(|e| {
            let msg = e.to_string();
            *disk_err.borrow_mut() = Some(e);
            std::io::Error::other(msg)
        })?;
        ignite_proc::fault::point("create.disk-written");
        Ok(())
    });
    match created {
        Ok(vm) => Ok(vm),
        Err(e) => match disk_err.into_inner() {
            Some(source) => Err(CreateError::Disk { name: name_for_err, source }),
            None => Err(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;
    use ignite_api::{ConfigurationSpec, OciSpec, Size};

    fn cfg() -> LoadedConfig {
        let mut spec = ConfigurationSpec::default();
        spec.vm_defaults.cpus = 2;
        spec.vm_defaults.memory = Some(Size::from_mib(2048));
        LoadedConfig { spec, source: ConfigSource::Defaults }
    }

    #[test]
    fn layering() {
        let mut manifest_spec = VmSpec { cpus: 4, ..Default::default() };
        manifest_spec.image = OciSpec { oci: Some("alpine".parse().unwrap()) };
        manifest_spec.disk_size = Some(Size::from_mib(3072));
        let manifest = Vm::new(ObjectMeta { name: "from-file".into(), ..Default::default() }, manifest_spec);
        let flags = VmSpec { cpus: 8, ..Default::default() };
        let vm = build_vm(&cfg(), Some(manifest), ObjectMeta::default(), &flags).unwrap();
        assert_eq!(vm.spec.cpus, 8); // flag beats manifest
        assert_eq!(vm.spec.disk_size, Some(Size::from_mib(3072))); // manifest beats default
        assert_eq!(vm.spec.memory, Some(Size::from_mib(2048))); // config file beats built-in
        assert_eq!(vm.metadata.name, "from-file");
        assert_eq!(vm.status.id_prefix, "ignite");
    }

    #[test]
    fn invalid_is_refused() {
        let flags =
            VmSpec { cpus: 1000, image: OciSpec { oci: Some("busybox".parse().unwrap()) }, ..Default::default() };
        assert!(matches!(build_vm(&cfg(), None, ObjectMeta::default(), &flags), Err(CreateError::Invalid { .. })));
    }
}
