//! `create`: turn a requested spec into a stored VM object. Layering, as Ignite documents:
//! built-in defaults < configuration file `vmDefaults` < `--config` manifest < explicit flags.

use ignite_api::names::random_unique_name;
use ignite_api::validate::validate_vm;
use ignite_api::{ObjectMeta, ValidationErrors, Vm, VmSpec};
use ignite_store::{Store, StoreError};

use crate::config::LoadedConfig;

/// Why a VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("invalid VM {name}: {source}")]
    Invalid { name: String, source: ValidationErrors },
    #[error("a VM name is required (--require-name is set)")]
    NameRequired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds the effective VM from configuration defaults, an optional manifest, and flag
/// overrides (`flags` holds only what the user set explicitly), validates it and stores it.
pub fn create_vm(
    store: &Store,
    config: &LoadedConfig,
    manifest: Option<Vm>,
    flag_meta: ObjectMeta,
    flags: &VmSpec,
    require_name: bool,
) -> Result<Vm, CreateError> {
    let mut spec = config.spec.vm_defaults.clone();
    let mut meta = ObjectMeta::default();
    if let Some(m) = manifest {
        spec.merge_from(&m.spec);
        meta = m.metadata;
        // Status of a manifest is what some host observed, not a request.
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
    validate_vm(&vm).map_err(|source| CreateError::Invalid { name: shown, source })?;
    if vm.metadata.name.is_empty() && require_name {
        return Err(CreateError::NameRequired);
    }
    let lock = store.lock()?;
    if vm.metadata.name.is_empty() {
        let taken: std::collections::HashSet<String> =
            store.list::<Vm>()?.into_iter().map(|v| v.metadata.name).collect();
        vm.metadata.name = random_unique_name(|n| taken.contains(n));
    }
    Ok(store.create(&lock, vm)?)
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
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut manifest_spec = VmSpec { cpus: 4, ..Default::default() };
        manifest_spec.image = OciSpec { oci: Some("alpine".parse().unwrap()) };
        manifest_spec.disk_size = Some(Size::from_mib(3072));
        let manifest = Vm::new(ObjectMeta { name: "from-file".into(), ..Default::default() }, manifest_spec);
        let flags = VmSpec { cpus: 8, ..Default::default() };
        let vm = create_vm(&s, &cfg(), Some(manifest), ObjectMeta::default(), &flags, false).unwrap();
        assert_eq!(vm.spec.cpus, 8); // flag beats manifest
        assert_eq!(vm.spec.disk_size, Some(Size::from_mib(3072))); // manifest beats default
        assert_eq!(vm.spec.memory, Some(Size::from_mib(2048))); // config file beats built-in
        assert_eq!(vm.metadata.name, "from-file");
        assert_eq!(vm.status.id_prefix, "ignite");
    }

    #[test]
    fn generated_name_and_require_name() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let flags = VmSpec { image: OciSpec { oci: Some("busybox".parse().unwrap()) }, ..Default::default() };
        let vm = create_vm(&s, &cfg(), None, ObjectMeta::default(), &flags, false).unwrap();
        assert!(vm.metadata.name.contains('-'));
        assert!(matches!(
            create_vm(&s, &cfg(), None, ObjectMeta::default(), &flags, true),
            Err(CreateError::NameRequired)
        ));
        let bad = VmSpec { cpus: 1000, ..flags.clone() };
        assert!(matches!(
            create_vm(&s, &cfg(), None, ObjectMeta::default(), &bad, false),
            Err(CreateError::Invalid { .. })
        ));
        assert_eq!(s.list::<Vm>().unwrap().len(), 1);
    }
}
