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
use ignite_runtime::start::{start, StartError, StartOptions};

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

/// What reconciling does to VMs: the runtime's verbs. The reconciler decides, an `Actions`
/// acts — [`Runtime`] on the host, a scripted one in the tests, so that every decision is
/// tested without a VM. Failures are one line for the report.
pub trait Actions: Sync {
    /// The VM as it is now (a supervisor found dead is recorded so).
    fn observe(&self, vm: Vm) -> Vm;
    /// Creates `vm` (validated, defaults filled in; its disk included) and returns it as stored.
    fn create(&self, vm: Vm) -> Result<Vm, String>;
    /// Starts `vm`; `Ok(false)` when it turned out to run already.
    fn start(&self, vm: Vm) -> Result<bool, String>;
    /// Stops `vm` (graceful for [`GRACE`], then forced).
    fn stop(&self, vm: Vm) -> Result<(), String>;
    /// Removes `vm`, killing it first if it runs.
    fn remove(&self, vm: Vm) -> Result<(), String>;
}

/// The real actions: `ignite`'s create, start, stop and rm.
pub struct Runtime<'a> {
    pub store: &'a Store,
    pub config: &'a LoadedConfig,
    pub create: &'a CreateOptions,
}

impl Actions for Runtime<'_> {
    fn observe(&self, vm: Vm) -> Vm {
        ignite_runtime::recover::refresh(self.store, vm.clone()).unwrap_or(vm)
    }

    fn create(&self, vm: Vm) -> Result<Vm, String> {
        create_vm(self.store, self.config, Some(vm), ObjectMeta::default(), &VmSpec::default(), self.create)
            .map_err(|e| chain(&e))
    }

    fn start(&self, vm: Vm) -> Result<bool, String> {
        match start(self.store, self.config, vm, &StartOptions::default()) {
            Ok(_) => Ok(true),
            Err(StartError::AlreadyRunning { .. }) => Ok(false),
            Err(e) => Err(chain(&e)),
        }
    }

    fn stop(&self, vm: Vm) -> Result<(), String> {
        ignite_runtime::stop::stop(self.store, vm, GRACE).map(drop).map_err(|e| chain(&e))
    }

    fn remove(&self, vm: Vm) -> Result<(), String> {
        let store = self.store;
        ignite_runtime::remove::remove_vm(store, &vm.uid(), true).map(drop).map_err(|e| chain(&e))
    }
}

/// One reconcile pass over what `manifests` asks for (see [`read_manifest_dir`], and
/// [`for_host`] for the manifests of this host), through `controller`: each VM on its own,
/// several at once, a failed one retried after its backoff (reported in `deferred`).
pub fn reconcile(
    store: &Store,
    config: &LoadedConfig,
    manifests: &Manifests,
    actions: &dyn Actions,
    controller: &Controller,
) -> Report {
    reconcile_at(Instant::now(), store, config, manifests, actions, controller)
}

/// [`reconcile`] as of `now` (the pass's time, from which backoffs count).
fn reconcile_at(
    now: Instant,
    store: &Store,
    config: &LoadedConfig,
    manifests: &Manifests,
    actions: &dyn Actions,
    controller: &Controller,
) -> Report {
    let mut r = Report::default();
    let desired = &manifests.desired;
    let wanted: HashSet<String> = desired.iter().filter_map(|d| d.vm.metadata.uid.map(|u| u.to_string())).collect();
    let items = desired.iter().map(|d| (d.vm.uid(), d)).collect();
    let runs = controller.run(now, items, |_, d| reconcile_one(store, config, d, actions));
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
    let removals = controller.run(now, orphans, |_, vm| remove_orphan(vm, actions));
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
fn reconcile_one(store: &Store, config: &LoadedConfig, d: &Desired, actions: &dyn Actions) -> (Report, bool) {
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
        r.errors.push(format!("{name}: {msg}"));
        (r, true)
    };
    let existing = match store.get::<Vm>(&uid) {
        Ok(v) => Some(actions.observe(v)),
        Err(ignite_store::StoreError::NotFound { .. }) => None,
        Err(e) => return failed(r, chain(&e)),
    };
    let mut vm = match existing {
        None => {
            if let Ok(Some(other)) = store.by_name::<Vm>(&name) {
                if !is_managed(&other) {
                    r.errors.push(format!("{name}: a VM of that name exists and is not managed by ignited"));
                    return (r, false);
                }
            }
            // What `ignite create` stores: the validated VM, defaults filled in.
            let mut m = valid.clone();
            m.metadata.labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
            m.metadata.annotations.insert(SOURCE_ANNOTATION.into(), d.file.display().to_string());
            m.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), d.spec_hash.clone());
            match actions.create(m) {
                Ok(v) => {
                    ignite_proc::fault::point("reconcile.created");
                    r.created.push(name.clone());
                    v
                }
                Err(e) => return failed(r, e),
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
                if let Err(e) = actions.stop(vm.clone()) {
                    return failed(r, e);
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
                Err(e) => return failed(r, chain(&e)),
            }
        }
    }
    // Running state.
    if d.running && !vm.status.running {
        match actions.start(vm) {
            Ok(true) => r.started.push(name.clone()),
            Ok(false) => {}
            Err(e) => return failed(r, e),
        }
    } else if !d.running && vm.status.running {
        match actions.stop(vm) {
            Ok(()) => r.stopped.push(name.clone()),
            Err(e) => return failed(r, e),
        }
    }
    (r, false)
}

/// Removes a managed VM whose manifest is gone.
fn remove_orphan(vm: Vm, actions: &dyn Actions) -> (Report, bool) {
    let mut r = Report::default();
    let name = vm.metadata.name.clone();
    match actions.remove(vm) {
        Ok(()) => {
            r.removed.push(name);
            (r, false)
        }
        Err(e) => {
            r.errors.push(format!("{name}: {e}"));
            (r, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::backoff;

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

    /// Actions that do to the store what the runtime's would, record each call and fail the
    /// calls they are told to: the reconciler's decisions, without a VM.
    struct Scripted<'a> {
        store: &'a Store,
        calls: std::sync::Mutex<Vec<String>>,
        fail: std::sync::Mutex<HashSet<String>>,
    }

    impl<'a> Scripted<'a> {
        fn new(store: &'a Store) -> Self {
            Scripted { store, calls: Default::default(), fail: Default::default() }
        }
        /// The calls since the last look, sorted (VMs are reconciled concurrently).
        fn take(&self) -> Vec<String> {
            let mut c = std::mem::take(&mut *self.calls.lock().unwrap());
            c.sort();
            c
        }
        fn act(&self, verb: &str, vm: &Vm) -> Result<(), String> {
            let call = format!("{verb} {}", vm.metadata.name);
            self.calls.lock().unwrap().push(call.clone());
            match self.fail.lock().unwrap().contains(&call) {
                true => Err(format!("{verb} failed (scripted)")),
                false => Ok(()),
            }
        }
        fn set_running(&self, vm: &Vm, running: bool) {
            self.store
                .modify::<Vm, _>(&vm.uid(), |v| match running {
                    true => v.status.record_running(Default::default(), chrono::Utc::now()),
                    false => {
                        v.status.record_ended(None, Some(0), &ignite_api::Ending::Stopped, chrono::Utc::now());
                    }
                })
                .unwrap();
        }
    }

    impl Actions for Scripted<'_> {
        fn observe(&self, vm: Vm) -> Vm {
            vm
        }
        fn create(&self, vm: Vm) -> Result<Vm, String> {
            self.act("create", &vm)?;
            Ok(self.store.create(&self.store.lock().unwrap(), vm).unwrap())
        }
        fn start(&self, vm: Vm) -> Result<bool, String> {
            self.act("start", &vm)?;
            self.set_running(&vm, true);
            Ok(true)
        }
        fn stop(&self, vm: Vm) -> Result<(), String> {
            self.act("stop", &vm)?;
            self.set_running(&vm, false);
            Ok(())
        }
        fn remove(&self, vm: Vm) -> Result<(), String> {
            self.act("remove", &vm)?;
            self.store.remove::<Vm>(&self.store.lock().unwrap(), &vm.uid()).unwrap();
            Ok(())
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        store: Store,
        config: LoadedConfig,
        controller: Controller,
    }

    impl Setup {
        fn new() -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("state")).unwrap();
            std::fs::create_dir(dir.path().join("manifests")).unwrap();
            Setup {
                dir,
                store,
                config: LoadedConfig {
                    spec: Default::default(),
                    source: ignite_runtime::config::ConfigSource::Defaults,
                },
                controller: Controller::new(4),
            }
        }
        fn write(&self, file: &str, body: &str) {
            let p = self.dir.path().join("manifests").join(file);
            if body.is_empty() {
                std::fs::remove_file(p).unwrap();
            } else {
                std::fs::write(p, format!("apiVersion: ignite.weave.works/v1alpha4\nkind: VM\n{body}")).unwrap();
            }
        }
        fn pass_at(&self, now: Instant, actions: &Scripted) -> Report {
            let m = read_manifest_dir(&self.dir.path().join("manifests"));
            let mut r = reconcile_at(now, &self.store, &self.config, &m, actions, &self.controller);
            r.errors.extend(m.errors);
            r
        }
        fn vm(&self, name: &str) -> Vm {
            self.store.by_name::<Vm>(name).unwrap().unwrap()
        }
    }

    const A: &str = "metadata: {name: a}\nspec: {image: {oci: busybox}, cpus: 1}\n";

    #[test]
    fn a_manifest_is_created_and_started_once_and_then_left_alone() {
        let s = Setup::new();
        let act = Scripted::new(&s.store);
        s.write("a.yaml", A);
        s.write("b.yaml", "metadata: {name: b}\nspec: {image: {oci: busybox}}\nstatus: {running: false}\n");
        let r = s.pass_at(Instant::now(), &act);
        assert_eq!(act.take(), ["create a", "create b", "start a"]);
        assert_eq!((r.created.len(), r.started.clone(), r.errors.len()), (2, vec!["a".to_string()], 0), "{r:?}");
        let a = s.vm("a");
        assert!(a.status.running && is_managed(&a));
        let r = s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty(), "a second pass over the same manifests does nothing: {r:?}");
        // The manifest asks for a stop.
        s.write("a.yaml", &format!("{A}status: {{running: false}}\n"));
        s.pass_at(Instant::now(), &act);
        assert_eq!(act.take(), ["stop a"]);
        assert!(!s.vm("a").status.running);
        // A VM stopped by hand is started again by the next pass.
        s.write("a.yaml", A);
        s.pass_at(Instant::now(), &act);
        assert_eq!(act.take(), ["start a"]);
    }

    #[test]
    fn a_spec_change_restarts_the_same_vm_and_a_disk_change_stays_pending() {
        let s = Setup::new();
        let act = Scripted::new(&s.store);
        s.write("a.yaml", A);
        s.pass_at(Instant::now(), &act);
        act.take();
        let uid = s.vm("a").uid();
        s.write("a.yaml", "metadata: {name: a}\nspec: {image: {oci: busybox}, cpus: 2}\n");
        let r = s.pass_at(Instant::now(), &act);
        assert_eq!(act.take(), ["start a", "stop a"], "stopped, updated, started: {r:?}");
        let a = s.vm("a");
        assert_eq!((a.uid(), a.spec.cpus, a.status.running), (uid.clone(), 2, true));
        assert_eq!(r.restarted, ["a"]);
        // Another image needs a new disk: reported, nothing done.
        s.write("a.yaml", "metadata: {name: a}\nspec: {image: {oci: alpine}, cpus: 2}\n");
        let r = s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty());
        assert!(r.pending[0].contains("remove and re-create"), "{r:?}");
        assert_eq!(s.vm("a").spec.image, a.spec.image, "the VM keeps its image");
        // An invalid change is held: the VM runs on as it was.
        s.write("a.yaml", "metadata: {name: a}\nspec: {image: {oci: busybox}, cpus: 1000}\n");
        let r = s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty());
        assert_eq!((r.held.clone(), s.vm("a").spec.cpus), (vec!["a".to_string()], 2), "{r:?}");
    }

    #[test]
    fn a_vm_is_removed_only_when_its_manifest_is_gone_from_a_readable_directory() {
        let s = Setup::new();
        let act = Scripted::new(&s.store);
        s.write("a.yaml", A);
        s.pass_at(Instant::now(), &act);
        act.take();
        std::fs::write(s.dir.path().join("manifests/a.yaml"), "apiVersion: [").unwrap();
        let r = s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty(), "an unparsable manifest holds its VM: {r:?}");
        assert_eq!(r.held, ["a"]);
        let moved = s.dir.path().join("elsewhere");
        std::fs::rename(s.dir.path().join("manifests"), &moved).unwrap();
        s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty(), "a missing directory holds every VM");
        std::fs::rename(&moved, s.dir.path().join("manifests")).unwrap();
        s.write("a.yaml", "");
        let r = s.pass_at(Instant::now(), &act);
        assert_eq!((act.take(), r.removed), (vec!["remove a".to_string()], vec!["a".to_string()]));
        assert!(s.store.by_name::<Vm>("a").unwrap().is_none());
    }

    #[test]
    fn a_failing_vm_is_retried_after_its_backoff_while_the_others_go_on() {
        let s = Setup::new();
        let act = Scripted::new(&s.store);
        act.fail.lock().unwrap().insert("start a".into());
        s.write("a.yaml", A);
        let t0 = Instant::now();
        let r = s.pass_at(t0, &act);
        assert_eq!(act.take(), ["create a", "start a"]);
        assert!(r.errors[0].starts_with("a: start failed"), "{r:?}");
        // A pass within the backoff leaves the VM alone and says so; another VM goes on.
        s.write("b.yaml", "metadata: {name: b}\nspec: {image: {oci: busybox}}\n");
        let r = s.pass_at(t0 + Duration::from_millis(500), &act);
        assert_eq!(act.take(), ["create b", "start b"]);
        assert!(r.deferred[0].starts_with("a: failed 1 time(s) in a row"), "{r:?}");
        // After the backoff (1 s after one failure) it is tried again; the second failure
        // doubles the wait.
        // (Backoffs count from when an attempt ended: the due time is the controller's.)
        let due = s.controller.next_retry().unwrap();
        assert!(due >= t0 + backoff(1));
        let r = s.pass_at(due, &act);
        assert_eq!(act.take(), ["start a"], "{r:?}");
        let retry = s.controller.next_retry().unwrap();
        assert!(retry >= due + backoff(2), "the wait doubles");
        act.fail.lock().unwrap().clear();
        let r = s.pass_at(retry, &act);
        assert_eq!((act.take(), r.started), (vec!["start a".to_string()], vec!["a".to_string()]));
        assert!(s.controller.next_retry().is_none(), "success clears the backoff");
    }

    #[test]
    fn a_vm_ignited_does_not_manage_is_never_touched() {
        let s = Setup::new();
        let act = Scripted::new(&s.store);
        let mine = Vm::new(ObjectMeta { name: "a".into(), ..Default::default() }, VmSpec::default());
        s.store.create(&s.store.lock().unwrap(), mine).unwrap();
        s.write("a.yaml", A);
        let r = s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty());
        assert!(r.errors[0].contains("not managed by ignited"), "{r:?}");
        s.write("a.yaml", "");
        s.pass_at(Instant::now(), &act);
        assert!(act.take().is_empty(), "nor removed when no manifest names it");
        assert!(s.store.by_name::<Vm>("a").unwrap().is_some());
    }
}
