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
//! - **The last good state is kept.** A manifest file that cannot be read, parsed or validated
//!   (a typo, an unknown field, a truncated or empty file), or that names a VM another file
//!   names too, is reported and its VMs are *held*: left exactly as they are, never removed.
//!   A missing or unreadable directory changes nothing. Only a VM whose manifest is gone
//!   from a directory read completely is removed. Every spec goes through the same
//!   validation as `ignite create` before anything is applied.
//! - Many hosts can follow one repository: a manifest annotated `ignite.weave.works/host: NAME`
//!   runs only on the host whose daemon has `--host NAME` ([`for_host`]); moving the annotation
//!   moves the VM (the old host removes it, the new one creates it).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ignite_api::{decode_objects, Object, ObjectMeta, Uid, Vm, VmSpec};
use ignite_store::Store;
use serde::Deserialize;

use ignite_runtime::config::LoadedConfig;
use ignite_runtime::create::{build_vm, create_vm, CreateOptions};
use ignite_runtime::errors::chain;
use ignite_runtime::start::{start, StartOptions};

use crate::controller::{Controller, Ran};

pub const MANAGED_LABEL: &str = "ignite.weave.works/managed-by";
pub const MANAGED_VALUE: &str = "ignited";
pub const SOURCE_ANNOTATION: &str = "ignite.weave.works/manifest";
pub const SPEC_HASH_ANNOTATION: &str = "ignite.weave.works/spec-hash";
/// Pins a manifest's VM to one host (`ignited gitops --host NAME`); without it, every host
/// following the repository runs the VM.
pub const HOST_ANNOTATION: &str = "ignite.weave.works/host";

/// The manifests meant for `host`: pinned to it, or pinned to none. With `host` unset, all.
pub fn for_host(mut m: Manifests, host: Option<&str>) -> Manifests {
    let Some(host) = host else { return m };
    m.desired.retain(|d| d.vm.metadata.annotations.get(HOST_ANNOTATION).is_none_or(|h| h == host));
    m
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
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub created: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub removed: Vec<String>,
    pub pending: Vec<String>,
    pub errors: Vec<String>,
    /// VMs left exactly as they are because their manifest is unusable.
    pub held: Vec<String>,
    /// VMs not acted on this pass: their last attempts failed and their backoff runs.
    pub deferred: Vec<String>,
}

impl Report {
    /// Adds what `other` (one VM's work) did.
    pub fn merge(&mut self, other: Report) {
        let Report { created, started, stopped, restarted, removed, pending, errors, held, deferred } = other;
        self.created.extend(created);
        self.started.extend(started);
        self.stopped.extend(stopped);
        self.restarted.extend(restarted);
        self.removed.extend(removed);
        self.pending.extend(pending);
        self.errors.extend(errors);
        self.held.extend(held);
        self.deferred.extend(deferred);
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

/// What a manifest directory asks for, and what could not be read.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    pub desired: Vec<Desired>,
    /// One line per problem (file, document, reason).
    pub errors: Vec<String>,
    /// Files present but unusable: their VMs are held as they are.
    pub held_files: HashSet<PathBuf>,
    /// VM names held (named by several files).
    pub held_names: HashSet<String>,
    /// Whether the directory was listed completely: only then may a VM whose manifest is
    /// gone be removed.
    pub complete: bool,
}

impl Manifests {
    /// Whether a managed VM without a desired entry must be kept anyway: its manifest file is
    /// held, its name is held, or the directory was not read completely.
    pub fn holds(&self, vm: &Vm) -> bool {
        !self.complete
            || self.held_names.contains(&vm.metadata.name)
            || vm.metadata.annotations.get(SOURCE_ANNOTATION).is_some_and(|f| self.held_files.contains(Path::new(f)))
    }
}

/// Reads every `*.yaml`, `*.yml` and `*.json` in `dir`.
pub fn read_manifest_dir(dir: &Path) -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<PathBuf> = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            m.complete = true;
            for e in rd {
                match e {
                    Ok(e) => {
                        let p = e.path();
                        if p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") && !p.is_dir() {
                            files.push(p);
                        }
                    }
                    Err(e) => {
                        m.complete = false;
                        m.errors.push(format!("cannot list {}: {e}: keeping every VM as it is", dir.display()));
                    }
                }
            }
        }
        Err(e) => {
            m.errors.push(format!("cannot read {}: {e}: keeping every VM as it is", dir.display()));
            return m;
        }
    }
    files.sort();
    let mut desired: Vec<Desired> = Vec::new();
    for f in files {
        let hold = |m: &mut Manifests, why: String| {
            m.errors.push(format!("{}: {why}: its VMs are kept as they are", f.display()));
            m.held_files.insert(f.clone());
        };
        let bytes = match ignite_runtime::config::read_bounded(&f) {
            Ok(b) => b,
            Err(e) => {
                hold(&mut m, e.to_string());
                continue;
            }
        };
        let objs = match decode_objects(&bytes) {
            Ok(o) => o,
            Err(e) => {
                hold(&mut m, e.to_string());
                continue;
            }
        };
        if objs.is_empty() {
            hold(&mut m, "holds no manifest (empty)".into());
            continue;
        }
        let flags = running_flags(&bytes);
        let mut from_file = Vec::new();
        let mut bad = None;
        for (i, o) in objs.into_iter().enumerate() {
            let Object::Vm(mut vm) = o else { continue };
            if vm.metadata.name.is_empty() {
                bad = Some(format!("document {}: a VM needs metadata.name", i + 1));
                break;
            }
            if vm.metadata.uid.is_none() {
                vm.metadata.uid = Some(stable_uid(&f, &vm.metadata.name));
            }
            let running = flags.get(i).copied().flatten().unwrap_or(true);
            let spec_hash = spec_hash(&vm.spec);
            from_file.push(Desired { file: f.clone(), vm, running, spec_hash });
        }
        // A file is used whole or not at all: half of a file is not what its author meant.
        match bad {
            Some(why) => hold(&mut m, why),
            None => desired.extend(from_file),
        }
    }
    // Two files naming one VM: neither is applied, and the VM is kept as it is.
    let mut by_name: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for d in &desired {
        by_name.entry(d.vm.metadata.name.clone()).or_default().push(d.file.clone());
    }
    let mut dup: Vec<(&String, &Vec<PathBuf>)> = by_name.iter().filter(|(_, v)| v.len() > 1).collect();
    dup.sort();
    for (n, files) in dup {
        let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        m.errors.push(format!("VM {n:?} is described by several manifests ({}): none is applied", files.join(", ")));
        m.held_names.insert(n.clone());
    }
    desired.retain(|d| !m.held_names.contains(&d.vm.metadata.name));
    m.desired = desired;
    m
}

fn is_managed(vm: &Vm) -> bool {
    vm.metadata.labels.get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_VALUE)
}

/// How long a stop for an update or a removal may take before the VM is killed.
const GRACE: Duration = Duration::from_secs(30);

/// One reconcile pass over what `manifests` asks for (see [`read_manifest_dir`], and
/// [`for_host`] for the manifests of this host), through `controller`: each VM on its own,
/// several at once, a failed one retried after its backoff (reported in `deferred`).
pub fn reconcile(
    store: &Store,
    config: &LoadedConfig,
    manifests: &Manifests,
    create: &CreateOptions,
    controller: &Controller,
) -> Report {
    let now = Instant::now();
    let mut r = Report::default();
    let desired = &manifests.desired;
    let wanted: HashSet<String> = desired.iter().filter_map(|d| d.vm.metadata.uid.map(|u| u.to_string())).collect();
    let items = desired.iter().map(|d| (d.vm.uid(), d)).collect();
    let runs = controller.run(now, items, |_, d| reconcile_one(store, config, d, create));
    // Managed VMs whose manifest is gone from a directory read completely.
    let mut orphans = Vec::new();
    if let Ok(all) = store.list::<Vm>() {
        for vm in all.into_iter().filter(|v| is_managed(v) && !wanted.contains(&v.uid())) {
            if manifests.holds(&vm) {
                r.held.push(vm.metadata.name.clone());
            } else {
                orphans.push((vm.uid(), vm));
            }
        }
    }
    let removals = controller.run(now, orphans, |_, vm| remove_orphan(store, vm));
    let names: HashMap<String, String> = desired.iter().map(|d| (d.vm.uid(), d.vm.metadata.name.clone())).collect();
    for (uid, ran) in runs.into_iter().chain(removals) {
        match ran {
            Ran::Done(part) => r.merge(part),
            Ran::Deferred { failures, retry_in } => r.deferred.push(format!(
                "{}: failed {failures} time(s) in a row; tried again in {} s",
                names.get(&uid).unwrap_or(&uid),
                retry_in.as_secs().max(1)
            )),
        }
    }
    let mut keys = wanted;
    keys.extend(store.list::<Vm>().unwrap_or_default().into_iter().map(|v| v.uid()));
    controller.retain(&keys);
    r.held.sort();
    r.held.dedup();
    r
}

/// Brings one VM to what its manifest says. Fails (for the backoff) when an action failed;
/// an unusable spec is held, not retried.
fn reconcile_one(store: &Store, config: &LoadedConfig, d: &Desired, create: &CreateOptions) -> (Report, bool) {
    let mut r = Report::default();
    let uid = d.vm.uid();
    let name = d.vm.metadata.name.clone();
    // The same validation as `ignite create`, before anything is applied; an invalid spec
    // leaves the VM as it is.
    let valid = match build_vm(config, Some(d.vm.clone()), ObjectMeta::default(), &VmSpec::default()) {
        Ok(v) => v,
        Err(e) => {
            r.errors.push(format!("{}: {}: the VM is kept as it is", d.file.display(), chain(&e)));
            r.held.push(name);
            return (r, false);
        }
    };
    let failed = |mut r: Report, msg: String| {
        r.errors.push(msg);
        (r, true)
    };
    let existing = match store.get::<Vm>(&uid) {
        Ok(v) => Some(ignite_runtime::recover::refresh(store, v).unwrap_or_else(|_| d.vm.clone())),
        Err(ignite_store::StoreError::NotFound { .. }) => None,
        Err(e) => return failed(r, format!("{name}: {}", chain(&e))),
    };
    let mut vm = match existing {
        None => {
            if let Ok(Some(other)) = store.by_name::<Vm>(&name) {
                if !is_managed(&other) {
                    r.errors.push(format!("{name}: a VM of that name exists and is not managed by ignited"));
                    return (r, false);
                }
            }
            let mut m = d.vm.clone();
            m.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
            m.metadata.annotations.insert(SOURCE_ANNOTATION.into(), d.file.display().to_string());
            m.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), d.spec_hash.clone());
            match create_vm(store, config, Some(m), ObjectMeta::default(), &VmSpec::default(), create) {
                Ok(v) => {
                    ignite_proc::fault::point("reconcile.created");
                    r.created.push(name.clone());
                    v
                }
                Err(e) => return failed(r, format!("{name}: {}", chain(&e))),
            }
        }
        Some(v) if !is_managed(&v) => {
            r.errors.push(format!("{name}: VM {uid} exists and is not managed by ignited"));
            return (r, false);
        }
        Some(v) => v,
    };
    // Spec changes.
    if vm.metadata.annotations.get(SPEC_HASH_ANNOTATION) != Some(&d.spec_hash) {
        let new_spec = valid.spec;
        let needs_disk = new_spec.image != vm.spec.image
            || new_spec.kernel.oci != vm.spec.kernel.oci
            || new_spec.disk_size() != vm.spec.disk_size();
        if needs_disk {
            r.pending.push(format!(
                "{name}: image, kernel image or disk size changed: remove and re-create the VM to apply"
            ));
        } else {
            if vm.status.running {
                if let Err(e) = ignite_runtime::stop::stop(store, vm.clone(), GRACE) {
                    return failed(r, format!("{name}: {}", chain(&e)));
                }
                ignite_proc::fault::point("reconcile.stopped-for-update");
            }
            let labels = d.vm.metadata.labels.clone();
            let hash = d.spec_hash.clone();
            let file = d.file.display().to_string();
            match store.modify::<Vm, _>(&uid, |v| {
                v.spec = new_spec;
                v.metadata.labels = labels;
                v.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
                v.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), hash);
                v.metadata.annotations.insert(SOURCE_ANNOTATION.into(), file);
            }) {
                Ok((v, ())) => {
                    vm = v;
                    r.restarted.push(name.clone());
                }
                Err(e) => return failed(r, format!("{name}: {}", chain(&e))),
            }
        }
    }
    // Running state.
    if d.running && !vm.status.running {
        match start(store, config, vm, &StartOptions::default()) {
            Ok(_) => r.started.push(name),
            Err(ignite_runtime::start::StartError::AlreadyRunning { .. }) => {}
            Err(e) => return failed(r, format!("{name}: {}", chain(&e))),
        }
    } else if !d.running && vm.status.running {
        match ignite_runtime::stop::stop(store, vm, GRACE) {
            Ok(_) => r.stopped.push(name),
            Err(e) => return failed(r, format!("{name}: {}", chain(&e))),
        }
    }
    (r, false)
}

/// Removes a managed VM whose manifest is gone.
fn remove_orphan(store: &Store, vm: Vm) -> (Report, bool) {
    let mut r = Report::default();
    let name = vm.metadata.name.clone();
    let res = ignite_runtime::remove::remove_vm(store, &vm.uid(), true, |v| {
        ignite_runtime::stop::kill(store, v.clone()).map(|_| ()).map_err(|e| {
            ignite_runtime::remove::RemoveError::Stop { name: v.metadata.name.clone(), source: Box::new(e) }
        })
    });
    match res {
        Ok(_) => {
            r.removed.push(name);
            (r, false)
        }
        Err(e) => {
            r.errors.push(format!("{name}: {}", chain(&e)));
            (r, true)
        }
    }
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
        std::fs::write(d.path().join("empty.yaml"), "").unwrap();
        let m = read_manifest_dir(d.path());
        let desired = &m.desired;
        let names: Vec<&str> = desired.iter().map(|d| d.vm.metadata.name.as_str()).collect();
        assert_eq!(names, vec!["one", "two"]);
        assert!(desired[0].running && !desired[1].running);
        assert_eq!(m.errors.len(), 3, "{:?}", m.errors);
        assert!(m.errors.iter().any(|e| e.contains("bad.yaml") && e.contains("unknown apiVersion")));
        assert!(m.errors.iter().any(|e| e.contains("empty.yaml") && e.contains("holds no manifest")));
        assert!(m.errors.iter().any(|e| e.contains("\"dup\" is described by several manifests")));
        assert!(m.complete);
        assert_eq!(m.held_files.len(), 2);
        assert!(m.held_names.contains("dup"));
        let again = read_manifest_dir(d.path());
        assert_eq!(again.desired[0].vm.metadata.uid, desired[0].vm.metadata.uid, "UIDs are stable");
        assert_ne!(desired[0].vm.metadata.uid, desired[1].vm.metadata.uid);
    }

    fn managed(name: &str, file: &Path) -> Vm {
        let mut vm = Vm::new(ObjectMeta { name: name.into(), ..Default::default() }, VmSpec::default());
        vm.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
        vm.metadata.annotations.insert(SOURCE_ANNOTATION.into(), file.display().to_string());
        vm
    }

    #[test]
    fn vms_of_unusable_manifests_and_unreadable_directories_are_held() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("a.yaml");
        std::fs::write(
            &file,
            "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: a}\nspec: {cpu: 1}\n",
        )
        .unwrap();
        let m = read_manifest_dir(d.path());
        assert!(m.desired.is_empty() && m.holds(&managed("a", &file)), "an invalid file holds its VM");
        assert!(!m.holds(&managed("b", &d.path().join("b.yaml"))), "a VM whose file is gone is not held");
        std::fs::remove_file(&file).unwrap();
        let m = read_manifest_dir(&d.path().join("missing"));
        assert!(!m.complete && m.holds(&managed("b", &d.path().join("b.yaml"))), "a missing directory holds all");
        assert!(m.errors[0].contains("keeping every VM"), "{:?}", m.errors);
    }
}
