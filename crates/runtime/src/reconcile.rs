//! `ignited`'s reconciler: the VMs described by a manifest directory are made to exist, run or
//! stop; managed VMs whose manifest is gone are removed. One pass is an idempotent function of
//! (manifests, store); the daemon runs it on every change and periodically (kube-runtime's
//! model: reconcile, requeue, resync).
//!
//! - Managed VMs carry the label `ignite.weave.works/managed-by=ignited`; unmanaged VMs are
//!   never touched.
//! - A manifest without `metadata.uid` gets a stable UID derived from its file name and VM name
//!   (Weave Ignite required a UID; we do not), so restarts of the daemon find the same VMs.
//! - A VM runs unless its manifest says `status: {running: false}`.
//! - Spec changes that a restart can apply (cpus, memory, kernel command line, ports, labels)
//!   are applied by stopping the VM, updating it and starting it again: its disk is kept.
//!   Changes of image, kernel image or disk size are reported as pending (they would need a new
//!   disk).
//! - Invalid manifests are reported per file; the others are still reconciled. Two files naming
//!   one VM are both reported and neither is applied.
//! - Many hosts can follow one repository: a manifest annotated `ignite.weave.works/host: NAME`
//!   runs only on the host whose daemon has `--host NAME` ([`for_host`]); moving the annotation
//!   moves the VM (the old host removes it, the new one creates it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignite_api::{decode_objects, Object, ObjectMeta, Uid, Vm, VmSpec};
use ignite_store::Store;
use serde::Deserialize;

use crate::config::LoadedConfig;
use crate::create::{create_vm, CreateOptions};
use crate::start::{start, StartOptions};

pub const MANAGED_LABEL: &str = "ignite.weave.works/managed-by";
pub const MANAGED_VALUE: &str = "ignited";
pub const SOURCE_ANNOTATION: &str = "ignite.weave.works/manifest";
pub const SPEC_HASH_ANNOTATION: &str = "ignite.weave.works/spec-hash";
/// Pins a manifest's VM to one host (`ignited gitops --host NAME`); without it, every host
/// following the repository runs the VM.
pub const HOST_ANNOTATION: &str = "ignite.weave.works/host";

/// The manifests meant for `host`: pinned to it, or pinned to none. With `host` unset, all.
pub fn for_host(desired: Vec<Desired>, host: Option<&str>) -> Vec<Desired> {
    let Some(host) = host else { return desired };
    desired.into_iter().filter(|d| d.vm.metadata.annotations.get(HOST_ANNOTATION).is_none_or(|h| h == host)).collect()
}

/// A VM some manifest asks for.
#[derive(Debug, Clone)]
pub struct Desired {
    pub file: PathBuf,
    pub vm: Vm,
    pub running: bool,
    pub spec_hash: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub created: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    pub pending: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn is_quiet(&self) -> bool {
        self.created.is_empty()
            && self.started.is_empty()
            && self.stopped.is_empty()
            && self.restarted.is_empty()
            && self.removed.is_empty()
            && self.pending.is_empty()
            && self.errors.is_empty()
    }
}

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The UID of a manifest VM without one: stable for (file name, VM name).
pub fn stable_uid(file: &Path, name: &str) -> Uid {
    let f = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Uid::from_u64(fnv64(format!("{f}\0{name}").as_bytes()))
}

fn spec_hash(spec: &VmSpec) -> String {
    format!("{:016x}", fnv64(&serde_json::to_vec(spec).unwrap_or_default()))
}

/// `status.running` of each document, when the document says it (None: absent).
fn running_flags(bytes: &[u8]) -> Vec<Option<bool>> {
    let Ok(text) = std::str::from_utf8(bytes) else { return Vec::new() };
    if text.trim_start().starts_with('{') {
        return serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .map(|v| v.ok().and_then(|v| v.get("status").and_then(|s| s.get("running")).and_then(|r| r.as_bool())))
            .collect();
    }
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .map(|v| v.get("status").and_then(|s| s.get("running")).and_then(|r| r.as_bool()))
        .collect()
}

/// Reads every `*.yaml`, `*.yml` and `*.json` in `dir`.
pub fn read_manifest_dir(dir: &Path) -> (Vec<Desired>, Vec<String>) {
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect(),
        Err(e) => return (Vec::new(), vec![format!("cannot read {}: {e}", dir.display())]),
    };
    files.sort();
    let mut desired: Vec<Desired> = Vec::new();
    for f in files {
        let bytes = match crate::config::read_bounded(&f) {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let objs = match decode_objects(&bytes) {
            Ok(o) => o,
            Err(e) => {
                errors.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        let flags = running_flags(&bytes);
        for (i, o) in objs.into_iter().enumerate() {
            let Object::Vm(mut vm) = o else { continue };
            if vm.metadata.name.is_empty() {
                errors.push(format!("{}: document {}: a VM needs metadata.name", f.display(), i + 1));
                continue;
            }
            if vm.metadata.uid.is_none() {
                vm.metadata.uid = Some(stable_uid(&f, &vm.metadata.name));
            }
            let running = flags.get(i).copied().flatten().unwrap_or(true);
            let spec_hash = spec_hash(&vm.spec);
            desired.push(Desired { file: f.clone(), vm, running, spec_hash });
        }
    }
    // Two files naming one VM: neither is applied.
    let mut by_name: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for d in &desired {
        by_name.entry(d.vm.metadata.name.clone()).or_default().push(d.file.clone());
    }
    let dup: HashSet<String> = by_name.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k.clone()).collect();
    for n in &dup {
        let files: Vec<String> = by_name[n].iter().map(|p| p.display().to_string()).collect();
        errors.push(format!("VM {n:?} is described by several manifests ({}): none is applied", files.join(", ")));
    }
    desired.retain(|d| !dup.contains(&d.vm.metadata.name));
    (desired, errors)
}

fn is_managed(vm: &Vm) -> bool {
    vm.metadata.labels.get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_VALUE)
}

/// One reconcile pass.
pub fn reconcile(store: &Store, config: &LoadedConfig, desired: &[Desired], create: &CreateOptions) -> Report {
    let mut r = Report::default();
    let grace = Duration::from_secs(30);
    let wanted: HashSet<String> = desired.iter().filter_map(|d| d.vm.metadata.uid.map(|u| u.to_string())).collect();
    for d in desired {
        let uid = d.vm.uid();
        let name = d.vm.metadata.name.clone();
        let existing = match store.get::<Vm>(&uid) {
            Ok(v) => Some(crate::status::refresh(store, v).unwrap_or_else(|_| d.vm.clone())),
            Err(ignite_store::StoreError::NotFound { .. }) => None,
            Err(e) => {
                r.errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut vm = match existing {
            None => {
                if let Ok(Some(other)) = store.by_name::<Vm>(&name) {
                    if !is_managed(&other) {
                        r.errors.push(format!("{name}: a VM of that name exists and is not managed by ignited"));
                        continue;
                    }
                }
                let mut m = d.vm.clone();
                m.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
                m.metadata.annotations.insert(SOURCE_ANNOTATION.into(), d.file.display().to_string());
                m.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), d.spec_hash.clone());
                match create_vm(store, config, Some(m), ObjectMeta::default(), &VmSpec::default(), create) {
                    Ok(v) => {
                        r.created.push(name.clone());
                        v
                    }
                    Err(e) => {
                        r.errors.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
            Some(v) if !is_managed(&v) => {
                r.errors.push(format!("{name}: VM {uid} exists and is not managed by ignited"));
                continue;
            }
            Some(v) => v,
        };
        // Spec changes.
        if vm.metadata.annotations.get(SPEC_HASH_ANNOTATION) != Some(&d.spec_hash) {
            let mut new_spec = config.spec.vm_defaults.clone();
            new_spec.merge_from(&d.vm.spec);
            new_spec.set_defaults();
            let needs_disk = new_spec.image != vm.spec.image
                || new_spec.kernel.oci != vm.spec.kernel.oci
                || new_spec.disk_size() != vm.spec.disk_size();
            if needs_disk {
                r.pending.push(format!(
                    "{name}: image, kernel image or disk size changed: remove and re-create the VM to apply"
                ));
            } else {
                let was_running = vm.status.running;
                if was_running {
                    if let Err(e) = crate::stop::stop(store, vm.clone(), grace) {
                        r.errors.push(format!("{name}: {e}"));
                        continue;
                    }
                }
                let labels = d.vm.metadata.labels.clone();
                let hash = d.spec_hash.clone();
                match store.modify::<Vm, _>(&uid, |v| {
                    v.spec = new_spec;
                    v.metadata.labels = labels;
                    v.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
                    v.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), hash);
                }) {
                    Ok((v, ())) => {
                        vm = v;
                        r.restarted.push(name.clone());
                    }
                    Err(e) => {
                        r.errors.push(format!("{name}: {e}"));
                        continue;
                    }
                }
            }
        }
        // Running state.
        if d.running && !vm.status.running {
            match start(store, config, vm, &StartOptions::default()) {
                Ok(_) => r.started.push(name),
                Err(crate::start::StartError::AlreadyRunning { .. }) => {}
                Err(e) => r.errors.push(format!("{name}: {e}")),
            }
        } else if !d.running && vm.status.running {
            match crate::stop::stop(store, vm, grace) {
                Ok(_) => r.stopped.push(name),
                Err(e) => r.errors.push(format!("{name}: {e}")),
            }
        }
    }
    // Managed VMs whose manifest is gone.
    if let Ok(all) = store.list::<Vm>() {
        for vm in all.into_iter().filter(|v| is_managed(v) && !wanted.contains(&v.uid())) {
            let name = vm.metadata.name.clone();
            let res = crate::remove::remove_vm(store, &vm.uid(), true, |v| {
                crate::stop::kill(store, v.clone()).map(|_| ()).map_err(|e| crate::remove::RemoveError::Stop {
                    name: v.metadata.name.clone(),
                    source: Box::new(e),
                })
            });
            match res {
                Ok(_) => r.removed.push(name),
                Err(e) => r.errors.push(format!("{name}: {e}")),
            }
        }
    }
    r
}

/// Labels of the desired VMs, by name (for status listings).
pub fn names(desired: &[Desired]) -> BTreeMap<String, String> {
    desired.iter().map(|d| (d.vm.metadata.name.clone(), d.vm.uid())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_read_per_file_with_stable_uids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.yaml"),
            "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: one}\nspec: {image: {oci: busybox}}\n---\napiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: two}\nspec: {image: {oci: busybox}}\nstatus: {running: false}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("bad.yaml"), "apiVersion: ignite.weave.works/v9\nkind: VM\n").unwrap();
        std::fs::write(
            d.path().join("c.json"),
            r#"{"apiVersion":"ignite.weave.works/v1alpha4","kind":"VM","metadata":{"name":"dup"},"spec":{}}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("d.yml"),
            "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: dup}\nspec: {}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let (desired, errors) = read_manifest_dir(d.path());
        let names: Vec<&str> = desired.iter().map(|d| d.vm.metadata.name.as_str()).collect();
        assert_eq!(names, vec!["one", "two"]);
        assert!(desired[0].running && !desired[1].running);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("bad.yaml") && e.contains("unknown apiVersion")));
        assert!(errors.iter().any(|e| e.contains("\"dup\" is described by several manifests")));
        let (again, _) = read_manifest_dir(d.path());
        assert_eq!(again[0].vm.metadata.uid, desired[0].vm.metadata.uid, "UIDs are stable");
        assert_ne!(desired[0].vm.metadata.uid, desired[1].vm.metadata.uid);
    }
}
