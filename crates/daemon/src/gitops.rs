//! GitOps: a Git repository as the manifest source (`ignited gitops`), with each managed VM's
//! observed status written back in read-write mode.
//!
//! The git CLI is used (not gix): it brings every transport users already have configured
//! (file://, SSH keys and agents, HTTPS credential helpers and tokens) and exactly Git's own
//! rebase and push semantics; only a handful of commands are run per pass.
//!
//! - The repository is cloned once into `<root>/gitops/<id>`; each pass fetches the branch and
//!   resets the checkout to it. When the remote cannot be reached, the last good checkout is
//!   reconciled and the fetch is retried with backoff.
//! - Write-back keeps `status.running` as the user wrote it (it is the request: a VM that died
//!   is restarted, not recorded as "should be stopped") and records what was observed in the
//!   other status fields: `startTime`, `network.ipAddresses`, `runtime`, `exit`. Files are
//!   rewritten only when that changed; the commit is pushed with rebase-and-retry, so concurrent
//!   pushes (other hosts, users) are never overwritten.

use std::path::{Path, PathBuf};
use std::process::Command;

use ignite_api::Vm;
use ignite_store::Store;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("git {args}: {stderr}")]
pub struct GitError {
    pub args: String,
    pub stderr: String,
}

/// How long one git command may take by default (Weave Ignite's `--timeout`: 1m); a hung
/// fetch or push is killed, reported, and retried at the next interval.
pub const GIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// How ignited reaches the repository, as Weave Ignite's `gitops` flags say.
#[derive(Debug, Clone)]
pub struct GitOptions {
    /// Deadline of each git command (`--timeout`).
    pub timeout: std::time::Duration,
    /// SSH private key to use (`--identity-file`).
    pub identity_file: Option<PathBuf>,
    /// known_hosts file to verify the server against (`--hosts-file`).
    pub hosts_file: Option<PathBuf>,
    /// HTTPS credentials (`--https-username`, `--https-password`), handed to git by a
    /// credential helper that reads them from the environment (never on a command line).
    pub https: Option<(String, String)>,
}

impl Default for GitOptions {
    fn default() -> Self {
        GitOptions { timeout: GIT_DEADLINE, identity_file: None, hosts_file: None, https: None }
    }
}

fn git_with(o: &GitOptions, dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    let mut c = Command::new("git");
    if let Some(d) = dir {
        c.arg("-C").arg(d);
    }
    c.args(["-c", "user.name=ignited", "-c", "user.email=ignited@localhost", "-c", "advice.detachedHead=false"]);
    if o.https.is_some() {
        c.args(["-c", "credential.helper="]);
        c.args([
            "-c",
            "credential.helper=!f() { echo \"username=$IGNITED_GIT_USERNAME\"; echo \"password=$IGNITED_GIT_PASSWORD\"; }; f",
        ]);
    }
    if let Some((u, p)) = &o.https {
        c.env("IGNITED_GIT_USERNAME", u).env("IGNITED_GIT_PASSWORD", p);
    }
    if o.identity_file.is_some() || o.hosts_file.is_some() {
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let mut ssh = String::from("ssh");
        if let Some(k) = &o.identity_file {
            ssh.push_str(&format!(" -i {} -o IdentitiesOnly=yes", q(k)));
        }
        if let Some(h) = &o.hosts_file {
            ssh.push_str(&format!(" -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes", q(h)));
        }
        c.env("GIT_SSH_COMMAND", ssh);
    }
    c.args(args).env("GIT_TERMINAL_PROMPT", "0");
    let out = ignite_proc::output(&mut c, None, o.timeout).map_err(|e| {
        let hint = if e.is_not_found() { " (install git)" } else { "" };
        GitError { args: args.join(" "), stderr: format!("{e}{hint}") }
    })?;
    if !out.status.success() {
        return Err(GitError { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A repository being followed.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    /// Branch to follow; `None`: the repository's default branch (its HEAD), as `git clone`.
    pub branch: Option<String>,
    /// Subdirectories of the repository holding the manifests (Ignite's `--paths`).
    pub paths: Vec<PathBuf>,
    pub checkout: PathBuf,
    pub options: GitOptions,
}

impl Source {
    pub fn new(root: &Path, url: &str, branch: Option<&str>, paths: &[PathBuf], options: GitOptions) -> Source {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{url}\0{}", branch.unwrap_or("HEAD")).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let paths = if paths.is_empty() { vec![PathBuf::from(".")] } else { paths.to_vec() };
        Source {
            url: url.into(),
            branch: branch.map(String::from),
            paths,
            checkout: root.join("gitops").join(format!("{h:016x}")),
            options,
        }
    }

    fn git(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
        git_with(&self.options, dir, args)
    }

    /// The branch followed: the one asked for, or the remote's default branch as the clone
    /// recorded it (`origin/HEAD`).
    pub fn branch(&self) -> Result<String, GitError> {
        if let Some(b) = &self.branch {
            return Ok(b.clone());
        }
        let r = self.git(Some(&self.checkout), &["symbolic-ref", "--short", "refs/remotes/origin/HEAD"])?;
        Ok(r.trim().trim_start_matches("origin/").to_string())
    }

    /// The manifest directories inside the checkout.
    pub fn manifest_dirs(&self) -> Vec<PathBuf> {
        self.paths.iter().map(|p| self.checkout.join(p)).collect()
    }

    /// The manifests of the checkout (every path). Git keeps no empty directories: a manifest
    /// directory missing from a checkout that is there means the commit holds no manifest
    /// (its last one was deleted), not that something cannot be read.
    pub fn read_manifests(&self) -> crate::reconcile::Manifests {
        let mut all = crate::reconcile::Manifests { complete: true, ..Default::default() };
        for dir in self.manifest_dirs() {
            if !dir.exists() && self.checkout.join(".git").is_dir() {
                continue;
            }
            let m = crate::reconcile::read_manifest_dir(&dir);
            all.complete &= m.complete;
            all.desired.extend(m.desired);
            all.errors.extend(m.errors);
            all.held_files.extend(m.held_files);
            all.held_names.extend(m.held_names);
        }
        all
    }

    /// Clones on first use, then fetches and resets to the remote branch. A checkout that git
    /// cannot use any more (a daemon killed in the middle of a git command leaves its lock
    /// files, or worse) is cloned anew beside it and swapped in once the clone worked, so the
    /// last good checkout stays until a better one exists.
    pub fn sync(&self) -> Result<String, GitError> {
        match self.sync_once() {
            Ok(head) => Ok(head),
            Err(e) if self.checkout.join(".git").is_dir() => {
                tracing::warn!("the gitops checkout failed ({e}); cloning it anew");
                let fresh = self.checkout.with_extension("fresh");
                let _ = std::fs::remove_dir_all(&fresh);
                let dest = fresh.to_string_lossy().into_owned();
                match &self.branch {
                    Some(b) => self.git(None, &["clone", "--quiet", "--branch", b, &self.url, &dest])?,
                    None => self.git(None, &["clone", "--quiet", &self.url, &dest])?,
                };
                let old = self.checkout.with_extension("old");
                let _ = std::fs::remove_dir_all(&old);
                std::fs::rename(&self.checkout, &old)
                    .and_then(|_| std::fs::rename(&fresh, &self.checkout))
                    .map_err(|err| GitError { args: "clone (swap)".into(), stderr: err.to_string() })?;
                let _ = std::fs::remove_dir_all(&old);
                Ok(self.git(Some(&self.checkout), &["rev-parse", "HEAD"])?.trim().to_string())
            }
            Err(e) => Err(e),
        }
    }

    fn sync_once(&self) -> Result<String, GitError> {
        // Only this daemon uses the checkout (one per state root): a lock file in it is what a
        // git command killed with a previous daemon left.
        for lock in ["index.lock", "HEAD.lock", "ORIG_HEAD.lock", "config.lock", "shallow.lock"] {
            let _ = std::fs::remove_file(self.checkout.join(".git").join(lock));
        }
        if !self.checkout.join(".git").is_dir() {
            let _ = std::fs::remove_dir_all(&self.checkout);
            if let Some(p) = self.checkout.parent() {
                let _ = std::fs::create_dir_all(p);
            }
            let dest = self.checkout.to_string_lossy().into_owned();
            match &self.branch {
                Some(b) => self.git(None, &["clone", "--quiet", "--branch", b, &self.url, &dest])?,
                None => self.git(None, &["clone", "--quiet", &self.url, &dest])?,
            };
        } else {
            // A write-back interrupted in the middle of a rebase leaves its state behind, and
            // every later rebase would fail on it.
            if self.checkout.join(".git/rebase-merge").exists() || self.checkout.join(".git/rebase-apply").exists() {
                let _ = self.git(Some(&self.checkout), &["rebase", "--abort"]);
            }
            let branch = self.branch()?;
            self.git(Some(&self.checkout), &["fetch", "--quiet", "origin", &branch])?;
            self.git(Some(&self.checkout), &["reset", "--quiet", "--hard", &format!("origin/{branch}")])?;
        }
        Ok(self.git(Some(&self.checkout), &["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// Writes the observed status of managed VMs into their manifests, commits and pushes
    /// (rebasing on concurrent pushes). Returns whether a commit was pushed and how many
    /// pushes were rejected on the way.
    ///
    /// With `host` set (several hosts follow the repository), only the VMs pinned to this host
    /// are written: a VM every host runs has no single status to record.
    pub fn write_back(&self, store: &Store, host: Option<&str>) -> Result<(bool, u32), GitError> {
        let desired = self.read_manifests().desired;
        let desired: Vec<_> = match host {
            None => desired,
            Some(h) => desired
                .into_iter()
                .filter(|d| {
                    d.vm.metadata.annotations.get(crate::reconcile::HOST_ANNOTATION).map(String::as_str) == Some(h)
                })
                .collect(),
        };
        let mut changed_files = Vec::new();
        let mut files: Vec<PathBuf> = desired.iter().map(|d| d.file.clone()).collect();
        files.sort();
        files.dedup();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            if text.trim_start().starts_with('{') {
                continue; // JSON manifests are left as written
            }
            let mut docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
                .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
                .filter(|v| !v.is_null())
                .collect();
            let mut dirty = false;
            for doc in docs.iter_mut() {
                let Some(name) =
                    doc.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).map(String::from)
                else {
                    continue;
                };
                let Some(d) = desired.iter().find(|d| d.file == f && d.vm.metadata.name == name) else { continue };
                let Ok(vm) = store.get::<Vm>(&d.vm.uid()) else { continue };
                let vm = ignite_runtime::status::observe(vm);
                let mut observed = serde_yaml::to_value(&vm.status).unwrap_or(serde_yaml::Value::Null);
                if let serde_yaml::Value::Mapping(m) = &mut observed {
                    m.insert("running".into(), serde_yaml::Value::Bool(d.running));
                    for k in ["image", "kernel", "idPrefix"] {
                        m.remove(k);
                    }
                    if let Some(serde_yaml::Value::Mapping(rt)) = m.get_mut("runtime") {
                        rt.remove("pid");
                        rt.remove("id");
                    }
                }
                if doc.get("status") != Some(&observed) {
                    if let serde_yaml::Value::Mapping(dm) = doc {
                        dm.insert("status".into(), observed);
                        dirty = true;
                    }
                }
            }
            if dirty {
                let mut out = String::new();
                for (i, d) in docs.iter().enumerate() {
                    if i > 0 {
                        out.push_str("---\n");
                    }
                    out.push_str(&serde_yaml::to_string(d).unwrap_or_default());
                }
                if std::fs::write(&f, out).is_ok() {
                    changed_files.push(f);
                }
            }
        }
        if changed_files.is_empty() {
            return Ok((false, 0));
        }
        for f in &changed_files {
            let rel = f.strip_prefix(&self.checkout).unwrap_or(f).to_string_lossy().into_owned();
            self.git(Some(&self.checkout), &["add", "--", &rel])?;
        }
        self.git(Some(&self.checkout), &["commit", "--quiet", "-m", "ignited: update VM status"])?;
        let branch = self.branch()?;
        let target = format!("HEAD:{branch}");
        let mut last = None;
        for retries in 0..5 {
            match self.git(Some(&self.checkout), &["push", "--quiet", "origin", &target]) {
                Ok(_) => return Ok((true, retries)),
                Err(e) => {
                    tracing::warn!("push rejected ({}); rebasing and retrying", e.stderr.lines().last().unwrap_or(""));
                    last = Some(e);
                    // Someone pushed first: take their commits and put ours on top. When ours
                    // conflicts with theirs, give this pass up (aborting the rebase): the next
                    // one starts from their version and writes the status again.
                    if let Err(e) = self.git(Some(&self.checkout), &["pull", "--quiet", "--rebase", "origin", &branch])
                    {
                        let _ = self.git(Some(&self.checkout), &["rebase", "--abort"]);
                        return Err(e);
                    }
                }
            }
        }
        Err(last.unwrap_or(GitError { args: "push".into(), stderr: "rejected".into() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let o = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
            .args(args)
            .output()
            .expect("git");
        assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// A daemon killed in the middle of a git command leaves lock files (or a broken ref):
    /// the next sync still works.
    #[test]
    fn a_checkout_left_broken_by_a_killed_daemon_is_recovered() {
        let d = tempfile::tempdir().unwrap();
        let bare = d.path().join("r.git");
        let work = d.path().join("w");
        run(d.path(), &["init", "-q", "--bare", "-b", "main", &bare.to_string_lossy()]);
        run(d.path(), &["clone", "-q", &format!("file://{}", bare.display()), &work.to_string_lossy()]);
        std::fs::write(work.join("a.yaml"), "x: 1\n").unwrap();
        run(&work, &["add", "."]);
        run(&work, &["commit", "-q", "-m", "one"]);
        run(&work, &["push", "-q", "origin", "HEAD:main"]);
        let src =
            Source::new(d.path(), &format!("file://{}", bare.display()), Some("main"), &[], GitOptions::default());
        let first = src.sync().unwrap();
        // What a killed git leaves: the index lock, and a ref lock in the middle of a fetch.
        std::fs::write(src.checkout.join(".git/index.lock"), "").unwrap();
        std::fs::create_dir_all(src.checkout.join(".git/refs/remotes/origin")).unwrap();
        std::fs::write(src.checkout.join(".git/refs/remotes/origin/main.lock"), "").unwrap();
        std::fs::write(work.join("a.yaml"), "x: 2\n").unwrap();
        run(&work, &["commit", "-q", "-am", "two"]);
        run(&work, &["push", "-q", "origin", "HEAD:main"]);
        let second = src.sync().unwrap();
        assert_ne!(first, second, "the new commit was not followed");
        assert_eq!(std::fs::read_to_string(src.checkout.join("a.yaml")).unwrap(), "x: 2\n");
    }
}
