//! `ignited`: reconciles VMs from a manifest directory (`reconcile`) or a Git repository
//! (`gitops`), and serves the HTTP/JSON API and metrics (`api`).
//! Thin: parse arguments, take the daemon lock, loop over reconcile passes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod api;
mod controller;
mod gitops;
mod reconcile;

use ignite_runtime::{load_configuration, CreateOptions};
use ignite_store::Store;
use reconcile::{read_manifest_dir, reconcile};

/// ignited: run VMs declaratively, from a manifest directory or a Git repository.
#[derive(Debug, Parser)]
#[command(name = "ignited", version, max_term_width = 100)]
struct Cli {
    /// State directory
    #[arg(long, global = true, env = "IGNITE_ROOT", default_value = ignite_store::DEFAULT_ROOT)]
    root: PathBuf,
    /// Ignite configuration path; refer to the 'Ignite Configuration' docs for more details
    #[arg(long, global = true, env = "IGNITE_CONFIG")]
    ignite_config: Option<PathBuf>,
    /// Specify the log level for the program
    #[arg(long, global = true, default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error"])]
    log_level: String,
    /// Unix socket of the HTTP/JSON API and /metrics ("none" to disable)
    #[arg(long, global = true, env = "IGNITED_SOCKET", default_value = "/run/ignite/ignited.sock")]
    socket: PathBuf,
    /// Prefix string for system identifiers (VMM process and network namespace names)
    #[arg(long, global = true)]
    id_prefix: Option<String>,
    /// Network plugin of the VMs this daemon creates: cni (Ignite's docker-bridge is taken as
    /// cni) or none
    #[arg(long, global = true)]
    network_plugin: Option<String>,
    /// Container runtime (Ignite's containerd or docker): accepted, and ignored — ignite needs
    /// no container runtime
    #[arg(long, global = true)]
    runtime: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// Go durations (`30s`, `1m`) or plain seconds.
fn duration(s: &str) -> Result<Duration, String> {
    ignite_api::duration::parse_duration(s)
}

/// `ignited gitops`'s arguments.
#[derive(Debug, clap::Args)]
struct GitopsArgs {
    /// Repository URL (file://, ssh, https; credentials as git has them, or the flags below)
    pub repo: String,
    /// What branch to sync (default: the repository's default branch)
    #[arg(short = 'b', long)]
    pub branch: Option<String>,
    /// Subdirectories of the repository holding the manifests (default: the whole repository)
    #[arg(short = 'p', long = "path", visible_alias = "paths", value_delimiter = ',')]
    pub paths: Vec<PathBuf>,
    /// Sync interval for pushing to and pulling from the remote
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub interval: Duration,
    /// Git operation (clone, push, pull) timeout
    #[arg(long, default_value = "1m", value_parser = duration)]
    pub timeout: Duration,
    /// What SSH identity file to use for pulling and pushing
    #[arg(long)]
    pub identity_file: Option<PathBuf>,
    /// What known_hosts file to use for remote verification (default ~/.ssh/known_hosts)
    #[arg(long)]
    pub hosts_file: Option<PathBuf>,
    /// What username to use when authenticating with Git over HTTPS
    #[arg(long, env = "IGNITED_HTTPS_USERNAME")]
    pub https_username: Option<String>,
    /// What password or access token to use when authenticating with Git over HTTPS
    #[arg(long, env = "IGNITED_HTTPS_PASSWORD", hide_env_values = true)]
    pub https_password: Option<String>,
    /// Do not write VM status back to the repository
    #[arg(long)]
    pub read_only: bool,
    /// This host's name when several hosts follow the repository: manifests annotated
    /// ignite.weave.works/host run only on the host of that name
    #[arg(long)]
    pub host: Option<String>,
    /// Run one pass and exit
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Reconcile the VMs described in a manifest directory, continuously
    Daemon {
        /// Directory of VM manifests (YAML/JSON, v1alpha2-4, several per file with ---)
        #[arg(long, default_value = "/etc/ignite/manifests")]
        manifest_dir: PathBuf,
        /// Time between full resyncs (changes in the directory are picked up at once, by inotify)
        #[arg(long, default_value = "30s", value_parser = duration)]
        interval: Duration,
        /// Run one pass and exit
        #[arg(long)]
        once: bool,
    },
    /// Reconcile the VMs described in a Git repository, writing their status back
    Gitops(GitopsArgs),
    /// Print the version of ignited
    Version {
        /// Output format: short, json or yaml
        #[arg(short, long, value_parser = ["short", "json", "yaml"])]
        output: Option<String>,
    },
    /// Output shell completion code for ignited (bash, zsh or fish)
    Completion {
        #[arg(value_parser = ["bash", "zsh", "fish"], default_value = "bash")]
        shell: String,
    },
}

/// A cheap fingerprint of the directory: names, sizes, mtimes.
fn fingerprint(dir: &std::path::Path) -> Vec<(String, u64, i128)> {
    let mut v: Vec<(String, u64, i128)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
                    Some((e.file_name().to_string_lossy().into_owned(), m.len(), t))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An inotify watch on the manifest directory (None where the directory does not exist yet
/// or inotify is unavailable: then the loop polls every 500 ms).
fn watch_dir(dir: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
    let flags = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF;
    inotify::add_watch(&fd, dir, flags).ok()?;
    Some(fd)
}

/// Waits up to `max` for a change in the watched directory; changes are batched for 50 ms
/// (an editor's save, a `git checkout` of many files) so that one pass sees them all.
fn wait_for_change(watch: Option<&std::os::fd::OwnedFd>, max: Duration) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let Some(fd) = watch else {
        std::thread::sleep(max);
        return;
    };
    let ts = Timespec { tv_sec: max.as_secs() as i64, tv_nsec: i64::from(max.subsec_nanos()) };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    if poll(&mut fds, Some(&ts)).unwrap_or(0) > 0 {
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 4096];
        while rustix::io::read(fd, &mut buf).map(|n| n > 0).unwrap_or(false) {}
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "));
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Version { output } => {
            let v = env!("CARGO_PKG_VERSION");
            match output.as_deref() {
                Some("short") => println!("v{v}"),
                Some("json") => {
                    println!("{}", serde_json::json!({ "major": "0", "minor": "1", "gitVersion": format!("v{v}") }))
                }
                Some("yaml") => println!("gitVersion: v{v}"),
                _ => println!("ignited version: v{v}"),
            }
            return Ok(());
        }
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let sh: clap_complete::Shell = shell.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            clap_complete::generate(sh, &mut Cli::command(), "ignited", &mut std::io::stdout());
            return Ok(());
        }
        _ => {}
    }
    if let Some(rt) = &cli.runtime {
        anyhow::ensure!(
            matches!(rt.as_str(), "containerd" | "docker"),
            "invalid --runtime {rt:?}: Ignite's values are containerd and docker"
        );
        tracing::info!("--runtime {rt} has no effect: ignite runs VMs without a container runtime");
    }
    let store = Store::open(&cli.root)?;
    // One daemon per state root.
    let lock_path = cli.root.join("ignited.lock");
    let lock = std::fs::File::options().create(true).truncate(false).write(true).open(&lock_path)?;
    if lock.try_lock().is_err() {
        anyhow::bail!("another ignited is running on {} (lock {})", cli.root.display(), lock_path.display());
    }
    let mut config = load_configuration(cli.ignite_config.as_deref())?;
    // Global flags over the configuration file, as for `ignite`.
    if let Some(p) = &cli.id_prefix {
        anyhow::ensure!(
            !p.is_empty()
                && p.len() <= 32
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "invalid --id-prefix {p:?}: use 1 to 32 lowercase letters, digits and '-'"
        );
        config.spec.id_prefix = p.clone();
    }
    match cli.network_plugin.as_deref() {
        None => {}
        Some("cni" | "docker-bridge") => config.spec.network_plugin = "cni".into(),
        Some("none") => config.spec.network_plugin = "none".into(),
        Some(np) => anyhow::bail!("invalid --network-plugin {np:?}: use cni, docker-bridge or none"),
    }
    let metrics = Arc::new(api::Metrics::default());
    let controller = Arc::new(controller::Controller::new(controller::WORKERS));
    if cli.socket.as_os_str() != "none" {
        api::serve(cli.socket.clone(), store.clone(), config.clone(), metrics.clone(), controller.clone())
            .map_err(|e| anyhow::anyhow!("cannot serve the API on {}: {e}", cli.socket.display()))?;
        tracing::info!("API and metrics on {}", cli.socket.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let d = Daemon { store, config, metrics, controller, stop };
    match cli.command {
        Cmd::Daemon { manifest_dir, interval, once } => follow_dir(&d, &manifest_dir, interval, once),
        Cmd::Gitops(a) => follow_git(&d, &cli.root, a)?,
        // Answered before the daemon started.
        Cmd::Version { .. } | Cmd::Completion { .. } => {}
    }
    Ok(())
}

/// What both daemon loops work with.
struct Daemon {
    store: Store,
    config: ignite_runtime::LoadedConfig,
    metrics: Arc<api::Metrics>,
    controller: Arc<controller::Controller>,
    stop: Arc<AtomicBool>,
}

/// `ignited daemon`: a pass on every change of the directory, every `interval`, and when a
/// failed VM is due.
fn follow_dir(d: &Daemon, manifest_dir: &std::path::Path, interval: Duration, once: bool) {
    let Daemon { store, config, metrics, controller, stop } = d;
    tracing::info!("reconciling {} every {interval:?} and on change", manifest_dir.display());
    let mut last_fp = None;
    let mut last_pass: Option<Instant> = None;
    let mut watch = None;
    while !stop.load(Ordering::Relaxed) {
        if !manifest_dir.is_dir() {
            watch = None; // removed (or not there yet): watch it again once it exists
        } else if watch.is_none() {
            watch = watch_dir(manifest_dir);
        }
        let fp = fingerprint(manifest_dir);
        // A pass when the manifests change, every interval, and when a failed VM is due.
        let due = controller.next_retry().is_some_and(|t| t <= Instant::now());
        if Some(&fp) != last_fp.as_ref() || last_pass.is_none_or(|t| t.elapsed() >= interval) || due {
            pass(store, config, read_manifest_dir(manifest_dir), metrics, controller);
            last_fp = Some(fp);
            last_pass = Some(Instant::now());
            if once {
                break;
            }
        }
        wait_for_change(watch.as_ref(), Duration::from_millis(500));
    }
}

/// `ignited gitops`: fetch, pass, write status back, every `interval` (backing off while the
/// repository cannot be reached).
fn follow_git(d: &Daemon, root: &std::path::Path, a: GitopsArgs) -> anyhow::Result<()> {
    let Daemon { store, config, metrics, controller, stop } = d;
    let GitopsArgs {
        repo,
        branch,
        paths,
        interval,
        timeout,
        identity_file,
        hosts_file,
        https_username,
        https_password,
        read_only,
        host,
        once,
    } = a;
    let https = match (https_username, https_password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => anyhow::bail!("--https-username and --https-password go together"),
    };
    let options = gitops::GitOptions { timeout, identity_file, hosts_file, https };
    let source = gitops::Source::new(root, &repo, branch.as_deref(), &paths, options);
    let shown: Vec<String> = source.paths.iter().map(|p| p.display().to_string()).collect();
    tracing::info!(
        "following {repo} ({}, {}) every {interval:?}",
        branch.as_deref().unwrap_or("its default branch"),
        shown.join(", ")
    );
    let interval = interval.max(Duration::from_millis(100));
    let mut backoff = interval;
    let mut last_good = false;
    while !stop.load(Ordering::Relaxed) {
        let mut wait = interval;
        match source.sync() {
            Ok(head) => {
                tracing::debug!("at {head}");
                last_good = true;
                backoff = interval;
            }
            Err(e) => {
                metrics.sync_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot update from {repo}: {e}; keeping the last good state");
                backoff = (backoff * 2).min(Duration::from_secs(300));
                wait = backoff;
            }
        }
        if last_good {
            let manifests = reconcile::for_host(source.read_manifests(), host.as_deref());
            pass(store, config, manifests, metrics, controller);
            if !read_only {
                match source.write_back(store, host.as_deref()) {
                    Ok((pushed, retries)) => {
                        metrics.push_retries.fetch_add(u64::from(retries), Ordering::Relaxed);
                        if pushed {
                            tracing::info!("pushed VM status to {repo}");
                        }
                    }
                    Err(e) => {
                        metrics.push_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("cannot write status back: {e}");
                    }
                }
            }
        }
        if once {
            break;
        }
        let until = Instant::now() + wait;
        // Woken early when a failed VM is due again.
        let due = || controller.next_retry().is_some_and(|t| t <= Instant::now());
        while Instant::now() < until && !stop.load(Ordering::Relaxed) && !due() {
            std::thread::sleep(Duration::from_millis(200).min(wait));
        }
    }
    Ok(())
}

/// One reconcile pass over what the manifests ask for, logged.
fn pass(
    store: &Store,
    config: &ignite_runtime::LoadedConfig,
    manifests: reconcile::Manifests,
    metrics: &api::Metrics,
    controller: &controller::Controller,
) {
    let started = Instant::now();
    // What killed processes (a previous daemon included) left behind, first.
    match ignite_runtime::recover::recover_all(store) {
        Ok(r) => {
            for n in &r.networks {
                tracing::info!("VM {n}: released the network a killed start left");
            }
        }
        Err(e) => tracing::warn!("recovery: {e}"),
    }
    let runtime = reconcile::Runtime { store, config, create: &CreateOptions::default() };
    let mut report = reconcile(store, config, &manifests, &runtime, controller);
    // Problems with the manifests themselves first, then those of applying them.
    let mut errors = manifests.errors.clone();
    errors.append(&mut report.errors);
    report.errors = errors;
    let errors = &report.errors;
    for (what, list) in [
        ("created", &report.created),
        ("started", &report.started),
        ("stopped", &report.stopped),
        ("restarted with its disk", &report.restarted),
        ("removed", &report.removed),
    ] {
        for n in list {
            tracing::info!("VM {n}: {what}");
        }
    }
    for p in &report.pending {
        tracing::warn!("pending: {p}");
    }
    for d in &report.deferred {
        tracing::info!("deferred: {d}");
    }
    for e in errors {
        tracing::error!("{e}");
    }
    tracing::debug!("pass over {} VMs in {:.0} ms", manifests.desired.len(), started.elapsed().as_secs_f64() * 1000.0);
    metrics.last_pass_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    metrics.record(&report);
}
