//! ignited's HTTP/JSON API and Prometheus metrics on a unix socket (default
//! `/run/ignite/ignited.sock`, mode 0600: root only). A small HTTP/1.1 server, one request per
//! connection, bodies bounded to 1 MiB.
//!
//! - `GET /v1/vms`, `GET /v1/vms/{name}`: VM objects (v1alpha4 JSON), live status
//! - `POST /v1/vms` with a VM manifest (YAML or JSON): create and start
//! - `POST /v1/vms/{name}/start`, `POST /v1/vms/{name}/stop`, `DELETE /v1/vms/{name}`
//! - `GET /v1/vms/{name}/logs`: the serial console log
//! - `GET /v1/reconcile`: the last pass's report (created, started, stopped, restarted,
//!   removed, pending, errors — unusable manifests included —, and the VMs held as they are)
//! - `GET /metrics`: VMs by state, reconcile passes, errors, held and deferred VMs and the last
//!   pass's duration

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ignite_api::{decode_object, Object, ObjectMeta, Vm, VmSpec};
use ignite_runtime::{CreateOptions, LoadedConfig};
use ignite_store::Store;

use crate::controller::Controller;

/// Counters the reconcile loop updates and `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub passes: AtomicU64,
    pub errors: AtomicU64,
    pub created: AtomicU64,
    pub removed: AtomicU64,
    pub last_pass_micros: AtomicU64,
    /// Failed fetches of the Git repository (gitops).
    pub sync_errors: AtomicU64,
    /// Status write-backs that could not be pushed (after rebase-and-retry).
    pub push_errors: AtomicU64,
    /// Pushes rejected and retried after a rebase.
    pub push_retries: AtomicU64,
    /// The last pass's report (`GET /v1/reconcile`).
    pub last: std::sync::Mutex<Option<(chrono::DateTime<chrono::Utc>, crate::reconcile::Report)>>,
}

impl Metrics {
    /// Counts a finished pass and keeps its report.
    /// Counts a finished pass and keeps its report. The pass counter moves last, so a reader
    /// that sees it move sees everything the pass recorded.
    pub fn record(&self, r: &crate::reconcile::Report) {
        self.errors.fetch_add(r.errors.len() as u64, Ordering::Relaxed);
        self.created.fetch_add(r.created.len() as u64, Ordering::Relaxed);
        self.removed.fetch_add(r.removed.len() as u64, Ordering::Relaxed);
        if let Ok(mut l) = self.last.lock() {
            *l = Some((chrono::Utc::now(), r.clone()));
        }
        self.passes.fetch_add(1, Ordering::SeqCst);
    }
}

const MAX_BODY: usize = 1 << 20;

pub fn serve(
    path: PathBuf,
    store: Store,
    config: LoadedConfig,
    metrics: Arc<Metrics>,
    controller: Arc<Controller>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (store, config, metrics, controller) =
                (store.clone(), config.clone(), metrics.clone(), controller.clone());
            std::thread::spawn(move || {
                let _ = handle(conn, &store, &config, &metrics, &controller);
            });
        }
    });
    Ok(())
}

struct Req {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn read_request(conn: &UnixStream) -> std::io::Result<Option<Req>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    if r.by_ref().take(8192).read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return Ok(None) };
    let mut len = 0usize;
    for _ in 0..100 {
        let mut h = String::new();
        if r.by_ref().take(8192).read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    if len > MAX_BODY {
        return Ok(Some(Req { method: "TOO_LARGE".into(), path: path.into(), body: vec![] }));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(Req { method: method.into(), path: path.into(), body }))
}

fn respond(mut conn: &UnixStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)
}

fn json_error(conn: &UnixStream, status: u16, e: impl std::fmt::Display) -> std::io::Result<()> {
    respond(conn, status, "application/json", serde_json::json!({ "error": e.to_string() }).to_string().as_bytes())
}

fn handle(
    conn: UnixStream,
    store: &Store,
    config: &LoadedConfig,
    metrics: &Metrics,
    controller: &Controller,
) -> std::io::Result<()> {
    let Some(req) = read_request(&conn)? else { return Ok(()) };
    if req.method == "TOO_LARGE" {
        return json_error(&conn, 413, "request body larger than 1 MiB");
    }
    let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')));
    let flag = |k: &str| param(k) == Some("true");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result: anyhow::Result<(u16, String, Vec<u8>)> = (|| {
        let json = |v: serde_json::Value| Ok((200, "application/json".to_string(), v.to_string().into_bytes()));
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["metrics"]) => {
                Ok((200, "text/plain; version=0.0.4".into(), metrics_text(store, metrics).into_bytes()))
            }
            ("GET", ["v1", "reconcile"]) => {
                let last = metrics.last.lock().ok().and_then(|l| l.clone());
                json(match last {
                    Some((time, report)) => serde_json::json!({ "time": time, "report": report }),
                    None => serde_json::json!({ "time": null, "report": null }),
                })
            }
            ("GET", ["v1", "info"]) => json(serde_json::json!({
                "root": store.root(),
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
            })),
            ("GET", ["v1", "vms"]) => json(serde_json::to_value(ignite_runtime::status::list(store)?)?),
            ("GET", ["v1", "vms", q]) => {
                let vm = ignite_runtime::status::observe(store.resolve::<Vm>(q)?);
                json(serde_json::to_value(vm)?)
            }
            ("GET", ["v1", "vms", q, "logs"]) => {
                let vm = store.resolve::<Vm>(q)?;
                let p = ignite_runtime::vmdir::VmDir::of(store, &vm.uid()).console_log();
                Ok((200, "text/plain".into(), std::fs::read(p).unwrap_or_default()))
            }
            ("POST", ["v1", "vms"]) => {
                let Object::Vm(m) = decode_object(&req.body)? else {
                    anyhow::bail!(ignite_api::DecodeError::Empty);
                };
                let vm = ignite_runtime::create_vm(
                    store,
                    config,
                    Some(m),
                    ObjectMeta::default(),
                    &VmSpec::default(),
                    &CreateOptions::default(),
                )?;
                if param("start") == Some("false") {
                    return Ok((201, "application/json".into(), serde_json::to_vec(&vm)?));
                }
                // As `ignite run`: a VM that never started is removed again.
                let started = ignite_runtime::run::start_new(store, config, vm, &Default::default())?;
                Ok((201, "application/json".into(), serde_json::to_vec(&started.vm)?))
            }
            ("POST", ["v1", "vms", q, "start"]) => {
                let vm = store.resolve::<Vm>(q)?;
                // One action on a VM at a time: the reconciler's and the API's.
                let lock = controller.lock(&vm.uid());
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                json(serde_json::to_value(ignite_runtime::start::start(store, config, vm, &Default::default())?.vm)?)
            }
            ("POST", ["v1", "vms", q, "stop"]) => {
                let vm = store.resolve::<Vm>(q)?;
                let lock = controller.lock(&vm.uid());
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                let secs = param("time").and_then(|t| t.parse().ok()).unwrap_or(10);
                let done = if flag("kill") {
                    ignite_runtime::stop::kill(store, vm)?
                } else {
                    ignite_runtime::stop::stop(store, vm, Duration::from_secs(secs))?
                };
                json(serde_json::to_value(done)?)
            }
            ("DELETE", ["v1", "vms", q]) => {
                let vm = store.resolve::<Vm>(q)?;
                let lock = controller.lock(&vm.uid());
                let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
                // Without ?force=true a running VM is refused, as `ignite rm` without -f.
                let force = flag("force");
                let removed = ignite_runtime::remove_vm(store, &vm.uid(), force)?;
                json(serde_json::to_value(removed)?)
            }
            (_, ["metrics"]) | (_, ["v1", ..]) => {
                Ok((405, "application/json".into(), br#"{"error":"method not allowed"}"#.to_vec()))
            }
            _ => Ok((404, "application/json".into(), br#"{"error":"not found"}"#.to_vec())),
        }
    })();
    match result {
        Ok((s, ct, body)) => respond(&conn, s, &ct, &body),
        Err(e) => {
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            let class = ignite_runtime::errors::classify(e.as_ref());
            let body = serde_json::json!({ "error": msg, "exitCode": class.exit_code() });
            respond(&conn, class.http_status(), "application/json", body.to_string().as_bytes())
        }
    }
}

/// The VMMs' own metrics (Firecracker's flushes), per running VM.
fn vmm_metrics(store: &Store, vms: &[Vm]) -> String {
    let mut out = String::new();
    for v in vms.iter().filter(|v| v.status.running) {
        let Some(name) = v.status.runtime.as_ref().map(|r| r.name.clone()) else { continue };
        // (Reading a VMM's metrics needs no binary.)
        let Ok(backend) = ignite_runtime::boot::backend(&name, &Default::default()) else { continue };
        let dir = ignite_runtime::vmdir::VmDir::of(store, &v.uid());
        for (group, metric, value) in backend.metrics(&dir) {
            out.push_str(&format!(
                "ignite_vmm_metric{{vm=\"{}\",uid=\"{}\",vmm=\"{name}\",group=\"{group}\",name=\"{metric}\"}} {value}\n",
                v.metadata.name,
                v.uid()
            ));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("# HELP ignite_vmm_metric A VMM's own metric for a VM, as it reports it (Firecracker: per flush interval).\n# TYPE ignite_vmm_metric gauge\n{out}")
}

fn metrics_text(store: &Store, m: &Metrics) -> String {
    let vms = ignite_runtime::status::list(store).unwrap_or_default();
    let mut by_state = std::collections::BTreeMap::new();
    for v in &vms {
        *by_state.entry(v.state().to_string().to_lowercase()).or_insert(0u64) += 1;
    }
    let mut s = String::from("# HELP ignite_vms VMs by state.\n# TYPE ignite_vms gauge\n");
    for st in ["running", "stopped", "created"] {
        s.push_str(&format!("ignite_vms{{state=\"{st}\"}} {}\n", by_state.get(st).copied().unwrap_or(0)));
    }
    // Per running VM: the host memory it takes (`status::host_memory`), its jail cgroup's CPU time.
    let mut mem = String::new();
    let mut cpu = String::new();
    for v in vms.iter().filter(|v| v.status.running) {
        let labels = format!("vm=\"{}\",uid=\"{}\"", v.metadata.name, v.uid());
        if let Some(m) = ignite_runtime::status::host_memory(v) {
            mem.push_str(&format!("ignite_vm_memory_bytes{{{labels}}} {m}\n"));
        }
        let Some(j) = v.status.runtime.as_ref().and_then(|r| r.jail.as_ref()) else { continue };
        let (_, c) = ignite_runtime::cgroup::from_status(&j.cgroups).usage();
        if let Some(c) = c {
            cpu.push_str(&format!("ignite_vm_cpu_seconds_total{{{labels}}} {:.6}\n", c as f64 / 1e6));
        }
    }
    s.push_str(&vmm_metrics(store, &vms));
    s.push_str("# HELP ignite_vm_memory_bytes Host memory a VM takes, guest memory included: its jail's cgroup, else its VMM's resident set.\n# TYPE ignite_vm_memory_bytes gauge\n");
    s.push_str(&mem);
    s.push_str("# HELP ignite_vm_cpu_seconds_total CPU time a VM's VMM has used (its cgroup).\n# TYPE ignite_vm_cpu_seconds_total counter\n");
    s.push_str(&cpu);
    let c = |name: &str, help: &str, v: u64| format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
    s.push_str(&c("ignited_reconcile_passes_total", "Reconcile passes run.", m.passes.load(Ordering::Relaxed)));
    s.push_str(&c(
        "ignited_reconcile_errors_total",
        "Errors reported by reconcile passes.",
        m.errors.load(Ordering::Relaxed),
    ));
    s.push_str(&c("ignited_vms_created_total", "VMs created by reconciling.", m.created.load(Ordering::Relaxed)));
    s.push_str(&c("ignited_vms_removed_total", "VMs removed by reconciling.", m.removed.load(Ordering::Relaxed)));
    s.push_str(&c(
        "ignited_git_sync_errors_total",
        "Fetches of the Git repository that failed (the last good state is kept).",
        m.sync_errors.load(Ordering::Relaxed),
    ));
    s.push_str(&c(
        "ignited_git_push_retries_total",
        "Status pushes rejected and retried after a rebase.",
        m.push_retries.load(Ordering::Relaxed),
    ));
    s.push_str(&c(
        "ignited_git_push_errors_total",
        "Status write-backs that could not be pushed.",
        m.push_errors.load(Ordering::Relaxed),
    ));
    let (errs, held, deferred) = m
        .last
        .lock()
        .ok()
        .and_then(|l| l.as_ref().map(|(_, r)| (r.errors.len(), r.held.len(), r.deferred.len())))
        .unwrap_or((0, 0, 0));
    s.push_str(&format!(
        "# HELP ignited_reconcile_last_errors Problems the last pass reported (unusable manifests included).\n# TYPE ignited_reconcile_last_errors gauge\nignited_reconcile_last_errors {errs}\n"
    ));
    s.push_str(&format!(
        "# HELP ignited_vms_held VMs kept as they are because their manifest is unusable.\n# TYPE ignited_vms_held gauge\nignited_vms_held {held}\n"
    ));
    s.push_str(&format!(
        "# HELP ignited_vms_deferred VMs whose last attempts failed, waiting for their backoff.\n# TYPE ignited_vms_deferred gauge\nignited_vms_deferred {deferred}\n"
    ));
    s.push_str(&format!(
        "# HELP ignited_reconcile_last_duration_seconds Duration of the last pass.\n# TYPE ignited_reconcile_last_duration_seconds gauge\nignited_reconcile_last_duration_seconds {:.6}\n",
        m.last_pass_micros.load(Ordering::Relaxed) as f64 / 1e6
    ));
    s
}
