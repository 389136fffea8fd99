//! `ignite create`: validate a VM spec and store it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use ignite_api::{
    decode_object, BlockDeviceVolume, FileMapping, Object, ObjectMeta, OciSpec, PortMapping, Size, Ssh, Vm, VmSpec,
    Volume, VolumeMount,
};
use ignite_runtime::{create_vm, CreateOptions, PullPolicy};

use super::UsageError;
use crate::cli::CreateArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: CreateArgs) -> anyhow::Result<()> {
    let vm = match ctx.daemon()? {
        Some(d) => d.create(&remote_spec(ctx, &a)?, false)?,
        None => create(ctx, &a)?,
    };
    report(ctx, &vm);
    Ok(())
}

pub fn report(ctx: &Ctx, vm: &Vm) {
    if ctx.global.quiet {
        println!("{}", vm.uid());
    } else {
        eprintln!("Created VM with ID {:?} and name {:?}", vm.uid(), vm.metadata.name);
    }
}

/// What create is asked: the configuration, the `--config` manifest and the flags (an image
/// is required from one of them).
type Inputs = (ignite_runtime::LoadedConfig, Option<Vm>, ignite_api::ObjectMeta, VmSpec);

fn inputs(ctx: &Ctx, a: &CreateArgs) -> anyhow::Result<Inputs> {
    let config = ctx.config()?;
    let manifest = match &a.config {
        Some(p) => Some(read_vm_manifest(p)?),
        None => None,
    };
    let (meta, spec) = flags_to_spec(&ctx.global, a)?;
    if manifest.is_none() && spec.image.oci.is_none() {
        return Err(UsageError("an image is required: ignite create IMAGE, or --config FILE".into()).into());
    }
    Ok((config, manifest, meta, spec))
}

/// The VM `ignited` is asked to create: flags and manifest merged and validated here, so that
/// bad input is reported as it would be locally.
pub fn remote_spec(ctx: &Ctx, a: &CreateArgs) -> anyhow::Result<Vm> {
    let (config, manifest, meta, spec) = inputs(ctx, a)?;
    let vm = ignite_runtime::create::build_vm(&config, manifest, meta, &spec)?;
    if vm.metadata.name.is_empty() && a.require_name {
        return Err(ignite_runtime::CreateError::NameRequired.into());
    }
    Ok(vm)
}

/// Parses the flags and manifest into a stored VM.
pub fn create(ctx: &Ctx, a: &CreateArgs) -> anyhow::Result<Vm> {
    let (config, manifest, meta, spec) = inputs(ctx, a)?;
    let store = ctx.store()?;
    let pull: PullPolicy = a.pull.parse().map_err(UsageError)?;
    let opts = CreateOptions {
        require_name: a.require_name,
        pull,
        import: super::image::import_options(&config, &a.insecure_registries, a.registry_config_dir.as_deref()),
    };
    Ok(create_vm(&store, &config, manifest, meta, &spec, &opts)?)
}

pub fn read_vm_manifest(p: &Path) -> anyhow::Result<Vm> {
    let bytes = ignite_runtime::config::read_bounded(p)?;
    match decode_object(&bytes).with_context(|| format!("invalid manifest {}", p.display()))? {
        Object::Vm(v) => Ok(v),
        other => Err(UsageError(format!("{} holds a {}, expected kind VM", p.display(), other.kind())).into()),
    }
}

fn usage<T, E: std::fmt::Display>(flag: &str, r: Result<T, E>) -> anyhow::Result<T> {
    r.map_err(|e| UsageError(format!("invalid {flag}: {e}")).into())
}

/// The `--ports` flags' mappings.
pub fn port_flags(ports: &[String]) -> anyhow::Result<Vec<PortMapping>> {
    ports.iter().map(|p| usage::<PortMapping, _>("--ports", p.parse())).collect()
}

/// The `--label KEY=VALUE` flags' labels.
pub fn label_flags(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) =
                l.split_once('=').ok_or_else(|| UsageError(format!("invalid --label {l:?}: expected KEY=VALUE")))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Only the fields the user set: the rest stay unset so lower layers show through.
pub fn flags_to_spec(g: &crate::cli::Global, a: &CreateArgs) -> anyhow::Result<(ObjectMeta, VmSpec)> {
    let mut spec = VmSpec::default();
    if let Some(i) = &a.image {
        spec.image = OciSpec { oci: Some(usage("image", i.parse())?) };
    }
    if let Some(c) = a.cpus {
        if c == 0 {
            return Err(UsageError("invalid --cpus: must be between 1 and 128 (is 0)".into()).into());
        }
        spec.cpus = c;
    }
    if let Some(m) = &a.memory {
        spec.memory = Some(usage::<Size, _>("--memory", m.parse())?);
    }
    if let Some(s) = &a.size {
        spec.disk_size = Some(usage::<Size, _>("--size", s.parse())?);
    }
    if let Some(k) = &a.kernel_image {
        spec.kernel.oci = Some(usage("--kernel-image", k.parse())?);
    }
    if let Some(k) = &a.kernel_args {
        if k.trim().is_empty() {
            return Err(UsageError("invalid --kernel-args: must not be empty".into()).into());
        }
        spec.kernel.cmd_line = k.clone();
    }
    spec.network.ports.extend(port_flags(&a.ports)?);
    for c in &a.copy_files {
        let (h, v) = c
            .split_once(':')
            .ok_or_else(|| UsageError(format!("invalid --copy-files {c:?}: expected HOSTPATH:VMPATH")))?;
        let host = std::path::absolute(h).map_err(|e| UsageError(format!("invalid --copy-files {c:?}: {e}")))?;
        if !host.exists() {
            return Err(UsageError(format!("invalid --copy-files {c:?}: {} does not exist", host.display())).into());
        }
        spec.copy_files.push(FileMapping { host_path: host.to_string_lossy().into_owned(), vm_path: v.to_string() });
    }
    for (i, v) in a.volumes.iter().enumerate() {
        let (dev, mnt) = v
            .split_once(':')
            .ok_or_else(|| UsageError(format!("invalid --volumes {v:?}: expected HOSTDEVICE:VMPATH")))?;
        let name = format!("volume{i}");
        spec.storage
            .volumes
            .push(Volume { name: name.clone(), block_device: Some(BlockDeviceVolume { path: dev.into() }) });
        spec.storage.volume_mounts.push(VolumeMount { name, mount_path: mnt.into() });
    }
    if let Some(s) = &a.ssh {
        spec.ssh = match s.as_str() {
            "true" => Some(Ssh::Generate),
            "false" => None,
            path => {
                if !Path::new(path).is_file() {
                    return Err(UsageError(format!("invalid --ssh: public key file {path} does not exist")).into());
                }
                Some(Ssh::PublicKeyPath(path.to_string()))
            }
        };
    }
    if let Some(v) = &a.vmm {
        spec.vmm = Some(v.clone());
    }
    spec.agent = a.agent;
    spec.jail = a.jail;
    if let Some(s) = &a.sandbox_image {
        spec.sandbox = OciSpec { oci: Some(usage("--sandbox-image", s.parse())?) };
    }
    let network_plugin = super::network_plugin(g)?;
    let mut meta = ObjectMeta::default();
    if let Some(n) = &a.name {
        meta.name = n.clone();
    }
    meta.labels = label_flags(&a.labels)?;
    if let Some(np) = network_plugin {
        meta.annotations.insert(ignite_runtime::network::PLUGIN_ANNOTATION.into(), np);
    }
    if let Some(ip) = a.ip {
        meta.annotations.insert(ignite_runtime::network::IP_ANNOTATION.into(), ip.to_string());
    }
    Ok((meta, spec))
}
