//! `ignited daemon --manifest-dir`: VMs follow the manifests, survive daemon restarts, and are
//! never duplicated.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{ok, prepared_root, until};

fn ignited_bin() -> std::path::PathBuf {
    Path::new(common::bin()).with_file_name("ignited")
}

struct Daemon(Child);

impl Daemon {
    fn start(root: &Path, dir: &Path) -> Daemon {
        let child = Command::new(ignited_bin())
            .args(["daemon", "--manifest-dir"])
            .arg(dir)
            .args(["--interval", "3", "--socket"])
            .arg(dir.with_file_name("api.sock"))
            .env("IGNITE_ROOT", root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the daemon serving `sock` has finished `n` more reconcile passes than now:
/// whatever it was going to do with the state as it is now, it has done.
fn passes(sock: &Path, n: u64) {
    let start = metric(sock, "ignited_reconcile_passes_total");
    until(&format!("{n} more reconcile passes"), 60, || metric(sock, "ignited_reconcile_passes_total") >= start + n);
}

fn vm_field(root: &Path, vm: &str, t: &str) -> Option<String> {
    let o = common::ignite(root, &["inspect", "vm", vm, "-t", t]);
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn manifest(name: &str, cpus: u32, running: bool) -> String {
    format!(
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: {name}\nspec:\n  image:\n    oci: busybox\n  cpus: {cpus}\n  memory: 128MB\nstatus:\n  running: {running}\n"
    )
}

#[test]
fn manifest_dir_drives_vms_across_daemon_restarts() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let dir = d.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("m1.yaml"), manifest("m1", 1, true)).unwrap();
    let daemon = Daemon::start(&root, &dir);
    until("m1 running", 90, || vm_field(&root, "m1", "{{.Status.Running}}").as_deref() == Some("true"));
    let ready = |n: &str| {
        String::from_utf8_lossy(&common::ignite(&root, &["logs", n]).stdout).matches("IGNITE-BUSYBOX-READY").count()
    };
    until("m1 booted", 90, || ready("m1") >= 1);
    let uid1 = vm_field(&root, "m1", "{{.UID}}").unwrap();
    assert_eq!(vm_field(&root, "m1", "{{.Labels}}").unwrap(), "map[ignite.weave.works/managed-by:ignited]");
    // A second daemon on the same root is refused.
    let o = Command::new(ignited_bin())
        .args(["daemon", "--once", "--manifest-dir"])
        .arg(&dir)
        .env("IGNITE_ROOT", &*root)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("another ignited is running"));
    // A spec change a restart can apply: the VM restarts with its disk.
    std::fs::write(dir.join("m1.yaml"), manifest("m1", 2, true)).unwrap();
    until("m1 with 2 cpus", 90, || vm_field(&root, "m1", "{{.Spec.CPUs}}").as_deref() == Some("2"));
    until("m1 booted again", 120, || ready("m1") >= 2);
    assert!(
        String::from_utf8_lossy(&common::ignite(&root, &["logs", "m1"]).stdout).contains("hostname=m1 boot=2"),
        "disk not kept"
    );
    assert_eq!(vm_field(&root, "m1", "{{.UID}}").unwrap(), uid1, "the VM was re-created instead of restarted");
    // A stopped VM, and an invalid file that does not block the others.
    std::fs::write(dir.join("m2.yaml"), manifest("m2", 1, false)).unwrap();
    std::fs::write(dir.join("broken.yaml"), "apiVersion: nope\n").unwrap();
    until("m2 created", 60, || vm_field(&root, "m2", "{{.Status.Running}}").as_deref() == Some("false"));
    // Removing the manifest removes the VM.
    std::fs::remove_file(dir.join("m1.yaml")).unwrap();
    until("m1 removed", 60, || vm_field(&root, "m1", "{{.UID}}").is_none());
    // kill -9 the daemon and start another: the same VMs, none duplicated.
    let mut daemon = daemon;
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let uid2 = vm_field(&root, "m2", "{{.UID}}").unwrap();
    let _daemon2 = Daemon::start(&root, &dir);
    let sock = dir.with_file_name("api.sock");
    passes(&sock, 2);
    let ids = ok(&root, &["ps", "-a", "-q"]);
    assert_eq!(ids.split_whitespace().collect::<Vec<_>>(), vec![uid2.as_str()]);
    // Unmanaged VMs are never touched.
    ok(&root, &["create", "busybox", "--name", "mine"]);
    passes(&sock, 2);
    assert!(vm_field(&root, "mine", "{{.UID}}").is_some());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user's push: rebased and retried when the daemon pushed in between.
fn push(work: &Path) {
    for _ in 0..10 {
        let o = Command::new("git").arg("-C").arg(work).args(["push", "-q", "origin", "HEAD:main"]).output().unwrap();
        if o.status.success() {
            return;
        }
        git(work, &["pull", "-q", "--rebase", "origin", "main"]);
    }
    panic!("could not push");
}

struct GitDaemon(Child);

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ignited gitops` following `url`, its API socket beside the state root.
fn start_gitops(root: &Path, url: &str) -> GitDaemon {
    GitDaemon(
        Command::new(ignited_bin())
            .args(["gitops", url, "--branch", "main", "--path", "vms", "--interval", "2", "--socket"])
            .arg(root.with_file_name("gitops.sock"))
            .env("IGNITE_ROOT", root)
            .stdout(Stdio::null())
            // Kept beside the state root (each daemon appends): what it did, when a test fails.
            .stderr(std::fs::File::options().create(true).append(true).open(root.with_file_name("gitops.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A bare repository (file://) and a user's clone of it with an empty `vms/` directory.
fn bare_repo(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let bare = dir.join("vms.git");
    let work = dir.join("work");
    assert!(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(&bare).status().unwrap().success());
    let url = format!("file://{}", bare.display());
    assert!(Command::new("git").args(["clone", "-q", &url]).arg(&work).status().unwrap().success());
    std::fs::create_dir(work.join("vms")).unwrap();
    (bare, work, url)
}

#[test]
fn gitops_repo_drives_vms_and_gets_their_status_back() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let (bare, work, url) = bare_repo(d.path());
    std::fs::write(work.join("vms/g1.yaml"), manifest("g1", 1, true)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "add g1"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let daemon = start_gitops(&root, &url);
    until("g1 running", 90, || vm_field(&root, "g1", "{{.Status.Running}}").as_deref() == Some("true"));
    let ip = vm_field(&root, "g1", "{{.Status.Network.IPAddresses[0]}}").unwrap();
    // Its status comes back as a new commit.
    until("status commit", 60, || {
        let log = Command::new("git").arg("-C").arg(&bare).args(["log", "-p", "main"]).output().unwrap();
        let log = String::from_utf8_lossy(&log.stdout);
        log.contains("ignited: update VM status") && log.contains(&ip)
    });
    // A user change on top of the daemon's commits: pull, edit, push.
    git(&work, &["pull", "-q", "--rebase", "origin", "main"]);
    let m = std::fs::read_to_string(work.join("vms/g1.yaml")).unwrap();
    assert!(m.contains("running: true") && m.contains(&ip), "{m}");
    std::fs::write(work.join("vms/g1.yaml"), m.replace("cpus: 1", "cpus: 2")).unwrap();
    git(&work, &["commit", "-q", "-am", "g1: 2 cpus"]);
    push(&work);
    until("g1 with 2 cpus", 90, || vm_field(&root, "g1", "{{.Spec.CPUs}}").as_deref() == Some("2"));
    until("g1 running again", 90, || vm_field(&root, "g1", "{{.Status.Running}}").as_deref() == Some("true"));
    // kill -9 the daemon, start another: no duplicate.
    let uid = vm_field(&root, "g1", "{{.UID}}").unwrap();
    drop(daemon);
    let daemon = start_gitops(&root, &url);
    passes(&root.with_file_name("gitops.sock"), 2);
    assert_eq!(ok(&root, &["ps", "-a", "-q"]).split_whitespace().collect::<Vec<_>>(), vec![uid.as_str()]);
    // Deleting the manifest removes the VM.
    git(&work, &["pull", "-q", "--rebase", "origin", "main"]);
    git(&work, &["rm", "-q", "vms/g1.yaml"]);
    git(&work, &["commit", "-q", "-m", "remove g1"]);
    push(&work);
    until("g1 removed", 90, || vm_field(&root, "g1", "{{.UID}}").is_none());
    drop(daemon);
}

/// One HTTP request over the API socket; returns (status, body).
fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let connect = || std::os::unix::net::UnixStream::connect(sock);
    let exchange = |mut s: std::os::unix::net::UnixStream| {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: ignited\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    };
    let what = format!("an answer on the API socket {}", sock.display());
    // Until the socket is served. A GET is retried whole: a daemon being replaced may drop the
    // connection (one that died for good fails it at the deadline); anything else is sent once,
    // on the first connection accepted.
    let out = if method == "GET" {
        common::until_ok(&what, 20, || connect().and_then(exchange))
    } else {
        exchange(common::until_ok(&what, 20, connect)).unwrap()
    };
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A prepared root, and a daemon on an empty manifest directory serving its API socket.
fn daemon_with_api(dir: &Path) -> (common::Root, Daemon, std::path::PathBuf) {
    let root = prepared_root(dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let daemon = Daemon::start(&root, &manifests);
    (root, daemon, dir.join("api.sock"))
}

#[test]
fn a_firecracker_vms_own_metrics_reach_metrics() {
    let Some(_) = common::firecracker("a_firecracker_vms_own_metrics_reach_metrics") else { return };
    let d = tempfile::tempdir().unwrap();
    let (root, _daemon, sock) = daemon_with_api(d.path());
    // 512 MB: on a host whose KVM cannot run the guest, Firecracker runs it ~20 s before it
    // stops it, time enough for a scrape.
    ok(&root, &["run", "busybox", "--vmm", "firecracker", "--jail=false", "--name", "fcm", "--memory", "512MB"]);
    let (st, body) = api(&sock, "GET", "/metrics", "");
    assert_eq!(st, 200);
    let mine: Vec<&str> = body.lines().filter(|l| l.starts_with("ignite_vmm_metric{vm=\"fcm\"")).collect();
    assert!(mine.iter().any(|l| l.contains("vmm=\"firecracker\"") && l.contains("group=\"api_server\"")), "{body}");
    assert!(body.contains("# TYPE ignite_vmm_metric gauge"));
    ok(&root, &["rm", "-f", "fcm"]);
    let (_, body) = api(&sock, "GET", "/metrics", "");
    assert!(!body.contains("vm=\"fcm\""), "a removed VM's metrics are gone");
}

#[test]
fn api_socket_lists_creates_stops_removes_and_reports_metrics() {
    let d = tempfile::tempdir().unwrap();
    let (root, _daemon, sock) = daemon_with_api(d.path());
    let (st, body) = api(&sock, "GET", "/metrics", "");
    assert_eq!(st, 200);
    assert!(
        body.contains("ignite_vms{state=\"running\"} 0") && body.contains("ignited_reconcile_passes_total"),
        "{body}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "the API is root-only");
    let (st, body) = api(&sock, "POST", "/v1/vms", &manifest("viaapi", 1, true));
    assert_eq!(st, 201, "{body}");
    assert!(body.contains("\"running\":true"), "{body}");
    let (st, body) = api(&sock, "GET", "/v1/vms/viaapi", "");
    assert_eq!(st, 200);
    assert!(body.contains("\"name\":\"viaapi\""));
    let (st, _) = api(&sock, "GET", "/v1/vms", "");
    assert_eq!(st, 200);
    let (st, body) = api(&sock, "POST", "/v1/vms", "apiVersion: nope\n");
    assert_eq!(st, 400, "{body}");
    // A VM whose start fails is removed again, as `ignite run` does (more memory than this
    // host has fails at start).
    let failing = manifest("nostart", 1, true).replace("memory: 128MB", "memory: 4096GB");
    let (st, body) = api(&sock, "POST", "/v1/vms", &failing);
    assert!(st >= 400, "{st} {body}");
    assert!(body.contains("MiB of memory but this host has"), "{body}");
    assert!(vm_field(&root, "nostart", "{{.UID}}").is_none(), "a failed run through the API left its VM");
    let (st, _) = api(&sock, "GET", "/v1/vms/nosuch", "");
    assert_eq!(st, 404);
    let (st, body) = api(&sock, "POST", "/v1/vms/viaapi/stop", "");
    assert_eq!(st, 200, "{body}");
    let (_, body) = api(&sock, "GET", "/metrics", "");
    assert!(body.contains("ignite_vms{state=\"stopped\"} 1"), "{body}");
    // DELETE refuses a running VM unless ?force=true, as `ignite rm` without -f.
    let (st, body) = api(&sock, "POST", "/v1/vms/viaapi/start", "");
    assert_eq!(st, 200, "{body}");
    let (st, body) = api(&sock, "DELETE", "/v1/vms/viaapi", "");
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("is running"), "{body}");
    assert_eq!(vm_field(&root, "viaapi", "{{.Status.Running}}").as_deref(), Some("true"));
    let (st, body) = api(&sock, "DELETE", "/v1/vms/viaapi?force=true", "");
    assert_eq!(st, 200, "{body}");
    assert!(vm_field(&root, "viaapi", "{{.UID}}").is_none());
}

fn metric(sock: &Path, name: &str) -> u64 {
    let (_, body) = api(sock, "GET", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Rejects the first two pushes of a commit written by ignited.
const REJECT_TWICE: &str = r#"#!/bin/sh
while read -r old new ref; do
    case "$(git log -1 --format=%s "$new")" in
    ignited:*)
        n=$(cat rejections 2>/dev/null || echo 0)
        if [ "$n" -lt 2 ]; then
            echo $((n + 1)) >rejections
            echo "rejected for the test" >&2
            exit 1
        fi
        ;;
    esac
done
"#;

#[test]
fn gitops_survives_rejected_pushes_an_unreachable_repo_and_conflicting_files() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let (bare, work, url) = bare_repo(d.path());
    std::fs::write(work.join("vms/g2.yaml"), manifest("g2", 1, true)).unwrap();
    // Two files naming one VM: both reported, neither applied, the others reconciled.
    std::fs::write(work.join("vms/dup-a.yaml"), manifest("dupe", 1, true)).unwrap();
    std::fs::write(work.join("vms/dup-b.yaml"), manifest("dupe", 2, true)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "add g2 and a conflict"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, REJECT_TWICE).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let sock = d.path().join("gitops.sock");
    let _daemon = GitDaemon(
        Command::new(ignited_bin())
            .args(["gitops", &url, "--branch", "main", "--path", "vms", "--interval", "2", "--socket"])
            .arg(&sock)
            .env("IGNITE_ROOT", &*root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("g2 running", 90, || vm_field(&root, "g2", "{{.Status.Running}}").as_deref() == Some("true"));
    assert!(vm_field(&root, "dupe", "{{.UID}}").is_none(), "a VM named in two files was created");
    assert!(metric(&sock, "ignited_reconcile_errors_total") >= 1);

    // The status push was rejected twice, then landed after rebase-and-retry.
    until("status commit", 60, || {
        let log = Command::new("git").arg("-C").arg(&bare).args(["log", "--format=%s", "main"]).output().unwrap();
        String::from_utf8_lossy(&log.stdout).contains("ignited: update VM status")
    });
    assert_eq!(std::fs::read_to_string(bare.join("rejections")).unwrap().trim(), "2");
    // The daemon counts the retries once its push returns, a moment after the commit lands.
    until("the retries counted", 30, || metric(&sock, "ignited_git_push_retries_total") == 2);
    passes(&sock, 1);
    assert_eq!(metric(&sock, "ignited_git_push_retries_total"), 2);
    assert_eq!(metric(&sock, "ignited_git_push_errors_total"), 0);

    // The repository goes away: the last good state is kept, the errors are counted.
    let away = d.path().join("vms.git.away");
    std::fs::rename(&bare, &away).unwrap();
    until("a failed fetch", 30, || metric(&sock, "ignited_git_sync_errors_total") >= 1);
    // Passes go on over the last good checkout.
    passes(&sock, 1);
    assert_eq!(vm_field(&root, "g2", "{{.Status.Running}}").as_deref(), Some("true"), "VM lost with the repo");
    // It comes back: new commits are followed again (after the backoff).
    std::fs::rename(&away, &bare).unwrap();
    git(&work, &["pull", "-q", "--rebase", "origin", "main"]);
    std::fs::remove_file(work.join("vms/dup-b.yaml")).unwrap();
    std::fs::write(work.join("vms/g3.yaml"), manifest("g3", 1, false)).unwrap();
    git(&work, &["add", "-A", "."]);
    git(&work, &["commit", "-q", "-m", "add g3, resolve the conflict"]);
    push(&work);
    until("g3 created", 120, || vm_field(&root, "g3", "{{.UID}}").is_some());
    until("dupe created", 60, || vm_field(&root, "dupe", "{{.UID}}").is_some());
    assert_eq!(vm_field(&root, "g2", "{{.Status.Running}}").as_deref(), Some("true"));
}

#[test]
fn the_cli_works_through_the_daemon_socket() {
    let d = tempfile::tempdir().unwrap();
    let (root, _daemon, sock) = daemon_with_api(d.path());
    let _ = api(&sock, "GET", "/v1/info", ""); // waits for the socket
    let flag = format!("--daemon={}", sock.display());
    let via = |args: &[&str]| {
        let mut a = vec![flag.as_str()];
        a.extend_from_slice(args);
        common::ignite(&root, &a)
    };
    let o = via(&["run", "busybox", "--name", "viacli", "--memory", "128MB"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Created VM with ID") && err.contains("through ignited"), "{err}");
    let ps = String::from_utf8_lossy(&via(&["ps"]).stdout).to_string();
    assert!(ps.contains("viacli") && ps.contains("Up "), "{ps}");
    assert_eq!(
        String::from_utf8_lossy(&via(&["inspect", "vm", "viacli", "-t", "{{.Status.Running}}"]).stdout),
        "true\n"
    );
    until("console output through the API", 60, || {
        String::from_utf8_lossy(&via(&["logs", "viacli"]).stdout).contains("ignite-init: provisioned viacli")
    });
    // Created, not started; bad input is refused before the daemon is asked.
    assert!(via(&["create", "busybox", "--name", "created"]).status.success());
    assert_eq!(vm_field(&root, "created", "{{.Status.Running}}").as_deref(), Some("false"));
    assert_eq!(via(&["create", "busybox", "--memory", "0"]).status.code(), Some(2));
    assert_eq!(via(&["create", "busybox", "--name", "created"]).status.code(), Some(2), "name taken");
    // rm of a running VM without -f is refused, as locally.
    let o = via(&["rm", "viacli"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is running"));
    let o = via(&["stop", "viacli"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(vm_field(&root, "viacli", "{{.Status.Running}}").as_deref(), Some("false"));
    let o = via(&["start", "viacli"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("through ignited"));
    assert!(via(&["rm", "-f", "viacli", "created"]).status.success());
    assert!(ok(&root, &["ps", "-a", "-q"]).trim().is_empty());
    assert_eq!(via(&["inspect", "vm", "nosuch"]).status.code(), Some(3));
    // A daemon that is not there, asked for explicitly: a clear error.
    let o = common::ignite(&root, &["--daemon=/nonexistent/ignited.sock", "ps"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach ignited"));
}

fn pinned(name: &str, host: &str, running: bool) -> String {
    manifest(name, 1, running).replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  annotations:\n    ignite.weave.works/host: {host}\n"),
    )
}

#[test]
fn many_hosts_follow_one_repository() {
    // Two hosts, played by two state roots on this machine, each with its own ignited.
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (root_a, root_b) = (prepared_root(&a), prepared_root(&b));
    let (bare, work, url) = bare_repo(d.path());
    std::fs::write(work.join("vms/on-a.yaml"), pinned("on-a", "hosta", true)).unwrap();
    std::fs::write(work.join("vms/on-b.yaml"), pinned("on-b", "hostb", true)).unwrap();
    std::fs::write(work.join("vms/moving.yaml"), pinned("moving", "hosta", false)).unwrap();
    // Not pinned: every host has it (stopped here: both "hosts" share one machine's netns names).
    std::fs::write(work.join("vms/everywhere.yaml"), manifest("everywhere", 1, false)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "four VMs"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let start = |root: &Path, host: &str| {
        GitDaemon(
            Command::new(ignited_bin())
                .args(["gitops", &url, "--branch", "main", "--path", "vms", "--interval", "2", "--socket", "none"])
                .args(["--host", host])
                .env("IGNITE_ROOT", root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _da = start(&root_a, "hosta");
    let _db = start(&root_b, "hostb");
    let names = |root: &Path| {
        let mut v: Vec<String> =
            ok(root, &["ps", "-a", "-t", "{{.ObjectMeta.Name}}"]).lines().map(String::from).collect();
        v.sort();
        v
    };
    until("host a's VMs", 90, || names(&root_a) == ["everywhere", "moving", "on-a"]);
    until("host b's VMs", 90, || names(&root_b) == ["everywhere", "on-b"]);
    until("on-a running", 90, || vm_field(&root_a, "on-a", "{{.Status.Running}}").as_deref() == Some("true"));
    until("on-b running", 90, || vm_field(&root_b, "on-b", "{{.Status.Running}}").as_deref() == Some("true"));
    // Each host writes back the status of its own VMs, and only those.
    let ip_a = vm_field(&root_a, "on-a", "{{.Status.Network.IPAddresses[0]}}").unwrap();
    let ip_b = vm_field(&root_b, "on-b", "{{.Status.Network.IPAddresses[0]}}").unwrap();
    until("both status commits", 90, || {
        git(&work, &["pull", "-q", "--rebase", "origin", "main"]);
        let fa = std::fs::read_to_string(work.join("vms/on-a.yaml")).unwrap();
        let fb = std::fs::read_to_string(work.join("vms/on-b.yaml")).unwrap();
        fa.contains(&ip_a) && fb.contains(&ip_b)
    });
    assert!(!std::fs::read_to_string(work.join("vms/everywhere.yaml")).unwrap().contains("startTime"));
    // Moving a VM: the old host removes it, the new one creates it.
    std::fs::write(work.join("vms/moving.yaml"), pinned("moving", "hostb", false)).unwrap();
    git(&work, &["commit", "-q", "-am", "move to host b"]);
    push(&work);
    until("moved off a", 90, || names(&root_a) == ["everywhere", "on-a"]);
    until("moved onto b", 90, || names(&root_b) == ["everywhere", "moving", "on-b"]);
    let log = git(&bare, &["log", "--format=%s", "main"]);
    assert!(log.matches("ignited: update VM status").count() >= 2, "{log}");
}

#[test]
fn gitops_recovers_from_a_status_push_that_conflicts_with_another_writer() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let (bare, work, url) = bare_repo(d.path());
    std::fs::write(work.join("vms/g4.yaml"), manifest("g4", 1, true)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "add g4"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    // ignited's status pushes are held back until the other writer has pushed, and the first
    // one after that is refused too: ignited must then rebase onto a conflicting commit.
    let waiting = d.path().join("ignited-waiting");
    let other = d.path().join("other-pushed");
    let once = d.path().join("refused-after-other");
    let hook = format!(
        "#!/bin/sh\nwhile read -r old new ref; do\n    case \"$(git log -1 --format=%s \"$new\")\" in\n    ignited:*)\n        if [ ! -e '{o}' ]; then touch '{w}'; echo held >&2; exit 1; fi\n        if [ ! -e '{r}' ]; then touch '{r}'; echo refused >&2; exit 1; fi ;;\n    esac\ndone\n",
        o = other.display(),
        w = waiting.display(),
        r = once.display()
    );
    let hook_path = bare.join("hooks/pre-receive");
    std::fs::write(&hook_path, hook).unwrap();
    std::fs::set_permissions(&hook_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _daemon = start_gitops(&root, &url);
    until("ignited's first status push", 90, || waiting.exists());
    // The other writer changes the very lines ignited's status commit touches: its rebase
    // conflicts, and it must start again from their version.
    let m = std::fs::read_to_string(work.join("vms/g4.yaml")).unwrap();
    std::fs::write(work.join("vms/g4.yaml"), m.replace("running: true", "running: false")).unwrap();
    std::fs::write(work.join("README.md"), "VMs of this host\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "other writer: stop g4"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    std::fs::write(&other, "").unwrap();
    until("g4 stopped", 90, || vm_field(&root, "g4", "{{.Status.Running}}").as_deref() == Some("false"));
    until("the status commit on top of theirs", 90, || {
        let log = git(&bare, &["log", "--format=%s", "main"]);
        log.lines().next() == Some("ignited: update VM status") && log.contains("other writer: stop g4")
    });
    assert!(once.exists(), "the push after the other writer's was not refused");
    let g4 = git(&bare, &["show", "main:vms/g4.yaml"]);
    assert!(g4.contains("running: false") && g4.contains("reason:"), "{g4}");
    assert_eq!(git(&bare, &["show", "main:README.md"]), "VMs of this host\n");
}

/// The last good state is kept: a manifest made invalid, then empty, then its directory
/// removed — the VM keeps running with its disk; restoring the file changes nothing; an
/// invalid spec (cpus: 1000) is refused as `ignite create` refuses it; deleting the file
/// removes the VM.
#[test]
fn unusable_manifests_and_a_missing_directory_keep_the_last_good_state() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let dir = d.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let good = manifest("kept", 1, true);
    std::fs::write(dir.join("kept.yaml"), &good).unwrap();
    let _daemon = Daemon::start(&root, &dir);
    let sock = d.path().join("api.sock");
    until("kept running", 90, || vm_field(&root, "kept", "{{.Status.Running}}").as_deref() == Some("true"));
    until("kept booted", 90, || {
        String::from_utf8_lossy(&common::ignite(&root, &["logs", "kept"]).stdout).contains("IGNITE-BUSYBOX-READY")
    });
    let o = common::ignite(&root, &["exec", "kept", "--", "sh", "-c", "echo mine >/root/data && sync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let uid = vm_field(&root, "kept", "{{.UID}}").unwrap();
    let started = vm_field(&root, "kept", "{{.Status.StartTime}}").unwrap();
    let unchanged = |what: &str| {
        passes(&sock, 2);
        assert_eq!(vm_field(&root, "kept", "{{.UID}}").as_deref(), Some(uid.as_str()), "{what}: VM replaced");
        assert_eq!(vm_field(&root, "kept", "{{.Status.Running}}").as_deref(), Some("true"), "{what}: VM stopped");
        assert_eq!(
            vm_field(&root, "kept", "{{.Status.StartTime}}").as_deref(),
            Some(started.as_str()),
            "{what}: VM restarted"
        );
        assert_eq!(vm_field(&root, "kept", "{{.Spec.CPUs}}").as_deref(), Some("1"), "{what}: spec changed");
    };
    let held = |what: &str| {
        let (st, body) = api(&sock, "GET", "/v1/reconcile", "");
        assert_eq!(st, 200);
        assert!(body.contains("\"held\":[\"kept\"]"), "{what}: {body}");
        assert_eq!(metric(&sock, "ignited_vms_held"), 1, "{what}");
        body
    };
    // A typo: an unknown field.
    std::fs::write(dir.join("kept.yaml"), good.replace("  cpus: 1\n", "  cpu: 1\n")).unwrap();
    unchanged("an unknown field");
    assert!(held("an unknown field").contains("unknown field"));
    // A value `ignite create` refuses.
    std::fs::write(dir.join("kept.yaml"), good.replace("  cpus: 1\n", "  cpus: 1000\n")).unwrap();
    unchanged("cpus: 1000");
    assert!(held("cpus: 1000").contains("spec.cpus"));
    // Truncated to nothing.
    std::fs::write(dir.join("kept.yaml"), "").unwrap();
    unchanged("an empty file");
    held("an empty file");
    // The whole directory gone.
    let away = d.path().join("manifests.away");
    std::fs::rename(&dir, &away).unwrap();
    unchanged("a missing directory");
    // Back as it was: nothing to do.
    std::fs::rename(&away, &dir).unwrap();
    std::fs::write(dir.join("kept.yaml"), &good).unwrap();
    unchanged("the file restored");
    assert_eq!(metric(&sock, "ignited_vms_held"), 0);
    let o = common::ignite(&root, &["exec", "kept", "--", "cat", "/root/data"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "mine\n", "{}", String::from_utf8_lossy(&o.stderr));
    // Deleted from a directory read completely: removed.
    std::fs::remove_file(dir.join("kept.yaml")).unwrap();
    until("kept removed", 60, || vm_field(&root, "kept", "{{.UID}}").is_none());
}
